//! Security properties through a real Postfix:
//! - mail that is neither authenticated nor from an internal host is never signed, whatever
//!   its headers claim (a From of a hosted domain, header fields named like Postfix's SASL
//!   macros, Received lines and Authentication-Results claiming an internal, authenticated
//!   origin);
//! - no secret reaches the log: at `trace` level, through a SASL submission that is signed,
//!   not one line holds the private key (base64, hex or as a byte list) or the SASL password.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use stack_tests::postfix::Postfix;
use stack_tests::swaks::submit;
use support::*;

/// The network the daemon trusts in the forged-claims test, and an address in it that the
/// forged headers name (the SMTP client really is 127.0.0.1, which is not in it).
const INTERNAL_NET: &str = "192.0.2.0/24";
const INTERNAL_IP: &str = "192.0.2.25";

#[test]
fn unauthenticated_mail_claiming_an_internal_authenticated_origin_is_not_signed() {
    let keys = tempfile::tempdir().unwrap();
    genkey(keys.path(), "example.test", "sec", 2048);
    let d = Daemon::start(
        keys.path(),
        &format!("internal-hosts = [\"{INTERNAL_NET}\"]\nlog-level = \"debug\""),
    );
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();
    let forged = format!(
        "Received: from laptop.example.test (laptop.example.test [{INTERNAL_IP}])\r\n\
         \t(Authenticated sender: user@example.test)\r\n\
         \tby mx.example.test (Postfix) with ESMTPSA id 4AbCdE1234;\r\n\
         \tFri, 28 Nov 2026 09:59:58 +0000 (UTC)\r\n\
         Received: from localhost (localhost [127.0.0.1]) by mx.example.test with ESMTP;\r\n\
         \tFri, 28 Nov 2026 09:59:57 +0000\r\n\
         {{auth_authen}}: user@example.test\r\n\
         {{auth_type}}: PLAIN\r\n\
         {{daemon_name}}: ORIGINATING\r\n\
         X-Auth-Authen: user@example.test\r\n\
         X-Originating-IP: [{INTERNAL_IP}]\r\n\
         Authentication-Results: {AUTHSERV}; auth=pass smtp.auth=user@example.test\r\n\
         Sender: user@example.test\r\n"
    );
    let mut msg = forged.into_bytes();
    msg.extend_from_slice(&message(
        "User <user@example.test>",
        "other@example.test",
        "forged origin",
    ));
    let r = smtp_send(
        pf.mx_port(),
        "user@example.test",
        "other@example.test",
        &msg,
    );
    assert_eq!(r.code, 250, "{r:?}");
    let got = pf
        .maildir("example.test", "other")
        .wait_for(1, T)
        .unwrap()
        .remove(0);
    assert!(
        header_values(&got, "DKIM-Signature").is_empty(),
        "signed although neither authenticated nor internal:\n{}",
        String::from_utf8_lossy(&got)
    );
    let line = &d.wait_lines("from=user@example.test: not signed (external client", 1)[0];
    assert!(line.contains("client=127.0.0.1"), "{line}");
    assert!(!d.log().contains(": signed d="), "{}", d.log());
}

/// Every way the key could show up in a log line: its PEM base64 (any 24-character piece)
/// and its DER bytes as lower or upper hex or as a Rust byte list (any 12-byte piece).
fn key_fingerprints(pem: &str) -> Vec<String> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = B64.decode(b64.as_bytes()).expect("PEM base64");
    let mut out: Vec<String> = (0..b64.len().saturating_sub(24))
        .step_by(12)
        .map(|i| b64[i..i + 24].to_string())
        .collect();
    // Past the ASN.1 header (the same in every RSA key): the key's own bytes.
    for chunk in der[32..].chunks_exact(12).step_by(4) {
        let hex: String = chunk.iter().map(|b| format!("{b:02x}")).collect();
        out.push(hex.to_uppercase());
        out.push(hex);
        out.push(
            chunk
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    out
}

#[test]
fn no_key_material_or_sasl_password_in_any_trace_log_line() {
    const PASSWORD: &str = "userpass";
    let keys = tempfile::tempdir().unwrap();
    let key = genkey(keys.path(), "example.test", "trace", 2048);
    let d = Daemon::start(keys.path(), "internal-hosts = []\nlog-level = \"trace\"");
    // The keys found at startup are read before the config's level applies; at a reload
    // (a domain added, SIGHUP) every key is read and parsed again at trace level.
    let added = genkey(keys.path(), "added.test", "added", 2048);
    d.signal(libc::SIGHUP);
    d.wait_lines("added.test: s=added rsa-2048 from", 1);
    let pf = Postfix::builder().submission(&d.spec()).start().unwrap();
    let run = submit(
        pf.submission_port(),
        ("user@example.test", PASSWORD),
        "user@example.test",
        "friend@remote.test",
        &["--header", "Subject: trace secrets", "--body", "Signed."],
    )
    .unwrap();
    assert_eq!(
        run.final_reply().map(|r| r.code),
        Some(250),
        "{}",
        run.transcript
    );
    let msgs = pf.sink().wait_for(1, T).unwrap();
    let msg = by_subject(&msgs, "trace secrets");
    assert_verifies(&msg, &[key.record()], 1);
    d.wait_lines(": signed d=example.test s=trace", 1);
    let log = d.log();
    // The level applied: the session was logged in detail, SASL macros included.
    assert!(log.contains("TRACE"), "no trace lines:\n{log}");
    assert!(log.contains("user@example.test"), "{log}");

    let mut secrets = Vec::new();
    for k in [&key, &added] {
        let pem = std::fs::read_to_string(&k.private_key).unwrap();
        secrets.extend(key_fingerprints(&pem));
    }
    assert!(secrets.len() > 200, "{}", secrets.len());
    secrets.push(PASSWORD.to_string());
    // AUTH PLAIN and AUTH LOGIN as the client sent them.
    for plain in [
        format!("\0user@example.test\0{PASSWORD}"),
        format!("user@example.test\0user@example.test\0{PASSWORD}"),
        PASSWORD.to_string(),
    ] {
        secrets.push(B64.encode(plain).trim_end_matches('=').to_string());
    }
    let leaks: Vec<String> = log
        .lines()
        .filter_map(|line| {
            secrets
                .iter()
                .find(|s| line.contains(s.as_str()))
                .map(|s| format!("{s:?} in: {line}"))
        })
        .collect();
    assert!(leaks.is_empty(), "secrets in the log: {leaks:#?}");
}
