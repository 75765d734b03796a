//! Errors, split by who is at fault: the peer ([`ProtocolError`]), the user of this API
//! ([`UsageError`]), or the environment ([`Error::Io`], [`Error::Timeout`]).

use std::fmt;

use crate::proto::flags::{Actions, ProtocolFlags, Stage};

/// A command or reply code as it appears on the wire, printed as a character when it is one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code(pub u8);

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// The peer broke the protocol. The connection cannot continue and should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame announced more data than the configured cap; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The length the peer announced (command byte included).
        len: u64,
        /// The cap in force, in payload bytes.
        max: usize,
    },
    /// A frame announced length zero: it has not even a command byte.
    #[error("frame with length 0 (no command byte)")]
    EmptyFrame,
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame ({have} of {need} bytes received)")]
    Truncated {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes the frame needed (length prefix included).
        need: usize,
    },
    /// A command code this implementation does not know.
    #[error("unknown command {0}")]
    UnknownCommand(Code),
    /// A reply code this implementation does not know.
    #[error("unknown reply {0}")]
    UnknownReply(Code),
    /// A known frame whose payload does not parse.
    #[error("malformed {code} frame: {reason}")]
    Malformed {
        /// The frame's code.
        code: Code,
        /// What was wrong.
        reason: &'static str,
    },
    /// A well-formed command that is not allowed in the current state.
    #[error("command {code} not allowed {state}")]
    UnexpectedCommand {
        /// The command's code.
        code: Code,
        /// Where the session was, as a phrase ("before negotiation", "in the envelope", ...).
        state: &'static str,
    },
    /// A well-formed reply that is not allowed in the current state.
    #[error("reply {code} not allowed {state}")]
    UnexpectedReply {
        /// The reply's code.
        code: Code,
        /// Where the session was, as a phrase.
        state: &'static str,
    },
    /// Option negotiation failed.
    #[error("negotiation failed: {0}")]
    Negotiation(#[from] NegotiateError),
}

/// Option negotiation could not agree; the connection is refused rather than faked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiateError {
    /// The MTA speaks a protocol version below 2.
    #[error("MTA protocol version {0} is not supported (need 2 to 6)")]
    UnsupportedVersion(u32),
    /// The milter needs actions the MTA does not offer.
    #[error("the MTA does not offer actions {missing:?} (it offers {offered:?})")]
    ActionsNotOffered {
        /// Requested but not offered.
        missing: Actions,
        /// What the MTA offered.
        offered: Actions,
    },
    /// The milter needs protocol steps or options the MTA does not offer.
    #[error("the MTA does not offer protocol flags {missing:?} (it offers {offered:?})")]
    ProtocolNotOffered {
        /// Requested but not offered.
        missing: ProtocolFlags,
        /// What the MTA offered.
        offered: ProtocolFlags,
    },
    /// The milter's answer asks for more than the MTA offered (seen from the MTA side).
    #[error("the milter asked for actions {actions:?} / protocol {protocol:?} beyond the offer")]
    BeyondOffer {
        /// Actions beyond the offer.
        actions: Actions,
        /// Protocol flags beyond the offer.
        protocol: ProtocolFlags,
    },
    /// The milter answered a higher protocol version than the MTA offered.
    #[error("the milter answered version {milter} to an offer of {mta}")]
    VersionAboveOffer {
        /// The MTA's version.
        mta: u32,
        /// The milter's version.
        milter: u32,
    },
    /// A requested macro list cannot be sent (the milter's fault).
    #[error("invalid macro request for stage {stage:?}: {reason}")]
    InvalidMacroRequest {
        /// The stage of the offending list.
        stage: Stage,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The session was asked to negotiate while no offer awaited an answer (the API
    /// user's fault).
    #[error("no negotiation offer awaits an answer")]
    NotPending,
}

/// The program using this API asked for something the protocol does not allow now.
///
/// Nothing was sent; the session is unchanged and the stream stays in sync.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// No command awaits a reply (or the stage was negotiated as no-reply).
    #[error("no reply is due now")]
    NoReplyDue,
    /// This verdict is not valid for the pending command.
    #[error("{verdict} is not a valid reply to {command}")]
    VerdictNotAllowed {
        /// The verdict's name.
        verdict: &'static str,
        /// The pending command's name.
        command: &'static str,
    },
    /// Modifications and progress are only allowed while end of message awaits its reply.
    #[error("{0} is only allowed at end of message")]
    NotAtEndOfMessage(&'static str),
    /// The action needed for this modification was not negotiated.
    #[error("{modification} needs action {needed:?}, which was not negotiated")]
    ActionNotNegotiated {
        /// The modification's name.
        modification: &'static str,
        /// The action bit it needs.
        needed: Actions,
    },
    /// A field does not fit in one frame under the send cap, holds a NUL byte, or (a
    /// header value) breaks a line other than to fold it.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The reply needs a protocol option that was not negotiated (e.g. SKIP).
    #[error("{what} needs protocol option {needed:?}, which was not negotiated")]
    ProtocolNotNegotiated {
        /// What was attempted.
        what: &'static str,
        /// The protocol bit it needs.
        needed: ProtocolFlags,
    },
    /// A body replacement was interleaved with other modifications (Postfix refuses that).
    #[error("body replacement must be sent as one contiguous run of chunks")]
    BodyReplacementInterleaved,
    /// Negotiation was answered twice or out of turn.
    #[error("negotiation is not pending")]
    NotNegotiating,
    /// The session has ended.
    #[error("the session is closed")]
    Closed,
    /// The previous command still awaits the peer's reply (MTA side).
    #[error("the previous command still awaits its reply")]
    ReplyPending,
    /// The command is not allowed in the session's current state (MTA side).
    #[error("{command} is not allowed {state}")]
    OutOfOrder {
        /// The command's name.
        command: &'static str,
        /// Where the session is, as a phrase.
        state: &'static str,
    },
}

/// Phases that have their own timeout, modelled on Postfix's milter timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Waiting for the connection and option negotiation.
    Negotiation,
    /// Connection and envelope commands (Postfix's `milter_command_timeout`).
    Command,
    /// Headers, body and end of message (Postfix's `milter_content_timeout`).
    Content,
    /// Between messages or commands, waiting for the MTA.
    Idle,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Negotiation => "negotiation",
            Phase::Command => "command",
            Phase::Content => "content",
            Phase::Idle => "idle",
        })
    }
}

/// Any error of a milter connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading, writing, binding or accepting failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer was silent for longer than the phase allows.
    #[error("timed out in the {0} phase")]
    Timeout(Phase),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The API was misused.
    #[error("usage error: {0}")]
    Usage(#[from] UsageError),
    /// A listen or connect address could not be understood.
    #[error("bad socket address {spec:?}: {reason}")]
    Address {
        /// The address as given.
        spec: String,
        /// Why it was refused.
        reason: String,
    },
}
