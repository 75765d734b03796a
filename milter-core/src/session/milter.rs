//! The milter side of one connection, sans-IO: bytes in, [`Event`]s out; answers in,
//! bytes out.
//!
//! The session enforces the reply discipline MTAs rely on: exactly one final answer per
//! command that expects one, none after macros, abort, quit or a stage negotiated as
//! no-reply, modifications only while end of message awaits its answer. Misuse is refused
//! with a [`UsageError`] before anything is queued, so the stream never desynchronises;
//! a peer that breaks the command order gets a [`ProtocolError`] and the connection should
//! be closed.
//!
//! The command order and what each verdict ends are the rules both sides share
//! ([`crate::proto::rules`]): OPTNEG first and only once; CONNECT after negotiation
//! or after QUIT_NC; HELO and UNKNOWN after CONNECT, outside message content; MAIL outside a
//! message; RCPT after MAIL; DATA, headers, end of headers, body and end of message after
//! RCPT, in that order, headers and body chunks repeating. Steps negotiated away (`NO_*`)
//! may be absent. Nothing but QUIT may come while a reply is due. ABORT inside a message
//! ends it and becomes [`Event::Abort`]; outside one (Postfix sends it at STARTTLS and twice
//! at the end) it is absorbed. A final verdict other than Continue (or Skip) ends the
//! message, except that Reject, Tempfail and a reply code at RCPT refuse only that
//! recipient and a verdict at UNKNOWN refuses only that command; at CONNECT and HELO it
//! ends the connection (Postfix closes the milter stream), as Shutdown does anywhere: only
//! QUIT or QUIT_NC may follow.

use bytes::{Bytes, BytesMut};

use crate::error::{Code, NegotiateError, Phase, ProtocolError, UsageError};
use crate::negotiate::{self, Negotiated, Offer, Request};
use crate::proto::command::{Command, ConnectInfo, Envelope, code, command_name};
use crate::proto::flags::ProtocolFlags;
use crate::proto::macros::{DEFAULT_MACRO_BYTES, Macros};
use crate::proto::reply::{Modification, Reply, Verdict};
use crate::proto::rules::{self, Effect, ReplyKind, VerdictRefusal};
use crate::session::order::{Conn, Order, Side};
use crate::wire::{DEFAULT_RECV_MAX, DEFAULT_SEND_MAX, FrameDecoder, encode_frame};

/// Limits of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Largest payload accepted from the MTA; checked before allocating.
    pub max_frame: usize,
    /// Largest payload sent to the MTA; body replacements are split to fit, other
    /// replies over it are refused.
    pub max_send: usize,
    /// Bytes of macro names and values kept per session.
    pub macro_limit: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_frame: DEFAULT_RECV_MAX,
            max_send: DEFAULT_SEND_MAX,
            macro_limit: DEFAULT_MACRO_BYTES,
        }
    }
}

/// Something the MTA told the milter. Macro frames are absorbed into
/// [`MilterSession::macros`] and never surface as events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The MTA's offer; answer with [`MilterSession::negotiate`].
    Negotiate(Offer),
    /// The SMTP client connected.
    Connect(ConnectInfo),
    /// HELO or EHLO, with its argument.
    Helo(Bytes),
    /// MAIL FROM: a message begins.
    Mail(Envelope),
    /// RCPT TO.
    Rcpt(Envelope),
    /// DATA.
    Data,
    /// One header field, bytes exactly as the MTA sent them.
    Header {
        /// Field name.
        name: Bytes,
        /// Field value; it keeps its leading space only if `HEADER_LEADING_SPACE` was
        /// negotiated.
        value: Bytes,
    },
    /// End of headers.
    EndOfHeaders,
    /// A body chunk (CRLF line endings; a CRLF may be split across chunks).
    Body(Bytes),
    /// End of message; the bytes are a last body chunk, usually empty. Modifications and
    /// progress are allowed until the final reply.
    EndOfMessage(Bytes),
    /// The message under way was abandoned; the connection goes on. Never answered.
    /// Aborts outside a message are absorbed, so this comes at most once per message.
    Abort,
    /// An SMTP command the MTA did not recognise.
    Unknown(Bytes),
    /// The MTA is done; close the connection. Never answered.
    Quit,
    /// This SMTP connection ended; another follows on this milter connection, starting
    /// with CONNECT and without negotiation. Never answered.
    QuitNoClose,
}

impl Event {
    /// The wire code of the command behind the event.
    pub fn code(&self) -> u8 {
        match self {
            Event::Negotiate(_) => code::OPTNEG,
            Event::Connect(_) => code::CONNECT,
            Event::Helo(_) => code::HELO,
            Event::Mail(_) => code::MAIL,
            Event::Rcpt(_) => code::RCPT,
            Event::Data => code::DATA,
            Event::Header { .. } => code::HEADER,
            Event::EndOfHeaders => code::EOH,
            Event::Body(_) => code::BODY,
            Event::EndOfMessage(_) => code::EOB,
            Event::Abort => code::ABORT,
            Event::Unknown(_) => code::UNKNOWN,
            Event::Quit => code::QUIT,
            Event::QuitNoClose => code::QUIT_NC,
        }
    }

    /// A name for logs.
    pub fn name(&self) -> &'static str {
        command_name(self.code())
    }
}

/// State cleared lazily, at the next [`MilterSession::poll_event`], so the handler can
/// still read it (e.g. the queue id for its log line) right after the event that ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stale {
    None,
    Message,
    Connection,
}

/// The milter side of one milter connection.
#[derive(Debug)]
pub struct MilterSession {
    config: SessionConfig,
    decoder: FrameDecoder,
    input: BytesMut,
    output: BytesMut,
    /// Command order, pending reply and verdict effects: the rules both sides share.
    order: Order,
    /// The MTA's offer while negotiation awaits its answer.
    offer: Option<Offer>,
    /// The last event was at a no-reply stage: one `Continue` is swallowed.
    swallow_continue: bool,
    /// A body replacement was queued in this end of message.
    body_replaced: bool,
    stale: Stale,
    failed: Option<ProtocolError>,
    negotiated: Option<Negotiated>,
    connect_info: Option<ConnectInfo>,
    helo: Option<Bytes>,
    macros: Macros,
}

impl MilterSession {
    /// A session waiting for the MTA's negotiation offer.
    pub fn new(config: SessionConfig) -> Self {
        MilterSession {
            config,
            decoder: FrameDecoder::new(config.max_frame),
            input: BytesMut::new(),
            output: BytesMut::new(),
            order: Order::new(),
            offer: None,
            swallow_continue: false,
            body_replaced: false,
            stale: Stale::None,
            failed: None,
            negotiated: None,
            connect_info: None,
            helo: None,
            macros: Macros::with_limit(config.macro_limit),
        }
    }

    /// The limits this session was built with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Where the adapter puts bytes read from the socket. The decoder reserves room for
    /// the frame in progress, never beyond [`SessionConfig::max_frame`].
    pub fn read_buf(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// The next event, or `Ok(None)` when more bytes are needed.
    ///
    /// Macro frames are absorbed, as are aborts outside a message (Postfix sends them at
    /// STARTTLS and twice at the end). An error means the MTA broke the protocol: close the
    /// connection; the session keeps returning the same error.
    pub fn poll_event(&mut self) -> Result<Option<Event>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.swallow_continue = false;
        match self.poll_inner() {
            Ok(ev) => Ok(ev),
            Err(e) => {
                tracing::debug!(error = %e, "milter protocol error; the connection must close");
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn poll_inner(&mut self) -> Result<Option<Event>, ProtocolError> {
        self.clear_stale();
        loop {
            let Some(frame) = self.decoder.decode(&mut self.input)? else {
                return Ok(None);
            };
            let cmd = Command::decode(frame)?;
            if let Some(ev) = self.accept(cmd)? {
                return Ok(Some(ev));
            }
        }
    }

    /// The MTA closed its side. An error if it did so inside a frame; leftover whole
    /// frames are not events any more (the MTA is gone, nobody waits for answers).
    pub fn eof(&mut self) -> Result<(), ProtocolError> {
        while self.decoder.decode_eof(&mut self.input)?.is_some() {}
        Ok(())
    }

    fn clear_stale(&mut self) {
        match std::mem::replace(&mut self.stale, Stale::None) {
            Stale::None => {}
            Stale::Message => self.macros.clear_message(),
            Stale::Connection => {
                self.macros.clear();
                self.connect_info = None;
                self.helo = None;
            }
        }
    }

    /// Applies one command to the state; `Ok(None)` if it was absorbed.
    fn accept(&mut self, cmd: Command) -> Result<Option<Event>, ProtocolError> {
        let c = cmd.code();
        let admitted = self
            .order
            .check(c, self.negotiated.as_ref(), Side::Milter)
            .map_err(|r| unexpected(c, r.phrase()))?;
        if let Command::Macros { for_command, pairs } = cmd {
            self.macros.define(for_command, pairs)?;
            return Ok(None);
        }
        self.order = admitted.next;
        self.swallow_continue = admitted.no_reply;
        let event = match cmd {
            Command::OptNeg(o) => {
                let offer = Offer::from(o);
                self.offer = Some(offer);
                Event::Negotiate(offer)
            }
            Command::Quit => Event::Quit,
            Command::QuitNoClose => {
                self.stale = Stale::Connection;
                Event::QuitNoClose
            }
            // Outside a message (STARTTLS, duplicates, after a final reply) it is absorbed.
            Command::Abort if admitted.idle_abort => return Ok(None),
            Command::Abort => {
                self.end_message();
                Event::Abort
            }
            Command::Connect(info) => {
                self.connect_info = Some(info.clone());
                Event::Connect(info)
            }
            Command::Helo(h) => {
                self.helo = Some(h.clone());
                Event::Helo(h)
            }
            Command::Unknown(line) => Event::Unknown(line),
            Command::Mail(env) => Event::Mail(env),
            Command::Rcpt(env) => Event::Rcpt(env),
            Command::Data => Event::Data,
            Command::Header { name, value } => Event::Header { name, value },
            Command::EndOfHeaders => Event::EndOfHeaders,
            Command::Body(b) => Event::Body(b),
            Command::EndOfMessage(b) => {
                self.body_replaced = false;
                Event::EndOfMessage(b)
            }
            Command::Macros { .. } => return Ok(None),
        };
        Ok(Some(event))
    }

    fn end_message(&mut self) {
        self.body_replaced = false;
        if self.stale == Stale::None {
            self.stale = Stale::Message;
        }
    }

    /// Answers [`Event::Negotiate`] with what `request` asks for, or refuses (then close
    /// the connection; nothing was queued and the session is unchanged).
    pub fn negotiate(&mut self, request: &Request) -> Result<&Negotiated, NegotiateError> {
        let (Some(code::OPTNEG), Some(offer)) = (self.order.pending, self.offer) else {
            return Err(NegotiateError::NotPending);
        };
        let n = negotiate::negotiate(&offer, request)?;
        let reply = Reply::OptNeg(n.to_reply());
        let mut frame = BytesMut::new();
        reply.encode(&mut frame);
        if let Some(first) = request.macros.first()
            && frame.len().saturating_sub(5) > self.config.max_send
        {
            return Err(NegotiateError::InvalidMacroRequest {
                stage: first.stage,
                reason: "the macro lists do not fit in one frame under the send cap",
            });
        }
        self.output.extend_from_slice(&frame);
        self.order.negotiated();
        self.offer = None;
        Ok(self.negotiated.insert(n))
    }

    /// The final answer to the pending command.
    ///
    /// At a stage negotiated as no-reply, `Continue` is swallowed and anything else is
    /// [`UsageError::NoReplyDue`]. `Skip` only answers BODY with SKIP negotiated;
    /// `Discard` only answers message commands (MAIL onward).
    pub fn reply(&mut self, verdict: Verdict) -> Result<(), UsageError> {
        if self.is_closed() {
            return Err(UsageError::Closed);
        }
        let Some(pending) = self.order.pending else {
            if self.swallow_continue && verdict == Verdict::Continue {
                self.swallow_continue = false;
                return Ok(());
            }
            return Err(UsageError::NoReplyDue);
        };
        let not_allowed = || UsageError::VerdictNotAllowed {
            verdict: verdict.name(),
            command: command_name(pending),
        };
        rules::reply_allowed(Some(pending), ReplyKind::Verdict).map_err(|_| not_allowed())?;
        let skip = self.negotiated.as_ref().is_some_and(Negotiated::skip);
        let effect = rules::verdict_effect(pending, &verdict, skip).map_err(|r| match r {
            VerdictRefusal::SkipNotNegotiated => UsageError::ProtocolNotNegotiated {
                what: "skip",
                needed: ProtocolFlags::SKIP,
            },
            VerdictRefusal::NotAllowed(_) => not_allowed(),
        })?;
        tracing::trace!(
            command = command_name(pending),
            verdict = verdict.name(),
            "reply"
        );
        Reply::Verdict(verdict).encode(&mut self.output);
        self.order.answered(effect);
        if matches!(effect, Effect::EndsMessage | Effect::EndsConnection) {
            self.end_message();
        }
        Ok(())
    }

    /// Queues a modification; only while end of message awaits its reply, only with the
    /// action negotiated. [`Modification::ReplaceBody`] is split into frames of at most
    /// [`SessionConfig::max_send`] bytes; it may be sent once per message and nothing may
    /// follow it but progress and the final reply (Postfix refuses mixing).
    pub fn modify(&mut self, m: Modification) -> Result<(), UsageError> {
        self.check_at_eom(m.name())?;
        let needed = m.required_action();
        if !self.negotiated.as_ref().is_some_and(|n| n.allows(needed)) {
            return Err(UsageError::ActionNotNegotiated {
                modification: m.name(),
                needed,
            });
        }
        m.validate()?;
        if self.body_replaced {
            return Err(UsageError::BodyReplacementInterleaved);
        }
        let max = self.config.max_send.max(1);
        if let Modification::ReplaceBody(body) = &m {
            let mut out = BytesMut::with_capacity(body.len() + 5 * (body.len() / max + 1));
            if body.is_empty() {
                encode_frame(m.code(), &[], &mut out);
            }
            for chunk in body.chunks(max) {
                encode_frame(m.code(), chunk, &mut out);
            }
            self.output.extend_from_slice(&out);
            self.body_replaced = true;
            return Ok(());
        }
        let mut frame = BytesMut::new();
        let name = m.name();
        Reply::Modification(m).encode(&mut frame);
        if frame.len().saturating_sub(5) > self.config.max_send {
            return Err(UsageError::InvalidField {
                field: name,
                reason: "does not fit in one frame under the send cap",
            });
        }
        self.output.extend_from_slice(&frame);
        Ok(())
    }

    /// Tells the MTA the milter is still working (restarts its timer); only while end of
    /// message awaits its reply.
    pub fn progress(&mut self) -> Result<(), UsageError> {
        self.check_at_eom("progress")?;
        Reply::Progress.encode(&mut self.output);
        Ok(())
    }

    fn check_at_eom(&self, what: &'static str) -> Result<(), UsageError> {
        if self.is_closed() {
            return Err(UsageError::Closed);
        }
        // Progress and modifications share the rule; the kind only matters to the MTA.
        rules::reply_allowed(self.order.pending, ReplyKind::Modification)
            .map_err(|_| UsageError::NotAtEndOfMessage(what))
    }

    /// Whether a command awaits its final answer (or the offer its negotiation).
    pub fn reply_due(&self) -> bool {
        self.order.pending.is_some()
    }

    /// Which timeout applies now, while waiting for the MTA or the handler:
    /// [`Phase::Negotiation`] until CONNECT arrives (when CONNECT was negotiated away, only
    /// until negotiation is done: the next command then comes at the SMTP client's pace);
    /// [`Phase::Content`] from DATA (or the first header) to the end of the message;
    /// [`Phase::Command`] while CONNECT, HELO, UNKNOWN or an envelope command awaits its
    /// answer and inside the envelope; [`Phase::Idle`] between messages.
    pub fn phase(&self) -> Phase {
        let o = &self.order;
        match o.conn {
            Conn::AwaitConnect
                if self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.skipped(code::CONNECT)) =>
            {
                Phase::Idle
            }
            Conn::Fresh | Conn::AwaitConnect => Phase::Negotiation,
            Conn::Closed | Conn::Done => Phase::Idle,
            Conn::Connected => match o.pending {
                Some(code::EOB) => Phase::Content,
                _ if o.in_content() => Phase::Content,
                Some(_) => Phase::Command,
                None if !o.in_message() => Phase::Idle,
                None => Phase::Command,
            },
        }
    }

    /// Whether a message is under way (from MAIL to its end or abort).
    pub fn in_transaction(&self) -> bool {
        self.order.in_message()
    }

    /// The macros defined so far. Those of a message that ended stay readable until the
    /// next [`poll_event`](Self::poll_event).
    pub fn macros(&self) -> &Macros {
        &self.macros
    }

    /// What was negotiated, once it was.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The current SMTP connection's CONNECT data; it survives aborts and messages.
    pub fn connect_info(&self) -> Option<&ConnectInfo> {
        self.connect_info.as_ref()
    }

    /// The last HELO/EHLO argument of the current SMTP connection.
    pub fn helo(&self) -> Option<&[u8]> {
        self.helo.as_deref()
    }

    /// Bytes to write to the MTA. Write them in one go, then clear the buffer.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    /// Whether the MTA sent QUIT.
    pub fn is_closed(&self) -> bool {
        self.order.conn == Conn::Closed
    }
}

fn unexpected(c: u8, state: &'static str) -> ProtocolError {
    ProtocolError::UnexpectedCommand {
        code: Code(c),
        state,
    }
}
