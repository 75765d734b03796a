//! Where Postfix and Sendmail are lenient, so is the milter: a CONNECT whose address does
//! not parse or whose family is unknown is served (the address kept unparsed); a reply text
//! that cannot be sent falls back by the code's class instead of becoming a tempfail; and,
//! the other way round, header values a handler adds or changes may break lines only to
//! fold them (no header injection).
//!
//! The CONNECT cases are real Postfix 3.7 sessions (`tests/golden/`, see its README) with
//! only the CONNECT frame's address rewritten, fed to a running server over TCP.

mod server_support;

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::server::Server;
use milter_core::wire::{DEFAULT_RECV_MAX, FrameDecoder, encode_frame};
use milter_core::{
    Actions, Command, ConnectInfo, Envelope, Modification, Reply, SmtpReply, SocketInfo,
    UsageError, Verdict,
};
use server_support::{Raw, Tagger, start, wait_for_log};

fn golden(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The recording with its CONNECT payload's address part (everything after the host
/// name) replaced by `family`, the recorded port, and `address` (NUL-terminated).
fn with_connect_address(name: &str, family: u8, address: &[u8]) -> (Vec<u8>, u16) {
    let mut buf = BytesMut::from(&golden(name)[..]);
    let d = FrameDecoder::new(DEFAULT_RECV_MAX);
    let mut out = BytesMut::new();
    let mut port = None;
    while let Some(f) = d.decode_eof(&mut buf).expect("frames decode") {
        if f.code != b'C' {
            encode_frame(f.code, &f.payload, &mut out);
            continue;
        }
        let host_end = f.payload.iter().position(|&b| b == 0).expect("host name") + 1;
        let (host, rest) = f.payload.split_at(host_end);
        assert_eq!(rest[0], b'4', "Postfix recorded an IPv4 client");
        let p = u16::from_be_bytes([rest[1], rest[2]]);
        let mut payload = BytesMut::from(host);
        payload.put_u8(family);
        payload.put_u16(p);
        payload.put_slice(address);
        payload.put_u8(0);
        encode_frame(b'C', &payload, &mut out);
        port = Some(p);
    }
    (out.to_vec(), port.expect("a CONNECT frame"))
}

/// Tags like [`Tagger`] and keeps the CONNECT information it was given.
struct KeepConnect {
    seen: Arc<Mutex<Vec<SocketInfo>>>,
}

impl Milter for KeepConnect {
    fn negotiate(&mut self, offer: &Offer) -> Request {
        Tagger.negotiate(offer)
    }

    async fn connect(&mut self, _ctx: &Context<'_>, info: &ConnectInfo) -> Verdict {
        self.seen.lock().unwrap().push(info.socket.clone());
        Verdict::Continue
    }

    async fn eom(&mut self, ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        Tagger.eom(ctx, actions).await
    }
}

/// Plays a recording to a server and reads every answer until the server closes: the
/// socket info the handler saw and the answers.
async fn play(stream: &[u8]) -> (SocketInfo, Vec<Reply>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let factory_seen = seen.clone();
    let (addr, shutdown, task) = start(Server::builder(), move || KeepConnect {
        seen: factory_seen.clone(),
    })
    .await;
    let mut c = Raw::connect(addr).await;
    let peer = c.local();
    c.send_raw(stream).await;
    let mut replies = Vec::new();
    while let Some(r) = c.reply().await {
        replies.push(r);
    }
    // Closed because Postfix quit, not because of the address.
    wait_for_log(&[&format!("peer={peer}"), "connection closed: the MTA quit"]).await;
    shutdown.shutdown();
    task.await.expect("server");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    (seen[0].clone(), replies)
}

/// The answers a tagging milter gives the two-message MX session: negotiation, a
/// Continue per event, a header and a Continue per end of message.
fn assert_whole_mx_session_served(replies: &[Reply]) {
    assert!(
        matches!(replies.first(), Some(Reply::OptNeg(_))),
        "{replies:?}"
    );
    let tags = replies
        .iter()
        .filter(|r| matches!(r, Reply::Modification(Modification::AddHeader { .. })))
        .count();
    assert_eq!(tags, 2, "both messages tagged: {replies:?}");
    // C H M R R T L×9 N B B E, then M R T L×6 N B E: 31 events answered.
    let verdicts = replies
        .iter()
        .filter(|r| **r == Reply::Verdict(Verdict::Continue))
        .count();
    assert_eq!(verdicts, 31, "{replies:?}");
}

const MX: &str = "postfix37-mx-two-messages-rset.bin";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_from_a_scoped_ipv6_address_is_served() {
    let (stream, port) = with_connect_address(MX, b'6', b"fe80::1%eth0");
    let (socket, replies) = play(&stream).await;
    assert_eq!(
        socket,
        SocketInfo::Unparsed {
            family: b'6',
            port,
            raw: Bytes::from_static(b"fe80::1%eth0"),
        }
    );
    assert_eq!(
        socket.ip(),
        Some(IpAddr::V6("fe80::1".parse::<Ipv6Addr>().unwrap()))
    );
    assert_whole_mx_session_served(&replies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_in_sendmail_form_with_a_scope_is_served() {
    let (stream, port) = with_connect_address(MX, b'6', b"IPv6:fe80::25%2");
    let (socket, replies) = play(&stream).await;
    assert_eq!(
        socket,
        SocketInfo::Unparsed {
            family: b'6',
            port,
            raw: Bytes::from_static(b"IPv6:fe80::25%2"),
        }
    );
    assert_eq!(socket.ip(), Some(IpAddr::V6("fe80::25".parse().unwrap())));
    assert_whole_mx_session_served(&replies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_a_garbage_address_is_served() {
    let (stream, port) = with_connect_address(MX, b'4', b"127.0.0.1.5\xff");
    let (socket, replies) = play(&stream).await;
    assert_eq!(
        socket,
        SocketInfo::Unparsed {
            family: b'4',
            port,
            raw: Bytes::from_static(b"127.0.0.1.5\xff"),
        }
    );
    assert_eq!(socket.ip(), None);
    assert_whole_mx_session_served(&replies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_an_unknown_family_is_served() {
    let (stream, port) = with_connect_address(MX, b'X', b"somewhere");
    let (socket, replies) = play(&stream).await;
    assert_eq!(
        socket,
        SocketInfo::Unparsed {
            family: b'X',
            port,
            raw: Bytes::from_static(b"somewhere"),
        }
    );
    assert_whole_mx_session_served(&replies);
}

// ---- reply texts ------------------------------------------------------------------------

fn reply_of(v: Verdict) -> SmtpReply {
    match v {
        Verdict::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn a_bad_reply_text_falls_back_by_the_codes_class() {
    // A control character, an over-long line, too many lines: a 5xx still rejects.
    for text in [
        "bad\u{7}text".to_owned(),
        "nul\0inside".to_owned(),
        "x".repeat(981),
        "line\n".repeat(40),
    ] {
        let r = reply_of(Verdict::reply(550, "5.7.1", &text));
        assert!(r.is_permanent());
        assert_eq!(r.to_wire(), "550 5.7.1 Command rejected", "{text:?}");
        let r = reply_of(Verdict::reply(451, "4.7.1", &text));
        assert!(!r.is_permanent());
        assert_eq!(
            r.to_wire(),
            "451 4.7.1 Service unavailable - try again later",
            "{text:?}"
        );
    }
    // The code is kept.
    assert_eq!(
        reply_of(Verdict::reply(554, "", "bad\rtext")).to_wire(),
        "554 Command rejected"
    );
    // Only the enhanced code is wrong: replaced, the text kept.
    assert_eq!(
        reply_of(Verdict::reply(550, "4.7.1", "no such user")).to_wire(),
        "550 5.7.1 no such user"
    );
    assert_eq!(
        reply_of(Verdict::reply(421, "4.7", "busy")).to_wire(),
        "421 4.7.1 busy"
    );
    // Both wrong.
    assert_eq!(
        reply_of(Verdict::reply(550, "x.y", "a\nb\u{1b}")).to_wire(),
        "550 5.7.1 Command rejected"
    );
    // Not a refusal code at all: nothing to keep, so tempfail (never an accept).
    for code in [0, 250, 354, 600, 999] {
        assert_eq!(
            Verdict::reply(code, "", "text"),
            Verdict::Tempfail,
            "{code}"
        );
    }
    // A valid reply is untouched.
    assert_eq!(
        reply_of(Verdict::reply(550, "5.7.1", "go away")).to_wire(),
        "550 5.7.1 go away"
    );
}

/// Rejects MAIL with a reply whose text has a typo (a stray control character).
struct TypoReject;

impl Milter for TypoReject {
    async fn mail(&mut self, _ctx: &Context<'_>, _from: &Envelope) -> Verdict {
        Verdict::reply(550, "5.7.1", "Sender refused\u{8}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_in_a_reject_text_still_rejects_on_the_wire() {
    let (addr, shutdown, task) = start(Server::builder(), || TypoReject).await;
    let mut c = Raw::connect(addr).await;
    c.handshake().await;
    c.send(&Command::Mail(Envelope {
        address: Bytes::from_static(b"<spammer@example.net>"),
        args: vec![],
    }))
    .await;
    let Some(Reply::Verdict(Verdict::Reply(r))) = c.reply().await else {
        panic!("expected a reply code");
    };
    assert_eq!(r.to_wire(), "550 5.7.1 Command rejected");
    wait_for_log(&["invalid SMTP reply text", "sending a generic text"]).await;
    c.send(&Command::Quit).await;
    c.expect_eof().await;
    shutdown.shutdown();
    task.await.expect("server");
}

// ---- header values ----------------------------------------------------------------------

const GOOD_VALUES: [&[u8]; 7] = [
    b"plain",
    b" with the leading space",
    b"folded\n continued",
    b"folded\n\tcontinued",
    b"crlf folded\r\n continued",
    b"several\n folds\r\n\tin\n  one",
    b"",
];

const BAD_VALUES: [&[u8]; 11] = [
    b"x\nBcc: victim@example.org",
    b"x\r\nBcc: victim@example.org",
    b"bare\rcr",
    b"bare cr at the end\r",
    b"ends with a break\n",
    b"ends with a break\r\n",
    b"\n",
    b"blank line\n\n body",
    b"cr then space\r continued",
    b"nul\0inside",
    b"folded\n ok\nthen: not",
];

fn invalid_value(r: Result<(), UsageError>) -> bool {
    matches!(
        r,
        Err(UsageError::InvalidField {
            field: "header value",
            ..
        })
    )
}

#[test]
fn header_values_may_break_lines_only_to_fold() {
    for v in GOOD_VALUES {
        let mut a = EomActions::new(Actions::all());
        a.add_header("X-Good", Bytes::from_static(v))
            .unwrap_or_else(|e| panic!("add {v:?}: {e}"));
        a.insert_header(0, "X-Good", Bytes::from_static(v))
            .unwrap_or_else(|e| panic!("insert {v:?}: {e}"));
        if !v.is_empty() {
            a.change_header("X-Good", 1, Bytes::from_static(v))
                .unwrap_or_else(|e| panic!("change {v:?}: {e}"));
        }
    }
    for v in BAD_VALUES {
        let mut a = EomActions::new(Actions::all());
        assert!(
            invalid_value(a.add_header("X-Bad", Bytes::from_static(v))),
            "add {v:?}"
        );
        assert!(
            invalid_value(a.insert_header(0, "X-Bad", Bytes::from_static(v))),
            "insert {v:?}"
        );
        assert!(
            invalid_value(a.change_header("X-Bad", 1, Bytes::from_static(v))),
            "change {v:?}"
        );
        assert!(a.is_empty(), "nothing recorded for {v:?}");
        // The same rule guards the session, for code that bypasses EomActions.
        assert!(
            invalid_value(
                Modification::AddHeader {
                    name: Bytes::from_static(b"X-Bad"),
                    value: Bytes::from_static(v),
                }
                .validate()
            ),
            "validate {v:?}"
        );
    }
}

/// Tries to smuggle a second header into the one it adds; falls back to a folded one.
struct Injector;

impl Milter for Injector {
    fn negotiate(&mut self, _offer: &Offer) -> Request {
        Request::new().with_actions(Actions::ADD_HEADERS)
    }

    async fn eom(&mut self, _ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        let injected = actions.add_header("X-Note", "hi\nBcc: victim@example.org");
        assert!(invalid_value(injected.clone()), "{injected:?}");
        match actions.add_header("X-Note", "hi\n folded") {
            Ok(()) => Verdict::Continue,
            Err(_) => Verdict::Tempfail,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_header_never_reaches_the_wire() {
    let (addr, shutdown, task) = start(Server::builder(), || Injector).await;
    let mut c = Raw::connect(addr).await;
    c.handshake().await;
    let (mods, v) = c.message("a@example.org").await;
    assert_eq!(v, Verdict::Continue);
    assert_eq!(
        mods,
        [Reply::Modification(Modification::AddHeader {
            name: Bytes::from_static(b"X-Note"),
            value: Bytes::from_static(b"hi\n folded"),
        })]
    );
    c.send(&Command::Quit).await;
    c.expect_eof().await;
    shutdown.shutdown();
    task.await.expect("server");
}
