//! Counters, gauges and histograms for operators, rendered in the Prometheus text format.
//!
//! A [`Registry`] holds named metrics; the handles it returns ([`Counter`], [`Gauge`],
//! [`CounterFamily`], [`Histogram`]) are cheap clones of shared atomics, so the hot path
//! is one relaxed atomic add: no lock, no allocation. Resolve labelled series once
//! ([`CounterFamily::with`]) and keep the [`Counter`] when the label values are known in
//! advance.
//!
//! Label sets are bounded: a family keeps at most its cap of distinct label sets (64 by
//! default); further values, and values longer than [`MAX_LABEL_VALUE`] bytes, are counted
//! under the value `other`, so hostile input cannot grow memory or the scrape.
//!
//! The core is sans-IO ([`Registry::render`] returns the text); with the `server` feature,
//! [`http::MetricsServer`] serves it on `GET /metrics`. A daemon shares one registry
//! between the milter server ([`Builder::metrics`](crate::server::Builder::metrics)), its
//! own metrics and the endpoint:
//!
//! ```
//! use milter_core::metrics::Registry;
//!
//! let registry = Registry::new();
//! let signed = registry
//!     .counter_family("example_signed_total", "Messages signed, by algorithm.", &["algorithm"])
//!     .unwrap();
//! let rsa = signed.with(&["rsa-sha256"]); // resolved once, then one atomic add per use
//! rsa.inc();
//! assert!(registry.render().contains("example_signed_total{algorithm=\"rsa-sha256\"} 1\n"));
//! ```

#[cfg(feature = "server")]
pub mod http;
mod render;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Distinct label sets a family keeps by default before lumping new ones into `other`.
pub const DEFAULT_LABEL_CAP: usize = 64;

/// Longest label value kept as given; longer ones are counted under `other`.
pub const MAX_LABEL_VALUE: usize = 128;

/// The label value that absorbs label sets beyond a family's cap.
pub const OTHER: &str = "other";

/// A metric could not be registered (the API user's fault: names are fixed by the program).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Not a valid Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
    #[error("invalid metric name {0:?}")]
    InvalidName(String),
    /// Not a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not `__`-prefixed, not `le`).
    #[error("invalid label name {label:?} for metric {metric}")]
    InvalidLabel {
        /// The metric.
        metric: String,
        /// The label name.
        label: String,
    },
    /// Histogram bucket bounds must be finite and strictly increasing.
    #[error("histogram {0}: bucket bounds must be finite and strictly increasing")]
    InvalidBuckets(String),
    /// The name is registered already with another type, labels or buckets.
    #[error("metric {0} is already registered with a different type, labels or buckets")]
    Conflict(String),
}

/// A named set of metrics, shared by clones, rendered by [`Registry::render`].
///
/// Registration is get-or-create: asking again for a name with the same type and labels
/// returns the same series, so two parts of a program (or two servers) can share one.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Arc<Mutex<Vec<Entry>>>,
}

#[derive(Debug)]
struct Entry {
    name: String,
    help: String,
    metric: Metric,
}

#[derive(Debug, Clone)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    Family(CounterFamily),
    Histogram(Histogram),
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// A monotonic counter (name conventionally ending in `_total`).
    pub fn counter(&self, name: &str, help: &str) -> Result<Counter, MetricsError> {
        self.get_or_insert(
            name,
            help,
            Metric::Counter(Counter::default()),
            |m| match m {
                Metric::Counter(c) => Some(c.clone()),
                _ => None,
            },
        )
    }

    /// A value that goes up and down.
    pub fn gauge(&self, name: &str, help: &str) -> Result<Gauge, MetricsError> {
        self.get_or_insert(name, help, Metric::Gauge(Gauge::default()), |m| match m {
            Metric::Gauge(g) => Some(g.clone()),
            _ => None,
        })
    }

    /// Counters told apart by `labels`, at most [`DEFAULT_LABEL_CAP`] label sets.
    pub fn counter_family(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<CounterFamily, MetricsError> {
        self.counter_family_with_cap(name, help, labels, DEFAULT_LABEL_CAP)
    }

    /// Counters told apart by `labels`, at most `cap` label sets (plus `other`).
    pub fn counter_family_with_cap(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        cap: usize,
    ) -> Result<CounterFamily, MetricsError> {
        for l in labels {
            if !valid_label_name(l) {
                return Err(MetricsError::InvalidLabel {
                    metric: name.to_owned(),
                    label: (*l).to_owned(),
                });
            }
        }
        let fresh = CounterFamily::new(labels, cap);
        self.get_or_insert(name, help, Metric::Family(fresh), |m| match m {
            Metric::Family(f) if f.label_names_eq(labels) => Some(f.clone()),
            _ => None,
        })
    }

    /// A histogram with these upper bucket bounds (a `+Inf` bucket is implied).
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        bounds: &[f64],
    ) -> Result<Histogram, MetricsError> {
        if bounds.iter().any(|b| !b.is_finite()) || bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(MetricsError::InvalidBuckets(name.to_owned()));
        }
        let fresh = Histogram::new(bounds);
        self.get_or_insert(name, help, Metric::Histogram(fresh), |m| match m {
            Metric::Histogram(h) if *h.0.bounds == *bounds => Some(h.clone()),
            _ => None,
        })
    }

    /// The whole registry in the Prometheus text exposition format (version 0.0.4), in
    /// registration order.
    pub fn render(&self) -> String {
        // Clone the handles out so the lock is not held while formatting.
        let snapshot: Vec<(String, String, Metric)> = self
            .lock()
            .iter()
            .map(|e| (e.name.clone(), e.help.clone(), e.metric.clone()))
            .collect();
        let mut out = String::with_capacity(snapshot.len() * 128);
        for (name, help, metric) in &snapshot {
            render::metric(&mut out, name, help, metric);
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get_or_insert<T>(
        &self,
        name: &str,
        help: &str,
        fresh: Metric,
        existing: impl Fn(&Metric) -> Option<T>,
    ) -> Result<T, MetricsError> {
        if !valid_metric_name(name) {
            return Err(MetricsError::InvalidName(name.to_owned()));
        }
        let mut entries = self.lock();
        if let Some(e) = entries.iter().find(|e| e.name == name) {
            return existing(&e.metric).ok_or_else(|| MetricsError::Conflict(name.to_owned()));
        }
        let handle = existing(&fresh).ok_or_else(|| MetricsError::Conflict(name.to_owned()))?;
        entries.push(Entry {
            name: name.to_owned(),
            help: help.to_owned(),
            metric: fresh,
        });
        Ok(handle)
    }
}

fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with("__")
        && n != "le"
}

/// A monotonic counter; clones share the value.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (connections open, keys loaded); clones share it.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters told apart by label values, with a bounded number of label sets.
#[derive(Debug, Clone)]
pub struct CounterFamily(Arc<FamilyInner>);

#[derive(Debug)]
struct FamilyInner {
    labels: Box<[String]>,
    cap: usize,
    /// Label values and their counter, in first-use order; `other` does not count
    /// against the cap. Written only when a new label set appears.
    series: RwLock<Vec<(Box<[String]>, Counter)>>,
}

impl CounterFamily {
    fn new(labels: &[&str], cap: usize) -> CounterFamily {
        CounterFamily(Arc::new(FamilyInner {
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            cap,
            series: RwLock::new(Vec::new()),
        }))
    }

    fn label_names_eq(&self, labels: &[&str]) -> bool {
        self.0.labels.len() == labels.len() && self.0.labels.iter().zip(labels).all(|(a, b)| a == b)
    }

    /// The label names, in order.
    pub fn label_names(&self) -> &[String] {
        &self.0.labels
    }

    /// The counter for these label values (one per label name, in order).
    ///
    /// A known label set costs a read lock and a comparison; a new one allocates once.
    /// Past the cap, for a value longer than [`MAX_LABEL_VALUE`], or for the wrong number
    /// of values, the `other` series is returned.
    pub fn with(&self, values: &[&str]) -> Counter {
        if let Some(c) = self.find(values) {
            return c;
        }
        let fits = values.len() == self.0.labels.len()
            && values.iter().all(|v| v.len() <= MAX_LABEL_VALUE);
        let mut series = self.0.series.write().unwrap_or_else(|e| e.into_inner());
        // Raced with another writer that added the same set.
        if let Some((_, c)) = series.iter().find(|(k, _)| same(k, values)) {
            return c.clone();
        }
        let regular = series.iter().filter(|(k, _)| !is_other(k)).count();
        let key: Box<[String]> = if fits && regular < self.0.cap {
            values.iter().map(|v| (*v).to_owned()).collect()
        } else {
            if let Some((_, c)) = series.iter().find(|(k, _)| is_other(k)) {
                return c.clone();
            }
            self.0.labels.iter().map(|_| OTHER.to_owned()).collect()
        };
        let c = Counter::default();
        series.push((key, c.clone()));
        c
    }

    /// Adds one to the series for `values` (see [`CounterFamily::with`]).
    pub fn inc(&self, values: &[&str]) {
        self.with(values).inc();
    }

    /// The value of the series for exactly these label values; 0 if it does not exist.
    pub fn get(&self, values: &[&str]) -> u64 {
        self.find(values).map_or(0, |c| c.get())
    }

    fn find(&self, values: &[&str]) -> Option<Counter> {
        let series = self.0.series.read().unwrap_or_else(|e| e.into_inner());
        series
            .iter()
            .find(|(k, _)| same(k, values))
            .map(|(_, c)| c.clone())
    }

    fn snapshot(&self) -> Vec<(Box<[String]>, u64)> {
        let series = self.0.series.read().unwrap_or_else(|e| e.into_inner());
        series.iter().map(|(k, c)| (k.clone(), c.get())).collect()
    }
}

fn same(key: &[String], values: &[&str]) -> bool {
    key.len() == values.len() && key.iter().zip(values).all(|(k, v)| k == v)
}

fn is_other(key: &[String]) -> bool {
    key.iter().all(|k| k == OTHER)
}

/// Observations counted into fixed buckets, with their sum and count.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: Box<[f64]>,
    /// One per bound plus `+Inf`; not cumulative (rendering adds them up).
    buckets: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

/// Bucket bounds in seconds for handler latencies: 1 ms to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Histogram {
    fn new(bounds: &[f64]) -> Histogram {
        Histogram(Arc::new(HistogramInner {
            bounds: bounds.into(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }))
    }

    /// Records one observation; NaN is ignored.
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let h = &self.0;
        let idx = h.bounds.partition_point(|b| *b < v);
        if let Some(b) = h.buckets.get(idx) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let _ = h
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
        h.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    /// Sum of the observations so far.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum_bits.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests;
