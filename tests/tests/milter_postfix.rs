//! The example milters behind a real Postfix (sandboxed, loopback, started per test):
//! what Postfix delivers or answers is what the milters asked for.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use milter_core::server::{BoundAddr, Server, ShutdownHandle};
use milter_examples::add_header::AddHeader;
use milter_examples::reject_sender::{RejectSender, Rules};
use stack_tests::postfix::Postfix;
use stack_tests::smtp::SmtpClient;
use stack_tests::swaks::swaks;

const T: Duration = Duration::from_secs(30);

/// A milter server on its own runtime thread; shut down (and joined) on drop.
struct MilterServer {
    addr: SocketAddr,
    shutdown: ShutdownHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MilterServer {
    fn start<F, M>(factory: F) -> Result<MilterServer>
    where
        F: Fn() -> M + Send + Sync + 'static,
        M: milter_core::handler::Milter,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let bound = Server::builder()
                    .listen("inet:127.0.0.1:0")
                    .map(|b| b.handle_signals(false));
                let server = match bound {
                    Ok(b) => b.bind().await,
                    Err(e) => Err(e),
                };
                let server = match server {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                let addr = server.local_addrs().into_iter().find_map(|a| match a {
                    BoundAddr::Tcp(a) => Some(a),
                    _ => None,
                });
                let _ = tx.send(
                    addr.map(|a| (a, server.shutdown_handle()))
                        .context("no TCP address"),
                );
                if let Err(e) = server.serve(factory).await {
                    eprintln!("milter server failed: {e}");
                }
            });
        });
        let (addr, shutdown) = rx.recv().context("milter thread died")??;
        Ok(MilterServer {
            addr,
            shutdown,
            thread: Some(thread),
        })
    }

    fn spec(&self) -> String {
        format!("inet:{}", self.addr)
    }

    /// Whether the server still answers a negotiation on a new connection.
    fn healthy(&self) -> bool {
        use std::io::Read;
        let Ok(mut s) = std::net::TcpStream::connect(self.addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        // OPTNEG: version 6, all actions, Postfix's protocol mask.
        let mut frame = vec![0, 0, 0, 13, b'O'];
        frame.extend_from_slice(&6u32.to_be_bytes());
        frame.extend_from_slice(&0x1FFu32.to_be_bytes());
        frame.extend_from_slice(&0x1F_FFFFu32.to_be_bytes());
        if s.write_all(&frame).is_err() {
            return false;
        }
        let mut head = [0u8; 5];
        s.read_exact(&mut head).is_ok() && head[4] == b'O'
    }
}

impl Drop for MilterServer {
    fn drop(&mut self) {
        self.shutdown.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header_milter() -> Result<MilterServer> {
    let m = AddHeader::new("X-Example-Milter", "added by add-header")?;
    MilterServer::start(move || m.clone())
}

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: alice@remote.test\r\nTo: user@example.test\r\nSubject: {subject}\r\n\r\nHello {subject}.\r\n"
    )
    .into_bytes()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn added_header_arrives_in_the_delivered_message() -> Result<()> {
    let milter = header_milter()?;
    let pf = Postfix::builder().mx_milters(&milter.spec()).start()?;
    let run = swaks(&[
        "--server",
        &format!("127.0.0.1:{}", pf.mx_port()),
        "--from",
        "alice@remote.test",
        "--to",
        "user@example.test",
        "--header",
        "Subject: header test",
    ])?;
    assert_eq!(
        run.final_reply().map(|r| r.code),
        Some(250),
        "{}",
        run.transcript
    );
    let msgs = pf.maildir("example.test", "user").wait_for(1, T)?;
    let text = String::from_utf8_lossy(&msgs[0]);
    assert_eq!(
        count(&text, "X-Example-Milter: added by add-header\n"),
        1,
        "{text}"
    );
    assert!(text.contains("Subject: header test"), "{text}");
    Ok(())
}

#[test]
fn reject_reaches_the_smtp_client_as_the_milters_reply() -> Result<()> {
    let rules = Rules {
        senders: vec!["spam@bad.example".into()],
        recipients: vec!["closed@example.test".into()],
    };
    let m = RejectSender::new(
        rules,
        550,
        Some("5.7.1"),
        "Not accepted here\nAsk postmaster",
    )?;
    let milter = MilterServer::start(move || m.clone())?;
    let pf = Postfix::builder()
        .mx_milters(&milter.spec())
        .mailbox("closed@example.test")
        .mailbox("user@example.test")
        .start()?;
    let server = format!("127.0.0.1:{}", pf.mx_port());

    let run = swaks(&[
        "--server",
        &server,
        "--from",
        "spam@bad.example",
        "--to",
        "user@example.test",
    ])?;
    let r = run.final_reply().context("a reply")?;
    assert_eq!(r.code, 550, "{}", run.transcript);
    assert_eq!(r.text, "5.7.1 Ask postmaster", "{}", run.transcript);
    assert!(
        run.transcript.contains("550-5.7.1 Not accepted here"),
        "{}",
        run.transcript
    );
    assert!(!run.status.success());

    // A listed recipient is refused alone; the message still reaches the other one.
    let (mut c, _) = SmtpClient::connect(pf.mx_port())?;
    c.expect("EHLO client.remote.test", 250)?;
    c.expect("MAIL FROM:<alice@remote.test>", 250)?;
    let refused = c.cmd("RCPT TO:<closed@example.test>")?;
    assert_eq!(
        (refused.code, refused.text.as_str()),
        (550, "5.7.1 Ask postmaster"),
        "{}",
        c.transcript
    );
    c.expect("RCPT TO:<user@example.test>", 250)?;
    let done = c.data(&message("partial"))?;
    assert_eq!(done.code, 250, "{}", c.transcript);
    c.expect("QUIT", 221)?;
    let msgs = pf.maildir("example.test", "user").wait_for(1, T)?;
    assert!(String::from_utf8_lossy(&msgs[0]).contains("Subject: partial"));
    assert!(
        pf.maildir("example.test", "closed")
            .new_messages()?
            .is_empty()
    );
    Ok(())
}

#[test]
fn several_messages_with_rset_in_one_smtp_session() -> Result<()> {
    let milter = header_milter()?;
    let pf = Postfix::builder().mx_milters(&milter.spec()).start()?;
    let (mut c, _) = SmtpClient::connect(pf.mx_port())?;
    c.expect("EHLO client.remote.test", 250)?;
    for i in 1..=3 {
        // A transaction abandoned by RSET before each message (Postfix sends ABORT).
        c.expect("MAIL FROM:<alice@remote.test>", 250)?;
        c.expect("RCPT TO:<user@example.test>", 250)?;
        c.expect("RSET", 250)?;
        c.expect("MAIL FROM:<alice@remote.test>", 250)?;
        c.expect("RCPT TO:<user@example.test>", 250)?;
        let r = c.data(&message(&format!("message {i}")))?;
        assert_eq!(r.code, 250, "{}", c.transcript);
        c.expect("RSET", 250)?;
    }
    c.expect("QUIT", 221)?;
    let msgs = pf.maildir("example.test", "user").wait_for(3, T)?;
    assert_eq!(msgs.len(), 3);
    for m in &msgs {
        let text = String::from_utf8_lossy(m);
        assert_eq!(
            count(&text, "X-Example-Milter: added by add-header\n"),
            1,
            "{text}"
        );
    }
    let all: String = msgs
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    for i in 1..=3 {
        assert!(all.contains(&format!("Subject: message {i}")), "{all}");
    }
    Ok(())
}

#[test]
fn client_vanishing_mid_data_leaves_the_milter_healthy() -> Result<()> {
    let milter = header_milter()?;
    let pf = Postfix::builder().mx_milters(&milter.spec()).start()?;
    {
        // Raw SMTP, so the client can stop half-way through the message.
        let s = std::net::TcpStream::connect(("127.0.0.1", pf.mx_port()))?;
        s.set_read_timeout(Some(T))?;
        let mut rd = std::io::BufReader::new(s.try_clone()?);
        let mut wr = s;
        let mut expect = |line: Option<&str>, code: &str| -> Result<()> {
            if let Some(l) = line {
                wr.write_all(format!("{l}\r\n").as_bytes())?;
            }
            loop {
                let mut reply = String::new();
                std::io::BufRead::read_line(&mut rd, &mut reply)?;
                anyhow::ensure!(
                    reply.starts_with(code),
                    "{line:?}: got {reply:?}, want {code}"
                );
                if reply.as_bytes().get(3) == Some(&b' ') {
                    return Ok(());
                }
            }
        };
        expect(None, "220")?;
        expect(Some("EHLO client.remote.test"), "250")?;
        expect(Some("MAIL FROM:<alice@remote.test>"), "250")?;
        expect(Some("RCPT TO:<user@example.test>"), "250")?;
        expect(Some("DATA"), "354")?;
        let mut partial = message("vanishing");
        partial.extend_from_slice(&b"more body text\r\n".repeat(2000));
        let mut w = wr.try_clone()?;
        w.write_all(&partial)?;
        std::thread::sleep(Duration::from_millis(500));
        // Gone without the final dot.
        w.shutdown(std::net::Shutdown::Both)?;
    }
    pf.wait_for_log("lost connection after DATA", T)?;
    assert!(milter.healthy(), "milter answers a new negotiation");

    let run = swaks(&[
        "--server",
        &format!("127.0.0.1:{}", pf.mx_port()),
        "--from",
        "alice@remote.test",
        "--to",
        "user@example.test",
        "--header",
        "Subject: after the vanished client",
    ])?;
    assert_eq!(
        run.final_reply().map(|r| r.code),
        Some(250),
        "{}",
        run.transcript
    );
    let msgs = pf.maildir("example.test", "user").wait_for(1, T)?;
    assert_eq!(msgs.len(), 1, "the interrupted message was not delivered");
    let text = String::from_utf8_lossy(&msgs[0]);
    assert!(
        text.contains("Subject: after the vanished client"),
        "{text}"
    );
    assert!(
        text.contains("X-Example-Milter: added by add-header"),
        "{text}"
    );
    Ok(())
}

/// Counts every callback; `ALL` chooses its declared [`Milter::EVENTS`]: every event, or
/// MAIL only (the rest it would ignore).
#[derive(Clone, Default)]
struct Counting<const ALL: bool> {
    seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>>>,
}

impl<const ALL: bool> Counting<ALL> {
    fn bump(&self, event: &'static str) {
        if let Ok(mut m) = self.seen.lock() {
            *m.entry(event).or_default() += 1;
        }
    }

    fn get(&self, event: &str) -> usize {
        self.seen
            .lock()
            .map(|m| m.get(event).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl<const ALL: bool> milter_core::handler::Milter for Counting<ALL> {
    const EVENTS: milter_core::negotiate::Events = if ALL {
        milter_core::negotiate::Events::all()
    } else {
        milter_core::negotiate::Events::MAIL
    };

    async fn connect(
        &mut self,
        _: &milter_core::Context<'_>,
        _: &milter_core::ConnectInfo,
    ) -> milter_core::Verdict {
        self.bump("connect");
        milter_core::Verdict::Continue
    }
    async fn helo(
        &mut self,
        _: &milter_core::Context<'_>,
        _: milter_core::Bytes,
    ) -> milter_core::Verdict {
        self.bump("helo");
        milter_core::Verdict::Continue
    }
    async fn mail(
        &mut self,
        _: &milter_core::Context<'_>,
        from: &milter_core::Envelope,
    ) -> milter_core::Verdict {
        self.bump("mail");
        if from.address_str() == "spammer@remote.test" {
            return milter_core::Verdict::reply(550, "5.7.1", "sender refused by MAIL-only milter");
        }
        milter_core::Verdict::Continue
    }
    async fn rcpt(
        &mut self,
        _: &milter_core::Context<'_>,
        _: &milter_core::Envelope,
    ) -> milter_core::Verdict {
        self.bump("rcpt");
        milter_core::Verdict::Continue
    }
    async fn data(&mut self, _: &milter_core::Context<'_>) -> milter_core::Verdict {
        self.bump("data");
        milter_core::Verdict::Continue
    }
    async fn header(
        &mut self,
        _: &milter_core::Context<'_>,
        _: milter_core::Bytes,
        _: milter_core::Bytes,
    ) -> milter_core::Verdict {
        self.bump("header");
        milter_core::Verdict::Continue
    }
    async fn eoh(&mut self, _: &milter_core::Context<'_>) -> milter_core::Verdict {
        self.bump("eoh");
        milter_core::Verdict::Continue
    }
    async fn body(
        &mut self,
        _: &milter_core::Context<'_>,
        _: milter_core::Bytes,
    ) -> milter_core::Verdict {
        self.bump("body");
        milter_core::Verdict::Continue
    }
    async fn eom(
        &mut self,
        _: &milter_core::Context<'_>,
        _: &mut milter_core::EomActions,
    ) -> milter_core::Verdict {
        self.bump("eom");
        milter_core::Verdict::Continue
    }
}

/// Two messages and one refused sender over one SMTP session; the delivered count.
fn two_messages_and_a_refused_sender(pf: &Postfix) -> Result<()> {
    let (mut c, _) = SmtpClient::connect(pf.mx_port())?;
    c.expect("EHLO client.remote.test", 250)?;
    for subject in ["derived one", "derived two"] {
        c.expect("MAIL FROM:<alice@remote.test>", 250)?;
        c.expect("RCPT TO:<user@example.test>", 250)?;
        let r = c.data(&message(subject))?;
        anyhow::ensure!(r.code == 250, "{subject}: {} {}", r.code, r.text);
    }
    let r = c.expect("MAIL FROM:<spammer@remote.test>", 550)?;
    anyhow::ensure!(
        r.text.contains("sender refused by MAIL-only milter"),
        "{}",
        r.text
    );
    c.expect("QUIT", 221)?;
    Ok(())
}

#[test]
fn a_mail_only_milter_is_sent_no_other_events_and_mail_flows() -> Result<()> {
    const EVENTS: [&str; 8] = [
        "connect", "helo", "rcpt", "data", "header", "eoh", "body", "mail",
    ];
    // Control: the same milter declaring every event sees them all from this Postfix,
    // so the counts below are not zero for want of counting.
    let all = Counting::<true>::default();
    let seen = all.clone();
    let milter = MilterServer::start(move || seen.clone())?;
    let pf = Postfix::builder().mx_milters(&milter.spec()).start()?;
    two_messages_and_a_refused_sender(&pf)?;
    pf.maildir("example.test", "user").wait_for(2, T)?;
    for e in EVENTS {
        assert!(all.get(e) > 0, "{e} not seen by the every-event milter");
    }
    drop(milter);
    drop(pf);

    // MAIL only: Postfix sends MAIL (three times) and end of message, nothing else; the
    // reject at MAIL still reaches the client, the two messages are delivered.
    let mail_only = Counting::<false>::default();
    let seen = mail_only.clone();
    let milter = MilterServer::start(move || seen.clone())?;
    let pf = Postfix::builder().mx_milters(&milter.spec()).start()?;
    two_messages_and_a_refused_sender(&pf)?;
    let msgs = pf.maildir("example.test", "user").wait_for(2, T)?;
    assert_eq!(msgs.len(), 2);
    assert_eq!(mail_only.get("mail"), 3);
    assert_eq!(mail_only.get("eom"), 2);
    for e in EVENTS.iter().filter(|e| **e != "mail") {
        assert_eq!(
            mail_only.get(e),
            0,
            "Postfix sent {e} to a MAIL-only milter"
        );
    }
    Ok(())
}

/// One callback as [`PerMessage`] saw it: instance, message number, event, and the
/// `{rcpt_addr}` (a message-stage macro) and `j` (a connection-stage macro) it could read.
type Seen = (usize, u64, &'static str, Option<String>, Option<String>);

/// Records the message-boundary callbacks with what the context says.
struct PerMessage {
    instance: usize,
    log: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl PerMessage {
    fn note(&self, ctx: &milter_core::Context<'_>, event: &'static str) {
        let seen = (
            self.instance,
            ctx.message_number(),
            event,
            ctx.macro_str("{rcpt_addr}"),
            ctx.macro_str("j"),
        );
        if let Ok(mut l) = self.log.lock() {
            l.push(seen);
        }
    }
}

impl milter_core::handler::Milter for PerMessage {
    async fn mail(
        &mut self,
        ctx: &milter_core::Context<'_>,
        from: &milter_core::Envelope,
    ) -> milter_core::Verdict {
        self.note(ctx, "mail");
        if from.address_str() == "spammer@remote.test" {
            return milter_core::Verdict::reply(550, "5.7.1", "sender refused");
        }
        milter_core::Verdict::Continue
    }
    async fn rcpt(
        &mut self,
        ctx: &milter_core::Context<'_>,
        _: &milter_core::Envelope,
    ) -> milter_core::Verdict {
        self.note(ctx, "rcpt");
        milter_core::Verdict::Continue
    }
    async fn eom(
        &mut self,
        ctx: &milter_core::Context<'_>,
        _: &mut milter_core::EomActions,
    ) -> milter_core::Verdict {
        self.note(ctx, "eom");
        milter_core::Verdict::Continue
    }
    async fn abort(&mut self, ctx: &milter_core::Context<'_>) {
        self.note(ctx, "abort");
    }
    async fn close(&mut self, ctx: &milter_core::Context<'_>) {
        self.note(ctx, "close");
    }
}

/// The per-message reset rules (milter_core::handler docs) as Postfix drives them: one
/// SMTP session with a delivered message, a new MAIL without RSET abandoned by RSET, a
/// sender refused at MAIL, and another delivered message.
#[test]
fn messages_of_one_smtp_session_each_end_once_and_drop_their_macros() -> Result<()> {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Seen>::new()));
    let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (l, m) = (log.clone(), made.clone());
    let milter = MilterServer::start(move || PerMessage {
        instance: m.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1,
        log: l.clone(),
    })?;
    let pf = Postfix::builder().mx_milters(&milter.spec()).start()?;
    let (mut c, _) = SmtpClient::connect(pf.mx_port())?;
    c.expect("EHLO client.remote.test", 250)?;
    c.expect("MAIL FROM:<alice@remote.test>", 250)?;
    c.expect("RCPT TO:<user@example.test>", 250)?;
    let r = c.data(&message("first"))?;
    anyhow::ensure!(r.code == 250, "{}", c.transcript);
    // The next MAIL follows at once, no RSET; then RSET abandons it.
    c.expect("MAIL FROM:<alice@remote.test>", 250)?;
    c.expect("RCPT TO:<user@example.test>", 250)?;
    c.expect("RSET", 250)?;
    c.expect("MAIL FROM:<spammer@remote.test>", 550)?;
    c.expect("MAIL FROM:<alice@remote.test>", 250)?;
    c.expect("RCPT TO:<user@example.test>", 250)?;
    let r = c.data(&message("second"))?;
    anyhow::ensure!(r.code == 250, "{}", c.transcript);
    c.expect("QUIT", 221)?;
    pf.maildir("example.test", "user").wait_for(2, T)?;
    // Postfix closes the milter connection after QUIT; close is the last callback.
    let deadline = std::time::Instant::now() + T;
    while !log
        .lock()
        // The session's close (not that of a probe connection without a message).
        .map(|l| l.iter().any(|s| s.2 == "close" && s.1 > 0))
        .unwrap_or(false)
    {
        anyhow::ensure!(std::time::Instant::now() < deadline, "no close");
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = log.lock().map(|l| l.clone()).unwrap_or_default();
    // One handler for the whole SMTP session (other instances are connections without
    // a message: the harness's readiness probe of smtpd); per message exactly one eom or
    // abort.
    let session = all.iter().find(|s| s.2 == "mail").map(|s| s.0);
    let seen: Vec<Seen> = all
        .iter()
        .filter(|s| Some(s.0) == session)
        .cloned()
        .collect();
    assert!(
        all.iter().all(|s| Some(s.0) == session || s.1 == 0),
        "{all:#?}"
    );
    let events: Vec<(u64, &str)> = seen.iter().map(|s| (s.1, s.2)).collect();
    assert_eq!(
        events,
        [
            (1, "mail"),
            (1, "rcpt"),
            (1, "eom"),
            (2, "mail"),
            (2, "rcpt"),
            (2, "abort"),
            (3, "mail"),
            (3, "abort"),
            (4, "mail"),
            (4, "rcpt"),
            (4, "eom"),
            (4, "close"),
        ],
        "{seen:#?}"
    );
    let user = Some("user@example.test".to_owned());
    for s in &seen {
        // Postfix sends `j` with CONNECT: it stays for the whole session.
        assert!(s.4.is_some(), "j missing: {s:?}");
        match s.2 {
            // The last message's `{rcpt_addr}` is gone when the next MAIL comes.
            "mail" => assert_eq!(s.3, None, "{s:?}"),
            // Readable where the message ends (message 3 never had a RCPT).
            "eom" | "abort" if s.1 != 3 => assert_eq!(s.3, user, "{s:?}"),
            _ => {}
        }
    }
    Ok(())
}
