//! The daemons' scrape endpoint and the metrics every daemon has.
//!
//! One [`Registry`] holds the milter server's metrics (see
//! `milter_core::server::ServerMetrics`) and the daemon's own; `metrics-listen` serves it.

use std::net::SocketAddr;

use milter_core::metrics::http::MetricsServer;
use milter_core::metrics::{Counter, MetricsError, Registry};
use milter_core::server::ShutdownHandle;

use crate::config::MetricsListen;

/// Binds `listen` and serves `registry` on `GET /metrics` until `shutdown`; returns the
/// bound address (a port of 0 picks one).
pub async fn serve(
    listen: &MetricsListen,
    registry: Registry,
    shutdown: ShutdownHandle,
) -> Result<SocketAddr, milter_core::Error> {
    let endpoint = MetricsServer::bind(listen.as_str(), registry).await?;
    let addr = endpoint.local_addr();
    tokio::spawn(endpoint.serve(shutdown));
    Ok(addr)
}

/// `{prefix}_reloads_total{result="ok"|"failed"}`.
#[derive(Debug, Clone)]
pub struct ReloadCounter {
    ok: Counter,
    failed: Counter,
}

impl ReloadCounter {
    /// Registers the counter under the daemon's prefix (e.g. `dkim_milter`).
    pub fn new(registry: &Registry, prefix: &str) -> Result<ReloadCounter, MetricsError> {
        let family = registry.counter_family(
            &format!("{prefix}_reloads_total"),
            "Configuration reloads, by result.",
            &["result"],
        )?;
        Ok(ReloadCounter {
            ok: family.with(&["ok"]),
            failed: family.with(&["failed"]),
        })
    }

    /// Counts one attempt.
    pub fn record(&self, ok: bool) {
        if ok { &self.ok } else { &self.failed }.inc()
    }
}
