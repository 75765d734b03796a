//! What the server counts about itself (names and the reasoning: [`crate::metrics`]
//! with the `metrics` feature). Every labelled series is resolved once, when the server
//! binds; without the feature the handles are zero-sized no-ops.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Phase, ProtocolError};
use crate::proto::Verdict;
use handles::{Counter, Gauge, Histogram};

#[cfg(feature = "metrics")]
mod handles {
    pub(super) use ::metrics::{Counter, Gauge, Histogram};

    pub(super) fn counter(name: &'static str) -> Counter {
        ::metrics::counter!(name)
    }
    pub(super) fn labelled(
        name: &'static str,
        label: &'static str,
        value: &'static str,
    ) -> Counter {
        ::metrics::counter!(name, label => value)
    }
    pub(super) fn gauge(name: &'static str) -> Gauge {
        ::metrics::gauge!(name)
    }
    pub(super) fn histogram(name: &'static str) -> Histogram {
        ::metrics::histogram!(name)
    }
    pub(super) fn describe() {
        crate::metrics::describe();
    }
}

/// Without the `metrics` feature: the same calls, compiled to nothing, so the server
/// code has no `cfg` of its own.
#[cfg(not(feature = "metrics"))]
mod handles {
    #[derive(Clone, Copy)]
    pub(super) struct Counter;
    #[derive(Clone, Copy)]
    pub(super) struct Gauge;
    #[derive(Clone, Copy)]
    pub(super) struct Histogram;
    impl Counter {
        pub(super) fn increment(&self, _: u64) {}
    }
    impl Gauge {
        pub(super) fn increment(&self, _: f64) {}
        pub(super) fn decrement(&self, _: f64) {}
    }
    impl Histogram {
        pub(super) fn record(&self, _: f64) {}
    }
    pub(super) fn counter(_: &'static str) -> Counter {
        Counter
    }
    pub(super) fn labelled(_: &'static str, _: &'static str, _: &'static str) -> Counter {
        Counter
    }
    pub(super) fn gauge(_: &'static str) -> Gauge {
        Gauge
    }
    pub(super) fn histogram(_: &'static str) -> Histogram {
        Histogram
    }
    pub(super) fn describe() {}
}

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

/// The server's instruments, resolved against the recorder current when the server
/// binds (cheap to clone: one shared allocation). The names are listed in
/// `milter_core::metrics` (feature `metrics`).
#[derive(Clone)]
pub struct ServerMetrics(Arc<Instruments>);

/// Behind one `Arc`: every connection's config holds a clone, and the ~40 handles (each an
/// `Arc` of its own with the feature) would otherwise cost an atomic increment apiece and
/// ~650 bytes per connection.
struct Instruments {
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

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMetrics").finish_non_exhaustive()
    }
}

impl ServerMetrics {
    /// Describes the server's metrics to the current recorder and resolves every series
    /// (each label value is known here, so none is created later).
    pub fn register() -> ServerMetrics {
        use handles::{counter, describe, gauge, histogram, labelled};
        describe();
        ServerMetrics(Arc::new(Instruments {
            accepted: counter("milter_connections_accepted_total"),
            active: gauge("milter_connections_active"),
            closed: CLOSE_REASONS.map(|r| labelled("milter_connections_closed_total", "reason", r)),
            messages: counter("milter_messages_total"),
            verdicts: VERDICTS.map(|v| labelled("milter_verdicts_total", "verdict", v)),
            rejections: STAGES.map(|s| labelled("milter_rejections_total", "stage", s)),
            protocol_errors: PROTOCOL_ERRORS
                .map(|k| labelled("milter_protocol_errors_total", "kind", k)),
            timeouts: PHASES.map(|p| labelled("milter_timeouts_total", "phase", p)),
            eom_seconds: histogram("milter_eom_duration_seconds"),
        }))
    }

    pub(crate) fn opened(&self) {
        self.0.accepted.increment(1);
        self.0.active.increment(1.0);
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.0.active.decrement(1.0);
        if let Some(c) = self.0.closed.get(reason as usize) {
            c.increment(1);
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
                bump(&self.0.protocol_errors, kind);
            }
            Error::Timeout(phase) => {
                let i = match phase {
                    Phase::Negotiation => 0,
                    Phase::Command => 1,
                    Phase::Content => 2,
                    Phase::Idle => 3,
                };
                bump(&self.0.timeouts, i);
            }
            _ => {}
        }
    }

    pub(crate) fn message_started(&self) {
        self.0.messages.increment(1);
    }

    /// A verdict actually sent in answer to `stage` (an index into [`STAGES`]); `kind`
    /// from [`verdict_kind`].
    pub(crate) fn answered(&self, stage: usize, kind: usize) {
        if STAGES.get(stage) == Some(&"eom") {
            bump(&self.0.verdicts, kind);
        }
        if matches!(kind, 2 | 3 | 5 | 6 | 7) {
            bump(&self.0.rejections, stage);
        }
    }

    pub(crate) fn eom_took(&self, d: Duration) {
        self.0.eom_seconds.record(d.as_secs_f64());
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
        c.increment(1);
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
