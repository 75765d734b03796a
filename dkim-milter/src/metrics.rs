//! dkim-milter's own metrics, registered next to the milter server's in one registry.
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

use milter_core::metrics::{Counter, CounterFamily, Gauge, MetricsError, Registry};
use milter_daemon::metrics::ReloadCounter;

use crate::reload::State;
use crate::transaction::{NotSigned, Tally};

const ALGORITHMS: [&str; 2] = ["rsa-sha256", "ed25519-sha256"];
const RESULTS: [&str; 6] = ["pass", "fail", "neutral", "none", "temperror", "permerror"];

/// The daemon's instruments; clones share them.
#[derive(Debug, Clone)]
pub struct DkimMetrics {
    registry: Registry,
    signed: CounterFamily,
    not_signed: [Counter; NotSigned::ALL.len()],
    signing_errors: Counter,
    key_errors: Counter,
    verify: CounterFamily,
    reloads: ReloadCounter,
    keys_loaded: Gauge,
    broken_domains: Gauge,
    key_warnings: Gauge,
}

impl DkimMetrics {
    /// Registers the daemon's metrics in `registry` (the milter server adds its own).
    pub fn new(registry: &Registry) -> Result<DkimMetrics, MetricsError> {
        // Small caps: the values come from our code, `other` would flag a bug.
        let signed = registry.counter_family_with_cap(
            "dkim_milter_signed_total",
            "DKIM signatures added, by algorithm.",
            &["algorithm"],
            8,
        )?;
        let not_signed = registry.counter_family_with_cap(
            "dkim_milter_not_signed_total",
            "Messages passed without our signature, by reason kind.",
            &["reason"],
            16,
        )?;
        let verify = registry.counter_family_with_cap(
            "dkim_milter_verify_results_total",
            "Inbound DKIM verification results, per signature (none: message without any).",
            &["result"],
            16,
        )?;
        for a in ALGORITHMS {
            signed.with(&[a]);
        }
        for r in RESULTS {
            verify.with(&[r]);
        }
        Ok(DkimMetrics {
            registry: registry.clone(),
            signing_errors: registry.counter(
                "dkim_milter_signing_errors_total",
                "Messages whose signing failed after the decision to sign.",
            )?,
            key_errors: registry.counter(
                "dkim_milter_key_errors_total",
                "Messages of ours not signed because their domain's key is broken.",
            )?,
            not_signed: NotSigned::ALL.map(|k| not_signed.with(&[k.label()])),
            signed,
            verify,
            reloads: ReloadCounter::new(registry, "dkim_milter")?,
            keys_loaded: registry.gauge(
                "dkim_milter_keys_loaded",
                "Signing domains (keys-dir) or KeyTable keys usable now.",
            )?,
            broken_domains: registry.gauge(
                "dkim_milter_broken_key_domains",
                "Domains (or KeyTable keys) whose key could not be loaded.",
            )?,
            key_warnings: registry.gauge(
                "dkim_milter_key_warnings",
                "Key warnings of the configuration serving: domains not signing (broken key, \
                 empty directory), keys signing with a warning (see the log or --check-config).",
            )?,
        })
    }

    /// The registry, to serve (it holds the milter server's metrics too).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one message's outcome.
    pub fn message(&self, t: &Tally) {
        for a in &t.signed {
            self.signed.inc(&[a]);
        }
        if let Some(k) = t.not_signed {
            if let Some(c) = NotSigned::ALL
                .iter()
                .position(|x| *x == k)
                .and_then(|i| self.not_signed.get(i))
            {
                c.inc();
            }
            match k {
                NotSigned::SigningFailed => self.signing_errors.inc(),
                NotSigned::KeyError => self.key_errors.inc(),
                _ => {}
            }
        }
        for r in &t.verified {
            self.verify.inc(&[r]);
        }
    }

    /// Counts a reload attempt.
    pub fn reloaded(&self, ok: bool) {
        self.reloads.record(ok)
    }

    /// Sets the key gauges from the state now serving.
    pub fn keys(&self, st: &State) {
        self.keys_loaded.set(st.keys.usable_count() as i64);
        self.broken_domains.set(st.keys.broken_count() as i64);
        self.key_warnings.set(st.keys.warning_count() as i64);
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
        let r = Registry::new();
        let m = DkimMetrics::new(&r).unwrap();
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
        let text = r.render();
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
