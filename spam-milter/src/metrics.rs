//! spam-milter's own metrics, emitted through the `metrics` facade into the recorder
//! that also holds the milter server's and the upstream pool's, served on `metrics-listen`.
//!
//! Labels are bounded kinds: actions, error reasons, fallbacks; never addresses.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `spam_milter_messages_total` | counter | `action`: the Rspamd action applied (`no_action`, `greylist`, `add_header`, `rewrite_subject`, `soft_reject`, `reject`, `discard`, `quarantine`, `other`) or `unscanned`, `oversize`, `skipped` |
//! | `spam_milter_scan_errors_total` | counter | `reason`: `deadline`, `unavailable`, `connect`, `timeout`, `http_status`, `garbage`, `too_large`, `bad_request` |
//! | `spam_milter_fallbacks_total` | counter | `policy`: `accept`, `tempfail`, `reject` (unscanned or oversize mail) |
//! | `spam_milter_scan_seconds` | histogram | (scan latency, all attempts) |
//! | `spam_milter_forged_headers_removed_total` | counter | |
//! | `spam_milter_reloads_total` | counter | `result`: ok, failed |
//!
//! The pool adds `spam_milter_upstream_*` (see [`crate::upstream`]).

use std::time::Duration;

use metrics::{Counter, Histogram};
use milter_daemon::metrics::{CounterSet, PrometheusHandle, ReloadCounter};

use crate::config::Fallback;
use crate::decision::Decision;

const ACTIONS: [&str; 12] = [
    "no_action",
    "greylist",
    "add_header",
    "rewrite_subject",
    "soft_reject",
    "reject",
    "discard",
    "quarantine",
    "other",
    "unscanned",
    "oversize",
    "skipped",
];

/// Every `ScanError::label` (upstream.rs's `labels_are_bounded_and_distinct` checks).
pub const SCAN_ERRORS: [&str; 8] = [
    "deadline",
    "unavailable",
    "connect",
    "timeout",
    "http_status",
    "garbage",
    "too_large",
    "bad_request",
];

/// The daemon's instruments; clones share them.
#[derive(Debug, Clone)]
pub struct SpamMetrics {
    handle: PrometheusHandle,
    messages: CounterSet,
    errors: CounterSet,
    fallbacks: CounterSet,
    scan_seconds: Histogram,
    forged: Counter,
    reloads: ReloadCounter,
}

impl SpamMetrics {
    /// Resolves the daemon's metrics against the current recorder; `handle` renders it.
    pub fn new(handle: &PrometheusHandle) -> SpamMetrics {
        metrics::describe_histogram!(
            "spam_milter_scan_seconds",
            metrics::Unit::Seconds,
            "Time from the request to Rspamd's verdict, across attempts."
        );
        metrics::describe_counter!(
            "spam_milter_forged_headers_removed_total",
            "Scan-result headers sent in by unauthenticated clients and removed."
        );
        SpamMetrics {
            handle: handle.clone(),
            messages: CounterSet::new(
                "spam_milter_messages_total",
                "Messages by the Rspamd action applied, or why they were not scanned.",
                "action",
                &ACTIONS,
            ),
            errors: CounterSet::new(
                "spam_milter_scan_errors_total",
                "Scans that gave no verdict, by reason.",
                "reason",
                &SCAN_ERRORS,
            ),
            fallbacks: CounterSet::new(
                "spam_milter_fallbacks_total",
                "Unscanned or oversize messages, by the fallback policy applied.",
                "policy",
                &["accept", "tempfail", "reject"],
            ),
            scan_seconds: metrics::histogram!("spam_milter_scan_seconds"),
            forged: metrics::counter!("spam_milter_forged_headers_removed_total"),
            reloads: ReloadCounter::new("spam_milter"),
        }
    }

    /// Renders the recorder (the server's and the pool's metrics too), to serve.
    pub fn handle(&self) -> &PrometheusHandle {
        &self.handle
    }

    /// Counts one message's decision.
    pub fn decision(&self, d: &Decision) {
        self.messages.inc(d.label);
        if let Some(f) = d.fallback {
            self.fallbacks.inc(match f {
                Fallback::Accept => "accept",
                Fallback::Tempfail => "tempfail",
                Fallback::Reject => "reject",
            });
        }
        self.forged.increment(d.forged_removed as u64);
    }

    /// Counts a scan error.
    pub fn scan_error(&self, reason: &'static str) {
        self.errors.inc(reason);
    }

    /// Records a scan's latency.
    pub fn scanned(&self, took: Duration) {
        self.scan_seconds.record(took.as_secs_f64());
    }

    /// Counts a reload attempt.
    pub fn reloaded(&self, ok: bool) {
        self.reloads.record(ok);
    }
}
