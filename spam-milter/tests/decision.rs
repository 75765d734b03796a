//! Decisions per action, mode, direction and failure, on real Rspamd 3.4 replies (the
//! samples) and hand-made ones for the shapes the samples lack.

use std::path::Path;

use spam_milter::config::{Config, Fallback};
use spam_milter::decision::{Decision, Edit, Headers, Outcome, Reply, decide, reply_text};
use spam_milter::message::{Connection, Envelope};
use spam_milter::policy::{Policy, resolve};
use spam_milter::reply::{ReplyLimits, ScanReply, parse};

fn sample(name: &str) -> ScanReply {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/samples")
        .join(format!("{name}.json"));
    parse(&std::fs::read(&p).unwrap(), &ReplyLimits::default()).unwrap()
}

fn json(text: &str) -> ScanReply {
    parse(text.as_bytes(), &ReplyLimits::default()).unwrap()
}

fn cfg(t: &str) -> Config {
    Config::parse(t, Path::new("t.toml")).unwrap()
}

fn inbound(c: &Config) -> Policy {
    let env = Envelope {
        from: "<a@remote.test>".into(),
        rcpts: vec!["<u@example.test>".into()],
        ..Envelope::default()
    };
    resolve(c, &Connection::default(), &env)
}

fn outbound(c: &Config) -> Policy {
    let env = Envelope {
        from: "<u@example.test>".into(),
        rcpts: vec!["<friend@remote.test>".into()],
        auth_user: Some("u@example.test".into()),
        ..Envelope::default()
    };
    resolve(c, &Connection::default(), &env)
}

fn names(list: &[&str]) -> Vec<Box<str>> {
    list.iter().map(|s| Box::<str>::from(*s)).collect()
}

const HDRS: &[&str] = &["From", "To", "Subject", "Date", "Message-ID"];

fn run(r: &ScanReply, p: &Policy, c: &Config, hdrs: &[&str]) -> Decision {
    let n = names(hdrs);
    decide(
        Outcome::Scanned(r),
        p,
        &c.actions,
        c.on_oversize,
        Headers {
            names: &n,
            subject: Some("hello"),
        },
    )
}

fn adds(d: &Decision) -> Vec<(String, String)> {
    d.edits
        .iter()
        .filter_map(|e| match e {
            Edit::Add { name, value } => Some((name.clone(), value.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn gtube_is_rejected_with_rspamds_text() {
    let c = Config::default();
    let d = run(&sample("gtube"), &inbound(&c), &c, HDRS);
    assert_eq!(
        d.reply,
        Reply::Reject {
            code: 554,
            enhanced: "5.7.1",
            text: "Gtube pattern".into()
        }
    );
    assert_eq!(d.label, "reject");
    assert!(
        d.summary.contains("action=\"reject\" score=15.00 / 15.00"),
        "{}",
        d.summary
    );
}

#[test]
fn outbound_rejects_use_the_outbound_text() {
    let c = Config::default();
    let d = run(&sample("gtube"), &outbound(&c), &c, HDRS);
    let Reply::Reject { text, .. } = &d.reply else {
        panic!("{:?}", d.reply)
    };
    assert!(text.starts_with("Message refused as spam"), "{text}");
    assert!(d.summary.contains("outbound spam refused"));
}

#[test]
fn add_header_sets_the_spam_header_once() {
    let c = Config::default();
    let d = run(
        &sample("test-pattern-add-header"),
        &inbound(&c),
        &c,
        &["From", "X-Spam", "Subject", "x-spam"],
    );
    assert_eq!(d.reply, Reply::Accept);
    // Both forged copies removed, last first, then ours added.
    assert_eq!(
        &d.edits[..2],
        &[
            Edit::Delete {
                name: "X-Spam".into(),
                occurrence: 2
            },
            Edit::Delete {
                name: "X-Spam".into(),
                occurrence: 1
            }
        ]
    );
    assert_eq!(adds(&d), [("X-Spam".to_string(), "Yes".to_string())]);
    assert_eq!(d.forged_removed, 2);
}

#[test]
fn rewrite_subject_uses_rspamds_subject() {
    let c = Config::default();
    let r = sample("test-pattern-rewrite-subject");
    let want = r.subject.clone().unwrap();
    let d = run(&r, &inbound(&c), &c, HDRS);
    assert!(d.edits.contains(&Edit::Change {
        name: "Subject".into(),
        occurrence: 1,
        value: want
    }));
    // Outbound mail is not labelled by default.
    let d = run(&r, &outbound(&c), &c, HDRS);
    assert!(!d.edits.iter().any(|e| matches!(e, Edit::Change { .. })));
    // Without a subject in the reply, the configured prefix goes on the original.
    let d = run(
        &json(r#"{"action":"rewrite subject","score":9}"#),
        &inbound(&c),
        &c,
        HDRS,
    );
    assert!(d.edits.contains(&Edit::Change {
        name: "Subject".into(),
        occurrence: 1,
        value: "*** SPAM *** hello".into()
    }));
}

#[test]
fn a_clean_message_gets_rspamds_headers_where_it_asks() {
    let c = Config::default();
    let r = sample("normal-inbound-loopback-milterflags");
    let d = run(&r, &inbound(&c), &c, HDRS);
    assert_eq!(d.reply, Reply::Accept);
    assert_eq!(d.label, "no_action");
    let ar = d
        .edits
        .iter()
        .find_map(|e| match e {
            Edit::Insert { index, name, value } if name == "Authentication-Results" => {
                Some((*index, value.clone()))
            }
            _ => None,
        })
        .expect("A-R inserted");
    assert_eq!(ar.0, 1, "order 1: below the MTA's Received");
    assert!(
        adds(&d)
            .iter()
            .any(|(n, v)| n == "X-Spamd-Result" && !v.contains('\r'))
    );
    // Deletions come before any addition.
    let first_add = d
        .edits
        .iter()
        .position(|e| matches!(e, Edit::Add { .. } | Edit::Insert { .. }))
        .unwrap();
    assert!(
        d.edits[first_add..]
            .iter()
            .all(|e| !matches!(e, Edit::Delete { .. }))
    );
}

#[test]
fn forged_headers_of_strangers_go_and_authenticated_users_keep_theirs() {
    let c = Config::default();
    let r = json(r#"{"action":"no action","score":0}"#);
    let hdrs = [
        "From",
        "X-Spam-Status",
        "X-Rspamd-Score",
        "X-Spamd-Bar",
        "X-Spam-Flag",
        "Subject",
    ];
    let d = run(&r, &inbound(&c), &c, &hdrs);
    let deleted: Vec<&str> = d
        .edits
        .iter()
        .filter_map(|e| match e {
            Edit::Delete { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted.len(), 4, "{deleted:?}");
    let d = run(&r, &outbound(&c), &c, &hdrs);
    assert!(!d.edits.iter().any(|e| matches!(e, Edit::Delete { .. })));
}

#[test]
fn soft_reject_and_greylist() {
    let c = Config::default();
    let d = run(
        &json(r#"{"action":"soft reject","messages":{"smtp_message":"Try\r\nlater"}}"#),
        &inbound(&c),
        &c,
        HDRS,
    );
    assert_eq!(
        d.reply,
        Reply::Tempfail {
            code: 451,
            enhanced: "4.7.1",
            text: "Try later".into()
        }
    );
    let g = json(r#"{"action":"greylist","score":5}"#);
    assert_eq!(run(&g, &inbound(&c), &c, HDRS).reply, Reply::Accept);
    let c2 = cfg("[actions]\ngreylist = \"tempfail\"\n");
    assert!(matches!(
        run(&g, &inbound(&c2), &c2, HDRS).reply,
        Reply::Tempfail { code: 451, .. }
    ));
}

#[test]
fn reject_can_become_quarantine_or_discard() {
    let r = sample("gtube");
    let c = cfg("[actions]\nreject-with = \"quarantine\"\n");
    let d = run(&r, &inbound(&c), &c, HDRS);
    assert_eq!(d.reply, Reply::Accept);
    assert_eq!(d.quarantine.as_deref(), Some("Gtube pattern"));
    assert!(adds(&d).contains(&("X-Spam".into(), "Yes".into())));
    let c = cfg("[actions]\nreject-with = \"discard\"\n");
    assert_eq!(run(&r, &inbound(&c), &c, HDRS).reply, Reply::Discard);
    // The milter block's reject switch does the same per message.
    let c = Config::default();
    let r = json(r#"{"action":"reject","milter":{"reject":"discard"}}"#);
    assert_eq!(run(&r, &inbound(&c), &c, HDRS).reply, Reply::Discard);
    let r = json(r#"{"action":"quarantine","messages":{"smtp_message":"held"}}"#);
    let d = run(&r, &inbound(&c), &c, HDRS);
    assert_eq!(
        (d.reply, d.quarantine.as_deref()),
        (Reply::Accept, Some("held"))
    );
    let r = json(r#"{"action":"discard"}"#);
    assert_eq!(run(&r, &inbound(&c), &c, HDRS).reply, Reply::Discard);
}

#[test]
fn observe_mode_labels_and_never_refuses() {
    let c = cfg("[inbound]\nmode = \"observe\"\n");
    let d = run(&sample("gtube"), &inbound(&c), &c, HDRS);
    assert_eq!(d.reply, Reply::Accept);
    assert_eq!(d.quarantine, None);
    let status = adds(&d);
    assert!(
        status
            .iter()
            .any(|(n, v)| n == "X-Spam-Milter" && v.contains("would 554 5.7.1 Gtube pattern")),
        "{status:?}"
    );
    let d = run(
        &sample("test-pattern-rewrite-subject"),
        &inbound(&c),
        &c,
        HDRS,
    );
    assert!(!d.edits.iter().any(|e| matches!(e, Edit::Change { .. })));
    assert!(d.summary.contains("would rewrite subject"), "{}", d.summary);
}

#[test]
fn milter_block_extras_become_edits() {
    let c = Config::default();
    let r = json(
        r#"{"action":"no action","dkim-signature":["v=1; a=rsa-sha256; d=a","v=1; d=b"],
            "milter":{"change_from":"<new@x>","add_rcpt":["<c@x>"],"del_rcpt":["<u@example.test>"],
                      "no_action":true,
                      "remove_headers":{"Subject":-1,"To":2},
                      "add_headers":{"X-Tail":{"value":"t","order":-3}}}}"#,
    );
    let d = run(&r, &inbound(&c), &c, HDRS);
    let e = &d.edits;
    assert!(e.contains(&Edit::Delete {
        name: "Subject".into(),
        occurrence: 1
    }));
    assert!(
        !e.iter()
            .any(|x| matches!(x, Edit::Delete { name, .. } if name == "To"))
    );
    assert!(e.contains(&Edit::Insert {
        index: 1,
        name: "DKIM-Signature".into(),
        value: "v=1; a=rsa-sha256; d=a".into()
    }));
    assert!(e.contains(&Edit::Insert {
        index: 2,
        name: "DKIM-Signature".into(),
        value: "v=1; d=b".into()
    }));
    // order -3 with 5 headers: 5 - 3 + 2 = 4.
    assert!(e.contains(&Edit::Insert {
        index: 4,
        name: "X-Tail".into(),
        value: "t".into()
    }));
    assert!(e.contains(&Edit::ChangeFrom("<new@x>".into())));
    assert!(e.contains(&Edit::AddRcpt("<c@x>".into())));
    assert!(e.contains(&Edit::DelRcpt("<u@example.test>".into())));
    assert!(adds(&d).contains(&("X-Rspamd-Action".into(), "no action".into())));
    // With the block off none of it is applied.
    let c = cfg("[actions]\napply-milter-block = false\n");
    let d = run(&r, &inbound(&c), &c, HDRS);
    assert!(d.edits.is_empty(), "{:?}", d.edits);
}

#[test]
fn score_and_symbols_headers_when_configured() {
    let c =
        cfg("[actions]\nscore-header = \"X-Spam-Score\"\nsymbols-header = \"X-Spam-Symbols\"\n");
    let d = run(&sample("normal-inbound-public-ip"), &inbound(&c), &c, HDRS);
    let a = adds(&d);
    assert!(
        a.iter()
            .any(|(n, v)| n == "X-Spam-Score" && v == "6.30 / 15.00"),
        "{a:?}"
    );
    assert!(
        a.iter()
            .any(|(n, v)| n == "X-Spam-Symbols" && v.contains("RDNS_NONE(")),
        "{a:?}"
    );
}

#[test]
fn failures_follow_the_policy() {
    let c = Config::default();
    let n = names(HDRS);
    let h = Headers {
        names: &n,
        subject: None,
    };
    let fail = Outcome::Failed {
        label: "timeout",
        detail: "rspamd at http://x: timed out",
    };
    let d = decide(fail, &inbound(&c), &c.actions, c.on_oversize, h);
    assert_eq!(
        (d.reply.clone(), d.fallback, d.label),
        (Reply::Accept, Some(Fallback::Accept), "unscanned")
    );
    assert!(adds(&d).contains(&(
        "X-Spam-Milter".into(),
        "unscanned (rspamd unavailable: timeout)".into()
    )));
    let d = decide(fail, &outbound(&c), &c.actions, c.on_oversize, h);
    assert!(matches!(
        d.reply,
        Reply::Tempfail {
            code: 451,
            enhanced: "4.7.1",
            ..
        }
    ));
    let c2 = cfg("[inbound]\non-error = \"tempfail\"\n");
    let d = decide(fail, &inbound(&c2), &c2.actions, c2.on_oversize, h);
    assert!(matches!(d.reply, Reply::Tempfail { .. }), "{:?}", d.reply);
    // Forged headers go even when Rspamd is down.
    let n2 = names(&["From", "X-Spam"]);
    let d = decide(
        fail,
        &inbound(&c),
        &c.actions,
        c.on_oversize,
        Headers {
            names: &n2,
            subject: None,
        },
    );
    assert_eq!(
        d.edits[0],
        Edit::Delete {
            name: "X-Spam".into(),
            occurrence: 1
        }
    );

    let big = Outcome::Oversize {
        size: 30_000_000,
        max: 20_000_000,
    };
    let d = decide(big, &inbound(&c), &c.actions, c.on_oversize, h);
    assert_eq!((d.reply.clone(), d.label), (Reply::Accept, "oversize"));
    assert!(adds(&d)[0].1.contains("over max-message-size"));
    let d = decide(big, &inbound(&c), &c.actions, Fallback::Reject, h);
    assert!(matches!(
        d.reply,
        Reply::Reject {
            code: 552,
            enhanced: "5.3.4",
            ..
        }
    ));
}

#[test]
fn header_values_from_rspamd_cannot_inject_headers() {
    use spam_milter::decision::folded;
    assert_eq!(folded("a\nX-Evil: 1"), "a\n\tX-Evil: 1");
    assert_eq!(folded("a;\n\tb\r\n"), "a;\n\tb");
    assert_eq!(folded("a\n\n\nb"), "a\n\tb");
    let c = Config::default();
    let r =
        json(r#"{"action":"no action","milter":{"add_headers":{"X-Note":"ok\nBcc: victim@x"}}}"#);
    let d = run(&r, &inbound(&c), &c, HDRS);
    assert!(adds(&d).contains(&("X-Note".into(), "ok\n\tBcc: victim@x".into())));
}

#[test]
fn the_milter_blocks_spam_header_sets_what_add_header_writes() {
    let c = Config::default();
    let r = json(r#"{"action":"add header","milter":{"spam_header":"Yes, score 7"}}"#);
    let d = run(&r, &inbound(&c), &c, HDRS);
    assert_eq!(
        adds(&d),
        [("X-Spam".to_string(), "Yes, score 7".to_string())]
    );
    let r = json(
        r#"{"action":"add header","milter":{"spam_header":{"X-Spam-Flag":"YES","X-Spam":"Yes"}}}"#,
    );
    let d = run(&r, &inbound(&c), &c, &["From", "X-Spam-Flag"]);
    assert_eq!(
        adds(&d),
        [
            ("X-Spam-Flag".to_string(), "YES".to_string()),
            ("X-Spam".to_string(), "Yes".to_string())
        ]
    );
    assert!(d.edits.contains(&Edit::Delete {
        name: "X-Spam-Flag".into(),
        occurrence: 1
    }));
}

#[test]
fn reply_texts_are_one_clean_bounded_line() {
    assert_eq!(reply_text(&[Some(" a\r\nb\tc ")], "x"), "a b c");
    assert_eq!(reply_text(&[None, Some("  ")], "fallback"), "fallback");
    assert_eq!(
        reply_text(&[Some(&"é".repeat(500))], "x").chars().count(),
        200
    );
}
