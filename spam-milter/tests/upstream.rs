//! The upstream pool against tiny loopback HTTP servers.
//!
//! Project rule: a mock may stand in for a fault, never for the component. These servers
//! only produce what a real Rspamd cannot on demand (closed ports, hangs, 500s, garbage,
//! oversized and Rspamd-3.4-style zstd replies, failing `/ping`) and capture what arrives;
//! their good answers are a real Rspamd 3.4 reply (`samples/gtube.json`). Scans against a
//! real Rspamd are in the `tests` crate.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use milter_daemon::config::Span;
use milter_daemon::metrics::PrometheusHandle;
use spam_milter::config::{RspamdConfig, Selection};
use spam_milter::upstream::{BreakerState, Pool, ScanError, ScanRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A real Rspamd 3.4 `/checkv2` answer (GTUBE: reject, score 15).
const GTUBE: &str = include_str!("samples/gtube.json");

/// Generous slack for "finished before the deadline": a loaded 2-core CI box.
const MARGIN: Duration = Duration::from_millis(1500);

/// One HTTP request as the server received it.
#[derive(Debug, Clone)]
struct Captured {
    method: String,
    path: String,
    /// In arrival order, names lowercased (as hyper sends them).
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Captured {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} sent {} times", all.len());
        all.first().copied()
    }
}

enum Answer {
    /// Status, extra headers, body.
    Http(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// Read the request, then never answer (but keep the connection open).
    Hang,
}

fn ok_json(body: &str) -> Answer {
    Answer::Http(
        200,
        vec![("Content-Type", "application/json".into())],
        body.into(),
    )
}

type Handler = dyn Fn(&Captured) -> Answer + Send + Sync;

struct Server {
    url: String,
    /// Connections accepted.
    accepted: Arc<AtomicUsize>,
    /// Requests read, `/ping` ones included.
    requests: Arc<Mutex<Vec<Captured>>>,
}

impl Server {
    fn scans(&self) -> Vec<Captured> {
        let r = self.requests.lock().unwrap();
        r.iter().filter(|c| c.path == "/checkv2").cloned().collect()
    }
}

/// Serves `handler` on 127.0.0.1 (any port); `/ping` answers `pong` unless the handler
/// is asked (it sees every request).
async fn serve(handler: impl Fn(&Captured) -> Answer + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let handler: Arc<Handler> = Arc::new(handler);
    let (acc, reqs) = (accepted.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            acc.fetch_add(1, Ordering::SeqCst);
            let (handler, reqs) = (handler.clone(), reqs.clone());
            tokio::spawn(async move {
                let _ = connection(stream, &*handler, &reqs).await;
            });
        }
    });
    Server {
        url,
        accepted,
        requests,
    }
}

async fn connection(
    mut stream: TcpStream,
    handler: &Handler,
    reqs: &Mutex<Vec<Captured>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let mut chunk = vec![0u8; len - body.len()];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let req = Captured {
        method,
        path,
        headers,
        body,
    };
    reqs.lock().unwrap().push(req.clone());
    let answer = handler(&req);
    match answer {
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
        Answer::Http(status, headers, body) => {
            let mut out = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            stream.write_all(out.as_bytes()).await?;
            stream.write_all(&body).await?;
            stream.shutdown().await
        }
    }
}

/// A `/checkv2` that answers GTUBE, and `/ping` that answers `pong`.
async fn rspamd_like() -> Server {
    serve(|r| {
        if r.path == "/ping" {
            Answer::Http(200, vec![], b"pong\r\n".to_vec())
        } else {
            ok_json(GTUBE)
        }
    })
    .await
}

/// A port nothing listens on.
async fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

fn config(upstreams: &[&str]) -> RspamdConfig {
    RspamdConfig {
        upstreams: upstreams.iter().map(|s| s.to_string()).collect(),
        selection: Selection::Failover,
        attempt_timeout: Span::millis(500),
        scan_deadline: Span::millis(1000),
        health_check_interval: Span::millis(100),
        breaker_failures: 3,
        breaker_cooldown: Span::millis(300),
        ..RspamdConfig::default()
    }
}

/// A pool whose metrics go to a recorder of its own (tests run in parallel).
fn pool(cfg: &RspamdConfig) -> (Arc<Pool>, PrometheusHandle) {
    let recorder = milter_daemon::metrics::recorder();
    let pool = metrics::with_local_recorder(&recorder, || Pool::new(cfg).unwrap());
    (Arc::new(pool), recorder.handle())
}

/// The value of the sample line `series` (name with labels) in the rendered text.
fn sample(reg: &PrometheusHandle, series: &str) -> Option<f64> {
    reg.render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn request() -> ScanRequest {
    ScanRequest {
        headers: [
            ("From", "<a@example.com>"),
            ("Rcpt", "<b@example.com>"),
            ("Flags", "milter"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        body: Bytes::from_static(b"Subject: hi\r\n\r\nhello\r\n"),
    }
}

fn requests_total(reg: &PrometheusHandle, upstream: &str, result: &str) -> u64 {
    let series = format!(
        "spam_milter_upstream_requests_total{{upstream=\"{upstream}\",result=\"{result}\"}}"
    );
    sample(reg, &series).map_or(0, |v| v as u64)
}

fn gauge(reg: &PrometheusHandle, name: &str) -> i64 {
    sample(reg, name).map_or(i64::MIN, |v| v as i64)
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_header_and_the_body_arrive_intact() {
    let s = rspamd_like().await;
    let (pool, reg) = pool(&config(&[&s.url]));
    let headers: Vec<(String, String)> = [
        ("From", "<sender@example.com>"),
        ("Rcpt", "<one@example.com>"),
        ("Rcpt", "<two@example.com>"),
        ("IP", "198.51.100.7"),
        ("Hostname", "mail.example.net"),
        ("Helo", "mail.example.net"),
        ("Queue-Id", "4Xyz12AbC"),
        ("Log-Tag", "4Xyz12AbC"),
        ("User", "alice@example.com"),
        ("MTA-Name", "mx.example.com"),
        ("MTA-Tag", "inbound"),
        ("TLS-Cipher", "TLS_AES_256_GCM_SHA384"),
        ("Settings-ID", "inbound"),
        (
            "Settings",
            r#"{"actions": {"reject": 20, "add header": 6}}"#,
        ),
        ("Flags", "milter"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut body = b"Received: from x\r\nSubject: test\r\n\r\nbody line\r\n".to_vec();
    body.extend(0u8..=255);
    let req = ScanRequest {
        headers: headers.clone(),
        body: Bytes::from(body.clone()),
    };
    let got = pool.scan(&req).await.unwrap();
    assert_eq!(got.reply.action.as_str(), "reject");
    assert_eq!(got.reply.score, 15.0);
    assert_eq!(got.reply.smtp_message.as_deref(), Some("Gtube pattern"));
    assert_eq!(&*got.upstream, s.url);
    assert_eq!(got.attempts, 1);
    assert!(got.rewritten_body.is_none());

    let scans = s.scans();
    assert_eq!(scans.len(), 1);
    let c = &scans[0];
    assert_eq!(c.method, "POST");
    assert_eq!(c.body, body, "body arrives byte for byte");
    assert_eq!(c.all("rcpt"), ["<one@example.com>", "<two@example.com>"]);
    for (k, v) in headers.iter().filter(|(k, _)| k != "Rcpt") {
        assert_eq!(c.one(k), Some(v.as_str()), "header {k}");
    }
    assert_eq!(c.one("content-encoding"), None, "compression is off");
    assert_eq!(c.one("password"), None);
    assert_eq!(requests_total(&reg, &s.url, "ok"), 1);
}

#[tokio::test]
async fn compressed_request_and_a_rspamd_3_4_zstd_reply() {
    // Rspamd < 3.11 compresses the reply when the request was, and says so only with
    // `Compression: zstd` (no Content-Encoding), which reqwest does not decode.
    let s = serve(|r| {
        assert_eq!(r.one("content-encoding"), Some("zstd"));
        let plain = zstd::decode_all(&r.body[..]).expect("request body is zstd");
        assert!(plain.starts_with(b"Subject: hi"));
        Answer::Http(
            200,
            vec![("Compression", "zstd".into())],
            zstd::encode_all(GTUBE.as_bytes(), 1).unwrap(),
        )
    })
    .await;
    let mut cfg = config(&[&s.url]);
    cfg.compression = true;
    cfg.password = Some("secret".into());
    let (pool, _) = pool(&cfg);
    let got = pool.scan(&request()).await.unwrap();
    assert_eq!(got.reply.action.as_str(), "reject");
    assert_eq!(s.scans()[0].one("password"), Some("secret"));
}

#[tokio::test]
async fn a_zstd_reply_that_does_not_decode_is_garbage() {
    let s = serve(|_| {
        let mut b = vec![0x28, 0xb5, 0x2f, 0xfd];
        b.extend_from_slice(b"definitely not a zstd frame");
        Answer::Http(200, vec![("Compression", "zstd".into())], b)
    })
    .await;
    let (pool, _) = pool(&config(&[&s.url]));
    let e = pool.scan(&request()).await.unwrap_err();
    assert!(matches!(e, ScanError::Garbage { .. }), "{e:?}");
    assert!(e.to_string().contains("zstd"), "{e}");
}

#[tokio::test]
async fn failover_from_a_closed_port_to_a_live_server() {
    let dead = closed_port().await;
    let live = rspamd_like().await;
    let (pool, reg) = pool(&config(&[&dead, &live.url]));
    let got = pool.scan(&request()).await.unwrap();
    assert_eq!(&*got.upstream, live.url);
    assert_eq!(got.attempts, 2);
    assert_eq!(requests_total(&reg, &dead, "error"), 1);
    assert_eq!(requests_total(&reg, &live.url, "ok"), 1);
    assert_eq!(
        sample(&reg, "spam_milter_upstream_failovers_total"),
        Some(1.0)
    );
}

#[tokio::test]
async fn every_upstream_failing_reports_the_last_error_and_the_attempts() {
    let dead = closed_port().await;
    let broken = serve(|_| Answer::Http(503, vec![], b"busy".to_vec())).await;
    let (pool, _) = pool(&config(&[&dead, &broken.url]));
    let e = pool.scan(&request()).await.unwrap_err();
    assert_eq!(
        e,
        ScanError::Status {
            upstream: broken.url.as_str().into(),
            attempts: 2,
            code: 503
        }
    );
    assert_eq!(e.label(), "http_status");
}

#[tokio::test]
async fn breaker_opens_skips_the_upstream_then_lets_one_trial_through() {
    let healed = Arc::new(AtomicBool::new(false));
    let h = healed.clone();
    let flaky = serve(move |_| {
        if h.load(Ordering::SeqCst) {
            ok_json(GTUBE)
        } else {
            Answer::Http(500, vec![], b"internal error".to_vec())
        }
    })
    .await;
    let live = rspamd_like().await;
    let mut cfg = config(&[&flaky.url, &live.url]);
    cfg.breaker_failures = 2;
    cfg.breaker_cooldown = Span::millis(400);
    let (pool, reg) = pool(&cfg);
    let conns = || flaky.accepted.load(Ordering::SeqCst);

    for n in 1..=2 {
        let got = pool.scan(&request()).await.unwrap();
        assert_eq!((&*got.upstream, got.attempts), (live.url.as_str(), 2));
        assert_eq!(conns(), n);
    }
    assert_eq!(pool.status()[0].breaker, BreakerState::Open);
    assert_eq!(pool.status()[0].consecutive_failures, 2);
    assert_eq!(gauge(&reg, "spam_milter_upstream_breakers_open"), 1);
    assert_eq!(gauge(&reg, "spam_milter_upstreams_healthy"), 1);

    // Open: not contacted at all.
    for _ in 0..3 {
        let got = pool.scan(&request()).await.unwrap();
        assert_eq!((&*got.upstream, got.attempts), (live.url.as_str(), 1));
    }
    assert_eq!(conns(), 2);

    // Cooldown over: half-open, one trial, which fails: open again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(pool.status()[0].breaker, BreakerState::HalfOpen);
    let got = pool.scan(&request()).await.unwrap();
    assert_eq!(got.attempts, 2);
    assert_eq!(conns(), 3);
    assert_eq!(pool.status()[0].breaker, BreakerState::Open);
    pool.scan(&request()).await.unwrap();
    assert_eq!(conns(), 3);

    // Healed: the next trial succeeds and closes the breaker.
    healed.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let got = pool.scan(&request()).await.unwrap();
    assert_eq!((&*got.upstream, got.attempts), (flaky.url.as_str(), 1));
    assert_eq!(pool.status()[0].breaker, BreakerState::Closed);
    assert_eq!(pool.status()[0].consecutive_failures, 0);
    assert_eq!(gauge(&reg, "spam_milter_upstream_breakers_open"), 0);
    assert_eq!(gauge(&reg, "spam_milter_upstreams_healthy"), 2);
}

#[tokio::test]
async fn all_breakers_open_is_unavailable_without_contacting_anyone() {
    let s = serve(|_| Answer::Http(500, vec![], vec![])).await;
    let mut cfg = config(&[&s.url]);
    cfg.breaker_failures = 1;
    cfg.breaker_cooldown = Span::secs(60);
    let (pool, _) = pool(&cfg);
    assert!(matches!(
        pool.scan(&request()).await,
        Err(ScanError::Status { code: 500, .. })
    ));
    let e = pool.scan(&request()).await.unwrap_err();
    assert_eq!(e, ScanError::Unavailable);
    assert_eq!((e.label(), e.attempts()), ("unavailable", 0));
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_hanging_server_is_abandoned_at_the_attempt_timeout() {
    let hang = serve(|_| Answer::Hang).await;
    let mut cfg = config(&[&hang.url]);
    cfg.attempt_timeout = Span::millis(200);
    cfg.scan_deadline = Span::millis(2000);
    let (pool, _) = pool(&cfg);
    let t = Instant::now();
    let e = pool.scan(&request()).await.unwrap_err();
    assert_eq!(
        e,
        ScanError::Timeout {
            upstream: hang.url.as_str().into(),
            attempts: 1
        }
    );
    assert_eq!(e.label(), "timeout");
    assert!(
        t.elapsed() < Duration::from_millis(200) + MARGIN,
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        pool.status()[0].consecutive_failures,
        1,
        "a timeout is a failure"
    );
}

#[tokio::test]
async fn the_scan_deadline_bounds_the_total_across_two_hanging_upstreams() {
    let a = serve(|_| Answer::Hang).await;
    let b = serve(|_| Answer::Hang).await;
    let mut cfg = config(&[&a.url, &b.url]);
    cfg.attempt_timeout = Span::millis(300);
    cfg.scan_deadline = Span::millis(450);
    let (pool, _) = pool(&cfg);
    let t = Instant::now();
    let e = pool.scan(&request()).await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(450) + MARGIN,
        "{:?}",
        t.elapsed()
    );
    assert!(matches!(e, ScanError::Deadline { .. }), "{e:?}");
    assert_eq!(e.label(), "deadline");
    // Normally the second attempt is the one cut short (a very slow machine may reach
    // the deadline before starting it).
    if e.attempts() == 2 {
        assert_eq!(e.upstream().map(|u| &**u), Some(b.url.as_str()));
        assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(
            pool.status()[1].consecutive_failures,
            0,
            "cut short by the deadline: not b's fault"
        );
    }
    assert_eq!(pool.status()[0].consecutive_failures, 1);
}

#[tokio::test]
async fn a_500_with_a_body_is_an_http_status_error() {
    let s = serve(|_| Answer::Http(500, vec![], b"Internal error: task timeout".to_vec())).await;
    let (pool, reg) = pool(&config(&[&s.url]));
    let e = pool.scan(&request()).await.unwrap_err();
    assert_eq!(
        e,
        ScanError::Status {
            upstream: s.url.as_str().into(),
            attempts: 1,
            code: 500
        }
    );
    assert_eq!(requests_total(&reg, &s.url, "error"), 1);
    assert_eq!(pool.status()[0].consecutive_failures, 1);
}

#[tokio::test]
async fn a_garbage_body_is_garbage_and_counts_against_the_upstream() {
    for body in ["<html>502 Bad Gateway</html>", r#"{"score": 1.0}"#, ""] {
        let s = serve(move |_| ok_json(body)).await;
        let (pool, _) = pool(&config(&[&s.url]));
        let e = pool.scan(&request()).await.unwrap_err();
        assert!(
            matches!(e, ScanError::Garbage { attempts: 1, .. }),
            "{body:?}: {e:?}"
        );
        assert_eq!(e.label(), "garbage");
        assert_eq!(pool.status()[0].consecutive_failures, 1);
    }
}

#[tokio::test]
async fn an_oversized_reply_is_refused() {
    let mut padded = GTUBE.trim_end().to_string();
    padded.push_str(&" ".repeat(10_000));
    let plain = serve(move |_| ok_json(&padded)).await;
    // A small zstd reply that decodes past the limit.
    let bomb = serve(|_| {
        let mut json = GTUBE.trim_end().as_bytes().to_vec();
        json.extend(std::iter::repeat_n(b' ', 1_000_000));
        Answer::Http(
            200,
            vec![("Compression", "zstd".into())],
            zstd::encode_all(&json[..], 3).unwrap(),
        )
    })
    .await;
    for s in [&plain, &bomb] {
        let mut cfg = config(&[&s.url]);
        cfg.max_reply_size = 4096;
        let (pool, _) = pool(&cfg);
        let e = pool.scan(&request()).await.unwrap_err();
        assert!(matches!(e, ScanError::TooLarge { max: 4096, .. }), "{e:?}");
        assert_eq!(e.label(), "too_large");
    }
}

#[tokio::test]
async fn message_offset_splits_off_the_rewritten_body() {
    let s = serve(|_| {
        let mut b = GTUBE.as_bytes().to_vec();
        let offset = b.len();
        b.extend_from_slice(b"new body\r\n");
        Answer::Http(200, vec![("Message-Offset", offset.to_string())], b)
    })
    .await;
    let (pool, _) = pool(&config(&[&s.url]));
    let got = pool.scan(&request()).await.unwrap();
    assert_eq!(got.reply.action.as_str(), "reject");
    assert_eq!(got.rewritten_body.as_deref(), Some(&b"new body\r\n"[..]));
}

#[tokio::test]
async fn health_checks_mark_a_dead_upstream_down_and_it_is_skipped() {
    // `a` would scan fine but fails its health check; `b` is healthy.
    let ping_ok = Arc::new(AtomicBool::new(false));
    let p = ping_ok.clone();
    let a = serve(move |r| {
        if r.path == "/ping" {
            if p.load(Ordering::SeqCst) {
                Answer::Http(200, vec![], b"pong\r\n".to_vec())
            } else {
                Answer::Http(503, vec![], b"no".to_vec())
            }
        } else {
            ok_json(GTUBE)
        }
    })
    .await;
    let b = rspamd_like().await;
    let (pool, reg) = pool(&config(&[&a.url, &b.url]));
    let health = pool.spawn_health_checks();

    wait_for("a marked down", || !pool.status()[0].healthy).await;
    let st = &pool.status()[0];
    assert!(
        st.health_error.as_deref().unwrap().contains("503"),
        "{st:?}"
    );
    assert!(pool.status()[1].healthy);
    assert_eq!(gauge(&reg, "spam_milter_upstreams_healthy"), 1);
    let got = pool.scan(&request()).await.unwrap();
    assert_eq!((&*got.upstream, got.attempts), (b.url.as_str(), 1));
    assert!(a.scans().is_empty(), "a is skipped while down");
    let checks = |u: &str, result: &str| {
        let series = format!(
            "spam_milter_upstream_health_checks_total{{upstream=\"{u}\",result=\"{result}\"}}"
        );
        sample(&reg, &series).unwrap_or(0.0)
    };
    assert!(checks(&a.url, "error") >= 1.0);
    assert!(checks(&b.url, "ok") >= 1.0);
    let ping = b.requests.lock().unwrap()[0].clone();
    assert_eq!((ping.method.as_str(), ping.path.as_str()), ("GET", "/ping"));

    // Back up: used again (failover order).
    ping_ok.store(true, Ordering::SeqCst);
    wait_for("a up again", || pool.status()[0].healthy).await;
    let got = pool.scan(&request()).await.unwrap();
    assert_eq!(&*got.upstream, a.url);
    health.abort();
}

#[tokio::test]
async fn health_checks_alone_never_stop_mail() {
    // Every upstream fails its health check but its breaker is closed: still tried.
    let s = serve(|r| {
        if r.path == "/ping" {
            Answer::Http(200, vec![], b"not pong".to_vec())
        } else {
            ok_json(GTUBE)
        }
    })
    .await;
    let (pool, _) = pool(&config(&[&s.url]));
    let health = pool.spawn_health_checks();
    wait_for("marked down", || !pool.status()[0].healthy).await;
    assert!(
        pool.status()[0]
            .health_error
            .as_deref()
            .unwrap()
            .contains("pong")
    );
    let got = pool.scan(&request()).await.unwrap();
    assert_eq!(&*got.upstream, s.url);
    health.abort();
}

#[tokio::test]
async fn a_successful_health_check_half_opens_an_open_breaker_early() {
    let s = serve(|r| {
        if r.path == "/ping" {
            Answer::Http(200, vec![], b"pong".to_vec())
        } else {
            Answer::Http(500, vec![], vec![])
        }
    })
    .await;
    let mut cfg = config(&[&s.url]);
    cfg.breaker_failures = 1;
    cfg.breaker_cooldown = Span::secs(60);
    let (pool, _) = pool(&cfg);
    pool.scan(&request()).await.unwrap_err();
    assert_eq!(pool.status()[0].breaker, BreakerState::Open);
    let health = pool.spawn_health_checks();
    wait_for("half-open", || {
        pool.status()[0].breaker == BreakerState::HalfOpen
    })
    .await;
    health.abort();
}

#[tokio::test]
async fn the_health_check_task_ends_with_the_pool() {
    let s = rspamd_like().await;
    let (pool, _) = pool(&config(&[&s.url]));
    let health = pool.spawn_health_checks();
    drop(pool);
    tokio::time::timeout(Duration::from_secs(5), health)
        .await
        .expect("task ended")
        .unwrap();
}

#[tokio::test]
async fn round_robin_alternates() {
    let a = rspamd_like().await;
    let b = rspamd_like().await;
    let mut cfg = config(&[&a.url, &b.url]);
    cfg.selection = Selection::RoundRobin;
    let (pool, _) = pool(&cfg);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(pool.scan(&request()).await.unwrap().upstream.to_string());
    }
    assert_eq!(seen, [&*a.url, &*b.url, &*a.url, &*b.url]);

    // Failover always starts at the first.
    cfg.selection = Selection::Failover;
    let (pool, _) = self::pool(&cfg);
    for _ in 0..2 {
        assert_eq!(&*pool.scan(&request()).await.unwrap().upstream, a.url);
    }
}

#[tokio::test]
async fn an_unsendable_request_contacts_no_upstream() {
    let s = rspamd_like().await;
    let (pool, _) = pool(&config(&[&s.url]));
    let mut req = request();
    req.headers.push(("Queue-Id".into(), "A".into()));
    req.headers.push(("Queue-ID".into(), "B".into()));
    let e = pool.scan(&req).await.unwrap_err();
    assert!(matches!(e, ScanError::Request { .. }), "{e:?}");
    assert_eq!(e.label(), "bad_request");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 0);
    assert_eq!(pool.status()[0].consecutive_failures, 0);
}

#[tokio::test]
async fn metrics_are_registered_at_start() {
    let (_pool, reg) = pool(&config(&["http://127.0.0.1:9", "http://127.0.0.1:10/"]));
    let text = reg.render();
    for name in [
        "spam_milter_upstream_requests_total",
        "spam_milter_upstream_failovers_total",
        "spam_milter_upstreams_healthy",
        "spam_milter_upstream_breakers_open",
        "spam_milter_upstream_health_checks_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} in\n{text}"
        );
    }
    assert!(
        text.contains(
            "spam_milter_upstream_requests_total{upstream=\"http://127.0.0.1:10/\",result=\"ok\"} 0"
        ),
        "{text}"
    );
    assert_eq!(gauge(&reg, "spam_milter_upstreams_healthy"), 2);
    assert_eq!(gauge(&reg, "spam_milter_upstream_breakers_open"), 0);
    // A bad URL is a PoolError, not a panic.
    let mut cfg = config(&["http://"]);
    assert!(Pool::new(&cfg).is_err());
    cfg.upstreams.clear();
    assert!(Pool::new(&cfg).is_err());
}
