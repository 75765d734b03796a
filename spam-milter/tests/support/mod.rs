//! Runs the real `spam-milter` binary for the end-to-end tests, next to a real Rspamd and
//! a real Postfix from the stack-tests harness.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Daemon {
    /// Writes `spam.toml` (socket on a free port, 1 s reload poll, then `extra`) and
    /// starts the daemon; returns once it listens.
    pub fn start(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = stack_tests::ports::free_port().expect("free port");
        let config = dir.path().join("spam.toml");
        std::fs::write(
            &config,
            format!("socket = \"inet:127.0.0.1:{port}\"\nreload-poll-seconds = 1\n{extra}\n"),
        )
        .expect("write config");
        let mut d = Daemon {
            child: None,
            port,
            dir,
            config,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = self.log_path();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_spam-milter"))
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn spam-milter");
        self.child = Some(child);
        let end = Instant::now() + T;
        while !self.log().contains("spam-milter listening on") {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("spam-milter exited with {st}:\n{}", self.log());
            }
            assert!(
                Instant::now() < end,
                "spam-milter did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Postfix milter spec.
    pub fn spec(&self) -> String {
        format!("inet:127.0.0.1:{}", self.port)
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("spam-milter.log")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        stack_tests::sys::read_lossy(&self.log_path())
    }

    /// Waits until the log has at least `n` lines containing `needle`; returns them.
    pub fn wait_lines(&self, needle: &str, n: usize) -> Vec<String> {
        let end = Instant::now() + T;
        loop {
            let lines: Vec<String> = self
                .log()
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_string)
                .collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < end,
                "no {n} log line(s) with {needle:?} in:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            stack_tests::sys::signal(c.id() as i32, sig);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `(name, value)` of every header of a message (CRLF or LF), unfolded, in order.
pub fn headers(msg: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(msg).replace("\r\n", "\n");
    let head = text.split("\n\n").next().unwrap_or("");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.to_string(), v.trim().to_string()));
        }
    }
    out
}

/// Values of the headers called `name` (case-insensitive).
pub fn header_values(msg: &[u8], name: &str) -> Vec<String> {
    headers(msg)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
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
    let (mut c, _) = stack_tests::smtp::SmtpClient::connect(port).expect("connect");
    c.expect("EHLO client.remote.test", 250).expect("EHLO");
    c.expect(&format!("MAIL FROM:<{from}>"), 250).expect("MAIL");
    c.expect(&format!("RCPT TO:<{to}>"), 250).expect("RCPT");
    let r = c.data(msg).expect("DATA");
    let _ = c.cmd("QUIT");
    r
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
