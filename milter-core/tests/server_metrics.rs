//! The server counts itself: connections by close reason, messages, verdicts, per-stage
//! rejections, protocol errors, timeouts and end-of-message latency, through the
//! `metrics` facade into a real Prometheus recorder (metrics-exporter-prometheus) made
//! current only while the server binds, as the crate docs say a program may do.

mod server_support;

use std::time::Duration;

use bytes::Bytes;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use milter_core::handler::{Context, EomActions, Milter};
use milter_core::metrics::{EOM_DURATION, LATENCY_BUCKETS};
use milter_core::server::{Server, Timeouts};
use milter_core::{Command, Envelope, Reply, Verdict};
use server_support::{Raw, start};

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
async fn wait_value(r: &PrometheusHandle, series: &str, want: f64) {
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
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(EOM_DURATION.into()),
            LATENCY_BUCKETS,
        )
        .expect("buckets")
        .build_recorder();
    let registry = recorder.handle();
    let timeouts = Timeouts {
        negotiation: Duration::from_millis(300),
        ..Timeouts::postfix()
    };
    // Current on this thread only: the server resolves its handles when `bind` is first
    // polled, which `start` does here; nothing else in the process sees this recorder.
    let (addr, shutdown, task) = {
        let _current = metrics::set_default_local_recorder(&recorder);
        start(
            Server::builder()
                .timeouts(timeouts)
                .shutdown_deadline(Duration::from_millis(300)),
            Judge::default,
        )
        .await
    };

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
    let text = &registry.render();
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
    assert!(
        text.contains(
            "# HELP milter_connections_closed_total Milter connections closed, by reason.\n"
        ),
        "{text}"
    );

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
}
