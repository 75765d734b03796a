//! A syslog (or journal) listener of the test's own, for daemons that log with `syslog(3)`
//! or the journal's native protocol.
//!
//! The C library always writes to `/dev/log` and `tracing-journald` to
//! `/run/systemd/journal/socket`, so the daemon runs in a private mount namespace
//! (`unshare -m`). For syslog its `/dev` is a sandbox directory: the few device nodes a
//! process needs are bind-mounted into it, and its `log` is the listener's unix datagram
//! socket. For the journal its `/run` is an empty tmpfs holding only the listener's socket.
//! The real `/dev`, `/run` (and any real syslogd or journald) are never touched.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::sys::Sandbox;

/// Device nodes bind-mounted into the private `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// One datagram as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogLine {
    /// The `<PRI>` value, `facility * 8 + severity` (`None`: no PRI prefix).
    pub pri: Option<u8>,
    /// The whole datagram, lossy UTF-8.
    pub raw: String,
    /// The datagram's bytes.
    pub bytes: Vec<u8>,
}

impl SyslogLine {
    /// `pri / 8` (RFC 5424 §6.2.1: mail = 2).
    pub fn facility(&self) -> Option<u8> {
        self.pri.map(|p| p >> 3)
    }

    /// `pri % 8` (info = 6, warning = 4, error = 3).
    pub fn severity(&self) -> Option<u8> {
        self.pri.map(|p| p & 7)
    }

    /// The datagram as journal fields (native protocol: `KEY=value` lines, or `KEY`, a
    /// little-endian u64 length, the value and a newline); `None` if malformed.
    pub fn journal_fields(&self) -> Option<Vec<(String, String)>> {
        let mut rest = self.bytes.as_slice();
        let mut out = Vec::new();
        while !rest.is_empty() {
            let nl = rest.iter().position(|&b| b == b'\n')?;
            let line = &rest[..nl];
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                out.push((
                    String::from_utf8_lossy(&line[..eq]).into_owned(),
                    String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
                ));
                rest = &rest[nl + 1..];
            } else {
                let after = &rest[nl + 1..];
                let len = u64::from_le_bytes(after.get(..8)?.try_into().ok()?) as usize;
                let value = after.get(8..8usize.checked_add(len)?)?;
                out.push((
                    String::from_utf8_lossy(line).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
                rest = after.get(8 + len + 1..)?;
            }
        }
        Some(out)
    }

    /// The value of journal field `key`.
    pub fn journal_field(&self, key: &str) -> Option<String> {
        self.journal_fields()?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

fn parse(datagram: &[u8]) -> SyslogLine {
    let raw = String::from_utf8_lossy(datagram).into_owned();
    let pri = raw
        .strip_prefix('<')
        .and_then(|r| r.split_once('>'))
        .and_then(|(p, _)| p.parse().ok());
    SyslogLine {
        pri,
        raw,
        bytes: datagram.to_vec(),
    }
}

type Shared = Arc<(Mutex<Vec<SyslogLine>>, Condvar)>;

/// A listening `/dev/log` stand-in; stops on drop.
#[derive(Debug)]
pub struct SyslogListener {
    sandbox: Sandbox,
    dev: PathBuf,
    journal: bool,
    shared: Shared,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SyslogListener {
    /// Binds `<sandbox>/dev/log` and starts collecting datagrams.
    pub fn start() -> Result<SyslogListener> {
        SyslogListener::bind(false)
    }

    /// Binds a journal socket and starts collecting datagrams (see
    /// [`SyslogLine::journal_fields`]).
    pub fn start_journald() -> Result<SyslogListener> {
        SyslogListener::bind(true)
    }

    fn bind(journal: bool) -> Result<SyslogListener> {
        crate::sys::require_binary("/usr/bin/unshare")?;
        let sandbox = Sandbox::new("syslog")?;
        let dev = sandbox.mkdir("dev")?;
        for d in DEVICES {
            std::fs::write(dev.join(d), "")?;
        }
        let path = if journal {
            sandbox.path().join("journal.socket")
        } else {
            dev.join("log")
        };
        let sock = UnixDatagram::bind(&path)?;
        // Daemons that dropped root must still be able to send.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let shared: Shared = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // A syslog datagram is at most a few KiB (glibc truncates); 64 KiB is any.
            let mut buf = vec![0u8; 64 * 1024];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let (lock, cv) = &*s2;
                    if let Ok(mut v) = lock.lock() {
                        v.push(parse(&buf[..n]));
                    }
                    cv.notify_all();
                }
            }
        });
        Ok(SyslogListener {
            sandbox,
            dev,
            journal,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// The sandbox (kept with `STACK_KEEP_SANDBOX=1`).
    pub fn dir(&self) -> &Path {
        self.sandbox.path()
    }

    /// `program args...` wrapped to run in a private mount namespace whose `/dev/log` (or
    /// journal socket) is this listener (`exec`, so the child's pid is the program's).
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let dev = self.dev.display();
        let mut script = String::from("set -e\n");
        if self.journal {
            script.push_str(&format!(
                "mount -t tmpfs tmpfs /run\nmkdir -p /run/systemd/journal\n\
                 touch /run/systemd/journal/socket\n\
                 mount --bind {} /run/systemd/journal/socket\n",
                self.sandbox.path().join("journal.socket").display()
            ));
        } else {
            for d in DEVICES {
                script.push_str(&format!("mount --bind /dev/{d} {dev}/{d}\n"));
            }
            script.push_str(&format!("mount --rbind {dev} /dev\n"));
        }
        script.push_str("exec \"$0\" \"$@\"\n");
        let mut cmd = Command::new("/usr/bin/unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(script)
            .arg(program)
            .args(args);
        cmd
    }

    /// Every datagram so far.
    pub fn lines(&self) -> Vec<SyslogLine> {
        self.shared.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until a datagram contains `needle`; returns all that do.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<Vec<SyslogLine>> {
        let end = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut v = lock
            .lock()
            .map_err(|_| anyhow::anyhow!("syslog listener poisoned"))?;
        loop {
            let hits: Vec<SyslogLine> = v
                .iter()
                .filter(|l| l.raw.contains(needle))
                .cloned()
                .collect();
            if !hits.is_empty() {
                return Ok(hits);
            }
            let now = Instant::now();
            if now >= end {
                let all: Vec<&str> = v.iter().map(|l| l.raw.as_str()).collect();
                bail!(
                    "no syslog line with {needle:?} in {timeout:?}; got:\n{}",
                    all.join("\n")
                );
            }
            v = cv
                .wait_timeout(v, end - now)
                .map_err(|_| anyhow::anyhow!("syslog listener poisoned"))?
                .0;
        }
    }
}

impl Drop for SyslogListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn pri_is_split() {
        let l = parse(b"<22>Dec  2 12:00:00 dkim-milter[7]: x");
        assert_eq!((l.facility(), l.severity()), (Some(2), Some(6)));
        assert_eq!(parse(b"no pri").pri, None);
        let mut j = b"MESSAGE=hi\nPRIORITY=6\nSYSLOG_FACILITY\n".to_vec();
        j.extend_from_slice(&1u64.to_le_bytes());
        j.extend_from_slice(b"2\n");
        let l = parse(&j);
        assert_eq!(l.journal_field("PRIORITY").as_deref(), Some("6"));
        assert_eq!(l.journal_field("SYSLOG_FACILITY").as_deref(), Some("2"));
        assert_eq!(parse(b"KEY\n\x05").journal_fields(), None);
    }
}
