//! The server counts itself: connections by close reason, messages, verdicts, per-stage
//! rejections, protocol errors, timeouts and end-of-message latency; and the HTTP
//! endpoint serves that text to a raw TCP scrape, 404s the rest and refuses floods.

mod server_support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use milter_core::handler::{Context, EomActions, Milter};
use milter_core::metrics::Registry;
use milter_core::metrics::http::{MAX_REQUEST_BYTES, MetricsServer};
use milter_core::server::{Server, ShutdownHandle, Timeouts};
use milter_core::{Command, Envelope, Reply, Verdict};
use server_support::{Raw, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Refuses MAIL from `blocked@`, answers 550 at end of message for `spam@`, panics at end
/// of message for `panic@`, accepts the rest.
#[derive(Default)]
struct Judge {
    from: String,
}

impl Milter for Judge {
    async fn mail(&mut self, _ctx: &Context<'_>, from: &Envelope) -> Verdict {
        self.from = from.address_str().to_owned();
        if self.from.starts_with("blocked@") {
            return Verdict::Reject;
        }
        Verdict::Continue
    }

    async fn eom(&mut self, _ctx: &Context<'_>, _actions: &mut EomActions) -> Verdict {
        if self.from.starts_with("panic@") {
            panic!("handler bug on purpose");
        }
        if self.from.starts_with("spam@") {
            return Verdict::reply(550, "5.7.1", "spam");
        }
        Verdict::Continue
    }
}

/// GET `path` over a raw TCP connection; the whole response (the server closes).
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("response and close within 5 s")
        .expect("read");
    String::from_utf8(out).expect("utf-8")
}

/// The value of the sample line `series` (name with labels), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

/// Waits until `series` reads `want` in the registry (connection ends are recorded just
/// after the socket closes).
async fn wait_value(r: &Registry, series: &str, want: f64) {
    for _ in 0..250 {
        if value(&r.render(), series) == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{series} never reached {want}:\n{}", r.render());
}

fn mail(from: &str) -> Command {
    Command::Mail(Envelope {
        address: Bytes::from(format!("<{from}>")),
        args: vec![],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_counts_verdicts_rejections_errors_and_close_reasons_exactly() {
    let registry = Registry::new();
    let timeouts = Timeouts {
        negotiation: Duration::from_millis(300),
        ..Timeouts::postfix()
    };
    let (addr, shutdown, task) = start(
        Server::builder()
            .metrics(registry.clone())
            .timeouts(timeouts)
            .shutdown_deadline(Duration::from_millis(300)),
        Judge::default,
    )
    .await;
    let endpoint = MetricsServer::bind("127.0.0.1:0", registry.clone())
        .await
        .expect("bind metrics");
    let http = endpoint.local_addr();
    let http_stop = ShutdownHandle::new();
    tokio::spawn(endpoint.serve(http_stop.clone()));

    // One connection: accepted, rejected at end of message (550), refused at MAIL, quit.
    let mut a = Raw::connect(addr).await;
    a.handshake().await;
    assert_eq!(a.message("ok@example.org").await.1, Verdict::Continue);
    let (_, v) = a.message("spam@example.org").await;
    assert!(
        matches!(v, Verdict::Reply(ref r) if r.code() == 550),
        "{v:?}"
    );
    a.send(&mail("blocked@example.org")).await;
    assert_eq!(a.reply().await, Some(Reply::Verdict(Verdict::Reject)));
    a.send(&Command::Quit).await;
    a.expect_eof().await;

    // A frame announcing 4 GiB: a protocol error, nothing allocated.
    let mut b = Raw::connect(addr).await;
    b.send_raw(&[0xff, 0xff, 0xff, 0xff, b'O']).await;
    b.expect_eof().await;

    // Silent past the negotiation timeout.
    let mut c = Raw::connect(addr).await;
    c.expect_eof().await;

    // A handler that panics at end of message.
    let mut d = Raw::connect(addr).await;
    d.handshake().await;
    for cmd in [
        mail("panic@example.org"),
        Command::Rcpt(Envelope {
            address: Bytes::from_static(b"<r@example.org>"),
            args: vec![],
        }),
    ] {
        d.send(&cmd).await;
        assert_eq!(d.reply().await, Some(Reply::Verdict(Verdict::Continue)));
    }
    d.send(&Command::EndOfMessage(Bytes::new())).await;
    d.expect_eof().await;

    // The MTA just goes away.
    let mut e = Raw::connect(addr).await;
    e.handshake().await;
    drop(e);

    wait_value(&registry, "milter_connections_active", 0.0).await;
    let resp = get(http, "/metrics").await;
    let (head, text) = resp.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nContent-Length: {}", text.len())),
        "{head}"
    );
    let expect = [
        ("milter_connections_accepted_total", 5.0),
        ("milter_connections_active", 0.0),
        ("milter_connections_closed_total{reason=\"quit\"}", 1.0),
        ("milter_connections_closed_total{reason=\"eof\"}", 1.0),
        ("milter_connections_closed_total{reason=\"shutdown\"}", 0.0),
        (
            "milter_connections_closed_total{reason=\"protocol_error\"}",
            1.0,
        ),
        ("milter_connections_closed_total{reason=\"timeout\"}", 1.0),
        ("milter_connections_closed_total{reason=\"io_error\"}", 0.0),
        ("milter_connections_closed_total{reason=\"panic\"}", 1.0),
        ("milter_messages_total", 4.0),
        ("milter_verdicts_total{verdict=\"continue\"}", 1.0),
        ("milter_verdicts_total{verdict=\"reply-5xx\"}", 1.0),
        ("milter_verdicts_total{verdict=\"reject\"}", 0.0),
        ("milter_verdicts_total{verdict=\"tempfail\"}", 0.0),
        ("milter_rejections_total{stage=\"mail\"}", 1.0),
        ("milter_rejections_total{stage=\"eom\"}", 1.0),
        ("milter_rejections_total{stage=\"rcpt\"}", 0.0),
        (
            "milter_protocol_errors_total{kind=\"frame_too_large\"}",
            1.0,
        ),
        ("milter_timeouts_total{phase=\"negotiation\"}", 1.0),
        ("milter_timeouts_total{phase=\"content\"}", 0.0),
        // Two ends of message returned; the panicking one never did.
        ("milter_eom_duration_seconds_count", 2.0),
        ("milter_eom_duration_seconds_bucket{le=\"+Inf\"}", 2.0),
    ];
    for (series, want) in expect {
        assert_eq!(value(text, series), Some(want), "{series} in:\n{text}");
    }
    assert!(text.contains("# TYPE milter_eom_duration_seconds histogram\n"));

    // Shutdown with an idle connection open: served until the drain deadline, then
    // closed for that reason.
    let mut f = Raw::connect(addr).await;
    f.handshake().await;
    shutdown.shutdown();
    f.expect_eof().await;
    task.await.expect("server task");
    let text = registry.render();
    assert_eq!(
        value(
            &text,
            "milter_connections_closed_total{reason=\"shutdown\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, "milter_connections_active"), Some(0.0));
    http_stop.shutdown();
}

#[tokio::test]
async fn endpoint_answers_404_elsewhere_and_refuses_oversized_requests() {
    let registry = Registry::new();
    registry.counter("t_total", "T.").unwrap().add(7);
    let endpoint = MetricsServer::bind("127.0.0.1:0", registry.clone())
        .await
        .expect("bind")
        .read_timeout(Duration::from_millis(500));
    let addr = endpoint.local_addr();
    let stop = ShutdownHandle::new();
    let task = tokio::spawn(endpoint.serve(stop.clone()));

    let ok = get(addr, "/metrics").await;
    assert!(
        ok.ends_with("\r\n\r\n# HELP t_total T.\n# TYPE t_total counter\nt_total 7\n"),
        "{ok}"
    );
    for path in ["/", "/metrics/x", "/favicon.ico"] {
        let r = get(addr, path).await;
        assert!(r.starts_with("HTTP/1.0 404 Not Found\r\n"), "{path}: {r}");
    }

    // A head that never ends: refused once the bound is reached, connection closed.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let flood = vec![b'a'; MAX_REQUEST_BYTES + 1];
    let _ = s.write_all(&flood).await;
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("closed within 5 s");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.0 431 ") || (r.is_err() && out.is_empty()),
        "{r:?} {text}"
    );
    assert!(!text.contains("t_total"), "{text}");

    // A slow client: closed after the read timeout without metrics.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out))
        .await
        .expect("closed within 5 s")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.0 408 "), "{text}");

    // Still serving after all that.
    assert!(get(addr, "/metrics").await.contains("t_total 7\n"));
    stop.shutdown();
    task.await.expect("endpoint stops on shutdown");
}
