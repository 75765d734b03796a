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
        match command {
            code::CONNECT => &self.connect,
            code::HELO => &self.helo,
            code::MAIL => &self.mail,
            code::RCPT => &self.rcpt,
            code::DATA => &self.data,
            code::HEADER | code::EOH => &self.eoh,
            code::BODY | code::EOB => &self.eom,
            _ => &self.unknown,
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

/// The stage whose macro list Postfix sends before a command.
fn macro_stage(command: u8) -> Option<Stage> {
    Some(match command {
        code::CONNECT => Stage::Connect,
        code::HELO => Stage::Helo,
        code::MAIL => Stage::MailFrom,
        code::RCPT => Stage::RcptTo,
        code::DATA => Stage::Data,
        code::HEADER | code::EOH => Stage::EndOfHeaders,
        code::BODY | code::EOB => Stage::EndOfMessage,
        _ => return None,
    })
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    Negotiated,
    /// Connected, before MAIL (also after HELO and after ABORT).
    Connected,
    Mail,
    Rcpt,
    Data,
    Headers,
    Body,
    Eom,
    /// The message got its final answer; only ABORT, MAIL, HELO, UNKNOWN or QUIT may follow.
    MessageDone,
    /// The milter accepted or refused the connection itself; only QUIT may follow.
    ConnectionDone,
    Closed,
}

impl State {
    fn phrase(self) -> &'static str {
        match self {
            State::Fresh => "before negotiation",
            State::Negotiated => "before CONNECT",
            State::Connected => "before MAIL",
            State::Mail => "after MAIL",
            State::Rcpt => "after RCPT",
            State::Data => "after DATA",
            State::Headers => "among the headers",
            State::Body => "in the body",
            State::Eom => "at end of message",
            State::MessageDone => "after the message's final answer",
            State::ConnectionDone => "after the milter ended the connection",
            State::Closed => "after QUIT",
        }
    }
}

/// The MTA side of one milter connection. See the [module docs](self).
#[derive(Debug)]
pub struct MtaSession {
    config: MtaConfig,
    decoder: FrameDecoder,
    read: BytesMut,
    out: BytesMut,
    state: State,
    /// The command whose reply is due.
    pending: Option<u8>,
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

fn bare(name: &str) -> &str {
    name.strip_prefix('{')
        .and_then(|n| n.strip_suffix('}'))
        .unwrap_or(name)
}

fn unexpected(code: u8, state: &'static str) -> ProtocolError {
    ProtocolError::UnexpectedReply {
        code: Code(code),
        state,
    }
}

fn check_field(field: &'static str, v: &[u8]) -> Result<(), UsageError> {
    if v.contains(&0) {
        return Err(UsageError::InvalidField {
            field,
            reason: "contains a NUL byte",
        });
    }
    Ok(())
}

impl MtaSession {
    /// A session that will make `config`'s offer.
    pub fn new(config: MtaConfig) -> MtaSession {
        MtaSession {
            decoder: FrameDecoder::new(config.max_frame),
            config,
            read: BytesMut::new(),
            out: BytesMut::new(),
            state: State::Fresh,
            pending: None,
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
        self.pending.is_some()
    }

    /// The command whose reply is due.
    pub fn pending(&self) -> Option<u8> {
        self.pending
    }

    /// Whether the milter asked to skip the rest of this message's body.
    pub fn body_skipped(&self) -> bool {
        self.skip_body
    }

    /// Whether QUIT was sent.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the milter ended the connection with its answer to CONNECT or HELO.
    pub fn connection_done(&self) -> bool {
        self.state == State::ConnectionDone
    }

    /// Which timeout applies while waiting for the milter, as Postfix times it: command
    /// timeout for negotiation and the envelope, content timeout for headers, body and end
    /// of message.
    pub fn phase(&self) -> Phase {
        match self.pending {
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
            .insert(bare(name).to_owned(), value.into());
    }

    /// Removes a macro value.
    pub fn remove_macro(&mut self, name: &str) {
        self.macro_values.remove(bare(name));
    }

    /// The value a macro would be sent with.
    pub fn macro_value(&self, name: &str) -> Option<&Bytes> {
        self.macro_values.get(bare(name))
    }

    /// Queues the negotiation offer. First call of a session.
    pub fn negotiate(&mut self) -> Result<Sent, UsageError> {
        self.ready_for(code::OPTNEG, &[State::Fresh])?;
        Command::OptNeg(OptNeg {
            version: self.config.version,
            actions: self.config.actions,
            protocol: self.config.protocol,
        })
        .encode(&mut self.out);
        self.pending = Some(code::OPTNEG);
        Ok(Sent::AwaitingReply)
    }

    /// Queues CONNECT (with its macros).
    pub fn connect(&mut self, info: &ConnectInfo) -> Result<Sent, UsageError> {
        self.ready_for(code::CONNECT, &[State::Negotiated])?;
        check_field("client host name", &info.hostname)?;
        match &info.socket {
            crate::proto::SocketInfo::Unix { path } => check_field("socket path", path)?,
            crate::proto::SocketInfo::Unparsed { raw, .. } => check_field("client address", raw)?,
            _ => {}
        }
        Ok(self.event(Command::Connect(info.clone()), State::Connected))
    }

    /// Queues HELO.
    pub fn helo(&mut self, helo: &[u8]) -> Result<Sent, UsageError> {
        self.ready_for(code::HELO, &[State::Connected, State::MessageDone])?;
        check_field("HELO name", helo)?;
        Ok(self.event(
            Command::Helo(Bytes::copy_from_slice(helo)),
            State::Connected,
        ))
    }

    /// Queues MAIL; starts a new message.
    pub fn mail(&mut self, sender: &Envelope) -> Result<Sent, UsageError> {
        self.ready_for(code::MAIL, &[State::Connected, State::MessageDone])?;
        check_envelope(sender)?;
        self.reset_message();
        Ok(self.event(Command::Mail(sender.clone()), State::Mail))
    }

    /// Queues RCPT.
    pub fn rcpt(&mut self, recipient: &Envelope) -> Result<Sent, UsageError> {
        self.ready_for(code::RCPT, &[State::Mail, State::Rcpt])?;
        check_envelope(recipient)?;
        Ok(self.event(Command::Rcpt(recipient.clone()), State::Rcpt))
    }

    /// Queues DATA.
    pub fn data(&mut self) -> Result<Sent, UsageError> {
        self.ready_for(code::DATA, &[State::Rcpt])?;
        Ok(self.event(Command::Data, State::Data))
    }

    /// Queues one header field. `value` is everything after the colon, folds included,
    /// with any line ending (CRLF becomes LF, as Postfix sends it). Without
    /// `HEADER_LEADING_SPACE` one leading space is removed, as Postfix does.
    pub fn header(&mut self, name: &[u8], value: &[u8]) -> Result<Sent, UsageError> {
        self.ready_for(code::HEADER, &[State::Rcpt, State::Data, State::Headers])?;
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
            State::Headers,
        ))
    }

    /// Queues end of headers.
    pub fn end_of_headers(&mut self) -> Result<Sent, UsageError> {
        self.ready_for(code::EOH, &[State::Rcpt, State::Data, State::Headers])?;
        Ok(self.event(Command::EndOfHeaders, State::Body))
    }

    /// Queues one body chunk of at most 65535 bytes (see [`body_chunks`]). After the milter
    /// answered SKIP, nothing is sent and [`Sent::Skipped`] is returned.
    pub fn body(&mut self, chunk: &[u8]) -> Result<Sent, UsageError> {
        self.ready_for(code::BODY, &[State::Body])?;
        if chunk.len() > MAX_CHUNK {
            return Err(UsageError::InvalidField {
                field: "body chunk",
                reason: "longer than 65535 bytes",
            });
        }
        if self.skip_body {
            return Ok(Sent::Skipped);
        }
        Ok(self.event(Command::Body(Bytes::copy_from_slice(chunk)), State::Body))
    }

    /// Queues end of message. Modifications arrive as events, then the final verdict.
    pub fn end_of_message(&mut self) -> Result<Sent, UsageError> {
        self.ready_for(
            code::EOB,
            &[State::Rcpt, State::Data, State::Headers, State::Body],
        )?;
        self.send_macros(code::EOB);
        Command::EndOfMessage(Bytes::new()).encode(&mut self.out);
        self.state = State::Eom;
        self.pending = Some(code::EOB);
        Ok(Sent::AwaitingReply)
    }

    /// Queues an SMTP command the MTA did not recognise.
    pub fn unknown(&mut self, line: &[u8]) -> Result<Sent, UsageError> {
        self.ready_for(
            code::UNKNOWN,
            &[
                State::Connected,
                State::Mail,
                State::Rcpt,
                State::MessageDone,
            ],
        )?;
        check_field("command line", line)?;
        let state = self.state;
        Ok(self.event(Command::Unknown(Bytes::copy_from_slice(line)), state))
    }

    /// Queues ABORT: the message is forgotten, the connection stays. Never answered.
    pub fn abort(&mut self) -> Result<(), UsageError> {
        self.ready_for(
            code::ABORT,
            &[
                State::Connected,
                State::Mail,
                State::Rcpt,
                State::Data,
                State::Headers,
                State::Body,
                State::MessageDone,
            ],
        )?;
        Command::Abort.encode(&mut self.out);
        self.reset_message();
        self.state = State::Connected;
        Ok(())
    }

    /// Queues QUIT. Allowed at any time, even while a reply is due (the MTA gives up).
    pub fn quit(&mut self) -> Result<(), UsageError> {
        if self.state == State::Closed {
            return Err(UsageError::Closed);
        }
        Command::Quit.encode(&mut self.out);
        self.pending = None;
        self.state = State::Closed;
        Ok(())
    }

    /// The milter closed the connection. An error if it did so inside a frame or while a
    /// reply was due.
    pub fn eof(&mut self) -> Result<(), ProtocolError> {
        self.decoder.decode_eof(&mut self.read)?;
        if let Some(c) = self.pending {
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
        let Some(pending) = self.pending else {
            return Err(unexpected(code_byte, "while no reply is due"));
        };
        let reply = Reply::decode(frame)?;
        match (pending, reply) {
            (code::OPTNEG, Reply::OptNeg(o)) => self.on_negotiated(o).map(Some),
            (code::OPTNEG, _) => Err(unexpected(code_byte, "in answer to OPTNEG")),
            (_, Reply::OptNeg(_)) => Err(unexpected(code_byte, "after negotiation")),
            (code::EOB, Reply::Progress) => Ok(Some(MtaEvent::Progress)),
            (_, Reply::Progress) => Err(unexpected(code_byte, "before end of message")),
            (code::EOB, Reply::Modification(m)) => self.on_modification(code_byte, m).map(Some),
            (_, Reply::Modification(_)) => Err(unexpected(code_byte, "before end of message")),
            (command, Reply::Verdict(v)) => self.on_verdict(command, v).map(Some),
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
        self.pending = None;
        self.state = State::Negotiated;
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
        let connection_stage = matches!(command, code::CONNECT | code::HELO);
        match &v {
            Verdict::Skip => {
                let negotiated = self
                    .options
                    .as_ref()
                    .is_some_and(|o| o.protocol.contains(ProtocolFlags::SKIP));
                if command != code::BODY || !negotiated {
                    return Err(unexpected(
                        v.code(),
                        "other than in answer to BODY with SKIP negotiated",
                    ));
                }
            }
            Verdict::Discard if connection_stage || command == code::UNKNOWN => {
                return Err(unexpected(v.code(), "outside a message"));
            }
            _ => {}
        }
        self.pending = None;
        match (&v, command) {
            (Verdict::Continue, code::EOB) => self.state = State::MessageDone,
            (Verdict::Continue, _) => {}
            (Verdict::Skip, _) => self.skip_body = true,
            (Verdict::Shutdown, _) => self.state = State::ConnectionDone,
            (_, code::CONNECT | code::HELO) => self.state = State::ConnectionDone,
            // A refusal at RCPT refuses only that recipient.
            (Verdict::Reject | Verdict::Tempfail | Verdict::Reply(_), code::RCPT) => {}
            (_, code::UNKNOWN) => {}
            _ => self.state = State::MessageDone,
        }
        Ok(MtaEvent::Verdict {
            command,
            verdict: v,
        })
    }

    fn ready_for(&self, command: u8, allowed: &[State]) -> Result<(), UsageError> {
        if self.state == State::Closed {
            return Err(UsageError::Closed);
        }
        if self.pending.is_some() {
            return Err(UsageError::ReplyPending);
        }
        if !allowed.contains(&self.state) {
            return Err(UsageError::OutOfOrder {
                command: command_name(command),
                state: self.state.phrase(),
            });
        }
        Ok(())
    }

    fn reset_message(&mut self) {
        self.skip_body = false;
        self.modifications = 0;
        self.replaced_body = 0;
        self.body_run = BodyRun::None;
    }

    /// Macros, then the command unless negotiated away; sets the reply expectation.
    fn event(&mut self, cmd: Command, next: State) -> Sent {
        let c = cmd.code();
        self.send_macros(c);
        self.state = next;
        let (skips, no_reply) = match &self.options {
            Some(o) => (o.skipped(c), o.no_reply(c)),
            None => (false, false),
        };
        if skips {
            return Sent::Skipped;
        }
        cmd.encode(&mut self.out);
        if no_reply {
            Sent::NoReply
        } else {
            self.pending = Some(c);
            Sent::AwaitingReply
        }
    }

    fn send_macros(&mut self, command: u8) {
        let requested =
            macro_stage(command).and_then(|s| self.options.as_ref().and_then(|o| o.macros_for(s)));
        let names = requested.unwrap_or_else(|| self.config.default_macros.for_command(command));
        let pairs = names
            .iter()
            .filter_map(|n| {
                let v = self.macro_values.get(bare(n))?;
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
