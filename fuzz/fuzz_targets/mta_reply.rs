//! The MTA side of a milter connection fed arbitrary milter replies: `MtaSession` plays a
//! real Postfix 3.7 session (one of the recordings in `milter-core/tests/golden/`, or a
//! short synthetic one) and reads the fuzzed bytes as what the milter answers.
//!
//! Input: 10 control bytes, then the milter's byte stream.
//! - `[0]`: the script (`% 4`: the three golden recordings, then a synthetic session);
//!   bit 7 set: the stream starts with the milter's own negotiation answer, otherwise a
//!   valid one is built from bytes 3..10 and put in front of it.
//! - `[1]`: the read chunk size (`% 64 + 1`).
//! - `[2]`: limits (bit 0: a 256-byte frame cap, bit 1: at most 4 modifications and 64
//!   bytes of replacement body per message).
//! - `[3..7]`: protocol flags asked for, `[7..9]`: actions, `[9]`: version (`% 5 + 2`),
//!   each cut down to what Postfix offers.
//!
//! Checked: no panic; every event answers the command that was pending (a verdict only
//! for it, modifications and progress only at end of message, the negotiation only for
//! OPTNEG and within the offer); every modification needs a negotiated action, has clean
//! fields, survives an encode/decode round trip and stays within the per-message limits;
//! SKIP only for BODY with SKIP negotiated, DISCARD never outside a message; the MTA only
//! sends frames a milter can decode, and `Sent` agrees with the negotiated NR_*/NO_*
//! flags; API calls never fail other than by ordering after a verdict that ended the
//! message or the connection; `eof` fails exactly when a reply is due or a partial frame
//! is left; and the whole run (events, errors, bytes sent) is the same whatever the read
//! chunk size.
#![no_main]

use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use milter_core::proto::command::code;
use milter_core::proto::reply::OptNegReply;
use milter_core::session::mta::{MtaConfig, MtaEvent, MtaSession, Sent};
use milter_core::wire::FrameDecoder;
use milter_core::{
    Actions, Command, ConnectInfo, Envelope, Modification, ProtocolFlags, Reply, SocketInfo,
    UsageError, Verdict,
};

const CTL: usize = 10;

/// The recorded Postfix sessions, decoded once: what the MTA side replays.
static GOLDEN: LazyLock<Vec<Vec<Command>>> = LazyLock::new(|| {
    [
        &include_bytes!("../../milter-core/tests/golden/postfix37-mx-two-messages-rset.bin")[..],
        &include_bytes!("../../milter-core/tests/golden/postfix37-submission-starttls-sasl.bin")
            [..],
        &include_bytes!("../../milter-core/tests/golden/postfix37-sendmail-pickup.bin")[..],
    ]
    .iter()
    .map(|bytes| {
        let mut buf = BytesMut::from(*bytes);
        let decoder = FrameDecoder::new(usize::MAX);
        let mut out = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf).expect("golden frame") {
            out.push(Command::decode(frame).expect("golden command"));
        }
        assert!(buf.is_empty(), "golden recording ends inside a frame");
        out
    })
    .collect()
});

/// A short session with what the recordings lack: UNKNOWN, two messages without abort.
static SYNTHETIC: LazyLock<Vec<Command>> = LazyLock::new(|| {
    let b = Bytes::from_static;
    let env = |a: &'static [u8], args: &[&'static [u8]]| Envelope {
        address: b(a),
        args: args.iter().map(|x| b(x)).collect(),
    };
    let header = |n: &'static [u8], v: &'static [u8]| Command::Header {
        name: b(n),
        value: b(v),
    };
    vec![
        Command::Macros {
            for_command: code::CONNECT,
            pairs: vec![
                (b(b"j"), b(b"mx.example.test")),
                (b(b"{daemon_name}"), b(b"smtpd")),
            ],
        },
        Command::Connect(ConnectInfo {
            hostname: b(b"client.example.test"),
            socket: SocketInfo::Inet {
                addr: "192.0.2.7".parse().expect("address"),
                port: 40000,
            },
        }),
        Command::Helo(b(b"client.example.test")),
        Command::Unknown(b(b"XFOO bar")),
        Command::Mail(env(b"<a@example.test>", &[b"SIZE=120"])),
        Command::Rcpt(env(b"<b@example.test>", &[])),
        Command::Rcpt(env(b"<c@example.test>", &[b"NOTIFY=NEVER"])),
        Command::Data,
        header(b"From", b" a@example.test"),
        header(b"Subject", b" folded\n\tsubject"),
        Command::EndOfHeaders,
        Command::Body(b(b"line one\r\n")),
        Command::Body(b(b"line two\r\n")),
        Command::EndOfMessage(Bytes::new()),
        Command::Mail(env(b"<>", &[])),
        Command::Rcpt(env(b"<d@example.test>", &[])),
        header(b"Subject", b" second"),
        Command::EndOfMessage(Bytes::new()),
        Command::Quit,
    ]
});

/// `MTA_REPLY_DEBUG=1`: print each run's transcript (to see what a seed reaches).
static DEBUG: LazyLock<bool> = LazyLock::new(|| std::env::var_os("MTA_REPLY_DEBUG").is_some());

/// What happened, in order; two runs over the same input must give the same list.
type Transcript = Vec<String>;

struct Run {
    s: MtaSession,
    script: &'static [Command],
    next: usize,
    log: Transcript,
    /// Modifications and replacement body bytes since the last end of message.
    modifications: usize,
    replaced: usize,
    /// A body replacement started, then another modification came.
    body_run_closed: bool,
    body_run_open: bool,
}

fn config(ctl: &[u8; CTL]) -> MtaConfig {
    let mut c = MtaConfig::postfix();
    if ctl[2] & 1 != 0 {
        c.max_frame = 256;
    }
    if ctl[2] & 2 != 0 {
        c.max_modifications = 4;
        c.max_replaced_body = 64;
    }
    c
}

/// A valid negotiation answer within Postfix's offer, from the control bytes.
fn negotiation(ctl: &[u8; CTL], c: &MtaConfig) -> BytesMut {
    let protocol =
        ProtocolFlags::from_bits_truncate(u32::from_be_bytes([ctl[3], ctl[4], ctl[5], ctl[6]]))
            & c.protocol;
    let actions =
        Actions::from_bits_truncate(u32::from(u16::from_be_bytes([ctl[7], ctl[8]]))) & c.actions;
    let mut out = BytesMut::new();
    Reply::OptNeg(OptNegReply {
        version: u32::from(ctl[9] % 5) + 2,
        actions,
        protocol,
        macros: Vec::new(),
    })
    .encode(&mut out);
    out
}

impl Run {
    /// Takes what the MTA queued; every frame must be a command a milter decodes.
    fn drain_output(&mut self) -> Vec<u8> {
        let mut out = self.s.output().split();
        let decoder = FrameDecoder::new(usize::MAX);
        let mut codes = Vec::new();
        while let Some(frame) = decoder.decode(&mut out).expect("MTA queued a bad frame") {
            let code = frame.code;
            if let Err(e) = Command::decode(frame) {
                panic!(
                    "MTA queued a command a milter refuses ({}): {e}",
                    code as char
                );
            }
            codes.push(code);
        }
        assert!(out.is_empty(), "MTA queued a partial frame");
        self.log
            .push(format!("sent {}", String::from_utf8_lossy(&codes)));
        codes
    }

    /// Sends the script's next commands until one awaits a reply or the script ends.
    fn advance(&mut self) {
        while !self.s.awaiting_reply() && !self.s.is_closed() {
            let Some(cmd) = self.script.get(self.next) else {
                self.s
                    .quit()
                    .expect("QUIT is always allowed before closing");
                self.drain_output();
                return;
            };
            self.next += 1;
            let skipped_body = self.s.body_skipped();
            let result = match cmd {
                Command::Macros { pairs, .. } => {
                    for (name, value) in pairs {
                        self.s
                            .set_macro(&String::from_utf8_lossy(name), value.clone());
                    }
                    continue;
                }
                Command::OptNeg(_) | Command::QuitNoClose => continue,
                Command::Connect(info) => self.s.connect(info),
                Command::Helo(h) => self.s.helo(h),
                Command::Mail(e) => self.s.mail(e),
                Command::Rcpt(e) => self.s.rcpt(e),
                Command::Data => self.s.data(),
                Command::Header { name, value } => self.s.header(name, value),
                Command::EndOfHeaders => self.s.end_of_headers(),
                Command::Body(chunk) => self.s.body(chunk),
                Command::EndOfMessage(_) => {
                    self.modifications = 0;
                    self.replaced = 0;
                    self.body_run_open = false;
                    self.body_run_closed = false;
                    self.s.end_of_message()
                }
                Command::Abort => self.s.abort().map(|()| Sent::NoReply),
                Command::Quit => self.s.quit().map(|()| Sent::NoReply),
                Command::Unknown(line) => self.s.unknown(line),
            };
            let code = cmd.code();
            match result {
                Ok(sent) => {
                    self.log.push(format!("{} {sent:?}", code as char));
                    let options = self.s.options().expect("negotiated").clone();
                    match sent {
                        Sent::AwaitingReply => {
                            assert_eq!(self.s.pending(), Some(code));
                            assert!(!options.no_reply(code) && !options.skipped(code));
                        }
                        Sent::NoReply => {
                            assert!(!self.s.awaiting_reply());
                            assert!(options.no_reply(code), "{} expects no reply", code as char);
                        }
                        Sent::Skipped => {
                            assert!(!self.s.awaiting_reply());
                            assert!(
                                options.skipped(code) || (code == code::BODY && skipped_body),
                                "{} skipped",
                                code as char
                            );
                        }
                    }
                    if code == code::BODY && skipped_body {
                        assert_eq!(sent, Sent::Skipped, "body sent after SKIP");
                    }
                    let codes = self.drain_output();
                    // Macros first, then the command itself unless it was left out.
                    let last = codes.last().copied();
                    if sent == Sent::Skipped {
                        assert!(last.is_none() || last == Some(code::MACRO));
                    } else {
                        assert_eq!(last, Some(code));
                    }
                }
                // The milter's verdict ended the message (or the connection): the rest of
                // it is not sent, as Postfix does.
                Err(UsageError::OutOfOrder { .. }) => {
                    self.log.push(format!("{} out of order", code as char));
                    assert!(self.s.output().is_empty());
                }
                Err(e) => panic!("{}: unexpected usage error {e}", code as char),
            }
        }
    }

    fn on_modification(&mut self, m: &Modification) {
        let options = self.s.options().expect("negotiated");
        assert!(
            options.actions.contains(m.required_action()),
            "{} without its action",
            m.name()
        );
        let printable =
            |n: &[u8]| !n.is_empty() && n.iter().all(|b| b.is_ascii_graphic() && *b != b':');
        match m {
            Modification::AddHeader { name, value }
            | Modification::InsertHeader { name, value, .. }
            | Modification::ChangeHeader { name, value, .. } => {
                assert!(printable(name), "header name {name:?}");
                assert!(!value.contains(&0));
            }
            Modification::ChangeFrom { address, args }
            | Modification::AddRcptWithArgs { address, args } => {
                assert!(!address.is_empty() && !address.contains(&0));
                assert!(!args.as_deref().unwrap_or_default().contains(&0));
            }
            Modification::AddRcpt { address } | Modification::DeleteRcpt { address } => {
                assert!(!address.is_empty() && !address.contains(&0));
            }
            Modification::Quarantine { reason } => {
                assert!(!reason.is_empty() && !reason.contains(&0));
            }
            Modification::ReplaceBody(_) => {}
        }
        // What the MTA accepted re-encodes to itself.
        let mut wire = BytesMut::new();
        Reply::Modification(m.clone()).encode(&mut wire);
        let frame = FrameDecoder::new(usize::MAX)
            .decode(&mut wire)
            .expect("re-encoded frame")
            .expect("whole frame");
        assert_eq!(
            Reply::decode(frame).ok(),
            Some(Reply::Modification(m.clone()))
        );

        self.modifications += 1;
        assert!(self.modifications <= self.s.config().max_modifications);
        if let Modification::ReplaceBody(chunk) = m {
            assert!(!self.body_run_closed, "body replacement interleaved");
            self.body_run_open = true;
            self.replaced += chunk.len();
            assert!(self.replaced <= self.s.config().max_replaced_body);
        } else if self.body_run_open {
            self.body_run_open = false;
            self.body_run_closed = true;
        }
    }

    /// Reads every event the buffered bytes hold; `false` once the milter broke the
    /// protocol (the adapter closes the connection then).
    fn poll(&mut self) -> bool {
        loop {
            let pending = self.s.pending();
            let event = match self.s.poll_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => return true,
                Err(e) => {
                    self.log.push(format!("error {e:?}"));
                    return false;
                }
            };
            self.log.push(format!("{event:?}"));
            match &event {
                MtaEvent::Negotiated(n) => {
                    assert_eq!(pending, Some(code::OPTNEG));
                    assert_eq!(self.s.options(), Some(n));
                    let c = self.s.config();
                    assert!((2..=c.version).contains(&n.version));
                    assert!(c.actions.contains(n.actions) && c.protocol.contains(n.protocol));
                    assert!(!self.s.awaiting_reply());
                    self.drain_output();
                    self.advance();
                }
                MtaEvent::Verdict { command, verdict } => {
                    assert_eq!(pending, Some(*command));
                    assert_ne!(*command, code::OPTNEG);
                    assert!(!self.s.awaiting_reply());
                    match verdict {
                        Verdict::Skip => {
                            assert_eq!(*command, code::BODY);
                            assert!(self.s.options().expect("negotiated").skip());
                            assert!(self.s.body_skipped());
                        }
                        Verdict::Discard => assert!(!matches!(
                            *command,
                            code::CONNECT | code::HELO | code::UNKNOWN
                        )),
                        _ => {}
                    }
                    self.advance();
                }
                MtaEvent::Modification(m) => {
                    assert_eq!(pending, Some(code::EOB));
                    assert_eq!(self.s.pending(), Some(code::EOB));
                    self.on_modification(m);
                }
                MtaEvent::Progress => {
                    assert_eq!(pending, Some(code::EOB));
                    assert_eq!(self.s.pending(), Some(code::EOB));
                }
            }
        }
    }
}

fn run(ctl: &[u8; CTL], script: &'static [Command], stream: &[u8], chunk: usize) -> Transcript {
    let mut r = Run {
        s: MtaSession::new(config(ctl)),
        script,
        next: 0,
        log: Vec::new(),
        modifications: 0,
        replaced: 0,
        body_run_closed: false,
        body_run_open: false,
    };
    assert_eq!(r.s.negotiate(), Ok(Sent::AwaitingReply));
    assert_eq!(r.drain_output(), [code::OPTNEG]);
    for piece in stream.chunks(chunk) {
        r.s.read_buf().extend_from_slice(piece);
        if !r.poll() {
            return r.log;
        }
    }
    let partial = !r.s.read_buf().is_empty();
    let due = r.s.awaiting_reply();
    let eof = r.s.eof();
    assert_eq!(eof.is_err(), partial || due, "eof: {eof:?}");
    r.log.push(format!("eof {eof:?}"));
    r.log
}

fuzz_target!(|data: &[u8]| {
    let Some((ctl, rest)) = data.split_first_chunk::<CTL>() else {
        return;
    };
    let script: &'static [Command] = match ctl[0] % 4 {
        3 => &SYNTHETIC,
        n => &GOLDEN[usize::from(n)],
    };
    let stream = if ctl[0] & 0x80 != 0 {
        rest.to_vec()
    } else {
        let mut s = negotiation(ctl, &config(ctl)).to_vec();
        s.extend_from_slice(rest);
        s
    };
    let chunked = run(ctl, script, &stream, usize::from(ctl[1] % 64) + 1);
    let whole = run(ctl, script, &stream, stream.len().max(1));
    if *DEBUG {
        eprintln!("{}", whole.join("\n"));
    }
    assert_eq!(chunked, whole, "the read chunk size changed the session");
});
