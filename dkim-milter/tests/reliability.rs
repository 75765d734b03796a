//! Issue #12, reliability: the real `dkim-milter` against hostile peers (stack_tests::hostile),
//! key files broken while it runs, SIGTERM with messages in flight, and its socket path
//! taken. Every case also checks that a well-behaved MTA (milter-core's client) keeps
//! getting signed replies, and that the daemon's RSS stays bounded. See tests/RELIABILITY.md.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use milter_core::client::{ClientConfig, Envelope, MilterClient, Outcome};
use stack_tests::hostile::{self, RssSampler};
use support::*;

/// RSS growth allowed over the idle daemon while under attack.
const RSS_SLACK_KIB: u64 = 64 * 1024;

fn envelope() -> Envelope {
    Envelope {
        sender: "alice@example.test".into(),
        recipients: vec!["bob@remote.test".into()],
        ..Envelope::default()
    }
}

/// The DKIM-Signature's `d=` in `o`, if it signed.
fn signed_by(o: &Outcome) -> Option<String> {
    let h = o.added_header("DKIM-Signature")?;
    tag(&String::from_utf8_lossy(&h), "d")
}

/// Sends messages from `from` until `stop`, half on one kept connection and half on a
/// fresh connection each; every outcome (or error) in order.
async fn well_behaved(spec: String, from: &'static str, stop: Arc<AtomicBool>) -> Vec<String> {
    let msg = message(from, "bob@remote.test", "well behaved");
    let env = Envelope {
        sender: from.into(),
        ..envelope()
    };
    let mut kept = MilterClient::connect(&spec, ClientConfig::default())
        .await
        .expect("well-behaved connection");
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        out.push(match kept.send(&env, &msg).await {
            Ok(o) => signed_by(&o).unwrap_or_else(|| format!("unsigned: {:?}", o.verdict)),
            Err(e) => format!("error on kept connection: {e}"),
        });
        let fresh = async {
            let mut c = MilterClient::connect(&spec, ClientConfig::default()).await?;
            let o = c.send(&env, &msg).await?;
            c.quit().await?;
            Ok::<_, milter_core::Error>(o)
        };
        out.push(match fresh.await {
            Ok(o) => signed_by(&o).unwrap_or_else(|| format!("unsigned: {:?}", o.verdict)),
            Err(e) => format!("error on fresh connection: {e}"),
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_cut_off_while_well_behaved_mail_is_signed() {
    let keys = tempfile::tempdir().unwrap();
    let key = genkey(keys.path(), "example.test", "s1", 2048);
    let d = Daemon::start(keys.path(), "mode = \"sign\"\n");
    let pid = d.pid().unwrap();
    let addr = hostile::inet_addr(&d.spec()).unwrap();
    let idle = hostile::rss_kib(pid).unwrap();
    let rss = RssSampler::start(pid, Duration::from_millis(200));
    let stop = Arc::new(AtomicBool::new(false));
    let good = tokio::spawn(well_behaved(d.spec(), "alice@example.test", stop.clone()));

    // All attacks at once, as a hostile network would (stack_tests::hostile::run_battery).
    let t0 = Instant::now();
    let battery = hostile::run_battery(addr)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("battery: {battery:?}");
    // The never-reading peers were dropped above: their slots must come free, so the
    // well-behaved client runs a little longer, then stops.
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
    assert!(
        results.len() >= 40,
        "too few well-behaved messages: {results:?}"
    );
    let bad: Vec<_> = results.iter().filter(|r| *r != "example.test").collect();
    assert!(bad.is_empty(), "well-behaved traffic failed: {bad:?}");
    assert!(peak < idle + RSS_SLACK_KIB, "RSS {idle} -> {peak} KiB");

    // And the signatures are real: one more message, verified by dkimpy and opendkim -t.
    let mut c = MilterClient::connect(&d.spec(), ClientConfig::default())
        .await
        .unwrap();
    let msg = message("alice@example.test", "bob@remote.test", "after the attack");
    let o = c.send(&envelope(), &msg).await.unwrap();
    assert_verifies(&o.modified_bytes(), &[key.record()], 1);
}

/// Sends one message from `from` on a fresh connection.
async fn send_one(spec: &str, from: &str, subject: &str) -> (Outcome, Vec<u8>) {
    let msg = message(from, "bob@remote.test", subject);
    let env = Envelope {
        sender: from.into(),
        ..envelope()
    };
    let mut c = MilterClient::connect(spec, ClientConfig::default())
        .await
        .unwrap();
    let o = c.send(&env, &msg).await.unwrap();
    let _ = c.quit().await;
    let signed = o.modified_bytes();
    (o, signed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_deleted_corrupted_or_unreadable_while_running_only_that_domain_tempfails() {
    let keys = tempfile::tempdir().unwrap();
    let good = genkey(keys.path(), "good.test", "s1", 2048);
    let bad = genkey(keys.path(), "bad.test", "s1", 2048);
    // The daemon reads keys as `nobody`, so that chmod 000 is unreadable (root reads all).
    let (uid, gid) = stack_tests::sys::user_ids("nobody").unwrap();
    stack_tests::sys::chown_r(keys.path(), uid, gid).unwrap();
    let d = Daemon::start(
        keys.path(),
        "mode = \"sign\"\nuser = \"nobody\"\nempty-domain-dir = \"key-error\"\non-key-error = \"tempfail\"\n",
    );
    let spec = d.spec();
    let pem = std::fs::read(&bad.private_key).unwrap();
    let mut reloads = d.wait_lines("reloaded", 0).len();
    let mut wait_reload = |d: &Daemon| {
        reloads += 1;
        d.wait_lines("reloaded", reloads);
    };

    type Break = fn(&std::path::Path, &[u8]);
    let faults: [(&str, Break); 3] = [
        ("deleted", |p, _| std::fs::remove_file(p).unwrap()),
        ("corrupted", |p, pem| {
            let mut half = pem[..pem.len() / 2].to_vec();
            half.extend_from_slice(b"\n-----END PRIVATE KEY-----\n");
            std::fs::write(p, half).unwrap()
        }),
        ("chmod 000", |p, _| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o000)).unwrap()
        }),
    ];
    for (what, break_it) in faults {
        let (o, _) = send_one(&spec, "x@bad.test", &format!("before {what}")).await;
        assert_eq!(signed_by(&o).as_deref(), Some("bad.test"), "{what}: before");

        break_it(&bad.private_key, &pem);
        wait_reload(&d);
        let (o, _) = send_one(&spec, "x@bad.test", &format!("{what} key")).await;
        assert!(
            matches!(&o.verdict, milter_core::Verdict::Reply(r) if r.code() == 451),
            "{what}: bad.test follows on-key-error (tempfail): {:?}\n{}",
            o.verdict,
            d.log()
        );
        assert!(signed_by(&o).is_none(), "{what}: signed with a broken key");
        let (o, signed) = send_one(&spec, "y@good.test", &format!("good during {what}")).await;
        assert_eq!(signed_by(&o).as_deref(), Some("good.test"), "{what}");
        assert_verifies(&signed, &[good.record()], 1);

        // Repaired: signs again without a restart.
        std::fs::write(&bad.private_key, &pem).unwrap();
        std::fs::set_permissions(&bad.private_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&bad.private_key, Some(uid), Some(gid)).unwrap();
        wait_reload(&d);
        let (o, signed) = send_one(&spec, "x@bad.test", &format!("after {what}")).await;
        assert_eq!(
            signed_by(&o).as_deref(),
            Some("bad.test"),
            "{what}: repaired"
        );
        assert_verifies(&signed, &[bad.record()], 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_every_message_in_flight_gets_its_reply() {
    const N: usize = 100;
    let keys = tempfile::tempdir().unwrap();
    let key = genkey(keys.path(), "example.test", "s1", 2048);
    let mut d = Daemon::start(keys.path(), "mode = \"sign\"\n");
    let spec = d.spec();
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(
            MilterClient::connect(&spec, ClientConfig::default())
                .await
                .unwrap(),
        );
    }
    let gate = Arc::new(tokio::sync::Barrier::new(N + 1));
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let env = envelope();
            gate.wait().await;
            // In flight when SIGTERM lands, then one more on the same SMTP session.
            let first = c
                .send(
                    &env,
                    &message(
                        "alice@example.test",
                        "bob@remote.test",
                        &format!("in flight {i}"),
                    ),
                )
                .await;
            let second = c
                .send(
                    &env,
                    &message(
                        "alice@example.test",
                        "bob@remote.test",
                        &format!("after {i}"),
                    ),
                )
                .await;
            let _ = c.quit().await;
            (first, second)
        }));
    }
    gate.wait().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    d.signal(libc::SIGTERM);
    let mut signed = Vec::new();
    for t in tasks {
        let (a, b) = t.await.unwrap();
        for r in [a, b] {
            let o = r.unwrap_or_else(|e| panic!("a message lost its reply: {e}\n{}", d.log()));
            assert_eq!(signed_by(&o).as_deref(), Some("example.test"));
            signed.push(o.modified_bytes());
        }
    }
    assert_eq!(signed.len(), 2 * N);
    assert_verifies(&signed[0], &[key.record()], 1);
    assert_verifies(&signed[2 * N - 1], &[key.record()], 1);
    // New connections are refused while draining and the process exits once the
    // sessions quit, long before the 30 s drain deadline.
    let t0 = Instant::now();
    assert_eq!(d.wait_exit(Duration::from_secs(25)), Some(0), "{}", d.log());
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert!(
        MilterClient::connect(&spec, ClientConfig::default())
            .await
            .is_err(),
        "still accepting after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_file_is_replaced_and_a_live_daemons_socket_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    genkey(keys.path(), "example.test", "s1", 2048);
    let run = tempfile::tempdir().unwrap();
    let path = run.path().join("dkim.sock");
    // A crashed daemon's leftover: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let spec = format!("unix:{}", path.display());
    let body = format!(
        "keys-dir = {:?}\nauthserv-id = \"{AUTHSERV}\"\nallow-root = true\nmode = \"sign\"\n",
        keys.path().display().to_string()
    );
    let d = Daemon::start_with(Some(&spec), &body);
    assert!(d.log().contains("stale socket"), "{}", d.log());
    let (o, _) = send_one(&spec, "alice@example.test", "over the replaced socket").await;
    assert_eq!(signed_by(&o).as_deref(), Some("example.test"));

    // A second daemon on the same path: refused with a clear error, exits non-zero.
    let (code, log) = Daemon::run_to_exit(Some(&spec), &body);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("already in use"), "{log}");
    // The live daemon kept its socket and serves on.
    let (o, _) = send_one(&spec, "alice@example.test", "after the second daemon").await;
    assert_eq!(signed_by(&o).as_deref(), Some("example.test"));
}

/// RSS over a load run may grow this much from the first third's peak to the last's.
const RSS_FLAT: f64 = 1.15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_1000_concurrent_connections_no_error_and_flat_rss() {
    use stack_tests::load;
    let conns = load::env_knob("RELIABILITY_LOAD_CONNECTIONS", 1000) as usize;
    let secs = load::env_knob("RELIABILITY_LOAD_SECONDS", 60);
    assert!(
        load::raise_nofile() > 2 * conns as u64 + 100,
        "ulimit -n too low"
    );
    let keys = tempfile::tempdir().unwrap();
    let key = genkey(keys.path(), "example.test", "s1", 2048);
    // The daemon inherits the raised descriptor limit; max-connections is above `conns`.
    let d = Daemon::start(
        keys.path(),
        &format!("mode = \"sign\"\nmax-connections = {}\n", conns + 16),
    );
    let last = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = last.clone();
    let report = load::run(
        &d.spec(),
        d.pid().unwrap(),
        conns,
        Duration::from_secs(secs),
        Duration::from_secs(2),
        |i, n| {
            (
                envelope(),
                message(
                    "alice@example.test",
                    "bob@remote.test",
                    &format!("load {i} {n}"),
                ),
            )
        },
        move |_, _, o| match signed_by(o) {
            Some(d) if d == "example.test" => {
                *keep.lock().unwrap() = o.modified_bytes();
                Ok(())
            }
            other => Err(format!(
                "not signed by example.test: {other:?} {:?}",
                o.verdict
            )),
        },
    )
    .await;
    eprintln!(
        "dkim-milter load: {}\nRSS MiB every 5 s: {}",
        report.summary(),
        report.rss_curve()
    );
    assert_eq!(report.connections, conns, "{:?}", report.errors);
    assert_eq!(report.error_count, 0, "{:?}", report.errors);
    // Every connection is served all through the run (none starves).
    assert!(
        report.min_per_connection >= (secs / 2 / 10).max(1),
        "{}",
        report.summary()
    );
    let g = stack_tests::hostile::growth(&report.rss);
    assert!(g <= RSS_FLAT, "RSS grew: {}", report.summary());
    assert_verifies(&last.lock().unwrap(), &[key.record()], 1);
}

/// A session's SMTP failure, with its cause chain.
fn fail(session: usize, e: impl std::fmt::Display) -> String {
    format!("session {session}: {e:#}")
}

/// The load run through a real Postfix: concurrent SMTP sessions from an internal host,
/// several messages each, to a local mailbox; every message must arrive signed.
#[test]
fn load_through_postfix_every_message_arrives_signed() {
    use stack_tests::load::env_knob;
    let sessions = env_knob("RELIABILITY_POSTFIX_SESSIONS", 100) as usize;
    let per = env_knob("RELIABILITY_POSTFIX_MESSAGES", 5) as usize;
    let keys = tempfile::tempdir().unwrap();
    let key = genkey(keys.path(), "example.test", "s1", 2048);
    let d = Daemon::start(keys.path(), "mode = \"sign\"\n");
    let pf = stack_tests::postfix::Postfix::builder()
        .mx_milters(&d.spec())
        .main_cf(&format!("default_process_limit = {}", sessions + 20))
        .start()
        .unwrap();
    let port = pf.mx_port();
    let rss = RssSampler::start(d.pid().unwrap(), Duration::from_millis(500));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..sessions)
        .map(|s| {
            std::thread::spawn(move || -> Result<(), String> {
                let (mut c, _) =
                    stack_tests::smtp::SmtpClient::connect(port).map_err(|e| format!("{e:#}"))?;
                let e = |e| fail(s, e);
                c.expect("EHLO client.example.test", 250).map_err(e)?;
                for m in 0..per {
                    c.expect("MAIL FROM:<alice@example.test>", 250).map_err(e)?;
                    c.expect("RCPT TO:<user@example.test>", 250).map_err(e)?;
                    let msg = message(
                        "alice@example.test",
                        "bob@remote.test",
                        &format!("pf {s} {m}"),
                    );
                    let r = c.data(&msg).map_err(e)?;
                    if r.code != 250 {
                        return Err(format!("session {s} message {m}: {r:?}"));
                    }
                }
                let _ = c.cmd("QUIT");
                Ok(())
            })
        })
        .collect();
    let errors: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    assert!(
        errors.is_empty(),
        "{} failed sessions: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    let msgs: Vec<Vec<u8>> = pf
        .maildir("example.test", "user")
        .wait_for(sessions * per, Duration::from_secs(180))
        .unwrap()
        .iter()
        .map(|m| crlf(m))
        .collect();
    let samples = rss.stop();
    eprintln!(
        "postfix load: {sessions} sessions x {per} messages in {:?}, RSS peak {} KiB",
        t0.elapsed(),
        samples.iter().max().unwrap()
    );
    assert_eq!(msgs.len(), sessions * per);
    let unsigned: Vec<_> = msgs
        .iter()
        .filter(|m| header_values(m, "DKIM-Signature").len() != 1)
        .map(|m| header_values(m, "Subject"))
        .collect();
    assert!(unsigned.is_empty(), "not signed once: {unsigned:?}");
    for m in msgs.iter().step_by((msgs.len() / 5).max(1)) {
        assert_verifies(m, &[key.record()], 1);
    }
}
