//! The protocol rules, once, for both sides: which commands exist and in what order they
//! come, which `NO_*` flag suppresses a command and which `NR_*` flag silences its reply,
//! which macro stage it carries, which replies may answer it and what a verdict ends.
//!
//! The milter side ([`MilterSession`](crate::session::MilterSession)) and the MTA side
//! ([`MtaSession`](crate::session::mta::MtaSession)) both consult this module for every
//! such decision, so the two cannot drift apart: what the MTA side refuses to send (a
//! [`UsageError`]) the milter side refuses to receive (a
//! [`ProtocolError`](crate::ProtocolError)), and the other way round. The sessions only map
//! a refusal to their own error type.
//!
//! The rules follow Postfix 3.x's `milter8.c` and libmilter: a verdict other than
//! Continue at CONNECT or HELO ends the connection (Postfix closes the milter stream),
//! Reject, Tempfail and a reply code at RCPT refuse only that recipient, Discard needs a
//! message, SKIP answers only BODY and only with `SKIP` negotiated, modifications and
//! progress come only while end of message awaits its answer, Shutdown ends the connection
//! anywhere.

use bytes::{BufMut, BytesMut};

use crate::error::UsageError;
use crate::proto::command::code;
use crate::proto::flags::{ProtocolFlags, Stage};
use crate::proto::reply::Verdict;

/// Whether the milter answers a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Never (macros, abort, quit).
    Never,
    /// Always, whatever was negotiated (negotiation, end of message).
    Always,
    /// Unless the command's `NR_*` flag was negotiated.
    UnlessNoReply,
}

/// Where a command may come in a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// First, once: option negotiation.
    Negotiation,
    /// Anywhere after negotiation (macros, abort, QUIT_NC); QUIT even while a reply is due.
    Anywhere,
    /// Once per SMTP connection, first after negotiation (or after QUIT_NC).
    Connect,
    /// After CONNECT, outside message content (HELO, UNKNOWN); leaves the message alone.
    Envelope,
    /// A step of the message, at position `rank` in the transaction (MAIL is 1).
    Message {
        /// Position in the message: steps come in increasing rank.
        rank: u8,
        /// The step may not be left out unless negotiated away (MAIL, RCPT).
        required: bool,
        /// The step may come several times in a row (RCPT, HEADER, BODY).
        repeats: bool,
    },
}

/// Everything the protocol says about one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandRule {
    /// The wire code (`SMFIC_*`).
    pub code: u8,
    /// A name for logs and errors.
    pub name: &'static str,
    /// Where it may come.
    pub place: Place,
    /// Whether the milter answers it.
    pub answer: Answer,
    /// The `NO_*` flag asking the MTA not to send it.
    pub skip: Option<ProtocolFlags>,
    /// The `NR_*` flag sparing the milter its reply.
    pub no_reply: Option<ProtocolFlags>,
    /// The lowest protocol version that has it (UNKNOWN 3, DATA 4).
    pub min_version: u32,
    /// The macro stage whose list the MTA sends before it (Postfix sends the end-of-headers
    /// list before each header and the end-of-message list before each body chunk).
    pub macro_stage: Option<Stage>,
}

const fn rule(
    code: u8,
    name: &'static str,
    place: Place,
    answer: Answer,
    flags: Option<(ProtocolFlags, ProtocolFlags)>,
    min_version: u32,
    macro_stage: Option<Stage>,
) -> CommandRule {
    let (skip, no_reply) = match flags {
        Some((s, r)) => (Some(s), Some(r)),
        None => (None, None),
    };
    CommandRule {
        code,
        name,
        place,
        answer,
        skip,
        no_reply,
        min_version,
        macro_stage,
    }
}

const fn step(rank: u8, required: bool, repeats: bool) -> Place {
    Place::Message {
        rank,
        required,
        repeats,
    }
}

use Answer::{Always, Never, UnlessNoReply};
use ProtocolFlags as F;

/// Every command, in the order they occur in a session (macros forget later stages in this
/// order: see [`Macros::define`](crate::proto::Macros::define)).
#[rustfmt::skip]
pub const COMMANDS: [CommandRule; 15] = [
    rule(code::CONNECT, "CONNECT", Place::Connect, UnlessNoReply, Some((F::NO_CONNECT, F::NR_CONNECT)), 2, Some(Stage::Connect)),
    rule(code::HELO, "HELO", Place::Envelope, UnlessNoReply, Some((F::NO_HELO, F::NR_HELO)), 2, Some(Stage::Helo)),
    rule(code::MAIL, "MAIL", step(1, true, false), UnlessNoReply, Some((F::NO_MAIL, F::NR_MAIL)), 2, Some(Stage::MailFrom)),
    rule(code::RCPT, "RCPT", step(2, true, true), UnlessNoReply, Some((F::NO_RCPT, F::NR_RCPT)), 2, Some(Stage::RcptTo)),
    rule(code::DATA, "DATA", step(3, false, false), UnlessNoReply, Some((F::NO_DATA, F::NR_DATA)), 4, Some(Stage::Data)),
    rule(code::HEADER, "HEADER", step(4, false, true), UnlessNoReply, Some((F::NO_HEADERS, F::NR_HEADER)), 2, Some(Stage::EndOfHeaders)),
    rule(code::EOH, "EOH", step(5, false, false), UnlessNoReply, Some((F::NO_EOH, F::NR_EOH)), 2, Some(Stage::EndOfHeaders)),
    rule(code::BODY, "BODY", step(6, false, true), UnlessNoReply, Some((F::NO_BODY, F::NR_BODY)), 2, Some(Stage::EndOfMessage)),
    rule(code::EOB, "EOM", step(7, false, false), Always, None, 2, Some(Stage::EndOfMessage)),
    rule(code::UNKNOWN, "UNKNOWN", Place::Envelope, UnlessNoReply, Some((F::NO_UNKNOWN, F::NR_UNKNOWN)), 3, None),
    rule(code::OPTNEG, "OPTNEG", Place::Negotiation, Always, None, 2, None),
    rule(code::MACRO, "MACRO", Place::Anywhere, Never, None, 2, None),
    rule(code::ABORT, "ABORT", Place::Anywhere, Never, None, 2, None),
    rule(code::QUIT_NC, "QUIT_NC", Place::Anywhere, Never, None, 2, None),
    rule(code::QUIT, "QUIT", Place::Anywhere, Never, None, 2, None),
];

/// The rule of a command code, if it is one.
pub fn command(c: u8) -> Option<&'static CommandRule> {
    COMMANDS.iter().find(|r| r.code == c)
}

/// The position of a command in [`COMMANDS`] (session order); codes that are no command
/// come last.
pub fn session_rank(c: u8) -> usize {
    COMMANDS
        .iter()
        .position(|r| r.code == c)
        .unwrap_or(COMMANDS.len())
}

/// The command whose macro frame carries `stage`'s list: the last command of that stage
/// (end of headers, end of message).
pub fn stage_command(stage: Stage) -> u8 {
    COMMANDS
        .iter()
        .rev()
        .find(|r| r.macro_stage == Some(stage))
        .map_or(code::MACRO, |r| r.code)
}

/// What a final verdict does to the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond answering the command (Continue before end of message; a verdict at
    /// UNKNOWN; a refusal at RCPT, which refuses only that recipient).
    None,
    /// The rest of this message's body is not sent (SKIP at BODY).
    SkipBody,
    /// The message is over; the next one starts with MAIL.
    EndsMessage,
    /// The connection is over for this milter; only QUIT (or QUIT_NC) may follow.
    EndsConnection,
}

/// Why a verdict cannot answer a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictRefusal {
    /// The verdict never answers this command.
    NotAllowed(&'static str),
    /// SKIP without `SKIP` negotiated.
    SkipNotNegotiated,
}

impl VerdictRefusal {
    /// The refusal as a phrase for errors ("... not allowed {phrase}").
    pub fn phrase(self) -> &'static str {
        match self {
            VerdictRefusal::NotAllowed(p) => p,
            VerdictRefusal::SkipNotNegotiated => "without SKIP negotiated",
        }
    }
}

/// What `verdict` does in answer to `command`, or why it cannot answer it.
pub fn verdict_effect(
    command: u8,
    verdict: &Verdict,
    skip_negotiated: bool,
) -> Result<Effect, VerdictRefusal> {
    let place = self::command(command).map(|r| r.place);
    let in_message = matches!(place, Some(Place::Message { .. }));
    let connection_stage = matches!(command, code::CONNECT | code::HELO);
    match (verdict, command) {
        (_, code::OPTNEG) => Err(VerdictRefusal::NotAllowed("in answer to OPTNEG")),
        _ if !matches!(
            place,
            Some(Place::Connect | Place::Envelope | Place::Message { .. })
        ) =>
        {
            Err(VerdictRefusal::NotAllowed(
                "to a command that gets no answer",
            ))
        }
        (Verdict::Skip, code::BODY) if skip_negotiated => Ok(Effect::SkipBody),
        (Verdict::Skip, code::BODY) => Err(VerdictRefusal::SkipNotNegotiated),
        (Verdict::Skip, _) => Err(VerdictRefusal::NotAllowed("other than in answer to BODY")),
        (Verdict::Discard, _) if !in_message => {
            Err(VerdictRefusal::NotAllowed("outside a message"))
        }
        (Verdict::Shutdown, _) => Ok(Effect::EndsConnection),
        (Verdict::Continue, code::EOB) => Ok(Effect::EndsMessage),
        (Verdict::Continue, _) => Ok(Effect::None),
        (_, _) if connection_stage => Ok(Effect::EndsConnection),
        (_, code::UNKNOWN) => Ok(Effect::None),
        (Verdict::Reject | Verdict::Tempfail | Verdict::Reply(_), code::RCPT) => Ok(Effect::None),
        _ => Ok(Effect::EndsMessage),
    }
}

/// The kinds of frame a milter sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// The negotiation answer.
    OptNeg,
    /// A final verdict.
    Verdict,
    /// A modification.
    Modification,
    /// Progress.
    Progress,
}

/// Whether a reply of `kind` may answer `pending` (the command awaiting its answer, if
/// any); the error is a phrase for "... not allowed {phrase}". Verdicts are further
/// checked by [`verdict_effect`].
pub fn reply_allowed(pending: Option<u8>, kind: ReplyKind) -> Result<(), &'static str> {
    match (pending, kind) {
        (None, _) => Err("while no reply is due"),
        (Some(code::OPTNEG), ReplyKind::OptNeg) => Ok(()),
        (Some(code::OPTNEG), _) => Err("in answer to OPTNEG"),
        (Some(_), ReplyKind::OptNeg) => Err("after negotiation"),
        (Some(code::EOB), _) => Ok(()),
        (Some(_), ReplyKind::Modification | ReplyKind::Progress) => Err("before end of message"),
        (Some(_), ReplyKind::Verdict) => Ok(()),
    }
}

/// A macro name without its braces: `x` and `{x}` name the same macro.
pub fn bare_macro_name(name: &[u8]) -> &[u8] {
    name.strip_prefix(b"{")
        .and_then(|n| n.strip_suffix(b"}"))
        .unwrap_or(name)
}

/// [`bare_macro_name`] for text.
pub fn bare_macro_str(name: &str) -> &str {
    name.strip_prefix('{')
        .and_then(|n| n.strip_suffix('}'))
        .unwrap_or(name)
}

/// Refuses a field with a NUL byte: on the wire fields are C strings, so a NUL would cut
/// the field short and shift every later one.
pub fn check_field(field: &'static str, v: &[u8]) -> Result<(), UsageError> {
    if v.contains(&0) {
        return Err(UsageError::InvalidField {
            field,
            reason: "contains a NUL byte",
        });
    }
    Ok(())
}

/// Writes a field as a C string (the bytes, then a NUL).
pub(crate) fn put_cstr(p: &mut BytesMut, s: &[u8]) {
    p.put_slice(s);
    p.put_u8(0);
}
