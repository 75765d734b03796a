//! The per-callback time budget: a hung handler callback is dropped at the budget and its
//! command answered (tempfail by default, configurable), PROGRESS stops then, the
//! connection slot is freed for the next MTA connection; a callback still running when
//! the MTA closes the connection is dropped at once; bytes the MTA pipelines while a
//! no-reply callback runs are kept in order.

mod server_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::server::{Server, Timeouts};
use milter_core::{Actions, Command, Envelope, ProtocolFlags, Reply, SmtpReply, Verdict};
use server_support::{Raw, Tagger, postfix_offer, start, wait_for_log};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// What the handlers did, shared with the test.
type Log = Arc<Mutex<Vec<String>>>;

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

/// Hangs for ever (as on a backend that never answers) where the sender is `hang@…`: in
/// `mail` for `hang-mail@`, in `rcpt` for `hang-rcpt@`, in `eom` (after recording a
/// header) for `hang-eom@`. Otherwise tags like [`Tagger`]. Logs abort and close.
struct Hang {
    from: String,
    log: Log,
}

impl Hang {
    fn factory(log: &Log) -> impl Fn() -> Hang + Send + Sync + 'static {
        let log = log.clone();
        move || Hang {
            from: String::new(),
            log: log.clone(),
        }
    }

    fn note(&self, what: &str) {
        self.log.lock().unwrap().push(what.to_owned());
    }
}

impl Milter for Hang {
    fn negotiate(&mut self, offer: &Offer) -> Request {
        Tagger.negotiate(offer)
    }

    async fn mail(&mut self, _ctx: &Context<'_>, from: &Envelope) -> Verdict {
        self.from = from.address_str();
        if self.from.starts_with("hang-mail@") {
            std::future::pending::<()>().await;
        }
        Verdict::Continue
    }

    async fn rcpt(&mut self, _ctx: &Context<'_>, _rcpt: &Envelope) -> Verdict {
        if self.from.starts_with("hang-rcpt@") {
            std::future::pending::<()>().await;
        }
        Verdict::Continue
    }

    async fn eom(&mut self, ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        if self.from.starts_with("hang-eom@") {
            let _ = actions.add_header("X-Half", "done");
            std::future::pending::<()>().await;
        }
        Tagger.eom(ctx, actions).await
    }

    async fn abort(&mut self, _ctx: &Context<'_>) {
        self.note("abort");
    }

    async fn close(&mut self, _ctx: &Context<'_>) {
        self.note("close");
    }
}

fn env(a: &str) -> Envelope {
    Envelope {
        address: Bytes::from(format!("<{a}>")),
        args: vec![],
    }
}

/// MAIL, RCPT, DATA, a header, EOH, a body chunk, each answered Continue; then EOM.
async fn message_up_to_eom(c: &mut Raw, from: &str) {
    for cmd in [
        Command::Mail(env(from)),
        Command::Rcpt(env("rcpt@example.org")),
        Command::Data,
        Command::Header {
            name: Bytes::from_static(b"Subject"),
            value: Bytes::from_static(b"hello"),
        },
        Command::EndOfHeaders,
        Command::Body(Bytes::from_static(b"body\r\n")),
    ] {
        c.send(&cmd).await;
        assert_eq!(c.reply().await, Some(Reply::Verdict(Verdict::Continue)));
    }
    c.send(&Command::EndOfMessage(Bytes::new())).await;
}

/// Asserts nothing arrives on `c` for `d` (and the connection stays open).
async fn silent_for(c: &mut Raw, d: Duration) {
    let mut byte = [0u8; 1];
    let r = tokio::time::timeout(d, c.stream.read(&mut byte)).await;
    assert!(r.is_err(), "expected silence, got {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_callback_frees_the_slot_at_the_budget() {
    let log = Log::default();
    let budget = Duration::from_millis(400);
    let (addr, shutdown, task) = start(
        Server::builder()
            .max_connections(1)
            .callback_timeout(budget),
        Hang::factory(&log),
    )
    .await;
    let mut first = Raw::connect(addr).await;
    let peer = first.local();
    first.handshake().await;
    // The only slot is taken: a second MTA connection waits in the backlog.
    let mut second = Raw::connect(addr).await;
    second.send(&postfix_offer()).await;
    // The handler hangs at end of message; at the budget the MTA gets tempfail.
    let started = Instant::now();
    message_up_to_eom(&mut first, "hang-eom@example.org").await;
    let (replies, v) = first.until_verdict().await;
    let took = started.elapsed();
    assert_eq!(v, Verdict::Tempfail);
    assert!(took >= budget, "answered after {took:?}");
    assert!(
        took < budget + Duration::from_secs(3),
        "answered after {took:?}"
    );
    // What the handler recorded before it hung is not sent.
    assert!(
        !replies.iter().any(|r| matches!(r, Reply::Modification(_))),
        "{replies:?}"
    );
    wait_for_log(&[
        &format!("peer={peer}"),
        "eom callback ran out of its time budget",
    ])
    .await;
    // The connection is in step: the session goes on as Postfix goes on with it.
    first.send(&Command::Abort).await;
    let (mods, v) = first.message("fine@example.org").await;
    assert_eq!(v, Verdict::Continue);
    assert_eq!(mods.len(), 1, "{mods:?}");
    first.send(&Command::Quit).await;
    first.expect_eof().await;
    // The slot is free: the waiting connection is served.
    assert!(matches!(second.reply().await, Some(Reply::OptNeg(_))));
    second
        .send(&Command::Connect(milter_core::ConnectInfo {
            hostname: Bytes::from_static(b"client.example"),
            socket: milter_core::SocketInfo::Unknown,
        }))
        .await;
    assert_eq!(
        second.reply().await,
        Some(Reply::Verdict(Verdict::Continue))
    );
    let (mods, v) = second.message("fine@example.org").await;
    assert_eq!(v, Verdict::Continue);
    assert_eq!(mods.len(), 1, "{mods:?}");
    second.send(&Command::Quit).await;
    second.expect_eof().await;
    shutdown.shutdown();
    task.await.expect("server");
    // The dropped eom left its message unfinished: the handler hears of it through one
    // abort (the MTA's own ABORT after the tempfail is absorbed), then each connection's
    // close.
    assert_eq!(entries(&log), ["abort", "close", "close"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_stops_once_the_budget_is_spent() {
    let log = Log::default();
    let (addr, shutdown, task) = start(
        Server::builder().timeouts(Timeouts {
            callback: Duration::from_millis(500),
            progress_interval: Duration::from_millis(50),
            ..Timeouts::default()
        }),
        Hang::factory(&log),
    )
    .await;
    let mut c = Raw::connect(addr).await;
    c.handshake().await;
    message_up_to_eom(&mut c, "hang-eom@example.org").await;
    let (replies, v) = c.until_verdict().await;
    assert_eq!(v, Verdict::Tempfail);
    let progress = replies.iter().filter(|r| **r == Reply::Progress).count();
    assert!(
        progress >= 5 && replies.iter().all(|r| *r == Reply::Progress),
        "PROGRESS about every 50 ms for 500 ms, nothing else: {replies:?}"
    );
    // No PROGRESS after the answer.
    silent_for(&mut c, Duration::from_millis(300)).await;
    c.send(&Command::Quit).await;
    c.expect_eof().await;
    shutdown.shutdown();
    task.await.expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mta_closing_mid_callback_frees_the_slot_at_once() {
    let log = Log::default();
    // The default budget (300 s): it is the MTA going away that ends the callback.
    let (addr, shutdown, task) =
        start(Server::builder().max_connections(1), Hang::factory(&log)).await;
    let mut first = Raw::connect(addr).await;
    let peer = first.local();
    first.handshake().await;
    let mut second = Raw::connect(addr).await;
    second.send(&postfix_offer()).await;
    first
        .send(&Command::Mail(env("hang-mail@example.org")))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The MTA gives up waiting (Postfix: milter_command_timeout) and closes.
    let started = Instant::now();
    drop(first);
    assert!(matches!(second.reply().await, Some(Reply::OptNeg(_))));
    assert!(started.elapsed() < Duration::from_secs(3));
    wait_for_log(&[
        &format!("peer={peer}"),
        "while the mail callback ran",
        "callback abandoned",
    ])
    .await;
    // The abandoned message was aborted and the handler closed, once each.
    assert_eq!(entries(&log), ["abort", "close"]);
    drop(second);
    shutdown.shutdown();
    task.await.expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_verdict_is_configurable() {
    let log = Log::default();
    let reply = SmtpReply::new(451, Some("4.4.3"), "scanner unavailable").unwrap();
    let (addr, shutdown, task) = start(
        Server::builder()
            .callback_timeout(Duration::from_millis(200))
            .callback_timeout_verdict(Verdict::Reply(reply.clone())),
        Hang::factory(&log),
    )
    .await;
    let mut c = Raw::connect(addr).await;
    c.handshake().await;
    c.send(&Command::Mail(env("hang-rcpt@example.org"))).await;
    assert_eq!(c.reply().await, Some(Reply::Verdict(Verdict::Continue)));
    c.send(&Command::Rcpt(env("r@example.org"))).await;
    assert_eq!(c.reply().await, Some(Reply::Verdict(Verdict::Reply(reply))));
    c.send(&Command::Quit).await;
    c.expect_eof().await;
    shutdown.shutdown();
    task.await.expect("server");

    // Fail open instead.
    let (addr, shutdown, task) = start(
        Server::builder()
            .callback_timeout(Duration::from_millis(200))
            .callback_timeout_verdict(Verdict::Accept),
        Hang::factory(&log),
    )
    .await;
    let mut c = Raw::connect(addr).await;
    c.handshake().await;
    c.send(&Command::Mail(env("hang-mail@example.org"))).await;
    assert_eq!(c.reply().await, Some(Reply::Verdict(Verdict::Accept)));
    c.send(&Command::Quit).await;
    c.expect_eof().await;
    shutdown.shutdown();
    task.await.expect("server");
}

/// Takes 150 ms per header, negotiated as no-reply (`NR_HEADER`); counts headers and
/// reports them at end of message.
struct SlowHeaders {
    seen: Vec<String>,
}

impl Milter for SlowHeaders {
    fn negotiate(&mut self, _offer: &Offer) -> Request {
        Request::new()
            .with_actions(Actions::ADD_HEADERS)
            .with_protocol(ProtocolFlags::NR_HEADER)
    }

    async fn header(&mut self, _ctx: &Context<'_>, name: Bytes, _value: Bytes) -> Verdict {
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.seen.push(String::from_utf8_lossy(&name).into_owned());
        Verdict::Continue
    }

    async fn eom(&mut self, _ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        let seen = self.seen.join(",");
        match actions.add_header("X-Seen", seen) {
            Ok(()) => Verdict::Continue,
            Err(_) => Verdict::Tempfail,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelined_during_a_no_reply_callback_are_kept_in_order() {
    let (addr, shutdown, task) =
        start(Server::builder(), || SlowHeaders { seen: Vec::new() }).await;
    let mut c = Raw::connect(addr).await;
    c.handshake().await;
    for cmd in [
        Command::Mail(env("a@example.org")),
        Command::Rcpt(env("b@example.org")),
        Command::Data,
    ] {
        c.send(&cmd).await;
        assert_eq!(c.reply().await, Some(Reply::Verdict(Verdict::Continue)));
    }
    // No reply is due to headers: the MTA sends them all, then EOH, back to back while
    // the first header's callback still runs, then waits for the answer to EOH.
    let header = |name: &'static str| Command::Header {
        name: Bytes::from(name),
        value: Bytes::from_static(b"x"),
    };
    c.send(&header("From")).await;
    // The first header's callback is running now; the rest arrives meanwhile.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut burst = bytes::BytesMut::new();
    for name in ["To", "Subject", "Date"] {
        header(name).encode(&mut burst);
    }
    Command::EndOfHeaders.encode(&mut burst);
    c.send_raw(&burst).await;
    assert_eq!(c.reply().await, Some(Reply::Verdict(Verdict::Continue)));
    c.send(&Command::Body(Bytes::from_static(b"body\r\n")))
        .await;
    assert_eq!(c.reply().await, Some(Reply::Verdict(Verdict::Continue)));
    c.send(&Command::EndOfMessage(Bytes::new())).await;
    let (mods, v) = c.until_verdict().await;
    assert_eq!(v, Verdict::Continue);
    assert_eq!(
        mods,
        [Reply::Modification(milter_core::Modification::AddHeader {
            name: Bytes::from_static(b"X-Seen"),
            value: Bytes::from_static(b"From,To,Subject,Date"),
        })]
    );
    c.send(&Command::Quit).await;
    c.expect_eof().await;
    shutdown.shutdown();
    task.await.expect("server");
}
