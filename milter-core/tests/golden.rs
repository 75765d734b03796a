//! Real Postfix 3.7 sessions (recorded byte streams, see `tests/golden/README.md`) through
//! the decoder and through [`MilterSession`], as a milter answering Continue would see them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use milter_core::negotiate::Request;
use milter_core::session::{Event, MilterSession, SessionConfig};
use milter_core::wire::{DEFAULT_RECV_MAX, FrameDecoder};
use milter_core::{Actions, Command, ProtocolFlags, Reply, SocketInfo, Verdict};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    let path = golden(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every frame of a recording, decoded with the session's default cap.
fn commands(name: &str) -> Vec<Command> {
    let mut buf = BytesMut::from(&read(name)[..]);
    let d = FrameDecoder::new(DEFAULT_RECV_MAX);
    let mut out = Vec::new();
    while let Some(frame) = d.decode_eof(&mut buf).expect("frames decode") {
        out.push(Command::decode(frame).expect("commands decode"));
    }
    out
}

/// The `<code> <payload length>` listing next to each recording.
fn listing(name: &str) -> Vec<(u8, usize)> {
    let text = String::from_utf8(read(name)).unwrap();
    text.lines()
        .filter(|l| *l != "closed")
        .map(|l| {
            let (c, n) = l.split_once(' ').expect("code and length");
            (c.as_bytes()[0], n.parse().expect("length"))
        })
        .collect()
}

fn payload_len(c: &Command) -> usize {
    let mut w = BytesMut::new();
    c.encode(&mut w);
    w.len() - 5
}

/// Codes of commands, `D` left out, as in the README.
fn codes_without_macros(cmds: &[Command]) -> String {
    cmds.iter()
        .filter(|c| !matches!(c, Command::Macros { .. }))
        .map(|c| c.code() as char)
        .collect()
}

fn expand(seq: &str) -> String {
    // "L×9" -> "LLLLLLLLL"; spaces dropped.
    let mut out = String::new();
    for tok in seq.split_whitespace() {
        match tok.split_once('×') {
            Some((c, n)) => out.push_str(&c.repeat(n.parse().unwrap())),
            None => out.push_str(tok),
        }
    }
    out
}

/// What the handler saw at one event.
struct Seen {
    event: Event,
    macro_i: Option<String>,
    macros: Vec<(String, String)>,
    in_transaction_after_reply: bool,
}

/// The recorder's answer: version 6, actions 0x1FF, protocol 0.
fn recorder_request() -> Request {
    Request::new().with_actions(Actions::all())
}

/// Drives a recording through a session fed `chunk` bytes at a time, answering
/// Continue to everything that wants an answer.
fn drive(name: &str, chunk: usize) -> (Vec<Seen>, Vec<Reply>) {
    let bytes = read(name);
    let mut s = MilterSession::new(SessionConfig::default());
    let mut seen = Vec::new();
    for piece in bytes.chunks(chunk) {
        s.read_buf().extend_from_slice(piece);
        while let Some(event) = s.poll_event().expect("no protocol error") {
            let macro_i = s.macros().get_str("i").map(|v| v.into_owned());
            let macros = s
                .macros()
                .iter()
                .map(|(n, v)| {
                    (
                        String::from_utf8_lossy(n).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            match &event {
                Event::Negotiate(_) => {
                    s.negotiate(&recorder_request()).expect("negotiates");
                }
                _ if s.reply_due() => s.reply(Verdict::Continue).expect("reply accepted"),
                _ => {}
            }
            seen.push(Seen {
                event,
                macro_i,
                macros,
                in_transaction_after_reply: s.in_transaction(),
            });
        }
    }
    s.eof().expect("clean end");
    assert!(s.is_closed(), "the recording ends with QUIT");
    let mut out = std::mem::take(s.output());
    let d = FrameDecoder::new(DEFAULT_RECV_MAX);
    let mut replies = Vec::new();
    while let Some(f) = d.decode(&mut out).unwrap() {
        replies.push(Reply::decode(f).unwrap());
    }
    (seen, replies)
}

fn event_codes(seen: &[Seen]) -> String {
    seen.iter().map(|s| s.event.code() as char).collect()
}

fn macro_of(seen: &Seen, name: &str) -> Option<String> {
    seen.macros
        .iter()
        .rev()
        .find(|(n, _)| n == name || n.trim_matches(|c| c == '{' || c == '}') == name)
        .map(|(_, v)| v.clone())
}

/// Checks shared by every recording: the listing matches, the answers are one `O` with
/// exactly what the recorder sent, then one Continue per event that wants a reply; chunking
/// the input does not change what the session sees.
fn common_checks(name: &str) -> Vec<Seen> {
    let cmds = commands(&format!("{name}.bin"));
    let listed = listing(&format!("{name}.commands.txt"));
    let decoded: Vec<(u8, usize)> = cmds.iter().map(|c| (c.code(), payload_len(c))).collect();
    assert_eq!(decoded, listed, "decoded frames match the listing");
    // Re-encoding reproduces the recording byte for byte.
    let mut wire = BytesMut::new();
    for c in &cmds {
        c.encode(&mut wire);
    }
    assert_eq!(&wire[..], &read(&format!("{name}.bin"))[..]);

    let (seen, replies) = drive(&format!("{name}.bin"), usize::MAX);
    let wanting_reply = seen
        .iter()
        .filter(|s| {
            !matches!(
                s.event,
                Event::Negotiate(_) | Event::Abort | Event::Quit | Event::QuitNoClose
            )
        })
        .count();
    let mut expect = vec![Reply::OptNeg(milter_core::proto::reply::OptNegReply {
        version: 6,
        actions: Actions::from_bits_retain(0x1ff),
        protocol: ProtocolFlags::empty(),
        macros: vec![],
    })];
    expect.extend(std::iter::repeat_n(
        Reply::Verdict(Verdict::Continue),
        wanting_reply,
    ));
    assert_eq!(replies, expect);

    for chunk in [1, 7, 4096] {
        let (again, replies_again) = drive(&format!("{name}.bin"), chunk);
        assert_eq!(
            again.iter().map(|s| &s.event).collect::<Vec<_>>(),
            seen.iter().map(|s| &s.event).collect::<Vec<_>>(),
            "chunk size {chunk}"
        );
        assert_eq!(replies_again, replies);
    }
    seen
}

fn find(seen: &[Seen], code: u8, nth: usize) -> &Seen {
    seen.iter()
        .filter(|s| s.event.code() == code)
        .nth(nth)
        .unwrap_or_else(|| panic!("{} #{nth} missing", code as char))
}

#[test]
fn mx_two_messages_with_rset() {
    let name = "postfix37-mx-two-messages-rset";
    let cmds = commands(&format!("{name}.bin"));
    assert_eq!(
        codes_without_macros(&cmds),
        expand("O C H M R R T L×9 N B B E A M R T L×6 N B E A A Q")
    );
    // Postfix's offer.
    assert_eq!(
        cmds[0],
        Command::OptNeg(milter_core::proto::command::OptNeg {
            version: 6,
            actions: Actions::all(),
            protocol: ProtocolFlags::POSTFIX_V6,
        })
    );

    let seen = common_checks(name);
    // The aborts after each EOM come outside a message: absorbed, not events.
    assert_eq!(
        event_codes(&seen),
        expand("O C H M R R T L×9 N B B E M R T L×6 N B E Q")
    );

    let Event::Connect(info) = &find(&seen, b'C', 0).event else {
        unreachable!()
    };
    assert_eq!(&info.hostname[..], b"localhost");
    let SocketInfo::Inet { addr, port } = info.socket else {
        panic!("{:?}", info.socket)
    };
    assert_eq!(addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_ne!(port, 0);
    let c = find(&seen, b'C', 0);
    assert_eq!(
        macro_of(c, "daemon_name").as_deref(),
        Some("mx.example.test")
    );
    assert_eq!(macro_of(c, "v").as_deref(), Some("Postfix 3.7.11"));

    assert_eq!(
        find(&seen, b'H', 0).event,
        Event::Helo(Bytes::from_static(b"client.remote.test"))
    );

    let Event::Mail(mail) = &find(&seen, b'M', 0).event else {
        unreachable!()
    };
    assert_eq!(&mail.address[..], b"<alice@remote.test>");
    assert_eq!(mail.args, vec!["SIZE=80097", "BODY=8BITMIME"]);
    assert_eq!(
        macro_of(find(&seen, b'M', 0), "mail_addr").as_deref(),
        Some("alice@remote.test")
    );

    let Event::Rcpt(r2) = &find(&seen, b'R', 1).event else {
        unreachable!()
    };
    assert_eq!(&r2.address[..], b"<other@example.test>");
    assert_eq!(
        r2.args,
        vec!["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;other@example.test"]
    );
    // No queue id at the first RCPT; one from the second on.
    assert_eq!(find(&seen, b'R', 0).macro_i, None);
    let qid1 = find(&seen, b'R', 1).macro_i.clone().expect("queue id");
    assert_eq!(find(&seen, b'E', 0).macro_i.as_deref(), Some(&qid1[..]));

    // Header values arrive as sent, folds as LF; without HDR_LEADSPC Postfix took the
    // space after the colon.
    let headers: Vec<(Bytes, Bytes)> = seen
        .iter()
        .filter_map(|s| match &s.event {
            Event::Header { name, value } => Some((name.clone(), value.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(headers.len(), 15);
    assert_eq!(&headers[0].0[..], b"From");
    assert_eq!(&headers[0].1[..], b"Alice Example <alice@remote.test>");
    assert_eq!(
        &headers[2].1[..],
        &b"golden frames, message one with a subject that is\n folded onto a second line"[..]
    );
    assert_eq!(&headers[8].0[..], b"X-Folded");
    assert_eq!(
        &headers[8].1[..],
        &b"first part,\n\tsecond part after a tab fold,\n  third part after two spaces"[..]
    );
    let (long_name, long_value) = &headers[14];
    assert_eq!(&long_name[..], b"X-Long");
    assert_eq!(long_value.len(), 59953 - "X-Long".len() - 2);
    assert!(long_value.starts_with(b"start\n\tline-001-"));

    // The body in two chunks, cut at 65535 bytes, CRLF endings, 8-bit intact.
    let bodies: Vec<&Bytes> = seen
        .iter()
        .filter_map(|s| match &s.event {
            Event::Body(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(
        bodies.iter().map(|b| b.len()).collect::<Vec<_>>(),
        vec![65535, 14134, 12]
    );
    assert!(bodies[0].starts_with(b"line 00001: "));
    let first_body: Vec<u8> = bodies[0].iter().chain(bodies[1].iter()).copied().collect();
    assert!(first_body.ends_with(b"\r\n"));
    assert!(
        first_body
            .windows("caf\u{e9}".len())
            .any(|w| w == "caf\u{e9}".as_bytes())
    );
    assert_eq!(&bodies[2][..], b"short body\r\n");

    // Two messages: the first ends at its EOM reply, the second has its own queue id and
    // no leftovers of the first.
    let eom1 = find(&seen, b'E', 0);
    assert!(!eom1.in_transaction_after_reply);
    let mail2 = find(&seen, b'M', 1);
    let Event::Mail(m2) = &mail2.event else {
        unreachable!()
    };
    assert_eq!(&m2.address[..], b"<bob@remote.test>");
    assert_eq!(mail2.macro_i, None, "the first message's queue id is gone");
    assert_eq!(macro_of(mail2, "rcpt_addr"), None);
    assert_eq!(macro_of(mail2, "j").as_deref(), Some("mx.example.test"));
    let qid2 = find(&seen, b'E', 1).macro_i.clone().expect("queue id");
    assert_ne!(qid1, qid2);
    assert_eq!(seen.last().map(|s| &s.event), Some(&Event::Quit));
}

#[test]
fn submission_starttls_sasl() {
    let name = "postfix37-submission-starttls-sasl";
    let cmds = commands(&format!("{name}.bin"));
    assert_eq!(
        codes_without_macros(&cmds),
        expand("O C H A H M R T L×6 N B E A A Q")
    );
    let seen = common_checks(name);
    // The abort at STARTTLS comes before any MAIL: absorbed.
    assert_eq!(event_codes(&seen), expand("O C H H M R T L×6 N B E Q"));

    let c = find(&seen, b'C', 0);
    assert_eq!(macro_of(c, "daemon_name").as_deref(), Some("ORIGINATING"));
    // The first HELO has no TLS macros, the second has them.
    assert_eq!(macro_of(find(&seen, b'H', 0), "tls_version"), None);
    let h2 = find(&seen, b'H', 1);
    assert_eq!(macro_of(h2, "tls_version").as_deref(), Some("TLSv1.3"));
    assert!(macro_of(h2, "cipher").is_some());
    assert_eq!(macro_of(h2, "cipher_bits").as_deref(), Some("256"));
    assert_eq!(
        h2.event,
        Event::Helo(Bytes::from_static(b"laptop.example.test"))
    );

    let m = find(&seen, b'M', 0);
    assert_eq!(macro_of(m, "auth_type").as_deref(), Some("PLAIN"));
    assert_eq!(
        macro_of(m, "auth_authen").as_deref(),
        Some("user@example.test")
    );
    // Connection macros survive the STARTTLS abort.
    assert_eq!(macro_of(m, "daemon_name").as_deref(), Some("ORIGINATING"));
    assert_eq!(macro_of(m, "tls_version").as_deref(), Some("TLSv1.3"));
    let r = find(&seen, b'R', 0);
    assert_eq!(macro_of(r, "rcpt_mailer").as_deref(), Some("smtp"));
    assert_eq!(
        find(&seen, b'L', 4).event,
        Event::Header {
            name: Bytes::from_static(b"Message-Id"),
            value: Bytes::from_static(b"<golden-3@example.test>"),
        }
    );
}

#[test]
fn sendmail_pickup() {
    let name = "postfix37-sendmail-pickup";
    let cmds = commands(&format!("{name}.bin"));
    assert_eq!(
        codes_without_macros(&cmds),
        expand("O C H M R T L×5 N B E Q")
    );
    let seen = common_checks(name);
    assert_eq!(event_codes(&seen), expand("O C H M R T L×5 N B E Q"));

    let Event::Connect(info) = &find(&seen, b'C', 0).event else {
        unreachable!()
    };
    assert_eq!(&info.hostname[..], b"localhost");
    assert_eq!(
        info.socket,
        SocketInfo::Inet {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0
        }
    );
    assert_eq!(
        find(&seen, b'H', 0).event,
        Event::Helo(Bytes::from_static(b"localhost"))
    );
    // Simulated envelope: addresses without angle brackets.
    let Event::Mail(m) = &find(&seen, b'M', 0).event else {
        unreachable!()
    };
    assert_eq!(&m.address[..], b"user@example.test");
    assert!(m.args.is_empty());
    assert_eq!(m.address_str(), "user@example.test");
    let Event::Rcpt(r) = &find(&seen, b'R', 0).event else {
        unreachable!()
    };
    assert_eq!(&r.address[..], b"other@example.test");
    // Bare-LF input still reaches the milter as CRLF body lines.
    assert_eq!(
        find(&seen, b'B', 0).event,
        Event::Body(Bytes::from_static(b"via pickup\r\n"))
    );
    // The queue id exists from MAIL on here.
    assert!(find(&seen, b'M', 0).macro_i.is_some());
}
