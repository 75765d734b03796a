//! The sans-IO MTA session: negotiation checks, macro frames, NO_*/NR_*/SKIP, strict reply
//! validation, leading space, body chunks and API misuse. The milter side is played by
//! hand with the crate's own frame codec.

use bytes::{Bytes, BytesMut};
use milter_core::error::Phase;
use milter_core::proto::command::code;
use milter_core::proto::reply::{MacroRequest, OptNegReply};
use milter_core::session::mta::{MtaConfig, MtaEvent, MtaSession, Sent, body_chunks, to_crlf};
use milter_core::wire::FrameDecoder;
use milter_core::{
    Actions, Command, ConnectInfo, Envelope, Modification, NegotiateError, ProtocolError,
    ProtocolFlags, Reply, SmtpReply, SocketInfo, Stage, UsageError, Verdict,
};

fn sent(s: &mut MtaSession) -> Vec<Command> {
    let mut buf = s.output().split();
    let d = FrameDecoder::new(1 << 20);
    let mut out = Vec::new();
    while let Some(f) = d.decode(&mut buf).unwrap() {
        out.push(Command::decode(f).unwrap());
    }
    assert!(buf.is_empty());
    out
}

fn codes(cmds: &[Command]) -> String {
    cmds.iter()
        .map(|c| match c {
            Command::Macros { for_command, .. } => format!("D{}", *for_command as char),
            c => (c.code() as char).to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn feed(s: &mut MtaSession, r: Reply) {
    let mut b = BytesMut::new();
    r.encode(&mut b);
    s.read_buf().extend_from_slice(&b);
}

fn answer(s: &mut MtaSession, r: Reply) -> Result<Option<MtaEvent>, ProtocolError> {
    feed(s, r);
    s.poll_event()
}

fn session_with(
    version: u32,
    actions: Actions,
    protocol: ProtocolFlags,
    macros: Vec<MacroRequest>,
) -> MtaSession {
    let mut s = MtaSession::new(MtaConfig::postfix());
    s.negotiate().unwrap();
    sent(&mut s);
    let ev = answer(
        &mut s,
        Reply::OptNeg(OptNegReply {
            version,
            actions,
            protocol,
            macros,
        }),
    )
    .unwrap();
    assert!(matches!(ev, Some(MtaEvent::Negotiated(_))));
    s
}

fn session(protocol: ProtocolFlags) -> MtaSession {
    session_with(6, Actions::all(), protocol, Vec::new())
}

fn connect_info() -> ConnectInfo {
    ConnectInfo {
        hostname: Bytes::from_static(b"client.example"),
        socket: SocketInfo::Inet {
            addr: "192.0.2.1".parse().unwrap(),
            port: 4567,
        },
    }
}

fn env(a: &'static str) -> Envelope {
    Envelope {
        address: Bytes::from_static(a.as_bytes()),
        args: vec![],
    }
}

fn cont(s: &mut MtaSession) {
    let ev = answer(s, Reply::Verdict(Verdict::Continue)).unwrap();
    assert!(
        matches!(
            ev,
            Some(MtaEvent::Verdict {
                verdict: Verdict::Continue,
                ..
            })
        ),
        "{ev:?}"
    );
}

/// Drives a session to the point where headers may be sent.
fn to_headers(s: &mut MtaSession) {
    for step in 0..5 {
        let r = match step {
            0 => s.connect(&connect_info()),
            1 => s.helo(b"client.example"),
            2 => s.mail(&env("<a@example.test>")),
            3 => s.rcpt(&env("<b@example.test>")),
            _ => s.data(),
        }
        .unwrap();
        if r == Sent::AwaitingReply {
            cont(s);
        }
    }
    sent(s);
}

mod negotiation {
    use super::*;

    #[test]
    fn offers_what_postfix_3_offers() {
        let mut s = MtaSession::new(MtaConfig::postfix());
        assert_eq!(s.negotiate().unwrap(), Sent::AwaitingReply);
        assert_eq!(s.phase(), Phase::Negotiation);
        let cmds = sent(&mut s);
        let [Command::OptNeg(o)] = cmds.as_slice() else {
            panic!("{cmds:?}")
        };
        assert_eq!(o.version, 6);
        assert_eq!(o.actions.bits(), 0x1FF);
        assert_eq!(o.protocol.bits(), 0x1F_FFFF);
        assert_eq!(s.negotiate(), Err(UsageError::ReplyPending));
    }

    fn refused(version: u32, actions: Actions, protocol: ProtocolFlags) -> ProtocolError {
        let mut s = MtaSession::new(MtaConfig::postfix());
        s.negotiate().unwrap();
        answer(
            &mut s,
            Reply::OptNeg(OptNegReply {
                version,
                actions,
                protocol,
                macros: vec![],
            }),
        )
        .unwrap_err()
    }

    #[test]
    fn version_above_the_offer_is_refused() {
        assert_eq!(
            refused(7, Actions::empty(), ProtocolFlags::empty()),
            ProtocolError::Negotiation(NegotiateError::VersionAboveOffer { mta: 6, milter: 7 })
        );
    }

    #[test]
    fn version_below_2_is_refused() {
        assert_eq!(
            refused(1, Actions::empty(), ProtocolFlags::empty()),
            ProtocolError::Negotiation(NegotiateError::UnsupportedVersion(1))
        );
    }

    #[test]
    fn lower_version_is_accepted_and_masks_events() {
        let mut s = session_with(2, Actions::empty(), ProtocolFlags::empty(), vec![]);
        assert_eq!(s.options().unwrap().version, 2);
        s.connect(&connect_info()).unwrap();
        cont(&mut s);
        s.mail(&env("<a@x>")).unwrap();
        cont(&mut s);
        s.rcpt(&env("<b@y>")).unwrap();
        cont(&mut s);
        sent(&mut s);
        // Version 2 has no DATA event: only its macros go out.
        assert_eq!(s.data().unwrap(), Sent::Skipped);
        assert_eq!(codes(&sent(&mut s)), "DT");
    }

    #[test]
    fn actions_beyond_the_offer_are_refused() {
        let mut s = MtaSession::new(MtaConfig {
            actions: Actions::ADD_HEADERS,
            ..MtaConfig::postfix()
        });
        s.negotiate().unwrap();
        let e = answer(
            &mut s,
            Reply::OptNeg(OptNegReply {
                version: 6,
                actions: Actions::ADD_HEADERS | Actions::CHANGE_BODY,
                protocol: ProtocolFlags::empty(),
                macros: vec![],
            }),
        )
        .unwrap_err();
        assert_eq!(
            e,
            ProtocolError::Negotiation(NegotiateError::BeyondOffer {
                actions: Actions::CHANGE_BODY,
                protocol: ProtocolFlags::empty()
            })
        );
    }

    #[test]
    fn protocol_flags_beyond_the_offer_are_refused() {
        // Postfix never offers the MDS bits.
        let e = refused(6, Actions::empty(), ProtocolFlags::MDS_256K);
        assert!(matches!(
            e,
            ProtocolError::Negotiation(NegotiateError::BeyondOffer { protocol, .. }) if protocol == ProtocolFlags::MDS_256K
        ));
    }

    #[test]
    fn anything_but_optneg_is_refused_in_answer_to_the_offer() {
        let mut s = MtaSession::new(MtaConfig::postfix());
        s.negotiate().unwrap();
        let e = answer(&mut s, Reply::Verdict(Verdict::Continue)).unwrap_err();
        assert!(matches!(e, ProtocolError::UnexpectedReply { .. }), "{e:?}");
    }

    #[test]
    fn a_reply_before_anything_was_sent_is_refused() {
        let mut s = MtaSession::new(MtaConfig::postfix());
        let e = answer(&mut s, Reply::Verdict(Verdict::Continue)).unwrap_err();
        assert!(matches!(e, ProtocolError::UnexpectedReply { .. }), "{e:?}");
    }
}

mod macros {
    use super::*;

    type Step = Box<dyn Fn(&mut MtaSession) -> Result<Sent, UsageError>>;

    fn pairs(c: &Command) -> Vec<(String, String)> {
        let Command::Macros { pairs, .. } = c else {
            panic!("not a macro frame: {c:?}")
        };
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into(),
                    String::from_utf8_lossy(v).into(),
                )
            })
            .collect()
    }

    #[test]
    fn a_macro_frame_precedes_every_event_including_each_header_and_body_chunk() {
        let mut s = session(ProtocolFlags::SKIP | ProtocolFlags::HEADER_LEADING_SPACE);
        let mut all = Vec::new();
        let steps: Vec<Step> = vec![
            Box::new(|s| s.connect(&connect_info())),
            Box::new(|s| s.helo(b"h")),
            Box::new(|s| s.mail(&env("<a@x>"))),
            Box::new(|s| s.rcpt(&env("<b@y>"))),
            Box::new(|s| s.rcpt(&env("<c@y>"))),
            Box::new(|s| s.data()),
            Box::new(|s| s.header(b"From", b" a@x")),
            Box::new(|s| s.header(b"Subject", b" hi")),
            Box::new(|s| s.end_of_headers()),
            Box::new(|s| s.body(b"line 1\r\n")),
            Box::new(|s| s.body(b"line 2\r\n")),
            Box::new(|s| s.end_of_message()),
        ];
        for step in steps {
            assert_eq!(step(&mut s).unwrap(), Sent::AwaitingReply);
            all.extend(sent(&mut s));
            cont(&mut s);
        }
        assert_eq!(
            codes(&all),
            "DC C DH H DM M DR R DR R DT T DL L DL L DN N DB B DB B DE E"
        );
        // Nothing has a value and the defaults name nothing we set: every D frame is empty.
        assert!(
            all.iter()
                .filter(|c| matches!(c, Command::Macros { .. }))
                .all(|c| pairs(c).is_empty())
        );
    }

    #[test]
    fn postfix_defaults_are_used_and_only_macros_with_values_are_sent() {
        let mut s = session(ProtocolFlags::empty());
        s.set_macro("j", "mx.example.test");
        s.set_macro("{daemon_name}", "ORIGINATING");
        s.set_macro("v", "");
        s.set_macro("client_addr", "192.0.2.1"); // not in Postfix's connect list
        s.connect(&connect_info()).unwrap();
        let cmds = sent(&mut s);
        assert_eq!(
            pairs(&cmds[0]),
            vec![
                ("j".into(), "mx.example.test".into()),
                ("{daemon_name}".into(), "ORIGINATING".into())
            ]
        );
        cont(&mut s);
        s.set_macro("i", "4ABC");
        s.set_macro("{auth_type}", "PLAIN");
        s.set_macro("auth_authen", "user@example.test");
        s.mail(&env("<a@x>")).unwrap();
        let cmds = sent(&mut s);
        assert_eq!(
            pairs(&cmds[0]),
            vec![
                ("i".into(), "4ABC".into()),
                ("{auth_type}".into(), "PLAIN".into()),
                ("{auth_authen}".into(), "user@example.test".into())
            ]
        );
    }

    #[test]
    fn the_milters_lists_replace_the_defaults_per_stage() {
        let mut s = session_with(
            6,
            Actions::all(),
            ProtocolFlags::empty(),
            vec![
                MacroRequest {
                    stage: Stage::Connect,
                    names: vec!["{client_addr}".into(), "{missing}".into()],
                },
                MacroRequest {
                    stage: Stage::EndOfHeaders,
                    names: vec!["{x}".into()],
                },
                // An empty list cannot silence Postfix: defaults apply.
                MacroRequest {
                    stage: Stage::MailFrom,
                    names: vec![],
                },
            ],
        );
        s.set_macro("j", "mx");
        s.set_macro("client_addr", "192.0.2.1");
        s.set_macro("x", "X");
        s.set_macro("i", "Q1");
        s.connect(&connect_info()).unwrap();
        assert_eq!(
            pairs(&sent(&mut s)[0]),
            vec![("{client_addr}".into(), "192.0.2.1".into())]
        );
        cont(&mut s);
        s.mail(&env("<a@x>")).unwrap();
        assert_eq!(pairs(&sent(&mut s)[0]), vec![("i".into(), "Q1".into())]);
        cont(&mut s);
        s.rcpt(&env("<b@y>")).unwrap();
        cont(&mut s);
        sent(&mut s);
        // The EOH list is used before every header and before EOH.
        s.header(b"Subject", b" x").unwrap();
        let cmds = sent(&mut s);
        assert_eq!(pairs(&cmds[0]), vec![("{x}".into(), "X".into())]);
        cont(&mut s);
        s.end_of_headers().unwrap();
        assert_eq!(pairs(&sent(&mut s)[0]), vec![("{x}".into(), "X".into())]);
    }
}

mod steps {
    use super::*;

    #[test]
    fn no_flags_skip_the_event_but_still_send_its_macros() {
        let mut s = session(
            ProtocolFlags::NO_HELO
                | ProtocolFlags::NO_HEADERS
                | ProtocolFlags::NO_BODY
                | ProtocolFlags::NO_EOH,
        );
        s.connect(&connect_info()).unwrap();
        cont(&mut s);
        sent(&mut s);
        assert_eq!(s.helo(b"h").unwrap(), Sent::Skipped);
        assert_eq!(codes(&sent(&mut s)), "DH");
        s.mail(&env("<a@x>")).unwrap();
        cont(&mut s);
        s.rcpt(&env("<b@y>")).unwrap();
        cont(&mut s);
        s.data().unwrap();
        cont(&mut s);
        sent(&mut s);
        assert_eq!(s.header(b"A", b" 1").unwrap(), Sent::Skipped);
        assert_eq!(s.end_of_headers().unwrap(), Sent::Skipped);
        assert_eq!(s.body(b"x\r\n").unwrap(), Sent::Skipped);
        assert!(!s.awaiting_reply());
        assert_eq!(codes(&sent(&mut s)), "DL DN DB");
        s.end_of_message().unwrap();
        assert_eq!(codes(&sent(&mut s)), "DE E");
    }

    #[test]
    fn nr_flags_expect_no_reply_and_a_reply_anyway_is_an_error() {
        let mut s = session(ProtocolFlags::NR_HEADER | ProtocolFlags::NR_CONNECT);
        assert_eq!(s.connect(&connect_info()).unwrap(), Sent::NoReply);
        assert!(!s.awaiting_reply());
        s.helo(b"h").unwrap();
        cont(&mut s);
        s.mail(&env("<a@x>")).unwrap();
        cont(&mut s);
        s.rcpt(&env("<b@y>")).unwrap();
        cont(&mut s);
        assert_eq!(s.header(b"A", b" 1").unwrap(), Sent::NoReply);
        assert_eq!(s.header(b"B", b" 2").unwrap(), Sent::NoReply);
        let e = answer(&mut s, Reply::Verdict(Verdict::Continue)).unwrap_err();
        assert!(matches!(e, ProtocolError::UnexpectedReply { .. }), "{e:?}");
    }

    #[test]
    fn skip_stops_the_body() {
        let mut s = session(ProtocolFlags::SKIP);
        to_headers(&mut s);
        s.end_of_headers().unwrap();
        cont(&mut s);
        s.body(b"one\r\n").unwrap();
        let ev = answer(&mut s, Reply::Verdict(Verdict::Skip)).unwrap();
        assert!(matches!(
            ev,
            Some(MtaEvent::Verdict {
                verdict: Verdict::Skip,
                ..
            })
        ));
        assert!(s.body_skipped());
        sent(&mut s);
        assert_eq!(s.body(b"two\r\n").unwrap(), Sent::Skipped);
        assert!(sent(&mut s).is_empty(), "nothing at all is sent after SKIP");
        s.end_of_message().unwrap();
        assert_eq!(codes(&sent(&mut s)), "DE E");
    }

    #[test]
    fn skip_without_negotiation_or_outside_body_is_an_error() {
        let mut s = session(ProtocolFlags::empty());
        to_headers(&mut s);
        s.end_of_headers().unwrap();
        cont(&mut s);
        s.body(b"one\r\n").unwrap();
        assert!(answer(&mut s, Reply::Verdict(Verdict::Skip)).is_err());

        let mut s = session(ProtocolFlags::SKIP);
        to_headers(&mut s);
        s.header(b"A", b" 1").unwrap();
        assert!(answer(&mut s, Reply::Verdict(Verdict::Skip)).is_err());
    }

    #[test]
    fn a_refused_recipient_does_not_end_the_message() {
        let mut s = session(ProtocolFlags::empty());
        s.connect(&connect_info()).unwrap();
        cont(&mut s);
        s.mail(&env("<a@x>")).unwrap();
        cont(&mut s);
        s.rcpt(&env("<bad@y>")).unwrap();
        answer(&mut s, Reply::Verdict(Verdict::Reject)).unwrap();
        s.rcpt(&env("<good@y>")).unwrap();
        cont(&mut s);
        assert_eq!(s.data().unwrap(), Sent::AwaitingReply);
    }

    #[test]
    fn a_refusal_at_mail_ends_the_message_and_abort_starts_over() {
        let mut s = session(ProtocolFlags::empty());
        s.connect(&connect_info()).unwrap();
        cont(&mut s);
        s.mail(&env("<a@x>")).unwrap();
        answer(&mut s, Reply::Verdict(Verdict::Tempfail)).unwrap();
        assert!(matches!(
            s.rcpt(&env("<b@y>")),
            Err(UsageError::OutOfOrder { .. })
        ));
        s.abort().unwrap();
        assert_eq!(codes(&sent(&mut s)).rsplit(' ').next(), Some("A"));
        assert_eq!(s.mail(&env("<a@x>")).unwrap(), Sent::AwaitingReply);
    }

    #[test]
    fn a_refusal_at_connect_ends_the_connection() {
        let mut s = session(ProtocolFlags::empty());
        s.connect(&connect_info()).unwrap();
        answer(&mut s, Reply::Verdict(Verdict::Reject)).unwrap();
        assert!(s.connection_done());
        assert!(matches!(s.helo(b"h"), Err(UsageError::OutOfOrder { .. })));
        assert!(s.quit().is_ok());
        assert_eq!(codes(&sent(&mut s)).rsplit(' ').next(), Some("Q"));
    }

    #[test]
    fn discard_outside_a_message_is_an_error() {
        let mut s = session(ProtocolFlags::empty());
        s.connect(&connect_info()).unwrap();
        assert!(answer(&mut s, Reply::Verdict(Verdict::Discard)).is_err());
    }

    #[test]
    fn phases_follow_postfix_timeouts() {
        let mut s = session(ProtocolFlags::empty());
        assert_eq!(s.phase(), Phase::Idle);
        s.connect(&connect_info()).unwrap();
        assert_eq!(s.phase(), Phase::Command);
        cont(&mut s);
        s.mail(&env("<a@x>")).unwrap();
        assert_eq!(s.phase(), Phase::Command);
        cont(&mut s);
        s.rcpt(&env("<b@y>")).unwrap();
        cont(&mut s);
        s.header(b"A", b" 1").unwrap();
        assert_eq!(s.phase(), Phase::Content);
        cont(&mut s);
        s.end_of_message().unwrap();
        assert_eq!(s.phase(), Phase::Content);
    }
}

mod replies {
    use super::*;

    fn at_eom(actions: Actions) -> MtaSession {
        let mut s = session_with(6, actions, ProtocolFlags::empty(), vec![]);
        to_headers(&mut s);
        s.end_of_message().unwrap();
        sent(&mut s);
        s
    }

    #[test]
    fn modifications_progress_then_the_final_verdict_at_eom() {
        let mut s = at_eom(Actions::all());
        let m = Modification::InsertHeader {
            index: 0,
            name: Bytes::from_static(b"DKIM-Signature"),
            value: Bytes::from_static(b"v=1"),
        };
        assert_eq!(
            answer(&mut s, Reply::Modification(m.clone())).unwrap(),
            Some(MtaEvent::Modification(m))
        );
        assert_eq!(
            answer(&mut s, Reply::Progress).unwrap(),
            Some(MtaEvent::Progress)
        );
        assert_eq!(
            s.phase(),
            Phase::Content,
            "progress keeps the content timer"
        );
        let ev = answer(&mut s, Reply::Verdict(Verdict::Continue)).unwrap();
        assert!(matches!(
            ev,
            Some(MtaEvent::Verdict {
                command: code::EOB,
                ..
            })
        ));
        assert!(!s.awaiting_reply());
    }

    #[test]
    fn modifications_before_eom_are_errors() {
        let mut s = session(ProtocolFlags::empty());
        to_headers(&mut s);
        s.header(b"A", b" 1").unwrap();
        let e = answer(
            &mut s,
            Reply::Modification(Modification::AddHeader {
                name: Bytes::from_static(b"X"),
                value: Bytes::from_static(b"y"),
            }),
        )
        .unwrap_err();
        assert!(matches!(e, ProtocolError::UnexpectedReply { .. }), "{e:?}");
    }

    #[test]
    fn progress_before_eom_is_an_error() {
        let mut s = session(ProtocolFlags::empty());
        s.connect(&connect_info()).unwrap();
        assert!(answer(&mut s, Reply::Progress).is_err());
    }

    #[test]
    fn a_modification_needs_its_negotiated_action() {
        let mut s = at_eom(Actions::ADD_HEADERS);
        let e = answer(
            &mut s,
            Reply::Modification(Modification::ReplaceBody(Bytes::from_static(b"x"))),
        )
        .unwrap_err();
        assert!(matches!(e, ProtocolError::UnexpectedReply { .. }), "{e:?}");
    }

    #[test]
    fn an_invalid_header_name_is_an_error() {
        let mut s = at_eom(Actions::all());
        let e = answer(
            &mut s,
            Reply::Modification(Modification::AddHeader {
                name: Bytes::from_static(b"Bad Name"),
                value: Bytes::from_static(b"y"),
            }),
        )
        .unwrap_err();
        assert!(matches!(e, ProtocolError::Malformed { .. }), "{e:?}");
    }

    #[test]
    fn body_replacement_must_be_contiguous() {
        let mut s = at_eom(Actions::all());
        let b = || Reply::Modification(Modification::ReplaceBody(Bytes::from_static(b"x\n")));
        answer(&mut s, b()).unwrap();
        answer(&mut s, b()).unwrap();
        answer(
            &mut s,
            Reply::Modification(Modification::AddHeader {
                name: Bytes::from_static(b"X"),
                value: Bytes::from_static(b"y"),
            }),
        )
        .unwrap();
        assert!(answer(&mut s, b()).is_err());
    }

    #[test]
    fn replycode_syntax_is_checked() {
        for bad in [
            &b"250 2.0.0 ok\0"[..],
            b"554 4.7.1 class mismatch\0",
            b"554 no nul",
        ] {
            let mut s = session(ProtocolFlags::empty());
            s.connect(&connect_info()).unwrap();
            let mut frame = BytesMut::new();
            milter_core::wire::encode_frame(b'y', bad, &mut frame);
            s.read_buf().extend_from_slice(&frame);
            let e = s.poll_event().unwrap_err();
            assert!(
                matches!(e, ProtocolError::Malformed { .. }),
                "{bad:?}: {e:?}"
            );
        }
        let mut s = session(ProtocolFlags::empty());
        s.connect(&connect_info()).unwrap();
        let r = SmtpReply::new(554, Some("5.7.1"), "no thanks").unwrap();
        let ev = answer(&mut s, Reply::Verdict(Verdict::Reply(r.clone()))).unwrap();
        assert_eq!(
            ev,
            Some(MtaEvent::Verdict {
                command: code::CONNECT,
                verdict: Verdict::Reply(r)
            })
        );
    }

    #[test]
    fn eof_while_a_reply_is_due_is_an_error() {
        let mut s = session(ProtocolFlags::empty());
        s.connect(&connect_info()).unwrap();
        assert!(s.eof().is_err());
        cont(&mut s);
        assert!(s.eof().is_ok());
    }
}

mod headers_and_body {
    use super::*;

    fn header_value(s: &mut MtaSession, value: &[u8]) -> Bytes {
        s.header(b"Subject", value).unwrap();
        let cmds = sent(s);
        cont(s);
        match cmds.last() {
            Some(Command::Header { value, .. }) => value.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_leading_space_one_space_is_stripped() {
        let mut s = session(ProtocolFlags::empty());
        to_headers(&mut s);
        assert_eq!(&header_value(&mut s, b" hello")[..], b"hello");
        assert_eq!(&header_value(&mut s, b"  two")[..], b" two");
        assert_eq!(&header_value(&mut s, b"\ttab")[..], b"\ttab");
        assert_eq!(&header_value(&mut s, b"none")[..], b"none");
    }

    #[test]
    fn with_leading_space_values_pass_unchanged_and_folds_become_lf() {
        let mut s = session(ProtocolFlags::HEADER_LEADING_SPACE);
        assert!(s.leading_space());
        to_headers(&mut s);
        assert_eq!(&header_value(&mut s, b" hello")[..], b" hello");
        assert_eq!(&header_value(&mut s, b" a\r\n\tb")[..], b" a\n\tb");
    }

    #[test]
    fn body_chunks_are_at_most_65535_bytes() {
        let body = vec![b'x'; 150_000];
        let sizes: Vec<usize> = body_chunks(&body).map(<[u8]>::len).collect();
        assert_eq!(sizes, vec![65535, 65535, 18930]);
        let mut s = session(ProtocolFlags::empty());
        to_headers(&mut s);
        s.end_of_headers().unwrap();
        cont(&mut s);
        assert!(matches!(
            s.body(&body[..65536]),
            Err(UsageError::InvalidField { .. })
        ));
        assert_eq!(s.body(&body[..65535]).unwrap(), Sent::AwaitingReply);
    }

    #[test]
    fn body_line_endings_become_crlf() {
        assert_eq!(to_crlf(b"a\nb\r\nc\rd\n"), b"a\r\nb\r\nc\rd\r\n");
    }
}

mod misuse {
    use super::*;

    #[test]
    fn commands_while_a_reply_is_due_are_refused() {
        let mut s = session(ProtocolFlags::empty());
        s.connect(&connect_info()).unwrap();
        assert_eq!(s.helo(b"h"), Err(UsageError::ReplyPending));
    }

    #[test]
    fn out_of_order_commands_are_refused_and_change_nothing() {
        let mut s = session(ProtocolFlags::empty());
        assert!(matches!(
            s.mail(&env("<a@x>")),
            Err(UsageError::OutOfOrder { .. })
        ));
        s.connect(&connect_info()).unwrap();
        cont(&mut s);
        sent(&mut s);
        assert!(matches!(
            s.rcpt(&env("<b@y>")),
            Err(UsageError::OutOfOrder { .. })
        ));
        assert!(matches!(s.data(), Err(UsageError::OutOfOrder { .. })));
        assert!(matches!(
            s.end_of_message(),
            Err(UsageError::OutOfOrder { .. })
        ));
        assert!(sent(&mut s).is_empty());
    }

    #[test]
    fn nul_bytes_in_fields_are_refused() {
        let mut s = session(ProtocolFlags::empty());
        to_headers(&mut s);
        assert!(matches!(
            s.header(b"Subject", b" a\0b"),
            Err(UsageError::InvalidField { .. })
        ));
    }

    #[test]
    fn nothing_after_quit() {
        let mut s = session(ProtocolFlags::empty());
        s.quit().unwrap();
        assert!(s.is_closed());
        assert_eq!(s.connect(&connect_info()), Err(UsageError::Closed));
        assert_eq!(s.quit(), Err(UsageError::Closed));
    }
}
