//! Wire codec: every command and reply survives encode -> frame -> decode, and malformed
//! payloads give the right typed error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, Bytes, BytesMut};
use milter_core::error::Code;
use milter_core::proto::command::OptNeg;
use milter_core::proto::reply::{MacroRequest, OptNegReply};
use milter_core::wire::{Frame, FrameDecoder, encode_frame};
use milter_core::{
    Actions, Command, ConnectInfo, Envelope, Modification, ProtocolError, ProtocolFlags, Reply,
    SmtpReply, SocketInfo, Stage, Verdict,
};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// Encodes, checks the length prefix, decodes the frame back.
fn one_frame(encode: impl FnOnce(&mut BytesMut)) -> Frame {
    let mut wire = BytesMut::new();
    encode(&mut wire);
    let len = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]) as usize;
    assert_eq!(len + 4, wire.len(), "length prefix counts code + payload");
    let frame = FrameDecoder::default()
        .decode(&mut wire)
        .expect("decodes")
        .expect("whole frame");
    assert!(wire.is_empty(), "exactly one frame");
    frame
}

fn command_round_trip(cmd: Command) -> Frame {
    let frame = one_frame(|w| cmd.encode(w));
    assert_eq!(frame.code, cmd.code());
    let back = Command::decode(frame.clone()).expect("decodes");
    assert_eq!(back, cmd);
    frame
}

fn reply_round_trip(reply: Reply) -> Frame {
    let frame = one_frame(|w| reply.encode(w));
    assert_eq!(frame.code, reply.code());
    let back = Reply::decode(frame.clone()).expect("decodes");
    assert_eq!(back, reply);
    frame
}

fn decode_cmd(code: u8, payload: &[u8]) -> Result<Command, ProtocolError> {
    Command::decode(Frame::new(code, Bytes::copy_from_slice(payload)))
}

fn decode_reply(code: u8, payload: &[u8]) -> Result<Reply, ProtocolError> {
    Reply::decode(Frame::new(code, Bytes::copy_from_slice(payload)))
}

fn malformed(code: u8) -> impl Fn(&ProtocolError) -> bool {
    move |e| matches!(e, ProtocolError::Malformed { code: c, .. } if *c == Code(code))
}

mod commands {
    use super::*;

    #[test]
    fn optneg() {
        let f = command_round_trip(Command::OptNeg(OptNeg {
            version: 6,
            actions: Actions::all(),
            protocol: ProtocolFlags::POSTFIX_V6,
        }));
        assert_eq!(
            &f.payload[..],
            &[0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff]
        );
    }

    #[test]
    fn optneg_keeps_unknown_bits() {
        let cmd = decode_cmd(b'O', &[0, 0, 0, 6, 0xff, 0, 0, 0, 0x40, 0, 0, 0]).unwrap();
        let Command::OptNeg(o) = cmd else {
            panic!("not optneg")
        };
        assert_eq!(o.actions.bits(), 0xff00_0000);
        assert_eq!(o.protocol.bits(), 0x4000_0000);
    }

    #[test]
    fn macros() {
        let f = command_round_trip(Command::Macros {
            for_command: b'C',
            pairs: vec![(b("j"), b("mx.example")), (b("{daemon_name}"), b("smtpd"))],
        });
        assert_eq!(&f.payload[..], b"Cj\0mx.example\0{daemon_name}\0smtpd\0");
    }

    #[test]
    fn macros_empty_list() {
        // Postfix's frame for a stage with no values: just the stage byte.
        command_round_trip(Command::Macros {
            for_command: b'L',
            pairs: vec![],
        });
        assert_eq!(
            decode_cmd(b'D', b"B").unwrap(),
            Command::Macros {
                for_command: b'B',
                pairs: vec![]
            }
        );
    }

    #[test]
    fn macros_odd_count_gets_empty_value() {
        assert_eq!(
            decode_cmd(b'D', b"Mi\0Q1\0{auth_type}\0").unwrap(),
            Command::Macros {
                for_command: b'M',
                pairs: vec![(b("i"), b("Q1")), (b("{auth_type}"), Bytes::new())],
            }
        );
    }

    #[test]
    fn connect_ipv4() {
        let f = command_round_trip(Command::Connect(ConnectInfo {
            hostname: b("client.example"),
            socket: SocketInfo::Inet {
                addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                port: 49152,
            },
        }));
        assert_eq!(&f.payload[..], b"client.example\x004\xc0\x00127.0.0.1\0");
    }

    #[test]
    fn connect_ipv6_bare() {
        let f = command_round_trip(Command::Connect(ConnectInfo {
            hostname: b("[2001:db8::1]"),
            socket: SocketInfo::Inet {
                addr: "2001:db8::1".parse().unwrap(),
                port: 25,
            },
        }));
        assert_eq!(&f.payload[..], b"[2001:db8::1]\x006\x00\x192001:db8::1\0");
    }

    #[test]
    fn connect_ipv6_sendmail_prefix() {
        for text in [&b"IPv6:2001:db8::25"[..], b"ipv6:2001:db8::25"] {
            let mut p = BytesMut::new();
            p.put_slice(b"host\x006\x01\x00");
            p.put_slice(text);
            p.put_u8(0);
            assert_eq!(
                decode_cmd(b'C', &p).unwrap(),
                Command::Connect(ConnectInfo {
                    hostname: b("host"),
                    socket: SocketInfo::Inet {
                        addr: IpAddr::V6("2001:db8::25".parse::<Ipv6Addr>().unwrap()),
                        port: 256,
                    },
                })
            );
        }
    }

    #[test]
    fn connect_unix() {
        let f = command_round_trip(Command::Connect(ConnectInfo {
            hostname: b("localhost"),
            socket: SocketInfo::Unix {
                path: b("/var/run/smtp.sock"),
            },
        }));
        assert_eq!(&f.payload[..], b"localhost\0L\0\0/var/run/smtp.sock\0");
    }

    #[test]
    fn connect_unknown_family() {
        let f = command_round_trip(Command::Connect(ConnectInfo {
            hostname: b("localhost"),
            socket: SocketInfo::Unknown,
        }));
        assert_eq!(&f.payload[..], b"localhost\0U");
    }

    #[test]
    fn helo() {
        let f = command_round_trip(Command::Helo(b("client.example")));
        assert_eq!(&f.payload[..], b"client.example\0");
    }

    #[test]
    fn mail_with_esmtp_args() {
        let f = command_round_trip(Command::Mail(Envelope {
            address: b("<alice@example.com>"),
            args: vec![b("SIZE=80097"), b("BODY=8BITMIME")],
        }));
        assert_eq!(
            &f.payload[..],
            b"<alice@example.com>\0SIZE=80097\0BODY=8BITMIME\0"
        );
    }

    #[test]
    fn mail_without_args_and_null_sender() {
        command_round_trip(Command::Mail(Envelope {
            address: b("<>"),
            args: vec![],
        }));
    }

    #[test]
    fn rcpt_with_esmtp_args() {
        let env = Envelope {
            address: b("<other@example.test>"),
            args: vec![
                b("NOTIFY=FAILURE,DELAY"),
                b("ORCPT=rfc822;other@example.test"),
            ],
        };
        command_round_trip(Command::Rcpt(env.clone()));
        assert_eq!(env.address_str(), "other@example.test");
    }

    #[test]
    fn header_bytes_kept() {
        // Leading space, folding with LF + tab, and 8-bit bytes all survive untouched.
        let f = command_round_trip(Command::Header {
            name: b("Subject"),
            value: Bytes::from_static(b" caf\xc3\xa9\n\tfolded \xff"),
        });
        assert_eq!(&f.payload[..], b"Subject\0 caf\xc3\xa9\n\tfolded \xff\0");
    }

    #[test]
    fn body_raw() {
        let chunk: Vec<u8> = (0..=255u8).cycle().take(65535).collect();
        let f = command_round_trip(Command::Body(Bytes::from(chunk.clone())));
        assert_eq!(&f.payload[..], &chunk[..]);
    }

    #[test]
    fn eom_empty_and_with_data() {
        let f = command_round_trip(Command::EndOfMessage(Bytes::new()));
        assert!(f.payload.is_empty());
        command_round_trip(Command::EndOfMessage(b("last chunk\r\n")));
    }

    #[test]
    fn empty_commands() {
        for cmd in [
            Command::Data,
            Command::EndOfHeaders,
            Command::Abort,
            Command::Quit,
            Command::QuitNoClose,
        ] {
            let f = command_round_trip(cmd);
            assert!(f.payload.is_empty());
        }
    }

    #[test]
    fn unknown_command_line() {
        let f = command_round_trip(Command::Unknown(b("XFOO bar")));
        assert_eq!(&f.payload[..], b"XFOO bar\0");
        // A missing NUL is tolerated, as libmilter does.
        assert_eq!(
            decode_cmd(b'U', b"XFOO").unwrap(),
            Command::Unknown(b("XFOO"))
        );
    }

    #[test]
    fn codes_and_names() {
        assert_eq!(Command::Data.code(), b'T');
        assert_eq!(Command::EndOfMessage(Bytes::new()).name(), "EOM");
        assert_eq!(Command::QuitNoClose.code(), b'K');
    }
}

mod replies {
    use super::*;

    #[test]
    fn optneg_without_macros() {
        let f = reply_round_trip(Reply::OptNeg(OptNegReply {
            version: 6,
            actions: Actions::ADD_HEADERS | Actions::CHANGE_HEADERS,
            protocol: ProtocolFlags::HEADER_LEADING_SPACE | ProtocolFlags::NR_HEADER,
            macros: vec![],
        }));
        assert_eq!(f.payload.len(), 12);
    }

    #[test]
    fn optneg_with_macro_lists() {
        let f = reply_round_trip(Reply::OptNeg(OptNegReply {
            version: 6,
            actions: Actions::SET_MACROS,
            protocol: ProtocolFlags::empty(),
            macros: vec![
                MacroRequest {
                    stage: Stage::Connect,
                    names: vec!["j".into(), "{daemon_name}".into()],
                },
                MacroRequest {
                    stage: Stage::EndOfMessage,
                    names: vec!["i".into()],
                },
            ],
        }));
        assert_eq!(&f.payload[12..16], &[0, 0, 0, 0]);
        assert_eq!(&f.payload[16..32], b"j {daemon_name}\0");
        assert_eq!(&f.payload[32..], b"\0\0\0\x05i\0");
    }

    #[test]
    fn optneg_reply_skips_unknown_stage() {
        let mut p = BytesMut::new();
        p.put_u32(6);
        p.put_u32(0x100);
        p.put_u32(0);
        p.put_u32(9);
        p.put_slice(b"x\0");
        p.put_u32(1);
        p.put_slice(b"{tls_version}\0");
        let Reply::OptNeg(o) = decode_reply(b'O', &p).unwrap() else {
            panic!("not optneg")
        };
        assert_eq!(
            o.macros,
            vec![MacroRequest {
                stage: Stage::Helo,
                names: vec!["{tls_version}".into()]
            }]
        );
    }

    #[test]
    fn each_verdict() {
        for (v, c) in [
            (Verdict::Continue, b'c'),
            (Verdict::Accept, b'a'),
            (Verdict::Reject, b'r'),
            (Verdict::Tempfail, b't'),
            (Verdict::Discard, b'd'),
            (Verdict::Skip, b's'),
            (Verdict::Shutdown, b'4'),
        ] {
            let f = reply_round_trip(Reply::Verdict(v));
            assert_eq!(f.code, c);
            assert!(f.payload.is_empty());
        }
    }

    #[test]
    fn replycode_single_line() {
        let r = SmtpReply::new(550, Some("5.7.1"), "no thanks").unwrap();
        let f = reply_round_trip(Reply::Verdict(Verdict::Reply(r)));
        assert_eq!(&f.payload[..], b"550 5.7.1 no thanks\0");
    }

    #[test]
    fn replycode_multi_line() {
        let r = SmtpReply::new(451, Some("4.7.1"), "try again\nlater, 100% sure").unwrap();
        let f = reply_round_trip(Reply::Verdict(Verdict::Reply(r.clone())));
        assert_eq!(
            &f.payload[..],
            b"451-4.7.1 try again\r\n451 4.7.1 later, 100%% sure\0"
        );
        assert_eq!(r.lines().len(), 2);
        assert!(!r.is_permanent());
    }

    #[test]
    fn progress() {
        let f = reply_round_trip(Reply::Progress);
        assert_eq!(f.code, b'p');
    }

    #[test]
    fn header_modifications() {
        let f = reply_round_trip(Reply::Modification(Modification::AddHeader {
            name: b("X-Spam"),
            value: b(" yes"),
        }));
        assert_eq!(&f.payload[..], b"X-Spam\0 yes\0");
        let f = reply_round_trip(Reply::Modification(Modification::InsertHeader {
            index: 0,
            name: b("DKIM-Signature"),
            value: b(" v=1;\n\tb=abc"),
        }));
        assert_eq!(&f.payload[..4], &[0, 0, 0, 0]);
        let f = reply_round_trip(Reply::Modification(Modification::ChangeHeader {
            index: 2,
            name: b("Subject"),
            value: b("new"),
        }));
        assert_eq!(&f.payload[..], b"\0\0\0\x02Subject\0new\0");
        let f = reply_round_trip(Reply::Modification(Modification::delete_header("X-Old", 1)));
        assert_eq!(&f.payload[..], b"\0\0\0\x01X-Old\0\0");
    }

    #[test]
    fn change_from_with_and_without_args() {
        let f = reply_round_trip(Reply::Modification(Modification::ChangeFrom {
            address: b("<bounce@example.com>"),
            args: None,
        }));
        assert_eq!(&f.payload[..], b"<bounce@example.com>\0");
        let f = reply_round_trip(Reply::Modification(Modification::ChangeFrom {
            address: b("<bounce@example.com>"),
            args: Some(b("RET=HDRS ENVID=x")),
        }));
        assert_eq!(&f.payload[..], b"<bounce@example.com>\0RET=HDRS ENVID=x\0");
    }

    #[test]
    fn recipients_with_and_without_args() {
        let f = reply_round_trip(Reply::Modification(Modification::AddRcpt {
            address: b("<archive@example.com>"),
        }));
        assert_eq!(f.code, b'+');
        let f = reply_round_trip(Reply::Modification(Modification::AddRcptWithArgs {
            address: b("<archive@example.com>"),
            args: Some(b("NOTIFY=NEVER")),
        }));
        assert_eq!(f.code, b'2');
        assert_eq!(&f.payload[..], b"<archive@example.com>\0NOTIFY=NEVER\0");
        reply_round_trip(Reply::Modification(Modification::AddRcptWithArgs {
            address: b("<archive@example.com>"),
            args: None,
        }));
        let f = reply_round_trip(Reply::Modification(Modification::DeleteRcpt {
            address: b("<user@example.com>"),
        }));
        assert_eq!(f.code, b'-');
    }

    #[test]
    fn body_and_quarantine() {
        let f = reply_round_trip(Reply::Modification(Modification::ReplaceBody(b(
            "new body\r\n",
        ))));
        assert_eq!(f.code, b'b');
        let f = reply_round_trip(Reply::Modification(Modification::Quarantine {
            reason: b("suspicious"),
        }));
        assert_eq!(&f.payload[..], b"suspicious\0");
    }
}

mod malformed_payloads {
    use super::*;

    #[test]
    fn short_optneg() {
        let e = decode_cmd(b'O', &[0, 0, 0, 6, 0, 0, 1]).unwrap_err();
        assert!(malformed(b'O')(&e), "{e:?}");
        let e = decode_reply(b'O', &[0, 0, 0, 6]).unwrap_err();
        assert!(malformed(b'O')(&e), "{e:?}");
        // A macro list cut inside its stage number.
        let mut p = vec![0, 0, 0, 6, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        let e = decode_reply(b'O', &p).unwrap_err();
        assert!(malformed(b'O')(&e), "{e:?}");
        // A macro list without its NUL.
        p.extend_from_slice(&[0, 0, b'i']);
        let e = decode_reply(b'O', &p).unwrap_err();
        assert!(malformed(b'O')(&e), "{e:?}");
    }

    #[test]
    fn truncated_connect() {
        for p in [
            &b""[..],                      // no host name
            b"host",                       // host without NUL
            b"host\0",                     // no family
            b"host\x004",                  // no port
            b"host\x004\x00",              // half a port
            b"host\x004\x00\x19",          // no address
            b"host\x004\x00\x19127.0.0.1", // address without NUL
            b"host\0L\0\0/sock",           // path without NUL
        ] {
            let e = decode_cmd(b'C', p).unwrap_err();
            assert!(malformed(b'C')(&e), "{p:?}: {e:?}");
        }
    }

    /// Unknown families and addresses that do not parse are not errors (Postfix and
    /// Sendmail let those clients through): they are kept as `SocketInfo::Unparsed`.
    #[test]
    fn unparsable_connect_family_and_address_are_kept() {
        let unparsed = |payload: &[u8]| match decode_cmd(b'C', payload) {
            Ok(Command::Connect(ConnectInfo { hostname, socket })) => {
                assert_eq!(hostname, b("host"));
                socket
            }
            other => panic!("{payload:?}: {other:?}"),
        };
        for (payload, family, port, raw) in [
            (
                &b"host\x004\x00\x19not-an-ip\0"[..],
                b'4',
                25,
                &b"not-an-ip"[..],
            ),
            (b"host\x006\x00\x19IPv6:\0", b'6', 25, b"IPv6:"),
            (
                b"host\x006\x01\x00fe80::1%eth0\0",
                b'6',
                256,
                b"fe80::1%eth0",
            ),
            (b"host\x004\x00\x19\xff\xfe\0", b'4', 25, b"\xff\xfe"),
            (b"host\x004\x00\x19\0", b'4', 25, b""),
            // Unknown families: port and text as far as they go.
            (b"host\0X", b'X', 0, b""),
            (b"host\0X\x01", b'X', 0, b"\x01"),
            (b"host\0X\x00\x19somewhere\0", b'X', 25, b"somewhere"),
            (b"host\0X\x00\x19no-nul", b'X', 25, b"no-nul"),
        ] {
            let socket = unparsed(payload);
            assert_eq!(
                socket,
                SocketInfo::Unparsed {
                    family,
                    port,
                    raw: Bytes::copy_from_slice(raw),
                },
                "{payload:?}"
            );
            // And it survives the MTA side's encoding.
            command_round_trip(Command::Connect(ConnectInfo {
                hostname: b("host"),
                socket,
            }));
        }
    }

    #[test]
    fn scoped_ipv6_address_is_still_an_ip() {
        let s = |family, raw: &'static str| SocketInfo::Unparsed {
            family,
            port: 25,
            raw: b(raw),
        };
        let fe80 = Some(IpAddr::V6("fe80::1".parse().unwrap()));
        assert_eq!(s(b'6', "fe80::1%eth0").ip(), fe80);
        assert_eq!(s(b'6', "IPv6:fe80::1%2").ip(), fe80);
        assert_eq!(s(b'6', "fe80::1%").ip(), None);
        assert_eq!(s(b'6', "garbage").ip(), None);
        assert_eq!(s(b'4', "fe80::1%eth0").ip(), None);
        assert_eq!(s(b'X', "fe80::1%eth0").ip(), None);
        let inet = SocketInfo::Inet {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 25,
        };
        assert_eq!(inet.ip(), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(SocketInfo::Unknown.ip(), None);
    }

    #[test]
    fn missing_nul() {
        for (code, p) in [
            (b'H', &b"helo"[..]),
            (b'M', b"<a@b>\0SIZE=1"),
            (b'R', b"<a@b>"),
            (b'L', b"Subject\0value"),
            (b'L', b"Subject"),
            (b'D', b"Cj\0mx"),
        ] {
            let e = decode_cmd(code, p).unwrap_err();
            assert!(malformed(code)(&e), "{} {p:?}: {e:?}", code as char);
        }
        for (code, p) in [
            (b'h', &b"X\0v"[..]),
            (b'e', b"<a@b>"),
            (b'+', b"<a@b>"),
            (b'-', b"<a@b>"),
            (b'q', b"why"),
            (b'y', b"550 5.7.1 no"),
        ] {
            let e = decode_reply(code, p).unwrap_err();
            assert!(malformed(code)(&e), "{} {p:?}: {e:?}", code as char);
        }
    }

    #[test]
    fn envelope_without_address() {
        let e = decode_cmd(b'M', b"").unwrap_err();
        assert!(malformed(b'M')(&e), "{e:?}");
    }

    #[test]
    fn macro_frame_without_stage() {
        let e = decode_cmd(b'D', b"").unwrap_err();
        assert!(malformed(b'D')(&e), "{e:?}");
    }

    #[test]
    fn trailing_data() {
        let e = decode_cmd(b'L', b"Subject\0v\0extra").unwrap_err();
        assert!(malformed(b'L')(&e), "{e:?}");
        let e = decode_reply(b'c', b"x").unwrap_err();
        assert!(malformed(b'c')(&e), "{e:?}");
        let e = decode_reply(b'+', b"<a@b>\0more\0").unwrap_err();
        assert!(malformed(b'+')(&e), "{e:?}");
        let e = decode_reply(b'i', b"\0\0\0\x01X\0v\0tail").unwrap_err();
        assert!(malformed(b'i')(&e), "{e:?}");
    }

    #[test]
    fn invalid_replycode_and_quarantine() {
        for p in [
            &b"250 ok\0"[..],
            b"550-5.7.1 a\0",
            b"55\0",
            b"550 4.7.1 wrong class\0",
        ] {
            let e = decode_reply(b'y', p).unwrap_err();
            assert!(malformed(b'y')(&e), "{p:?}: {e:?}");
        }
        let e = decode_reply(b'q', b"\0").unwrap_err();
        assert!(malformed(b'q')(&e), "{e:?}");
        let e = decode_reply(b'm', b"\0\0").unwrap_err();
        assert!(malformed(b'm')(&e), "{e:?}");
    }

    #[test]
    fn unknown_codes() {
        assert_eq!(
            decode_cmd(b'Z', b"").unwrap_err(),
            ProtocolError::UnknownCommand(Code(b'Z'))
        );
        // SETSYMLIST and CONN_FAIL are never valid frames from a milter.
        for c in [b'l', b'f', 0x00, 0xff] {
            assert_eq!(
                decode_reply(c, b"").unwrap_err(),
                ProtocolError::UnknownReply(Code(c))
            );
        }
    }

    #[test]
    fn huge_length_refused_without_allocation() {
        let d = FrameDecoder::default();
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, b'B', 1, 2, 3][..]);
        let cap = buf.capacity();
        assert_eq!(
            d.decode(&mut buf).unwrap_err(),
            ProtocolError::FrameTooLarge {
                len: 0xffff_ffff,
                max: milter_core::wire::DEFAULT_RECV_MAX,
            }
        );
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn zero_length() {
        let mut buf = BytesMut::from(&[0, 0, 0, 0, b'c'][..]);
        assert_eq!(
            FrameDecoder::default().decode(&mut buf).unwrap_err(),
            ProtocolError::EmptyFrame
        );
    }

    #[test]
    fn truncated_stream() {
        let mut wire = BytesMut::new();
        encode_frame(b'H', b"helo\0", &mut wire);
        wire.truncate(wire.len() - 2);
        let d = FrameDecoder::default();
        assert_eq!(d.decode(&mut wire), Ok(None));
        assert_eq!(
            d.decode_eof(&mut wire).unwrap_err(),
            ProtocolError::Truncated { have: 8, need: 10 }
        );
    }

    #[test]
    fn errors_name_the_frame() {
        let e = decode_cmd(b'C', b"host\x004").unwrap_err();
        assert_eq!(e.to_string(), "malformed 'C' frame: CONNECT without a port");
        assert_eq!(
            ProtocolError::UnknownCommand(Code(0x01)).to_string(),
            "unknown command 0x01"
        );
    }
}
