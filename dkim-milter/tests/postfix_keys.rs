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

/// The `--check-config` of `config`: (exit code, stdout).
fn check_config(config: &std::path::Path, extra: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dkim-milter"))
        .arg("--config")
        .arg(config)
        .arg("--check-config")
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn broken_key_for_one_of_three_domains_leaves_the_others_signing_after_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let keys = tempfile::tempdir().unwrap();
    let one = genkey(keys.path(), "one.test", "s1", 2048);
    let two = genkey(keys.path(), "two.test", "s2", 2048);
    let open = genkey(keys.path(), "open.test", "s3", 2048);
    // One customer's key at mode 0644 (key-permissions = "refuse", the default), and a
    // domain directory a panel made before generating its key.
    std::fs::set_permissions(&open.private_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(keys.path().join("empty.test")).unwrap();

    // What systemd's ExecStartPre runs: the daemon may start (exit 0), the problems listed.
    let etc = tempfile::tempdir().unwrap();
    let cfg = etc.path().join("dkim.toml");
    std::fs::write(
        &cfg,
        format!("keys-dir = {:?}\n", keys.path().display().to_string()),
    )
    .unwrap();
    let (code, out) = check_config(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}");
    for needle in [
        "warning: open.test: not signing",
        "mode 0644",
        "warning: empty.test: not signing",
        "ok: one.test: s=s1 rsa-2048",
        "ok: two.test: s=s2 rsa-2048",
        "configuration OK; 2 signing domain(s)/key(s) (2 warning(s) above",
    ] {
        assert!(out.contains(needle), "{needle:?} in:\n{out}");
    }
    let (code, out) = check_config(&cfg, &["--strict"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("failing because of --strict"), "{out}");

    // The daemon behind a real Postfix, on a fixed socket so that it can be restarted
    // under the same Postfix.
    let spec = format!(
        "inet:127.0.0.1:{}",
        stack_tests::ports::free_port().unwrap()
    );
    let metrics = stack_tests::ports::free_port().unwrap();
    let body = |policy: &str| {
        format!(
            "keys-dir = {:?}\nauthserv-id = \"{AUTHSERV}\"\nallow-root = true\n\
             on-key-error = \"{policy}\"\nmetrics-listen = \"127.0.0.1:{metrics}\"",
            keys.path().display().to_string()
        )
    };
    let mut first = Daemon::start_with(Some(&spec), &body("tempfail"));
    first.wait_lines("open.test: not signing", 1);
    let pf = Postfix::builder().mx_milters(&spec).start().unwrap();
    assert!(first.terminate(), "{}", first.log());

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
    let code = |run: &stack_tests::swaks::SwaksRun| run.final_reply().map(|r| r.code);
    let inbox = pf.maildir("example.test", "user");
    let find = |msgs: &[Vec<u8>], subject: &str| -> Vec<u8> {
        crlf(
            msgs.iter()
                .find(|m| header_values(m, "Subject").iter().any(|s| s == subject))
                .unwrap_or_else(|| panic!("no {subject:?} among {}", msgs.len())),
        )
    };

    // Restarted as after a reboot (on-key-error = "tempfail"): it comes up.
    let d = Daemon::start_with(Some(&spec), &body("tempfail"));
    for (from, subject) in [
        ("a@one.test", "restart one"),
        ("b@two.test", "restart two"),
        ("c@empty.test", "restart empty"),
    ] {
        let run = try_send(from, subject);
        assert_eq!(code(&run), Some(250), "{}", run.transcript);
    }
    let run = try_send("x@open.test", "restart open");
    let r = run.final_reply().unwrap();
    assert_eq!((r.code, r.text.starts_with("4.7.0")), (451, true), "{r:?}");
    let got = inbox.wait_for(3, T).unwrap();
    assert_eq!(got.len(), 3, "the tempfailed message was not delivered");
    assert_verifies(&find(&got, "restart one"), &[one.record()], 1);
    assert_verifies(&find(&got, "restart two"), &[two.record()], 1);
    assert!(header_values(&find(&got, "restart empty"), "DKIM-Signature").is_empty());
    d.wait_lines("from=a@one.test: signed d=one.test s=s1", 1);
    d.wait_lines("from=b@two.test: signed d=two.test s=s2", 1);
    d.wait_lines("from=x@open.test: not signed: key error for open.test", 1);
    d.wait_lines(
        "from=c@empty.test: not signed (no signing key for the From domain: empty.test:",
        1,
    );
    let text = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics)).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    for line in [
        "dkim_milter_keys_loaded 2\n",
        "dkim_milter_broken_key_domains 1\n",
        "dkim_milter_key_warnings 2\n",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    drop(d);

    // Restarted with on-key-error = "accept": the broken domain's mail passes unsigned.
    let d = Daemon::start_with(Some(&spec), &body("accept"));
    let run = try_send("x@open.test", "accept open");
    assert_eq!(code(&run), Some(250), "{}", run.transcript);
    let run = try_send("a@one.test", "accept one");
    assert_eq!(code(&run), Some(250), "{}", run.transcript);
    let got = inbox.wait_for(5, T).unwrap();
    assert!(header_values(&find(&got, "accept open"), "DKIM-Signature").is_empty());
    assert_verifies(&find(&got, "accept one"), &[one.record()], 1);
    d.wait_lines("accepted unsigned (on-key-error)", 1);
}
