//! Runs the real `dkim-milter` binary for the end-to-end tests, and checks signatures
//! with the independent verifiers (dkimpy and `opendkim -t`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[allow(unused_imports)] // not every test binary reads whole header lists
pub use stack_tests::mail::{header_values, headers};

use stack_tests::daemon::DaemonProcess;
use stack_tests::dkim::{DkimKey, dkimpy_verify, opendkim_genkey, opendkim_test_verify};
use stack_tests::dns::DnsStub;

/// Generous: Postfix queue runs and the daemons share two cores with the build.
pub const T: Duration = Duration::from_secs(60);

/// The authserv-id every test daemon uses.
pub const AUTHSERV: &str = "mx.dkim.test";

/// A running `dkim-milter` with its own config, keys dir, log file and DNS stub.
pub struct Daemon {
    proc: DaemonProcess,
    spec: String,
    // The config dir and the DNS stub outlive the process (fields drop in order).
    dir: tempfile::TempDir,
    config: PathBuf,
    dns: DnsStub,
}

impl Daemon {
    /// Starts a [`DnsStub`] (empty: every name is NXDOMAIN until a test publishes it, see
    /// [`Daemon::dns`]), writes `dkim.toml` (socket, keys dir, authserv-id, 1 s poll,
    /// `allow-root` (tests run as root), `dns-servers` = the stub, then `extra` lines) and
    /// starts the daemon; returns once it listens. The verifier never asks the machine's
    /// resolver.
    pub fn start(keys_dir: &Path, extra: &str) -> Daemon {
        Daemon::start_with(
            None,
            &format!(
                "keys-dir = {keys:?}\nauthserv-id = \"{AUTHSERV}\"\nreload-poll-seconds = 1\n\
                 allow-root = true\n{extra}",
                keys = keys_dir.display().to_string(),
            ),
        )
    }

    /// Like [`Daemon::start`] with the whole config given: `body`, plus `socket` (`None`:
    /// inet on a free loopback port) and `dns-servers` = the daemon's own stub.
    pub fn start_with(socket: Option<&str>, body: &str) -> Daemon {
        let mut d = Daemon::spawn(socket, body);
        d.proc
            .wait_ready("dkim-milter listening on", T)
            .unwrap_or_else(|e| panic!("{e:#}"));
        d
    }

    /// Runs the daemon with a config as [`Daemon::start_with`] writes it, expecting it to
    /// exit by itself; its exit code and log.
    pub fn run_to_exit(socket: Option<&str>, body: &str) -> (Option<i32>, String) {
        let mut d = Daemon::spawn(socket, body);
        let code = d.proc.wait_exit(T).unwrap_or_else(|e| panic!("{e:#}"));
        (code, d.log())
    }

    fn spawn(socket: Option<&str>, body: &str) -> Daemon {
        let dns = DnsStub::builder().start().expect("DNS stub");
        let dir = tempfile::tempdir().expect("tempdir");
        // Readable (not writable) by others: a daemon that switches `user` reads its
        // config again as that user.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod tempdir");
        let spec = match socket {
            Some(s) => s.to_string(),
            None => format!(
                "inet:127.0.0.1:{}",
                stack_tests::ports::free_port().expect("free port")
            ),
        };
        let config = dir.path().join("dkim.toml");
        std::fs::write(
            &config,
            format!(
                "socket = \"{spec}\"\ndns-servers = [\"{ns}\"]\n{body}\n",
                ns = dns.nameserver(),
            ),
        )
        .expect("write config");
        let proc = DaemonProcess::spawn(
            "dkim-milter",
            Command::new(env!("CARGO_BIN_EXE_dkim-milter"))
                .arg("--config")
                .arg(&config),
            &dir.path().join("dkim-milter.log"),
        )
        .expect("spawn dkim-milter");
        Daemon {
            proc,
            spec,
            dir,
            config,
            dns,
        }
    }

    /// Postfix milter spec.
    pub fn spec(&self) -> String {
        self.spec.clone()
    }

    /// The daemon's process id (until it was terminated).
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// The daemon's DNS server (its `dns-servers`): publish records with `add_txt`, see
    /// what the verifier asked with `queries_for`.
    pub fn dns(&self) -> &DnsStub {
        &self.dns
    }

    /// The config file (tests rewrite it to exercise reload).
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

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        self.proc.signal(sig)
    }

    /// Waits for the daemon to exit by itself (after a signal sent with [`Daemon::signal`]);
    /// its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.proc
            .wait_exit(timeout)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// SIGTERM, then waits for the exit; returns whether it exited 0 in time.
    pub fn terminate(&mut self) -> bool {
        self.proc.terminate(Duration::from_secs(10))
    }
}

/// An opendkim-genkey key in `{keys}/{domain}/{selector}.private`.
pub fn genkey(keys: &Path, domain: &str, selector: &str, bits: u32) -> DkimKey {
    opendkim_genkey(domain, selector, bits, &keys.join(domain)).expect("opendkim-genkey")
}

/// The record of a key made by `dkim-milter keygen` (its `.txt`).
pub fn our_keygen(keys: &Path, domain: &str, selector: &str, ed25519: bool) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dkim-milter"));
    cmd.args(["keygen", "--domain", domain, "--selector", selector]);
    if ed25519 {
        cmd.arg("--ed25519");
    }
    let o = cmd.arg("--keys-dir").arg(keys).output().expect("keygen");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let txt = std::fs::read_to_string(keys.join(domain).join(format!("{selector}.txt")))
        .expect("keygen .txt");
    (
        format!("{selector}._domainkey.{domain}"),
        stack_tests::dkim::txt_record_from_zone(&txt).expect("TXT data"),
    )
}

/// `msg` with every bare LF made CRLF (Maildir files use LF).
pub fn crlf(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 16);
    let mut prev = 0u8;
    for &b in msg {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// The `tag=` value of a DKIM-Signature.
pub fn tag(sig: &str, tag: &str) -> Option<String> {
    sig.split(';').find_map(|t| {
        let (k, v) = t.split_once('=')?;
        (k.trim() == tag).then(|| v.split_whitespace().collect::<String>())
    })
}

/// Asserts that `msg` carries exactly `sigs` DKIM signatures and that both dkimpy and
/// `opendkim -t` pass every one.
pub fn assert_verifies(msg: &[u8], records: &[(String, String)], sigs: usize) {
    assert_eq!(
        header_values(msg, "DKIM-Signature").len(),
        sigs,
        "signature count in:\n{}",
        String::from_utf8_lossy(msg)
    );
    let py = dkimpy_verify(msg, records).expect("dkimpy runs");
    assert!(
        py.all_pass && py.lines.len() == sigs,
        "dkimpy: {}\n{}",
        py.output,
        String::from_utf8_lossy(msg)
    );
    // all_pass needs one `dkim=pass` per signature in OpenDKIM's Authentication-Results.
    let od = opendkim_test_verify(msg, records).expect("opendkim -t runs");
    assert!(
        od.all_pass,
        "opendkim -t:\n{}\n{}",
        od.output,
        String::from_utf8_lossy(msg)
    );
}

/// Message with the given From/Subject and a small body (CRLF).
pub fn message(from: &str, to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Fri, 28 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <{id}@dkim.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello from the end-to-end test.\r\n  Indented line with trailing space \r\n\r\n",
        id = subject.replace(' ', "-")
    )
    .into_bytes()
}

/// The sink message whose Subject is `subject`.
pub fn by_subject(msgs: &[stack_tests::sink::SinkMessage], subject: &str) -> Vec<u8> {
    msgs.iter()
        .find(|m| {
            header_values(&m.data, "Subject")
                .iter()
                .any(|s| s == subject)
        })
        .unwrap_or_else(|| panic!("no message with Subject {subject:?} among {}", msgs.len()))
        .data
        .clone()
}

/// One message over plain SMTP to 127.0.0.1:`port`; the end-of-data reply (or the
/// first refusal).
pub fn smtp_send(port: u16, from: &str, to: &str, msg: &[u8]) -> stack_tests::swaks::SmtpReply {
    stack_tests::mail::smtp_send(port, from, to, msg).expect("SMTP")
}

/// Signs `msg` (CRLF) with dkimpy as an outside domain would; returns the signed message.
pub fn dkimpy_sign(msg: &[u8], domain: &str, selector: &str, key: &Path) -> Vec<u8> {
    let script = "import dkim,sys\nm=sys.stdin.buffer.read()\n\
                  s=dkim.sign(m,sys.argv[1].encode(),sys.argv[2].encode(),open(sys.argv[3],'rb').read(),\
                  canonicalize=(b'relaxed',b'relaxed'),include_headers=[b'from',b'to',b'subject',b'date',b'message-id'])\n\
                  sys.stdout.buffer.write(s+m)\n";
    let out = stack_tests::sys::run_with_input(
        Command::new(stack_tests::PYTHON)
            .args(["-c", script, selector, domain])
            .arg(key),
        msg,
    )
    .expect("dkimpy sign");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
