//! The MTA side of a milter conversation, sans-IO: what Postfix 3.x does, as a state machine.
//!
//! [`MtaSession`] turns API calls (`connect`, `mail`, `header`, ...) into frames in
//! [`output`](MtaSession::output), and bytes read from the milter (put into
//! [`read_buf`](MtaSession::read_buf)) into [`MtaEvent`]s. It behaves like Postfix:
//!
//! - it offers version 6, every action and [`ProtocolFlags::POSTFIX_V6`], and refuses an answer
//!   that asks for more than that;
//! - before every event, including each HEADER (`L`) and BODY (`B`) and events the milter opted
//!   out of, it sends a macro frame (`D`), possibly empty, with the milter's requested macros or
//!   else Postfix's defaults, leaving out macros that have no value;
//! - it leaves out events negotiated away (`NO_*`), expects no reply where `NR_*` was
//!   negotiated, and stops sending body after a SKIP;
//! - without `HEADER_LEADING_SPACE` it strips one space from header values on the way out.
//!
//! It validates every reply strictly (the milter is the peer; its mistakes are
//! [`ProtocolError`]s) and refuses API calls that would break the protocol with a
//! [`UsageError`], leaving the session unchanged.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use crate::error::{Code, NegotiateError, Phase, ProtocolError, UsageError};
use crate::negotiate::Negotiated;
use crate::proto::command::{Command, ConnectInfo, Envelope, OptNeg, code, command_name};
use crate::proto::flags::{Actions, ProtocolFlags, Stage};
use crate::proto::reply::{Modification, OptNegReply, Reply, Verdict};
use crate::proto::rules::{self, Effect, ReplyKind, check_field};
use crate::session::order::{Admitted, Conn, Order, Refusal, Side};
use crate::wire::{DEFAULT_RECV_MAX, FrameDecoder, MAX_CHUNK};

/// Macro lists per event, used for the stages the milter did not ask about.
///
/// [`DefaultMacros::postfix`] holds Postfix's `milter_*_macros` defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultMacros {
    /// `milter_connect_macros`.
    pub connect: Vec<String>,
    /// `milter_helo_macros`.
    pub helo: Vec<String>,
    /// `milter_mail_macros`.
    pub mail: Vec<String>,
    /// `milter_rcpt_macros`.
    pub rcpt: Vec<String>,
    /// `milter_data_macros`.
    pub data: Vec<String>,
    /// `milter_end_of_header_macros` (also sent before every header).
    pub eoh: Vec<String>,
    /// `milter_end_of_data_macros` (also sent before every body chunk).
    pub eom: Vec<String>,
    /// `milter_unknown_command_macros`.
    pub unknown: Vec<String>,
}

fn words(s: &str) -> Vec<String> {
    s.split_ascii_whitespace().map(str::to_owned).collect()
}

impl DefaultMacros {
    /// Postfix 3.x defaults (`mail_params.h`).
    pub fn postfix() -> DefaultMacros {
        DefaultMacros {
            connect: words("j {daemon_name} {daemon_addr} v _"),
            helo: words("{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}"),
            mail: words(
                "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}",
            ),
            rcpt: words("i {rcpt_addr} {rcpt_host} {rcpt_mailer}"),
            data: words("i"),
            eoh: words("i"),
            eom: words("i"),
            unknown: Vec::new(),
        }
    }

    fn for_command(&self, command: u8) -> &[String] {
        match rules::command(command).and_then(|r| r.macro_stage) {
            Some(Stage::Connect) => &self.connect,
            Some(Stage::Helo) => &self.helo,
            Some(Stage::MailFrom) => &self.mail,
            Some(Stage::RcptTo) => &self.rcpt,
            Some(Stage::Data) => &self.data,
            Some(Stage::EndOfHeaders) => &self.eoh,
            Some(Stage::EndOfMessage) => &self.eom,
            None => &self.unknown,
        }
    }
}

impl Default for DefaultMacros {
    fn default() -> Self {
        DefaultMacros::postfix()
    }
}

/// What the MTA offers and how much it accepts.
#[derive(Debug, Clone)]
pub struct MtaConfig {
    /// Offered protocol version (Postfix: 6).
    pub version: u32,
    /// Offered actions (Postfix: all nine, `0x1FF`).
    pub actions: Actions,
    /// Offered protocol flags (Postfix: [`ProtocolFlags::POSTFIX_V6`]).
    pub protocol: ProtocolFlags,
    /// Largest reply payload accepted, checked before allocating.
    pub max_frame: usize,
    /// Largest total replacement body accepted per message.
    pub max_replaced_body: usize,
    /// Most modifications accepted per message.
    pub max_modifications: usize,
    /// Macro lists for stages the milter did not name.
    pub default_macros: DefaultMacros,
}

impl MtaConfig {
    /// What Postfix 3.x with `milter_protocol = 6` offers.
    pub fn postfix() -> MtaConfig {
        MtaConfig {
            version: 6,
            actions: Actions::all(),
            protocol: ProtocolFlags::POSTFIX_V6,
            max_frame: DEFAULT_RECV_MAX,
            max_replaced_body: 64 * 1024 * 1024,
            max_modifications: 10_000,
            default_macros: DefaultMacros::postfix(),
        }
    }
}

impl Default for MtaConfig {
    fn default() -> Self {
        MtaConfig::postfix()
    }
}

/// What happened to a command handed to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued; the milter owes a reply (wait for [`MtaEvent::Verdict`]).
    AwaitingReply,
    /// Queued; the milter negotiated not to reply (`NR_*`).
    NoReply,
    /// Not sent: the milter negotiated it away (`NO_*`, its macros were still sent), its
    /// version lacks it, or it asked to SKIP the rest of the body.
    Skipped,
}

/// Something the milter said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MtaEvent {
    /// The negotiation answer, validated.
    Negotiated(Negotiated),
    /// The final answer to the pending command.
    Verdict {
        /// The command's code (`C`, `H`, `M`, ..., `E`).
        command: u8,
        /// The answer.
        verdict: Verdict,
    },
    /// A modification, during end of message.
    Modification(Modification),
    /// The milter is still working; the adapter restarts its timer.
    Progress,
}

/// The MTA side of one milter connection. See the [module docs](self).
#[derive(Debug)]
pub struct MtaSession {
    config: MtaConfig,
    decoder: FrameDecoder,
    read: BytesMut,
    out: BytesMut,
    /// Command order, pending reply and verdict effects: the rules both sides share.
    order: Order,
    options: Option<Negotiated>,
    macro_values: HashMap<String, Bytes>,
    skip_body: bool,
    modifications: usize,
    replaced_body: usize,
    /// Body replacement started and was then interrupted by another modification.
    body_run: BodyRun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyRun {
    None,
    Open,
    Closed,
}

fn unexpected(code: u8, state: &'static str) -> ProtocolError {
    ProtocolError::UnexpectedReply {
        code: Code(code),
        state,
    }
}

impl MtaSession {
    /// A session that will make `config`'s offer.
    pub fn new(config: MtaConfig) -> MtaSession {
        MtaSession {
            decoder: FrameDecoder::new(config.max_frame),
            config,
            read: BytesMut::new(),
            out: BytesMut::new(),
            order: Order::new(),
            options: None,
            macro_values: HashMap::new(),
            skip_body: false,
            modifications: 0,
            replaced_body: 0,
            body_run: BodyRun::None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MtaConfig {
        &self.config
    }

    /// Where the adapter puts bytes read from the milter.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        &mut self.read
    }

    /// Bytes to write to the milter, in one write; the adapter clears it afterwards.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// The milter's validated negotiation answer, once received.
    pub fn options(&self) -> Option<&Negotiated> {
        self.options.as_ref()
    }

    /// Whether header values pass with their leading space (`HEADER_LEADING_SPACE`).
    pub fn leading_space(&self) -> bool {
        self.options.as_ref().is_some_and(Negotiated::leading_space)
    }

    /// Whether a reply is due from the milter.
    pub fn awaiting_reply(&self) -> bool {
        self.order.pending.is_some()
    }

    /// The command whose reply is due.
    pub fn pending(&self) -> Option<u8> {
        self.order.pending
    }

    /// Whether the milter asked to skip the rest of this message's body.
    pub fn body_skipped(&self) -> bool {
        self.skip_body
    }

    /// Whether QUIT was sent.
    pub fn is_closed(&self) -> bool {
        self.order.conn == Conn::Closed
    }

    /// Whether the milter ended the connection with its answer to CONNECT or HELO.
    pub fn connection_done(&self) -> bool {
        self.order.conn == Conn::Done
    }

    /// Which timeout applies while waiting for the milter, as Postfix times it: command
    /// timeout for negotiation and the envelope, content timeout for headers, body and end
    /// of message.
    pub fn phase(&self) -> Phase {
        match self.order.pending {
            Some(code::OPTNEG) => Phase::Negotiation,
            Some(code::HEADER | code::EOH | code::BODY | code::EOB) => Phase::Content,
            Some(_) => Phase::Command,
            None => Phase::Idle,
        }
    }

    /// Sets a macro value, sent with the next event whose list names it (`x` and `{x}` are
    /// the same macro). An empty value counts as no value.
    pub fn set_macro(&mut self, name: &str, value: impl Into<Bytes>) {
        self.macro_values
            .insert(rules::bare_macro_str(name).to_owned(), value.into());
    }

    /// Removes a macro value.
    pub fn remove_macro(&mut self, name: &str) {
        self.macro_values.remove(rules::bare_macro_str(name));
    }

    /// The value a macro would be sent with.
    pub fn macro_value(&self, name: &str) -> Option<&Bytes> {
        self.macro_values.get(rules::bare_macro_str(name))
    }

    /// Queues the negotiation offer. First call of a session.
    pub fn negotiate(&mut self) -> Result<Sent, UsageError> {
        let admitted = self.admit(code::OPTNEG)?;
        Command::OptNeg(OptNeg {
            version: self.config.version,
            actions: self.config.actions,
            protocol: self.config.protocol,
        })
        .encode(&mut self.out);
        self.order = admitted.next;
        Ok(Sent::AwaitingReply)
    }

    /// Queues CONNECT (with its macros).
    pub fn connect(&mut self, info: &ConnectInfo) -> Result<Sent, UsageError> {
        let admitted = self.admit(code::CONNECT)?;
        check_field("client host name", &info.hostname)?;
        match &info.socket {
            crate::proto::SocketInfo::Unix { path } => check_field("socket path", path)?,
            crate::proto::SocketInfo::Unparsed { raw, .. } => check_field("client address", raw)?,
            _ => {}
        }
        Ok(self.event(Command::Connect(info.clone()), admitted))
    }

    /// Queues HELO.
    pub fn helo(&mut self, helo: &[u8]) -> Result<Sent, UsageError> {
        let admitted = self.admit(code::HELO)?;
        check_field("HELO name", helo)?;
        Ok(self.event(Command::Helo(Bytes::copy_from_slice(helo)), admitted))
    }

    /// Queues MAIL; starts a new message.
    pub fn mail(&mut self, sender: &Envelope) -> Result<Sent, UsageError> {
        let admitted = self.admit(code::MAIL)?;
        check_envelope(sender)?;
        self.reset_message();
        Ok(self.event(Command::Mail(sender.clone()), admitted))
    }

    /// Queues RCPT.
    pub fn rcpt(&mut self, recipient: &Envelope) -> Result<Sent, UsageError> {
        let admitted = self.admit(code::RCPT)?;
        check_envelope(recipient)?;
        Ok(self.event(Command::Rcpt(recipient.clone()), admitted))
    }

    /// Queues DATA.
    pub fn data(&mut self) -> Result<Sent, UsageError> {
        let admitted = self.admit(code::DATA)?;
        Ok(self.event(Command::Data, admitted))
    }

    /// Queues one header field. `value` is everything after the colon, folds included,
    /// with any line ending (CRLF becomes LF, as Postfix sends it). Without
    /// `HEADER_LEADING_SPACE` one leading space is removed, as Postfix does.
    pub fn header(&mut self, name: &[u8], value: &[u8]) -> Result<Sent, UsageError> {
        let admitted = self.admit(code::HEADER)?;
        if name.is_empty() {
            return Err(UsageError::InvalidField {
                field: "header name",
                reason: "must not be empty",
            });
        }
        check_field("header name", name)?;
        check_field("header value", value)?;
        let mut v = crlf_to_lf(value);
        if !self.leading_space() && v.first() == Some(&b' ') {
            v.remove(0);
        }
        Ok(self.event(
            Command::Header {
                name: Bytes::copy_from_slice(name),
                value: Bytes::from(v),
            },
            admitted,
        ))
    }

    /// Queues end of headers.
    pub fn end_of_headers(&mut self) -> Result<Sent, UsageError> {
        let admitted = self.admit(code::EOH)?;
        Ok(self.event(Command::EndOfHeaders, admitted))
    }

    /// Queues one body chunk of at most 65535 bytes (see [`body_chunks`]). After the milter
    /// answered SKIP, nothing is sent and [`Sent::Skipped`] is returned.
    pub fn body(&mut self, chunk: &[u8]) -> Result<Sent, UsageError> {
        let admitted = self.admit(code::BODY)?;
        if chunk.len() > MAX_CHUNK {
            return Err(UsageError::InvalidField {
                field: "body chunk",
                reason: "longer than 65535 bytes",
            });
        }
        if self.skip_body {
            return Ok(Sent::Skipped);
        }
        Ok(self.event(Command::Body(Bytes::copy_from_slice(chunk)), admitted))
    }

    /// Queues end of message. Modifications arrive as events, then the final verdict.
    pub fn end_of_message(&mut self) -> Result<Sent, UsageError> {
        let admitted = self.admit(code::EOB)?;
        Ok(self.event(Command::EndOfMessage(Bytes::new()), admitted))
    }

    /// Queues an SMTP command the MTA did not recognise.
    pub fn unknown(&mut self, line: &[u8]) -> Result<Sent, UsageError> {
        let admitted = self.admit(code::UNKNOWN)?;
        check_field("command line", line)?;
        Ok(self.event(Command::Unknown(Bytes::copy_from_slice(line)), admitted))
    }

    /// Queues ABORT: the message is forgotten, the connection stays. Never answered.
    pub fn abort(&mut self) -> Result<(), UsageError> {
        let admitted = self.admit(code::ABORT)?;
        Command::Abort.encode(&mut self.out);
        self.reset_message();
        self.order = admitted.next;
        Ok(())
    }

    /// Queues QUIT. Allowed at any time, even while a reply is due (the MTA gives up).
    pub fn quit(&mut self) -> Result<(), UsageError> {
        let admitted = self.admit(code::QUIT)?;
        Command::Quit.encode(&mut self.out);
        self.order = admitted.next;
        Ok(())
    }

    /// The milter closed the connection. An error if it did so inside a frame or while a
    /// reply was due.
    pub fn eof(&mut self) -> Result<(), ProtocolError> {
        self.decoder.decode_eof(&mut self.read)?;
        if let Some(c) = self.order.pending {
            return Err(ProtocolError::Malformed {
                code: Code(c),
                reason: "the milter closed the connection instead of replying",
            });
        }
        Ok(())
    }

    /// The next thing the milter said, from the bytes in [`read_buf`](Self::read_buf).
    /// `Ok(None)` means more bytes are needed. An error means the milter broke the
    /// protocol; the connection must be closed.
    pub fn poll_event(&mut self) -> Result<Option<MtaEvent>, ProtocolError> {
        let Some(frame) = self.decoder.decode(&mut self.read)? else {
            return Ok(None);
        };
        let code_byte = frame.code;
        let pending = self.order.pending;
        if pending.is_none() {
            // Refused before decoding: nothing the milter says now can be right.
            rules::reply_allowed(None, ReplyKind::Verdict).map_err(|p| unexpected(code_byte, p))?;
        }
        let reply = Reply::decode(frame)?;
        let kind = match &reply {
            Reply::OptNeg(_) => ReplyKind::OptNeg,
            Reply::Verdict(_) => ReplyKind::Verdict,
            Reply::Modification(_) => ReplyKind::Modification,
            Reply::Progress => ReplyKind::Progress,
        };
        rules::reply_allowed(pending, kind).map_err(|p| unexpected(code_byte, p))?;
        match (pending, reply) {
            (_, Reply::OptNeg(o)) => self.on_negotiated(o).map(Some),
            (_, Reply::Progress) => Ok(Some(MtaEvent::Progress)),
            (_, Reply::Modification(m)) => self.on_modification(code_byte, m).map(Some),
            (Some(command), Reply::Verdict(v)) => self.on_verdict(command, v).map(Some),
            (None, Reply::Verdict(_)) => Err(unexpected(code_byte, "while no reply is due")),
        }
    }

    fn on_negotiated(&mut self, o: OptNegReply) -> Result<MtaEvent, ProtocolError> {
        if o.version > self.config.version {
            return Err(NegotiateError::VersionAboveOffer {
                mta: self.config.version,
                milter: o.version,
            }
            .into());
        }
        if o.version < 2 {
            return Err(NegotiateError::UnsupportedVersion(o.version).into());
        }
        let extra_actions = o.actions.difference(self.config.actions);
        let extra_protocol = o.protocol.difference(self.config.protocol);
        if !extra_actions.is_empty() || !extra_protocol.is_empty() {
            return Err(NegotiateError::BeyondOffer {
                actions: extra_actions,
                protocol: extra_protocol,
            }
            .into());
        }
        if !o.macros.is_empty() && !o.actions.contains(Actions::SET_MACROS) {
            tracing::debug!("milter sent macro lists without asking for SETSYMLIST; using them");
        }
        let options = Negotiated {
            version: o.version,
            actions: o.actions,
            protocol: o.protocol,
            macros: o.macros,
        };
        self.options = Some(options.clone());
        self.order.negotiated();
        Ok(MtaEvent::Negotiated(options))
    }

    fn on_modification(
        &mut self,
        code_byte: u8,
        m: Modification,
    ) -> Result<MtaEvent, ProtocolError> {
        let actions = self.options.as_ref().map(|o| o.actions).unwrap_or_default();
        if !actions.contains(m.required_action()) {
            return Err(unexpected(code_byte, "without the negotiated action"));
        }
        m.validate_received()
            .map_err(|_| ProtocolError::Malformed {
                code: Code(code_byte),
                reason: "invalid header name, empty address or NUL in a field",
            })?;
        self.modifications += 1;
        if self.modifications > self.config.max_modifications {
            return Err(ProtocolError::Malformed {
                code: Code(code_byte),
                reason: "more modifications than the configured limit",
            });
        }
        match &m {
            Modification::ReplaceBody(chunk) => {
                if self.body_run == BodyRun::Closed {
                    return Err(unexpected(
                        code_byte,
                        "after other modifications interrupted the body replacement",
                    ));
                }
                self.body_run = BodyRun::Open;
                self.replaced_body = self.replaced_body.saturating_add(chunk.len());
                if self.replaced_body > self.config.max_replaced_body {
                    return Err(ProtocolError::Malformed {
                        code: Code(code_byte),
                        reason: "replacement body larger than the configured limit",
                    });
                }
            }
            _ => {
                if self.body_run == BodyRun::Open {
                    self.body_run = BodyRun::Closed;
                }
            }
        }
        Ok(MtaEvent::Modification(m))
    }

    fn on_verdict(&mut self, command: u8, v: Verdict) -> Result<MtaEvent, ProtocolError> {
        let skip = self.options.as_ref().is_some_and(Negotiated::skip);
        let effect = rules::verdict_effect(command, &v, skip)
            .map_err(|r| unexpected(v.code(), r.phrase()))?;
        self.order.answered(effect);
        if effect == Effect::SkipBody {
            self.skip_body = true;
        }
        Ok(MtaEvent::Verdict {
            command,
            verdict: v,
        })
    }

    /// Whether command `c` may be sent now; nothing changes until [`Self::event`].
    fn admit(&self, c: u8) -> Result<Admitted, UsageError> {
        self.order
            .check(c, self.options.as_ref(), Side::Mta)
            .map_err(|r| match r {
                Refusal::Closed => UsageError::Closed,
                Refusal::ReplyDue => UsageError::ReplyPending,
                Refusal::OutOfOrder(state) => UsageError::OutOfOrder {
                    command: command_name(c),
                    state,
                },
            })
    }

    fn reset_message(&mut self) {
        self.skip_body = false;
        self.modifications = 0;
        self.replaced_body = 0;
        self.body_run = BodyRun::None;
    }

    /// Macros, then the command unless negotiated away; takes the admitted order.
    fn event(&mut self, cmd: Command, admitted: Admitted) -> Sent {
        self.send_macros(cmd.code());
        self.order = admitted.next;
        if !admitted.sent {
            return Sent::Skipped;
        }
        cmd.encode(&mut self.out);
        if admitted.awaits_reply {
            Sent::AwaitingReply
        } else {
            Sent::NoReply
        }
    }

    fn send_macros(&mut self, command: u8) {
        let requested = rules::command(command)
            .and_then(|r| r.macro_stage)
            .and_then(|s| self.options.as_ref().and_then(|o| o.macros_for(s)));
        let names = requested.unwrap_or_else(|| self.config.default_macros.for_command(command));
        let pairs = names
            .iter()
            .filter_map(|n| {
                let v = self.macro_values.get(rules::bare_macro_str(n))?;
                (!v.is_empty() && !v.contains(&0) && !n.as_bytes().contains(&0))
                    .then(|| (Bytes::copy_from_slice(n.as_bytes()), v.clone()))
            })
            .collect();
        Command::Macros {
            for_command: command,
            pairs,
        }
        .encode(&mut self.out);
    }
}

fn check_envelope(e: &Envelope) -> Result<(), UsageError> {
    check_field("address", &e.address)?;
    for a in &e.args {
        check_field("ESMTP argument", a)?;
    }
    Ok(())
}

fn crlf_to_lf(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while let Some(&b) = v.get(i) {
        if b == b'\r' && v.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(b);
        i += 1;
    }
    out
}

/// The body with every line ending made CRLF (a lone LF becomes CRLF; a lone CR is data), as
/// Postfix hands it to a milter.
pub fn to_crlf(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 32);
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        match b {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
        i += 1;
    }
    out
}

/// Splits a body into BODY chunks of at most 65535 bytes, cut at exactly that size as
/// Postfix does (a CRLF pair may straddle two chunks).
pub fn body_chunks(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.chunks(MAX_CHUNK)
}
