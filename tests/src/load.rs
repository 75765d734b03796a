//! Sustained load against a running milter (issue #12): many concurrent MTA connections,
//! each kept open and sending messages at a steady pace, every reply checked, the
//! daemon's RSS sampled over the run.
//!
//! Knobs (environment): `RELIABILITY_LOAD_SECONDS` (run length, default 60; the
//! documented long run is 600), `RELIABILITY_LOAD_CONNECTIONS` (default 1000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use milter_core::client::{ClientConfig, Envelope, MilterClient, Outcome};

use crate::hostile::{RssSampler, growth};

/// What one load run did.
#[derive(Debug)]
pub struct LoadReport {
    /// Connections that were open at once (all negotiated before the timed run).
    pub connections: usize,
    /// Messages answered as expected.
    pub ok: u64,
    /// The fewest messages answered as expected on any one connection (starvation shows
    /// here: a connection stuck in the backlog or behind others gets few).
    pub min_per_connection: u64,
    /// Failures (connect, protocol or a wrong reply), the first 20 of them.
    pub errors: Vec<String>,
    /// All failures.
    pub error_count: u64,
    /// RSS samples in KiB, every 500 ms.
    pub rss: Vec<u64>,
    /// The timed run.
    pub elapsed: Duration,
}

impl LoadReport {
    /// RSS in MiB every ~5 s (every tenth sample), to see the shape of the curve.
    pub fn rss_curve(&self) -> String {
        self.rss
            .iter()
            .step_by(10)
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// One line for the test output and RELIABILITY.md.
    pub fn summary(&self) -> String {
        let first = self.rss.first().copied().unwrap_or(0);
        let peak = self.rss.iter().copied().max().unwrap_or(0);
        format!(
            "{} connections, {:?}: {} messages ok ({:.0}/s, at least {} per connection), {} \
             errors; RSS start {first} KiB, peak {peak} KiB, last-third peak / middle-third \
             peak = {:.3} ({} samples)",
            self.connections,
            self.elapsed,
            self.ok,
            self.ok as f64 / self.elapsed.as_secs_f64().max(0.001),
            self.min_per_connection,
            self.error_count,
            growth(&self.rss),
            self.rss.len()
        )
    }
}

/// An environment knob as a number, or `default`.
pub fn env_knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises this process's open-file limit to its hard limit (1,000 connections need more
/// than the usual 1024 descriptors); the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        r.rlim_cur
    }
}

/// Opens `connections` connections to `spec` (all negotiated first), then for `run` sends
/// on each one message every `gap` (start times spread over one gap), checking every
/// outcome with `check` (given the connection and message number). `pid` is sampled.
pub async fn run<M, C>(
    spec: &str,
    pid: u32,
    connections: usize,
    run: Duration,
    gap: Duration,
    make: M,
    check: C,
) -> LoadReport
where
    M: Fn(usize, u64) -> (Envelope, Vec<u8>) + Send + Sync + 'static,
    C: Fn(usize, u64, &Outcome) -> Result<(), String> + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let check = Arc::new(check);
    let mut clients = Vec::with_capacity(connections);
    let mut errors = Vec::new();
    let mut error_count = 0;
    // Negotiate in batches so the connects do not all land in the backlog at once.
    for chunk in (0..connections).collect::<Vec<_>>().chunks(100) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let spec = spec.to_string();
            set.spawn(async move {
                (
                    i,
                    MilterClient::connect(&spec, ClientConfig::default()).await,
                )
            });
        }
        while let Some(r) = set.join_next().await {
            match r.expect("connect task") {
                (i, Ok(c)) => clients.push((i, c)),
                (i, Err(e)) => {
                    error_count += 1;
                    errors.push(format!("connection {i}: connect: {e}"));
                }
            }
        }
    }
    let open = clients.len();
    let rss = RssSampler::start(pid, Duration::from_millis(500));
    let t0 = Instant::now();
    let end = t0 + run;
    let mut set = tokio::task::JoinSet::new();
    for (i, mut c) in clients {
        let (make, check) = (make.clone(), check.clone());
        let offset = gap.mul_f64(i as f64 / connections.max(1) as f64);
        set.spawn(async move {
            let mut ok = 0u64;
            let mut errs = Vec::new();
            tokio::time::sleep(offset).await;
            let mut n = 0u64;
            while Instant::now() < end {
                let (env, msg) = make(i, n);
                match c.send(&env, &msg).await {
                    Ok(o) => match check(i, n, &o) {
                        Ok(()) => ok += 1,
                        Err(e) => errs.push(format!("connection {i} message {n}: {e}")),
                    },
                    Err(e) => {
                        errs.push(format!("connection {i} message {n}: {e}"));
                        break;
                    }
                }
                n += 1;
                tokio::time::sleep(gap).await;
            }
            if let Err(e) = c.quit().await {
                errs.push(format!("connection {i}: quit: {e}"));
            }
            (ok, errs)
        });
    }
    let mut ok = 0;
    let mut min_per_connection = u64::MAX;
    while let Some(r) = set.join_next().await {
        let (k, errs) = r.expect("load task");
        ok += k;
        min_per_connection = min_per_connection.min(k);
        error_count += errs.len() as u64;
        for e in errs {
            if errors.len() < 20 {
                errors.push(e);
            }
        }
    }
    let elapsed = t0.elapsed();
    LoadReport {
        connections: open,
        ok,
        min_per_connection: if open == 0 { 0 } else { min_per_connection },
        errors,
        error_count,
        rss: rss.stop(),
        elapsed,
    }
}
