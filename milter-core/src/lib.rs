//! A milter protocol (version 6) library, as Postfix and Sendmail speak it.
//!
//! The core is sans-IO and deterministic: [`wire`] frames bytes, [`proto`] types every
//! command and reply, [`negotiate`] settles options, and [`session`] enforces the reply
//! discipline on both sides. The tokio [`server`] runs [`Milter`] handlers; the tokio
//! [`client`] plays the MTA for replay, tests and load; the `testing` feature pairs the two
//! in memory so a handler can be unit tested without sockets. With the `metrics` feature the
//! server counts what it does through the `metrics` facade (see `metrics` for why a
//! facade, and the names); the program installs the recorder and the exporter.
//!
//! A milter is a [`Milter`] implementation; every callback has a default, so a milter
//! implements only what it needs, and names those events once in [`Milter::EVENTS`]: the
//! default negotiation then asks the MTA not to send the others (`NO_*`) nor wait for their
//! replies (`NR_*`), so ignored events cost no round trip (see [`handler`] for a tested
//! example; without `EVENTS` every event comes):
//!
//! ```no_run
//! use milter_core::negotiate::Events;
//! use milter_core::{Context, Envelope, Milter, Server, Verdict};
//!
//! struct RejectSender;
//!
//! impl Milter for RejectSender {
//!     const EVENTS: Events = Events::MAIL;
//!
//!     async fn mail(&mut self, _ctx: &Context<'_>, from: &Envelope) -> Verdict {
//!         if from.address_str().eq_ignore_ascii_case("spammer@example.net") {
//!             return Verdict::reply(550, "5.7.1", "Sender refused");
//!         }
//!         Verdict::Continue
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), milter_core::Error> {
//!     Server::builder().listen("inet:127.0.0.1:8891")?.serve(|| RejectSender).await
//! }
//! ```
//!
//! For restarts that refuse no connection, the server also serves on a socket it inherits
//! (systemd socket activation, or one handed in): see [`server`].
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
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod server;
// `Endpoint`, the address syntax both the server and the client take.
#[cfg(any(feature = "client", feature = "server"))]
mod address;
#[cfg(feature = "testing")]
pub mod testing;

/// The byte buffer type of every payload (header, body, HELO, macros), re-exported so a
/// milter names the same `bytes` version as the library.
pub use bytes::Bytes;
pub use error::{Error, NegotiateError, Phase, ProtocolError, UsageError};
pub use handler::{Context, EomActions, Milter};
pub use negotiate::{Negotiated, Offer, Request};
pub use proto::{
    Actions, Command, ConnectInfo, Envelope, Macros, Modification, ProtocolFlags, Reply, SmtpReply,
    SocketInfo, Stage, Verdict,
};
#[cfg(feature = "server")]
pub use server::Server;
