//! The daemons' Prometheus export and the metrics every daemon has.
//!
//! milter-core and the daemons only emit through the `metrics` facade; this module owns
//! the recorder (`metrics-exporter-prometheus`, which renders the text format) and the
//! `GET /metrics` endpoint (hyper, HTTP/1.1 with keep-alive off). Every histogram gets
//! explicit buckets ([`LATENCY_BUCKETS`]), so it is exported as a Prometheus histogram,
//! not a summary.
//!
//! [`install`] makes the recorder process-wide, as a daemon wants. Tests build their own
//! with [`recorder`] and resolve the handles under it with `metrics::with_local_recorder`,
//! so parallel tests do not count into each other.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::Counter;
pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use milter_core::metrics::LATENCY_BUCKETS;
use milter_core::server::{Endpoint, ShutdownHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::MetricsListen;

/// Time allowed for a request head to arrive, and for a whole exchange.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once (others wait in the backlog).
pub const MAX_CONCURRENT_SCRAPES: usize = 16;

/// hyper's smallest read buffer; a request head that does not fit is refused (431).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// How often histogram samples are folded into their buckets when nobody scrapes, so
/// memory stays bounded between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The recorder could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Another recorder is installed already (the facade allows one per process).
    #[error("a metrics recorder is installed already")]
    AlreadyInstalled,
    /// The endpoint could not be bound.
    #[error("metrics-listen {spec}: {reason}")]
    Listen {
        /// The address as configured.
        spec: String,
        /// Why.
        reason: String,
    },
}

/// A Prometheus recorder with the daemons' bucket bounds, not installed anywhere.
pub fn recorder() -> PrometheusRecorder {
    builder().build_recorder()
}

fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new()) // only for an empty bucket list
}

/// Installs [`recorder`] as the process-wide recorder and starts its upkeep; returns the
/// handle that renders it. Call it inside the runtime, before the metrics are resolved
/// (the milter server resolves its own when it binds).
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let recorder = recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::AlreadyInstalled)?;
    milter_core::metrics::describe();
    let h = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            h.run_upkeep();
        }
    });
    Ok(handle)
}

/// Parses a metrics listen address: `inet:HOST:PORT`, `inet:PORT@HOST`, `HOST:PORT`,
/// `[ADDR]:PORT`, or a bare `PORT` / `inet:PORT`, which means 127.0.0.1 (loopback by
/// default: metrics are not for the world). Unix sockets are refused.
pub fn parse_listen(spec: &str) -> Result<Endpoint, milter_core::Error> {
    let s = spec.trim();
    let bare = s.strip_prefix("inet:").unwrap_or(s);
    if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
        return Endpoint::parse(&format!("inet:127.0.0.1:{bare}")).map_err(|_| {
            milter_core::Error::Address {
                spec: spec.to_owned(),
                reason: "port is not a number from 0 to 65535".into(),
            }
        });
    }
    match Endpoint::parse(s)? {
        ep @ Endpoint::Tcp { .. } => Ok(ep),
        _ => Err(milter_core::Error::Address {
            spec: spec.to_owned(),
            reason: "the metrics endpoint listens on TCP only (HOST:PORT)".into(),
        }),
    }
}

/// Binds `listen` and serves `handle` on `GET /metrics` until `shutdown`; returns the
/// bound address (a port of 0 picks one).
pub async fn serve(
    listen: &MetricsListen,
    handle: PrometheusHandle,
    shutdown: ShutdownHandle,
) -> Result<SocketAddr, MetricsError> {
    serve_with(listen.as_str(), handle, shutdown, DEFAULT_READ_TIMEOUT).await
}

/// [`serve`] with a chosen read timeout (tests use a short one).
pub async fn serve_with(
    spec: &str,
    handle: PrometheusHandle,
    shutdown: ShutdownHandle,
    read_timeout: Duration,
) -> Result<SocketAddr, MetricsError> {
    let bad = |reason: String| MetricsError::Listen {
        spec: spec.to_owned(),
        reason,
    };
    let Endpoint::Tcp { host, port, .. } = parse_listen(spec).map_err(|e| bad(e.to_string()))?
    else {
        return Err(bad("not a TCP address".into()));
    };
    let listener = TcpListener::bind((host.as_str(), port))
        .await
        .map_err(|e| bad(format!("cannot bind: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| bad(format!("cannot bind: {e}")))?;
    tracing::info!(address = %addr, "metrics endpoint listening");
    tokio::spawn(accept_loop(listener, handle, shutdown, read_timeout));
    Ok(addr)
}

async fn accept_loop(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: ShutdownHandle,
    read_timeout: Duration,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_SCRAPES));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.wait() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => return,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(respond(&req, &handle)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .max_buf_size(MAX_REQUEST_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // The whole exchange is bounded too, so a client that never reads the
            // response cannot hold a permit.
            match tokio::time::timeout(read_timeout.saturating_mul(2), conn).await {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics request failed"),
                Err(_) => tracing::debug!(%peer, "metrics request timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}

fn respond(req: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let found = req.uri().path() == "/metrics";
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let (status, body) = match (found, get) {
        (true, true) => (StatusCode::OK, handle.render()),
        (true, false) => (StatusCode::METHOD_NOT_ALLOWED, String::new()),
        (false, _) => (StatusCode::NOT_FOUND, String::new()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if status == StatusCode::OK {
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(CONTENT_TYPE),
        );
    }
    resp
}

/// One counter per value of one label, every series resolved up front from a fixed
/// list, so the number of series is bounded by construction (never a domain or an
/// address); a value not on the list is counted under `other`, which flags a bug.
#[derive(Clone)]
pub struct CounterSet {
    values: Vec<&'static str>,
    counters: Vec<Counter>,
}

impl std::fmt::Debug for CounterSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterSet")
            .field("values", &self.values)
            .finish_non_exhaustive()
    }
}

impl CounterSet {
    /// Describes `name` and resolves `name{label=v}` for every `v` (and `other`) against
    /// the current recorder.
    pub fn new(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: &[&'static str],
    ) -> CounterSet {
        metrics::describe_counter!(name, help);
        let mut values = values.to_vec();
        if !values.contains(&"other") {
            values.push("other");
        }
        let counters = values
            .iter()
            .map(|v| metrics::counter!(name, label => *v))
            .collect();
        CounterSet { values, counters }
    }

    /// Adds `n` to the series of `value` (or of `other`).
    pub fn add(&self, value: &str, n: u64) {
        let i = self.values.iter().position(|v| *v == value);
        let i = i.or_else(|| self.values.iter().position(|v| *v == "other"));
        if let Some(c) = i.and_then(|i| self.counters.get(i)) {
            c.increment(n);
        }
    }

    /// Adds one to the series of `value` (or of `other`).
    pub fn inc(&self, value: &str) {
        self.add(value, 1);
    }
}

/// `{prefix}_reloads_total{result="ok"|"failed"}`.
#[derive(Clone)]
pub struct ReloadCounter {
    ok: Counter,
    failed: Counter,
}

impl std::fmt::Debug for ReloadCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadCounter").finish_non_exhaustive()
    }
}

impl ReloadCounter {
    /// Resolves the counter under the daemon's prefix (e.g. `dkim_milter`) against the
    /// current recorder.
    pub fn new(prefix: &str) -> ReloadCounter {
        let name = format!("{prefix}_reloads_total");
        metrics::describe_counter!(name.clone(), "Configuration reloads, by result.");
        ReloadCounter {
            ok: metrics::counter!(name.clone(), "result" => "ok"),
            failed: metrics::counter!(name, "result" => "failed"),
        }
    }

    /// Counts one attempt.
    pub fn record(&self, ok: bool) {
        if ok { &self.ok } else { &self.failed }.increment(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// The whole response to `request` (keep-alive is off, so the server closes).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("response and close within 5 s");
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
        )
        .await
    }

    #[tokio::test]
    async fn endpoint_serves_404s_elsewhere_and_refuses_floods_and_slow_clients() {
        let rec = recorder();
        let handle = rec.handle();
        let reloads = metrics::with_local_recorder(&rec, || ReloadCounter::new("t"));
        reloads.record(true);
        reloads.record(false);
        reloads.record(false);
        let stop = ShutdownHandle::new();
        let addr = serve_with(
            "127.0.0.1:0",
            handle,
            stop.clone(),
            Duration::from_millis(500),
        )
        .await
        .expect("bind");

        let ok = get(addr, "/metrics").await;
        let (head, body) = ok.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\ncontent-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(body.contains("# TYPE t_reloads_total counter\n"), "{body}");
        assert!(
            body.contains("t_reloads_total{result=\"ok\"} 1\n"),
            "{body}"
        );
        assert!(
            body.contains("t_reloads_total{result=\"failed\"} 2\n"),
            "{body}"
        );
        for path in ["/", "/metrics/x", "/favicon.ico"] {
            let r = get(addr, path).await;
            assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{path}: {r}");
        }
        let post = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");

        // A head that never ends: refused once the buffer bound is reached.
        let mut flood = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        flood.resize(MAX_REQUEST_BYTES * 2, b'a');
        let text = exchange(addr, &flood).await;
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 431 "),
            "{text}"
        );
        assert!(!text.contains("t_reloads_total"), "{text}");

        // A slow client: closed after the read timeout without metrics.
        let started = std::time::Instant::now();
        let text = exchange(addr, b"GET /metrics HTTP/1.1\r\n").await;
        assert!(!text.contains("t_reloads_total"), "{text}");
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );

        // Still serving after all that, then stops on shutdown.
        assert!(
            get(addr, "/metrics")
                .await
                .contains("t_reloads_total{result=\"ok\"} 1\n")
        );
        stop.shutdown();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "still listening after shutdown"
        );
    }

    #[test]
    fn counter_sets_resolve_every_value_and_lump_strays_into_other() {
        let rec = recorder();
        let set = metrics::with_local_recorder(&rec, || {
            CounterSet::new("t_total", "T.", "kind", &["a", "b"])
        });
        set.inc("a");
        set.add("b", 3);
        set.inc("not-on-the-list");
        let text = rec.handle().render();
        for want in [
            "t_total{kind=\"a\"} 1\n",
            "t_total{kind=\"b\"} 3\n",
            "t_total{kind=\"other\"} 1\n",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        assert!(!text.contains("not-on-the-list"), "{text}");
    }

    #[test]
    fn listen_forms() {
        for (spec, host, port) in [
            ("9102", "127.0.0.1", 9102),
            ("inet:9102", "127.0.0.1", 9102),
            ("0.0.0.0:9102", "0.0.0.0", 9102),
            ("inet:9102@::1", "::1", 9102),
        ] {
            match parse_listen(spec) {
                Ok(Endpoint::Tcp {
                    host: h, port: p, ..
                }) => {
                    assert_eq!((h.as_str(), p), (host, port), "{spec}")
                }
                other => panic!("{spec}: {other:?}"),
            }
        }
        assert!(parse_listen("unix:/run/m.sock").is_err());
        assert!(parse_listen("99999").is_err());
    }
}
