//! dkim-milter behind a real Postfix: what gets signed (submission with SASL, sendmail),
//! what does not (unauthenticated port-25 mail), and inbound verification with
//! Authentication-Results. Signatures are checked by dkimpy and `opendkim -t`.

mod support;

use stack_tests::postfix::Postfix;
use stack_tests::swaks::submit;
use support::*;

#[test]
fn submission_with_sasl_is_signed_and_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let key = genkey(keys.path(), "example.test", "sub2026", 2048);
    // No internal hosts: the 127.0.0.1 client signs only because it authenticated.
    let d = Daemon::start(keys.path(), "internal-hosts = []");
    let pf = Postfix::builder().submission(&d.spec()).start().unwrap();
    let run = submit(
        pf.submission_port(),
        ("user@example.test", "userpass"),
        "user@example.test",
        "friend@remote.test",
        &[
            "--header",
            "Subject: e2e submission",
            "--body",
            "Signed on submission.\nSecond line  \n",
        ],
    )
    .unwrap();
    assert_eq!(
        run.final_reply().map(|r| r.code),
        Some(250),
        "{}",
        run.transcript
    );
    let msgs = pf.sink().wait_for(1, T).unwrap();
    let msg = by_subject(&msgs, "e2e submission");
    // The signature is the very first header (inserted at index 0).
    assert!(
        headers(&msg)[0].0.eq_ignore_ascii_case("DKIM-Signature"),
        "{}",
        String::from_utf8_lossy(&msg)
    );
    assert_verifies(&msg, &[key.record()], 1);
    let sig = &header_values(&msg, "DKIM-Signature")[0];
    assert_eq!(tag(sig, "d").as_deref(), Some("example.test"));
    assert_eq!(tag(sig, "c").as_deref(), Some("relaxed/relaxed"));
    let line = &d.wait_lines(": signed d=example.test s=sub2026 a=rsa-sha256", 1)[0];
    assert!(line.contains("(authenticated sender)"), "{line}");
    assert!(line.contains("from=user@example.test"), "{line}");
}

#[test]
fn sendmail_non_smtpd_milters_is_signed_and_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let key = genkey(keys.path(), "example.test", "local", 2048);
    let d = Daemon::start(keys.path(), "");
    let pf = Postfix::builder()
        .non_smtpd_milters(&d.spec())
        .start()
        .unwrap();
    // LF line endings, a folded header and 8-bit text, as local programs write them.
    pf.sendmail(
        &["-f", "user@example.test", "-i", "friend@remote.test"],
        "From: Local User <user@example.test>\nTo: friend@remote.test\nSubject: e2e sendmail\n\
         X-Long: first part of a folded\n\tsecond part\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
         Grüße aus der Sandbox\n\n\n"
            .as_bytes(),
    )
    .unwrap();
    let msgs = pf.sink().wait_for(1, T).unwrap();
    let msg = by_subject(&msgs, "e2e sendmail");
    assert_verifies(&msg, &[key.record()], 1);
    let line = &d.wait_lines(": signed d=example.test s=local a=rsa-sha256", 1)[0];
    assert!(line.contains("(client is an internal host)"), "{line}");
}

#[test]
fn unauthenticated_mx_mail_from_outside_is_not_signed() {
    let keys = tempfile::tempdir().unwrap();
    genkey(keys.path(), "example.test", "mx", 2048);
    // 127.0.0.1 is not internal here, so the client is a stranger claiming our domain.
    let d = Daemon::start(keys.path(), "internal-hosts = []");
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();
    let r = smtp_send(
        pf.mx_port(),
        "user@example.test",
        "other@example.test",
        &message("user@example.test", "other@example.test", "e2e forged"),
    );
    assert_eq!(r.code, 250, "{r:?}");
    let got = pf
        .maildir("example.test", "other")
        .wait_for(1, T)
        .unwrap()
        .remove(0);
    assert!(
        header_values(&got, "DKIM-Signature").is_empty(),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let line = &d.wait_lines("from=user@example.test: not signed (external client", 1)[0];
    assert!(line.contains("verified: no signatures"), "{line}");
    // It was verified instead: our A-R says there was no signature.
    let ar = header_values(&got, "Authentication-Results");
    assert_eq!(ar.len(), 1, "{ar:?}");
    assert!(
        ar[0].starts_with(&format!("{AUTHSERV};")) && ar[0].contains("dkim=none"),
        "{ar:?}"
    );
}

#[test]
fn mx_default_config_verifies_inbound_with_dns_override_and_replaces_forged_ar() {
    let keys = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let remote = genkey(outside.path(), "remote.test", "ext", 2048);
    let dns = outside.path().join("dns-override.txt");
    stack_tests::dkim::write_key_records(&dns, &[remote.record()]).unwrap();
    // Default policy (127.0.0.1 internal); remote.test has no key here, so it is verified.
    let d = Daemon::start(
        keys.path(),
        &format!("dns-override-file = {:?}", dns.display().to_string()),
    );
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();

    let mut plain =
        format!("Authentication-Results: {AUTHSERV}; dkim=pass header.d=bank.test (forged)\r\n")
            .into_bytes();
    plain.extend(message(
        "alice@remote.test",
        "user@example.test",
        "e2e inbound",
    ));
    let signed = dkimpy_sign(&plain, "remote.test", "ext", &remote.private_key);
    assert_eq!(
        smtp_send(
            pf.mx_port(),
            "alice@remote.test",
            "user@example.test",
            &signed
        )
        .code,
        250
    );
    // Same message, body changed after signing: must not pass.
    let mut tampered = signed.clone();
    let n = tampered.len();
    tampered.splice(n - 2..n - 2, b"tampered".iter().copied());
    let tampered = String::from_utf8(tampered)
        .unwrap()
        .replace("Subject: e2e inbound", "Subject: e2e inbound tampered");
    assert_eq!(
        smtp_send(
            pf.mx_port(),
            "alice@remote.test",
            "user@example.test",
            tampered.as_bytes()
        )
        .code,
        250
    );
    let got = pf.maildir("example.test", "user").wait_for(2, T).unwrap();
    let find = |s: &str| {
        got.iter()
            .find(|m| header_values(m, "Subject").iter().any(|x| x == s))
            .unwrap_or_else(|| panic!("no {s}"))
            .clone()
    };
    let good = find("e2e inbound");
    let ar = header_values(&good, "Authentication-Results");
    assert_eq!(
        ar.len(),
        1,
        "the forged A-R is gone, ours is the only one: {ar:?}"
    );
    assert!(ar[0].starts_with(&format!("{AUTHSERV};")), "{ar:?}");
    assert!(
        ar[0].contains("dkim=pass") && ar[0].contains("header.i=@remote.test header.s=ext"),
        "{ar:?}"
    );
    assert!(!ar[0].contains("bank.test"), "{ar:?}");
    // The original signature still verifies after our changes (A-R is not signed).
    assert_verifies(&crlf(&good), &[remote.record()], 1);
    // The key came from the override file: its name never reached DNS.
    assert!(
        d.dns().queries_for(&remote.dns_name()).is_empty(),
        "{:?}",
        d.dns().queries()
    );

    let bad = find("e2e inbound tampered");
    let ar = header_values(&bad, "Authentication-Results");
    assert_eq!(ar.len(), 1, "{ar:?}");
    // mail-auth reports a body hash mismatch as neutral (as OpenDKIM does), never pass.
    assert!(
        !ar[0].contains("dkim=pass") && ar[0].contains("body hash did not verify"),
        "{ar:?}"
    );

    let lines = d.wait_lines("from=alice@remote.test: not signed", 2);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("verified: d=remote.test s=ext pass")
                && l.contains("removed 1 forged Authentication-Results")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("d=remote.test s=ext neutral (Calculated body hash does not match")),
        "{lines:?}"
    );
}

#[test]
fn mx_verifies_inbound_with_a_key_published_only_on_dns_servers() {
    let keys = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let remote = genkey(outside.path(), "dns-only.test", "stub", 2048);
    // No dns-override-file: the key is only on the daemon's `dns-servers` (the stub).
    let d = Daemon::start(keys.path(), "");
    d.dns()
        .add_txt(&remote.dns_name(), &remote.txt_record)
        .unwrap();
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();
    let signed = dkimpy_sign(
        &message("bob@dns-only.test", "user@example.test", "e2e stub dns"),
        "dns-only.test",
        "stub",
        &remote.private_key,
    );
    assert_eq!(
        smtp_send(
            pf.mx_port(),
            "bob@dns-only.test",
            "user@example.test",
            &signed
        )
        .code,
        250
    );
    let got = pf
        .maildir("example.test", "user")
        .wait_for(1, T)
        .unwrap()
        .remove(0);
    let ar = header_values(&got, "Authentication-Results");
    assert_eq!(ar.len(), 1, "{ar:?}");
    assert!(
        ar[0].starts_with(&format!("{AUTHSERV};"))
            && ar[0].contains("dkim=pass")
            && ar[0].contains("header.i=@dns-only.test header.s=stub"),
        "{ar:?}"
    );
    // The verifier asked the stub for the key (a TXT query), so `dns-servers` is used.
    let asked = d.dns().queries_for(&remote.dns_name());
    assert!(
        asked.iter().any(|q| q.type_name() == "TXT"),
        "{:?}",
        d.dns().queries()
    );
    d.wait_lines("verified: d=dns-only.test s=stub pass", 1);
}

#[test]
fn forged_ar_is_removed_on_every_path_and_the_authserv_id_is_the_mta_name() {
    let keys = tempfile::tempdir().unwrap();
    let key = genkey(keys.path(), "sign.test", "s", 2048);
    // No authserv-id: the MTA's `j` (Postfix's myhostname) is ours.
    let d = Daemon::start_with(
        None,
        &format!(
            "keys-dir = {:?}\nallow-root = true\nreload-poll-seconds = 1",
            keys.path().display().to_string()
        ),
    );
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();
    let ours = "mx.example.test";
    let forged = format!("Authentication-Results: {ours}; dkim=pass header.d=bank.test\r\n");
    let genuine = "Authentication-Results: relay.other.test; spf=pass\r\n";
    // Postfix's header_size_limit (100 KiB) bounds each header, not their sum: 1200
    // headers of 1 KiB make a header block over 1 MiB, which dkim-milter does not
    // buffer, and a forged A-R after them still has to go.
    let filler: String = (0..1200)
        .map(|i| format!("X-Filler-{i}: {}\r\n", "f".repeat(1000)))
        .collect();
    let with = |head: &str, from: &str, subject: &str| {
        let mut m = head.as_bytes().to_vec();
        m.extend(message(from, "user@example.test", subject));
        m
    };
    let cases = [
        (
            "a@sign.test",
            "forged signed",
            with(
                &format!("{forged}{genuine}"),
                "a@sign.test",
                "forged signed",
            ),
        ),
        (
            "b@remote.test",
            "forged verified",
            with(
                &format!("{forged}{genuine}"),
                "b@remote.test",
                "forged verified",
            ),
        ),
        (
            "c@remote.test",
            "forged oversized",
            with(
                &format!("{forged}{genuine}{filler}{forged}"),
                "c@remote.test",
                "forged oversized",
            ),
        ),
    ];
    assert!(cases[2].2.len() > 1024 * 1024 + 100_000);
    for (from, _, msg) in &cases {
        let r = smtp_send(pf.mx_port(), from, "user@example.test", msg);
        assert_eq!(r.code, 250, "{r:?}");
    }
    let got = pf.maildir("example.test", "user").wait_for(3, T).unwrap();
    let find = |s: &str| {
        got.iter()
            .find(|m| header_values(m, "Subject").iter().any(|x| x == s))
            .unwrap_or_else(|| panic!("no {s}"))
            .clone()
    };
    let ars = |m: &[u8]| header_values(m, "Authentication-Results");

    // Mail we sign: the forged A-R is gone, the genuine one stays, the signature verifies.
    let signed = find("forged signed");
    assert_eq!(ars(&signed), vec!["relay.other.test; spf=pass"]);
    assert_verifies(&crlf(&signed), &[key.record()], 1);

    // Mail we verify: ours (named after `j`) replaces the forged one.
    let verified = find("forged verified");
    let a = ars(&verified);
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(
        a[0].starts_with(&format!("{ours};")) && a[0].contains("dkim=none"),
        "{a:?}"
    );
    assert_eq!(a[1], "relay.other.test; spf=pass");

    // A header block over 1 MiB: neither signed nor verified, both forged A-R removed.
    let big = find("forged oversized");
    assert_eq!(ars(&big), vec!["relay.other.test; spf=pass"]);
    assert_eq!(header_values(&big, "X-Filler-1199").len(), 1);

    d.wait_lines("from=a@sign.test: signed d=sign.test s=s", 1);
    let line = &d.wait_lines("from=b@remote.test: not signed", 1)[0];
    assert!(
        line.contains("removed 1 forged Authentication-Results; client=127.0.0.1 daemon="),
        "{line}"
    );
    let line = &d.wait_lines("from=c@remote.test: not signed or verified", 1)[0];
    assert!(
        line.contains("header block larger than") && line.contains("removed 2 forged"),
        "{line}"
    );
    assert!(
        d.log().contains("authserv-id the MTA's j macro, else"),
        "{}",
        d.log()
    );
}
