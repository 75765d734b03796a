//! Per-phase timeouts, the handler's time budget, and resource limits of the server.

use std::time::Duration;

use crate::error::Phase;
use crate::proto::macros::DEFAULT_MACRO_BYTES;
use crate::wire::{DEFAULT_RECV_MAX, DEFAULT_SEND_MAX};

/// libmilter's I/O timeout (`smfi_settimeout`, `MI_TIMEOUT` in `libmilter.h`): 7210 s.
const LIBMILTER_TIMEOUT: Duration = Duration::from_secs(7210);

/// How long the server waits for the MTA, per phase; how long a handler callback may run;
/// and how often the server reassures the MTA while a handler's end of message runs.
///
/// The milter waits on the MTA, which waits on its SMTP client, and an SMTP session can
/// leave its milter connection silent for a long time: NOOP, AUTH, STARTTLS and a client
/// typing slowly send the milter nothing. So the default, [`Timeouts::libmilter`], waits
/// as long as libmilter and indymilter do (7210 s) everywhere except the first exchange,
/// which both MTAs send the moment they connect. A peer silent past these limits has gone
/// and its connection is closed, so dead connections do not pile up.
///
/// [`Timeouts::callback`] bounds the handler, not the MTA: see
/// [`Builder::callback_timeout`](super::Builder::callback_timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept until negotiation and CONNECT are done. The MTA sends both at once
    /// (Postfix's `milter_connect_timeout` is 30 s), so this stays short: a connection
    /// that says nothing does not hold a slot for two hours.
    pub negotiation: Duration,
    /// Waiting for the next command inside the envelope (HELO, MAIL, RCPT, DATA): the
    /// SMTP client's pace.
    pub command: Duration,
    /// Waiting for the next header or body chunk or end of message (the MTA relays the
    /// client's DATA stream as it comes).
    pub content: Duration,
    /// Between messages: after CONNECT, end of message or abort, waiting for the next
    /// HELO, MAIL or QUIT.
    pub idle: Duration,
    /// The most any one handler callback may run; past it the callback is dropped and
    /// the command answered with the configured verdict (default tempfail). Also bounds
    /// `abort` and `close`. `Duration::MAX` means no limit.
    pub callback: Duration,
    /// While `eom` runs, a PROGRESS frame is sent this often; each restarts Postfix's
    /// content timer. Keep it well under the MTA's timeout. PROGRESS stops when the
    /// callback budget is spent.
    pub progress_interval: Duration,
}

impl Timeouts {
    /// The default: libmilter's 7210 s for command, content and idle waits (libmilter
    /// has one I/O timeout for all of them), 30 s for negotiation, a 300 s callback
    /// budget, PROGRESS every 10 s.
    ///
    /// The callback budget matches Postfix's `milter_content_timeout` and Sendmail's
    /// `T=E:5m`; at end of message it keeps the SMTP client's wait for its answer under
    /// the 10 minutes RFC 5321 allows, however long PROGRESS could stretch it. Inside the
    /// envelope Postfix gives up after its `milter_command_timeout` (30 s) and closes the
    /// connection, which ends the callback earlier (see
    /// [`Builder::callback_timeout`](super::Builder::callback_timeout)).
    pub const fn libmilter() -> Timeouts {
        Timeouts {
            negotiation: Duration::from_secs(30),
            command: LIBMILTER_TIMEOUT,
            content: LIBMILTER_TIMEOUT,
            idle: LIBMILTER_TIMEOUT,
            callback: Duration::from_secs(300),
            progress_interval: Duration::from_secs(10),
        }
    }

    /// Waits matched to Postfix's own timeouts (negotiation 30 s; command, content and
    /// idle 300 s, i.e. `smtpd_timeout` and `milter_content_timeout`), callback budget and
    /// PROGRESS as in [`Timeouts::libmilter`].
    ///
    /// This was the default before the libmilter defaults (see the changelog). It closes
    /// a connection whose SMTP session stays quiet for five minutes (a client idling
    /// after AUTH or between messages), after which Postfix applies
    /// `milter_default_action` to that session's next message; prefer the default unless
    /// connections must be reclaimed sooner.
    pub const fn postfix() -> Timeouts {
        Timeouts {
            negotiation: Duration::from_secs(30),
            command: Duration::from_secs(300),
            content: Duration::from_secs(300),
            idle: Duration::from_secs(300),
            callback: Duration::from_secs(300),
            progress_interval: Duration::from_secs(10),
        }
    }

    /// The wait allowed in `phase`.
    pub fn for_phase(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Negotiation => self.negotiation,
            Phase::Command => self.command,
            Phase::Content => self.content,
            Phase::Idle => self.idle,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::libmilter()
    }
}

/// Bounds on what one peer, and all peers together, can make the server hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once. When full the server stops accepting (the MTA's
    /// connect waits in the listen backlog) instead of accepting and dropping.
    pub max_connections: usize,
    /// Largest frame payload accepted from the MTA; a larger announced length closes the
    /// connection before anything is allocated.
    pub max_frame: usize,
    /// Largest frame payload sent (body replacements are split to fit).
    pub max_send: usize,
    /// Bytes of macro names and values kept per connection.
    pub macro_bytes: usize,
}

impl Limits {
    /// 256 connections, 1 MiB receive frames (Postfix headers can exceed 64 KiB), 64 KiB
    /// send frames (what libmilter peers accept), 64 KiB of macros.
    pub const fn standard() -> Limits {
        Limits {
            max_connections: 256,
            max_frame: DEFAULT_RECV_MAX,
            max_send: DEFAULT_SEND_MAX,
            macro_bytes: DEFAULT_MACRO_BYTES,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::standard()
    }
}
