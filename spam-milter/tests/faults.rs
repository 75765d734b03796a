//! When Rspamd is stopped, hangs or answers garbage, the configured policy is applied
//! within the scan deadline, through a real Postfix: fail-open (accepted with a header
//! saying it was not scanned) and fail-closed (451). With two upstreams and one dead,
//! every message is scanned by the live one and the breaker stops trying the dead one.
//! Rspamd killed (SIGKILL) with a scan in flight: the message gets the policy at once.
//!
//! Rspamd is real throughout; only "answers garbage" needs a stand-in (a loopback server
//! that speaks HTTP but not Rspamd), because a real Rspamd cannot be made to do it.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use stack_tests::postfix::Postfix;
use stack_tests::rspamd::Rspamd;
use stack_tests::swaks::submit;
use support::*;

fn clean(subject: &str) -> Vec<u8> {
    message(
        "Alice <alice@remote.test>",
        "user@example.test",
        subject,
        "",
        "A normal message.",
    )
}

/// A loopback HTTP server answering every request with 200 and a body that is not
/// Rspamd's JSON. Runs until the process ends.
fn garbage_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                // Read the head and the announced body, then answer.
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let body = "<html>502 upstream sent garbage</html>";
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// Rspamd stopped: inbound mail is accepted with the status header (fail-open, the
/// inbound default), outbound mail is tempfailed (fail-closed, the outbound default).
#[test]
fn rspamd_stopped_fail_open_inbound_fail_closed_outbound() {
    let rspamd = Rspamd::builder().start().unwrap();
    let d = Daemon::start(&format!(
        "[rspamd]\nupstreams = [\"http://127.0.0.1:{}\"]\nattempt-timeout = \"2s\"\nscan-deadline = \"4s\"\n",
        rspamd.normal_port()
    ));
    let pf = Postfix::builder()
        .mx_milters(&d.spec())
        .submission(&d.spec())
        .start()
        .unwrap();
    let r = smtp_send(
        pf.mx_port(),
        "alice@remote.test",
        "user@example.test",
        &clean("before stop"),
    );
    assert_eq!(r.code, 250, "{}", r.text);
    d.wait_lines("action=\"no action\"", 1);
    drop(rspamd);

    let r = smtp_send(
        pf.mx_port(),
        "alice@remote.test",
        "user@example.test",
        &clean("while stopped"),
    );
    assert_eq!(r.code, 250, "{}", r.text);
    let msgs = pf.maildir("example.test", "user").wait_for(2, T).unwrap();
    let m = by_subject(&msgs, "while stopped");
    let status = header_values(&m, "X-Spam-Milter");
    assert_eq!(status.len(), 1, "{}", String::from_utf8_lossy(&m));
    assert!(
        status[0].starts_with("unscanned (rspamd unavailable: "),
        "{status:?}"
    );
    let line = &d.wait_lines("rspamd unavailable", 1)[0];
    assert!(line.contains("accept by policy"), "{line}");

    let run = submit(
        pf.submission_port(),
        ("user@example.test", "userpass"),
        "user@example.test",
        "friend@remote.test",
        &["--header", "Subject: outbound while stopped"],
    )
    .unwrap();
    let last = run.final_reply().unwrap();
    assert_eq!(last.code, 451, "{}", run.transcript);
    assert!(
        last.text.starts_with("4.7.1 Message could not be scanned"),
        "{}",
        last.text
    );
    let line = &d.wait_lines("tempfail by policy", 1)[0];
    assert!(
        line.contains("daemon=ORIGINATING") && line.contains("policy=outbound:"),
        "{line}"
    );
}

/// Rspamd hanging (every process stopped with SIGSTOP: connections are accepted by the
/// kernel and never answered): the deadline ends the wait, and a listener configured
/// fail-closed tempfails.
#[test]
fn rspamd_hanging_the_deadline_applies_the_listeners_policy() {
    let rspamd = Rspamd::builder().start().unwrap();
    let d = Daemon::start(&format!(
        "[rspamd]\nupstreams = [\"http://127.0.0.1:{}\"]\nattempt-timeout = \"1s\"\nscan-deadline = \"2s\"\n\
         health-check-interval = \"1h\"\n\
         [listener.\"mx.example.test\"]\non-error = \"tempfail\"\n",
        rspamd.normal_port()
    ));
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();
    let r = smtp_send(
        pf.mx_port(),
        "alice@remote.test",
        "user@example.test",
        &clean("before hang"),
    );
    assert_eq!(r.code, 250, "{}", r.text);
    stack_tests::sys::signal(-(rspamd.pid() as i32), libc::SIGSTOP);
    let started = std::time::Instant::now();
    let r = smtp_send(
        pf.mx_port(),
        "alice@remote.test",
        "user@example.test",
        &clean("during hang"),
    );
    let waited = started.elapsed();
    stack_tests::sys::signal(-(rspamd.pid() as i32), libc::SIGCONT);
    assert_eq!(r.code, 451, "{}", r.text);
    assert!(
        r.text.starts_with("4.7.1 Message could not be scanned"),
        "{}",
        r.text
    );
    let line = &d.wait_lines("tempfail by policy", 1)[0];
    assert!(line.contains("policy=inbound@mx.example.test"), "{line}");
    assert!(
        line.contains("rspamd unavailable: deadline")
            || line.contains("rspamd unavailable: timeout"),
        "{line}"
    );
    // Not a timing assertion on the milter's speed: the SMTP client got its answer
    // because of the deadline, not Postfix's 300 s milter_content_timeout.
    assert!(waited < Duration::from_secs(120), "{waited:?}");
    // Rspamd serves again once it continues.
    let r = smtp_send(
        pf.mx_port(),
        "alice@remote.test",
        "user@example.test",
        &clean("after hang"),
    );
    assert_eq!(r.code, 250, "{}", r.text);
}

/// Garbage instead of Rspamd's JSON: fail-open by default, and fail-closed after a reload
/// switches the inbound policy (the old config served until then).
#[test]
fn garbage_answers_fail_open_then_closed_after_reload() {
    let port = garbage_server();
    let d = Daemon::start(&format!(
        "[rspamd]\nupstreams = [\"http://127.0.0.1:{port}\"]\nhealth-check-interval = \"1h\"\n"
    ));
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();
    let r = smtp_send(
        pf.mx_port(),
        "alice@remote.test",
        "user@example.test",
        &clean("garbage open"),
    );
    assert_eq!(r.code, 250, "{}", r.text);
    let m = pf.maildir("example.test", "user").wait_for(1, T).unwrap();
    assert_eq!(
        header_values(&m[0], "X-Spam-Milter"),
        ["unscanned (rspamd unavailable: garbage)"]
    );
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(
        d.config_path(),
        format!("{text}\n[inbound]\non-error = \"tempfail\"\n"),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    d.wait_lines("reloaded (", 1);
    let r = smtp_send(
        pf.mx_port(),
        "alice@remote.test",
        "user@example.test",
        &clean("garbage closed"),
    );
    assert_eq!(r.code, 451, "{}", r.text);
    d.wait_lines("rspamd unavailable: garbage: tempfail by policy", 1);
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn wait_metric(port: u16, series: &str, want: u64) -> String {
    let end = std::time::Instant::now() + T;
    loop {
        let text = scrape(port);
        if value(&text, series) >= want {
            return text;
        }
        assert!(
            std::time::Instant::now() < end,
            "{series} never reached {want}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn send_clean(pf: &Postfix, n: usize, tag: &str) {
    for i in 0..n {
        let r = smtp_send(
            pf.mx_port(),
            "alice@remote.test",
            "user@example.test",
            &clean(&format!("{tag} {i}")),
        );
        assert_eq!(r.code, 250, "{}", r.text);
    }
}

fn assert_all_scanned(pf: &Postfix, d: &Daemon, n: usize, live: &str) {
    let msgs = pf.maildir("example.test", "user").wait_for(n, T).unwrap();
    for m in &msgs {
        assert_eq!(
            header_values(m, "X-Spamd-Result").len(),
            1,
            "{}",
            String::from_utf8_lossy(m)
        );
        assert!(header_values(m, "X-Spam-Milter").is_empty());
    }
    let lines = d.wait_lines("action=\"no action\"", n);
    assert!(
        lines
            .iter()
            .all(|l| l.contains(&format!("upstream={live}"))),
        "{lines:#?}"
    );
}

/// Two upstreams, the first dead from the start: its health check fails, so every
/// message goes to the second without a single scan attempt at the dead one.
#[test]
fn a_dead_upstream_is_skipped_after_its_health_check() {
    let rspamd = Rspamd::builder().start().unwrap();
    let dead = format!(
        "http://127.0.0.1:{}",
        stack_tests::ports::free_port().unwrap()
    );
    let metrics = stack_tests::ports::free_port().unwrap();
    let live = format!("http://127.0.0.1:{}", rspamd.normal_port());
    let d = Daemon::start(&format!(
        "metrics-listen = \"127.0.0.1:{metrics}\"\n\
         [rspamd]\nupstreams = [\"{dead}\", \"{live}\"]\nhealth-check-interval = \"1h\"\n"
    ));
    wait_metric(
        metrics,
        &format!(
            "spam_milter_upstream_health_checks_total{{upstream=\"{dead}\",result=\"error\"}}"
        ),
        1,
    );
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();
    send_clean(&pf, 4, "skip dead");
    assert_all_scanned(&pf, &d, 4, &live);
    let text = scrape(metrics);
    let req = |u: &str, r: &str| {
        value(
            &text,
            &format!("spam_milter_upstream_requests_total{{upstream=\"{u}\",result=\"{r}\"}}"),
        )
    };
    assert_eq!(req(&dead, "error") + req(&dead, "ok"), 0, "{text}");
    assert_eq!(req(&live, "ok"), 4, "{text}");
    assert_eq!(value(&text, "spam_milter_upstreams_healthy"), 1, "{text}");
}

/// Two real Rspamds; the first dies after its health check said it was fine. The first
/// messages fail over to the second; after `breaker-failures` failures the breaker opens
/// and the dead one is not tried again, while every message is still scanned.
#[test]
fn failover_to_the_live_upstream_and_the_breaker_skips_the_dead_one() {
    let doomed = Rspamd::builder().start().unwrap();
    let rspamd = Rspamd::builder().start().unwrap();
    let dead = format!("http://127.0.0.1:{}", doomed.normal_port());
    let live = format!("http://127.0.0.1:{}", rspamd.normal_port());
    let metrics = stack_tests::ports::free_port().unwrap();
    let d = Daemon::start(&format!(
        "metrics-listen = \"127.0.0.1:{metrics}\"\n\
         [rspamd]\nupstreams = [\"{dead}\", \"{live}\"]\n\
         breaker-failures = 2\nbreaker-cooldown = \"1h\"\nhealth-check-interval = \"1h\"\n"
    ));
    wait_metric(
        metrics,
        &format!("spam_milter_upstream_health_checks_total{{upstream=\"{dead}\",result=\"ok\"}}"),
        1,
    );
    drop(doomed);
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();
    send_clean(&pf, 6, "failover");
    assert_all_scanned(&pf, &d, 6, &live);
    let text = scrape(metrics);
    let req = |u: &str, r: &str| {
        value(
            &text,
            &format!("spam_milter_upstream_requests_total{{upstream=\"{u}\",result=\"{r}\"}}"),
        )
    };
    assert_eq!(
        req(&dead, "error"),
        2,
        "the breaker opened after 2 failures:\n{text}"
    );
    assert_eq!(req(&live, "ok"), 6, "{text}");
    assert_eq!(
        value(&text, "spam_milter_upstream_failovers_total"),
        2,
        "{text}"
    );
    assert_eq!(
        value(&text, "spam_milter_upstream_breakers_open"),
        1,
        "{text}"
    );
    assert_eq!(
        value(&text, "spam_milter_messages_total{action=\"no_action\"}"),
        6,
        "{text}"
    );
}

/// Rspamd killed (SIGKILL, every process) while a scan request is in flight: the
/// connection breaks, spam-milter does not wait for its attempt timeout, and the message
/// gets the inbound policy (accepted, marked unscanned) instead of being lost.
#[test]
fn rspamd_killed_mid_scan_the_message_gets_the_policy() {
    let rspamd = Rspamd::builder().start().unwrap();
    let d = Daemon::start(&format!(
        "[rspamd]\nupstreams = [\"http://127.0.0.1:{}\"]\nattempt-timeout = \"60s\"\n\
         scan-deadline = \"120s\"\nhealth-check-interval = \"1h\"\n",
        rspamd.normal_port()
    ));
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();
    let mx = pf.mx_port();
    let r = smtp_send(
        mx,
        "alice@remote.test",
        "user@example.test",
        &clean("before kill"),
    );
    assert_eq!(r.code, 250, "{}", r.text);
    // Frozen first, so the request is surely written and unanswered when the kill lands
    // (the kernel accepts the connection for the stopped worker).
    let group = -(rspamd.pid() as i32);
    stack_tests::sys::signal(group, libc::SIGSTOP);
    let send = std::thread::spawn(move || {
        smtp_send(
            mx,
            "alice@remote.test",
            "user@example.test",
            &clean("killed mid-scan"),
        )
    });
    // Time for Postfix to pass the message and spam-milter to send it (seconds on an idle
    // loopback); the SMTP client still waiting shows the scan is pending.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!send.is_finished(), "the scan was not in flight");
    stack_tests::sys::signal(group, libc::SIGKILL);
    let r = send.join().unwrap();
    assert_eq!(r.code, 250, "{}", r.text);
    let line = &d.wait_lines("rspamd unavailable", 1)[0];
    assert!(line.contains("accept by policy"), "{line}");
    // Frozen, Rspamd cannot fail a request: one that had been waiting when it failed was
    // in flight when the kill landed, not started after it (order, not a speed bound).
    // The full line from the log (the one waited for may have been read half written).
    std::thread::sleep(Duration::from_millis(200));
    let log = d.log();
    let full = log
        .lines()
        .find(|l| l.contains("rspamd unavailable") && l.contains("latency="))
        .unwrap_or_else(|| panic!("{log}"));
    eprintln!("{full}");
    let latency = full
        .rsplit_once("latency=")
        .and_then(|(_, v)| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no latency: {full}"));
    let ms = match latency.strip_suffix("ms") {
        Some(ms) => ms.parse::<f64>().ok(),
        None => latency
            .strip_suffix('s')
            .and_then(|s| s.parse::<f64>().ok())
            .map(|s| s * 1e3),
    }
    .unwrap_or_else(|| panic!("latency {latency:?}: {full}"));
    assert!(ms >= 100.0, "scan started {latency} before failing: {full}");
    // The broken connection ended the wait, not the 60 s attempt timeout.
    assert!(
        !line.contains("timeout") && !line.contains("deadline"),
        "{line}"
    );
    let msgs = pf.maildir("example.test", "user").wait_for(2, T).unwrap();
    let m = by_subject(&msgs, "killed mid-scan");
    let status = header_values(&m, "X-Spam-Milter");
    assert_eq!(status.len(), 1, "{}", String::from_utf8_lossy(&m));
    assert!(
        status[0].starts_with("unscanned (rspamd unavailable: "),
        "{status:?}"
    );
}
