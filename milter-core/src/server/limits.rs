//! Per-phase timeouts and resource limits of the server.

use std::time::Duration;

use crate::error::Phase;
use crate::proto::macros::DEFAULT_MACRO_BYTES;
use crate::wire::{DEFAULT_RECV_MAX, DEFAULT_SEND_MAX};

/// How long the server waits for the MTA, per phase, and how often it reassures the MTA
/// while a handler's end of message runs.
///
/// The milter waits on the MTA, which waits on its SMTP client. Postfix gives each SMTP
/// command `smtpd_timeout` (300 s) and its milters 30 s per command and 300 s for the
/// content. [`Timeouts::postfix`] mirrors that: a peer silent past these limits has gone
/// and its connection is closed, so dead connections do not pile up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept until negotiation and CONNECT are done. The MTA sends both at once
    /// (Postfix's `milter_connect_timeout` is 30 s).
    pub negotiation: Duration,
    /// Waiting for the next command inside the envelope (HELO, MAIL, RCPT, DATA): the
    /// SMTP client's pace, bounded by Postfix's `smtpd_timeout`.
    pub command: Duration,
    /// Waiting for the next header or body chunk or end of message (Postfix's
    /// `milter_content_timeout` is 300 s).
    pub content: Duration,
    /// Between messages: after end of message or abort, waiting for the next MAIL or QUIT.
    pub idle: Duration,
    /// While `eom` runs, a PROGRESS frame is sent this often; each restarts Postfix's
    /// content timer. Keep it well under the MTA's timeout.
    pub progress_interval: Duration,
}

impl Timeouts {
    /// Timeouts matched to Postfix's defaults: negotiation 30 s; command, content and idle
    /// 300 s (`smtpd_timeout`, `milter_content_timeout`); PROGRESS every 10 s.
    pub const fn postfix() -> Timeouts {
        Timeouts {
            negotiation: Duration::from_secs(30),
            command: Duration::from_secs(300),
            content: Duration::from_secs(300),
            idle: Duration::from_secs(300),
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
        Timeouts::postfix()
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
