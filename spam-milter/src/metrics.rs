//! spam-milter's own metrics, registered beside the milter server's and the upstream
//! pool's in one registry, served on `metrics-listen`.
//!
//! Labels are bounded kinds: actions, error reasons, fallbacks; never addresses.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `spam_milter_messages_total` | counter | `action`: the Rspamd action applied (`no_action`, `greylist`, `add_header`, `rewrite_subject`, `soft_reject`, `reject`, `discard`, `quarantine`, `other`) or `unscanned`, `oversize`, `skipped` |
//! | `spam_milter_scan_errors_total` | counter | `reason`: `deadline`, `unavailable`, `connect`, `timeout`, `http_status`, `garbage`, `too_large` |
//! | `spam_milter_fallbacks_total` | counter | `policy`: `accept`, `tempfail`, `reject` (unscanned or oversize mail) |
//! | `spam_milter_scan_seconds` | histogram | (scan latency, all attempts) |
//! | `spam_milter_forged_headers_removed_total` | counter | |
//! | `spam_milter_reloads_total` | counter | `result`: ok, failed |
//!
//! The pool adds `spam_milter_upstream_*` (see [`crate::upstream`]).

use std::time::Duration;

use milter_core::metrics::{
    Counter, CounterFamily, Histogram, LATENCY_BUCKETS, MetricsError, Registry,
};
use milter_daemon::metrics::ReloadCounter;

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

/// The daemon's instruments; clones share them.
#[derive(Debug, Clone)]
pub struct SpamMetrics {
    registry: Registry,
    messages: CounterFamily,
    errors: CounterFamily,
    fallbacks: CounterFamily,
    scan_seconds: Histogram,
    forged: Counter,
    reloads: ReloadCounter,
}

impl SpamMetrics {
    /// Registers the daemon's metrics in `registry`.
    pub fn new(registry: &Registry) -> Result<SpamMetrics, MetricsError> {
        let messages = registry.counter_family_with_cap(
            "spam_milter_messages_total",
            "Messages by the Rspamd action applied, or why they were not scanned.",
            &["action"],
            16,
        )?;
        for a in ACTIONS {
            messages.with(&[a]);
        }
        let errors = registry.counter_family_with_cap(
            "spam_milter_scan_errors_total",
            "Scans that gave no verdict, by reason.",
            &["reason"],
            16,
        )?;
        let fallbacks = registry.counter_family_with_cap(
            "spam_milter_fallbacks_total",
            "Unscanned or oversize messages, by the fallback policy applied.",
            &["policy"],
            8,
        )?;
        for p in ["accept", "tempfail", "reject"] {
            fallbacks.with(&[p]);
        }
        Ok(SpamMetrics {
            registry: registry.clone(),
            messages,
            errors,
            fallbacks,
            scan_seconds: registry.histogram(
                "spam_milter_scan_seconds",
                "Time from the request to Rspamd's verdict, across attempts.",
                LATENCY_BUCKETS,
            )?,
            forged: registry.counter(
                "spam_milter_forged_headers_removed_total",
                "Scan-result headers sent in by unauthenticated clients and removed.",
            )?,
            reloads: ReloadCounter::new(registry, "spam_milter")?,
        })
    }

    /// The registry, to serve.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one message's decision.
    pub fn decision(&self, d: &Decision) {
        self.messages.inc(&[d.label]);
        if let Some(f) = d.fallback {
            self.fallbacks.inc(&[match f {
                Fallback::Accept => "accept",
                Fallback::Tempfail => "tempfail",
                Fallback::Reject => "reject",
            }]);
        }
        self.forged.add(d.forged_removed as u64);
    }

    /// Counts a scan error.
    pub fn scan_error(&self, reason: &'static str) {
        self.errors.inc(&[reason]);
    }

    /// Records a scan's latency.
    pub fn scanned(&self, took: Duration) {
        self.scan_seconds.observe_duration(took);
    }

    /// Counts a reload attempt.
    pub fn reloaded(&self, ok: bool) {
        self.reloads.record(ok);
    }
}
