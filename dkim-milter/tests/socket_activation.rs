//! Socket activation: dkim-milter serves on the socket it is handed (systemd's
//! `LISTEN_FDS` protocol) instead of binding its configured one, tells the service manager
//! READY=1 and STOPPING=1, and, restarted on the same held socket under a real Postfix
//! taking a steady stream of new SMTP sessions, refuses no connection: not one message is
//! tempfailed or rejected, every one carries the milter's Authentication-Results.
//!
//! The first test starts the daemon with `/usr/bin/systemd-socket-activate` (systemd's own
//! tool for running a unit's command on a socket it made). The restart test holds the
//! listening socket itself, as systemd holds a `.socket` unit's, and passes it to each
//! successive process the same way systemd does: fd 3, `LISTEN_FDS=1`, `LISTEN_PID`.

mod support;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stack_tests::daemon::DaemonProcess;
use stack_tests::dns::DnsStub;
use stack_tests::postfix::Postfix;
use stack_tests::smtp::SmtpClient;
use support::{AUTHSERV, T, genkey, header_values};

const ACTIVATE: &str = "/usr/bin/systemd-socket-activate";
const INHERITED: &str = "using the socket systemd passed";

/// A config dir: keys, a DNS stub (the verifier never asks the machine's resolver), and a
/// `socket` line naming a port that nothing should bind (it must stay closed).
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    configured_port: u16,
    _dns: DnsStub,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).expect("keys dir");
        genkey(&keys, "sock.test", "s1", 2048);
        let dns = DnsStub::builder().start().expect("DNS stub");
        let configured_port = stack_tests::ports::free_port().expect("port");
        let config = dir.path().join("dkim.toml");
        std::fs::write(
            &config,
            format!(
                "socket = \"inet:127.0.0.1:{configured_port}\"\ndns-servers = [\"{ns}\"]\n\
                 keys-dir = {keys:?}\nauthserv-id = \"{AUTHSERV}\"\nallow-root = true\n\
                 log-level = \"info\"\n",
                ns = dns.nameserver(),
                keys = keys.display().to_string(),
            ),
        )
        .expect("config");
        Setup {
            dir,
            config,
            configured_port,
            _dns: dns,
        }
    }

    fn log(&self, tag: &str) -> PathBuf {
        self.dir.path().join(format!("dkim-milter-{tag}.log"))
    }
}

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`.
struct Notify {
    path: PathBuf,
    sock: UnixDatagram,
}

impl Notify {
    fn new(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("notify socket");
        sock.set_read_timeout(Some(T)).expect("timeout");
        Notify { path, sock }
    }

    /// The next notification (one datagram).
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: alice@remote.test\r\nTo: user@example.test\r\nSubject: {subject}\r\n\r\nHello {subject}.\r\n"
    )
    .into_bytes()
}

/// An SMTP client's error (anyhow's, from stack-tests), sendable across threads.
type SmtpResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// One SMTP session of `n` messages, then QUIT; each message's final reply code.
fn session(port: u16, name: &str, n: usize) -> SmtpResult<Vec<(String, u16, String)>> {
    let (mut c, _) = SmtpClient::connect(port)?;
    c.expect("EHLO client.remote.test", 250)?;
    let mut out = Vec::new();
    for i in 1..=n {
        let subject = format!("{name}-m{i}");
        c.expect("MAIL FROM:<alice@remote.test>", 250)?;
        c.expect("RCPT TO:<user@example.test>", 250)?;
        let r = c.data(&message(&subject))?;
        out.push((subject, r.code, r.text));
    }
    c.expect("QUIT", 221)?;
    Ok(out)
}

fn assert_authenticated(pf: &Postfix, sent: &[(String, u16, String)]) {
    let msgs = pf
        .maildir("example.test", "user")
        .wait_for(sent.len(), T)
        .expect("delivered");
    assert_eq!(msgs.len(), sent.len(), "delivered vs sent");
    for (subject, _, _) in sent {
        let msg = msgs
            .iter()
            .find(|m| header_values(m, "Subject").iter().any(|s| s == subject))
            .unwrap_or_else(|| panic!("{subject} not delivered"));
        let ar = header_values(msg, "Authentication-Results");
        assert!(
            ar.iter()
                .any(|a| a.starts_with(&format!("{AUTHSERV};")) && a.contains("dkim=none")),
            "{subject}: not through dkim-milter: {ar:?}"
        );
    }
}

#[test]
fn systemd_socket_activate_hands_the_socket_and_gets_ready_and_stopping() {
    if !Path::new(ACTIVATE).exists() {
        eprintln!("SKIP: {ACTIVATE} is missing (the systemd package)");
        return;
    }
    let setup = Setup::new();
    let notify = Notify::new(setup.dir.path());
    let port = stack_tests::ports::free_port().expect("port");
    let mut d = DaemonProcess::spawn(
        "dkim-milter",
        Command::new(ACTIVATE)
            .args(["-l", &format!("127.0.0.1:{port}")])
            .args(["--fdname", "dkim-milter"])
            .args(["-E", &format!("NOTIFY_SOCKET={}", notify.path.display())])
            .arg(env!("CARGO_BIN_EXE_dkim-milter"))
            .arg("--config")
            .arg(&setup.config),
        &setup.log("activated"),
    )
    .expect("spawn");
    // systemd-socket-activate, like an on-demand .socket unit, starts the daemon on the
    // first connection: Postfix's, for the first SMTP session.
    d.wait_ready(&format!("Listening on 127.0.0.1:{port}"), T)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let pf = Postfix::builder()
        .mx_milters(&format!("inet:127.0.0.1:{port}"))
        .milter_default_action("tempfail")
        .start()
        .expect("postfix");
    let sent = session(pf.mx_port(), "activated", 2).expect("session");
    assert!(sent.iter().all(|s| s.1 == 250), "{sent:?}\n{}", d.log());
    assert_authenticated(&pf, &sent);
    assert_eq!(notify.next().trim(), "READY=1", "{}", d.log());
    let log = d.log();
    assert!(log.contains(INHERITED), "{log}");
    assert!(
        log.contains("name=\"dkim-milter\""),
        "the fd name is logged: {log}"
    );
    assert!(
        log.contains(&format!("dkim-milter listening on inet:127.0.0.1:{port}")),
        "{log}"
    );
    assert!(
        !stack_tests::sys::port_open(setup.configured_port),
        "the configured socket was bound too"
    );

    d.signal(libc::SIGTERM);
    assert_eq!(notify.next().trim(), "STOPPING=1", "{}", d.log());
    assert_eq!(d.wait_exit(T).expect("exit"), Some(0), "{}", d.log());
}

/// Starts dkim-milter on `listener`, passed the way systemd passes a socket.
fn spawn_on(setup: &Setup, listener: RawFd, tag: &str) -> DaemonProcess {
    let mut cmd = Command::new("/bin/sh");
    // LISTEN_PID must be the daemon's own pid: the shell's, which exec keeps.
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_dkim-milter"))
        .arg("--config")
        .arg(&setup.config)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "dkim-milter");
    // SAFETY: dup2 is async-signal-safe; the child only moves the held listener to fd 3
    // (dup2 clears close-on-exec on the copy) before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(listener, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut d = DaemonProcess::spawn("dkim-milter", &mut cmd, &setup.log(tag)).expect("spawn");
    d.wait_ready("dkim-milter listening on", T)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(d.log().contains(INHERITED), "{}", d.log());
    d
}

#[test]
fn restart_on_a_held_socket_under_postfix_refuses_nothing() {
    let setup = Setup::new();
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let mut a = spawn_on(&setup, held.as_raw_fd(), "A");
    let pf = Postfix::builder()
        .mx_milters(&format!("inet:127.0.0.1:{port}"))
        .milter_default_action("tempfail")
        .start()
        .expect("postfix");
    let mx = pf.mx_port();

    // A steady stream of new SMTP sessions (each a new milter connection), two messages
    // each, from three threads, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (stop, started, finished) = (stop.clone(), started.clone(), finished.clone());
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    started.fetch_add(1, Ordering::SeqCst);
                    sent.extend(session(mx, &format!("w{w}s{n}"), 2)?);
                    finished.fetch_add(1, Ordering::SeqCst);
                }
                SmtpResult::Ok(sent)
            })
        })
        .collect();
    let wait_started = |at_least: usize| {
        let end = Instant::now() + T;
        while started.load(Ordering::SeqCst) < at_least {
            assert!(Instant::now() < end, "sessions stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_started(6);

    // The restart: A drains and exits; for a while no process runs at all, while
    // Postfix keeps opening milter connections on the held socket; then B.
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait_exit(T).expect("A exits"), Some(0), "{}", a.log());
    std::thread::sleep(Duration::from_millis(1500));
    // Sessions still open 1.5 s after A exited wait for a milter: their connections sit
    // in the held socket's backlog.
    let gap = started.load(Ordering::SeqCst) - finished.load(Ordering::SeqCst);
    let b = spawn_on(&setup, held.as_raw_fd(), "B");
    let after_b = started.load(Ordering::SeqCst);
    wait_started(after_b + 6);
    stop.store(true, Ordering::SeqCst);
    let mut sent = Vec::new();
    for w in workers {
        sent.extend(w.join().expect("worker").expect("session"));
    }

    let failed: Vec<_> = sent.iter().filter(|s| s.1 != 250).collect();
    assert!(failed.is_empty(), "tempfailed or rejected: {failed:?}");
    assert!(
        gap >= 1,
        "no SMTP session waited while no milter ran; the test proved nothing"
    );
    assert_authenticated(&pf, &sent);
    let log = pf.log();
    for line in log.lines().filter(|l| l.contains("milter")) {
        assert!(
            !(line.contains("warning") || line.contains("reject") || line.contains("error")),
            "Postfix logged a milter problem: {line}"
        );
    }
    assert!(b.log().contains("dkim-milter listening on"), "{}", b.log());
    eprintln!(
        "{} messages, none refused; {gap} SMTP session(s) waited while no milter process ran",
        sent.len()
    );
}
