//! The wire vocabulary: typed commands and replies, negotiation bits, SMTP reply texts and
//! macros, and the protocol rules both sides share ([`rules`]). Pure data and codecs; no
//! state, no I/O.

pub mod command;
pub mod flags;
pub mod macros;
mod reader;
pub mod reply;
pub mod rules;
pub mod smtp_reply;

pub use command::{Command, ConnectInfo, Envelope, OptNeg, SocketInfo};
pub use flags::{Actions, ProtocolFlags, Stage};
pub use macros::Macros;
pub use reply::{MacroRequest, Modification, OptNegReply, Reply, Verdict};
pub use smtp_reply::{SmtpReply, SmtpReplyError};
