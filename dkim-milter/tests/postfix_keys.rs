//! Key formats and key setups through the daemon and a real Postfix, and the blast radius
//! of a broken key (its domain only).

mod support;

use std::process::Command;

use stack_tests::postfix::Postfix;
use stack_tests::swaks::swaks;
use support::*;

fn send(pf: &Postfix, from: &str, subject: &str) {
    pf.sendmail(
        &["-f", from, "-i", "friend@remote.test"],
        &message(from, "friend@remote.test", subject),
    )
    .unwrap();
}

#[test]
fn pkcs1_pkcs8_rsa1024_and_ed25519_keys_all_sign() {
    let keys = tempfile::tempdir().unwrap();
    let pkcs8 = genkey(keys.path(), "pkcs8.test", "p8", 2048);
    let pkcs1 = genkey(keys.path(), "pkcs1.test", "p1", 2048);
    let out = Command::new("openssl")
        .args(["rsa", "-traditional", "-in"])
        .arg(&pkcs1.private_key)
        .arg("-out")
        .arg(&pkcs1.private_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let legacy = genkey(keys.path(), "rsa1024.test", "old", 1024);
    let ed = our_keygen(keys.path(), "ed.test", "ed", true);
    let pem = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    assert!(pem(&pkcs8.private_key).starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(pem(&pkcs1.private_key).starts_with("-----BEGIN RSA PRIVATE KEY-----"));

    let d = Daemon::start(keys.path(), "");
    let pf = Postfix::builder()
        .non_smtpd_milters(&d.spec())
        .start()
        .unwrap();
    let cases = [
        (
            "a@pkcs8.test",
            "key pkcs8",
            pkcs8.record(),
            "s=p8 a=rsa-sha256",
        ),
        (
            "a@pkcs1.test",
            "key pkcs1",
            pkcs1.record(),
            "s=p1 a=rsa-sha256",
        ),
        (
            "a@rsa1024.test",
            "key rsa1024",
            legacy.record(),
            "s=old a=rsa-sha256",
        ),
        ("a@ed.test", "key ed25519", ed, "s=ed a=ed25519-sha256"),
    ];
    for (from, subject, _, _) in &cases {
        send(&pf, from, subject);
    }
    let msgs = pf.sink().wait_for(cases.len(), T).unwrap();
    for (from, subject, record, logged) in &cases {
        let msg = by_subject(&msgs, subject);
        assert_verifies(&msg, std::slice::from_ref(record), 1);
        let domain = from.split_once('@').unwrap().1;
        d.wait_lines(&format!("signed d={domain} {logged}"), 1);
    }
    // The 1024-bit key was accepted with a warning at load.
    assert!(
        d.log().contains("RSA key under 2048 bits; accepted"),
        "{}",
        d.log()
    );
}

#[test]
fn keytable_and_signingtable_setup_signs() {
    let keys = tempfile::tempdir().unwrap();
    let etc = tempfile::tempdir().unwrap();
    // Keys wherever the panel keeps them; the tables say which is whose.
    let shop = genkey(&etc.path().join("k"), "shop.test", "2026", 2048);
    let blog = genkey(&etc.path().join("k2"), "blog.test", "mail", 2048);
    let kt = etc.path().join("KeyTable");
    let st = etc.path().join("SigningTable");
    std::fs::write(
        &kt,
        format!(
            "shopkey shop.test:2026:{}\nblogkey blog.test:mail:{}\n",
            shop.private_key.display(),
            blog.private_key.display()
        ),
    )
    .unwrap();
    std::fs::write(&st, "*@shop.test shopkey\n*@blog.test blogkey\n").unwrap();
    let d = Daemon::start(
        keys.path(),
        &format!(
            "key-table = \"file:{}\"\nsigning-table = \"refile:{}\"",
            kt.display(),
            st.display()
        ),
    );
    let pf = Postfix::builder()
        .non_smtpd_milters(&d.spec())
        .start()
        .unwrap();
    send(&pf, "orders@shop.test", "tables shop");
    send(&pf, "me@blog.test", "tables blog");
    send(&pf, "me@unlisted.test", "tables unlisted");
    let msgs = pf.sink().wait_for(3, T).unwrap();
    assert_verifies(&by_subject(&msgs, "tables shop"), &[shop.record()], 1);
    assert_verifies(&by_subject(&msgs, "tables blog"), &[blog.record()], 1);
    let unlisted = by_subject(&msgs, "tables unlisted");
    assert!(header_values(&unlisted, "DKIM-Signature").is_empty());
    d.wait_lines("signed d=shop.test s=2026 a=rsa-sha256", 1);
    d.wait_lines("signed d=blog.test s=mail a=rsa-sha256", 1);
    d.wait_lines(
        "from=me@unlisted.test: not signed (no signing key for the From domain)",
        1,
    );
}

#[test]
fn corrupt_or_unreadable_key_tempfails_its_domain_only() {
    let keys = tempfile::tempdir().unwrap();
    let good = genkey(keys.path(), "good.test", "ok", 2048);
    let corrupt = genkey(keys.path(), "corrupt.test", "bad", 2048);
    std::fs::write(
        &corrupt.private_key,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    // Unreadable: the key file is a dangling symlink (root reads anything else).
    let unreadable = keys.path().join("unreadable.test");
    std::fs::create_dir_all(&unreadable).unwrap();
    std::os::unix::fs::symlink("/nonexistent/key", unreadable.join("gone.private")).unwrap();

    let d = Daemon::start(keys.path(), "on-key-error = \"tempfail\"");
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();
    let port = pf.mx_port().to_string();
    let try_send = |from: &str, subject: &str| {
        swaks(&[
            "--server",
            &format!("127.0.0.1:{port}"),
            "--from",
            from,
            "--to",
            "user@example.test",
            "--header",
            &format!("Subject: {subject}"),
        ])
        .unwrap()
    };
    for (from, domain) in [
        ("x@corrupt.test", "corrupt.test"),
        ("x@unreadable.test", "unreadable.test"),
    ] {
        let run = try_send(from, "broken key");
        let r = run.final_reply().unwrap();
        assert_eq!(r.code, 451, "{}", run.transcript);
        assert!(r.text.starts_with("4.7.0"), "{r:?}");
        d.wait_lines(
            &format!("from={from}: not signed: key error for {domain}"),
            1,
        );
    }
    let run = try_send("x@good.test", "good key");
    assert_eq!(
        run.final_reply().map(|r| r.code),
        Some(250),
        "{}",
        run.transcript
    );
    let got = pf.maildir("example.test", "user").wait_for(1, T).unwrap();
    assert_eq!(got.len(), 1, "the tempfailed messages were not delivered");
    assert_verifies(&crlf(&got[0]), &[good.record()], 1);
    d.wait_lines("from=x@good.test: signed d=good.test s=ok", 1);
}
