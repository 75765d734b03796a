//! Connection limit with backpressure, per-phase timeouts, PROGRESS during a slow end of
//! message, graceful drain, the drain deadline, panic isolation and refused verdicts.

mod server_support;

use std::time::Duration;

use bytes::Bytes;
use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::server::{Server, Timeouts};
use milter_core::{Actions, Command, Modification, Reply, Verdict};
use server_support::{Raw, Tagger, assert_served, start, wait_for_log};
use tokio::io::AsyncReadExt;

fn short_timeouts() -> Timeouts {
    Timeouts {
        negotiation: Duration::from_millis(300),
        command: Duration::from_millis(300),
        content: Duration::from_millis(300),
        idle: Duration::from_millis(300),
        progress_interval: Duration::from_millis(100),
    }
}

/// Sleeps in `eom` for `delay`, then adds `X-Slow: done`.
struct Slow {
    delay: Duration,
}

impl Milter for Slow {
    fn negotiate(&mut self, _offer: &Offer) -> Request {
        Request::new().with_actions(Actions::ADD_HEADERS)
    }

    async fn eom(&mut self, _ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        tokio::time::sleep(self.delay).await;
        match actions.add_header("X-Slow", "done") {
            Ok(()) => Verdict::Continue,
            Err(_) => Verdict::Tempfail,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_server_stops_accepting_instead_of_dropping() {
    let (addr, shutdown, task) = start(Server::builder().max_connections(1), || Tagger).await;
    let mut first = Raw::connect(addr).await;
    first.handshake().await;
    // The kernel completes the second TCP handshake (backlog), but the server does not
    // accept it while the only slot is taken: the offer stays unanswered, and the
    // connection is not closed either.
    let mut second = Raw::connect(addr).await;
    second.send(&server_support::postfix_offer()).await;
    let mut byte = [0u8; 1];
    let waited =
        tokio::time::timeout(Duration::from_millis(500), second.stream.read(&mut byte)).await;
    assert!(
        waited.is_err(),
        "second connection must wait, got {waited:?}"
    );
    // Freeing the slot lets the waiting connection in, with its offer intact.
    first.send(&Command::Quit).await;
    first.expect_eof().await;
    assert!(matches!(second.reply().await, Some(Reply::OptNeg(_))));
    shutdown.shutdown();
    task.await.expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_times_out_in_negotiation() {
    let (addr, shutdown, task) =
        start(Server::builder().timeouts(short_timeouts()), || Tagger).await;
    let mut c = Raw::connect(addr).await;
    let peer = c.local();
    let started = tokio::time::Instant::now();
    c.expect_eof().await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    wait_for_log(&[
        &format!("peer={peer}"),
        "silent too long in the negotiation phase",
    ])
    .await;
    shutdown.shutdown();
    task.await.expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_content_timeouts() {
    let (addr, shutdown, task) =
        start(Server::builder().timeouts(short_timeouts()), || Tagger).await;
    // Between messages.
    let mut idle = Raw::connect(addr).await;
    let idle_peer = idle.local();
    idle.handshake().await;
    idle.expect_eof().await;
    wait_for_log(&[
        &format!("peer={idle_peer}"),
        "silent too long in the idle phase",
    ])
    .await;
    // Inside the content: after DATA and a header, the MTA goes quiet.
    let mut content = Raw::connect(addr).await;
    let content_peer = content.local();
    content.handshake().await;
    for c in [
        Command::Mail(milter_core::Envelope {
            address: Bytes::from_static(b"<a@example.org>"),
            args: vec![],
        }),
        Command::Rcpt(milter_core::Envelope {
            address: Bytes::from_static(b"<b@example.org>"),
            args: vec![],
        }),
        Command::Data,
    ] {
        content.send(&c).await;
        assert_eq!(
            content.reply().await,
            Some(Reply::Verdict(Verdict::Continue))
        );
    }
    content.expect_eof().await;
    wait_for_log(&[
        &format!("peer={content_peer}"),
        "silent too long in the content phase",
    ])
    .await;
    shutdown.shutdown();
    task.await.expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_eom_sends_progress_then_the_answer() {
    let (addr, shutdown, task) = start(Server::builder().timeouts(short_timeouts()), || Slow {
        delay: Duration::from_millis(450),
    })
    .await;
    let mut c = Raw::connect(addr).await;
    c.handshake().await;
    let (replies, v) = c.message("a@example.org").await;
    assert_eq!(v, Verdict::Continue);
    let progress = replies.iter().filter(|r| **r == Reply::Progress).count();
    assert!(
        progress >= 3,
        "expected PROGRESS every 100 ms for 450 ms, got {replies:?}"
    );
    assert_eq!(
        replies.last(),
        Some(&Reply::Modification(Modification::AddHeader {
            name: Bytes::from_static(b"X-Slow"),
            value: Bytes::from_static(b"done"),
        }))
    );
    shutdown.shutdown();
    task.await.expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_message_in_flight_finish() {
    let (addr, shutdown, task) = start(
        Server::builder().shutdown_deadline(Duration::from_secs(10)),
        || Slow {
            delay: Duration::from_millis(600),
        },
    )
    .await;
    let mut busy = Raw::connect(addr).await;
    busy.handshake().await;
    let mut idle = Raw::connect(addr).await;
    idle.handshake().await;
    let trigger = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            shutdown.shutdown();
        })
    };
    // EOM is in flight when the shutdown comes; its answer still arrives.
    let (replies, v) = busy.message("a@example.org").await;
    trigger.await.expect("trigger");
    assert_eq!(v, Verdict::Continue);
    assert!(
        replies.contains(&Reply::Modification(Modification::AddHeader {
            name: Bytes::from_static(b"X-Slow"),
            value: Bytes::from_static(b"done"),
        }))
    );
    // Then both connections are closed, and the server stops.
    busy.expect_eof().await;
    idle.expect_eof().await;
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server stops after draining")
        .expect("server");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
    wait_for_log(&["shutting down: no longer accepting"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_closes_stuck_messages() {
    let (addr, shutdown, task) = start(
        Server::builder().shutdown_deadline(Duration::from_millis(300)),
        || Slow {
            delay: Duration::from_secs(30),
        },
    )
    .await;
    let mut c = Raw::connect(addr).await;
    let peer = c.local();
    c.handshake().await;
    let send = tokio::spawn(async move {
        let _ = c.message("a@example.org").await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server stops at the deadline")
        .expect("server");
    // The client saw EOF without a verdict (its helper panics on that).
    assert!(send.await.is_err());
    wait_for_log(&[&format!("peer={peer}"), "shutdown deadline passed"]).await;
}

/// Panics at HELO "panic", otherwise behaves like [`Tagger`].
struct Fragile;

impl Milter for Fragile {
    fn negotiate(&mut self, offer: &Offer) -> Request {
        Tagger.negotiate(offer)
    }

    async fn helo(&mut self, _ctx: &Context<'_>, helo: &[u8]) -> Verdict {
        if helo == b"panic" {
            panic!("handler bug on purpose");
        }
        Verdict::Continue
    }

    async fn eom(&mut self, ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        Tagger.eom(ctx, actions).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_closes_only_its_connection() {
    let (addr, shutdown, task) = start(Server::builder(), || Fragile).await;
    let mut other = Raw::connect(addr).await;
    other.handshake().await;
    let mut c = Raw::connect(addr).await;
    let peer = c.local();
    c.handshake().await;
    c.send(&Command::Helo(Bytes::from_static(b"panic"))).await;
    c.expect_eof().await;
    wait_for_log(&[
        &format!("peer={peer}"),
        "handler panicked: handler bug on purpose",
    ])
    .await;
    // The connection open before the panic and a new one are both served.
    let (_, v) = other.message("a@example.org").await;
    assert_eq!(v, Verdict::Continue);
    assert_served(addr).await;
    shutdown.shutdown();
    task.await.expect("server");
}

/// Answers HELO with SKIP (only valid for body) and asks for a header it did not
/// negotiate at EOM.
struct Misuser;

impl Milter for Misuser {
    async fn helo(&mut self, _ctx: &Context<'_>, _helo: &[u8]) -> Verdict {
        Verdict::Skip
    }

    async fn eom(&mut self, _ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        match actions.add_header("X-Not", "negotiated") {
            Err(_) => Verdict::Reject,
            Ok(()) => Verdict::Continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_verdict_becomes_a_logged_tempfail_and_the_stream_stays_in_step() {
    let (addr, shutdown, task) = start(Server::builder(), || Misuser).await;
    let mut c = Raw::connect(addr).await;
    let peer = c.local();
    c.handshake().await;
    c.send(&Command::Helo(Bytes::from_static(b"mx.example")))
        .await;
    assert_eq!(c.reply().await, Some(Reply::Verdict(Verdict::Tempfail)));
    wait_for_log(&[
        &format!("peer={peer}"),
        "handler verdict refused; answering tempfail",
    ])
    .await;
    // The session goes on in step: a whole message, whose EOM handler saw its
    // non-negotiated header refused at once (and so rejected).
    let (mods, v) = c.message("a@example.org").await;
    assert!(mods.is_empty(), "{mods:?}");
    assert_eq!(v, Verdict::Reject);
    c.send(&Command::Quit).await;
    c.expect_eof().await;
    shutdown.shutdown();
    task.await.expect("server");
}
