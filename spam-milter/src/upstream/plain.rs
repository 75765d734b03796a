//! The scan path for `http://` upstreams: one `POST /checkv2` on a fresh TCP connection,
//! through hyper's low-level HTTP/1 client.
//!
//! Why not reqwest here: Rspamd's normal worker answers every request with `Connection:
//! close`, so a pool never reuses anything, and reqwest's connector stack (proxy lookup,
//! TLS wrapper, timeout layers, a spawned dispatcher task per connection) was 14-18 % of
//! spam-milter's CPU per message (tests/bench/PROFILE-spam.md). Here the connection future
//! is polled inline with the request (no task, no pool), TCP_NODELAY is on, and the
//! message goes out as the caller's `Bytes` chunks: hyper queues them behind the request
//! head and writes them with `writev`, without copying them into one buffer. The reply is
//! read with a bound (`max-reply-size`). HTTPS upstreams keep going through rspamd-client.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::header::{HeaderMap, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Fault, error_chain};

/// Where an `http://` upstream listens, parsed once from its base URL.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    /// Host name or IP address (IPv6 without brackets), resolved per attempt.
    host: String,
    port: u16,
    /// The `Host:` header value (`host:port` as in the URL).
    authority: HeaderValue,
}

impl Endpoint {
    /// The endpoint of an `http://` URL; `None` for any other scheme or without a host.
    pub(super) fn of(url: &reqwest::Url) -> Option<Endpoint> {
        if url.scheme() != "http" {
            return None;
        }
        let shown = url.host_str()?;
        let host = shown
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(shown)
            .to_owned();
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(p) => HeaderValue::from_str(&format!("{shown}:{p}")).ok()?,
            None => HeaderValue::from_str(shown).ok()?,
        };
        Some(Endpoint {
            host,
            port,
            authority,
        })
    }
}

/// A request body made of ready chunks, sent as they are, with its exact length known
/// up front (so hyper sends `Content-Length`, not chunked encoding).
#[derive(Debug, Default)]
pub(super) struct Chunks {
    parts: VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    /// The chunks in order; empty ones are dropped.
    pub(super) fn new(parts: impl IntoIterator<Item = Bytes>) -> Chunks {
        let parts: VecDeque<Bytes> = parts.into_iter().filter(|b| !b.is_empty()).collect();
        let remaining = parts.iter().map(|b| b.len() as u64).sum();
        Chunks { parts, remaining }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.parts.pop_front().map(|b| {
            self.remaining -= b.len() as u64;
            Ok(Frame::data(b))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// One `POST /checkv2` with `headers` (Host and Content-Length are added here) and `body`:
/// the reply's headers and body (at most `max_reply` bytes) when the status is 2xx.
pub(super) async fn post(
    ep: &Endpoint,
    mut headers: HeaderMap,
    body: Chunks,
    max_reply: usize,
) -> Result<(HeaderMap, Bytes), Fault> {
    let connect =
        |e: std::io::Error| Fault::Connect(format!("connect to {}:{}: {e}", ep.host, ep.port));
    let stream = TcpStream::connect((ep.host.as_str(), ep.port))
        .await
        .map_err(connect)?;
    // The request head and the message go out in one writev; no Nagle delay on the tail.
    stream.set_nodelay(true).map_err(connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Fault::Connect(error_chain(&e)))?;
    headers.insert(hyper::header::HOST, ep.authority.clone());
    let mut req = hyper::Request::new(body);
    *req.method_mut() = hyper::Method::POST;
    *req.uri_mut() = hyper::Uri::from_static("/checkv2");
    *req.headers_mut() = headers;

    let exchange = async move {
        let sent = sender.send_request(req).await;
        // No second request: with the sender gone, the connection ends after this reply.
        drop(sender);
        let resp = sent.map_err(|e| Fault::Connect(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(Fault::Status(resp.status().as_u16()));
        }
        let (parts, body) = resp.into_parts();
        let raw = Limited::new(body, max_reply)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    Fault::TooLarge(max_reply)
                } else {
                    Fault::Connect(error_chain(&*e))
                }
            })?
            .to_bytes();
        Ok((parts.headers, raw))
    };
    tokio::pin!(exchange);
    tokio::pin!(conn);
    // The connection is driven right here, beside the request: no spawned task.
    tokio::select! {
        biased;
        done = &mut exchange => done,
        // The connection ended first (closed or failed): the exchange then completes
        // from what was read, or fails with hyper's error for the broken connection.
        _ = &mut conn => exchange.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_report_their_exact_length_and_end() {
        let mut c = Chunks::new([
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cde"),
        ]);
        assert_eq!(c.size_hint().exact(), Some(5));
        assert!(!c.is_end_stream());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut got = Vec::new();
        while let Poll::Ready(Some(Ok(f))) = Pin::new(&mut c).poll_frame(&mut cx) {
            got.push(f.into_data().unwrap());
        }
        assert_eq!(got, [&b"ab"[..], &b"cde"[..]]);
        assert!(c.is_end_stream());
        assert_eq!(c.size_hint().exact(), Some(0));
    }

    #[test]
    fn only_http_urls_get_the_plain_path() {
        let ep = |s: &str| Endpoint::of(&reqwest::Url::parse(s).unwrap());
        let e = ep("http://127.0.0.1:11333").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 11333));
        assert_eq!(e.authority, "127.0.0.1:11333");
        let v6 = ep("http://[::1]:11333/").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.authority.to_str().unwrap()),
            ("::1", "[::1]:11333")
        );
        assert_eq!(ep("http://rspamd.example.net").unwrap().port, 80);
        assert!(ep("https://127.0.0.1:11333").is_none());
    }
}
