//! Processes of the stack: pid files in `{state}/run/`, stopping by pid (and the process
//! group each daemon was started in), and a /proc scan that finds anything of the stack
//! still running.

use super::layout::Layout;
use anyhow::{Context, Result, bail};
use stack_tests::sys;
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

/// The daemons the supervisor starts, in start order, with the file name of the binary
/// their main process runs (checked before a pid from a file is signalled).
pub const DAEMONS: &[(&str, &str)] = &[
    ("rspamd", "rspamd"),
    ("spam-milter", "spam-milter"),
    ("dkim-milter", "dkim-milter"),
    ("dovecot", "dovecot"),
    ("postfix", "master"),
];

/// The supervisor's own pid file name (it runs the DNS stub and the sink).
pub const SUPERVISOR: &str = "mail-stack";

/// Writes `{state}/run/{name}.pid`.
pub fn write_pid(l: &Layout, name: &str, pid: u32) -> Result<()> {
    super::config::write_atomic(
        &l.pid_file(name),
        format!("{pid}\n").as_bytes(),
        0o644,
        None,
    )
}

/// The pid in `{state}/run/{name}.pid`, if any.
pub fn read_pid(l: &Layout, name: &str) -> Option<u32> {
    std::fs::read_to_string(l.pid_file(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Removes a pid file (missing is fine).
pub fn remove_pid(l: &Layout, name: &str) {
    let _ = std::fs::remove_file(l.pid_file(name));
}

/// The file name of the binary `pid` runs (a rebuilt binary's " (deleted)" suffix dropped).
pub fn exe_name(pid: u32) -> Option<String> {
    let target = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let s = target.to_string_lossy();
    let s = s.strip_suffix(" (deleted)").unwrap_or(&s);
    Path::new(s)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// `(state, pgid)` from /proc/PID/stat.
fn stat_fields(pid: u32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgid = f.next()?.parse().ok()?;
    Some((state, pgid))
}

/// The live (non-zombie) process of component `name` recorded in its pid file, if the
/// process there still runs the expected binary.
pub fn live_pid(l: &Layout, name: &str, exe: &str) -> Option<u32> {
    let pid = read_pid(l, name)?;
    (sys::pid_alive(pid) && exe_name(pid).as_deref() == Some(exe)).then_some(pid)
}

/// Stops `pid`: SIGTERM, up to `grace` to exit, then SIGKILL to its process group; the
/// group (the daemon's helpers) is killed in any case. `child` is reaped if given.
pub fn stop_pid(pid: u32, child: Option<&mut Child>, grace: Duration) -> Result<()> {
    let mut child = child;
    let gone = |child: &mut Option<&mut Child>| match child {
        Some(c) => matches!(c.try_wait(), Ok(Some(_))) || !sys::pid_alive(pid),
        None => !sys::pid_alive(pid),
    };
    if !gone(&mut child) {
        sys::signal(pid as i32, libc::SIGTERM);
        let end = std::time::Instant::now() + grace;
        while !gone(&mut child) && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Helpers of the daemon stay in its group; a daemon that ignored SIGTERM goes too.
    sys::signal(-(pid as i32), libc::SIGKILL);
    if let Some(c) = child {
        let _ = c.wait();
    }
    if !sys::wait_pid_gone(pid, Duration::from_secs(5)) {
        bail!("pid {pid} did not stop");
    }
    Ok(())
}

/// A process that belongs to the stack.
#[derive(Debug)]
pub struct StackProcess {
    /// Its pid.
    pub pid: u32,
    /// Its binary's file name.
    pub exe: String,
    /// Why it counts as the stack's.
    pub why: String,
}

/// Every live process (not this one, not its ancestors) that belongs to the stack: in the
/// process group of a recorded daemon, or running a daemon binary with a file, working
/// directory or argument under the state directory.
pub fn stack_processes(l: &Layout, pgids: &[i32]) -> Vec<StackProcess> {
    const DAEMON_DIRS: &[&str] = &["/usr/lib/postfix/", "/usr/lib/dovecot/", "/usr/sbin/"];
    let me = std::process::id();
    let ancestors = ancestors(me);
    let root = l.root().to_string_lossy().into_owned();
    let daemon_names: Vec<&str> = DAEMONS.iter().map(|(_, e)| *e).collect();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || ancestors.contains(&pid) {
            continue;
        }
        let Some((state, pgid)) = stat_fields(pid) else {
            continue;
        };
        if matches!(state, 'Z' | 'X') {
            continue;
        }
        let exe_path = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let exe = exe_name(pid).unwrap_or_else(|| "?".into());
        if pgids.contains(&pgid) {
            out.push(StackProcess {
                pid,
                exe,
                why: format!("in process group {pgid}"),
            });
            continue;
        }
        let daemonish = DAEMON_DIRS.iter().any(|d| exe_path.starts_with(d))
            || daemon_names.contains(&exe.as_str())
            || exe == "mail-stack"
            || exe == "rspamd";
        if !daemonish {
            continue;
        }
        if let Some(why) = uses_dir(pid, &root) {
            out.push(StackProcess { pid, exe, why });
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

fn ancestors(mut pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for _ in 0..64 {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            break;
        };
        let Some(ppid) = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            break;
        };
        if ppid == 0 {
            break;
        }
        out.push(ppid);
        pid = ppid;
    }
    out
}

/// Why `pid` uses `root` (cwd, an open file, an argument), if it does.
fn uses_dir(pid: u32, root: &str) -> Option<String> {
    let under = |p: &Path| {
        let s = p.to_string_lossy();
        s == root || s.starts_with(&format!("{root}/"))
    };
    if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd"))
        && under(&cwd)
    {
        return Some(format!("cwd {}", cwd.display()));
    }
    if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
        && String::from_utf8_lossy(&cmd).contains(root)
    {
        return Some("command line names the state dir".into());
    }
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && under(&target)
            {
                return Some(format!("has {} open", target.display()));
            }
        }
    }
    None
}

/// An exclusive, non-blocking `flock`: `Ok(None)` when another process holds it.
pub struct TryLock {
    _file: File,
}

impl TryLock {
    /// Takes the lock on `path` if it is free.
    pub fn try_acquire(path: &Path) -> Result<Option<TryLock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the fd is valid for the lifetime of `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(TryLock { _file: file }));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        Err(err).with_context(|| format!("flock {}", path.display()))
    }
}

/// Whether a supervisor holds the state directory's lock.
pub fn supervisor_running(l: &Layout) -> bool {
    if !l.supervisor_lock().exists() {
        return false;
    }
    matches!(TryLock::try_acquire(&l.supervisor_lock()), Ok(None))
}

/// Process groups of the recorded daemons, for the /proc scan (each daemon is started as
/// the leader of its own group; the supervisor may share its caller's group, so it is not
/// listed).
pub fn recorded_pgids(l: &Layout) -> Vec<i32> {
    DAEMONS
        .iter()
        .filter_map(|(n, _)| read_pid(l, n))
        .filter_map(|pid| stat_fields(pid).map(|(_, g)| g).or(Some(pid as i32)))
        .collect()
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = sys::read_lossy(path);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    format!("{}:\n{}", path.display(), lines[start..].join("\n"))
}
