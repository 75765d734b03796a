//! Option negotiation: the MTA's [`Offer`], the milter's [`Request`], and what both
//! agreed on ([`Negotiated`]).
//!
//! Nothing is faked: a milter that needs an action or protocol step the MTA does not offer
//! is refused, instead of pretending (as libmilter does for `NR_*`) and desynchronising the
//! stream later. Steps that are merely nice to have go in [`Request::optional_protocol`].
//!
//! The events a milter handles are declared once, as [`Milter::EVENTS`](crate::Milter::EVENTS);
//! the default negotiation ([`Request::with_events`]) asks the MTA not to send the others
//! (`NO_*`) and, should it send them anyway, not to wait for a reply (`NR_*`), so an
//! ignored event costs no round trip. libmilter does the same for callbacks left unset.

use crate::error::NegotiateError;
use crate::proto::command::{OptNeg, code};
use crate::proto::flags::{Actions, ProtocolFlags, Stage};
use crate::proto::reply::{MacroRequest, OptNegReply};
use crate::proto::rules::{self, Answer};

/// The highest protocol version this crate speaks.
pub const MAX_VERSION: u32 = 6;

/// The lowest protocol version this crate accepts (libmilter's floor as well).
pub const MIN_VERSION: u32 = 2;

/// What the MTA offered in its `O` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// The MTA's protocol version.
    pub version: u32,
    /// Actions the MTA can perform.
    pub actions: Actions,
    /// Protocol steps and options the MTA understands.
    pub protocol: ProtocolFlags,
}

impl From<OptNeg> for Offer {
    fn from(o: OptNeg) -> Offer {
        Offer {
            version: o.version,
            actions: o.actions,
            protocol: o.protocol,
        }
    }
}

bitflags::bitflags! {
    /// The MTA events a milter wants to see (end of message, abort and quit always come).
    ///
    /// Declared as [`Milter::EVENTS`](crate::Milter::EVENTS) and turned into `NO_*` and
    /// `NR_*` requests by [`Request::with_events`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Events: u16 {
        /// CONNECT: the client's host name and address.
        const CONNECT = 1 << 0;
        /// HELO/EHLO.
        const HELO = 1 << 1;
        /// MAIL FROM.
        const MAIL = 1 << 2;
        /// RCPT TO.
        const RCPT = 1 << 3;
        /// DATA (protocol version 4 and later).
        const DATA = 1 << 4;
        /// Each header field.
        const HEADER = 1 << 5;
        /// End of headers.
        const EOH = 1 << 6;
        /// Body chunks.
        const BODY = 1 << 7;
        /// Unrecognised SMTP commands (version 3 and later).
        const UNKNOWN = 1 << 8;
    }
}

impl Events {
    /// Each event with the command code that carries it.
    const CODES: [(Events, u8); 9] = [
        (Events::CONNECT, code::CONNECT),
        (Events::HELO, code::HELO),
        (Events::MAIL, code::MAIL),
        (Events::RCPT, code::RCPT),
        (Events::DATA, code::DATA),
        (Events::HEADER, code::HEADER),
        (Events::EOH, code::EOH),
        (Events::BODY, code::BODY),
        (Events::UNKNOWN, code::UNKNOWN),
    ];

    /// The `NO_*` and `NR_*` bits for every event not in `self`.
    pub fn unwanted_protocol(self) -> ProtocolFlags {
        let mut p = ProtocolFlags::empty();
        for (event, c) in Events::CODES {
            if !self.contains(event) {
                p |= skip_flag(c).unwrap_or(ProtocolFlags::empty());
                p |= no_reply_flag(c).unwrap_or(ProtocolFlags::empty());
            }
        }
        p
    }
}

/// What a milter asks for. Built with the `with_*` methods or by filling the fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Actions the milter needs; refused if not offered.
    pub actions: Actions,
    /// Steps and options the milter needs (`NO_*`, `NR_*`, `SKIP`, `HEADER_LEADING_SPACE`,
    /// `RCPT_REJ`); refused if not offered.
    pub protocol: ProtocolFlags,
    /// Steps and options used only if offered (e.g. `NR_*` to save round trips).
    pub optional_protocol: ProtocolFlags,
    /// Macro lists appended to the answer; they need `SET_MACROS` offered.
    pub macros: Vec<MacroRequest>,
}

impl Request {
    /// A request for nothing: every event, a reply to each, no modifications.
    pub fn new() -> Request {
        Request::default()
    }

    /// Asks the MTA, where it can, not to send the events outside `wanted` (`NO_*`) and
    /// not to wait for a reply to them (`NR_*`); both are optional, so an MTA without them
    /// still negotiates (and the default callbacks answer `Continue`).
    pub fn with_events(self, wanted: Events) -> Request {
        self.with_optional_protocol(wanted.unwanted_protocol())
    }

    /// Adds needed actions.
    pub fn with_actions(mut self, actions: Actions) -> Request {
        self.actions |= actions;
        self
    }

    /// Adds needed protocol steps or options.
    pub fn with_protocol(mut self, protocol: ProtocolFlags) -> Request {
        self.protocol |= protocol;
        self
    }

    /// Adds protocol steps or options used only if the MTA offers them.
    pub fn with_optional_protocol(mut self, protocol: ProtocolFlags) -> Request {
        self.optional_protocol |= protocol;
        self
    }

    /// Asks for these macros at `stage` (names like `i` or `{auth_type}`).
    pub fn with_macros<I, S>(mut self, stage: Stage, names: I) -> Request
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.macros.push(MacroRequest {
            stage,
            names: names.into_iter().map(Into::into).collect(),
        });
        self
    }
}

/// What both sides agreed on; the session enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The protocol version in use: the lower of the MTA's and [`MAX_VERSION`].
    pub version: u32,
    /// Actions the milter may use at end of message.
    pub actions: Actions,
    /// Protocol steps and options in force.
    pub protocol: ProtocolFlags,
    /// Macro lists sent to the MTA.
    pub macros: Vec<MacroRequest>,
}

impl Negotiated {
    /// Whether the milter must stay silent after `command_code`: always for macros, abort
    /// and quit; for other commands when their `NR_*` flag was negotiated.
    pub fn no_reply(&self, command_code: u8) -> bool {
        match rules::command(command_code) {
            Some(r) if r.answer == Answer::Never => true,
            Some(r) if r.answer == Answer::Always => false,
            _ => no_reply_flag(command_code).is_some_and(|f| self.protocol.contains(f)),
        }
    }

    /// Whether the MTA was asked not to send `command_code` (a `NO_*` flag, or an event the
    /// negotiated version lacks: UNKNOWN needs 3, DATA needs 4).
    pub fn skipped(&self, command_code: u8) -> bool {
        let version_lacks =
            rules::command(command_code).is_some_and(|r| r.min_version > self.version);
        version_lacks || skip_flag(command_code).is_some_and(|f| self.protocol.contains(f))
    }

    /// The macro names requested for `stage`, if a non-empty list was sent. (An empty list
    /// does not silence Postfix: it falls back to its own list.)
    pub fn macros_for(&self, stage: Stage) -> Option<&[String]> {
        self.macros
            .iter()
            .rev()
            .find(|m| m.stage == stage && !m.names.is_empty())
            .map(|m| m.names.as_slice())
    }

    /// Whether header values pass unchanged both ways (`HEADER_LEADING_SPACE`): the milter
    /// sees the space after the colon and must supply it in headers it adds.
    pub fn leading_space(&self) -> bool {
        self.protocol.contains(ProtocolFlags::HEADER_LEADING_SPACE)
    }

    /// Whether the milter may answer BODY with SKIP.
    pub fn skip(&self) -> bool {
        self.protocol.contains(ProtocolFlags::SKIP)
    }

    /// Whether the MTA sends recipients it rejected too (`RCPT_REJ`).
    pub fn rejected_recipients(&self) -> bool {
        self.protocol.contains(ProtocolFlags::RCPT_REJ)
    }

    /// Whether `action` may be used.
    pub fn allows(&self, action: Actions) -> bool {
        self.actions.contains(action)
    }

    /// The `O` reply that tells the MTA what was agreed.
    pub fn to_reply(&self) -> OptNegReply {
        OptNegReply {
            version: self.version,
            actions: self.actions,
            protocol: self.protocol,
            macros: self.macros.clone(),
        }
    }
}

/// The `NO_*` flag that asks the MTA not to send `command_code`, if there is one.
pub fn skip_flag(command_code: u8) -> Option<ProtocolFlags> {
    rules::command(command_code).and_then(|r| r.skip)
}

/// The `NR_*` flag that silences replies to `command_code`, if there is one.
pub fn no_reply_flag(command_code: u8) -> Option<ProtocolFlags> {
    rules::command(command_code).and_then(|r| r.no_reply)
}

/// Settles `request` against `offer`.
///
/// The version is the lower of the offer's and 6; below 2 is refused. Needed actions and
/// protocol bits must all be offered; optional protocol bits are kept where offered. Macro
/// lists need `SET_MACROS` in the offer, which is then added to the answer.
pub fn negotiate(offer: &Offer, request: &Request) -> Result<Negotiated, NegotiateError> {
    if offer.version < MIN_VERSION {
        return Err(NegotiateError::UnsupportedVersion(offer.version));
    }
    let version = offer.version.min(MAX_VERSION);

    let mut actions = request.actions;
    if !request.macros.is_empty() {
        actions |= Actions::SET_MACROS;
    }
    let missing = actions.difference(offer.actions);
    if !missing.is_empty() {
        return Err(NegotiateError::ActionsNotOffered {
            missing,
            offered: offer.actions,
        });
    }

    let missing = request.protocol.difference(offer.protocol);
    if !missing.is_empty() {
        return Err(NegotiateError::ProtocolNotOffered {
            missing,
            offered: offer.protocol,
        });
    }
    let protocol = request.protocol | (request.optional_protocol & offer.protocol);

    for m in &request.macros {
        for name in &m.names {
            if name.is_empty() || name.bytes().any(|b| b == 0 || b.is_ascii_whitespace()) {
                return Err(NegotiateError::InvalidMacroRequest {
                    stage: m.stage,
                    reason: "macro names must be non-empty, without spaces or NUL bytes",
                });
            }
        }
    }

    Ok(Negotiated {
        version,
        actions,
        protocol,
        macros: request.macros.clone(),
    })
}

#[cfg(test)]
mod events_tests {
    use super::*;

    #[test]
    fn unwanted_events_are_not_sent_nor_answered() {
        let offer = Offer {
            version: 6,
            actions: Actions::all(),
            protocol: ProtocolFlags::all(),
        };
        let n = negotiate(&offer, &Request::new().with_events(Events::MAIL)).unwrap();
        for c in [
            code::CONNECT,
            code::HELO,
            code::RCPT,
            code::DATA,
            code::HEADER,
            code::EOH,
            code::BODY,
            code::UNKNOWN,
        ] {
            assert!(n.skipped(c) && n.no_reply(c), "{}", c as char);
        }
        assert!(!n.skipped(code::MAIL) && !n.no_reply(code::MAIL));
        // Every event wanted: nothing asked, as before.
        assert_eq!(Events::all().unwanted_protocol(), ProtocolFlags::empty());
    }

    #[test]
    fn an_mta_without_the_flags_still_negotiates() {
        let offer = Offer {
            version: 2,
            actions: Actions::empty(),
            protocol: ProtocolFlags::NO_CONNECT,
        };
        let n = negotiate(&offer, &Request::new().with_events(Events::MAIL)).unwrap();
        assert_eq!(n.protocol, ProtocolFlags::NO_CONNECT);
    }
}
