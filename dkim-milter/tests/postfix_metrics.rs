//! `metrics-listen` behind a real Postfix: a signed submission, an unsigned inbound
//! message and a SIGHUP reload move exactly the counters they should, scraped over raw
//! HTTP from the running daemon.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use stack_tests::postfix::Postfix;
use stack_tests::swaks::submit;
use support::*;

/// `GET path` on 127.0.0.1:`port`; (status line, body).
fn get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response, then close");
    let (head, body) = out.split_once("\r\n\r\n").expect("head and body");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `series` reads `want` (the milter counts just after answering).
fn wait_value(port: u16, series: &str, want: u64) -> String {
    let end = Instant::now() + T;
    loop {
        let (_, text) = get(port, "/metrics");
        if value(&text, series) == Some(want) {
            return text;
        }
        assert!(
            Instant::now() < end,
            "{series} never reached {want}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scrape_counts_signed_unsigned_and_reloads() {
    let keys = tempfile::tempdir().unwrap();
    let key = genkey(keys.path(), "example.test", "m2026", 2048);
    genkey(keys.path(), "broken.test", "b", 2048);
    std::fs::write(keys.path().join("broken.test/b.private"), "not a key").unwrap();
    let port = stack_tests::ports::free_port().unwrap();
    // No internal hosts: the submission is signed because it authenticated; the MX
    // client is a stranger, so its message is verified, not signed.
    let d = Daemon::start(
        keys.path(),
        &format!("internal-hosts = []\nmetrics-listen = \"127.0.0.1:{port}\""),
    );
    let pf = Postfix::builder()
        .submission(&d.spec())
        .mx_milters(&d.spec())
        .start()
        .unwrap();

    let (status, text) = get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(value(&text, "dkim_milter_keys_loaded"), Some(1), "{text}");
    assert_eq!(
        value(&text, "dkim_milter_broken_key_domains"),
        Some(1),
        "{text}"
    );
    assert_eq!(get(port, "/").0, "HTTP/1.1 404 Not Found");

    let run = submit(
        pf.submission_port(),
        ("user@example.test", "userpass"),
        "user@example.test",
        "friend@remote.test",
        &["--header", "Subject: metrics submission"],
    )
    .unwrap();
    assert_eq!(
        run.final_reply().map(|r| r.code),
        Some(250),
        "{}",
        run.transcript
    );
    let msg = by_subject(&pf.sink().wait_for(1, T).unwrap(), "metrics submission");
    assert_verifies(&msg, &[key.record()], 1);

    let r = smtp_send(
        pf.mx_port(),
        "alice@remote.test",
        "user@example.test",
        &message("alice@remote.test", "user@example.test", "metrics inbound"),
    );
    assert_eq!(r.code, 250, "{r:?}");
    pf.maildir("example.test", "user").wait_for(1, T).unwrap();

    let text = wait_value(port, "dkim_milter_verify_results_total{result=\"none\"}", 1);
    for (series, want) in [
        ("dkim_milter_signed_total{algorithm=\"rsa-sha256\"}", 1),
        ("dkim_milter_signed_total{algorithm=\"ed25519-sha256\"}", 0),
        ("dkim_milter_not_signed_total{reason=\"external\"}", 1),
        ("dkim_milter_not_signed_total{reason=\"no_key\"}", 0),
        ("dkim_milter_not_signed_total{reason=\"key_error\"}", 0),
        ("dkim_milter_signing_errors_total", 0),
        ("dkim_milter_verify_results_total{result=\"pass\"}", 0),
        ("dkim_milter_reloads_total{result=\"ok\"}", 0),
        // The server's own counters, in the same scrape.
        ("milter_messages_total", 2),
        ("milter_verdicts_total{verdict=\"continue\"}", 2),
        ("milter_eom_duration_seconds_count", 2),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
    }
    // Exported as a Prometheus histogram with buckets, not a summary.
    assert!(
        text.contains("# TYPE milter_eom_duration_seconds histogram\n"),
        "{text}"
    );
    assert_eq!(
        value(&text, "milter_eom_duration_seconds_bucket{le=\"+Inf\"}"),
        Some(2),
        "{text}"
    );

    // SIGHUP with nothing changed: one successful reload; the key gauges stay.
    d.signal(libc::SIGHUP);
    d.wait_lines("reloaded (SIGHUP)", 1);
    let text = wait_value(port, "dkim_milter_reloads_total{result=\"ok\"}", 1);
    assert_eq!(
        value(&text, "dkim_milter_reloads_total{result=\"failed\"}"),
        Some(0),
        "{text}"
    );
    assert_eq!(value(&text, "dkim_milter_keys_loaded"), Some(1), "{text}");
    assert_eq!(
        value(&text, "dkim_milter_broken_key_domains"),
        Some(1),
        "{text}"
    );
}
