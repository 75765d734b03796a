//! dkim-milter's own metrics, emitted through the `metrics` facade into the recorder
//! that also holds the milter server's (milter_daemon::metrics).
//!
//! Labels are bounded kinds (algorithm, reason kind, result): never domains or free
//! text, so thousands of domains, or a hostile sender, cannot grow the scrape.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `dkim_milter_signed_total` | counter | `algorithm`: rsa-sha256, ed25519-sha256 (messages signed, per signature algorithm) |
//! | `dkim_milter_not_signed_total` | counter | `reason`: see [`NotSigned::label`] |
//! | `dkim_milter_signing_errors_total` | counter | |
//! | `dkim_milter_key_errors_total` | counter | (messages of ours whose domain key is broken) |
//! | `dkim_milter_verify_results_total` | counter | `result`: pass, fail, neutral, none, temperror, permerror |
//! | `dkim_milter_reloads_total` | counter | `result`: ok, failed |
//! | `dkim_milter_keys_loaded` | gauge | |
//! | `dkim_milter_broken_key_domains` | gauge | |
//! | `dkim_milter_key_warnings` | gauge | (load-time key warnings of the state serving) |

use metrics::{Counter, Gauge};
use milter_daemon::metrics::{CounterSet, PrometheusHandle, ReloadCounter};

use crate::reload::State;
use crate::transaction::{NotSigned, Tally};

const ALGORITHMS: [&str; 2] = ["rsa-sha256", "ed25519-sha256"];
const RESULTS: [&str; 6] = ["pass", "fail", "neutral", "none", "temperror", "permerror"];

/// The daemon's instruments; clones share them.
#[derive(Debug, Clone)]
pub struct DkimMetrics {
    handle: PrometheusHandle,
    signed: CounterSet,
    not_signed: CounterSet,
    signing_errors: Counter,
    key_errors: Counter,
    verify: CounterSet,
    reloads: ReloadCounter,
    keys_loaded: Gauge,
    broken_domains: Gauge,
    key_warnings: Gauge,
}

impl DkimMetrics {
    /// Resolves the daemon's metrics against the current recorder; `handle` renders
    /// that recorder (the milter server adds its own series when it binds).
    pub fn new(handle: &PrometheusHandle) -> DkimMetrics {
        use metrics::{counter, describe_counter, describe_gauge, gauge};
        describe_counter!(
            "dkim_milter_signing_errors_total",
            "Messages whose signing failed after the decision to sign."
        );
        describe_counter!(
            "dkim_milter_key_errors_total",
            "Messages of ours not signed because their domain's key is broken."
        );
        describe_gauge!(
            "dkim_milter_keys_loaded",
            "Signing domains (keys-dir) or KeyTable keys usable now."
        );
        describe_gauge!(
            "dkim_milter_broken_key_domains",
            "Domains (or KeyTable keys) whose key could not be loaded."
        );
        describe_gauge!(
            "dkim_milter_key_warnings",
            "Key warnings of the configuration serving: domains not signing (broken key, \
             empty directory), keys signing with a warning (see the log or --check-config)."
        );
        DkimMetrics {
            handle: handle.clone(),
            signed: CounterSet::new(
                "dkim_milter_signed_total",
                "DKIM signatures added, by algorithm.",
                "algorithm",
                &ALGORITHMS,
            ),
            not_signed: CounterSet::new(
                "dkim_milter_not_signed_total",
                "Messages passed without our signature, by reason kind.",
                "reason",
                &NotSigned::ALL.map(|k| k.label()),
            ),
            verify: CounterSet::new(
                "dkim_milter_verify_results_total",
                "Inbound DKIM verification results, per signature (none: message without any).",
                "result",
                &RESULTS,
            ),
            signing_errors: counter!("dkim_milter_signing_errors_total"),
            key_errors: counter!("dkim_milter_key_errors_total"),
            reloads: ReloadCounter::new("dkim_milter"),
            keys_loaded: gauge!("dkim_milter_keys_loaded"),
            broken_domains: gauge!("dkim_milter_broken_key_domains"),
            key_warnings: gauge!("dkim_milter_key_warnings"),
        }
    }

    /// Renders the recorder (it holds the milter server's metrics too), to serve.
    pub fn handle(&self) -> &PrometheusHandle {
        &self.handle
    }

    /// Counts one message's outcome.
    pub fn message(&self, t: &Tally) {
        for a in &t.signed {
            self.signed.inc(a);
        }
        if let Some(k) = t.not_signed {
            self.not_signed.inc(k.label());
            match k {
                NotSigned::SigningFailed => self.signing_errors.increment(1),
                NotSigned::KeyError => self.key_errors.increment(1),
                _ => {}
            }
        }
        for r in &t.verified {
            self.verify.inc(r);
        }
    }

    /// Counts a reload attempt.
    pub fn reloaded(&self, ok: bool) {
        self.reloads.record(ok)
    }

    /// Sets the key gauges from the state now serving.
    pub fn keys(&self, st: &State) {
        self.keys_loaded.set(st.keys.usable_count() as f64);
        self.broken_domains.set(st.keys.broken_count() as f64);
        self.key_warnings.set(st.keys.warning_count() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn tallies_become_counters() {
        let rec = milter_daemon::metrics::recorder();
        let m = metrics::with_local_recorder(&rec, || DkimMetrics::new(&rec.handle()));
        m.message(&Tally {
            signed: vec!["rsa-sha256", "ed25519-sha256"],
            ..Tally::default()
        });
        m.message(&Tally {
            not_signed: Some(NotSigned::KeyError),
            ..Tally::default()
        });
        m.message(&Tally {
            not_signed: Some(NotSigned::External),
            verified: vec!["pass", "fail"],
            ..Tally::default()
        });
        m.message(&Tally {
            not_signed: Some(NotSigned::SigningFailed),
            ..Tally::default()
        });
        m.reloaded(true);
        m.reloaded(false);
        m.reloaded(false);
        let text = m.handle().render();
        for (series, want) in [
            ("dkim_milter_signed_total{algorithm=\"rsa-sha256\"}", 1),
            ("dkim_milter_signed_total{algorithm=\"ed25519-sha256\"}", 1),
            ("dkim_milter_not_signed_total{reason=\"key_error\"}", 1),
            ("dkim_milter_not_signed_total{reason=\"external\"}", 1),
            ("dkim_milter_not_signed_total{reason=\"signing_failed\"}", 1),
            ("dkim_milter_not_signed_total{reason=\"no_key\"}", 0),
            ("dkim_milter_signing_errors_total", 1),
            ("dkim_milter_key_errors_total", 1),
            ("dkim_milter_verify_results_total{result=\"pass\"}", 1),
            ("dkim_milter_verify_results_total{result=\"fail\"}", 1),
            ("dkim_milter_verify_results_total{result=\"none\"}", 0),
            ("dkim_milter_reloads_total{result=\"ok\"}", 1),
            ("dkim_milter_reloads_total{result=\"failed\"}", 2),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
        }
    }
}
