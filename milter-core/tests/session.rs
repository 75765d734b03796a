//! The milter-side session state machine: negotiation, reply discipline, command order,
//! abort and connection reuse, message modifications.

use bytes::{Bytes, BytesMut};
use milter_core::error::{Code, NegotiateError};
use milter_core::negotiate::{Negotiated, Offer, Request, negotiate};
use milter_core::proto::command::OptNeg;
use milter_core::proto::reply::MacroRequest;
use milter_core::session::{Event, MilterSession, SessionConfig};
use milter_core::wire::{Frame, FrameDecoder};
use milter_core::{
    Actions, Command, ConnectInfo, Envelope, Modification, Phase, ProtocolError, ProtocolFlags,
    Reply, SmtpReply, SocketInfo, Stage, UsageError, Verdict,
};

// ---- helpers -------------------------------------------------------------------------

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn postfix_offer() -> Command {
    Command::OptNeg(OptNeg {
        version: 6,
        actions: Actions::all(),
        protocol: ProtocolFlags::POSTFIX_V6,
    })
}

fn connect_cmd() -> Command {
    Command::Connect(ConnectInfo {
        hostname: b("client.example"),
        socket: SocketInfo::Inet {
            addr: "192.0.2.7".parse().unwrap(),
            port: 40000,
        },
    })
}

fn mail_cmd(addr: &'static str) -> Command {
    Command::Mail(Envelope {
        address: b(addr),
        args: vec![b("SIZE=10")],
    })
}

fn rcpt_cmd(addr: &'static str) -> Command {
    Command::Rcpt(Envelope {
        address: b(addr),
        args: vec![],
    })
}

fn header_cmd(name: &'static str, value: &'static str) -> Command {
    Command::Header {
        name: b(name),
        value: b(value),
    }
}

fn macros_cmd(stage: u8, pairs: &[(&'static str, &'static str)]) -> Command {
    Command::Macros {
        for_command: stage,
        pairs: pairs.iter().map(|(n, v)| (b(n), b(v))).collect(),
    }
}

fn feed(s: &mut MilterSession, cmd: Command) {
    cmd.encode(s.read_buf());
}

/// Feeds one command and returns the event it produced.
fn send(s: &mut MilterSession, cmd: Command) -> Event {
    feed(s, cmd);
    s.poll_event()
        .expect("no protocol error")
        .expect("an event")
}

/// Feeds one command that must be refused.
fn send_err(s: &mut MilterSession, cmd: Command) -> ProtocolError {
    feed(s, cmd);
    s.poll_event().expect_err("a protocol error")
}

fn unexpected(code: u8) -> impl Fn(&ProtocolError) -> bool {
    move |e| matches!(e, ProtocolError::UnexpectedCommand { code: c, .. } if *c == Code(code))
}

/// Decodes and clears everything the session queued.
fn drain(s: &mut MilterSession) -> Vec<Reply> {
    let mut out = std::mem::take(s.output());
    let d = FrameDecoder::new(usize::MAX);
    let mut replies = Vec::new();
    while let Some(f) = d.decode(&mut out).unwrap() {
        replies.push(Reply::decode(f).unwrap());
    }
    assert!(out.is_empty());
    replies
}

/// Raw frames queued, without decoding (for size checks).
fn drain_frames(s: &mut MilterSession) -> Vec<Frame> {
    let mut out = std::mem::take(s.output());
    let d = FrameDecoder::new(usize::MAX);
    let mut frames = Vec::new();
    while let Some(f) = d.decode(&mut out).unwrap() {
        frames.push(f);
    }
    frames
}

fn continue_reply() -> Vec<Reply> {
    vec![Reply::Verdict(Verdict::Continue)]
}

/// A session that negotiated `request` against Postfix's offer.
fn negotiated(request: Request) -> MilterSession {
    let mut s = MilterSession::new(SessionConfig::default());
    let ev = send(&mut s, postfix_offer());
    assert!(matches!(ev, Event::Negotiate(_)));
    s.negotiate(&request).expect("negotiates");
    let replies = drain(&mut s);
    assert!(matches!(replies.as_slice(), [Reply::OptNeg(_)]));
    s
}

/// Negotiated and connected, CONNECT answered.
fn connected(request: Request) -> MilterSession {
    let mut s = negotiated(request);
    feed(
        &mut s,
        macros_cmd(b'C', &[("j", "mx.example"), ("{daemon_name}", "smtpd")]),
    );
    assert!(matches!(send(&mut s, connect_cmd()), Event::Connect(_)));
    s.reply(Verdict::Continue).unwrap();
    feed(&mut s, macros_cmd(b'H', &[]));
    assert_eq!(
        send(&mut s, Command::Helo(b("client.example"))),
        Event::Helo(b("client.example"))
    );
    s.reply(Verdict::Continue).unwrap();
    drain(&mut s);
    s
}

/// Connected, MAIL and one RCPT answered.
fn in_envelope(request: Request) -> MilterSession {
    let mut s = connected(request);
    feed(&mut s, macros_cmd(b'M', &[("{mail_addr}", "a@x")]));
    assert!(matches!(send(&mut s, mail_cmd("<a@x>")), Event::Mail(_)));
    s.reply(Verdict::Continue).unwrap();
    feed(&mut s, macros_cmd(b'R', &[("{rcpt_addr}", "b@y")]));
    assert!(matches!(send(&mut s, rcpt_cmd("<b@y>")), Event::Rcpt(_)));
    s.reply(Verdict::Continue).unwrap();
    drain(&mut s);
    s
}

/// A whole message up to EOM, which is left awaiting its reply.
fn at_eom(request: Request) -> MilterSession {
    let mut s = in_envelope(request);
    for cmd in [
        Command::Data,
        header_cmd("Subject", "hi"),
        Command::EndOfHeaders,
        Command::Body(b("body\r\n")),
    ] {
        send(&mut s, cmd);
        if s.reply_due() {
            s.reply(Verdict::Continue).unwrap();
        }
    }
    drain(&mut s);
    feed(&mut s, macros_cmd(b'E', &[("i", "QID1")]));
    assert_eq!(
        send(&mut s, Command::EndOfMessage(Bytes::new())),
        Event::EndOfMessage(Bytes::new())
    );
    assert!(s.reply_due());
    s
}

fn all_actions() -> Request {
    Request::new().with_actions(Actions::all() - Actions::SET_MACROS)
}

// ---- negotiation ---------------------------------------------------------------------

mod negotiation {
    use super::*;

    fn offer(version: u32, actions: Actions, protocol: ProtocolFlags) -> Offer {
        Offer {
            version,
            actions,
            protocol,
        }
    }

    #[test]
    fn postfix_v6_offer_answered_with_o_frame() {
        let mut s = MilterSession::new(SessionConfig::default());
        assert!(!s.reply_due(), "nothing received yet");
        let ev = send(&mut s, postfix_offer());
        assert_eq!(
            ev,
            Event::Negotiate(offer(6, Actions::all(), ProtocolFlags::POSTFIX_V6))
        );
        assert!(s.reply_due());
        let req = Request::new()
            .with_actions(Actions::ADD_HEADERS)
            .with_protocol(ProtocolFlags::HEADER_LEADING_SPACE | ProtocolFlags::NR_HEADER);
        let n = s.negotiate(&req).unwrap().clone();
        assert_eq!(n.version, 6);
        assert!(n.leading_space());
        assert!(!s.reply_due());
        let replies = drain(&mut s);
        assert_eq!(replies, vec![Reply::OptNeg(n.to_reply())]);
        let Reply::OptNeg(o) = &replies[0] else {
            unreachable!()
        };
        assert_eq!(o.actions, Actions::ADD_HEADERS);
        assert_eq!(
            o.protocol,
            ProtocolFlags::HEADER_LEADING_SPACE | ProtocolFlags::NR_HEADER
        );
        assert_eq!(s.negotiated(), Some(&n));
    }

    #[test]
    fn v2_mta() {
        // An old Sendmail: version 2, the v2 action and protocol sets.
        let o = offer(
            2,
            Actions::from_bits_truncate(0x1f),
            ProtocolFlags::from_bits_truncate(0x7f),
        );
        let n = negotiate(
            &o,
            &Request::new()
                .with_actions(Actions::ADD_HEADERS)
                .with_protocol(ProtocolFlags::NO_BODY),
        )
        .unwrap();
        assert_eq!(n.version, 2);
        assert!(n.skipped(b'B'));
        // Events that version lacks are not expected either.
        assert!(n.skipped(b'T'));
        assert!(n.skipped(b'U'));
        assert!(!n.skipped(b'L'));
    }

    #[test]
    fn version_capped_at_6() {
        let n = negotiate(
            &offer(7, Actions::empty(), ProtocolFlags::empty()),
            &Request::new(),
        )
        .unwrap();
        assert_eq!(n.version, 6);
    }

    #[test]
    fn version_below_2_refused_and_session_unchanged() {
        let mut s = MilterSession::new(SessionConfig::default());
        feed(
            &mut s,
            Command::OptNeg(OptNeg {
                version: 1,
                actions: Actions::all(),
                protocol: ProtocolFlags::POSTFIX_V6,
            }),
        );
        assert!(matches!(s.poll_event(), Ok(Some(Event::Negotiate(_)))));
        assert_eq!(
            s.negotiate(&Request::new()).unwrap_err(),
            NegotiateError::UnsupportedVersion(1)
        );
        assert!(s.output().is_empty());
        assert!(s.negotiated().is_none());
        assert!(s.reply_due());
    }

    #[test]
    fn actions_not_offered() {
        let o = offer(6, Actions::ADD_HEADERS, ProtocolFlags::POSTFIX_V6);
        let err = negotiate(
            &o,
            &Request::new().with_actions(Actions::ADD_HEADERS | Actions::CHANGE_BODY),
        )
        .unwrap_err();
        assert_eq!(
            err,
            NegotiateError::ActionsNotOffered {
                missing: Actions::CHANGE_BODY,
                offered: Actions::ADD_HEADERS,
            }
        );
    }

    #[test]
    fn no_reply_is_never_faked() {
        // An MTA without NR_* (e.g. Postfix with milter_protocol = 2).
        let offered = ProtocolFlags::from_bits_truncate(0x7f);
        let o = offer(6, Actions::all(), offered);
        let err =
            negotiate(&o, &Request::new().with_protocol(ProtocolFlags::NR_HEADER)).unwrap_err();
        assert_eq!(
            err,
            NegotiateError::ProtocolNotOffered {
                missing: ProtocolFlags::NR_HEADER,
                offered,
            }
        );
    }

    #[test]
    fn optional_flags_used_only_if_offered() {
        let o = offer(
            6,
            Actions::all(),
            ProtocolFlags::NR_HEADER | ProtocolFlags::HEADER_LEADING_SPACE,
        );
        let n = negotiate(
            &o,
            &Request::new()
                .with_optional_protocol(ProtocolFlags::NR_HEADER | ProtocolFlags::NR_BODY),
        )
        .unwrap();
        assert_eq!(n.protocol, ProtocolFlags::NR_HEADER);
        assert!(n.no_reply(b'L'));
        assert!(!n.no_reply(b'B'));
        assert!(!n.leading_space());
    }

    #[test]
    fn macro_lists_appended_with_set_macros() {
        let mut s = MilterSession::new(SessionConfig::default());
        send(&mut s, postfix_offer());
        let req = Request::new()
            .with_macros(Stage::Connect, ["j", "{daemon_name}"])
            .with_macros(Stage::EndOfMessage, ["i"]);
        let n = s.negotiate(&req).unwrap().clone();
        assert_eq!(n.actions, Actions::SET_MACROS);
        let replies = drain(&mut s);
        let [Reply::OptNeg(o)] = replies.as_slice() else {
            panic!("{replies:?}")
        };
        assert_eq!(
            o.macros,
            vec![
                MacroRequest {
                    stage: Stage::Connect,
                    names: vec!["j".into(), "{daemon_name}".into()]
                },
                MacroRequest {
                    stage: Stage::EndOfMessage,
                    names: vec!["i".into()]
                },
            ]
        );
        assert!(o.actions.contains(Actions::SET_MACROS));
    }

    #[test]
    fn macro_lists_refused_without_set_macros_offered() {
        let o = offer(
            6,
            Actions::all() - Actions::SET_MACROS,
            ProtocolFlags::POSTFIX_V6,
        );
        let err =
            negotiate(&o, &Request::new().with_macros(Stage::Helo, ["{cipher}"])).unwrap_err();
        assert_eq!(
            err,
            NegotiateError::ActionsNotOffered {
                missing: Actions::SET_MACROS,
                offered: Actions::all() - Actions::SET_MACROS,
            }
        );
        // Without macro lists, the answer does not carry SET_MACROS.
        let n = negotiate(&o, &Request::new()).unwrap();
        assert!(!n.actions.contains(Actions::SET_MACROS));
    }

    #[test]
    fn invalid_macro_names_refused() {
        let o = offer(6, Actions::all(), ProtocolFlags::POSTFIX_V6);
        for bad in ["", "a b", "x\0y"] {
            let err =
                negotiate(&o, &Request::new().with_macros(Stage::MailFrom, [bad])).unwrap_err();
            assert!(
                matches!(
                    err,
                    NegotiateError::InvalidMacroRequest {
                        stage: Stage::MailFrom,
                        ..
                    }
                ),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn negotiate_out_of_turn() {
        let mut s = MilterSession::new(SessionConfig::default());
        assert_eq!(
            s.negotiate(&Request::new()).unwrap_err(),
            NegotiateError::NotPending
        );
        send(&mut s, postfix_offer());
        s.negotiate(&Request::new()).unwrap();
        assert_eq!(
            s.negotiate(&Request::new()).unwrap_err(),
            NegotiateError::NotPending
        );
        assert_eq!(drain(&mut s).len(), 1, "one O reply only");
    }

    #[test]
    fn verdict_is_not_a_negotiation_answer() {
        let mut s = MilterSession::new(SessionConfig::default());
        send(&mut s, postfix_offer());
        assert!(matches!(
            s.reply(Verdict::Continue),
            Err(UsageError::VerdictNotAllowed {
                command: "OPTNEG",
                ..
            })
        ));
        assert!(s.output().is_empty());
    }

    #[test]
    fn command_before_negotiation_refused() {
        let mut s = MilterSession::new(SessionConfig::default());
        let e = send_err(&mut s, connect_cmd());
        assert!(unexpected(b'C')(&e), "{e:?}");
        let mut s = MilterSession::new(SessionConfig::default());
        let e = send_err(&mut s, macros_cmd(b'C', &[]));
        assert!(unexpected(b'D')(&e), "{e:?}");
    }

    #[test]
    fn command_while_negotiation_pending_refused() {
        let mut s = MilterSession::new(SessionConfig::default());
        send(&mut s, postfix_offer());
        let e = send_err(&mut s, connect_cmd());
        assert!(unexpected(b'C')(&e), "{e:?}");
    }

    #[test]
    fn second_optneg_refused() {
        let mut s = connected(Request::new());
        let e = send_err(&mut s, postfix_offer());
        assert!(unexpected(b'O')(&e), "{e:?}");
    }

    #[test]
    fn no_reply_table() {
        let n = Negotiated {
            version: 6,
            actions: Actions::empty(),
            protocol: ProtocolFlags::ALL_NO_REPLY,
            macros: vec![],
        };
        for c in *b"CHMRTLNBUDAQK" {
            assert!(n.no_reply(c), "{}", c as char);
        }
        assert!(!n.no_reply(b'E'), "EOM always needs a reply");
        assert!(!n.no_reply(b'O'));
        let none = Negotiated {
            protocol: ProtocolFlags::empty(),
            ..n
        };
        for c in *b"CHMRTLNBUE" {
            assert!(!none.no_reply(c), "{}", c as char);
        }
        for c in *b"DAQK" {
            assert!(none.no_reply(c), "{}", c as char);
        }
    }
}

// ---- reply discipline ----------------------------------------------------------------

mod reply_discipline {
    use super::*;

    #[test]
    fn one_final_reply_per_command() {
        let mut s = negotiated(Request::new());
        send(&mut s, connect_cmd());
        assert!(s.reply_due());
        s.reply(Verdict::Continue).unwrap();
        assert!(!s.reply_due());
        assert_eq!(s.reply(Verdict::Continue), Err(UsageError::NoReplyDue));
        assert_eq!(s.reply(Verdict::Reject), Err(UsageError::NoReplyDue));
        assert_eq!(drain(&mut s), continue_reply());
    }

    #[test]
    fn reply_code_is_the_verdict() {
        let mut s = in_envelope(Request::new());
        send(&mut s, rcpt_cmd("<c@y>"));
        let r = SmtpReply::new(550, Some("5.1.1"), "no such user").unwrap();
        s.reply(Verdict::Reply(r.clone())).unwrap();
        assert_eq!(s.reply(Verdict::Reject), Err(UsageError::NoReplyDue));
        assert_eq!(drain(&mut s), vec![Reply::Verdict(Verdict::Reply(r))]);
    }

    #[test]
    fn no_reply_to_abort() {
        let mut s = in_envelope(Request::new());
        assert_eq!(send(&mut s, Command::Abort), Event::Abort);
        assert!(!s.reply_due());
        assert_eq!(s.reply(Verdict::Continue), Err(UsageError::NoReplyDue));
        assert!(s.output().is_empty());
    }

    #[test]
    fn no_reply_to_macros() {
        let mut s = negotiated(Request::new());
        feed(&mut s, macros_cmd(b'C', &[("j", "mx")]));
        assert_eq!(s.poll_event(), Ok(None));
        assert!(!s.reply_due());
        assert_eq!(s.reply(Verdict::Continue), Err(UsageError::NoReplyDue));
        assert_eq!(s.macros().get("j"), Some(&b"mx"[..]));
    }

    #[test]
    fn no_reply_after_quit() {
        let mut s = connected(Request::new());
        assert_eq!(send(&mut s, Command::Quit), Event::Quit);
        assert!(s.is_closed());
        assert!(!s.reply_due());
        assert_eq!(s.reply(Verdict::Continue), Err(UsageError::Closed));
        assert!(s.output().is_empty());
    }

    #[test]
    fn no_reply_stage_swallows_continue() {
        let mut s = in_envelope(Request::new().with_protocol(ProtocolFlags::NR_HEADER));
        send(&mut s, Command::Data);
        s.reply(Verdict::Continue).unwrap();
        drain(&mut s);
        let ev = send(&mut s, header_cmd("Subject", "x"));
        assert!(matches!(ev, Event::Header { .. }));
        assert!(!s.reply_due());
        s.reply(Verdict::Continue).unwrap();
        assert!(s.output().is_empty(), "Continue swallowed at an NR stage");
        // Only one swallowed Continue per event.
        assert_eq!(s.reply(Verdict::Continue), Err(UsageError::NoReplyDue));
        // The next event still works.
        send(&mut s, header_cmd("To", "y"));
        s.reply(Verdict::Continue).unwrap();
        assert!(s.output().is_empty());
    }

    #[test]
    fn no_reply_stage_refuses_other_verdicts() {
        let mut s = in_envelope(
            Request::new().with_protocol(ProtocolFlags::NR_HEADER | ProtocolFlags::NR_RCPT),
        );
        send(&mut s, rcpt_cmd("<c@y>"));
        assert_eq!(s.reply(Verdict::Reject), Err(UsageError::NoReplyDue));
        send(&mut s, Command::Data);
        s.reply(Verdict::Continue).unwrap();
        drain(&mut s);
        send(&mut s, header_cmd("Subject", "x"));
        assert_eq!(s.reply(Verdict::Tempfail), Err(UsageError::NoReplyDue));
        assert!(s.output().is_empty());
        assert!(s.in_transaction(), "a refused verdict changes nothing");
    }

    #[test]
    fn modification_outside_eom_refused() {
        let mut s = in_envelope(all_actions());
        send(&mut s, rcpt_cmd("<c@y>"));
        let m = Modification::AddHeader {
            name: b("X-A"),
            value: b("1"),
        };
        assert_eq!(
            s.modify(m.clone()),
            Err(UsageError::NotAtEndOfMessage("add header"))
        );
        s.reply(Verdict::Continue).unwrap();
        assert_eq!(
            s.modify(m),
            Err(UsageError::NotAtEndOfMessage("add header"))
        );
        assert_eq!(drain(&mut s), continue_reply(), "nothing queued");
    }

    #[test]
    fn modification_after_final_eom_reply_refused() {
        let mut s = at_eom(all_actions());
        s.reply(Verdict::Continue).unwrap();
        assert!(matches!(
            s.modify(Modification::AddRcpt {
                address: b("<x@y>")
            }),
            Err(UsageError::NotAtEndOfMessage(_))
        ));
        assert_eq!(drain(&mut s), continue_reply());
    }

    #[test]
    fn modification_not_negotiated_refused() {
        let mut s = at_eom(Request::new().with_actions(Actions::ADD_HEADERS));
        assert_eq!(
            s.modify(Modification::delete_header("X-Old", 1)),
            Err(UsageError::ActionNotNegotiated {
                modification: "delete header",
                needed: Actions::CHANGE_HEADERS,
            })
        );
        assert_eq!(
            s.modify(Modification::ReplaceBody(b("x"))),
            Err(UsageError::ActionNotNegotiated {
                modification: "replace body",
                needed: Actions::CHANGE_BODY,
            })
        );
        assert!(s.output().is_empty());
        s.modify(Modification::AddHeader {
            name: b("X-Ok"),
            value: b("1"),
        })
        .unwrap();
        assert_eq!(drain(&mut s).len(), 1);
    }

    #[test]
    fn invalid_modification_refused() {
        let mut s = at_eom(all_actions());
        assert!(matches!(
            s.modify(Modification::AddHeader {
                name: b("Bad Name"),
                value: b("v"),
            }),
            Err(UsageError::InvalidField { .. })
        ));
        assert!(matches!(
            s.modify(Modification::AddRcpt {
                address: Bytes::from_static(b"<a\0b>"),
            }),
            Err(UsageError::InvalidField { .. })
        ));
        assert!(matches!(
            s.modify(Modification::Quarantine {
                reason: Bytes::new()
            }),
            Err(UsageError::InvalidField { .. })
        ));
        assert!(s.output().is_empty());
    }

    #[test]
    fn modification_over_send_cap_refused() {
        let mut s = at_eom(all_actions());
        let big = Bytes::from(vec![b'a'; 70_000]);
        assert!(matches!(
            s.modify(Modification::AddHeader {
                name: b("X-Big"),
                value: big,
            }),
            Err(UsageError::InvalidField {
                field: "add header",
                ..
            })
        ));
        assert!(s.output().is_empty());
    }

    #[test]
    fn modifications_then_verdict_in_order() {
        let mut s = at_eom(all_actions());
        let mods = vec![
            Modification::InsertHeader {
                index: 0,
                name: b("DKIM-Signature"),
                value: b(" v=1"),
            },
            Modification::ChangeHeader {
                index: 1,
                name: b("Subject"),
                value: b("[spam] hi"),
            },
            Modification::ChangeFrom {
                address: b("<bounce@x>"),
                args: None,
            },
            Modification::AddRcptWithArgs {
                address: b("<archive@x>"),
                args: Some(b("NOTIFY=NEVER")),
            },
            Modification::DeleteRcpt {
                address: b("<b@y>"),
            },
            Modification::Quarantine { reason: b("held") },
        ];
        for m in mods.clone() {
            s.modify(m).unwrap();
        }
        s.progress().unwrap();
        s.reply(Verdict::Continue).unwrap();
        let mut expect: Vec<Reply> = mods.into_iter().map(Reply::Modification).collect();
        expect.push(Reply::Progress);
        expect.push(Reply::Verdict(Verdict::Continue));
        assert_eq!(drain(&mut s), expect);
        assert!(!s.in_transaction());
    }

    #[test]
    fn skip_only_for_body() {
        let mut s = in_envelope(Request::new().with_protocol(ProtocolFlags::SKIP));
        send(&mut s, Command::Data);
        assert_eq!(
            s.reply(Verdict::Skip),
            Err(UsageError::VerdictNotAllowed {
                verdict: "skip",
                command: "DATA"
            })
        );
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, Command::EndOfHeaders);
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, Command::Body(b("chunk 1")));
        s.reply(Verdict::Skip).unwrap();
        assert!(s.in_transaction(), "skip keeps the message");
        // The MTA may still send body it had in flight, then EOM.
        send(&mut s, Command::EndOfMessage(Bytes::new()));
        assert_eq!(
            s.reply(Verdict::Skip),
            Err(UsageError::VerdictNotAllowed {
                verdict: "skip",
                command: "EOM"
            })
        );
        s.reply(Verdict::Continue).unwrap();
        assert_eq!(
            drain(&mut s),
            vec![
                Reply::Verdict(Verdict::Continue),
                Reply::Verdict(Verdict::Continue),
                Reply::Verdict(Verdict::Skip),
                Reply::Verdict(Verdict::Continue),
            ]
        );
    }

    #[test]
    fn skip_needs_negotiation() {
        let mut s = in_envelope(Request::new());
        send(&mut s, Command::Data);
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, Command::Body(b("chunk")));
        assert_eq!(
            s.reply(Verdict::Skip),
            Err(UsageError::ProtocolNotNegotiated {
                what: "skip",
                needed: ProtocolFlags::SKIP
            })
        );
        assert!(s.reply_due(), "still owed");
        s.reply(Verdict::Continue).unwrap();
        assert_eq!(drain(&mut s), vec![Reply::Verdict(Verdict::Continue); 2]);
    }

    #[test]
    fn progress_only_at_eom() {
        let mut s = in_envelope(Request::new());
        send(&mut s, Command::Data);
        assert_eq!(s.progress(), Err(UsageError::NotAtEndOfMessage("progress")));
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, Command::EndOfMessage(Bytes::new()));
        s.progress().unwrap();
        s.progress().unwrap();
        s.reply(Verdict::Accept).unwrap();
        assert_eq!(s.progress(), Err(UsageError::NotAtEndOfMessage("progress")));
        assert_eq!(
            drain(&mut s),
            vec![
                Reply::Verdict(Verdict::Continue),
                Reply::Progress,
                Reply::Progress,
                Reply::Verdict(Verdict::Accept),
            ]
        );
    }

    #[test]
    fn discard_only_at_message_stages() {
        let mut s = negotiated(Request::new());
        send(&mut s, connect_cmd());
        assert_eq!(
            s.reply(Verdict::Discard),
            Err(UsageError::VerdictNotAllowed {
                verdict: "discard",
                command: "CONNECT"
            })
        );
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, Command::Helo(b("h")));
        assert!(matches!(
            s.reply(Verdict::Discard),
            Err(UsageError::VerdictNotAllowed { .. })
        ));
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, Command::Unknown(b("XFOO")));
        assert!(matches!(
            s.reply(Verdict::Discard),
            Err(UsageError::VerdictNotAllowed { .. })
        ));
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, mail_cmd("<a@x>"));
        s.reply(Verdict::Discard).unwrap();
        assert!(!s.in_transaction(), "discard at MAIL ends the message");
        assert_eq!(
            drain(&mut s),
            vec![
                Reply::Verdict(Verdict::Continue),
                Reply::Verdict(Verdict::Continue),
                Reply::Verdict(Verdict::Continue),
                Reply::Verdict(Verdict::Discard),
            ]
        );
    }

    #[test]
    fn replace_body_split_into_max_chunk_frames() {
        let mut s = at_eom(all_actions());
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        s.modify(Modification::ReplaceBody(Bytes::from(body.clone())))
            .unwrap();
        s.reply(Verdict::Continue).unwrap();
        let frames = drain_frames(&mut s);
        let sizes: Vec<usize> = frames.iter().map(|f| f.payload.len()).collect();
        assert_eq!(sizes, vec![65535, 65535, 65535, 3395, 0]);
        assert!(frames[..4].iter().all(|f| f.code == b'b'));
        assert_eq!(frames[4].code, b'c');
        let joined: Vec<u8> = frames[..4]
            .iter()
            .flat_map(|f| f.payload.iter().copied())
            .collect();
        assert_eq!(joined, body);
    }

    #[test]
    fn replace_body_respects_configured_send_cap() {
        let config = SessionConfig {
            max_send: 1000,
            ..SessionConfig::default()
        };
        let mut s = MilterSession::new(config);
        send(&mut s, postfix_offer());
        s.negotiate(&all_actions()).unwrap();
        send(&mut s, connect_cmd());
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, mail_cmd("<a@x>"));
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, rcpt_cmd("<b@y>"));
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, Command::EndOfMessage(Bytes::new()));
        drain(&mut s);
        s.modify(Modification::ReplaceBody(Bytes::from(vec![b'x'; 2500])))
            .unwrap();
        let sizes: Vec<usize> = drain_frames(&mut s)
            .iter()
            .map(|f| f.payload.len())
            .collect();
        assert_eq!(sizes, vec![1000, 1000, 500]);
    }

    #[test]
    fn empty_replace_body_sends_one_empty_frame() {
        let mut s = at_eom(all_actions());
        s.modify(Modification::ReplaceBody(Bytes::new())).unwrap();
        let frames = drain_frames(&mut s);
        assert_eq!(frames, vec![Frame::new(b'b', Bytes::new())]);
    }

    #[test]
    fn nothing_after_body_replacement() {
        let mut s = at_eom(all_actions());
        // Other modifications before the body are fine.
        s.modify(Modification::AddHeader {
            name: b("X-A"),
            value: b("1"),
        })
        .unwrap();
        s.modify(Modification::ReplaceBody(b("new\r\n"))).unwrap();
        assert_eq!(
            s.modify(Modification::ReplaceBody(b("more\r\n"))),
            Err(UsageError::BodyReplacementInterleaved)
        );
        assert_eq!(
            s.modify(Modification::AddHeader {
                name: b("X-B"),
                value: b("2"),
            }),
            Err(UsageError::BodyReplacementInterleaved)
        );
        // Progress and the verdict are still allowed.
        s.progress().unwrap();
        s.reply(Verdict::Continue).unwrap();
        let codes: Vec<u8> = drain_frames(&mut s).iter().map(|f| f.code).collect();
        assert_eq!(codes, b"hbpc".to_vec());
    }

    #[test]
    fn body_replacement_allowed_again_in_next_message() {
        let mut s = at_eom(all_actions());
        s.modify(Modification::ReplaceBody(b("one\r\n"))).unwrap();
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, mail_cmd("<a@x>"));
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, rcpt_cmd("<b@y>"));
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, Command::EndOfMessage(Bytes::new()));
        s.modify(Modification::ReplaceBody(b("two\r\n"))).unwrap();
    }
}

// ---- command order -------------------------------------------------------------------

mod command_order {
    use super::*;

    #[test]
    fn header_before_connect() {
        let mut s = negotiated(Request::new());
        let e = send_err(&mut s, header_cmd("Subject", "x"));
        assert_eq!(
            e,
            ProtocolError::UnexpectedCommand {
                code: Code(b'L'),
                state: "before CONNECT"
            }
        );
    }

    #[test]
    fn body_before_mail() {
        let mut s = connected(Request::new());
        let e = send_err(&mut s, Command::Body(b("x")));
        assert_eq!(
            e,
            ProtocolError::UnexpectedCommand {
                code: Code(b'B'),
                state: "before RCPT"
            }
        );
    }

    #[test]
    fn rcpt_before_mail() {
        let mut s = connected(Request::new());
        let e = send_err(&mut s, rcpt_cmd("<b@y>"));
        assert_eq!(
            e,
            ProtocolError::UnexpectedCommand {
                code: Code(b'R'),
                state: "before MAIL"
            }
        );
    }

    #[test]
    fn data_before_rcpt() {
        let mut s = connected(Request::new());
        send(&mut s, mail_cmd("<a@x>"));
        s.reply(Verdict::Continue).unwrap();
        let e = send_err(&mut s, Command::Data);
        assert!(unexpected(b'T')(&e), "{e:?}");
    }

    #[test]
    fn command_while_reply_due() {
        let mut s = connected(Request::new());
        send(&mut s, mail_cmd("<a@x>"));
        let e = send_err(&mut s, rcpt_cmd("<b@y>"));
        assert_eq!(
            e,
            ProtocolError::UnexpectedCommand {
                code: Code(b'R'),
                state: "while a reply is due"
            }
        );
    }

    #[test]
    fn macros_while_reply_due() {
        let mut s = connected(Request::new());
        send(&mut s, mail_cmd("<a@x>"));
        let e = send_err(&mut s, macros_cmd(b'R', &[]));
        assert!(unexpected(b'D')(&e), "{e:?}");
    }

    #[test]
    fn second_connect() {
        let mut s = connected(Request::new());
        let e = send_err(&mut s, connect_cmd());
        assert!(unexpected(b'C')(&e), "{e:?}");
    }

    #[test]
    fn mail_inside_a_message() {
        let mut s = in_envelope(Request::new());
        let e = send_err(&mut s, mail_cmd("<c@x>"));
        assert!(unexpected(b'M')(&e), "{e:?}");
    }

    #[test]
    fn content_out_of_order() {
        let mut s = in_envelope(Request::new());
        send(&mut s, Command::Data);
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, Command::EndOfHeaders);
        s.reply(Verdict::Continue).unwrap();
        let e = send_err(&mut s, header_cmd("Late", "x"));
        assert_eq!(
            e,
            ProtocolError::UnexpectedCommand {
                code: Code(b'L'),
                state: "out of order in the message"
            }
        );
    }

    #[test]
    fn data_twice() {
        let mut s = in_envelope(Request::new());
        send(&mut s, Command::Data);
        s.reply(Verdict::Continue).unwrap();
        let e = send_err(&mut s, Command::Data);
        assert!(unexpected(b'T')(&e), "{e:?}");
    }

    #[test]
    fn rcpt_and_unknown_inside_content() {
        let mut s = in_envelope(Request::new());
        send(&mut s, Command::Data);
        s.reply(Verdict::Continue).unwrap();
        let e = send_err(&mut s, rcpt_cmd("<c@y>"));
        assert!(unexpected(b'R')(&e), "{e:?}");
        let mut s = in_envelope(Request::new());
        send(&mut s, Command::Data);
        s.reply(Verdict::Continue).unwrap();
        let e = send_err(&mut s, Command::Unknown(b("XFOO")));
        assert!(unexpected(b'U')(&e), "{e:?}");
    }

    #[test]
    fn unknown_and_helo_in_envelope_allowed() {
        let mut s = in_envelope(Request::new());
        assert_eq!(
            send(&mut s, Command::Unknown(b("XFOO"))),
            Event::Unknown(b("XFOO"))
        );
        s.reply(Verdict::Reject).unwrap();
        assert!(s.in_transaction(), "a verdict at UNKNOWN keeps the message");
        send(&mut s, rcpt_cmd("<c@y>"));
        s.reply(Verdict::Continue).unwrap();
        // Postfix sends HELO after MAIL as is, then aborts.
        assert_eq!(
            send(&mut s, Command::Helo(b("again"))),
            Event::Helo(b("again"))
        );
        s.reply(Verdict::Continue).unwrap();
        assert_eq!(send(&mut s, Command::Abort), Event::Abort);
        assert!(!s.in_transaction());
    }

    #[test]
    fn skipped_steps_may_be_absent() {
        let mut s = negotiated(Request::new().with_protocol(
            ProtocolFlags::NO_CONNECT
                | ProtocolFlags::NO_HELO
                | ProtocolFlags::NO_MAIL
                | ProtocolFlags::NO_DATA,
        ));
        // No CONNECT, no MAIL: RCPT is the first event.
        feed(&mut s, macros_cmd(b'C', &[("j", "mx")]));
        send(&mut s, rcpt_cmd("<b@y>"));
        assert!(s.in_transaction());
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, header_cmd("Subject", "x"));
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, Command::EndOfMessage(Bytes::new()));
        s.reply(Verdict::Continue).unwrap();
        assert!(!s.in_transaction());
    }

    #[test]
    fn steps_not_negotiated_away_are_required() {
        let mut s = negotiated(Request::new().with_protocol(ProtocolFlags::NO_HELO));
        let e = send_err(&mut s, mail_cmd("<a@x>"));
        assert!(unexpected(b'M')(&e), "{e:?}");
    }

    #[test]
    fn message_without_headers_or_body() {
        let mut s = in_envelope(Request::new());
        for cmd in [Command::Data, Command::EndOfHeaders] {
            send(&mut s, cmd);
            s.reply(Verdict::Continue).unwrap();
        }
        send(&mut s, Command::EndOfMessage(Bytes::new()));
        s.reply(Verdict::Continue).unwrap();
    }

    #[test]
    fn frame_after_quit() {
        let mut s = connected(Request::new());
        send(&mut s, Command::Quit);
        let e = send_err(&mut s, Command::Helo(b("x")));
        assert_eq!(
            e,
            ProtocolError::UnexpectedCommand {
                code: Code(b'H'),
                state: "after QUIT"
            }
        );
    }

    #[test]
    fn quit_anywhere() {
        // Before negotiation.
        let mut s = MilterSession::new(SessionConfig::default());
        assert_eq!(send(&mut s, Command::Quit), Event::Quit);
        // While a reply is due.
        let mut s = connected(Request::new());
        send(&mut s, mail_cmd("<a@x>"));
        assert_eq!(send(&mut s, Command::Quit), Event::Quit);
        assert!(!s.reply_due());
    }

    #[test]
    fn protocol_errors_are_sticky() {
        let mut s = negotiated(Request::new());
        let e = send_err(&mut s, header_cmd("Subject", "x"));
        feed(&mut s, connect_cmd());
        assert_eq!(s.poll_event(), Err(e));
    }

    #[test]
    fn malformed_frame_is_a_protocol_error() {
        let mut s = negotiated(Request::new());
        s.read_buf().extend_from_slice(&[0, 0, 0, 2, b'C', b'x']);
        assert!(matches!(
            s.poll_event(),
            Err(ProtocolError::Malformed {
                code: Code(b'C'),
                ..
            })
        ));
        let mut s = negotiated(Request::new());
        s.read_buf().extend_from_slice(&[0, 0, 0, 1, b'Z']);
        assert_eq!(
            s.poll_event(),
            Err(ProtocolError::UnknownCommand(Code(b'Z')))
        );
    }

    #[test]
    fn frame_cap_and_macro_limit() {
        let config = SessionConfig {
            max_frame: 100,
            macro_limit: 20,
            ..SessionConfig::default()
        };
        let mut s = MilterSession::new(config);
        send(&mut s, postfix_offer());
        s.negotiate(&Request::new()).unwrap();
        feed(
            &mut s,
            macros_cmd(b'C', &[("{daemon_name}", "a-name-too-long-to-keep")]),
        );
        assert!(matches!(
            s.poll_event(),
            Err(ProtocolError::Malformed {
                code: Code(b'D'),
                ..
            })
        ));
        let mut s = MilterSession::new(config);
        s.read_buf().extend_from_slice(&[0, 0, 0, 200, b'O']);
        assert_eq!(
            s.poll_event(),
            Err(ProtocolError::FrameTooLarge { len: 200, max: 100 })
        );
    }

    #[test]
    fn partial_frames_wait_and_eof_reports_truncation() {
        let mut s = MilterSession::new(SessionConfig::default());
        let mut wire = BytesMut::new();
        postfix_offer().encode(&mut wire);
        let (head, tail) = wire.split_at(7);
        s.read_buf().extend_from_slice(head);
        assert_eq!(s.poll_event(), Ok(None));
        assert_eq!(s.eof(), Err(ProtocolError::Truncated { have: 7, need: 17 }));
        let mut s = MilterSession::new(SessionConfig::default());
        s.read_buf().extend_from_slice(head);
        assert_eq!(s.poll_event(), Ok(None));
        s.read_buf().extend_from_slice(tail);
        assert!(matches!(s.poll_event(), Ok(Some(Event::Negotiate(_)))));
        assert_eq!(s.eof(), Ok(()));
    }
}

// ---- abort, several messages, connection reuse ---------------------------------------

mod lifecycle {
    use super::*;

    #[test]
    fn abort_returns_to_pre_mail_state() {
        let mut s = in_envelope(Request::new());
        send(&mut s, Command::Data);
        s.reply(Verdict::Continue).unwrap();
        assert!(s.in_transaction());
        assert_eq!(send(&mut s, Command::Abort), Event::Abort);
        assert!(!s.in_transaction());
        // RCPT now needs a new MAIL.
        let mut s2 = in_envelope(Request::new());
        send(&mut s2, Command::Abort);
        let e = send_err(&mut s2, rcpt_cmd("<b@y>"));
        assert!(unexpected(b'R')(&e), "{e:?}");
        // MAIL is accepted.
        assert!(matches!(send(&mut s, mail_cmd("<n@x>")), Event::Mail(_)));
    }

    #[test]
    fn abort_keeps_connection_state_and_drops_message_macros() {
        let mut s = in_envelope(Request::new());
        assert_eq!(s.macros().get("rcpt_addr"), Some(&b"b@y"[..]));
        assert_eq!(send(&mut s, Command::Abort), Event::Abort);
        // Still readable for the abort handler's log line ...
        assert_eq!(s.macros().get("mail_addr"), Some(&b"a@x"[..]));
        // ... and gone at the next poll.
        assert_eq!(s.poll_event(), Ok(None));
        assert_eq!(s.macros().get("mail_addr"), None);
        assert_eq!(s.macros().get("rcpt_addr"), None);
        assert_eq!(s.macros().get("j"), Some(&b"mx.example"[..]));
        assert_eq!(s.macros().get("daemon_name"), Some(&b"smtpd"[..]));
        assert_eq!(
            s.connect_info().map(|c| c.hostname.clone()),
            Some(b("client.example"))
        );
        assert_eq!(s.helo(), Some(&b"client.example"[..]));
        assert!(s.negotiated().is_some());
    }

    #[test]
    fn duplicate_aborts_absorbed() {
        let mut s = in_envelope(Request::new());
        feed(&mut s, Command::Abort);
        feed(&mut s, Command::Abort);
        feed(&mut s, Command::Abort);
        assert_eq!(s.poll_event(), Ok(Some(Event::Abort)));
        assert_eq!(s.poll_event(), Ok(None), "the repeats are not events");
        assert!(!s.reply_due());
        assert!(s.output().is_empty());
    }

    #[test]
    fn abort_outside_a_message_absorbed() {
        // Postfix at STARTTLS: HELO, ABORT, HELO.
        let mut s = connected(Request::new());
        feed(&mut s, Command::Abort);
        assert_eq!(
            send(&mut s, Command::Helo(b("after-tls"))),
            Event::Helo(b("after-tls"))
        );
        s.reply(Verdict::Continue).unwrap();
        assert_eq!(s.helo(), Some(&b"after-tls"[..]));
    }

    #[test]
    fn abort_while_reply_due_refused() {
        let mut s = in_envelope(Request::new());
        send(&mut s, rcpt_cmd("<c@y>"));
        let e = send_err(&mut s, Command::Abort);
        assert!(unexpected(b'A')(&e), "{e:?}");
    }

    #[test]
    fn several_messages_per_connection() {
        let mut s = at_eom(all_actions());
        assert_eq!(s.macros().get("i"), Some(&b"QID1"[..]));
        s.modify(Modification::AddHeader {
            name: b("X-N"),
            value: b("1"),
        })
        .unwrap();
        s.reply(Verdict::Continue).unwrap();
        assert!(!s.in_transaction());
        // Postfix: ABORT after every EOM, then the next message.
        feed(&mut s, Command::Abort);
        feed(&mut s, macros_cmd(b'M', &[("{mail_addr}", "second@x")]));
        assert!(matches!(
            send(&mut s, mail_cmd("<second@x>")),
            Event::Mail(_)
        ));
        assert_eq!(s.macros().get("i"), None, "last message's macros are gone");
        assert_eq!(s.macros().get("mail_addr"), Some(&b"second@x"[..]));
        assert_eq!(s.macros().get("j"), Some(&b"mx.example"[..]));
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, rcpt_cmd("<b@y>"));
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, Command::EndOfMessage(Bytes::new()));
        s.reply(Verdict::Reject).unwrap();
        // And a third without an abort in between.
        send(&mut s, mail_cmd("<third@x>"));
        s.reply(Verdict::Continue).unwrap();
        assert!(s.in_transaction());
    }

    #[test]
    fn reject_at_mail_ends_the_message() {
        let mut s = connected(Request::new());
        send(&mut s, mail_cmd("<a@x>"));
        s.reply(Verdict::Reject).unwrap();
        assert!(!s.in_transaction());
        let e = send_err(&mut s, rcpt_cmd("<b@y>"));
        assert!(unexpected(b'R')(&e), "{e:?}");
    }

    #[test]
    fn reject_at_rcpt_refuses_only_that_recipient() {
        let mut s = in_envelope(Request::new());
        send(&mut s, rcpt_cmd("<bad@y>"));
        s.reply(Verdict::Reject).unwrap();
        assert!(s.in_transaction());
        send(&mut s, rcpt_cmd("<temp@y>"));
        s.reply(Verdict::Tempfail).unwrap();
        send(&mut s, rcpt_cmd("<good@y>"));
        s.reply(Verdict::Continue).unwrap();
        assert_eq!(send(&mut s, Command::Data), Event::Data);
    }

    #[test]
    fn accept_at_rcpt_ends_the_message() {
        let mut s = in_envelope(Request::new());
        send(&mut s, rcpt_cmd("<c@y>"));
        s.reply(Verdict::Accept).unwrap();
        assert!(!s.in_transaction());
    }

    #[test]
    fn reject_in_content_ends_the_message() {
        let mut s = in_envelope(Request::new());
        send(&mut s, Command::Data);
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, header_cmd("Subject", "spam"));
        s.reply(Verdict::Reply(
            SmtpReply::new(554, Some("5.7.1"), "spam").unwrap(),
        ))
        .unwrap();
        assert!(!s.in_transaction());
        // Postfix then aborts; the abort is absorbed.
        feed(&mut s, Command::Abort);
        assert_eq!(s.poll_event(), Ok(None));
    }

    #[test]
    fn verdicts_at_connect_keep_the_connection_state() {
        let mut s = negotiated(Request::new());
        send(&mut s, connect_cmd());
        s.reply(Verdict::Accept).unwrap();
        assert!(s.connect_info().is_some());
        assert!(!s.in_transaction());
    }

    #[test]
    fn quit_no_close_reuses_the_connection() {
        let mut s = at_eom(Request::new().with_protocol(ProtocolFlags::HEADER_LEADING_SPACE));
        s.reply(Verdict::Continue).unwrap();
        assert_eq!(send(&mut s, Command::QuitNoClose), Event::QuitNoClose);
        assert!(!s.is_closed());
        // The old connection is readable until the next poll.
        assert!(s.connect_info().is_some());
        assert_eq!(s.poll_event(), Ok(None));
        assert!(s.connect_info().is_none());
        assert!(s.helo().is_none());
        assert_eq!(s.macros().get("j"), None);
        assert_eq!(s.phase(), Phase::Negotiation);
        // HELO before the new CONNECT is out of order.
        let mut s2 = connected(Request::new());
        send(&mut s2, Command::QuitNoClose);
        let e = send_err(&mut s2, Command::Helo(b("x")));
        assert!(unexpected(b'H')(&e), "{e:?}");
        // A new CONNECT without renegotiation; the negotiated options stay.
        let ev = send(&mut s, connect_cmd());
        assert!(matches!(ev, Event::Connect(_)));
        assert!(s.negotiated().unwrap().leading_space());
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, mail_cmd("<a@x>"));
        s.reply(Verdict::Continue).unwrap();
        // A new OPTNEG is still refused.
        let mut s3 = connected(Request::new());
        send(&mut s3, Command::QuitNoClose);
        let e = send_err(&mut s3, postfix_offer());
        assert!(unexpected(b'O')(&e), "{e:?}");
    }
}

// ---- events carry bytes as sent -------------------------------------------------------

mod events {
    use super::*;

    #[test]
    fn header_bytes_untouched() {
        let mut s = in_envelope(Request::new());
        send(&mut s, Command::Data);
        s.reply(Verdict::Continue).unwrap();
        let value = Bytes::from_static(b"  two spaces,\n\tfolded, 8-bit \xe9\xff ");
        let ev = send(
            &mut s,
            Command::Header {
                name: b("X-Weird"),
                value: value.clone(),
            },
        );
        assert_eq!(
            ev,
            Event::Header {
                name: b("X-Weird"),
                value
            }
        );
    }

    #[test]
    fn eom_with_trailing_data() {
        let mut s = in_envelope(Request::new());
        let ev = send(&mut s, Command::EndOfMessage(b("last bytes\r\n")));
        assert_eq!(ev, Event::EndOfMessage(b("last bytes\r\n")));
        assert!(s.reply_due());
    }

    #[test]
    fn connect_info_and_envelope_args() {
        let mut s = negotiated(Request::new());
        let Event::Connect(info) = send(&mut s, connect_cmd()) else {
            panic!()
        };
        assert_eq!(s.connect_info(), Some(&info));
        s.reply(Verdict::Continue).unwrap();
        let Event::Mail(env) = send(&mut s, mail_cmd("<a@x>")) else {
            panic!()
        };
        assert_eq!(env.args, vec![b("SIZE=10")]);
        assert_eq!(env.address_str(), "a@x");
        assert_eq!(Event::Mail(env).name(), "MAIL");
    }

    #[test]
    fn empty_macro_frames_for_any_stage() {
        let mut s = in_envelope(Request::new());
        for stage in *b"TLNBEAUZ" {
            feed(&mut s, macros_cmd(stage, &[]));
        }
        assert_eq!(s.poll_event(), Ok(None));
        assert_eq!(send(&mut s, Command::Data), Event::Data);
    }
}

// ---- timeout phases -------------------------------------------------------------------

mod phases {
    use super::*;

    #[test]
    fn phase_follows_the_session() {
        let mut s = MilterSession::new(SessionConfig::default());
        assert_eq!(s.phase(), Phase::Negotiation);
        send(&mut s, postfix_offer());
        assert_eq!(s.phase(), Phase::Negotiation);
        s.negotiate(&Request::new()).unwrap();
        assert_eq!(s.phase(), Phase::Negotiation, "until CONNECT");
        send(&mut s, connect_cmd());
        assert_eq!(s.phase(), Phase::Command);
        s.reply(Verdict::Continue).unwrap();
        assert_eq!(s.phase(), Phase::Idle);
        send(&mut s, Command::Helo(b("h")));
        assert_eq!(s.phase(), Phase::Command);
        s.reply(Verdict::Continue).unwrap();
        assert_eq!(s.phase(), Phase::Idle);
        send(&mut s, mail_cmd("<a@x>"));
        assert_eq!(s.phase(), Phase::Command);
        s.reply(Verdict::Continue).unwrap();
        assert_eq!(s.phase(), Phase::Command, "inside the envelope");
        send(&mut s, rcpt_cmd("<b@y>"));
        s.reply(Verdict::Continue).unwrap();
        send(&mut s, Command::Data);
        assert_eq!(s.phase(), Phase::Content);
        s.reply(Verdict::Continue).unwrap();
        assert_eq!(s.phase(), Phase::Content);
        send(&mut s, Command::EndOfMessage(Bytes::new()));
        assert_eq!(s.phase(), Phase::Content);
        s.reply(Verdict::Continue).unwrap();
        assert_eq!(s.phase(), Phase::Idle, "between messages");
    }

    #[test]
    fn content_starts_at_first_header_without_data() {
        let mut s = in_envelope(Request::new().with_protocol(ProtocolFlags::NO_DATA));
        assert_eq!(s.phase(), Phase::Command);
        send(&mut s, header_cmd("Subject", "x"));
        assert_eq!(s.phase(), Phase::Content);
    }
}
