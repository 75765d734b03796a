//! Tests of the harness itself: real Postfix, Dovecot, OpenDKIM and Rspamd,
//! no milter of ours.

use stack_tests::dkim::{dkimpy_verify, opendkim_genkey, opendkim_test_verify};
use stack_tests::opendkim::OpenDkim;
use stack_tests::postfix::Postfix;
use stack_tests::rspamd::Rspamd;
use stack_tests::swaks::{submit, swaks};
use std::time::Duration;

type R = anyhow::Result<()>;

const T: Duration = Duration::from_secs(30);

fn server(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{tag}-{}-{nanos}", std::process::id())
}

#[test]
fn mx_port_delivers_to_maildir_and_refuses_relay() -> R {
    let pf = Postfix::builder().start()?;
    let subject = unique("smoke-mx");
    let run = swaks(&[
        "--server",
        &server(pf.mx_port()),
        "--ehlo",
        "client.remote.test",
        "--from",
        "alice@remote.test",
        "--to",
        "user@example.test",
        "--header",
        &format!("Subject: {subject}"),
    ])?;
    let reply = run.final_reply();
    assert_eq!(
        reply.as_ref().map(|r| r.code),
        Some(250),
        "{}",
        run.transcript
    );
    assert!(run.status.success(), "{}", run.transcript);

    let msgs = pf.maildir("example.test", "user").wait_for(1, T)?;
    let text = String::from_utf8_lossy(&msgs[0]);
    assert!(text.contains(&format!("Subject: {subject}")), "{text}");
    assert!(text.contains("Delivered-To: user@example.test"), "{text}");

    // The MX must not relay for the loopback "remote" client.
    let relay = swaks(&[
        "--server",
        &server(pf.mx_port()),
        "--from",
        "alice@remote.test",
        "--to",
        "someone@not-ours.test",
    ])?;
    let r = relay.final_reply().expect("a reply");
    assert_eq!(r.code, 550, "{}", relay.transcript);
    assert!(
        r.text.contains("Relay access denied"),
        "{}",
        relay.transcript
    );
    pf.wait_queue_empty(T)?;
    assert!(pf.sink().messages().is_empty());
    Ok(())
}

#[test]
fn submission_with_tls_and_auth_reaches_the_sink() -> R {
    let pf = Postfix::builder().submission("").start()?;
    let subject = unique("smoke-sub");
    let run = submit(
        pf.submission_port(),
        ("user@example.test", "userpass"),
        "user@example.test",
        "friend@remote.test",
        &["--header", &format!("Subject: {subject}")],
    )?;
    assert!(
        run.transcript
            .contains("235 2.7.0 Authentication successful"),
        "{}",
        run.transcript
    );
    assert_eq!(
        run.final_reply().map(|r| r.code),
        Some(250),
        "{}",
        run.transcript
    );
    let msgs = pf.sink().wait_for(1, T)?;
    assert_eq!(msgs[0].mail_from, "user@example.test");
    assert_eq!(msgs[0].rcpt_to, vec!["friend@remote.test".to_string()]);
    assert!(msgs[0].text().contains(&format!("Subject: {subject}")));
    // Postfix recorded the authenticated submission.
    pf.wait_for_log("sasl_username=user@example.test", T)?;

    // Without STARTTLS, AUTH is not even offered and mail is refused.
    let plain = swaks(&[
        "--server",
        &server(pf.submission_port()),
        "--from",
        "user@example.test",
        "--to",
        "friend@remote.test",
    ])?;
    assert!(!plain.status.success());
    assert!(
        plain.replies().iter().any(|r| r.code == 530),
        "{}",
        plain.transcript
    );
    Ok(())
}

#[test]
fn submission_refuses_a_bad_password() -> R {
    let pf = Postfix::builder().submission("").start()?;
    let run = submit(
        pf.submission_port(),
        ("user@example.test", "wrong-password"),
        "user@example.test",
        "friend@remote.test",
        &[],
    )?;
    assert!(!run.status.success(), "{}", run.transcript);
    let r = run.final_reply().expect("a reply");
    assert_eq!(r.code, 535, "{}", run.transcript);
    pf.wait_queue_empty(T)?;
    assert!(
        pf.sink().messages().is_empty(),
        "nothing may reach the sink"
    );
    Ok(())
}

#[test]
fn imap_reads_the_delivered_message() -> R {
    let pf = Postfix::builder().submission("").start()?;
    let subject = unique("smoke-imap");
    let run = swaks(&[
        "--server",
        &server(pf.mx_port()),
        "--from",
        "alice@remote.test",
        "--to",
        "user@example.test",
        "--header",
        &format!("Subject: {subject}"),
        "--body",
        "hello over IMAP",
    ])?;
    assert_eq!(
        run.final_reply().map(|r| r.code),
        Some(250),
        "{}",
        run.transcript
    );
    pf.maildir("example.test", "user").wait_for(1, T)?;
    let found = pf
        .dovecot()
        .imap_fetch_by_subject("user@example.test", "userpass", &subject)?;
    assert_eq!(
        found.len(),
        1,
        "IMAP SEARCH should find exactly the delivered message"
    );
    let text = String::from_utf8_lossy(&found[0]);
    assert!(text.contains("hello over IMAP"), "{text}");
    // The other user's mailbox does not have it; a wrong password is refused.
    let other = pf
        .dovecot()
        .imap_fetch_by_subject("other@example.test", "otherpass", &subject)?;
    assert!(other.is_empty());
    let bad = pf
        .dovecot()
        .imap_fetch_by_subject("user@example.test", "nope", &subject);
    assert!(bad.is_err_and(|e| e.to_string().contains("login refused")));
    Ok(())
}

#[test]
fn rspamd_rejects_gtube_over_http() -> R {
    let rspamd = Rspamd::builder().start()?;
    let gtube = b"From: spammer@remote.test\r\nTo: user@example.test\r\nSubject: gtube\r\n\
Message-ID: <gtube@remote.test>\r\n\r\n\
XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
    let res = rspamd.scan(
        gtube,
        &[("IP", "198.51.100.7"), ("From", "spammer@remote.test")],
    )?;
    assert_eq!(res.action, "reject", "{}", res.json);
    assert!(res.json.contains("GTUBE"), "{}", res.json);

    let clean = b"From: alice@remote.test\r\nTo: user@example.test\r\nSubject: lunch\r\n\
Message-ID: <clean@remote.test>\r\nDate: Thu, 27 Nov 2025 10:00:00 +0000\r\n\r\nSee you at noon.\r\n";
    let res = rspamd.scan(clean, &[("IP", "127.0.0.1")])?;
    assert_ne!(res.action, "reject", "{}", res.json);
    Ok(())
}

#[test]
fn opendkim_signs_through_postfix_and_dkimpy_verifies() -> R {
    let keys = tempfile::tempdir()?;
    let key = opendkim_genkey("example.test", "mail", 2048, keys.path())?;
    let od = OpenDkim::builder().key(&key).start()?;
    let pf = Postfix::builder()
        .submission(&od.milter_spec())
        .non_smtpd_milters(&od.milter_spec())
        .start()?;
    let subject = unique("smoke-dkim");
    let run = submit(
        pf.submission_port(),
        ("user@example.test", "userpass"),
        "user@example.test",
        "friend@remote.test",
        &["--header", &format!("Subject: {subject}")],
    )?;
    assert_eq!(
        run.final_reply().map(|r| r.code),
        Some(250),
        "{}",
        run.transcript
    );
    let msgs = pf.sink().wait_for(1, T)?;
    let signed = &msgs[0].data;
    let text = msgs[0].text();
    assert!(text.starts_with("DKIM-Signature:"), "{text}");
    assert!(text.contains("d=example.test"), "{text}");

    let records = [key.record()];
    let v = dkimpy_verify(signed, &records)?;
    assert!(v.all_pass, "dkimpy: {}", v.output);
    assert_eq!(v.lines, vec!["PASS d=example.test s=mail".to_string()]);
    let o = opendkim_test_verify(signed, &records)?;
    assert!(o.all_pass, "opendkim -t: {}", o.output);

    // A tampered copy must fail both verifiers.
    let tampered = text.replace(&subject, "tampered").into_bytes();
    let v = dkimpy_verify(&tampered, &records)?;
    assert!(
        !v.all_pass,
        "dkimpy accepted a tampered message: {}",
        v.output
    );
    let o = opendkim_test_verify(&tampered, &records)?;
    assert!(
        !o.all_pass,
        "opendkim accepted a tampered message: {}",
        o.output
    );

    // sendmail(1) goes through non_smtpd_milters and is signed too.
    let msg = format!(
        "From: user@example.test\nTo: friend@remote.test\nSubject: {subject}-sendmail\n\nvia pickup\n"
    );
    pf.sendmail(
        &["-f", "user@example.test", "friend@remote.test"],
        msg.as_bytes(),
    )?;
    let msgs = pf.sink().wait_for(2, T)?;
    let v = dkimpy_verify(&msgs[1].data, &records)?;
    assert!(v.all_pass, "dkimpy on the sendmail copy: {}", v.output);
    Ok(())
}
