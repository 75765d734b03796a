//! Runs the real `spam-milter` binary for the end-to-end tests, next to a real Rspamd and
//! a real Postfix from the stack-tests harness.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stack_tests::daemon::DaemonProcess;
pub use stack_tests::mail::header_values;

/// Generous: Postfix queue runs and the daemons share two cores with the build.
pub const T: Duration = Duration::from_secs(60);

/// The GTUBE family (rspamd test patterns; YJS and ZJS need `enable_test_patterns`,
/// which the harness's Rspamd sets).
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
/// Rspamd's `add header` test pattern.
pub const YJS: &str = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
/// Rspamd's `rewrite subject` test pattern.
pub const ZJS: &str = "ZJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// A running `spam-milter` with its own config and log file.
pub struct Daemon {
    proc: DaemonProcess,
    spec: String,
    // Outlives the process (fields drop in order).
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Daemon {
    /// Writes `spam.toml` (socket on a free port, 1 s reload poll, `allow-root` as the
    /// tests run as root, then `extra`) and starts the daemon; returns once it listens.
    pub fn start(extra: &str) -> Daemon {
        Daemon::start_in(
            tempfile::tempdir().expect("tempdir"),
            &format!("allow-root = true\n{extra}"),
        )
    }

    /// As [`Daemon::start`] in `dir` (which it keeps), without `allow-root`.
    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Daemon {
        let port = stack_tests::ports::free_port().expect("free port");
        Daemon::start_on(dir, &format!("inet:127.0.0.1:{port}"), extra)
    }

    /// As [`Daemon::start_in`], listening on `socket` (a Postfix milter spec such as
    /// `unix:/path`).
    pub fn start_on(dir: tempfile::TempDir, socket: &str, extra: &str) -> Daemon {
        let config = dir.path().join("spam.toml");
        std::fs::write(
            &config,
            format!("socket = {socket:?}\nreload-poll-seconds = 1\n{extra}\n"),
        )
        .expect("write config");
        let mut proc = DaemonProcess::spawn(
            "spam-milter",
            Command::new(env!("CARGO_BIN_EXE_spam-milter"))
                .arg("--config")
                .arg(&config),
            &dir.path().join("spam-milter.log"),
        )
        .expect("spawn spam-milter");
        proc.wait_ready("spam-milter listening on", T)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Daemon {
            proc,
            spec: socket.to_owned(),
            dir,
            config,
        }
    }

    /// Runs the daemon with `spam.toml` = `body` (nothing added) until it exits (at most
    /// [`T`]); its exit code and log.
    pub fn run_to_exit(body: &str) -> (Option<i32>, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("spam.toml");
        std::fs::write(&config, body).expect("write config");
        Daemon::run_config_to_exit(&config)
    }

    /// Runs the daemon with `--config config` until it exits (at most [`T`]); its exit
    /// code and log (written beside the config).
    pub fn run_config_to_exit(config: &Path) -> (Option<i32>, String) {
        let dir = config.parent().expect("config in a directory");
        let mut proc = DaemonProcess::spawn(
            "spam-milter",
            Command::new(env!("CARGO_BIN_EXE_spam-milter"))
                .arg("--config")
                .arg(config),
            &dir.join("spam-milter.log"),
        )
        .expect("spawn spam-milter");
        let code = proc.wait_exit(T).unwrap_or_else(|e| panic!("{e:#}"));
        (code, proc.log())
    }

    /// Waits (at most [`T`]) for the daemon to exit; its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.proc.wait_exit(T).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Postfix milter spec.
    pub fn spec(&self) -> String {
        self.spec.clone()
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Waits until the log has at least `n` lines containing `needle`; returns them.
    pub fn wait_lines(&self, needle: &str, n: usize) -> Vec<String> {
        self.proc
            .wait_lines(needle, n, T)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid().expect("spam-milter runs")
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        self.proc.signal(sig)
    }
}

/// A message (CRLF) with `extra` header lines (each ending in CRLF) and `body`.
pub fn message(from: &str, to: &str, subject: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\n\
         Message-ID: <{id}@remote.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         {extra}\r\n{body}\r\n",
        id = subject.replace(' ', "-")
    )
    .into_bytes()
}

/// One message over plain SMTP to 127.0.0.1:`port`; the end-of-data reply (or the
/// first refusal).
pub fn smtp_send(port: u16, from: &str, to: &str, msg: &[u8]) -> stack_tests::swaks::SmtpReply {
    stack_tests::mail::smtp_send(port, from, to, msg).expect("SMTP")
}

/// The Maildir message whose Subject contains `subject`.
pub fn by_subject(msgs: &[Vec<u8>], subject: &str) -> Vec<u8> {
    msgs.iter()
        .find(|m| {
            header_values(m, "Subject")
                .iter()
                .any(|s| s.contains(subject))
        })
        .unwrap_or_else(|| panic!("no message with Subject {subject:?} among {}", msgs.len()))
        .clone()
}
