//! What the server counts about itself. Every labelled series is resolved at
//! registration, so recording is one relaxed atomic add: no lock, no allocation.

use std::time::Duration;

use crate::error::{Error, Phase, ProtocolError};
use crate::metrics::{Counter, Gauge, Histogram, LATENCY_BUCKETS, MetricsError, Registry};
use crate::proto::Verdict;

/// Why a connection ended (`reason` of `milter_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    Quit,
    Eof,
    Shutdown,
    ProtocolError,
    Timeout,
    IoError,
    Panic,
    UsageError,
}

const CLOSE_REASONS: [&str; 8] = [
    "quit",
    "eof",
    "shutdown",
    "protocol_error",
    "timeout",
    "io_error",
    "panic",
    "usage_error",
];

/// Stages a verdict answers, as the `stage` label.
pub(crate) const STAGES: [&str; 10] = [
    "connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "eom", "unknown",
];

const VERDICTS: [&str; 8] = [
    "continue",
    "accept",
    "reject",
    "tempfail",
    "discard",
    "reply-4xx",
    "reply-5xx",
    "shutdown",
];

const PROTOCOL_ERRORS: [&str; 9] = [
    "frame_too_large",
    "empty_frame",
    "truncated",
    "unknown_command",
    "malformed",
    "unexpected_command",
    "negotiation",
    "unexpected_reply",
    "other",
];

const PHASES: [&str; 4] = ["negotiation", "command", "content", "idle"];

/// The server's instruments, registered in a [`Registry`] (cheap to clone).
///
/// | name | type | labels |
/// |---|---|---|
/// | `milter_connections_accepted_total` | counter | |
/// | `milter_connections_active` | gauge | |
/// | `milter_connections_closed_total` | counter | `reason`: quit, eof, shutdown, protocol_error, timeout, io_error, panic, usage_error |
/// | `milter_messages_total` | counter | |
/// | `milter_verdicts_total` | counter | `verdict` at end of message: continue, accept, reject, tempfail, discard, reply-4xx, reply-5xx, shutdown |
/// | `milter_rejections_total` | counter | `stage`: connect … eom, unknown (a reject, tempfail, 4xx/5xx reply or shutdown sent) |
/// | `milter_protocol_errors_total` | counter | `kind` |
/// | `milter_timeouts_total` | counter | `phase`: negotiation, command, content, idle |
/// | `milter_eom_duration_seconds` | histogram | |
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    accepted: Counter,
    active: Gauge,
    closed: [Counter; CLOSE_REASONS.len()],
    messages: Counter,
    verdicts: [Counter; VERDICTS.len()],
    rejections: [Counter; STAGES.len()],
    protocol_errors: [Counter; PROTOCOL_ERRORS.len()],
    timeouts: [Counter; PHASES.len()],
    eom_seconds: Histogram,
}

impl ServerMetrics {
    /// Registers (or finds) the server's metrics in `registry`. Fails only when one of
    /// the names is registered already with another type or labels.
    pub fn register(registry: &Registry) -> Result<ServerMetrics, MetricsError> {
        let closed = registry.counter_family(
            "milter_connections_closed_total",
            "Milter connections closed, by reason.",
            &["reason"],
        )?;
        let verdicts = registry.counter_family(
            "milter_verdicts_total",
            "Verdicts sent at end of message, by kind.",
            &["verdict"],
        )?;
        let rejections = registry.counter_family(
            "milter_rejections_total",
            "Rejects, tempfails, 4xx/5xx replies and shutdowns sent, by the stage they answered.",
            &["stage"],
        )?;
        let protocol_errors = registry.counter_family(
            "milter_protocol_errors_total",
            "Connections closed because the MTA broke the protocol, by kind.",
            &["kind"],
        )?;
        let timeouts = registry.counter_family(
            "milter_timeouts_total",
            "Connections closed because the MTA was silent too long, by phase.",
            &["phase"],
        )?;
        Ok(ServerMetrics {
            accepted: registry.counter(
                "milter_connections_accepted_total",
                "Milter connections accepted.",
            )?,
            active: registry.gauge("milter_connections_active", "Milter connections open.")?,
            closed: CLOSE_REASONS.map(|r| closed.with(&[r])),
            messages: registry.counter(
                "milter_messages_total",
                "Messages started (first MAIL or later event of a transaction).",
            )?,
            verdicts: VERDICTS.map(|v| verdicts.with(&[v])),
            rejections: STAGES.map(|s| rejections.with(&[s])),
            protocol_errors: PROTOCOL_ERRORS.map(|k| protocol_errors.with(&[k])),
            timeouts: PHASES.map(|p| timeouts.with(&[p])),
            eom_seconds: registry.histogram(
                "milter_eom_duration_seconds",
                "Time the handler's end-of-message callback took.",
                LATENCY_BUCKETS,
            )?,
        })
    }

    pub(crate) fn opened(&self) {
        self.accepted.inc();
        self.active.inc();
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.active.dec();
        if let Some(c) = self.closed.get(reason as usize) {
            c.inc();
        }
    }

    /// Records the error that closed a connection (its reason is recorded separately).
    pub(crate) fn error(&self, e: &Error) {
        match e {
            Error::Protocol(p) => {
                let kind = match p {
                    ProtocolError::FrameTooLarge { .. } => 0,
                    ProtocolError::EmptyFrame => 1,
                    ProtocolError::Truncated { .. } => 2,
                    ProtocolError::UnknownCommand(_) => 3,
                    ProtocolError::Malformed { .. } => 4,
                    ProtocolError::UnexpectedCommand { .. } => 5,
                    ProtocolError::Negotiation(_) => 6,
                    ProtocolError::UnexpectedReply { .. } => 7,
                    _ => 8,
                };
                bump(&self.protocol_errors, kind);
            }
            Error::Timeout(phase) => {
                let i = match phase {
                    Phase::Negotiation => 0,
                    Phase::Command => 1,
                    Phase::Content => 2,
                    Phase::Idle => 3,
                };
                bump(&self.timeouts, i);
            }
            _ => {}
        }
    }

    pub(crate) fn message_started(&self) {
        self.messages.inc();
    }

    /// A verdict actually sent in answer to `stage` (an index into [`STAGES`]); `kind`
    /// from [`verdict_kind`].
    pub(crate) fn answered(&self, stage: usize, kind: usize) {
        if STAGES.get(stage) == Some(&"eom") {
            bump(&self.verdicts, kind);
        }
        if matches!(kind, 2 | 3 | 5 | 6 | 7) {
            bump(&self.rejections, stage);
        }
    }

    pub(crate) fn eom_took(&self, d: Duration) {
        self.eom_seconds.observe_duration(d);
    }
}

/// The `verdict` label index of `verdict` (Skip counts as continue).
pub(crate) fn verdict_kind(verdict: &Verdict) -> usize {
    match verdict {
        Verdict::Continue | Verdict::Skip => 0,
        Verdict::Accept => 1,
        Verdict::Reject => 2,
        Verdict::Tempfail => 3,
        Verdict::Discard => 4,
        Verdict::Reply(r) if r.is_permanent() => 6,
        Verdict::Reply(_) => 5,
        Verdict::Shutdown => 7,
    }
}

fn bump(counters: &[Counter], i: usize) {
    if let Some(c) = counters.get(i) {
        c.inc();
    }
}

/// Records the connection's end exactly once, even when its task is aborted (shutdown
/// deadline) or unwound by a panicking handler: those are recorded when it is dropped.
pub(crate) struct ConnectionTally<'a> {
    metrics: Option<&'a ServerMetrics>,
    reason: Option<CloseReason>,
}

impl<'a> ConnectionTally<'a> {
    pub(crate) fn open(metrics: Option<&'a ServerMetrics>) -> ConnectionTally<'a> {
        if let Some(m) = metrics {
            m.opened();
        }
        ConnectionTally {
            metrics,
            reason: None,
        }
    }

    pub(crate) fn close(&mut self, reason: CloseReason) {
        self.reason = Some(reason);
    }
}

impl Drop for ConnectionTally<'_> {
    fn drop(&mut self) {
        let Some(m) = self.metrics else { return };
        let reason = self.reason.unwrap_or(if std::thread::panicking() {
            CloseReason::Panic
        } else {
            CloseReason::Shutdown
        });
        m.closed(reason);
    }
}

/// The index of a stage name in [`STAGES`].
pub(crate) fn stage_index(stage: &str) -> usize {
    STAGES
        .iter()
        .position(|s| *s == stage)
        .unwrap_or(STAGES.len())
}
