//! Test kit for milter authors (feature `testing`): run a [`Milter`] handler against the
//! crate's Postfix-like MTA client over an in-memory pipe, no sockets, and assert on what
//! it decided.
//!
//! The handler runs in the real per-connection server driver
//! ([`serve_connection`]) and the MTA side is the real
//! [`MilterClient`], so every frame crosses the same code paths as in production:
//! negotiation, macro frames before every event, no-reply stages, header leading space,
//! modifications applied like Postfix.
//!
//! ```
//! use milter_core::handler::{Context, EomActions, Milter};
//! use milter_core::negotiate::{Offer, Request};
//! use milter_core::testing::{Transcript, pair};
//! use milter_core::{Actions, Verdict};
//!
//! struct Tagger;
//!
//! impl Milter for Tagger {
//!     fn negotiate(&mut self, _offer: &Offer) -> Request {
//!         Request::new().with_actions(Actions::ADD_HEADERS)
//!     }
//!     async fn eom(&mut self, _ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
//!         actions.add_header("X-Tagged", "yes").expect("negotiated");
//!         Verdict::Continue
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut pair = pair(|| Tagger).await.unwrap();
//! let tx = Transcript::new()
//!     .from("alice@example.test")
//!     .to("bob@example.test")
//!     .header("Subject", "hello")
//!     .body("Hi Bob\n")
//!     .build();
//! let outcome = pair.send(&tx).await.unwrap();
//! outcome.assert_accepted().assert_header_added("X-Tagged");
//! // Untouched parts stay byte-exact: the body keeps its LF.
//! assert!(outcome.modified_bytes().ends_with(b"X-Tagged: yes\r\n\r\nHi Bob\n"));
//! pair.finish().await.unwrap();
//! # });
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::client::{ClientConfig, Envelope, MilterClient, Outcome, Transaction};
use crate::error::Error;
use crate::handler::Milter;
use crate::server::{ConnectionConfig, serve_connection};

/// Capacity of the in-memory pipe; small enough to exercise partial reads and writes.
const PIPE: usize = 16 * 1024;

/// An MTA client connected to a milter handler through memory.
#[derive(Debug)]
pub struct TestPair {
    client: Option<MilterClient>,
    server: JoinHandle<Result<(), Error>>,
}

/// Starts `factory`'s handler on the server driver and negotiates with it like Postfix.
pub async fn pair<F, M>(factory: F) -> Result<TestPair, Error>
where
    F: Fn() -> M + Send + Sync + 'static,
    M: Milter,
{
    pair_with(
        factory,
        ConnectionConfig::default(),
        ClientConfig::default(),
    )
    .await
}

/// [`pair`] with explicit server and client settings (limits, timeouts, the MTA's offer,
/// a hidden `Received:` header).
pub async fn pair_with<F, M>(
    factory: F,
    server: ConnectionConfig,
    client: ClientConfig,
) -> Result<TestPair, Error>
where
    F: Fn() -> M + Send + Sync + 'static,
    M: Milter,
{
    let (mta_end, milter_end) = tokio::io::duplex(PIPE);
    let server = tokio::spawn(async move { serve_connection(milter_end, &factory, &server).await });
    let client = MilterClient::over(mta_end, client).await?;
    Ok(TestPair {
        client: Some(client),
        server,
    })
}

impl TestPair {
    /// Sends one message (the first also sends CONNECT and HELO; later ones ABORT first).
    pub async fn send(&mut self, tx: &Transaction) -> Result<Outcome, Error> {
        match self.client.as_mut() {
            Some(c) => c.send_transaction(tx).await,
            None => Err(Error::Usage(crate::error::UsageError::Closed)),
        }
    }

    /// The MTA client, for lower-level use.
    pub fn client(&mut self) -> Option<&mut MilterClient> {
        self.client.as_mut()
    }

    /// Sends QUIT and waits for the server driver to finish; returns its result (a
    /// protocol error the handler's side detected shows up here).
    pub async fn finish(mut self) -> Result<(), Error> {
        if let Some(c) = self.client.take() {
            c.quit().await?;
        }
        (&mut self.server)
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
    }
}

/// Builds a message and its envelope for a test.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    envelope: Envelope,
    recipients_set: bool,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    raw: Option<Bytes>,
}

impl Transcript {
    /// A transcript from `localhost [127.0.0.1]`, null sender, no headers, empty body.
    pub fn new() -> Transcript {
        Transcript::default()
    }

    /// The envelope sender.
    pub fn from(mut self, sender: &str) -> Transcript {
        self.envelope.sender = sender.to_owned();
        self
    }

    /// Adds an envelope recipient (the first call replaces the default recipient).
    pub fn to(mut self, recipient: &str) -> Transcript {
        if !self.recipients_set {
            self.envelope.recipients.clear();
            self.recipients_set = true;
        }
        self.envelope.recipients.push(recipient.to_owned());
        self
    }

    /// The SMTP client's address and host name.
    pub fn client(mut self, addr: std::net::IpAddr, name: &str) -> Transcript {
        self.envelope.client_addr = Some(addr);
        self.envelope.client_name = Some(name.to_owned());
        self
    }

    /// The HELO name.
    pub fn helo(mut self, helo: &str) -> Transcript {
        self.envelope.helo = helo.to_owned();
        self
    }

    /// An authenticated (SASL) user: `{auth_authen}`, `{auth_type}` = PLAIN.
    pub fn auth(mut self, user: &str) -> Transcript {
        self.envelope.auth_user = Some(user.to_owned());
        self
    }

    /// An extra macro value.
    pub fn macro_value(mut self, name: &str, value: &str) -> Transcript {
        self.envelope
            .macros
            .insert(name.to_owned(), value.to_owned());
        self
    }

    /// Replaces all macro values given so far.
    pub fn macros(mut self, macros: BTreeMap<String, String>) -> Transcript {
        self.envelope.macros = macros;
        self
    }

    /// Appends a header field, written `Name: value` with CRLF.
    pub fn header(mut self, name: &str, value: &str) -> Transcript {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body (line endings are sent to the milter as CRLF).
    pub fn body(mut self, body: impl AsRef<[u8]>) -> Transcript {
        self.body = body.as_ref().to_vec();
        self
    }

    /// Uses these message bytes as is, instead of the headers and body given.
    pub fn raw_message(mut self, message: impl Into<Bytes>) -> Transcript {
        self.raw = Some(message.into());
        self
    }

    /// The message and envelope.
    pub fn build(self) -> Transaction {
        let message = self.raw.unwrap_or_else(|| {
            let mut m = Vec::new();
            for (n, v) in &self.headers {
                m.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            m.extend_from_slice(b"\r\n");
            m.extend_from_slice(&self.body);
            Bytes::from(m)
        });
        Transaction {
            envelope: self.envelope,
            message,
        }
    }
}
