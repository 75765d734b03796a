//! Issue #12, reliability: the real `spam-milter`, in front of a real Rspamd, against
//! hostile peers (stack_tests::hostile) and under sustained load (stack_tests::load).
//! Well-behaved traffic alternates a clean message (accepted, scanned: no status header)
//! and GTUBE (rejected by Rspamd's verdict), so every reply proves a real scan.
//! Rspamd faults are in faults.rs. See tests/RELIABILITY.md.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use milter_core::client::{ClientConfig, Envelope, MilterClient, Outcome};
use stack_tests::hostile::{self, RssSampler};
use stack_tests::load;
use stack_tests::rspamd::Rspamd;
use support::*;

fn envelope() -> Envelope {
    Envelope {
        sender: "alice@remote.test".into(),
        recipients: vec!["user@example.test".into()],
        ..Envelope::default()
    }
}

/// Message `n`: GTUBE when `n` is odd, else clean.
fn nth(subject: &str, n: u64) -> Vec<u8> {
    let body = if n % 2 == 1 {
        GTUBE
    } else {
        "A normal message."
    };
    message(
        "Alice <alice@remote.test>",
        "user@example.test",
        subject,
        "",
        body,
    )
}

/// What message `n` must get: clean accepted unmarked, GTUBE rejected.
fn check(n: u64, o: &Outcome) -> Result<(), String> {
    if n % 2 == 1 {
        return if o.rejected() {
            Ok(())
        } else {
            Err(format!("GTUBE not rejected: {:?}", o.verdict))
        };
    }
    if !o.accepted() {
        return Err(format!("clean message not accepted: {:?}", o.verdict));
    }
    match o.added_header("X-Spam-Milter") {
        None => Ok(()),
        Some(v) => Err(format!(
            "clean message not scanned: {}",
            String::from_utf8_lossy(&v)
        )),
    }
}

fn start(rspamd: &Rspamd, extra: &str, rspamd_extra: &str) -> Daemon {
    Daemon::start(&format!(
        "{extra}\n[rspamd]\nupstreams = [\"http://127.0.0.1:{}\"]\n{rspamd_extra}\n",
        rspamd.normal_port()
    ))
}

async fn well_behaved(spec: String, stop: Arc<AtomicBool>) -> Vec<Result<(), String>> {
    let mut kept = MilterClient::connect(&spec, ClientConfig::default())
        .await
        .expect("well-behaved connection");
    let mut out = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        out.push(match kept.send(&envelope(), &nth("kept", n)).await {
            Ok(o) => check(n, &o),
            Err(e) => Err(format!("kept connection: {e}")),
        });
        n += 1;
        let fresh = async {
            let mut c = MilterClient::connect(&spec, ClientConfig::default()).await?;
            let o = c.send(&envelope(), &nth("fresh", n)).await?;
            c.quit().await?;
            Ok::<_, milter_core::Error>(o)
        };
        out.push(match fresh.await {
            Ok(o) => check(n, &o),
            Err(e) => Err(format!("fresh connection: {e}")),
        });
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_cut_off_while_well_behaved_mail_is_scanned() {
    let rspamd = Rspamd::builder().start().unwrap();
    let d = start(&rspamd, "", "");
    let pid = d.pid();
    let addr = hostile::inet_addr(&d.spec()).unwrap();
    let idle = hostile::rss_kib(pid).unwrap();
    let rss = RssSampler::start(pid, Duration::from_millis(200));
    let stop = Arc::new(AtomicBool::new(false));
    let good = tokio::spawn(well_behaved(d.spec(), stop.clone()));

    // All attacks at once, as a hostile network would (stack_tests::hostile::run_battery).
    let t0 = Instant::now();
    let battery = hostile::run_battery(addr)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("battery: {battery:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let results = good.await.unwrap();
    let samples = rss.stop();
    let peak = samples.iter().copied().max().unwrap();
    eprintln!(
        "attack {:?}: {} well-behaved messages, RSS idle {idle} KiB peak {peak} KiB over {} samples",
        t0.elapsed(),
        results.len(),
        samples.len()
    );
    assert!(results.len() >= 40, "too few well-behaved messages");
    let bad: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(bad.is_empty(), "well-behaved traffic failed: {bad:?}");
    assert!(peak < idle + 64 * 1024, "RSS {idle} -> {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_1000_concurrent_connections_no_error_and_flat_rss() {
    let conns = load::env_knob("RELIABILITY_LOAD_CONNECTIONS", 1000) as usize;
    let secs = load::env_knob("RELIABILITY_LOAD_SECONDS", 60);
    assert!(
        load::raise_nofile() > 2 * conns as u64 + 100,
        "ulimit -n too low"
    );
    let rspamd = Rspamd::builder().start().unwrap();
    // While the 1,000 connections ramp up, the hermetic Rspamd on two shared cores took
    // over the default 10 s attempt timeout for a few scans (13 of 3,242 in one run, all
    // first messages; spam-milter then failed open as configured). The run measures
    // spam-milter, so Rspamd gets time; see tests/RELIABILITY.md.
    let d = start(
        &rspamd,
        &format!("max-connections = {}", conns + 16),
        "attempt-timeout = \"60s\"\nscan-deadline = \"120s\"",
    );
    let report = load::run(
        &d.spec(),
        d.pid(),
        conns,
        Duration::from_secs(secs),
        // 1,000 connections at one message per 15 s each: ~65 messages/s, under what the
        // hermetic Rspamd scans on this 2-core machine (at 200/s it falls behind, scans
        // time out and spam-milter fails open, see tests/RELIABILITY.md).
        Duration::from_secs(15),
        |i, n| (envelope(), nth(&format!("load {i} {n}"), n)),
        |_, n, o| check(n, o),
    )
    .await;
    eprintln!(
        "spam-milter load: {}\nRSS MiB every 5 s: {}",
        report.summary(),
        report.rss_curve()
    );
    assert_eq!(report.connections, conns, "{:?}", report.errors);
    assert_eq!(report.error_count, 0, "{:?}", report.errors);
    // Every connection is served all through the run (none starves).
    assert!(
        report.min_per_connection >= (secs / 15 / 10).max(1),
        "{}",
        report.summary()
    );
    let g = hostile::growth(&report.rss);
    assert!(g <= 1.15, "RSS grew: {}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_file_is_replaced_and_a_live_daemons_socket_is_refused() {
    let rspamd = Rspamd::builder().start().unwrap();
    let run = tempfile::tempdir().unwrap();
    let path = run.path().join("spam.sock");
    // A crashed daemon's leftover: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let spec = format!("unix:{}", path.display());
    let body = format!(
        "allow-root = true\n[rspamd]\nupstreams = [\"http://127.0.0.1:{}\"]\n",
        rspamd.normal_port()
    );
    let d = Daemon::start_on(tempfile::tempdir().unwrap(), &spec, &body);
    assert!(d.log().contains("stale socket"), "{}", d.log());
    let mut c = MilterClient::connect(&spec, ClientConfig::default())
        .await
        .expect("connect over the replaced socket");
    for n in 0..2 {
        let o = c
            .send(&envelope(), &nth("replaced socket", n))
            .await
            .unwrap();
        check(n, &o).unwrap();
    }

    // A second daemon on the same path: refused with a clear error, exits non-zero.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spam.toml");
    std::fs::write(&config, format!("socket = {spec:?}\n{body}")).unwrap();
    let (code, log) = Daemon::run_config_to_exit(&config);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("already in use"), "{log}");
    // The live daemon kept its socket and serves on, on the open connection and a new one.
    let o = c
        .send(&envelope(), &nth("after the second daemon", 1))
        .await
        .unwrap();
    check(1, &o).unwrap();
    let mut c2 = MilterClient::connect(&spec, ClientConfig::default())
        .await
        .expect("connect after the second daemon");
    let o = c2
        .send(&envelope(), &nth("new connection", 0))
        .await
        .unwrap();
    check(0, &o).unwrap();
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_on_reload_is_refused_and_the_previous_one_keeps_serving() {
    let rspamd = Rspamd::builder().start().unwrap();
    let d = start(&rspamd, "", "");
    let good = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(d.config_path(), format!("{good}\nthis line is not TOML\n")).unwrap();
    d.signal(libc::SIGHUP);
    let line = &d.wait_lines("refused, previous configuration keeps serving", 1)[0];
    assert!(line.contains("spam.toml"), "names the file: {line}");
    let mut c = MilterClient::connect(&d.spec(), ClientConfig::default())
        .await
        .unwrap();
    for n in 0..2 {
        let o = c
            .send(&envelope(), &nth("after broken reload", n))
            .await
            .unwrap();
        check(n, &o).unwrap();
    }
}

/// A session's SMTP failure, with its cause chain.
fn fail(session: usize, e: impl std::fmt::Display) -> String {
    format!("session {session}: {e:#}")
}

/// What message `k` of the Postfix load is: every tenth from 3 GTUBE (rejected), every
/// tenth from 7 Rspamd's add-header pattern (delivered with `X-Spam: Yes`), else clean.
fn postfix_kind(k: usize) -> &'static str {
    match k % 10 {
        3 => "gtube",
        7 => "yjs",
        _ => "clean",
    }
}

/// The load run through a real Postfix and a real Rspamd: concurrent SMTP sessions, several
/// messages each, and every message accounted for by its SMTP reply and the mailbox:
/// delivered with spam-milter's verdict headers, rejected with Rspamd's reason, or
/// tempfailed by the inbound policy (`on-error = "tempfail"`); none lost.
#[test]
fn load_through_postfix_every_message_is_accounted_for() {
    let sessions = load::env_knob("RELIABILITY_POSTFIX_SESSIONS", 100) as usize;
    let per = load::env_knob("RELIABILITY_POSTFIX_MESSAGES", 5) as usize;
    let rspamd = Rspamd::builder().start().unwrap();
    let d = start(
        &rspamd,
        "[inbound]\non-error = \"tempfail\"",
        "[actions]\nscore-header = \"X-Spam-Score\"",
    );
    let pf = stack_tests::postfix::Postfix::builder()
        .mx_milters(&d.spec())
        .main_cf(&format!("default_process_limit = {}", sessions + 20))
        .start()
        .unwrap();
    let port = pf.mx_port();
    let rss = RssSampler::start(d.pid(), Duration::from_millis(500));
    let t0 = Instant::now();
    // Each session: (message number, end-of-data reply code, its text) for every message.
    type Replies = Vec<(usize, u16, String)>;
    let threads: Vec<_> = (0..sessions)
        .map(|s| {
            std::thread::spawn(move || -> Result<Replies, String> {
                let (mut c, _) = stack_tests::smtp::SmtpClient::connect(port)
                    .map_err(|e| format!("session {s}: {e:#}"))?;
                let fail = |e| fail(s, e);
                c.expect("EHLO client.remote.test", 250).map_err(fail)?;
                let mut out = Vec::new();
                for m in 0..per {
                    let k = s * per + m;
                    c.expect("MAIL FROM:<alice@remote.test>", 250)
                        .map_err(fail)?;
                    c.expect("RCPT TO:<user@example.test>", 250).map_err(fail)?;
                    let body = match postfix_kind(k) {
                        "gtube" => GTUBE,
                        "yjs" => YJS,
                        _ => "A normal message about the weekly meeting.",
                    };
                    let msg = message(
                        "Alice <alice@remote.test>",
                        "user@example.test",
                        &format!("pfload {k} {}", postfix_kind(k)),
                        "",
                        body,
                    );
                    let r = c.data(&msg).map_err(fail)?;
                    out.push((k, r.code, r.text));
                }
                let _ = c.cmd("QUIT");
                Ok(out)
            })
        })
        .collect();
    let mut replies = Vec::new();
    let mut errors = Vec::new();
    for t in threads {
        match t.join().unwrap() {
            Ok(r) => replies.extend(r),
            Err(e) => errors.push(e),
        }
    }
    assert!(
        errors.is_empty(),
        "{} failed sessions: {errors:?}",
        errors.len()
    );
    assert_eq!(replies.len(), sessions * per, "a reply per message");
    let (mut delivered, mut rejected, mut tempfailed) = (Vec::new(), 0, 0);
    for (k, code, text) in &replies {
        match (postfix_kind(*k), code) {
            (_, 451) if text.starts_with("4.7.1 Message could not be scanned") => tempfailed += 1,
            ("gtube", 554) if text == "5.7.1 Gtube pattern" => rejected += 1,
            (kind, 250) if kind != "gtube" => delivered.push(*k),
            (kind, _) => panic!("message {k} ({kind}): {code} {text}\n{}", d.log()),
        }
    }
    let msgs = pf
        .maildir("example.test", "user")
        .wait_for(delivered.len(), Duration::from_secs(180))
        .unwrap();
    let samples = rss.stop();
    eprintln!(
        "spam-milter postfix load: {sessions} sessions x {per} messages in {:?}: {} delivered, \
         {rejected} rejected (GTUBE), {tempfailed} tempfailed by policy; RSS peak {} KiB",
        t0.elapsed(),
        delivered.len(),
        samples.iter().max().unwrap()
    );
    assert_eq!(
        msgs.len(),
        delivered.len(),
        "delivered = accepted, none lost"
    );
    assert_eq!(
        rejected + tempfailed + delivered.len(),
        sessions * per,
        "every message accounted for"
    );
    assert!(rejected > 0, "no GTUBE rejected: {tempfailed} tempfailed");
    for k in delivered {
        let m = by_subject(&msgs, &format!("pfload {k} "));
        let score = header_values(&m, "X-Spam-Score");
        assert_eq!(score.len(), 1, "message {k} not scanned once: {score:?}");
        assert!(
            header_values(&m, "X-Spam-Milter").is_empty(),
            "message {k}: {:?}",
            header_values(&m, "X-Spam-Milter")
        );
        let want: &[&str] = if postfix_kind(k) == "yjs" {
            &["Yes"]
        } else {
            &[]
        };
        assert_eq!(header_values(&m, "X-Spam"), want, "message {k}");
    }
}
