//! A milter protocol (version 6) library, as Postfix and Sendmail speak it.
//!
//! The core is sans-IO and deterministic: [`wire`] frames bytes, [`proto`] types every
//! command and reply, [`negotiate`] settles options, and [`session`] enforces the reply
//! discipline on both sides. The tokio [`server`] runs [`Milter`] handlers; the tokio
//! [`client`] plays the MTA for replay, tests and load.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod error;
pub mod handler;
pub mod negotiate;
pub mod proto;
pub mod session;
pub mod wire;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, NegotiateError, Phase, ProtocolError, UsageError};
pub use proto::{
    Actions, Command, ConnectInfo, Envelope, Macros, Modification, ProtocolFlags, Reply, SmtpReply,
    SocketInfo, Stage, Verdict,
};
