//! spam-milter between a real Postfix and a real Rspamd 3.4: what a client sees and what
//! arrives in the Maildir or at the remote sink, for each verdict and both directions.

mod support;

use stack_tests::postfix::Postfix;
use stack_tests::rspamd::Rspamd;
use stack_tests::swaks::submit;
use support::*;

fn rspamd_upstream(r: &Rspamd) -> String {
    format!(
        "[rspamd]\nupstreams = [\"http://127.0.0.1:{}\"]\n",
        r.normal_port()
    )
}

/// One Rspamd, one milter, one Postfix with the milter on the MX port: the four inbound
/// verdicts in one test so the daemons start once.
#[test]
fn inbound_verdicts_through_postfix() {
    let rspamd = Rspamd::builder().start().unwrap();
    let d = Daemon::start(&rspamd_upstream(&rspamd));
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();
    let mx = pf.mx_port();

    // GTUBE: refused at end of DATA with Rspamd's own text.
    let r = smtp_send(
        mx,
        "spammer@remote.test",
        "user@example.test",
        &message(
            "Spammer <spammer@remote.test>",
            "user@example.test",
            "gtube",
            "",
            GTUBE,
        ),
    );
    assert_eq!(r.code, 554, "{}", r.text);
    assert_eq!(r.text, "5.7.1 Gtube pattern");
    let line = &d.wait_lines("action=\"reject\"", 1)[0];
    assert!(line.contains("score=15.00 / 15.00"), "{line}");
    assert!(line.contains("policy=inbound"), "{line}");
    assert!(line.contains("-> 554 5.7.1 Gtube pattern"), "{line}");
    assert!(line.contains("from=<spammer@remote.test>"), "{line}");

    // Add-header pattern: delivered with X-Spam: Yes; the forged one the client sent is
    // gone, and so are its other forged scan headers.
    let r = smtp_send(
        mx,
        "bulk@remote.test",
        "user@example.test",
        &message(
            "Bulk <bulk@remote.test>",
            "user@example.test",
            "yjs pattern",
            "X-Spam: No\r\nX-Spam-Status: No, score=-100\r\nX-Rspamd-Action: no action\r\n",
            YJS,
        ),
    );
    assert_eq!(r.code, 250, "{}", r.text);

    // Rewrite-subject pattern.
    let r = smtp_send(
        mx,
        "bulk@remote.test",
        "user@example.test",
        &message(
            "Bulk <bulk@remote.test>",
            "user@example.test",
            "zjs pattern",
            "",
            ZJS,
        ),
    );
    assert_eq!(r.code, 250, "{}", r.text);

    // A clean message, with forged Rspamd result headers.
    let r = smtp_send(
        mx,
        "alice@remote.test",
        "user@example.test",
        &message(
            "Alice <alice@remote.test>",
            "user@example.test",
            "clean hello",
            "X-Spamd-Result: default: False [-50.00 / 15.00]\r\nX-Spam-Flag: NO\r\n",
            "Just a normal message about lunch on Monday.",
        ),
    );
    assert_eq!(r.code, 250, "{}", r.text);

    let msgs = pf.maildir("example.test", "user").wait_for(3, T).unwrap();
    assert_eq!(msgs.len(), 3, "GTUBE must not be delivered");

    let yjs = by_subject(&msgs, "yjs pattern");
    assert_eq!(
        header_values(&yjs, "X-Spam"),
        ["Yes"],
        "{}",
        String::from_utf8_lossy(&yjs)
    );
    assert!(
        header_values(&yjs, "X-Spam-Status")
            .iter()
            .all(|v| !v.contains("-100"))
    );
    assert!(!header_values(&yjs, "X-Rspamd-Action").contains(&"no action".to_string()));

    let zjs = by_subject(&msgs, "zjs pattern");
    assert_eq!(header_values(&zjs, "Subject"), ["*** SPAM *** zjs pattern"]);

    let clean = by_subject(&msgs, "clean hello");
    let text = String::from_utf8_lossy(&clean);
    let results = header_values(&clean, "X-Spamd-Result");
    assert_eq!(results.len(), 1, "{text}");
    assert!(results[0].starts_with("default: False ["), "{text}");
    assert!(
        !results[0].contains("-50.00"),
        "forged result kept:\n{text}"
    );
    assert!(header_values(&clean, "X-Spam-Flag").is_empty(), "{text}");
    assert_eq!(
        header_values(&clean, "X-Rspamd-Action"),
        ["no action"],
        "{text}"
    );
    assert!(header_values(&clean, "X-Spam").is_empty(), "{text}");
    // Rspamd's Authentication-Results, with the MTA's name as authserv-id.
    let ar = header_values(&clean, "Authentication-Results");
    assert!(
        ar.iter().any(|v| v.starts_with("mx.example.test;")),
        "{text}"
    );

    let lines = d.wait_lines("policy=inbound", 4);
    assert!(
        lines.iter().any(
            |l| l.contains("action=\"add header\"") && l.contains("removed 3 forged header(s)")
        ),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("action=\"rewrite subject\"")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains("action=\"no action\"") && l.contains("removed 2 forged header(s)")), "{lines:#?}");
    assert!(
        lines.iter().all(|l| l.contains(&format!(
            "upstream=http://127.0.0.1:{}",
            rspamd.normal_port()
        ))),
        "{lines:#?}"
    );
}

/// An authenticated submission is scanned in outbound mode: Rspamd is told the user
/// (its Authentication-Results says so), the outbound settings apply, nothing labels it,
/// and GTUBE from our own user is refused with the outbound text.
#[test]
fn authenticated_submission_is_scanned_as_outbound() {
    let rspamd = Rspamd::builder().start().unwrap();
    let d = Daemon::start(&rspamd_upstream(&rspamd));
    let pf = Postfix::builder().submission(&d.spec()).start().unwrap();
    let run = submit(
        pf.submission_port(),
        ("user@example.test", "userpass"),
        "user@example.test",
        "friend@remote.test",
        &[
            "--header",
            "Subject: outbound hello",
            "--body",
            "See you on Monday.",
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
    let m = &msgs[0].data;
    let text = String::from_utf8_lossy(m);
    let ar = header_values(m, "Authentication-Results");
    assert!(
        ar.iter().any(|v| v.contains("smtp.auth=user@example.test")),
        "Rspamd was not told the SASL user:\n{text}"
    );
    assert!(header_values(m, "X-Spam").is_empty(), "{text}");
    let line = &d.wait_lines("policy=outbound:", 1)[0];
    assert!(line.contains("action=\"no action\""), "{line}");
    assert!(line.contains("daemon=ORIGINATING"), "{line}");

    let run = submit(
        pf.submission_port(),
        ("user@example.test", "userpass"),
        "user@example.test",
        "friend@remote.test",
        &["--header", "Subject: outbound gtube", "--body", GTUBE],
    )
    .unwrap();
    let last = run.final_reply().unwrap();
    assert_eq!(last.code, 554, "{}", run.transcript);
    assert!(
        last.text.starts_with("5.7.1 Message refused as spam"),
        "{}",
        last.text
    );
    d.wait_lines("(outbound spam refused)", 1);
}

/// Quarantine and oversize, switched on by reloads of the running daemon: GTUBE with
/// `reject-with = "quarantine"` lands in Postfix's hold queue instead of being refused,
/// and a message over `max-message-size` is delivered unscanned with a header saying so.
#[test]
fn quarantine_and_oversize_through_postfix_after_reloads() {
    let rspamd = Rspamd::builder().start().unwrap();
    let d = Daemon::start(&format!(
        "{}[actions]\nreject-with = \"quarantine\"\n",
        rspamd_upstream(&rspamd)
    ));
    let pf = Postfix::builder().mx_milters(&d.spec()).start().unwrap();
    let r = smtp_send(
        pf.mx_port(),
        "spammer@remote.test",
        "user@example.test",
        &message(
            "Spammer <spammer@remote.test>",
            "user@example.test",
            "held gtube",
            "",
            GTUBE,
        ),
    );
    assert_eq!(r.code, 250, "quarantine accepts: {}", r.text);
    let line = &d.wait_lines("-> quarantine (Gtube pattern)", 1)[0];
    assert!(line.contains("action=\"reject\""), "{line}");
    let end = std::time::Instant::now() + T;
    loop {
        let q = pf.mailq().unwrap();
        // postqueue marks held messages with `!` after the queue id.
        if q.lines().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|id| id.ends_with('!'))
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "nothing on hold:\n{q}\n{}",
            pf.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        pf.maildir("example.test", "user")
            .new_messages()
            .unwrap()
            .is_empty()
    );

    // A reload to a small size cap: the next message is not scanned.
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(d.config_path(), format!("max-message-size = 2048\n{text}")).unwrap();
    d.signal(libc::SIGUSR1);
    d.wait_lines("reloaded (SIGUSR1)", 1);
    let big =
        "A long line of an ordinary newsletter, repeated to pass the size cap.\r\n".repeat(60);
    let r = smtp_send(
        pf.mx_port(),
        "news@remote.test",
        "user@example.test",
        &message(
            "News <news@remote.test>",
            "user@example.test",
            "big news",
            "X-Spam: No\r\n",
            &big,
        ),
    );
    assert_eq!(r.code, 250, "{}", r.text);
    let msgs = pf.maildir("example.test", "user").wait_for(1, T).unwrap();
    let status = header_values(&msgs[0], "X-Spam-Milter");
    assert_eq!(status.len(), 1, "{}", String::from_utf8_lossy(&msgs[0]));
    assert!(
        status[0].starts_with("unscanned (message of "),
        "{status:?}"
    );
    assert!(
        status[0].ends_with("bytes over max-message-size 2048)"),
        "{status:?}"
    );
    assert!(
        header_values(&msgs[0], "X-Spam").is_empty(),
        "forged X-Spam kept"
    );
    assert!(
        header_values(&msgs[0], "X-Spamd-Result").is_empty(),
        "was scanned"
    );
    d.wait_lines("over max-message-size 2048: accept by policy", 1);
}
