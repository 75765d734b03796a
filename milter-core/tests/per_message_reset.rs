//! The per-message reset rules of `milter_core::handler` (module docs, "Between messages on
//! one connection"), each checked against the real server driver (`serve_connection`)
//! with a raw MTA side that writes frames from the crate's codec over an in-memory pipe:
//! unlike the client, it can send MAIL without ABORT, a MAIL inside a message, or
//! QUIT_NC wherever Postfix could.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::proto::OptNeg;
use milter_core::server::{ConnectionConfig, serve_connection};
use milter_core::wire::FrameDecoder;
use milter_core::{
    Actions, Bytes, Command, ConnectInfo, Envelope, Error, ProtocolFlags, Reply, SocketInfo,
    Verdict,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

/// What the handler saw at one callback.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// Which handler instance (counting from 1).
    instance: usize,
    event: &'static str,
    message: u64,
    /// The macros `i`, `{mail_addr}`, `{rcpt_addr}` (message stages), `j` and
    /// `{tls_version}` (connection stages), and the HELO and CONNECT host name.
    i: Option<String>,
    mail_addr: Option<String>,
    rcpt_addr: Option<String>,
    j: Option<String>,
    tls: Option<String>,
    helo: Option<String>,
    host: Option<String>,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The events of message `n` of instance 1, in order.
    fn message(&self, n: u64) -> Vec<&'static str> {
        self.all()
            .into_iter()
            .filter(|s| s.instance == 1 && s.message == n && s.event != "close")
            .map(|s| s.event)
            .collect()
    }

    fn events(&self) -> Vec<(usize, &'static str)> {
        self.all()
            .into_iter()
            .map(|s| (s.instance, s.event))
            .collect()
    }

    fn last(&self, event: &str) -> Seen {
        self.all()
            .into_iter()
            .rev()
            .find(|s| s.event == event)
            .unwrap_or_else(|| panic!("no {event} seen"))
    }
}

/// Records every callback with its context. Verdicts are steered by the addresses: a
/// sender or recipient `STAGE-VERDICT@...` (e.g. `eoh-discard@x`) gets VERDICT at STAGE,
/// and a body chunk `refuse` is rejected.
struct Recorder {
    log: Log,
    instance: usize,
    plan: Option<(String, String)>,
}

impl Recorder {
    fn factory(
        log: &Log,
    ) -> (
        impl Fn() -> Recorder + Send + Sync + 'static,
        Arc<AtomicUsize>,
    ) {
        let made = Arc::new(AtomicUsize::new(0));
        let (log, count) = (log.clone(), made.clone());
        let f = move || Recorder {
            log: log.clone(),
            instance: count.fetch_add(1, Ordering::SeqCst) + 1,
            plan: None,
        };
        (f, made)
    }

    fn note(&self, ctx: &Context<'_>, event: &'static str) {
        let s = |v: Option<&[u8]>| v.map(|b| String::from_utf8_lossy(b).into_owned());
        let seen = Seen {
            instance: self.instance,
            event,
            message: ctx.message_number(),
            i: ctx.macro_str("i"),
            mail_addr: ctx.macro_str("{mail_addr}"),
            rcpt_addr: ctx.macro_str("rcpt_addr"),
            j: ctx.macro_str("j"),
            tls: ctx.macro_str("{tls_version}"),
            helo: s(ctx.helo()),
            host: s(ctx.connect_info().map(|c| &c.hostname[..])),
        };
        self.log
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(seen);
    }

    /// The verdict planned for `stage` by `addr` (or by MAIL's address), else Continue.
    fn verdict(&self, stage: &str, addr: Option<&str>) -> Verdict {
        let plan = addr
            .and_then(parse_plan)
            .or_else(|| self.plan.clone())
            .filter(|(s, _)| s == stage);
        match plan.as_ref().map(|(_, v)| v.as_str()) {
            Some("reject") => Verdict::Reject,
            Some("tempfail") => Verdict::Tempfail,
            Some("accept") => Verdict::Accept,
            Some("discard") => Verdict::Discard,
            _ => Verdict::Continue,
        }
    }
}

fn parse_plan(addr: &str) -> Option<(String, String)> {
    let local = addr.split('@').next()?;
    let (stage, verdict) = local.split_once('-')?;
    Some((stage.to_owned(), verdict.to_owned()))
}

impl Milter for Recorder {
    async fn connect(&mut self, ctx: &Context<'_>, _info: &ConnectInfo) -> Verdict {
        self.note(ctx, "connect");
        Verdict::Continue
    }
    async fn helo(&mut self, ctx: &Context<'_>, _helo: Bytes) -> Verdict {
        self.note(ctx, "helo");
        Verdict::Continue
    }
    async fn mail(&mut self, ctx: &Context<'_>, from: &Envelope) -> Verdict {
        self.note(ctx, "mail");
        self.plan = parse_plan(&from.address_str());
        self.verdict("mail", None)
    }
    async fn rcpt(&mut self, ctx: &Context<'_>, rcpt: &Envelope) -> Verdict {
        self.note(ctx, "rcpt");
        self.verdict("rcpt", Some(&rcpt.address_str()))
    }
    async fn data(&mut self, ctx: &Context<'_>) -> Verdict {
        self.note(ctx, "data");
        self.verdict("data", None)
    }
    async fn header(&mut self, ctx: &Context<'_>, _name: Bytes, _value: Bytes) -> Verdict {
        self.note(ctx, "header");
        self.verdict("header", None)
    }
    async fn eoh(&mut self, ctx: &Context<'_>) -> Verdict {
        self.note(ctx, "eoh");
        self.verdict("eoh", None)
    }
    async fn body(&mut self, ctx: &Context<'_>, chunk: Bytes) -> Verdict {
        self.note(ctx, "body");
        if &chunk[..] == b"refuse" {
            return Verdict::Reject;
        }
        self.verdict("body", None)
    }
    async fn eom(&mut self, ctx: &Context<'_>, _actions: &mut EomActions) -> Verdict {
        self.note(ctx, "eom");
        self.plan = None;
        Verdict::Continue
    }
    async fn abort(&mut self, ctx: &Context<'_>) {
        self.note(ctx, "abort");
        self.plan = None;
    }
    async fn close(&mut self, ctx: &Context<'_>) {
        self.note(ctx, "close");
    }
}

/// The MTA side: frames out, replies in, over a pipe to the server driver.
struct Mta {
    io: DuplexStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    server: JoinHandle<Result<(), Error>>,
}

fn env(addr: &str) -> Envelope {
    Envelope {
        address: Bytes::from(format!("<{addr}>")),
        args: vec![],
    }
}

fn macros(stage: u8, pairs: &[(&'static str, &'static str)]) -> Command {
    Command::Macros {
        for_command: stage,
        pairs: pairs
            .iter()
            .map(|(n, v)| {
                (
                    Bytes::from_static(n.as_bytes()),
                    Bytes::from_static(v.as_bytes()),
                )
            })
            .collect(),
    }
}

impl Mta {
    /// Starts the driver for `factory` and negotiates with Postfix 3.x's offer (all
    /// actions, every event with a reply: the recorder declares every event).
    async fn start<F, M>(factory: F) -> Mta
    where
        F: Fn() -> M + Send + Sync + 'static,
        M: Milter,
    {
        let (mta_end, milter_end) = tokio::io::duplex(16 * 1024);
        let server = tokio::spawn(async move {
            serve_connection(milter_end, &factory, &ConnectionConfig::default()).await
        });
        let mut mta = Mta {
            io: mta_end,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(1 << 20),
            server,
        };
        mta.send(&Command::OptNeg(OptNeg {
            version: 6,
            actions: Actions::from_bits_truncate(0x1FF),
            protocol: ProtocolFlags::POSTFIX_V6,
        }))
        .await;
        assert!(matches!(mta.reply().await, Some(Reply::OptNeg(_))));
        mta
    }

    async fn send(&mut self, cmd: &Command) {
        let mut out = BytesMut::new();
        cmd.encode(&mut out);
        self.io.write_all(&out).await.expect("write");
    }

    async fn reply(&mut self) -> Option<Reply> {
        loop {
            if let Some(f) = self.decoder.decode(&mut self.buf).expect("a valid frame") {
                return Some(Reply::decode(f).expect("a valid reply"));
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_buf(&mut self.buf))
                .await
                .expect("an answer within 10 s")
                .expect("read");
            if n == 0 {
                return None;
            }
        }
    }

    /// Sends `cmd` and returns its verdict (modifications skipped).
    async fn ask(&mut self, cmd: &Command) -> Verdict {
        self.send(cmd).await;
        loop {
            match self.reply().await.expect("a reply before EOF") {
                Reply::Verdict(v) => return v,
                Reply::Modification(_) | Reply::Progress => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// CONNECT and HELO, with connection-stage macros.
    async fn open(&mut self) {
        self.send(&macros(b'C', &[("j", "mx.example")])).await;
        let info = ConnectInfo {
            hostname: Bytes::from_static(b"client.example"),
            socket: SocketInfo::Inet {
                addr: "192.0.2.1".parse().expect("ip"),
                port: 4567,
            },
        };
        assert_eq!(self.ask(&Command::Connect(info)).await, Verdict::Continue);
        self.send(&macros(b'H', &[("{tls_version}", "TLSv1.3")]))
            .await;
        let helo = Command::Helo(Bytes::from_static(b"helo.example"));
        assert_eq!(self.ask(&helo).await, Verdict::Continue);
    }

    /// MAIL (with its `{mail_addr}` macro) and one RCPT (with `{rcpt_addr}` and `i`, as
    /// Postfix sends them); the first verdict other than Continue, if any.
    async fn envelope(&mut self, from: &'static str, to: &'static str) -> Verdict {
        self.send(&macros(b'M', &[("{mail_addr}", from)])).await;
        let v = self.ask(&Command::Mail(env(from))).await;
        if v != Verdict::Continue {
            return v;
        }
        self.send(&macros(b'R', &[("{rcpt_addr}", to), ("i", "QID1")]))
            .await;
        self.ask(&Command::Rcpt(env(to))).await
    }

    /// The content after the envelope, up to and including end of message; the first
    /// verdict other than Continue (EOM's verdict otherwise). `body` as one chunk.
    async fn content(&mut self, body: &'static [u8]) -> Verdict {
        let steps = [
            Command::Data,
            Command::Header {
                name: Bytes::from_static(b"Subject"),
                value: Bytes::from_static(b"hi"),
            },
            Command::EndOfHeaders,
            Command::Body(Bytes::from_static(body)),
        ];
        for c in steps {
            let v = self.ask(&c).await;
            if v != Verdict::Continue {
                return v;
            }
        }
        self.send(&macros(b'E', &[("i", "QID1")])).await;
        self.ask(&Command::EndOfMessage(Bytes::new())).await
    }

    async fn quit(mut self) -> Result<(), Error> {
        self.send(&Command::Quit).await;
        self.finish().await
    }

    /// Waits for the driver to end; its result.
    async fn finish(self) -> Result<(), Error> {
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("the driver ends within 10 s")
            .expect("the driver did not panic")
    }
}

const FULL: [&str; 7] = ["mail", "rcpt", "data", "header", "eoh", "body", "eom"];

#[tokio::test]
async fn each_message_ends_with_exactly_one_eom_or_abort() {
    let log = Log::default();
    let (factory, made) = Recorder::factory(&log);
    let mut m = Mta::start(factory).await;
    m.open().await;

    // 1: a whole message: eom ends it, no abort.
    assert_eq!(m.envelope("a@x", "b@y").await, Verdict::Continue);
    assert_eq!(m.content(b"body\r\n").await, Verdict::Continue);
    // 2: MAIL rejected: abort at once; the MTA's ABORT afterwards is absorbed.
    assert_eq!(m.envelope("mail-reject@x", "b@y").await, Verdict::Reject);
    m.send(&Command::Abort).await;
    // 3: one recipient refused, the other accepted: the message goes on to eom.
    assert_eq!(m.envelope("a@x", "rcpt-reject@y").await, Verdict::Reject);
    m.send(&macros(b'R', &[("{rcpt_addr}", "b@y")])).await;
    assert_eq!(m.ask(&Command::Rcpt(env("b@y"))).await, Verdict::Continue);
    assert_eq!(m.content(b"body\r\n").await, Verdict::Continue);
    // 4: accept at RCPT ends the message: abort (no ABORT from the MTA this time).
    assert_eq!(m.envelope("a@x", "rcpt-accept@y").await, Verdict::Accept);
    // 5: discard at end of headers.
    assert_eq!(m.envelope("eoh-discard@x", "b@y").await, Verdict::Continue);
    assert_eq!(m.content(b"body\r\n").await, Verdict::Discard);
    // 6: the MTA aborts after DATA (client RSET).
    assert_eq!(m.envelope("a@x", "b@y").await, Verdict::Continue);
    assert_eq!(m.ask(&Command::Data).await, Verdict::Continue);
    m.send(&Command::Abort).await;
    // 7: tempfail at a body chunk.
    assert_eq!(
        m.envelope("body-tempfail@x", "b@y").await,
        Verdict::Continue
    );
    assert_eq!(m.content(b"body\r\n").await, Verdict::Tempfail);
    // 8: data carried by end of message refused in `body`: eom is never called.
    assert_eq!(m.envelope("a@x", "b@y").await, Verdict::Continue);
    for c in [Command::Data, Command::EndOfHeaders] {
        assert_eq!(m.ask(&c).await, Verdict::Continue);
    }
    let eom = Command::EndOfMessage(Bytes::from_static(b"refuse"));
    assert_eq!(m.ask(&eom).await, Verdict::Reject);
    // 9: a last whole message, then the MTA's ABORT (absorbed) and QUIT.
    assert_eq!(m.envelope("a@x", "b@y").await, Verdict::Continue);
    assert_eq!(m.content(b"body\r\n").await, Verdict::Continue);
    m.send(&Command::Abort).await;
    m.quit().await.expect("clean end");

    let expected: [&[&str]; 9] = [
        &FULL,
        &["mail", "abort"],
        &[
            "mail", "rcpt", "rcpt", "data", "header", "eoh", "body", "eom",
        ],
        &["mail", "rcpt", "abort"],
        &["mail", "rcpt", "data", "header", "eoh", "abort"],
        &["mail", "rcpt", "data", "abort"],
        &["mail", "rcpt", "data", "header", "eoh", "body", "abort"],
        &["mail", "rcpt", "data", "eoh", "body", "abort"],
        &FULL,
    ];
    for (n, want) in expected.iter().enumerate() {
        assert_eq!(log.message(n as u64 + 1), *want, "message {}", n + 1);
    }
    // One instance for the connection; the last callback is its close, once.
    assert_eq!(made.load(Ordering::SeqCst), 1);
    let events = log.events();
    assert_eq!(events.iter().filter(|e| e.1 == "close").count(), 1);
    assert_eq!(events.last(), Some(&(1, "close")));
    assert_eq!(log.last("close").message, 9);
}

#[tokio::test]
async fn message_macros_are_dropped_at_the_end_connection_facts_stay() {
    let log = Log::default();
    let (factory, _) = Recorder::factory(&log);
    let mut m = Mta::start(factory).await;
    m.open().await;
    assert_eq!(m.envelope("a@x", "b@y").await, Verdict::Continue);
    assert_eq!(m.content(b"body\r\n").await, Verdict::Continue);
    // The next MAIL comes without ABORT and without macros of its own.
    assert_eq!(m.ask(&Command::Mail(env("c@x"))).await, Verdict::Continue);
    m.send(&Command::Abort).await;
    // A message ended by a verdict: its macros are readable in its abort, gone after.
    assert_eq!(m.envelope("mail-reject@x", "b@y").await, Verdict::Reject);
    assert_eq!(m.ask(&Command::Mail(env("d@x"))).await, Verdict::Continue);
    m.quit().await.expect("clean end");

    let all = log.all();
    let at = |event: &str, message: u64| {
        all.iter()
            .find(|s| s.event == event && s.message == message)
            .unwrap_or_else(|| panic!("no {event} in message {message}: {all:#?}"))
            .clone()
    };
    let some = |s: &str| Some(s.to_owned());
    // End of message of message 1 sees every macro of its stages.
    let eom = at("eom", 1);
    assert_eq!(
        (eom.i, eom.mail_addr, eom.rcpt_addr),
        (some("QID1"), some("a@x"), some("b@y"))
    );
    // Message 2's MAIL: message 1's macros are gone, the connection's facts are not.
    let mail2 = at("mail", 2);
    assert_eq!(
        (&mail2.i, &mail2.mail_addr, &mail2.rcpt_addr),
        (&None, &None, &None)
    );
    for s in [&at("mail", 1), &mail2, &at("mail", 4), &at("close", 4)] {
        assert_eq!(s.j, some("mx.example"), "{s:?}");
        assert_eq!(s.tls, some("TLSv1.3"), "{s:?}");
        assert_eq!(s.helo, some("helo.example"), "{s:?}");
        assert_eq!(s.host, some("client.example"), "{s:?}");
    }
    // Message 3 ended by its MAIL's reject: abort still reads its `{mail_addr}`; the
    // next MAIL does not.
    assert_eq!(at("abort", 3).mail_addr, some("mail-reject@x"));
    assert_eq!(at("mail", 4).mail_addr, None);
}

#[tokio::test]
async fn mail_inside_a_message_closes_the_connection_with_abort_and_close() {
    let log = Log::default();
    let (factory, _) = Recorder::factory(&log);
    let mut m = Mta::start(factory).await;
    m.open().await;
    assert_eq!(m.envelope("a@x", "b@y").await, Verdict::Continue);
    // A second MAIL, with neither an end of message, a verdict nor ABORT since the first.
    m.send(&Command::Mail(env("c@x"))).await;
    assert_eq!(m.reply().await, None, "the connection is closed");
    let r = m.finish().await;
    assert!(matches!(r, Err(Error::Protocol(_))), "{r:?}");
    assert_eq!(
        log.events(),
        [
            (1, "connect"),
            (1, "helo"),
            (1, "mail"),
            (1, "rcpt"),
            (1, "abort"),
            (1, "close")
        ]
    );
}

#[tokio::test]
async fn connection_end_inside_a_message_aborts_then_closes() {
    // QUIT after RCPT.
    let log = Log::default();
    let (factory, _) = Recorder::factory(&log);
    let mut m = Mta::start(factory).await;
    m.open().await;
    assert_eq!(m.envelope("a@x", "b@y").await, Verdict::Continue);
    m.quit().await.expect("clean end");
    assert_eq!(log.message(1), ["mail", "rcpt", "abort"]);
    assert_eq!(log.events().last(), Some(&(1, "close")));

    // EOF after DATA.
    let log = Log::default();
    let (factory, _) = Recorder::factory(&log);
    let mut m = Mta::start(factory).await;
    m.open().await;
    assert_eq!(m.envelope("a@x", "b@y").await, Verdict::Continue);
    assert_eq!(m.ask(&Command::Data).await, Verdict::Continue);
    m.io.shutdown().await.expect("shutdown");
    m.finish()
        .await
        .expect("EOF between commands is a clean end");
    assert_eq!(log.message(1), ["mail", "rcpt", "data", "abort"]);
    assert_eq!(log.events().last(), Some(&(1, "close")));
}

#[tokio::test]
async fn quit_nc_ends_the_handler_and_the_next_session_starts_fresh() {
    let log = Log::default();
    let (factory, made) = Recorder::factory(&log);
    let mut m = Mta::start(factory).await;
    m.open().await;
    assert_eq!(m.envelope("a@x", "b@y").await, Verdict::Continue);
    // One SMTP session ends inside a message; another follows on this connection.
    m.send(&Command::QuitNoClose).await;
    let info = ConnectInfo {
        hostname: Bytes::from_static(b"second.example"),
        socket: SocketInfo::Unknown,
    };
    assert_eq!(m.ask(&Command::Connect(info)).await, Verdict::Continue);
    assert_eq!(m.ask(&Command::Mail(env("c@x"))).await, Verdict::Continue);
    m.quit().await.expect("clean end");

    assert_eq!(made.load(Ordering::SeqCst), 2);
    assert_eq!(
        log.events(),
        [
            (1, "connect"),
            (1, "helo"),
            (1, "mail"),
            (1, "rcpt"),
            (1, "abort"),
            (1, "close"),
            (2, "connect"),
            (2, "mail"),
            (2, "abort"),
            (2, "close"),
        ]
    );
    // The second session knows nothing of the first: no macros, no HELO.
    let second = log
        .all()
        .into_iter()
        .find(|s| s.instance == 2)
        .expect("seen");
    assert_eq!(second.host.as_deref(), Some("second.example"));
    assert_eq!((second.j, second.tls, second.helo), (None, None, None));
}

#[tokio::test]
async fn the_handler_keeps_its_own_state_across_messages() {
    /// Counts messages in a field the core never touches.
    #[derive(Default)]
    struct Counter {
        messages: u32,
    }
    impl Milter for Counter {
        fn negotiate(&mut self, _offer: &Offer) -> Request {
            Request::new()
                .with_events(Self::EVENTS)
                .with_actions(Actions::ADD_HEADERS)
        }
        async fn mail(&mut self, _ctx: &Context<'_>, _from: &Envelope) -> Verdict {
            self.messages += 1;
            Verdict::Continue
        }
        async fn eom(&mut self, _ctx: &Context<'_>, a: &mut EomActions) -> Verdict {
            match a.add_header("X-Messages", self.messages.to_string()) {
                Ok(()) => Verdict::Continue,
                Err(_) => Verdict::Tempfail,
            }
        }
    }
    let made = Arc::new(AtomicUsize::new(0));
    let count = made.clone();
    let mut pair = milter_core::testing::pair(move || {
        count.fetch_add(1, Ordering::SeqCst);
        Counter::default()
    })
    .await
    .expect("pair");
    for n in 1..=3 {
        let tx = milter_core::testing::Transcript::new()
            .from("a@x")
            .to("b@y")
            .build();
        let out = pair.send(&tx).await.expect("send");
        assert_eq!(
            out.added_header("X-Messages"),
            Some(Bytes::from(n.to_string()))
        );
    }
    pair.finish().await.expect("finish");
    assert_eq!(made.load(Ordering::SeqCst), 1);
}
