//! The [`Milter`] trait a milter author implements, the [`Context`] each callback sees, and
//! the [`EomActions`] through which end of message modifies the mail.
//!
//! One handler instance serves one milter connection (one SMTP session of the MTA), so
//! `&mut self` is per-connection state: no locking, and connection facts (the client, its
//! HELO) stay put across the messages of that connection. The core never resets the
//! handler's fields between messages; [what it does reset](#between-messages-on-one-connection),
//! and when, is below.
//!
//! Every callback has a default that continues, so a milter overrides only what it needs,
//! and declares those events once in [`Milter::EVENTS`]: the MTA is then asked not to send
//! the others at all, so they cost no round trip (without the declaration every event
//! comes, each waiting for its `Continue`):
//!
//! ```
//! use milter_core::handler::{Context, Milter};
//! use milter_core::negotiate::{Events, Offer, negotiate};
//! use milter_core::{Envelope, ProtocolFlags, Verdict};
//!
//! struct NoSpammer;
//!
//! impl Milter for NoSpammer {
//!     const EVENTS: Events = Events::MAIL;
//!
//!     async fn mail(&mut self, _ctx: &Context<'_>, from: &Envelope) -> Verdict {
//!         if from.address_str() == "spammer@example.net" {
//!             Verdict::reply(550, "5.7.1", "sender refused")
//!         } else {
//!             Verdict::Continue
//!         }
//!     }
//! }
//!
//! // Against Postfix's offer: headers, body and the rest are not sent, nor waited for.
//! let offer = Offer { version: 6, actions: Default::default(), protocol: ProtocolFlags::all() };
//! let agreed = negotiate(&offer, &NoSpammer.negotiate(&offer)).unwrap();
//! assert!(agreed.protocol.contains(ProtocolFlags::NO_HEADERS | ProtocolFlags::NO_BODY));
//! assert!(!agreed.protocol.contains(ProtocolFlags::NO_MAIL));
//! ```
//!
//! # Between messages on one connection
//!
//! An SMTP session can carry several messages (Postfix: one per MAIL FROM, RSET between
//! or not), all through the same handler instance. What the bundled server guarantees
//! (`server::serve_connection`, so also `Server` and the `testing` kit), each rule tested
//! in `milter-core/tests/per_message_reset.rs`:
//!
//! - **A message starts** with the first of its events to reach the handler: `mail`, or
//!   the first later one when MAIL is negotiated away. [`Context::message_number`] counts
//!   up by one then (1 for the first message), and stays until the next one starts.
//! - **Exactly one of `eom` or `abort` ends each message that started.** `eom` ends it
//!   when it returns (whatever its verdict). Otherwise `abort` comes, once:
//!   - the MTA aborted it (ABORT: the client sent RSET, or went away);
//!   - a verdict ended it early: anything but `Continue` (and `Skip` in the body) at
//!     `mail`, `data`, `header`, `eoh`, `body`, and `Accept` or `Discard` at `rcpt`.
//!     `abort` then runs right after the verdict is queued, before the next event. No
//!     further event of that message reaches the handler, and the MTA's own ABORT, if it
//!     sends one, comes outside a message and is absorbed (no second `abort`). `Reject`,
//!     `Tempfail` and a reply code at `rcpt` refuse only that recipient: the message goes
//!     on;
//!   - `eom` did not return: it ran out of its budget or the drain deadline passed, or
//!     data the MTA sent with end of message was refused in `body` (then `eom` is not
//!     called);
//!   - the connection ends inside the message (QUIT, QUIT_NC, EOF, a protocol error, a
//!     timeout, a shutdown): `abort`, then `close`.
//! - **Reset per-message state in both `eom` and `abort`**, since the handler instance
//!   outlives the message; what is left there after `eom`/`abort` would leak into the
//!   next message. (Resetting in `mail` instead is not enough: MAIL can be negotiated away,
//!   and a handler that keeps a body would hold it until the next MAIL.)
//! - **A new MAIL after a message ended starts the next message, with or without ABORT in
//!   between** (Postfix sends ABORT at RSET, but after a message-ending verdict or a
//!   finished message the next MAIL may come directly). A MAIL while a message is still
//!   under way (no end of message, verdict or ABORT since its MAIL) breaks the protocol:
//!   the connection is closed, with `abort` and `close`.
//! - **Macros of the message stages are dropped when the message ends**: those the MTA
//!   sent for MAIL, RCPT, DATA, the headers, end of headers, the body, end of message
//!   and UNKNOWN (`i`, `{mail_addr}`, `{rcpt_addr}`, `{auth_authen}`...). They stay
//!   readable in the `eom` or `abort` that ends the message (the queue id for a log line)
//!   and are gone from the next event on. The macros of CONNECT and HELO (`j`,
//!   `{daemon_name}`, `{client_addr}`...) stay for the whole connection, and so do
//!   [`Context::connect_info`] and [`Context::helo`] (a new HELO replaces the latter).
//!   Macros the MTA sends for a stage also replace those of that stage and every later
//!   one, so a new MAIL's macros replace the last message's even without an end.
//! - **QUIT_NC** (one SMTP session ends, another follows on the same milter connection)
//!   ends the handler: `abort` if inside a message, then `close`, and a fresh instance
//!   from the factory serves the next session, with all macros, the CONNECT information
//!   and the HELO forgotten.

use std::future::Future;

use bytes::Bytes;

use crate::error::UsageError;
use crate::negotiate::{Events, Negotiated, Offer, Request};
use crate::proto::flags::Actions;
use crate::proto::{ConnectInfo, Envelope, Macros, Modification, Verdict};

/// A milter: async callbacks, one per MTA event, each answering with a [`Verdict`].
///
/// Callbacks are written as `async fn` in implementations; the futures must be `Send`
/// because connections run on a multi-threaded runtime. The instance lives for the
/// connection: reset per-message state in [`eom`](Self::eom) and [`abort`](Self::abort)
/// (the [rules](crate::handler#between-messages-on-one-connection)).
///
/// # Payloads are handed over as `Bytes`
///
/// [`helo`](Self::helo), [`header`](Self::header), [`body`](Self::body) and
/// [`unknown`](Self::unknown) receive [`Bytes`] by value: reference-counted views into the
/// frame the server read from the socket, never copied on the way. They read like
/// `&[u8]` (`Bytes` derefs to it), and a handler that keeps them (a body to send to a
/// scanner, headers to sign) stores them as they are, with no memcpy.
///
/// By value rather than `&Bytes`: the server has no use for the payload once the callback
/// has it, so ownership moves to the handler: keeping a chunk costs nothing (a `&Bytes`
/// would cost a clone, an atomic increment, per chunk kept), and ignoring one costs the
/// drop the server would do anyway. A kept chunk holds the read buffer it points into
/// (at most one frame plus the read-ahead; the server's `Limits::max_frame` bounds frames);
/// copy it (`Bytes::copy_from_slice`) if you keep a few bytes for long. The structured
/// arguments ([`ConnectInfo`], [`Envelope`]) come by reference: their fields are `Bytes`
/// too, cheap to clone.
///
/// Verdicts the protocol does not allow at a stage (e.g. a reject at a stage negotiated as
/// no-reply, or `Skip` outside the body) are a [`UsageError`]: the server logs it and
/// answers `Tempfail` where an answer is due, so the MTA's stream never desynchronises.
///
/// The bundled server may drop a callback's future before it completes (cancel it at an
/// await point): when it outruns the server's callback budget (then the command gets the
/// configured timeout verdict), when the MTA closes the connection while waiting for its
/// answer, or at the drain deadline of a shutdown. Keep state a dropped callback leaves
/// behind consistent (the next `abort` or `close` still comes), and do blocking work in
/// `spawn_blocking`, not on the callback's thread, so it can be dropped.
pub trait Milter: Send + 'static {
    /// The events this milter implements a callback for. The default [`negotiate`] asks
    /// the MTA not to send the others (`NO_*`) nor wait for replies to them (`NR_*`),
    /// where the MTA offers that. Rust cannot see which callbacks an impl overrides, so
    /// this is declared, once, next to them; the default is every event (nothing is
    /// lost, but each event is a round trip). An event left out never reaches its
    /// callback; [`Context::connect_info`] and [`Context::helo`] stay empty without
    /// CONNECT and HELO.
    ///
    /// [`negotiate`]: Milter::negotiate
    const EVENTS: Events = Events::all();

    /// Chooses the actions, protocol steps and macros this milter needs, given the MTA's
    /// offer. The default asks for no modifications and only the [`EVENTS`](Self::EVENTS);
    /// an override builds on [`Request::with_events`] to keep that.
    fn negotiate(&mut self, offer: &Offer) -> Request {
        let _ = offer;
        Request::new().with_events(Self::EVENTS)
    }

    /// The SMTP client connected. `Accept`/`Reject` here end the milter's part of the
    /// connection.
    fn connect(
        &mut self,
        ctx: &Context<'_>,
        info: &ConnectInfo,
    ) -> impl Future<Output = Verdict> + Send {
        let _ = (ctx, info);
        async { Verdict::Continue }
    }

    /// HELO or EHLO with its argument (a view into the frame the MTA sent, see
    /// [Payloads](Milter#payloads-are-handed-over-as-bytes)).
    fn helo(&mut self, ctx: &Context<'_>, helo: Bytes) -> impl Future<Output = Verdict> + Send {
        let _ = (ctx, helo);
        async { Verdict::Continue }
    }

    /// MAIL FROM: a new message starts.
    fn mail(&mut self, ctx: &Context<'_>, from: &Envelope) -> impl Future<Output = Verdict> + Send {
        let _ = (ctx, from);
        async { Verdict::Continue }
    }

    /// RCPT TO. A reject here refuses only this recipient.
    fn rcpt(&mut self, ctx: &Context<'_>, rcpt: &Envelope) -> impl Future<Output = Verdict> + Send {
        let _ = (ctx, rcpt);
        async { Verdict::Continue }
    }

    /// DATA.
    fn data(&mut self, ctx: &Context<'_>) -> impl Future<Output = Verdict> + Send {
        let _ = ctx;
        async { Verdict::Continue }
    }

    /// One header field; folded lines are separated by `\n`. `name` and `value` are views
    /// into the frame the MTA sent: keep them as they are, no copy is made
    /// ([Payloads](Milter#payloads-are-handed-over-as-bytes)).
    fn header(
        &mut self,
        ctx: &Context<'_>,
        name: Bytes,
        value: Bytes,
    ) -> impl Future<Output = Verdict> + Send {
        let _ = (ctx, name, value);
        async { Verdict::Continue }
    }

    /// End of headers.
    fn eoh(&mut self, ctx: &Context<'_>) -> impl Future<Output = Verdict> + Send {
        let _ = ctx;
        async { Verdict::Continue }
    }

    /// A body chunk (CRLF line endings; a CRLF pair may be split between chunks), a view
    /// into the frame the MTA sent: a milter that needs the whole body keeps the chunks
    /// (e.g. in a `Vec<Bytes>`) instead of copying them
    /// ([Payloads](Milter#payloads-are-handed-over-as-bytes)). Data the MTA sends with end
    /// of message comes here first, as a last chunk, like libmilter does.
    fn body(&mut self, ctx: &Context<'_>, chunk: Bytes) -> impl Future<Output = Verdict> + Send {
        let _ = (ctx, chunk);
        async { Verdict::Continue }
    }

    /// End of message: the only place to modify the message, through `actions`. When it
    /// returns, the message is over for the handler (no `abort` follows): reset
    /// per-message state here too.
    ///
    /// While this runs the server sends PROGRESS to the MTA at a fixed interval, so slow
    /// work (signing, scanning) does not trip the MTA's timeout, until the callback budget
    /// is spent; then the callback is dropped, what it recorded in `actions` is not sent,
    /// and the message gets the server's timeout verdict. `Continue` accepts.
    fn eom(
        &mut self,
        ctx: &Context<'_>,
        actions: &mut EomActions,
    ) -> impl Future<Output = Verdict> + Send {
        let _ = (ctx, actions);
        async { Verdict::Continue }
    }

    /// The current message ended without a completed [`eom`](Self::eom): the MTA aborted
    /// it (client RSET), a verdict ended it early, `eom` was dropped, or the connection
    /// ends inside it (then `close` follows). Called once per such message and never
    /// outside one ([rules](crate::handler#between-messages-on-one-connection)). Reset
    /// per-message state here and in `eom`; the message's macros are still readable.
    fn abort(&mut self, ctx: &Context<'_>) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }

    /// An SMTP command the MTA did not recognise (the line, without CRLF).
    fn unknown(&mut self, ctx: &Context<'_>, line: Bytes) -> impl Future<Output = Verdict> + Send {
        let _ = (ctx, line);
        async { Verdict::Continue }
    }

    /// The connection ended (QUIT, EOF, error, timeout or shutdown). Called exactly once
    /// per instance, unless a callback panicked.
    fn close(&mut self, ctx: &Context<'_>) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }
}

/// What a callback knows about its connection and message.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub(crate) macros: &'a Macros,
    pub(crate) negotiated: Option<&'a Negotiated>,
    pub(crate) connect_info: Option<&'a ConnectInfo>,
    pub(crate) helo: Option<&'a [u8]>,
    pub(crate) connection_id: u64,
    pub(crate) message: u64,
    pub(crate) span: &'a tracing::Span,
}

/// No macros, for [`Context::default`].
static NO_MACROS: std::sync::LazyLock<Macros> = std::sync::LazyLock::new(Macros::default);
/// No span, for [`Context::default`].
static NO_SPAN: tracing::Span = tracing::Span::none();

/// A context as before CONNECT: no macros, not negotiated, no CONNECT information or
/// HELO, connection and message number 0, a disabled span. The `with_*` setters fill it
/// in, for driving a [`Milter`] outside the bundled server (custom transports, unit tests
/// of a handler):
///
/// ```
/// use milter_core::Context;
/// use milter_core::proto::Macros;
///
/// let mut macros = Macros::default();
/// macros.define(b'M', vec![("i".into(), "4XyZ1".into())]).unwrap();
/// let ctx = Context::default()
///     .with_macros(&macros)
///     .with_helo(b"client.example")
///     .with_message_number(1);
/// assert_eq!(ctx.macro_str("i").as_deref(), Some("4XyZ1"));
/// assert_eq!(ctx.helo(), Some(&b"client.example"[..]));
/// assert!(ctx.negotiated().is_none());
/// ```
impl Default for Context<'_> {
    fn default() -> Self {
        Context {
            macros: &NO_MACROS,
            negotiated: None,
            connect_info: None,
            helo: None,
            connection_id: 0,
            message: 0,
            span: &NO_SPAN,
        }
    }
}

impl<'a> Context<'a> {
    /// With these macros (see [`macros`](Self::macros)).
    pub fn with_macros(self, macros: &'a Macros) -> Context<'a> {
        Context { macros, ..self }
    }

    /// With what negotiation settled (see [`negotiated`](Self::negotiated)).
    pub fn with_negotiated(self, negotiated: &'a Negotiated) -> Context<'a> {
        Context {
            negotiated: Some(negotiated),
            ..self
        }
    }

    /// With the CONNECT information (see [`connect_info`](Self::connect_info)).
    pub fn with_connect_info(self, info: &'a ConnectInfo) -> Context<'a> {
        Context {
            connect_info: Some(info),
            ..self
        }
    }

    /// With a HELO/EHLO argument (see [`helo`](Self::helo)).
    pub fn with_helo(self, helo: &'a [u8]) -> Context<'a> {
        Context {
            helo: Some(helo),
            ..self
        }
    }

    /// With this connection number (see [`connection_id`](Self::connection_id)).
    pub fn with_connection_id(self, id: u64) -> Context<'a> {
        Context {
            connection_id: id,
            ..self
        }
    }

    /// With this message number (see [`message_number`](Self::message_number)).
    pub fn with_message_number(self, message: u64) -> Context<'a> {
        Context { message, ..self }
    }

    /// With this tracing span (see [`span`](Self::span)).
    pub fn with_span(self, span: &'a tracing::Span) -> Context<'a> {
        Context { span, ..self }
    }

    /// The macros the MTA has sent so far (libmilter lookup rules: newest stage first).
    pub fn macros(&self) -> &'a Macros {
        self.macros
    }

    /// Shorthand for a macro's value, lossily decoded (`"i"` is the queue ID).
    pub fn macro_str(&self, name: &str) -> Option<String> {
        self.macros.get_str(name).map(|v| v.into_owned())
    }

    /// What negotiation settled; `None` only in `close` of a connection that never
    /// negotiated.
    pub fn negotiated(&self) -> Option<&'a Negotiated> {
        self.negotiated
    }

    /// The CONNECT information, once it has arrived.
    pub fn connect_info(&self) -> Option<&'a ConnectInfo> {
        self.connect_info
    }

    /// The last HELO/EHLO argument of this connection.
    pub fn helo(&self) -> Option<&'a [u8]> {
        self.helo
    }

    /// This connection's number, unique within the server process (it is also in the logs).
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }

    /// The message's number within this connection, counting from 1; 0 before the first
    /// message. It counts up when a message's first event reaches the handler and stays
    /// until the next message starts (so `eom` and `abort` see the number of the message
    /// they end).
    pub fn message_number(&self) -> u64 {
        self.message
    }

    /// The connection's tracing span (fields `id` and `peer`), for the handler's own logs
    /// and spawned work.
    pub fn span(&self) -> &'a tracing::Span {
        self.span
    }
}

/// Modifications requested at end of message, checked as they are made.
///
/// Each method fails at once with a [`UsageError`] when its action was not negotiated or a
/// field is invalid, so the handler learns of its mistake where it made it; nothing is
/// recorded then. The server sends the recorded modifications, then the verdict, in one
/// write after `eom` returns. A body replacement is sent after the other modifications as
/// one contiguous run of chunks (Postfix refuses interleaving).
#[derive(Debug, Clone)]
pub struct EomActions {
    actions: Actions,
    modifications: Vec<Modification>,
    body: Option<Vec<u8>>,
}

impl EomActions {
    /// An empty set of modifications allowed by `actions` (the negotiated actions).
    pub fn new(actions: Actions) -> EomActions {
        EomActions {
            actions,
            modifications: Vec::new(),
            body: None,
        }
    }

    /// The negotiated actions these modifications are checked against.
    pub fn allowed(&self) -> Actions {
        self.actions
    }

    fn push(&mut self, m: Modification) -> Result<(), UsageError> {
        let needed = m.required_action();
        if !self.actions.contains(needed) {
            return Err(UsageError::ActionNotNegotiated {
                modification: m.name(),
                needed,
            });
        }
        m.validate()?;
        self.modifications.push(m);
        Ok(())
    }

    /// Appends a header at the end of the header block (`ADD_HEADERS`). Fold long values
    /// with `\n` plus whitespace, not CRLF. With `HEADER_LEADING_SPACE` negotiated, supply
    /// the leading space yourself.
    ///
    /// A value may break lines only to fold them: `\n` (or `\r\n`) followed by a space or
    /// tab. A bare CR, a line break followed by anything else (it would start a new header:
    /// header injection), a break at the end, or a NUL is refused here with
    /// [`UsageError::InvalidField`]; so is a name that is not a field name. The same checks
    /// apply to [`insert_header`](Self::insert_header) and
    /// [`change_header`](Self::change_header).
    pub fn add_header(
        &mut self,
        name: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), UsageError> {
        self.push(Modification::AddHeader {
            name: name.into(),
            value: value.into(),
        })
    }

    /// Inserts a header at 0-based `index` over all headers, counting the MTA's own
    /// `Received:` (`ADD_HEADERS`); 0 is the very top. The value is checked as for
    /// [`add_header`](Self::add_header).
    pub fn insert_header(
        &mut self,
        index: u32,
        name: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), UsageError> {
        self.push(Modification::InsertHeader {
            index,
            name: name.into(),
            value: value.into(),
        })
    }

    /// Replaces the `occurrence`-th (1-based, per name, case-insensitive) header called
    /// `name` (`CHANGE_HEADERS`). An occurrence past the last one appends a header. The
    /// value is checked as for [`add_header`](Self::add_header); an empty one is refused
    /// (use [`delete_header`](Self::delete_header)).
    pub fn change_header(
        &mut self,
        name: impl Into<Bytes>,
        occurrence: u32,
        value: impl Into<Bytes>,
    ) -> Result<(), UsageError> {
        let value = value.into();
        if value.is_empty() {
            return Err(UsageError::InvalidField {
                field: "header value",
                reason: "empty; use delete_header to delete",
            });
        }
        self.push(Modification::ChangeHeader {
            index: occurrence,
            name: name.into(),
            value,
        })
    }

    /// Deletes the `occurrence`-th (1-based) header called `name` (`CHANGE_HEADERS`).
    pub fn delete_header(
        &mut self,
        name: impl Into<Bytes>,
        occurrence: u32,
    ) -> Result<(), UsageError> {
        self.push(Modification::delete_header(name, occurrence))
    }

    /// Replaces the envelope sender, optionally with ESMTP arguments as one
    /// space-separated string (`CHANGE_FROM`).
    pub fn change_from(
        &mut self,
        address: impl Into<Bytes>,
        args: Option<Bytes>,
    ) -> Result<(), UsageError> {
        self.push(Modification::ChangeFrom {
            address: address.into(),
            args,
        })
    }

    /// Adds a recipient (`ADD_RCPT`).
    pub fn add_rcpt(&mut self, address: impl Into<Bytes>) -> Result<(), UsageError> {
        self.push(Modification::AddRcpt {
            address: address.into(),
        })
    }

    /// Adds a recipient with ESMTP arguments (`ADD_RCPT_WITH_ARGS`; Postfix keeps NOTIFY and
    /// ORCPT).
    pub fn add_rcpt_with_args(
        &mut self,
        address: impl Into<Bytes>,
        args: Option<Bytes>,
    ) -> Result<(), UsageError> {
        self.push(Modification::AddRcptWithArgs {
            address: address.into(),
            args,
        })
    }

    /// Removes a recipient, spelled as RCPT carried it (`DELETE_RCPT`).
    pub fn delete_rcpt(&mut self, address: impl Into<Bytes>) -> Result<(), UsageError> {
        self.push(Modification::DeleteRcpt {
            address: address.into(),
        })
    }

    /// Replaces the whole body (`CHANGE_BODY`). Repeated calls append: the new body is the
    /// concatenation. Use CRLF line endings.
    pub fn replace_body(&mut self, chunk: &[u8]) -> Result<(), UsageError> {
        if !self.actions.contains(Actions::CHANGE_BODY) {
            return Err(UsageError::ActionNotNegotiated {
                modification: "replace body",
                needed: Actions::CHANGE_BODY,
            });
        }
        self.body
            .get_or_insert_with(Vec::new)
            .extend_from_slice(chunk);
        Ok(())
    }

    /// Holds the message in the MTA's quarantine (Postfix: the hold queue) with a reason
    /// (`QUARANTINE`).
    pub fn quarantine(&mut self, reason: impl Into<Bytes>) -> Result<(), UsageError> {
        self.push(Modification::Quarantine {
            reason: reason.into(),
        })
    }

    /// The recorded modifications, in the order they are sent.
    pub fn modifications(&self) -> impl Iterator<Item = Modification> + '_ {
        self.modifications.iter().cloned().chain(
            self.body
                .iter()
                .map(|b| Modification::ReplaceBody(Bytes::copy_from_slice(b))),
        )
    }

    /// Takes the recorded modifications, in the order they are sent.
    pub fn into_modifications(self) -> Vec<Modification> {
        let mut v = self.modifications;
        if let Some(b) = self.body {
            v.push(Modification::ReplaceBody(Bytes::from(b)));
        }
        v
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.modifications.is_empty() && self.body.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_actions_not_negotiated() {
        let mut a = EomActions::new(Actions::ADD_HEADERS);
        assert!(a.add_header("X-Test", "yes").is_ok());
        assert_eq!(
            a.delete_header("Subject", 1),
            Err(UsageError::ActionNotNegotiated {
                modification: "delete header",
                needed: Actions::CHANGE_HEADERS
            })
        );
        assert!(matches!(
            a.replace_body(b"x"),
            Err(UsageError::ActionNotNegotiated { .. })
        ));
        assert!(matches!(
            a.quarantine("why"),
            Err(UsageError::ActionNotNegotiated { .. })
        ));
        assert_eq!(a.into_modifications().len(), 1);
    }

    #[test]
    fn validates_fields() {
        let mut a = EomActions::new(Actions::all());
        assert!(matches!(
            a.add_header("Bad Name", "v"),
            Err(UsageError::InvalidField { .. })
        ));
        assert!(matches!(
            a.quarantine(""),
            Err(UsageError::InvalidField { .. })
        ));
        assert!(matches!(
            a.change_header("Subject", 1, ""),
            Err(UsageError::InvalidField { .. })
        ));
        assert!(a.is_empty());
    }

    #[test]
    fn body_goes_last_and_contiguous() {
        let mut a = EomActions::new(Actions::all());
        a.replace_body(b"one\r\n").unwrap();
        a.add_header("X-A", "1").unwrap();
        a.replace_body(b"two\r\n").unwrap();
        let m = a.into_modifications();
        assert_eq!(m.len(), 2);
        assert!(matches!(m[0], Modification::AddHeader { .. }));
        assert_eq!(
            m[1],
            Modification::ReplaceBody(Bytes::from_static(b"one\r\ntwo\r\n"))
        );
    }
}
