//! Interoperability: an independent MTA-side implementation (indymilter-test, GPL,
//! dev-dependency only) drives a milter-core server through full sessions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use indymilter_test::{Actions as IActions, MacroStage, Status, TestConnection};
use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::server::{BoundAddr, Server};
use milter_core::{Actions, ConnectInfo, Envelope, SocketInfo, Stage, Verdict};

/// What the milter saw, in order, shared with the test.
type Seen = Arc<Mutex<Vec<String>>>;

struct Recorder {
    seen: Seen,
}

impl Recorder {
    fn log(&self, s: String) {
        self.seen.lock().expect("lock").push(s);
    }
}

impl Milter for Recorder {
    fn negotiate(&mut self, offer: &Offer) -> Request {
        self.log(format!("negotiate v{}", offer.version));
        Request::new()
            .with_actions(Actions::all())
            .with_macros(Stage::MailFrom, ["{auth_authen}", "i"])
    }

    async fn connect(&mut self, ctx: &Context<'_>, info: &ConnectInfo) -> Verdict {
        let addr = match &info.socket {
            SocketInfo::Inet { addr, port } => format!("{addr}:{port}"),
            other => format!("{other:?}"),
        };
        self.log(format!(
            "connect {} {addr} conn#{}",
            String::from_utf8_lossy(&info.hostname),
            u8::from(ctx.connection_id() > 0)
        ));
        Verdict::Continue
    }

    async fn helo(&mut self, _ctx: &Context<'_>, helo: Bytes) -> Verdict {
        self.log(format!("helo {}", String::from_utf8_lossy(&helo)));
        Verdict::Continue
    }

    async fn mail(&mut self, ctx: &Context<'_>, from: &Envelope) -> Verdict {
        self.log(format!(
            "mail#{} {} auth={} helo={}",
            ctx.message_number(),
            from.address_str(),
            ctx.macro_str("{auth_authen}").unwrap_or_default(),
            String::from_utf8_lossy(ctx.helo().unwrap_or_default()),
        ));
        Verdict::Continue
    }

    async fn rcpt(&mut self, _ctx: &Context<'_>, rcpt: &Envelope) -> Verdict {
        if rcpt.address_str() == "nobody@example.org" {
            return Verdict::reply(550, "5.1.1", "No such user");
        }
        Verdict::Continue
    }

    async fn header(&mut self, _ctx: &Context<'_>, name: Bytes, value: Bytes) -> Verdict {
        if name.eq_ignore_ascii_case(b"subject") {
            self.log(format!("subject {}", String::from_utf8_lossy(&value)));
        }
        Verdict::Continue
    }

    async fn body(&mut self, _ctx: &Context<'_>, chunk: Bytes) -> Verdict {
        self.log(format!("body {} bytes", chunk.len()));
        Verdict::Continue
    }

    async fn eom(&mut self, ctx: &Context<'_>, a: &mut EomActions) -> Verdict {
        self.log(format!("eom#{}", ctx.message_number()));
        let results = [
            a.add_header("X-Added", format!("message {}", ctx.message_number())),
            a.insert_header(0, "X-First", "top"),
            a.change_header("Subject", 1, "[tagged] hello"),
            a.delete_header("X-Spam", 1),
            a.change_from("<bounce@example.org>", None),
            a.add_rcpt("<copy@example.org>"),
            a.add_rcpt_with_args(
                "<dsn@example.org>",
                Some(Bytes::from_static(b"NOTIFY=NEVER")),
            ),
            a.delete_rcpt("<b@example.org>"),
            a.replace_body(b"new body\r\n"),
            a.quarantine("inspected"),
        ];
        if results.iter().any(Result::is_err) {
            return Verdict::Tempfail;
        }
        Verdict::Accept
    }

    async fn abort(&mut self, ctx: &Context<'_>) {
        self.log(format!("abort#{}", ctx.message_number()));
    }

    async fn close(&mut self, _ctx: &Context<'_>) {
        self.log("close".into());
    }
}

async fn message(c: &mut TestConnection, from: &str, with_eom: bool) {
    assert_eq!(c.mail([from]).await.expect("mail"), Status::Continue);
    assert_eq!(
        c.rcpt(["<b@example.org>"]).await.expect("rcpt"),
        Status::Continue
    );
    assert_eq!(c.data().await.expect("data"), Status::Continue);
    assert_eq!(
        c.header("Subject", "hello").await.expect("header"),
        Status::Continue
    );
    assert_eq!(
        c.header("X-Spam", "yes").await.expect("header"),
        Status::Continue
    );
    assert_eq!(c.eoh().await.expect("eoh"), Status::Continue);
    assert_eq!(
        c.body("line one\r\n").await.expect("body"),
        Status::Continue
    );
    if !with_eom {
        c.abort().await.expect("abort");
        return;
    }
    let (a, status) = c.eom().await.expect("eom");
    assert_eq!(status, Status::Accept);
    assert!(a.has_insert_header(0, "X-First", "top"), "{a:?}");
    assert!(a.has_change_header("Subject", 1, "[tagged] hello"), "{a:?}");
    assert!(a.has_delete_header("X-Spam", 1), "{a:?}");
    assert!(
        a.has_change_sender("<bounce@example.org>", None::<&str>),
        "{a:?}"
    );
    assert!(
        a.has_add_recipient("<copy@example.org>", None::<&str>),
        "{a:?}"
    );
    assert!(
        a.has_add_recipient("<dsn@example.org>", "NOTIFY=NEVER"),
        "{a:?}"
    );
    assert!(a.has_delete_recipient("<b@example.org>"), "{a:?}");
    assert!(a.has_replaced_body(&b"new body\r\n"[..]), "{a:?}");
    assert!(a.has_quarantine("inspected"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sessions_against_an_independent_mta_implementation() {
    let seen: Seen = Arc::default();
    let server = Server::builder()
        .listen("inet:127.0.0.1:0")
        .expect("spec")
        .handle_signals(false)
        .bind()
        .await
        .expect("bind");
    let Some(BoundAddr::Tcp(addr)) = server.local_addrs().first().cloned() else {
        panic!("no tcp address");
    };
    let shutdown = server.shutdown_handle();
    let factory_seen = seen.clone();
    let task = tokio::spawn(server.serve(move || Recorder {
        seen: factory_seen.clone(),
    }));

    let mut c = TestConnection::configure()
        .read_timeout(Duration::from_secs(10))
        .available_actions(IActions::all())
        .open_tcp(addr)
        .await
        .expect("negotiation");
    assert!(
        c.negotiated_actions()
            .contains(IActions::ADD_HEADER | IActions::REPLACE_BODY)
    );
    let macros = c.requested_macros();
    assert_eq!(
        macros
            .get(&MacroStage::Mail)
            .map(|m| m.to_string_lossy().into_owned()),
        Some("{auth_authen} i".to_owned())
    );
    assert_eq!(
        c.connect("client.example", ([192, 0, 2, 7], 2525))
            .await
            .expect("connect"),
        Status::Continue
    );
    assert_eq!(
        c.helo("client.example").await.expect("helo"),
        Status::Continue
    );
    c.macros(MacroStage::Mail, [("{auth_authen}", "alice")])
        .await
        .expect("macros");
    // Message 1: aborted after the body (RSET).
    message(&mut c, "<a@example.org>", false).await;
    // Message 2: every modification, then accept.
    message(&mut c, "<a@example.org>", true).await;
    // Message 3: a refused recipient does not end the message.
    assert_eq!(
        c.mail(["<c@example.org>"]).await.expect("mail"),
        Status::Continue
    );
    let refused = c.rcpt(["<nobody@example.org>"]).await.expect("rcpt");
    assert!(
        matches!(&refused, Status::Reject { message: Some(m) } if m.to_bytes() == b"550 5.1.1 No such user"),
        "{refused:?}"
    );
    message_tail_accept(&mut c).await;
    c.close().await.expect("quit");

    // The milter saw it all, in order, with its context intact across messages.
    let mut log = Vec::new();
    for _ in 0..100 {
        log = seen.lock().expect("lock").clone();
        if log.last().map(String::as_str) == Some("close") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let want = [
        "negotiate v6",
        "connect client.example 192.0.2.7:2525 conn#1",
        "helo client.example",
        "mail#1 a@example.org auth=alice helo=client.example",
        "subject hello",
        "body 10 bytes",
        "abort#1",
        "mail#2 a@example.org auth= helo=client.example",
        "subject hello",
        "body 10 bytes",
        "eom#2",
        "mail#3 c@example.org auth= helo=client.example",
        "eom#3",
        "close",
    ];
    assert_eq!(log, want);
    shutdown.shutdown();
    task.await.expect("join").expect("serve");
}

async fn message_tail_accept(c: &mut TestConnection) {
    assert_eq!(
        c.rcpt(["<b@example.org>"]).await.expect("rcpt"),
        Status::Continue
    );
    assert_eq!(c.data().await.expect("data"), Status::Continue);
    assert_eq!(c.eoh().await.expect("eoh"), Status::Continue);
    let (_, status) = c.eom().await.expect("eom");
    assert_eq!(status, Status::Accept);
}
