//! [`MtaSession`] against a real Postfix 3.7: the same SMTP session as the recorded MX
//! session (`tests/golden/postfix37-mx-two-messages-rset.bin`, see the README there),
//! answered as the recorder answered (version 6, actions 0x1FF, protocol 0, Continue), must
//! produce the same frames, byte for byte.
//!
//! The inputs are the documented SMTP session (envelope, ESMTP parameters, the two messages
//! as the test client sent them, Postfix's macro settings and values). Only the values that
//! differ on every recording are read from the recording: the queue ids (`i`) and the
//! client port. The one frame that may differ is the `X-Long` header, which Postfix itself
//! cut (documented); for it Postfix's value must be a prefix of ours.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use milter_core::client::Message;
use milter_core::proto::command::code;
use milter_core::proto::reply::OptNegReply;
use milter_core::session::mta::{
    DefaultMacros, MtaConfig, MtaEvent, MtaSession, Sent, body_chunks,
};
use milter_core::wire::{DEFAULT_RECV_MAX, Frame, FrameDecoder};
use milter_core::{
    Actions, Command, ConnectInfo, Envelope, ProtocolFlags, Reply, SocketInfo, Verdict,
};

const RECORDING: &str = "postfix37-mx-two-messages-rset.bin";

/// The two messages of the recorded MX session, the files `tests/tests/golden_frames.rs`
/// sends through Postfix to make the recording.
const MESSAGE_ONE: &[u8] = include_bytes!("golden/postfix37-mx-message-1.eml");
const MESSAGE_TWO: &[u8] = include_bytes!("golden/postfix37-mx-message-2.eml");

fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let d = FrameDecoder::new(DEFAULT_RECV_MAX);
    let mut out = Vec::new();
    while let Some(f) = d.decode_eof(&mut buf).expect("frames decode") {
        out.push(f);
    }
    out
}

/// The per-recording values: the client port and the two queue ids.
fn variable_values(recorded: &[Frame]) -> (u16, Vec<Bytes>) {
    let mut port = None;
    let mut ids: Vec<Bytes> = Vec::new();
    for f in recorded {
        match Command::decode(f.clone()).expect("command decodes") {
            Command::Connect(ConnectInfo {
                socket: SocketInfo::Inet { port: p, .. },
                ..
            }) => port = Some(p),
            Command::Macros { pairs, .. } => {
                for (n, v) in pairs {
                    if &n[..] == b"i" && ids.last() != Some(&v) {
                        ids.push(v);
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(ids.len(), 2, "two queue ids in the recording");
    (port.expect("CONNECT with a port"), ids)
}

/// Answers what the recorder answered, checking the session expected a reply exactly
/// where Postfix waited for one.
fn answer(s: &mut MtaSession, sent: Sent) {
    assert_eq!(sent, Sent::AwaitingReply);
    let pending = s.pending().expect("reply due");
    let mut b = BytesMut::new();
    Reply::Verdict(Verdict::Continue).encode(&mut b);
    s.read_buf().extend_from_slice(&b);
    assert_eq!(
        s.poll_event().expect("valid"),
        Some(MtaEvent::Verdict {
            command: pending,
            verdict: Verdict::Continue
        })
    );
}

fn env(address: &str, args: &[&str]) -> Envelope {
    Envelope {
        address: Bytes::from(address.to_owned()),
        args: args.iter().map(|a| Bytes::from(a.to_string())).collect(),
    }
}

fn message(s: &mut MtaSession, raw: &[u8]) {
    let m = Message::parse(raw);
    let t = s.data().expect("data");
    answer(s, t);
    for h in m.milter_headers() {
        let t = s.header(h.name(), h.value()).expect("header");
        answer(s, t);
    }
    let t = s.end_of_headers().expect("eoh");
    answer(s, t);
    let body = m.milter_body();
    for chunk in body_chunks(&body) {
        let t = s.body(chunk).expect("body");
        answer(s, t);
    }
    let t = s.end_of_message().expect("eom");
    answer(s, t);
}

/// Plays the recorded SMTP session through an MtaSession; returns what it wrote.
fn replay(port: u16, queue_ids: &[Bytes]) -> Vec<u8> {
    let mut config = MtaConfig::postfix();
    // main.cf of the recording: milter_mail_macros set, the other lists Postfix's defaults.
    config.default_macros = DefaultMacros {
        mail: "i {mail_addr} {client_addr} {client_name} {auth_type} {auth_authen} {auth_author}"
            .split(' ')
            .map(str::to_owned)
            .collect(),
        ..DefaultMacros::postfix()
    };
    let mut s = MtaSession::new(config);
    let mut written = Vec::new();
    let mut take = |s: &mut MtaSession| written.extend_from_slice(&s.output().split());

    s.negotiate().expect("offer");
    let mut b = BytesMut::new();
    Reply::OptNeg(OptNegReply {
        version: 6,
        actions: Actions::all(),
        protocol: ProtocolFlags::empty(),
        macros: Vec::new(),
    })
    .encode(&mut b);
    s.read_buf().extend_from_slice(&b);
    assert!(matches!(
        s.poll_event().expect("valid"),
        Some(MtaEvent::Negotiated(_))
    ));

    // Connection: Postfix's values for a client without reverse DNS name on loopback.
    for (n, v) in [
        ("j", "mx.example.test"),
        ("{daemon_name}", "mx.example.test"),
        ("{daemon_addr}", "127.0.0.1"),
        ("v", "Postfix 3.7.11"),
        ("_", "localhost [127.0.0.1]"),
        ("{client_addr}", "127.0.0.1"),
        ("{client_name}", "localhost"),
        ("{rcpt_host}", "example.test"),
        ("{rcpt_mailer}", "virtual"),
    ] {
        s.set_macro(n, v.to_owned());
    }
    let t = s
        .connect(&ConnectInfo {
            hostname: Bytes::from_static(b"localhost"),
            socket: SocketInfo::Inet {
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port,
            },
        })
        .expect("connect");
    answer(&mut s, t);
    let t = s.helo(b"client.remote.test").expect("helo");
    answer(&mut s, t);

    // Message 1: two recipients; the queue id exists from the second RCPT on.
    s.set_macro("{mail_addr}", "alice@remote.test".to_owned());
    let t = s
        .mail(&env(
            "<alice@remote.test>",
            &["SIZE=80097", "BODY=8BITMIME"],
        ))
        .expect("mail");
    answer(&mut s, t);
    s.set_macro("{rcpt_addr}", "user@example.test".to_owned());
    let t = s.rcpt(&env("<user@example.test>", &[])).expect("rcpt");
    answer(&mut s, t);
    s.set_macro("i", queue_ids[0].clone());
    s.set_macro("{rcpt_addr}", "other@example.test".to_owned());
    let t = s
        .rcpt(&env(
            "<other@example.test>",
            &["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;other@example.test"],
        ))
        .expect("rcpt");
    answer(&mut s, t);
    message(&mut s, MESSAGE_ONE);
    // Postfix aborts after every end of message; the RSET itself adds nothing.
    s.abort().expect("abort");

    // Message 2.
    s.remove_macro("i");
    s.set_macro("{mail_addr}", "bob@remote.test".to_owned());
    let t = s
        .mail(&env("<bob@remote.test>", &["SIZE=74193", "BODY=8BITMIME"]))
        .expect("mail");
    answer(&mut s, t);
    s.set_macro("{rcpt_addr}", "user@example.test".to_owned());
    let t = s.rcpt(&env("<user@example.test>", &[])).expect("rcpt");
    answer(&mut s, t);
    s.set_macro("i", queue_ids[1].clone());
    message(&mut s, MESSAGE_TWO);
    // After the last message: abort, abort again at QUIT, quit.
    s.abort().expect("abort");
    s.abort().expect("abort at quit");
    s.quit().expect("quit");
    take(&mut s);
    written
}

fn describe(f: &Frame) -> String {
    match f.code {
        code::MACRO => format!("D{}", f.payload.first().map_or('?', |&c| c as char)),
        c => (c as char).to_string(),
    }
}

fn expand(seq: &str) -> String {
    let mut out = String::new();
    for tok in seq.split_whitespace() {
        match tok.split_once('×') {
            Some((c, n)) => out.push_str(&c.repeat(n.parse().expect("count"))),
            None => out.push_str(tok),
        }
    }
    out
}

#[test]
fn mta_session_writes_what_postfix_37_wrote_for_the_mx_session() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(RECORDING);
    let recorded = frames(&std::fs::read(&path).expect("recording"));
    let (port, ids) = variable_values(&recorded);
    let ours = frames(&replay(port, &ids));

    // Same commands in the same order, D frames (with their stage codes) included.
    let seq = |fs: &[Frame]| fs.iter().map(describe).collect::<Vec<_>>().join(" ");
    assert_eq!(seq(&ours), seq(&recorded));
    let without_macros: String = ours
        .iter()
        .filter(|f| f.code != code::MACRO)
        .map(|f| f.code as char)
        .collect();
    assert_eq!(
        without_macros,
        expand("O C H M R R T L×9 N B B E A M R T L×6 N B E A A Q"),
        "the README's sequence"
    );

    // Every payload byte for byte, except the header Postfix cut.
    let mut cut = 0;
    for (i, (o, r)) in ours.iter().zip(&recorded).enumerate() {
        if o.code == code::HEADER && o.payload.starts_with(b"X-Long\0") {
            let postfix = r.payload.strip_suffix(b"\0").expect("NUL-terminated");
            assert_eq!(r.payload.len(), 59_953, "README: Postfix cut X-Long");
            assert!(o.payload.len() > r.payload.len());
            assert!(o.payload.starts_with(postfix), "frame {i}: not a prefix");
            cut += 1;
            continue;
        }
        assert!(
            o.payload == r.payload,
            "frame {i} ({}) differs:\n ours    {:?}\n postfix {:?}",
            describe(o),
            String::from_utf8_lossy(&o.payload),
            String::from_utf8_lossy(&r.payload)
        );
    }
    assert_eq!(cut, 1);
}
