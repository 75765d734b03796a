//! Keys made by `dkim-milter keygen` work in OpenDKIM and dkimpy; reloads (SIGHUP,
//! key-dir changes) never stop signing; SIGTERM exits cleanly.

mod support;

use stack_tests::dkim::DkimKey;
use stack_tests::opendkim::OpenDkim;
use stack_tests::postfix::Postfix;
use support::*;

fn send(pf: &Postfix, from: &str, subject: &str) {
    pf.sendmail(
        &["-f", from, "-i", "friend@remote.test"],
        &message(from, "friend@remote.test", subject),
    )
    .unwrap();
}

#[test]
fn keygen_key_signs_in_real_opendkim_and_verifies_in_dkimpy() {
    let keys = tempfile::tempdir().unwrap();
    let (name, record) = our_keygen(keys.path(), "gen.test", "k2026", false);
    let key = DkimKey {
        domain: "gen.test".into(),
        selector: "k2026".into(),
        private_key: keys.path().join("gen.test/k2026.private"),
        txt_record: record.clone(),
    };
    assert_eq!(key.dns_name(), name);
    let od = OpenDkim::builder().key(&key).start().unwrap();
    let pf = Postfix::builder()
        .non_smtpd_milters(&od.milter_spec())
        .start()
        .unwrap();
    send(&pf, "a@gen.test", "keygen in opendkim");
    let msg = by_subject(&pf.sink().wait_for(1, T).unwrap(), "keygen in opendkim");
    // OpenDKIM signed with our key; the record we printed verifies it.
    assert_verifies(&msg, &[(name, record)], 1);
    assert_eq!(
        tag(&header_values(&msg, "DKIM-Signature")[0], "s").as_deref(),
        Some("k2026")
    );
}

#[test]
fn broken_config_on_sighup_keeps_serving_and_new_key_dir_is_picked_up() {
    let keys = tempfile::tempdir().unwrap();
    let a = genkey(keys.path(), "a.test", "one", 2048);
    let mut d = Daemon::start(keys.path(), "");
    let pf = Postfix::builder()
        .non_smtpd_milters(&d.spec())
        .start()
        .unwrap();

    // A broken config: refused with file and line, the old state keeps serving.
    let cfg = d.config_path().to_path_buf();
    let good_cfg = std::fs::read_to_string(&cfg).unwrap();
    let lines = good_cfg.lines().count();
    std::fs::write(&cfg, format!("{good_cfg}no-such-option = true\n")).unwrap();
    d.signal(libc::SIGHUP);
    let refused = &d.wait_lines("refused, previous configuration keeps serving", 1)[0];
    assert!(
        refused.contains(&format!("{}:{}:", cfg.display(), lines + 1))
            && refused.contains("no-such-option"),
        "{refused}"
    );
    send(&pf, "x@a.test", "after broken reload");
    let msg = by_subject(&pf.sink().wait_for(1, T).unwrap(), "after broken reload");
    assert_verifies(&msg, &[a.record()], 1);

    // Config fixed; then a new domain's key directory appears: picked up, no restart.
    std::fs::write(&cfg, &good_cfg).unwrap();
    d.wait_lines("reloaded (", 1);
    let b = genkey(keys.path(), "b.test", "new", 2048);
    let mut ok = false;
    for _ in 0..100 {
        if d.log().contains("b.test: s=new rsa-2048") && d.log().matches("reloaded (").count() >= 2
        {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ok, "new key dir not picked up:\n{}", d.log());
    send(&pf, "x@b.test", "new domain");
    let msg = by_subject(&pf.sink().wait_for(2, T).unwrap(), "new domain");
    assert_verifies(&msg, &[b.record()], 1);
    d.wait_lines("from=x@b.test: signed d=b.test s=new", 1);

    // SIGUSR1 reloads too (its default action would kill the process): the reload names
    // the signal, and the daemon goes on signing.
    d.signal(libc::SIGUSR1);
    d.wait_lines("reloaded (SIGUSR1)", 1);
    send(&pf, "x@b.test", "after sigusr1");
    let msg = by_subject(&pf.sink().wait_for(3, T).unwrap(), "after sigusr1");
    assert_verifies(&msg, &[b.record()], 1);

    // SIGTERM: graceful shutdown, exit status 0.
    assert!(d.terminate(), "{}", d.log());
    assert!(d.log().contains("server stopped"), "{}", d.log());
}

#[test]
fn reload_between_messages_of_one_smtp_session_keeps_the_milter_connection() {
    // Default policy: 127.0.0.1 is internal, so MX mail from our domains is signed.
    let keys = tempfile::tempdir().unwrap();
    let a = genkey(keys.path(), "a.test", "one", 2048);
    let d = Daemon::start(keys.path(), "");
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();
    let (mut c, _) = stack_tests::smtp::SmtpClient::connect(pf.mx_port()).unwrap();
    c.expect("EHLO client.example", 250).unwrap();

    c.expect("MAIL FROM:<x@a.test>", 250).unwrap();
    c.expect("RCPT TO:<user@example.test>", 250).unwrap();
    let r = c
        .data(&message("x@a.test", "user@example.test", "before reload"))
        .unwrap();
    assert_eq!(r.code, 250, "{}", r.text);

    // A new domain appears and the daemon reloads while Postfix holds the milter
    // connection open for this SMTP session.
    let b = genkey(keys.path(), "b.test", "new", 2048);
    d.signal(libc::SIGHUP);
    d.wait_lines("b.test: s=new rsa-2048", 1);

    c.expect("MAIL FROM:<x@b.test>", 250).unwrap();
    c.expect("RCPT TO:<user@example.test>", 250).unwrap();
    let r = c
        .data(&message("x@b.test", "user@example.test", "after reload"))
        .unwrap();
    assert_eq!(r.code, 250, "{}", r.text);
    c.expect("QUIT", 221).unwrap();

    let delivered = pf.maildir("example.test", "user").wait_for(2, T).unwrap();
    let find = |subject: &str| {
        delivered
            .iter()
            .find(|m| header_values(m, "Subject").iter().any(|s| s == subject))
            .unwrap_or_else(|| panic!("{subject:?} not delivered"))
            .clone()
    };
    assert_verifies(&find("before reload"), &[a.record()], 1);
    assert_verifies(&find("after reload"), &[b.record()], 1);
    // Both messages went over one milter connection: the reload dropped nothing.
    let signed = d.wait_lines(": signed d=", 2);
    let conn = |l: &str| {
        l.split("milter_conn{id=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(conn(&signed[0]), conn(&signed[1]), "{signed:?}");
    assert!(conn(&signed[0]).is_some(), "{signed:?}");
}
