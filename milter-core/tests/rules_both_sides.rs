//! The protocol rules from both sides: an [`MtaSession`] and a [`MilterSession`] driven
//! against each other in memory (the bytes one writes are the bytes the other reads), for
//! every command of [`rules::COMMANDS`] in every state and every reply kind, under several
//! negotiations. Where the MTA side refuses its API user ([`UsageError`]), the same frame
//! written by hand must make the milter side refuse its peer ([`ProtocolError`]) with the
//! same phrase, and the other way round for replies.

use bytes::Bytes;
use milter_core::negotiate::Request;
use milter_core::proto::command::code;
use milter_core::proto::rules::{self, Answer, Effect};
use milter_core::session::mta::{MtaConfig, MtaEvent, MtaSession, Sent};
use milter_core::session::{Event, MilterSession, SessionConfig};
use milter_core::{
    Actions, Command, ConnectInfo, Envelope, Modification, ProtocolError, ProtocolFlags, Reply,
    SmtpReply, SocketInfo, Stage, UsageError, Verdict,
};

struct Pair {
    mta: MtaSession,
    milter: MilterSession,
    /// Commands the MTA recorded but did not send (negotiated away).
    unseen: Vec<u8>,
}

fn env(a: &'static str) -> Envelope {
    Envelope {
        address: Bytes::from_static(a.as_bytes()),
        args: vec![],
    }
}

fn info() -> ConnectInfo {
    ConnectInfo {
        hostname: Bytes::from_static(b"client.example"),
        socket: SocketInfo::Unknown,
    }
}

/// The frame the MTA side would send for `c` (for commands it refuses to send).
fn command(c: u8) -> Command {
    match c {
        code::OPTNEG => Command::OptNeg(milter_core::proto::OptNeg {
            version: 6,
            actions: Actions::all(),
            protocol: ProtocolFlags::POSTFIX_V6,
        }),
        code::CONNECT => Command::Connect(info()),
        code::HELO => Command::Helo(Bytes::from_static(b"h")),
        code::MAIL => Command::Mail(env("<a@x>")),
        code::RCPT => Command::Rcpt(env("<b@y>")),
        code::DATA => Command::Data,
        code::HEADER => Command::Header {
            name: Bytes::from_static(b"Subject"),
            value: Bytes::from_static(b"x"),
        },
        code::EOH => Command::EndOfHeaders,
        code::BODY => Command::Body(Bytes::from_static(b"x\r\n")),
        code::EOB => Command::EndOfMessage(Bytes::new()),
        code::UNKNOWN => Command::Unknown(Bytes::from_static(b"FOO")),
        code::ABORT => Command::Abort,
        code::QUIT => Command::Quit,
        code::QUIT_NC => Command::QuitNoClose,
        _ => Command::Macros {
            for_command: code::MAIL,
            pairs: vec![],
        },
    }
}

/// Commands the MTA side has an API call for.
fn mta_call(m: &mut MtaSession, c: u8) -> Option<Result<Sent, UsageError>> {
    Some(match c {
        code::OPTNEG => m.negotiate(),
        code::CONNECT => m.connect(&info()),
        code::HELO => m.helo(b"h"),
        code::MAIL => m.mail(&env("<a@x>")),
        code::RCPT => m.rcpt(&env("<b@y>")),
        code::DATA => m.data(),
        code::HEADER => m.header(b"Subject", b" x"),
        code::EOH => m.end_of_headers(),
        code::BODY => m.body(b"x\r\n"),
        code::EOB => m.end_of_message(),
        code::UNKNOWN => m.unknown(b"FOO"),
        code::ABORT => m.abort().map(|()| Sent::NoReply),
        code::QUIT => m.quit().map(|()| Sent::NoReply),
        _ => return None,
    })
}

impl Pair {
    /// Negotiated with `request` against Postfix's offer.
    fn new(request: &Request) -> Pair {
        let mut p = Pair {
            mta: MtaSession::new(MtaConfig::postfix()),
            milter: MilterSession::new(SessionConfig::default()),
            unseen: Vec::new(),
        };
        p.mta.negotiate().unwrap();
        let evs = p.pump_to_milter();
        assert!(
            matches!(evs.as_slice(), [Ok(Event::Negotiate(_))]),
            "{evs:?}"
        );
        p.milter.negotiate(request).unwrap();
        let evs = p.pump_to_mta();
        assert!(
            matches!(evs.as_slice(), [Ok(MtaEvent::Negotiated(_))]),
            "{evs:?}"
        );
        p
    }

    fn pump_to_milter(&mut self) -> Vec<Result<Event, ProtocolError>> {
        let bytes = self.mta.output().split();
        self.milter.read_buf().extend_from_slice(&bytes);
        let mut out = Vec::new();
        loop {
            match self.milter.poll_event() {
                Ok(Some(e)) => out.push(Ok(e)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    fn pump_to_mta(&mut self) -> Vec<Result<MtaEvent, ProtocolError>> {
        let bytes = self.milter.output().split();
        self.mta.read_buf().extend_from_slice(&bytes);
        let mut out = Vec::new();
        loop {
            match self.mta.poll_event() {
                Ok(Some(e)) => out.push(Ok(e)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    /// Offers command `c` to both sides and checks they agree; returns whether it went.
    fn agree(&mut self, c: u8, ctx: &str) -> bool {
        let in_message = self.milter.in_transaction();
        let Some(sent) = mta_call(&mut self.mta, c) else {
            return false;
        };
        match sent {
            Ok(sent) => {
                if sent == Sent::Skipped {
                    self.unseen.push(c);
                }
                let evs = self.pump_to_milter();
                let ours: Vec<_> = evs.iter().filter(|e| e.is_err()).collect();
                assert!(
                    ours.is_empty(),
                    "{ctx}: milter refused what the MTA sent: {evs:?}"
                );
                let seen: Vec<u8> = evs.iter().flatten().map(Event::code).collect();
                let expect_event = sent != Sent::Skipped && (in_message || c != code::ABORT);
                assert_eq!(seen, if expect_event { vec![c] } else { vec![] }, "{ctx}");
                assert_eq!(
                    self.milter.reply_due(),
                    sent == Sent::AwaitingReply && c != code::QUIT,
                    "{ctx}: who owes a reply"
                );
                assert_eq!(self.milter.reply_due(), self.mta.awaiting_reply(), "{ctx}");
                true
            }
            Err(e) => {
                let phrase = match &e {
                    UsageError::OutOfOrder { state, .. } => *state,
                    UsageError::ReplyPending => "while a reply is due",
                    UsageError::Closed => "after QUIT",
                    other => panic!("{ctx}: unexpected usage error {other:?}"),
                };
                assert!(self.mta.output().is_empty(), "{ctx}: refused but queued");
                command(c).encode(self.milter.read_buf());
                let evs = self.pump_to_milter();
                let same = Err(ProtocolError::UnexpectedCommand {
                    code: milter_core::error::Code(c),
                    state: phrase,
                });
                if evs.last() != Some(&same) {
                    // The one asymmetry: the MTA always records CONNECT, MAIL and RCPT, even
                    // negotiated away, while the milter cannot see them and must take what
                    // follows them when they were (or refuse it for a later reason).
                    let step = match phrase {
                        "before CONNECT" => code::CONNECT,
                        "before MAIL" => code::MAIL,
                        "before RCPT" => code::RCPT,
                        _ => c,
                    };
                    // Some step was not sent, or (when the MTA refuses to skip ahead) the
                    // missing one was negotiated away. Without NO_* the sides agree exactly.
                    let away = self.milter.negotiated().is_some_and(|n| n.skipped(step));
                    assert!(
                        !self.unseen.is_empty() || (phrase.starts_with("before") && away),
                        "{ctx}: the MTA refused ({e}), the milter did not agree, and nothing \
                         was negotiated away: {evs:?}"
                    );
                    return false;
                }
                assert_eq!(
                    evs.last(),
                    Some(&Err(ProtocolError::UnexpectedCommand {
                        code: milter_core::error::Code(c),
                        state: phrase,
                    })),
                    "{ctx}: the MTA refused ({e}), the milter must too: {evs:?}"
                );
                false
            }
        }
    }

    /// Answers `v` on the milter side if a reply is due, checking the MTA takes it.
    fn answer(&mut self, v: Verdict) {
        if !self.milter.reply_due() {
            return;
        }
        let c = self.mta.pending().unwrap();
        self.milter.reply(v.clone()).unwrap();
        let evs = self.pump_to_mta();
        assert_eq!(
            evs,
            vec![Ok(MtaEvent::Verdict {
                command: c,
                verdict: v
            })]
        );
    }
}

/// Negotiations the walks run under: plain, every NR_*, several NO_* sets, SKIP.
fn requests() -> Vec<(&'static str, Request)> {
    let f = ProtocolFlags::empty;
    vec![
        ("plain", Request::new()),
        (
            "all NR",
            Request::new().with_protocol(ProtocolFlags::ALL_NO_REPLY),
        ),
        (
            "NO_CONNECT",
            Request::new().with_protocol(ProtocolFlags::NO_CONNECT),
        ),
        (
            "NO_MAIL|NO_RCPT",
            Request::new().with_protocol(ProtocolFlags::NO_MAIL | ProtocolFlags::NO_RCPT),
        ),
        (
            "NO content",
            Request::new().with_protocol(
                f() | ProtocolFlags::NO_HELO
                    | ProtocolFlags::NO_DATA
                    | ProtocolFlags::NO_HEADERS
                    | ProtocolFlags::NO_EOH
                    | ProtocolFlags::NO_BODY
                    | ProtocolFlags::NO_UNKNOWN,
            ),
        ),
        ("SKIP", Request::new().with_protocol(ProtocolFlags::SKIP)),
    ]
}

/// States to walk from: command prefixes, each answered with the verdict given (None:
/// left pending).
fn prefixes() -> Vec<Vec<(u8, Option<Verdict>)>> {
    let c = Some(Verdict::Continue);
    let steps = [
        code::CONNECT,
        code::HELO,
        code::MAIL,
        code::RCPT,
        code::RCPT,
        code::DATA,
        code::HEADER,
        code::EOH,
        code::BODY,
        code::EOB,
    ];
    let mut out = vec![vec![]];
    // Every prefix of a whole message, answered, and with its last command pending.
    for n in 1..=steps.len() {
        let answered: Vec<_> = steps[..n].iter().map(|&s| (s, c.clone())).collect();
        let mut pending = answered.clone();
        pending.last_mut().unwrap().1 = None;
        out.push(answered);
        out.push(pending);
    }
    // Connection ended by the milter, message ended early, recipient refused, after QUIT.
    out.push(vec![(code::CONNECT, Some(Verdict::Reject))]);
    out.push(vec![
        (code::CONNECT, c.clone()),
        (code::MAIL, Some(Verdict::Accept)),
    ]);
    out.push(vec![
        (code::CONNECT, c.clone()),
        (code::MAIL, c.clone()),
        (code::RCPT, Some(Verdict::Reject)),
    ]);
    out.push(vec![(code::CONNECT, c.clone()), (code::HEADER, c.clone())]);
    out.push(vec![(code::CONNECT, c.clone()), (code::QUIT, None)]);
    out.push(vec![
        (code::CONNECT, c.clone()),
        (code::MAIL, c.clone()),
        (code::ABORT, None),
    ]);
    out
}

/// Drives a prefix through both sides; `None` if a step was (rightly) refused on both.
fn reach(request: &Request, prefix: &[(u8, Option<Verdict>)], ctx: &str) -> Option<Pair> {
    let mut p = Pair::new(request);
    for (c, v) in prefix {
        if !p.agree(*c, ctx) {
            return None;
        }
        if let Some(v) = v {
            p.answer(v.clone());
        }
    }
    Some(p)
}

#[test]
fn every_command_in_every_state_is_taken_or_refused_by_both_sides() {
    let mut taken = 0;
    let mut refused = 0;
    for (name, request) in requests() {
        for prefix in prefixes() {
            for rule in &rules::COMMANDS {
                let ctx = format!(
                    "{name}: {} after {:?}",
                    rule.name,
                    prefix
                        .iter()
                        .map(|(c, v)| format!("{}={:?}", *c as char, v))
                        .collect::<Vec<_>>()
                );
                let Some(mut p) = reach(&request, &prefix, &ctx) else {
                    continue;
                };
                if mta_call(&mut MtaSession::new(MtaConfig::postfix()), rule.code).is_none() {
                    continue; // MACRO and QUIT_NC: no MTA call (see the module docs)
                }
                if p.agree(rule.code, &ctx) {
                    taken += 1;
                } else {
                    refused += 1;
                }
            }
        }
    }
    // Both outcomes were exercised many times.
    assert!(
        taken > 200 && refused > 200,
        "{taken} taken, {refused} refused"
    );
}

fn verdicts() -> Vec<Verdict> {
    vec![
        Verdict::Continue,
        Verdict::Accept,
        Verdict::Reject,
        Verdict::Tempfail,
        Verdict::Discard,
        Verdict::Reply(SmtpReply::new(550, Some("5.7.1"), "no").unwrap()),
        Verdict::Reply(SmtpReply::new(451, Some("4.7.1"), "later").unwrap()),
        Verdict::Skip,
        Verdict::Shutdown,
    ]
}

/// The steps up to and including `c`, each earlier one answered with Continue.
fn up_to(c: u8) -> Vec<(u8, Option<Verdict>)> {
    let order = [
        code::CONNECT,
        code::HELO,
        code::MAIL,
        code::RCPT,
        code::DATA,
        code::HEADER,
        code::EOH,
        code::BODY,
        code::EOB,
    ];
    let mut v: Vec<_> = match c {
        code::UNKNOWN => vec![code::CONNECT, code::MAIL, code::UNKNOWN],
        _ => order[..=order.iter().position(|&o| o == c).unwrap()].to_vec(),
    }
    .into_iter()
    .map(|s| (s, Some(Verdict::Continue)))
    .collect();
    v.last_mut().unwrap().1 = None;
    v
}

#[test]
fn every_verdict_at_every_answered_command_is_taken_or_refused_by_both_sides() {
    for (name, request) in [
        ("plain", Request::new()),
        ("SKIP", Request::new().with_protocol(ProtocolFlags::SKIP)),
    ] {
        let skip = name == "SKIP";
        for rule in rules::COMMANDS
            .iter()
            .filter(|r| r.answer == Answer::UnlessNoReply || r.code == code::EOB)
        {
            for v in verdicts() {
                let ctx = format!("{name}: {} at {}", v.name(), rule.name);
                let mut p = reach(&request, &up_to(rule.code), &ctx).expect(&ctx);
                assert!(p.milter.reply_due(), "{ctx}");
                let in_message = p.milter.in_transaction();
                match p.milter.reply(v.clone()) {
                    Ok(()) => {
                        let evs = p.pump_to_mta();
                        assert_eq!(
                            evs,
                            vec![Ok(MtaEvent::Verdict {
                                command: rule.code,
                                verdict: v.clone()
                            })],
                            "{ctx}"
                        );
                        let effect = rules::verdict_effect(rule.code, &v, skip).unwrap();
                        assert_eq!(
                            p.mta.connection_done(),
                            effect == Effect::EndsConnection,
                            "{ctx}"
                        );
                        assert_eq!(p.mta.body_skipped(), effect == Effect::SkipBody, "{ctx}");
                        assert_eq!(
                            p.milter.in_transaction(),
                            in_message
                                && effect != Effect::EndsMessage
                                && effect != Effect::EndsConnection,
                            "{ctx}"
                        );
                        // Where each side stands now shows in what comes next.
                        p.agree(code::MAIL, &ctx);
                    }
                    Err(e) => {
                        assert!(p.milter.output().is_empty(), "{ctx}");
                        Reply::Verdict(v.clone()).encode(p.mta.read_buf());
                        let evs = p.pump_to_mta();
                        assert!(
                            matches!(evs.as_slice(), [Err(ProtocolError::UnexpectedReply { code, .. })] if code.0 == v.code()),
                            "{ctx}: the milter side refused ({e}), the MTA side must too: {evs:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn modifications_and_progress_only_at_end_of_message_on_both_sides() {
    let request = Request::new().with_actions(Actions::ADD_HEADERS);
    let m = Modification::AddHeader {
        name: Bytes::from_static(b"X-A"),
        value: Bytes::from_static(b"1"),
    };
    let not_negotiated = Modification::AddRcpt {
        address: Bytes::from_static(b"<c@z>"),
    };
    for rule in rules::COMMANDS
        .iter()
        .filter(|r| r.answer == Answer::UnlessNoReply || r.code == code::EOB)
    {
        for kind in ["progress", "modification", "action not negotiated"] {
            let ctx = format!("{kind} at {}", rule.name);
            let mut p = reach(&request, &up_to(rule.code), &ctx).expect(&ctx);
            let (res, reply) = match kind {
                "progress" => (p.milter.progress(), Reply::Progress),
                "modification" => (p.milter.modify(m.clone()), Reply::Modification(m.clone())),
                _ => (
                    p.milter.modify(not_negotiated.clone()),
                    Reply::Modification(not_negotiated.clone()),
                ),
            };
            let ok = rule.code == code::EOB && kind != "action not negotiated";
            assert_eq!(res.is_ok(), ok, "{ctx}: {res:?}");
            if !ok {
                reply.encode(p.mta.read_buf());
            }
            let evs = p.pump_to_mta();
            match (ok, evs.as_slice()) {
                (true, [Ok(MtaEvent::Progress | MtaEvent::Modification(_))]) => {}
                (false, [Err(ProtocolError::UnexpectedReply { .. })]) => {}
                other => panic!("{ctx}: sides disagree: {other:?}"),
            }
        }
    }
}

/// The whole message a Postfix-like MTA drives, returning (codes the milter saw, codes the
/// MTA awaited a reply to).
fn whole_message(request: &Request) -> (Vec<u8>, Vec<u8>) {
    let mut p = Pair::new(request);
    let (mut seen, mut awaited) = (Vec::new(), Vec::new());
    for c in [
        code::CONNECT,
        code::HELO,
        code::MAIL,
        code::RCPT,
        code::UNKNOWN,
        code::DATA,
        code::HEADER,
        code::EOH,
        code::BODY,
        code::EOB,
    ] {
        let sent = mta_call(&mut p.mta, c).unwrap().unwrap();
        for e in p.pump_to_milter() {
            seen.push(e.unwrap().code());
        }
        if sent == Sent::AwaitingReply {
            awaited.push(c);
        }
        p.answer(Verdict::Continue);
    }
    (seen, awaited)
}

#[test]
fn each_no_and_nr_flag_removes_exactly_its_command_or_reply() {
    // The pairs as libmilter's mfapi.h defines them, written out independently of the
    // table so that a wrong entry there breaks this test.
    let all = [
        code::CONNECT,
        code::HELO,
        code::MAIL,
        code::RCPT,
        code::UNKNOWN,
        code::DATA,
        code::HEADER,
        code::EOH,
        code::BODY,
        code::EOB,
    ];
    let without = |c: u8| all.iter().copied().filter(|&x| x != c).collect::<Vec<_>>();
    let (seen, awaited) = whole_message(&Request::new());
    assert_eq!(seen, all.to_vec());
    assert_eq!(awaited, all.to_vec());
    for (flag, c) in [
        (ProtocolFlags::NO_CONNECT, code::CONNECT),
        (ProtocolFlags::NO_HELO, code::HELO),
        (ProtocolFlags::NO_MAIL, code::MAIL),
        (ProtocolFlags::NO_RCPT, code::RCPT),
        (ProtocolFlags::NO_DATA, code::DATA),
        (ProtocolFlags::NO_HEADERS, code::HEADER),
        (ProtocolFlags::NO_EOH, code::EOH),
        (ProtocolFlags::NO_BODY, code::BODY),
        (ProtocolFlags::NO_UNKNOWN, code::UNKNOWN),
    ] {
        let (seen, awaited) = whole_message(&Request::new().with_protocol(flag));
        assert_eq!(seen, without(c), "{flag:?}");
        assert_eq!(awaited, without(c), "{flag:?}");
    }
    for (flag, c) in [
        (ProtocolFlags::NR_CONNECT, code::CONNECT),
        (ProtocolFlags::NR_HELO, code::HELO),
        (ProtocolFlags::NR_MAIL, code::MAIL),
        (ProtocolFlags::NR_RCPT, code::RCPT),
        (ProtocolFlags::NR_DATA, code::DATA),
        (ProtocolFlags::NR_HEADER, code::HEADER),
        (ProtocolFlags::NR_EOH, code::EOH),
        (ProtocolFlags::NR_BODY, code::BODY),
        (ProtocolFlags::NR_UNKNOWN, code::UNKNOWN),
    ] {
        let (seen, awaited) = whole_message(&Request::new().with_protocol(flag));
        assert_eq!(seen, all.to_vec(), "{flag:?}");
        assert_eq!(awaited, without(c), "{flag:?}");
    }
}

#[test]
fn each_command_carries_its_stages_macros() {
    // Postfix's pairing (milter8.c): the end-of-headers list comes first before the first
    // header, the end-of-message list before the first body chunk.
    for (stage, c) in [
        (Stage::Connect, code::CONNECT),
        (Stage::Helo, code::HELO),
        (Stage::MailFrom, code::MAIL),
        (Stage::RcptTo, code::RCPT),
        (Stage::Data, code::DATA),
        (Stage::EndOfHeaders, code::HEADER),
        (Stage::EndOfMessage, code::BODY),
    ] {
        let request = Request::new().with_macros(stage, ["{probe}"]);
        let mut p = Pair::new(&request);
        p.mta.set_macro("probe", "yes");
        let mut seen_at = None;
        for step in [
            code::CONNECT,
            code::HELO,
            code::MAIL,
            code::RCPT,
            code::DATA,
            code::HEADER,
            code::EOH,
            code::BODY,
            code::EOB,
        ] {
            mta_call(&mut p.mta, step).unwrap().unwrap();
            p.pump_to_milter();
            if seen_at.is_none() && p.milter.macros().get("probe").is_some() {
                seen_at = Some(step);
            }
            p.answer(Verdict::Continue);
        }
        assert_eq!(seen_at, Some(c), "{stage:?}");
    }
}

#[test]
fn verdict_scopes_are_postfixs() {
    // Written out from Postfix's milter8.c, independently of the table.
    let cases = [
        (code::CONNECT, Verdict::Reject, Effect::EndsConnection),
        (code::HELO, Verdict::Accept, Effect::EndsConnection),
        (code::MAIL, Verdict::Tempfail, Effect::EndsMessage),
        (code::RCPT, Verdict::Reject, Effect::None),
        (code::RCPT, Verdict::Tempfail, Effect::None),
        (code::RCPT, Verdict::Accept, Effect::EndsMessage),
        (code::RCPT, Verdict::Discard, Effect::EndsMessage),
        (code::HEADER, Verdict::Accept, Effect::EndsMessage),
        (code::BODY, Verdict::Continue, Effect::None),
        (code::EOB, Verdict::Continue, Effect::EndsMessage),
        (code::UNKNOWN, Verdict::Reject, Effect::None),
        (code::DATA, Verdict::Shutdown, Effect::EndsConnection),
    ];
    for (c, v, effect) in cases {
        let ctx = format!("{} at {}", v.name(), c as char);
        let mut p = reach(&Request::new(), &up_to(c), &ctx).expect(&ctx);
        p.answer(v);
        assert_eq!(
            p.mta.connection_done(),
            effect == Effect::EndsConnection,
            "{ctx}"
        );
        // UNKNOWN is reached inside the envelope (after MAIL) and refuses only itself.
        let in_message = c == code::UNKNOWN || effect == Effect::None;
        assert_eq!(p.milter.in_transaction(), in_message, "{ctx}");
        // Another RCPT is taken in the envelope, refused by both sides anywhere else.
        let rcpt_ok = in_message && matches!(c, code::RCPT | code::UNKNOWN);
        assert_eq!(p.agree(code::RCPT, &ctx), rcpt_ok, "{ctx}");
    }
}
