//! Process, file and sandbox utilities shared by the daemon wrappers.

use anyhow::{Context, Result, bail};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Fails with a clear message unless the test runs as root (Postfix, Dovecot
/// and OpenDKIM sandboxes need it).
pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "{what} needs root (euid is {euid}): the mail-stack tests start real daemons; \
             run them as root, e.g. via tests/run-all.sh in CI"
        );
    }
    Ok(())
}

/// Fails with a clear message if `path` is not an executable file.
pub fn require_binary(path: &str) -> Result<()> {
    let meta = fs::metadata(path).with_context(|| {
        format!("required binary {path} is missing: run tests/stack/install-deps.sh as root")
    })?;
    if meta.permissions().mode() & 0o111 == 0 {
        bail!("required binary {path} is not executable");
    }
    Ok(())
}

/// A fresh directory for one daemon instance, removed on drop (kept when
/// `STACK_KEEP_SANDBOX=1`).
#[derive(Debug)]
pub struct Sandbox {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Sandbox {
    /// Creates `<base>/stack-<kind>-XXXXXX`, mode 0755 so daemons' unprivileged
    /// processes (postfix, uid 5000, dovenull) can traverse it.
    pub fn new(kind: &str) -> Result<Sandbox> {
        let base = std::env::var_os("STACK_SANDBOX_BASE")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("stack-{kind}-"))
            .tempdir_in(&base)
            .with_context(|| format!("creating a sandbox under {}", base.display()))?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let path = dir.path().to_path_buf();
        Ok(Sandbox {
            dir: Some(dir),
            path,
        })
    }

    /// The sandbox root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `root/rel`, creating the directory (and parents) with mode 0755.
    pub fn mkdir(&self, rel: &str) -> Result<PathBuf> {
        let p = self.path.join(rel);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
        Ok(p)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::env::var("STACK_KEEP_SANDBOX").is_ok_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("[stack] kept sandbox {}", kept.display());
        }
    }
}

/// Writes `contents` to `path` and backdates its mtime by 60 s: Postfix
/// commands stall ~2 s on a main.cf (or map source) younger than ~2 s.
pub fn write_backdated(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    let f = File::options().write(true).open(path)?;
    f.set_modified(SystemTime::now() - Duration::from_secs(60))?;
    Ok(())
}

/// uid and gid of a system user, from /etc/passwd.
pub fn user_ids(name: &str) -> Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.first() == Some(&name) && f.len() > 3 {
            return Ok((f[2].parse()?, f[3].parse()?));
        }
    }
    bail!(
        "system user {name} does not exist (is its package installed? run tests/stack/install-deps.sh)"
    )
}

/// Recursively chowns `path`.
pub fn chown_r(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() && !path.is_symlink() {
        for e in fs::read_dir(path)? {
            chown_r(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Runs a command to completion, failing with its full output if it exits
/// non-zero.
pub fn run_checked(cmd: &mut Command) -> Result<Output> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs a command to completion (stdin closed), returning its output
/// whatever the exit status.
pub fn run(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))
}

/// Runs a command with `input` on stdin.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("stdin writer panicked"))?
        .with_context(|| format!("writing stdin of {cmd:?}"))?;
    Ok(out)
}

/// Spawns a daemon (foreground or self-daemonizing) in its own process group
/// with stdin from /dev/null and stdout/stderr appended to `log`, so it never
/// holds the test's pipes and a group kill cannot reach the test process.
pub fn spawn_daemon(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0);
    cmd.spawn().with_context(|| format!("spawning {cmd:?}"))
}

/// True while the process exists and is not a zombie (a slow-reaping PID 1
/// leaves stopped daemons as `Z`, for which `kill -0` still succeeds).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Field 3 (state) follows the parenthesised command name.
    match stat.rfind(')').and_then(|i| stat.get(i + 1..)) {
        Some(rest) => !matches!(rest.trim_start().chars().next(), Some('Z') | Some('X')),
        None => false,
    }
}

/// Sends `sig` to a pid (negative pid: a process group); errors ignored.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits until `pid` is gone (or a zombie).
pub fn wait_pid_gone(pid: u32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !pid_alive(pid)
}

/// Stops a child we spawned: SIGTERM, wait up to `grace`, then SIGKILL to its
/// whole process group; always reaps it.
pub fn stop_child(child: &mut Child, grace: Duration) {
    let pid = child.id() as i32;
    if let Ok(Some(_)) = child.try_wait() {
        signal(-pid, libc::SIGKILL);
        return;
    }
    signal(pid, libc::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            // Leftover helpers in the group (daemon children) go too.
            signal(-pid, libc::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(-pid, libc::SIGKILL);
    let _ = child.wait();
}

/// Polls `f` every 50 ms until it returns `Some`, failing after `timeout`
/// with `what` in the message.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a TCP connection to 127.0.0.1:`port` succeeds.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// Waits until an SMTP server on `port` sends a complete greeting line, then
/// says QUIT. Returns the greeting.
pub fn wait_smtp_banner(port: u16, timeout: Duration) -> Result<String> {
    wait_until(timeout, &format!("an SMTP greeting on port {port}"), || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return Ok(None);
        };
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\n") {
            match s.read(&mut byte) {
                Ok(1) => buf.push(byte[0]),
                _ => return Ok(None),
            }
        }
        let _ = s.write_all(b"QUIT\r\n");
        let _ = s.read(&mut [0u8; 256]);
        Ok(Some(String::from_utf8_lossy(&buf).trim_end().to_string()))
    })
}

/// Waits until the file at `path` contains a line containing `needle`;
/// returns that line.
pub fn wait_for_line(path: &Path, needle: &str, timeout: Duration) -> Result<String> {
    wait_until(
        timeout,
        &format!("a line containing {needle:?} in {}", path.display()),
        || {
            let Ok(bytes) = fs::read(path) else {
                return Ok(None);
            };
            Ok(String::from_utf8_lossy(&bytes)
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_string))
        },
    )
}

/// An exclusive `flock` on a file, released on drop: serialises work across
/// threads and processes (e.g. concurrent Postfix starts).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Blocks until the lock on `path` is held.
    pub fn acquire(path: &Path) -> Result<FileLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        // SAFETY: the fd is valid for the lifetime of `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            bail!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(FileLock { _file: file })
    }
}

/// The file's contents as (lossy) UTF-8, empty if unreadable.
pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// What a process (or thread) may do, from `/proc/<pid>/status`: its real, effective,
/// saved and filesystem uids and gids, supplementary groups and capability sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `Uid:` real, effective, saved, filesystem.
    pub uids: Vec<u32>,
    /// `Gid:` real, effective, saved, filesystem.
    pub gids: Vec<u32>,
    /// `Groups:` (supplementary).
    pub groups: Vec<u32>,
    /// `CapInh`, `CapPrm`, `CapEff`, `CapAmb`: the sets a process can act with or pass on
    /// (the bounding set `CapBnd` only caps what an exec could regain, so it is not here).
    pub caps: Vec<(String, u64)>,
}

impl Credentials {
    /// Reads `/proc/<task>/status` (`task`: a pid, or `PID/task/TID` for one thread).
    pub fn of(task: &str) -> Result<Credentials> {
        let path = format!("/proc/{task}/status");
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> Result<&str> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .with_context(|| format!("{path}: no {name} line"))
        };
        let ids = |name: &str| -> Result<Vec<u32>> {
            field(name)?
                .split_whitespace()
                .map(|v| v.parse().with_context(|| format!("{path}: {name} {v:?}")))
                .collect()
        };
        let mut caps = Vec::new();
        for name in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            let v = field(name)?.trim();
            let bits =
                u64::from_str_radix(v, 16).with_context(|| format!("{path}: {name} {v:?}"))?;
            caps.push((name.to_string(), bits));
        }
        Ok(Credentials {
            uids: ids("Uid")?,
            gids: ids("Gid")?,
            groups: ids("Groups")?,
            caps,
        })
    }

    /// The process and each of its threads (`/proc/<pid>/task/*`).
    pub fn of_every_thread(pid: u32) -> Result<Vec<(String, Credentials)>> {
        let mut out = vec![(pid.to_string(), Credentials::of(&pid.to_string())?)];
        for e in fs::read_dir(format!("/proc/{pid}/task"))? {
            let task = format!("{pid}/task/{}", e?.file_name().to_string_lossy());
            out.push((task.clone(), Credentials::of(&task)?));
        }
        Ok(out)
    }

    /// Checks that this is exactly `uid`/`gid` (all four of each), with no supplementary
    /// group other than `gid` and every capability set empty.
    pub fn check_unprivileged(&self, uid: u32, gid: u32) -> Result<()> {
        if self.uids.len() != 4 || self.uids.iter().any(|u| *u != uid) {
            bail!("Uid {:?}, want {uid} x4", self.uids);
        }
        if self.gids.len() != 4 || self.gids.iter().any(|g| *g != gid) {
            bail!("Gid {:?}, want {gid} x4", self.gids);
        }
        if self.groups.iter().any(|g| *g != gid) {
            bail!(
                "supplementary groups {:?}, want none but {gid}",
                self.groups
            );
        }
        if let Some((name, bits)) = self.caps.iter().find(|(_, b)| *b != 0) {
            bail!("{name} {bits:016x}, want no capability");
        }
        Ok(())
    }
}
