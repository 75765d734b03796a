//! Local submissions through a real Sendmail 8.17 (`sendmail -bs`), which tells the milter
//! no client address at all (socket family unknown), as PHP `mail()` on a Sendmail host
//! does. OpenDKIM takes that as 127.0.0.1 and signs; dkim-milter must too, by default, and
//! not when `unknown-client = "external"`. Signatures are checked by dkimpy and
//! `opendkim -t`.

mod support;

use stack_tests::sendmail::Sendmail;
use stack_tests::sink::Sink;
use support::*;

/// `inet:127.0.0.1:PORT` (our spec) as Sendmail's `inet:PORT@127.0.0.1`.
fn sendmail_spec(d: &Daemon) -> String {
    let spec = d.spec();
    let port = spec.rsplit(':').next().expect("inet spec with a port");
    format!("inet:{port}@127.0.0.1")
}

/// Submits one message with `sendmail -bs` through `d`; the message the sink received.
fn submit_through_sendmail(d: &Daemon, subject: &str) -> Vec<u8> {
    let sink = Sink::start().unwrap();
    let sm = Sendmail::new(&sendmail_spec(d), sink.port()).unwrap_or_else(|e| panic!("{e:#}"));
    let msg = message("www-data@example.com", "friend@remote.test", subject);
    let reply = sm
        .submit_bs("www-data@example.com", "friend@remote.test", &msg)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(reply.starts_with("250"), "{reply}");
    let msgs = sink.wait_for(1, T).unwrap();
    by_subject(&msgs, subject)
}

#[test]
fn sendmail_bs_submission_is_signed_and_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let key = genkey(keys.path(), "example.com", "local2026", 2048);
    // The defaults: unknown-client = "loopback", internal-hosts holds 127.0.0.0/8.
    let d = Daemon::start(keys.path(), "");
    let msg = submit_through_sendmail(&d, "sendmail local submission");
    // Signed by us, on top, over what Sendmail relays (its own Date/Message-Id kept).
    let first = String::from_utf8_lossy(&msg)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(first.starts_with("DKIM-Signature:"), "{first}");
    let sigs = header_values(&msg, "DKIM-Signature");
    assert_eq!(tag(&sigs[0], "d").as_deref(), Some("example.com"));
    assert_eq!(tag(&sigs[0], "s").as_deref(), Some("local2026"));
    assert_verifies(&msg, &[key.record()], 1);
    // The decision line says why: no client address, taken as local.
    let lines = d.wait_lines("signed", 1);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("local submission (no client address)")
                && l.contains("client=unknown")),
        "{}",
        d.log()
    );
}

#[test]
fn sendmail_bs_submission_is_not_signed_when_unknown_clients_are_external() {
    let keys = tempfile::tempdir().unwrap();
    genkey(keys.path(), "example.com", "local2026", 2048);
    let d = Daemon::start(keys.path(), "unknown-client = \"external\"");
    let msg = submit_through_sendmail(&d, "sendmail external submission");
    assert!(
        header_values(&msg, "DKIM-Signature").is_empty(),
        "{}",
        String::from_utf8_lossy(&msg)
    );
    let lines = d.wait_lines("not signed (external client", 1);
    assert!(lines[0].contains("client=unknown"), "{}", lines[0]);
}
