//! Streaming verification end to end: a 50 MB message signed by dkimpy (an independent
//! signer), key in the daemon's loopback DNS stub, sent with milter-core's MTA-side client
//! straight to a running dkim-milter. It must verify (`dkim=pass`) while the daemon's
//! peak RSS grows by less than 8 MB, and the same message with one body byte changed
//! must not pass.

mod support;

use milter_core::client::{ClientConfig, Envelope, MilterClient};
use support::{AUTHSERV, Daemon, crlf, dkimpy_sign, genkey};

/// 50 MB body of ordinary text lines.
fn big_message() -> Vec<u8> {
    let mut m = crlf(
        b"From: Big Sender <big@sender.example>\nTo: you@dest.example\nSubject: fifty megabytes\n\
          Date: Wed, 02 Dec 2026 12:00:00 +0000\nMessage-ID: <big@sender.example>\n\n",
    );
    let mut i = 0u64;
    while m.len() < 50 * 1024 * 1024 {
        m.extend_from_slice(
            format!("line {i:09} of a large attachment-like body,  with  some   spacing\t \r\n")
                .as_bytes(),
        );
        i += 1;
    }
    m
}

/// (VmHWM, VmRSS) of `pid` in kB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn external() -> Envelope {
    Envelope {
        client_addr: Some("203.0.113.9".parse().unwrap()),
        client_name: Some("mail.sender.example".into()),
        helo: "mail.sender.example".into(),
        sender: "big@sender.example".into(),
        recipients: vec!["you@dest.example".into()],
        ..Envelope::default()
    }
}

/// The Authentication-Results value the daemon added.
async fn verify_via_milter(spec: &str, msg: &[u8]) -> String {
    let mut c = MilterClient::connect(spec, ClientConfig::default())
        .await
        .expect("connect to dkim-milter");
    let out = c.send(&external(), msg).await.expect("milter transaction");
    assert!(out.accepted(), "{out:?}");
    let ar = out
        .added_header("Authentication-Results")
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_else(|| panic!("no A-R added: {:?}", out.modifications));
    let _ = c.quit().await;
    ar
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_verify_in_bounded_memory() {
    let keys = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    // The sender's key lives outside our keys dir: the domain is not ours, we verify.
    let key = genkey(outside.path(), "sender.example", "big", 2048);
    let d = Daemon::start(keys.path(), "");
    let (name, record) = key.record();
    d.dns().add_txt(&name, &record).unwrap();
    let pid = d.pid().expect("daemon pid");

    let signed = dkimpy_sign(&big_message(), "sender.example", "big", &key.private_key);
    assert!(signed.len() > 50 * 1024 * 1024);

    // Warm up (runtime, resolver, key cache) with a small signed message first.
    let small = dkimpy_sign(
        &crlf(b"From: big@sender.example\nTo: you@dest.example\nSubject: small\n\nhi\n"),
        "sender.example",
        "big",
        &key.private_key,
    );
    let ar = verify_via_milter(&d.spec(), &small).await;
    assert!(
        ar.contains("dkim=pass header.i=@sender.example header.s=big"),
        "{ar}"
    );

    let (hwm_before, rss_before) = memory_kb(pid);
    let ar = verify_via_milter(&d.spec(), &signed).await;
    let (hwm_after, rss_after) = memory_kb(pid);
    assert!(
        ar.starts_with(&format!(" {AUTHSERV};"))
            && ar.contains("dkim=pass header.i=@sender.example header.s=big"),
        "{ar}"
    );

    // One body byte changed in the middle: the body hash no longer matches.
    let mut tampered = signed.clone();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'x' { b'y' } else { b'x' };
    let ar_bad = verify_via_milter(&d.spec(), &tampered).await;
    let (hwm_end, _) = memory_kb(pid);
    assert!(
        ar_bad.contains("dkim=neutral (body hash did not verify) header.i=@sender.example"),
        "{ar_bad}"
    );

    let growth_kb = hwm_end.saturating_sub(hwm_before);
    eprintln!(
        "VmHWM {hwm_before} -> {hwm_after} -> {hwm_end} kB, VmRSS {rss_before} -> {rss_after} kB"
    );
    assert!(
        growth_kb < 8 * 1024,
        "peak RSS grew by {growth_kb} kB verifying 2 x 50 MB"
    );
    let log = d.log();
    assert!(
        log.contains("verified: d=sender.example s=big pass"),
        "{log}"
    );
}
