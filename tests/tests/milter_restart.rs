//! Restarting a milter under a real Postfix that is delivering a steady stream over
//! persistent SMTP sessions: not one message is tempfailed or rejected.
//!
//! The milter is the `add-header` example (`milter_examples::add_header::AddHeader` served
//! by `milter_examples::cli::serve`, the binary's own code path: default server settings,
//! SIGTERM handled), run as a child process of this test binary. The restart is SIGTERM
//! to the old process, then a new process on the same port.
//!
//! What this shows is the drain: the old process stops listening at once but keeps
//! serving the SMTP sessions it has, further messages included, until Postfix ends them;
//! the new one takes the sessions that start after it listens. What it does not cover
//! (and avoids on purpose) is an SMTP session that starts in the instant between the old
//! process closing its listener and the new one binding: a process that binds its own
//! address has Postfix's connection refused then (`milter_default_action` applies). With
//! an inherited listener (socket activation) that gap is closed; that is tested in
//! dkim-milter/tests/socket_activation.rs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use milter_examples::add_header::AddHeader;
use stack_tests::ports::free_port;
use stack_tests::postfix::Postfix;
use stack_tests::smtp::SmtpClient;
use stack_tests::sys;

const T: Duration = Duration::from_secs(60);
const CHILD_PORT: &str = "MILTER_RESTART_CHILD_PORT";
const CHILD_TAG: &str = "MILTER_RESTART_CHILD_TAG";
const HEADER: &str = "X-Restart-Milter";

/// Not a test of its own: the milter process, when this binary is run with
/// [`CHILD_PORT`] set (by [`Milter::spawn`]). Otherwise it returns at once.
#[test]
fn milter_child_process() {
    let Ok(port) = std::env::var(CHILD_PORT) else {
        return;
    };
    let tag = std::env::var(CHILD_TAG).unwrap_or_default();
    milter_examples::cli::init_logging();
    let args = milter_examples::cli::Args::parse(
        ["--socket".to_owned(), format!("inet:127.0.0.1:{port}")],
        &[],
        "milter_child_process",
    )
    .expect("args");
    let milter = AddHeader::new(HEADER, &format!("instance {tag}")).expect("header");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(milter_examples::cli::serve(&args, move || milter.clone()))
        .expect("serve");
    eprintln!("milter {tag}: exiting");
}

/// A milter child process; killed on drop if still running.
struct Milter {
    child: Child,
    log: PathBuf,
}

impl Milter {
    fn spawn(port: u16, tag: &str, dir: &Path) -> Result<Milter> {
        let log = dir.join(format!("milter-{tag}.log"));
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["milter_child_process", "--exact", "--nocapture"])
            .env(CHILD_PORT, port.to_string())
            .env(CHILD_TAG, tag)
            .env("RUST_LOG", "info");
        let child = sys::spawn_daemon(&mut cmd, &log)?;
        Ok(Milter { child, log })
    }

    fn log(&self) -> String {
        sys::read_lossy(&self.log)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The exit status once it has exited within `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > end {
                bail!(
                    "milter still running after {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Milter {
    fn drop(&mut self) {
        sys::stop_child(&mut self.child, Duration::from_secs(5));
    }
}

fn listening(port: u16) -> bool {
    sys::port_open(port)
}

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: alice@remote.test\r\nTo: user@example.test\r\nSubject: {subject}\r\n\r\nHello {subject}.\r\n"
    )
    .into_bytes()
}

/// One SMTP reply to the end of a message.
#[derive(Debug, Clone)]
struct Sent {
    subject: String,
    code: u16,
    text: String,
    /// Sent after the old milter got SIGTERM.
    after_sigterm: bool,
}

/// A persistent SMTP session sending messages, 50 ms apart, until `stop` is set (or
/// `limit` messages); QUITs at the end. Counts its sent messages in `count`.
fn session(
    port: u16,
    name: String,
    limit: usize,
    stop: Arc<AtomicBool>,
    sigterm: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> Result<Vec<Sent>> {
    let (mut c, _) = SmtpClient::connect(port)?;
    c.expect("EHLO client.remote.test", 250)?;
    let mut out = Vec::new();
    for n in 1..=limit {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let subject = format!("{name}-m{n}");
        let after_sigterm = sigterm.load(Ordering::SeqCst);
        c.expect("MAIL FROM:<alice@remote.test>", 250)?;
        c.expect("RCPT TO:<user@example.test>", 250)?;
        let r = c.data(&message(&subject))?;
        out.push(Sent {
            subject,
            code: r.code,
            text: r.text,
            after_sigterm,
        });
        count.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
    }
    c.expect("QUIT", 221)?;
    Ok(out)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    sys::wait_until(T, what, || Ok(f().then_some(())))
}

/// The `X-Restart-Milter` values of a delivered message, and its subject.
fn stamp(msg: &[u8]) -> (String, Vec<String>) {
    let text = String::from_utf8_lossy(msg);
    let head = text.split("\n\n").next().unwrap_or_default();
    let mut subject = String::new();
    let mut stamps = Vec::new();
    for line in head.lines() {
        if let Some(s) = line.strip_prefix("Subject: ") {
            subject = s.trim().to_owned();
        }
        if let Some(v) = line.strip_prefix(&format!("{HEADER}: ")) {
            stamps.push(v.trim().to_owned());
        }
    }
    (subject, stamps)
}

#[test]
fn restart_under_postfix_tempfails_and_rejects_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let mut old = Milter::spawn(port, "A", dir.path())?;
    wait_for("milter A listening", || listening(port))?;
    let pf = Postfix::builder()
        .mx_milters(&format!("inet:127.0.0.1:{port}"))
        .milter_default_action("tempfail")
        .start()?;
    let mx = pf.mx_port();

    // A steady stream over three persistent SMTP sessions (one milter connection each).
    let stop = Arc::new(AtomicBool::new(false));
    let sigterm = Arc::new(AtomicBool::new(false));
    let counts: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
    let old_sessions: Vec<_> = counts
        .iter()
        .enumerate()
        .map(|(i, count)| {
            let (stop, sigterm, count) = (stop.clone(), sigterm.clone(), count.clone());
            std::thread::spawn(move || session(mx, format!("old{i}"), 1000, stop, sigterm, count))
        })
        .collect();
    let sent_by = |counts: &[Arc<AtomicUsize>]| -> Vec<usize> {
        counts.iter().map(|c| c.load(Ordering::SeqCst)).collect()
    };
    wait_for("two messages per session before the restart", || {
        sent_by(&counts).iter().all(|&n| n >= 2)
    })?;

    // The restart: SIGTERM to the old process ...
    sigterm.store(true, Ordering::SeqCst);
    let at_sigterm = sent_by(&counts);
    sys::signal(old.pid(), libc::SIGTERM);
    // ... which stops listening at once but keeps running (draining) ...
    wait_for("milter A to stop listening", || !listening(port))?;
    ensure!(
        old.child.try_wait()?.is_none(),
        "the old milter exited with sessions open; log:\n{}",
        old.log()
    );
    // ... and a new process on the same port.
    let mut new = Milter::spawn(port, "B", dir.path())?;
    wait_for("milter B listening", || listening(port))?;

    // The open sessions go on delivering through the old process.
    wait_for("two more messages per session after the SIGTERM", || {
        sent_by(&counts)
            .iter()
            .zip(&at_sigterm)
            .all(|(&now, &then)| now >= then + 2)
    })?;
    // New sessions, started while both run, go to the new one.
    let new_sessions: Vec<_> = (0..2)
        .map(|i| {
            let (stop, sigterm) = (Arc::new(AtomicBool::new(false)), sigterm.clone());
            std::thread::spawn(move || {
                session(mx, format!("new{i}"), 3, stop, sigterm, Arc::default())
            })
        })
        .collect();
    let mut sent: Vec<Sent> = Vec::new();
    for t in new_sessions {
        sent.extend(t.join().expect("new session thread")?);
    }
    // The stream ends; the old sessions QUIT, and the old process, drained, exits by
    // itself, well before its 30 s deadline.
    stop.store(true, Ordering::SeqCst);
    let quit_at = Instant::now();
    for t in old_sessions {
        sent.extend(t.join().expect("old session thread")?);
    }
    let status = old.wait_exit(Duration::from_secs(20))?;
    let old_log = old.log();
    ensure!(status.success(), "old milter: {status}; log:\n{old_log}");
    ensure!(
        quit_at.elapsed() < Duration::from_secs(20),
        "old milter took {:?} to exit",
        quit_at.elapsed()
    );
    ensure!(
        old_log.contains("shutting down: no longer accepting"),
        "{old_log}"
    );
    ensure!(old_log.contains("server stopped"), "{old_log}");
    ensure!(
        !old_log.contains("drain deadline passed"),
        "the old milter cut sessions at its deadline:\n{old_log}"
    );

    // Not one message tempfailed or rejected.
    let refused: Vec<&Sent> = sent.iter().filter(|s| s.code != 250).collect();
    ensure!(refused.is_empty(), "refused: {refused:?}");
    let after = sent.iter().filter(|s| s.after_sigterm).count();
    ensure!(
        after >= 6 + 6,
        "only {after} messages sent after the SIGTERM"
    );

    // Every message delivered once, stamped once, by the process that had its session.
    let msgs = pf.maildir("example.test", "user").wait_for(sent.len(), T)?;
    ensure!(
        msgs.len() == sent.len(),
        "{} delivered, {} sent",
        msgs.len(),
        sent.len()
    );
    let by_subject: HashMap<String, Vec<String>> = msgs.iter().map(|m| stamp(m)).collect();
    for s in &sent {
        let stamps = by_subject
            .get(&s.subject)
            .with_context(|| format!("{} not delivered", s.subject))?;
        let want = if s.subject.starts_with("old") {
            "instance A"
        } else {
            "instance B"
        };
        ensure!(
            stamps == &[want.to_owned()],
            "{}: {stamps:?}, want [{want}] ({})",
            s.subject,
            s.text
        );
    }
    let log = pf.log();
    for needle in ["milter", "451", "421", "default_action"] {
        for line in log.lines().filter(|l| l.contains(needle)) {
            ensure!(
                !(line.contains("warning") || line.contains("reject") || line.contains("error")),
                "Postfix logged a milter problem: {line}"
            );
        }
    }

    let by_b = sent.iter().filter(|s| s.subject.starts_with("new")).count();
    eprintln!(
        "{} messages delivered, none refused: {after} sent after the SIGTERM ({} of them \
         through the draining old process), {by_b} through the new one",
        sent.len(),
        after - by_b
    );

    // The new process is still serving.
    ensure!(new.child.try_wait()?.is_none(), "{}", new.log());
    sys::signal(new.pid(), libc::SIGTERM);
    let st = new.wait_exit(Duration::from_secs(20))?;
    ensure!(st.success(), "new milter: {st}; log:\n{}", new.log());
    Ok(())
}
