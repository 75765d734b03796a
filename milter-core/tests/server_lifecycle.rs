//! Connection limit with backpressure, per-phase timeouts (libmilter's by default),
//! PROGRESS during a slow end of message, the drain at shutdown (open SMTP sessions keep
//! being served until they quit), the drain deadline, panic isolation and refused verdicts.

mod server_support;

use std::time::Duration;

use bytes::Bytes;
use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::server::{Server, Timeouts};
use milter_core::{Actions, Command, Modification, Reply, Verdict};
use server_support::{Raw, Tagger, assert_served, start, wait_for_log};
use tokio::io::AsyncReadExt;

/// Per-phase timeouts far enough apart (400 ms) that a phase closed after another
/// phase's timeout is told apart even on a loaded machine.
fn short_timeouts() -> Timeouts {
    Timeouts {
        negotiation: Duration::from_millis(300),
        command: Duration::from_millis(700),
        content: Duration::from_millis(1100),
        idle: Duration::from_millis(1500),
        callback: Duration::from_secs(30),
        progress_interval: Duration::from_millis(100),
    }
}

/// Waits for the server to close `c` and checks that it waited `want`: not less (a
/// shorter phase's timeout) and not as long as the next longer phase's.
async fn assert_closed_after(c: &mut Raw, want: Duration, phase: &str) {
    let started = tokio::time::Instant::now();
    c.expect_eof().await;
    let waited = started.elapsed();
    assert!(
        waited >= want - Duration::from_millis(20) && waited < want + Duration::from_millis(350),
        "{phase} phase: closed after {waited:?}, its timeout is {want:?}"
    );
}

#[test]
fn default_timeouts_are_libmilters() {
    let t = Timeouts::default();
    assert_eq!(t, Timeouts::libmilter());
    // libmilter's smfi_settimeout default (MI_TIMEOUT), for every wait on the MTA but
    // the first exchange.
    for d in [t.command, t.content, t.idle] {
        assert_eq!(d, Duration::from_secs(7210));
    }
    assert_eq!(t.negotiation, Duration::from_secs(30));
    assert_eq!(t.callback, Duration::from_secs(300));
    assert_eq!(t.progress_interval, Duration::from_secs(10));
    // The former default stays available.
    assert_eq!(Timeouts::postfix().idle, Duration::from_secs(300));
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

/// How many connections wait in the accept queue of the listening socket on `addr`, as
/// Linux reports it in `/proc/net/tcp` (for a LISTEN socket, `rx_queue` is the accept
/// backlog). Read from procfs because no tool or socket option tells it portably.
fn accept_queue_len(addr: std::net::SocketAddr) -> u64 {
    let std::net::SocketAddr::V4(v4) = addr else {
        panic!("IPv4 expected: {addr}");
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl, local_address, rem_address, st, tx_queue:rx_queue, ...; 0A is LISTEN.
        if f.len() > 4 && f[1] == local && f[3] == "0A" {
            let rx = f[4].split(':').nth(1).expect("tx:rx");
            return u64::from_str_radix(rx, 16).expect("hex rx_queue");
        }
    }
    panic!("no listening socket {local} in /proc/net/tcp:\n{table}");
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
    // Not merely unanswered: the kernel still holds it in the listener's accept queue,
    // so the server has not accepted it.
    assert_eq!(
        accept_queue_len(addr),
        1,
        "second connection not in the accept queue"
    );
    // Freeing the slot lets the waiting connection in, with its offer intact.
    first.send(&Command::Quit).await;
    first.expect_eof().await;
    assert!(matches!(second.reply().await, Some(Reply::OptNeg(_))));
    assert_eq!(accept_queue_len(addr), 0);
    drop(second);
    shutdown.shutdown();
    task.await.expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_times_out_in_negotiation() {
    let t = short_timeouts();
    let (addr, shutdown, task) = start(Server::builder().timeouts(t), || Tagger).await;
    let mut c = Raw::connect(addr).await;
    let peer = c.local();
    assert_closed_after(&mut c, t.negotiation, "negotiation").await;
    wait_for_log(&[
        &format!("peer={peer}"),
        "silent too long in the negotiation phase",
    ])
    .await;
    shutdown.shutdown();
    task.await.expect("server");
}

fn envelope(address: &'static [u8]) -> milter_core::Envelope {
    milter_core::Envelope {
        address: Bytes::from_static(address),
        args: vec![],
    }
}

/// Sends each command and expects CONTINUE for it.
async fn send_continued(c: &mut Raw, commands: Vec<Command>) {
    for cmd in commands {
        c.send(&cmd).await;
        assert_eq!(c.reply().await, Some(Reply::Verdict(Verdict::Continue)));
    }
}

/// Each phase the MTA can go silent in closes the connection after that phase's own
/// timeout (all four differ, so a phase that used another's would fail here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_content_and_idle_timeouts() {
    let t = short_timeouts();
    let (addr, shutdown, task) = start(Server::builder().timeouts(t), || Tagger).await;
    // Between messages.
    let idle = async {
        let mut c = Raw::connect(addr).await;
        let peer = c.local();
        c.handshake().await;
        assert_closed_after(&mut c, t.idle, "idle").await;
        peer
    };
    // Inside the envelope: after MAIL the MTA goes quiet.
    let command = async {
        let mut c = Raw::connect(addr).await;
        let peer = c.local();
        c.handshake().await;
        send_continued(&mut c, vec![Command::Mail(envelope(b"<a@example.org>"))]).await;
        assert_closed_after(&mut c, t.command, "command").await;
        peer
    };
    // Inside the content: after DATA, the MTA goes quiet.
    let content = async {
        let mut c = Raw::connect(addr).await;
        let peer = c.local();
        c.handshake().await;
        send_continued(
            &mut c,
            vec![
                Command::Mail(envelope(b"<a@example.org>")),
                Command::Rcpt(envelope(b"<b@example.org>")),
                Command::Data,
            ],
        )
        .await;
        assert_closed_after(&mut c, t.content, "content").await;
        peer
    };
    // Concurrently, so the test takes the longest timeout, not their sum.
    let (idle_peer, command_peer, content_peer) = tokio::join!(idle, command, content);
    for (peer, phase) in [
        (idle_peer, "idle"),
        (command_peer, "command"),
        (content_peer, "content"),
    ] {
        wait_for_log(&[
            &format!("peer={peer}"),
            &format!("silent too long in the {phase} phase"),
        ])
        .await;
    }
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

/// Sleeps in `eom` for `delay` on the first message of a connection only, then tags like
/// [`Tagger`] (`X-Test: <message number>`).
struct SlowFirst {
    delay: Duration,
}

impl Milter for SlowFirst {
    fn negotiate(&mut self, offer: &Offer) -> Request {
        Tagger.negotiate(offer)
    }

    async fn eom(&mut self, ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        if ctx.message_number() == 1 {
            tokio::time::sleep(self.delay).await;
        }
        Tagger.eom(ctx, actions).await
    }
}

fn tagged(n: u64) -> Vec<Reply> {
    vec![Reply::Modification(Modification::AddHeader {
        name: Bytes::from_static(b"X-Test"),
        value: Bytes::from(n.to_string()),
    })]
}

/// Waits (up to 5 s) until connecting to `addr` is refused.
async fn wait_not_listening(addr: std::net::SocketAddr) {
    for _ in 0..250 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{addr} still accepts connections");
}

/// As Postfix does between the messages of one SMTP session (and twice before QUIT).
async fn postfix_abort(c: &mut Raw) {
    c.send(&Command::Abort).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_serving_open_sessions_until_they_quit() {
    let (addr, shutdown, task) = start(
        Server::builder().shutdown_deadline(Duration::from_secs(20)),
        || SlowFirst {
            delay: Duration::from_millis(600),
        },
    )
    .await;
    // A session with a message in flight at the shutdown, one that has only done
    // CONNECT, and one that has done CONNECT and HELO: all three are SMTP sessions the
    // MTA expects to go on.
    let mut busy = Raw::connect(addr).await;
    busy.handshake().await;
    let mut connected = Raw::connect(addr).await;
    connected.handshake().await;
    let mut greeted = Raw::connect(addr).await;
    greeted.handshake().await;
    greeted
        .send(&Command::Helo(Bytes::from_static(b"client.example")))
        .await;
    assert_eq!(
        greeted.reply().await,
        Some(Reply::Verdict(Verdict::Continue))
    );
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
    assert_eq!(replies, tagged(1));
    // No longer listening: a new instance could bind the address now.
    wait_not_listening(addr).await;
    // Every open session goes on being served, new messages included, and nothing is
    // closed under it while it is between messages.
    postfix_abort(&mut busy).await;
    let (replies, v) = busy.message("a2@example.org").await;
    assert_eq!((replies, v), (tagged(2), Verdict::Continue));
    for c in [&mut connected, &mut greeted] {
        let (replies, v) = c.message("b@example.org").await;
        assert_eq!((replies, v), (tagged(1), Verdict::Continue));
        postfix_abort(c).await;
    }
    let (replies, v) = greeted.message("b2@example.org").await;
    assert_eq!((replies, v), (tagged(2), Verdict::Continue));
    // The server waits for them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!task.is_finished(), "server returned with sessions open");
    // Each ends as Postfix ends it; once the last has quit the server stops, well
    // before its deadline.
    for c in [&mut busy, &mut connected, &mut greeted] {
        postfix_abort(c).await;
        postfix_abort(c).await;
        c.send(&Command::Quit).await;
        c.expect_eof().await;
    }
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server stops once the sessions quit")
        .expect("server");
    wait_for_log(&[&format!("server{{addr={addr}}}"), "server stopped"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_serves_a_session_whose_mta_closes_instead_of_quitting() {
    let (addr, shutdown, task) = start(
        Server::builder().shutdown_deadline(Duration::from_secs(20)),
        || Tagger,
    )
    .await;
    let mut c = Raw::connect(addr).await;
    c.handshake().await;
    shutdown.shutdown();
    wait_not_listening(addr).await;
    let (replies, v) = c.message("a@example.org").await;
    assert_eq!((replies, v), (tagged(1), Verdict::Continue));
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server stops once the MTA closed")
        .expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_answers_stuck_messages_and_closes_the_rest() {
    let (addr, shutdown, task) = start(
        Server::builder().shutdown_deadline(Duration::from_millis(300)),
        || Slow {
            delay: Duration::from_secs(30),
        },
    )
    .await;
    let mut idle = Raw::connect(addr).await;
    let idle_peer = idle.local();
    idle.handshake().await;
    let mut c = Raw::connect(addr).await;
    let peer = c.local();
    c.handshake().await;
    let send = tokio::spawn(async move {
        let got = c.message("a@example.org").await;
        let rest = c.expect_eof().await;
        (got, rest)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server stops at the deadline")
        .expect("server");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // The stuck end of message got an answer (the callback-timeout verdict, tempfail),
    // not a bare EOF; what the handler had not finished is not sent.
    let ((replies, v), rest) = send.await.expect("client");
    assert_eq!(v, Verdict::Tempfail);
    assert!(
        !replies.iter().any(|r| matches!(r, Reply::Modification(_))),
        "{replies:?}"
    );
    assert!(rest.is_empty(), "{rest:?}");
    // The idle session was closed at the deadline, not before.
    idle.expect_eof().await;
    wait_for_log(&[
        &format!("peer={peer}"),
        "drain deadline passed while the eom callback ran",
    ])
    .await;
    wait_for_log(&[&format!("peer={idle_peer}"), "drain deadline passed"]).await;
}

/// Panics at HELO "panic", otherwise behaves like [`Tagger`].
struct Fragile;

impl Milter for Fragile {
    fn negotiate(&mut self, offer: &Offer) -> Request {
        Tagger.negotiate(offer)
    }

    async fn helo(&mut self, _ctx: &Context<'_>, helo: Bytes) -> Verdict {
        if &helo[..] == b"panic" {
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
    // (An open session would be drained, i.e. waited for, at shutdown.)
    drop(other);
    shutdown.shutdown();
    task.await.expect("server");
}

/// Answers HELO with SKIP (only valid for body) and asks for a header it did not
/// negotiate at EOM.
struct Misuser;

impl Milter for Misuser {
    // At UNKNOWN, where a tempfail refuses only that command; at CONNECT or HELO it would
    // end the connection (Postfix closes the milter stream then).
    async fn unknown(&mut self, _ctx: &Context<'_>, _line: Bytes) -> Verdict {
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
    c.send(&Command::Unknown(Bytes::from_static(b"FOO bar")))
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
