//! A tokio MTA-side client: plays Postfix towards a milter, for replay, tests and load.
//!
//! [`MilterClient`] is a thin adapter over the sans-IO [`MtaSession`]: it connects (TCP
//! with `TCP_NODELAY`, or a unix socket), writes each batch of frames in one write, and
//! times every read like Postfix (connect 30 s, command 30 s, content 300 s; each frame,
//! PROGRESS included, restarts the clock). One connection carries several messages with
//! ABORT between them, and QUIT at the end.
//!
//! ```no_run
//! # async fn f() -> Result<(), milter_core::Error> {
//! use milter_core::client::{ClientConfig, Envelope, MilterClient};
//! let mut client = MilterClient::connect("inet:127.0.0.1:8891", ClientConfig::default()).await?;
//! let envelope = Envelope {
//!     sender: "user@example.test".into(),
//!     recipients: vec!["friend@remote.test".into()],
//!     ..Envelope::default()
//! };
//! let outcome = client.send(&envelope, b"From: user@example.test\r\n\r\nHi\r\n").await?;
//! println!("{:?} {:?}", outcome.verdict, outcome.modifications);
//! let signed = outcome.modified_bytes();
//! client.quit().await?;
//! # let _ = signed; Ok(()) }
//! ```

pub mod apply;
pub mod endpoint;
pub mod outcome;
pub mod replay;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Phase, ProtocolError};
use crate::proto::command::{ConnectInfo, Envelope as EnvelopeArgs, SocketInfo, command_name};
use crate::proto::reply::Verdict;
use crate::session::mta::{MtaConfig, MtaEvent, MtaSession, Sent, body_chunks};

pub use apply::{EnvelopeChanges, HeaderField, Message};
pub use endpoint::Endpoint;
pub use outcome::{Outcome, StageVerdict};

/// Per-phase timeouts, Postfix's defaults by [`Timeouts::postfix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `milter_connect_timeout`: the socket connect and the negotiation.
    pub connect: Duration,
    /// `milter_command_timeout`: each read or write around connection and envelope events.
    pub command: Duration,
    /// `milter_content_timeout`: each read or write during headers, body and end of message.
    pub content: Duration,
}

impl Timeouts {
    /// 30 s / 30 s / 300 s.
    pub fn postfix() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(30),
            command: Duration::from_secs(30),
            content: Duration::from_secs(300),
        }
    }

    fn for_phase(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Negotiation => self.connect,
            Phase::Content => self.content,
            Phase::Command | Phase::Idle => self.command,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::postfix()
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Timeouts.
    pub timeouts: Timeouts,
    /// The offer and limits.
    pub session: MtaConfig,
    /// The MTA's host name (`j`, and the default `{daemon_name}`).
    pub hostname: String,
    /// The MTA's own header (e.g. `Received: ...\r\n`), put on top of every message, hidden
    /// from the milter, counted by insert indexes (as Postfix's own `Received:`). None by
    /// default.
    pub hidden_received: Option<Bytes>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeouts: Timeouts::postfix(),
            session: MtaConfig::postfix(),
            hostname: "localhost".to_owned(),
            hidden_received: None,
        }
    }
}

/// The SMTP side of one message: who connected, who sends to whom.
///
/// The connection fields (client address/name/port, HELO, daemon name) are used for the
/// first message of a connection only.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(serde::Deserialize))]
#[cfg_attr(feature = "cli", serde(default, deny_unknown_fields))]
pub struct Envelope {
    /// SMTP client address (`None`: family unknown).
    pub client_addr: Option<IpAddr>,
    /// SMTP client port.
    pub client_port: u16,
    /// SMTP client host name; Postfix sends `[addr]` when it has none.
    pub client_name: Option<String>,
    /// HELO/EHLO argument.
    pub helo: String,
    /// Envelope sender, with or without angle brackets; empty for the null sender.
    pub sender: String,
    /// MAIL FROM ESMTP parameters (`SIZE=123`, `BODY=8BITMIME`).
    pub sender_args: Vec<String>,
    /// Envelope recipients.
    pub recipients: Vec<String>,
    /// SASL login name: sets `{auth_authen}` and `{auth_type}`.
    pub auth_user: Option<String>,
    /// SASL mechanism for `{auth_type}` (default `PLAIN` when `auth_user` is set).
    pub auth_type: Option<String>,
    /// More macro values (`{name}` or `name` keys); they override the computed ones.
    pub macros: BTreeMap<String, String>,
    /// `{daemon_name}` (Postfix: `milter_macro_daemon_name`, e.g. `ORIGINATING`).
    pub daemon_name: Option<String>,
}

impl Default for Envelope {
    fn default() -> Self {
        Envelope {
            client_addr: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            client_port: 42424,
            client_name: Some("localhost".to_owned()),
            helo: "localhost".to_owned(),
            sender: String::new(),
            sender_args: Vec::new(),
            recipients: vec!["postmaster@localhost".to_owned()],
            auth_user: None,
            auth_type: None,
            macros: BTreeMap::new(),
            daemon_name: None,
        }
    }
}

/// A message with its envelope.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// The envelope.
    pub envelope: Envelope,
    /// The message bytes, as received (any line endings).
    pub message: Bytes,
}

/// Anything the client can talk through.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Conn {
    New,
    Open,
    /// The milter ended the connection at CONNECT or HELO.
    Refused(&'static str, Verdict),
}

/// One milter connection, MTA side. See the [module docs](self).
pub struct MilterClient {
    io: Box<dyn Io>,
    session: MtaSession,
    config: ClientConfig,
    conn: Conn,
    /// When the last transaction's MAIL went out (see [`MilterClient::mail_sent_at`]).
    mail_sent_at: Option<std::time::Instant>,
    messages: u64,
}

impl std::fmt::Debug for MilterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilterClient")
            .field("session", &self.session)
            .field("messages", &self.messages)
            .finish_non_exhaustive()
    }
}

fn with_brackets(a: &str) -> String {
    let t = a.trim();
    if t.starts_with('<') && t.ends_with('>') {
        t.to_owned()
    } else {
        format!("<{t}>")
    }
}

fn bare_addr(a: &str) -> &str {
    let t = a.trim();
    t.strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(t)
}

impl MilterClient {
    /// Connects to `endpoint` (`inet:host:port`, `inet:port@host`, `unix:/path`) and
    /// negotiates.
    pub async fn connect(endpoint: &str, config: ClientConfig) -> Result<MilterClient, Error> {
        let ep = endpoint::parse_connect(endpoint)?;
        let limit = config.timeouts.connect;
        let io: Box<dyn Io> = match ep {
            Endpoint::Tcp { host, port, .. } => {
                let s = tokio::time::timeout(limit, tokio::net::TcpStream::connect((host, port)))
                    .await
                    .map_err(|_| Error::Timeout(Phase::Negotiation))??;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            #[cfg(unix)]
            Endpoint::Unix(path) => {
                let s = tokio::time::timeout(limit, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| Error::Timeout(Phase::Negotiation))??;
                Box::new(s)
            }
            #[cfg(not(unix))]
            Endpoint::Unix(_) => {
                return Err(Error::Address {
                    spec: endpoint.to_owned(),
                    reason: "unix sockets are not supported here".to_owned(),
                });
            }
        };
        MilterClient::over(io, config).await
    }

    /// Negotiates over an already connected stream (a socket, or an in-memory duplex).
    pub async fn over(io: impl Io + 'static, config: ClientConfig) -> Result<MilterClient, Error> {
        let mut c = MilterClient {
            io: Box::new(io),
            session: MtaSession::new(config.session.clone()),
            config,
            conn: Conn::New,
            mail_sent_at: None,
            messages: 0,
        };
        c.session.negotiate()?;
        c.flush().await?;
        loop {
            match c.session.poll_event()? {
                Some(MtaEvent::Negotiated(o)) => {
                    tracing::debug!(version = o.version, actions = ?o.actions, protocol = ?o.protocol, "milter negotiated");
                    break;
                }
                Some(_) => {}
                None => c.fill().await?,
            }
        }
        Ok(c)
    }

    /// The sans-IO session underneath.
    pub fn session(&self) -> &MtaSession {
        &self.session
    }

    /// Messages sent on this connection.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// When the last message's MAIL was sent: after CONNECT and HELO on a new connection, so a
    /// load generator can time MAIL..final answer apart from the connection's setup. `None`
    /// before the first MAIL, and for a message refused at CONNECT or HELO.
    pub fn mail_sent_at(&self) -> Option<std::time::Instant> {
        self.mail_sent_at
    }

    /// Sends `tx` through the milter.
    pub async fn send_transaction(&mut self, tx: &Transaction) -> Result<Outcome, Error> {
        self.send(&tx.envelope, &tx.message).await
    }

    /// Sends one message through the milter and collects what it said. The first message
    /// opens the SMTP side (CONNECT, HELO); later ones are preceded by ABORT.
    ///
    /// A milter that breaks the protocol gives an error and the connection is unusable; a
    /// refusal is an [`Outcome`], not an error.
    pub async fn send(&mut self, env: &Envelope, message: &[u8]) -> Result<Outcome, Error> {
        let mut original = Message::parse(message);
        if let Some(h) = &self.config.hidden_received {
            original = original.with_hidden_header(h);
        }
        let mut out = Outcome {
            stages: Vec::new(),
            verdict: Verdict::Continue,
            final_stage: "EOM",
            modifications: Vec::new(),
            rejected_recipients: Vec::new(),
            leading_space: self.session.leading_space(),
            body_skipped: false,
            progress: 0,
            original,
            sender: bare_addr(&env.sender).to_owned(),
            recipients: env
                .recipients
                .iter()
                .map(|r| bare_addr(r).to_owned())
                .collect(),
        };
        let result = self.run(env, &mut out).await;
        self.messages += 1;
        result.map(|()| out)
    }

    async fn run(&mut self, env: &Envelope, out: &mut Outcome) -> Result<(), Error> {
        self.mail_sent_at = None;
        if self.conn == Conn::New {
            self.open(env, out).await?;
        }
        if let Conn::Refused(stage, v) = &self.conn {
            out.final_stage = stage;
            out.verdict = v.clone();
            return Ok(());
        }
        if self.messages > 0 {
            self.session.abort()?;
        }
        self.set_extra_macros(env);
        // MAIL
        self.session
            .set_macro("mail_addr", bare_addr(&env.sender).to_owned());
        if let Some(u) = &env.auth_user {
            let t = env.auth_type.clone().unwrap_or_else(|| "PLAIN".to_owned());
            self.session.set_macro("auth_type", t);
            self.session.set_macro("auth_authen", u.clone());
        } else {
            self.session.remove_macro("auth_type");
            self.session.remove_macro("auth_authen");
        }
        self.session.remove_macro("i");
        self.set_extra_macros(env);
        let args = EnvelopeArgs {
            address: Bytes::from(with_brackets(&env.sender)),
            args: env
                .sender_args
                .iter()
                .map(|a| Bytes::from(a.clone()))
                .collect(),
        };
        self.mail_sent_at = Some(std::time::Instant::now());
        let sent = self.session.mail(&args)?;
        if let Some(v) = self.answer(sent, out).await?
            && !self.continues(&v)
        {
            return self.finish(out, v);
        }
        // RCPT. Like Postfix, the queue id `i` exists only once a recipient was accepted.
        let mut accepted = 0usize;
        let mut last_refusal = None;
        for r in &env.recipients {
            self.session.set_macro("rcpt_addr", bare_addr(r).to_owned());
            self.set_extra_macros(env);
            let args = EnvelopeArgs {
                address: Bytes::from(with_brackets(r)),
                args: Vec::new(),
            };
            let sent = self.session.rcpt(&args)?;
            match self.answer(sent, out).await? {
                None | Some(Verdict::Continue) => {
                    accepted += 1;
                    if accepted == 1 {
                        self.session
                            .set_macro("i", format!("{:010X}", queue_id(self.messages)));
                    }
                }
                Some(v @ (Verdict::Reject | Verdict::Tempfail | Verdict::Reply(_))) => {
                    out.rejected_recipients
                        .push((bare_addr(r).to_owned(), v.clone()));
                    last_refusal = Some(v);
                }
                Some(v) => return self.finish(out, v),
            }
        }
        if accepted == 0 {
            let v = last_refusal.unwrap_or(Verdict::Reject);
            out.final_stage = "RCPT";
            out.verdict = v;
            return Ok(());
        }
        // DATA
        let sent = self.session.data()?;
        if let Some(v) = self.answer(sent, out).await?
            && !self.continues(&v)
        {
            return self.finish(out, v);
        }
        // Headers, as the milter sees them.
        let headers: Vec<(Bytes, Bytes)> = out
            .original
            .milter_headers()
            .map(|f| {
                (
                    Bytes::copy_from_slice(f.name()),
                    Bytes::copy_from_slice(f.value()),
                )
            })
            .collect();
        for (name, value) in &headers {
            let sent = self.session.header(name, value)?;
            if let Some(v) = self.answer(sent, out).await?
                && !self.continues(&v)
            {
                return self.finish(out, v);
            }
        }
        let sent = self.session.end_of_headers()?;
        if let Some(v) = self.answer(sent, out).await?
            && !self.continues(&v)
        {
            return self.finish(out, v);
        }
        let body = out.original.milter_body();
        for chunk in body_chunks(&body) {
            let sent = self.session.body(chunk)?;
            if sent == Sent::Skipped && self.session.body_skipped() {
                break;
            }
            match self.answer(sent, out).await? {
                Some(Verdict::Skip) => {
                    out.body_skipped = true;
                    break;
                }
                Some(v) if !self.continues(&v) => return self.finish(out, v),
                _ => {}
            }
        }
        let sent = self.session.end_of_message()?;
        let v = self.answer(sent, out).await?.unwrap_or(Verdict::Continue);
        out.final_stage = "EOM";
        out.verdict = v;
        tracing::debug!(
            verdict = out.verdict.name(),
            modifications = out.modifications.len(),
            "milter decided"
        );
        Ok(())
    }

    fn continues(&self, v: &Verdict) -> bool {
        matches!(v, Verdict::Continue)
    }

    fn finish(&mut self, out: &mut Outcome, v: Verdict) -> Result<(), Error> {
        out.final_stage = out.stages.last().map_or("EOM", |s| s.stage);
        out.verdict = v;
        Ok(())
    }

    async fn open(&mut self, env: &Envelope, out: &mut Outcome) -> Result<(), Error> {
        let name = env
            .client_name
            .clone()
            .filter(|n| !n.is_empty() && n != "unknown");
        let hostname = match (&name, env.client_addr) {
            (Some(n), _) => n.clone(),
            (None, Some(a)) => format!("[{a}]"),
            (None, None) => "localhost".to_owned(),
        };
        let socket = match env.client_addr {
            Some(addr) => SocketInfo::Inet {
                addr,
                port: env.client_port,
            },
            None => SocketInfo::Unknown,
        };
        let s = &mut self.session;
        s.set_macro("j", self.config.hostname.clone());
        s.set_macro(
            "daemon_name",
            env.daemon_name
                .clone()
                .unwrap_or_else(|| self.config.hostname.clone()),
        );
        s.set_macro("v", format!("milter-core {}", env!("CARGO_PKG_VERSION")));
        if let Some(a) = env.client_addr {
            s.set_macro("_", format!("{hostname} [{a}]"));
            s.set_macro("client_addr", a.to_string());
            s.set_macro("client_port", env.client_port.to_string());
        }
        s.set_macro("client_name", name.unwrap_or_else(|| "unknown".to_owned()));
        self.set_extra_macros(env);
        let sent = self.session.connect(&ConnectInfo {
            hostname: Bytes::from(hostname),
            socket,
        })?;
        if let Some(v) = self.answer(sent, out).await?
            && !self.continues(&v)
        {
            self.conn = Conn::Refused("CONNECT", v);
            return Ok(());
        }
        let sent = self.session.helo(env.helo.as_bytes())?;
        if let Some(v) = self.answer(sent, out).await?
            && !self.continues(&v)
        {
            self.conn = Conn::Refused("HELO", v);
            return Ok(());
        }
        self.conn = Conn::Open;
        Ok(())
    }

    fn set_extra_macros(&mut self, env: &Envelope) {
        for (k, v) in &env.macros {
            self.session.set_macro(k, v.clone());
        }
    }

    /// Writes what is queued if a reply is due, then reads until the final answer.
    /// Commands that expect no reply stay buffered, so they go out with the next batch.
    async fn answer(&mut self, sent: Sent, out: &mut Outcome) -> Result<Option<Verdict>, Error> {
        if sent != Sent::AwaitingReply {
            return Ok(None);
        }
        let stage = self.session.pending().map_or("?", command_name);
        self.flush().await?;
        loop {
            match self.session.poll_event()? {
                Some(MtaEvent::Verdict { verdict, .. }) => {
                    out.stages.push(StageVerdict {
                        stage,
                        verdict: verdict.clone(),
                    });
                    return Ok(Some(verdict));
                }
                Some(MtaEvent::Modification(m)) => out.modifications.push(m),
                Some(MtaEvent::Progress) => out.progress += 1,
                Some(MtaEvent::Negotiated(_)) => {}
                None => self.fill().await?,
            }
        }
    }

    async fn flush(&mut self) -> Result<(), Error> {
        if self.session.output().is_empty() {
            return Ok(());
        }
        let phase = match self.session.phase() {
            Phase::Idle => Phase::Command,
            p => p,
        };
        let limit = self.config.timeouts.for_phase(phase);
        let buf = self.session.output().split().freeze();
        tokio::time::timeout(limit, self.io.write_all(&buf))
            .await
            .map_err(|_| Error::Timeout(phase))??;
        Ok(())
    }

    /// One read, timed by the phase of the pending reply.
    async fn fill(&mut self) -> Result<(), Error> {
        let phase = self.session.phase();
        let limit = self.config.timeouts.for_phase(phase);
        let buf = self.session.read_buf();
        buf.reserve(8192);
        let n = tokio::time::timeout(limit, self.io.read_buf(buf))
            .await
            .map_err(|_| Error::Timeout(phase))??;
        if n == 0 {
            self.session.eof()?;
            return Err(ProtocolError::Truncated { have: 0, need: 5 }.into());
        }
        Ok(())
    }

    /// Sends QUIT and closes the connection.
    pub async fn quit(mut self) -> Result<(), Error> {
        if !self.session.is_closed() {
            self.session.quit()?;
        }
        self.flush().await?;
        let _ = tokio::time::timeout(self.config.timeouts.command, self.io.shutdown()).await;
        Ok(())
    }
}

/// A queue ID-like value, distinct per message of a process.
fn queue_id(n: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0x1_0000);
    SEQ.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37) ^ n
}
