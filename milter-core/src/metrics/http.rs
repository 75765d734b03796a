//! A minimal scrape endpoint: `GET /metrics` answers the registry's text, anything else
//! 404; one request per connection, closed after the response (HTTP/1.0 style).
//!
//! Built to face a hostile local network as well as Prometheus: the request head is
//! bounded ([`MAX_REQUEST_BYTES`], larger is answered 431 and closed), the whole head must
//! arrive within the read timeout, and at most [`MAX_CONCURRENT_SCRAPES`] connections are
//! served at once (others wait in the backlog).
//!
//! ```no_run
//! # async fn run() -> Result<(), milter_core::Error> {
//! use milter_core::metrics::{Registry, http::MetricsServer};
//! use milter_core::server::ShutdownHandle;
//!
//! let registry = Registry::new();
//! let endpoint = MetricsServer::bind("inet:127.0.0.1:9102", registry.clone()).await?;
//! tokio::spawn(endpoint.serve(ShutdownHandle::new()));
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Registry;
use crate::error::Error;
use crate::server::{Endpoint, ShutdownHandle};

/// Largest request head read; a longer one is answered 431 and the connection closed.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Time allowed for the whole request head to arrive (and for the response to be taken).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once.
pub const MAX_CONCURRENT_SCRAPES: usize = 16;

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Parses a metrics listen address: `inet:HOST:PORT`, `inet:PORT@HOST`, `HOST:PORT`,
/// `[ADDR]:PORT`, or a bare `PORT` / `inet:PORT`, which means 127.0.0.1 (loopback by
/// default: metrics are not for the world). Unix sockets are refused.
pub fn parse_listen(spec: &str) -> Result<Endpoint, Error> {
    let s = spec.trim();
    let bare = s.strip_prefix("inet:").unwrap_or(s);
    if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
        return Endpoint::parse(&format!("inet:127.0.0.1:{bare}")).map_err(|_| Error::Address {
            spec: spec.to_owned(),
            reason: "port is not a number from 0 to 65535".into(),
        });
    }
    match Endpoint::parse(s)? {
        ep @ Endpoint::Tcp { .. } => Ok(ep),
        Endpoint::Unix(_) => Err(Error::Address {
            spec: spec.to_owned(),
            reason: "the metrics endpoint listens on TCP only (HOST:PORT)".into(),
        }),
    }
}

/// A bound metrics endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
    registry: Registry,
    read_timeout: Duration,
}

impl MetricsServer {
    /// Binds `spec` (see [`parse_listen`]); errors name the address and the reason.
    pub async fn bind(spec: &str, registry: Registry) -> Result<MetricsServer, Error> {
        let Endpoint::Tcp { host, port, .. } = parse_listen(spec)? else {
            return Err(Error::Address {
                spec: spec.to_owned(),
                reason: "not a TCP address".into(),
            });
        };
        let bad = |e: std::io::Error| Error::Address {
            spec: spec.to_owned(),
            reason: format!("cannot bind: {e}"),
        };
        let listener = TcpListener::bind((host.as_str(), port))
            .await
            .map_err(bad)?;
        let addr = listener.local_addr().map_err(bad)?;
        Ok(MetricsServer {
            listener,
            addr,
            registry,
            read_timeout: DEFAULT_READ_TIMEOUT,
        })
    }

    /// The address bound (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Time allowed for a request head to arrive (default [`DEFAULT_READ_TIMEOUT`]).
    pub fn read_timeout(mut self, timeout: Duration) -> MetricsServer {
        self.read_timeout = timeout;
        self
    }

    /// Serves scrapes until `shutdown` is requested.
    pub async fn serve(self, shutdown: ShutdownHandle) {
        tracing::info!(address = %self.addr, "metrics endpoint listening");
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_SCRAPES));
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = shutdown.wait() => return,
            };
            let accepted = tokio::select! {
                r = self.listener.accept() => r,
                _ = shutdown.wait() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let registry = self.registry.clone();
                    let limit = self.read_timeout;
                    tokio::spawn(async move {
                        let _permit = permit;
                        if let Err(e) = answer(stream, &registry, limit).await {
                            tracing::debug!(%peer, error = %e, "metrics request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Reads one request head within `limit`, writes the response, closes.
async fn answer(
    mut stream: TcpStream,
    registry: &Registry,
    limit: Duration,
) -> std::io::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let response = loop {
        match head(&buf) {
            Head::Complete => break respond(&buf, registry),
            Head::TooLarge => break status(431, "Request Header Fields Too Large"),
            Head::Incomplete => {}
        }
        let room = MAX_REQUEST_BYTES
            .saturating_sub(buf.len())
            .clamp(1, chunk.len());
        let Some(dst) = chunk.get_mut(..room) else {
            return Ok(());
        };
        let n = match tokio::time::timeout_at(deadline, stream.read(dst)).await {
            Ok(r) => r?,
            Err(_) => break status(408, "Request Timeout"),
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(dst.get(..n).unwrap_or_default());
    };
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

enum Head {
    Incomplete,
    Complete,
    TooLarge,
}

/// Whether `buf` holds a whole request head (ended by an empty line).
fn head(buf: &[u8]) -> Head {
    let end = buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n");
    if end {
        Head::Complete
    } else if buf.len() >= MAX_REQUEST_BYTES {
        Head::TooLarge
    } else {
        Head::Incomplete
    }
}

/// The response to a complete request head.
fn respond(request: &[u8], registry: &Registry) -> Vec<u8> {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.trim_ascii().split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    if method == b"GET" && path == b"/metrics" {
        let body = registry.render();
        let mut out = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    } else {
        status(404, "Not Found")
    }
}

/// A short plain-text error response.
fn status(code: u16, reason: &str) -> Vec<u8> {
    let body = format!("{code} {reason}\n");
    format!(
        "HTTP/1.0 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_default_to_loopback() {
        let tcp = |h: &str, p: u16| Endpoint::Tcp {
            host: h.into(),
            port: p,
            ipv6: false,
        };
        assert_eq!(parse_listen("9102").unwrap(), tcp("127.0.0.1", 9102));
        assert_eq!(parse_listen("inet:9102").unwrap(), tcp("127.0.0.1", 9102));
        assert_eq!(
            parse_listen("inet:9102@0.0.0.0").unwrap(),
            tcp("0.0.0.0", 9102)
        );
        assert_eq!(parse_listen("[::1]:9102").unwrap(), tcp("::1", 9102));
        assert_eq!(parse_listen("localhost:1").unwrap(), tcp("localhost", 1));
        assert!(parse_listen("unix:/run/m.sock").is_err());
        assert!(parse_listen("99999").is_err());
        assert!(parse_listen("nonsense").is_err());
    }

    #[test]
    fn only_get_metrics_is_served() {
        let r = Registry::new();
        r.counter("t_total", "T.").unwrap().inc();
        let ok =
            String::from_utf8(respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &r)).unwrap();
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\n# HELP t_total T.\n# TYPE t_total counter\nt_total 1\n"));
        let q = String::from_utf8(respond(b"GET /metrics?x=1 HTTP/1.0\n\n", &r)).unwrap();
        assert!(q.starts_with("HTTP/1.0 200 OK\r\n"), "{q}");
        for req in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"POST /metrics HTTP/1.1\r\n\r\n",
            b"GET /metricsx HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ] {
            let r = String::from_utf8(respond(req, &r)).unwrap();
            assert!(r.starts_with("HTTP/1.0 404 Not Found\r\n"), "{r}");
        }
    }

    #[test]
    fn request_heads_are_bounded() {
        assert!(matches!(
            head(b"GET /metrics HTTP/1.1\r\n"),
            Head::Incomplete
        ));
        assert!(matches!(
            head(b"GET /metrics HTTP/1.1\r\n\r\n"),
            Head::Complete
        ));
        assert!(matches!(head(&[b'a'; MAX_REQUEST_BYTES]), Head::TooLarge));
    }
}
