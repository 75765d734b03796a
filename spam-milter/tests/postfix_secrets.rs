//! No secret reaches the log: spam-milter at `trace` level, behind a real Postfix, scanning a
//! SASL submission through a real Rspamd with a controller password configured; not one
//! log line holds the SASL password (as typed or as the client's AUTH PLAIN/LOGIN base64)
//! or the Rspamd password.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use stack_tests::postfix::Postfix;
use stack_tests::rspamd::Rspamd;
use stack_tests::swaks::submit;
use support::*;

/// `data` in base64 as coreutils' `base64` writes it (spam-milter has no base64 crate).
fn base64(data: &str) -> String {
    let mut child = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("base64");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("base64 output");
    String::from_utf8(out.stdout).expect("ASCII")
}

#[test]
fn no_sasl_or_rspamd_password_in_any_trace_log_line() {
    const PASSWORD: &str = "userpass";
    const RSPAMD_PASSWORD: &str = "rspamd-Controller-Secret-7f3a";
    let rspamd = Rspamd::builder().start().unwrap();
    let d = Daemon::start(&format!(
        "log-level = \"trace\"\n[rspamd]\nupstreams = [\"http://127.0.0.1:{}\"]\npassword = \"{RSPAMD_PASSWORD}\"\n",
        rspamd.normal_port()
    ));
    let pf = Postfix::builder().submission(&d.spec()).start().unwrap();
    let run = submit(
        pf.submission_port(),
        ("user@example.test", PASSWORD),
        "user@example.test",
        "friend@remote.test",
        &["--header", "Subject: trace secrets", "--body", "Hello."],
    )
    .unwrap();
    assert_eq!(
        run.final_reply().map(|r| r.code),
        Some(250),
        "{}",
        run.transcript
    );
    pf.sink().wait_for(1, T).unwrap();
    // Scanned as the SASL user's outbound mail, with the session logged in detail.
    d.wait_lines("policy=outbound:", 1);
    let log = d.log();
    assert!(log.contains("TRACE"), "no trace lines:\n{log}");
    assert!(log.contains("user@example.test"), "{log}");

    let mut secrets = vec![PASSWORD.to_string(), RSPAMD_PASSWORD.to_string()];
    for plain in [
        format!("\0user@example.test\0{PASSWORD}"),
        format!("user@example.test\0user@example.test\0{PASSWORD}"),
        PASSWORD.to_string(),
        RSPAMD_PASSWORD.to_string(),
    ] {
        secrets.push(base64(&plain).trim_end_matches('=').to_string());
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
