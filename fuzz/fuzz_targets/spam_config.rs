//! Arbitrary text through spam-milter's `Config::parse`, and every config that parses on
//! through what the daemon does with it: the policy for a few envelopes, the Rspamd
//! request headers and the decision for fixed scan results (real Rspamd replies from
//! `spam-milter/tests/samples/`, each action, and the failure outcomes).
//!
//! Checked: no panic; errors name the file (and a line within the text); the path is only
//! used in messages; a leading comment line only moves an error's line; a config that
//! parses keeps every rule the validation promises (upstream URLs, timeouts, limits,
//! header names, one-line texts, JSON-object settings, domain and address keys); every
//! request header is a single clean line; every decision is something the milter can
//! send: a 4xx/5xx with a matching enhanced code and a text `SmtpReply` accepts, header
//! edits that milter-core's `Modification::validate` accepts (valid names, line breaks
//! only as folds), a non-empty one-line quarantine reason, a one-line summary; observe
//! mode never refuses, quarantines or rewrites the subject.
#![no_main]

#[path = "common/config_checks.rs"]
mod config_checks;

use std::sync::LazyLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use milter_core::{Modification, SmtpReply};
use spam_milter::config::{Config, Mode, is_field_name};
use spam_milter::decision::{Decision, Edit, Headers, Outcome, Reply, decide};
use spam_milter::message::{Connection, Envelope};
use spam_milter::policy::{Policy, resolve};
use spam_milter::reply::{ReplyLimits, ScanReply, parse};
use spam_milter::request;

/// Scan results to decide on: the real Rspamd 3.4 replies, then one per other action.
static REPLIES: LazyLock<Vec<ScanReply>> = LazyLock::new(|| {
    let samples: [&[u8]; 5] = [
        include_bytes!("../../spam-milter/tests/samples/gtube.json"),
        include_bytes!("../../spam-milter/tests/samples/test-pattern-add-header.json"),
        include_bytes!("../../spam-milter/tests/samples/test-pattern-rewrite-subject.json"),
        include_bytes!("../../spam-milter/tests/samples/normal-inbound-loopback-milterflags.json"),
        include_bytes!("../../spam-milter/tests/samples/normal-outbound-authenticated.json"),
    ];
    let synthetic = [
        r#"{"action":"soft reject","score":9,"required_score":15,"messages":{"smtp_message":"Try\nlater"}}"#,
        r#"{"action":"soft reject","score":9,"required_score":15}"#,
        r#"{"action":"reject","score":20,"required_score":15}"#,
        r#"{"action":"greylist","score":5,"required_score":15}"#,
        r#"{"action":"rewrite subject","score":7,"required_score":15}"#,
        r#"{"action":"reject","score":20,"required_score":15,"milter":{"reject":"quarantine"}}"#,
        r#"{"action":"discard","score":30,"required_score":15}"#,
        r#"{"action":"quarantine","score":30,"required_score":15}"#,
        r#"{"action":"custom","score":1,"required_score":15}"#,
    ];
    samples
        .into_iter()
        .chain(synthetic.iter().map(|s| s.as_bytes()))
        .map(|b| parse(b, &ReplyLimits::default()).expect("fixed scan reply parses"))
        .collect()
});

const HEADER_NAMES: [&str; 6] = [
    "Received",
    "From",
    "Subject",
    "X-Spam",
    "X-Rspamd-Score",
    "X-Spam-Milter",
];

fn check_config(c: &Config) {
    let r = &c.rspamd;
    assert!(!r.upstreams.is_empty());
    for u in &r.upstreams {
        assert!(spam_milter::upstream::parse_base_url(u).is_ok(), "{u:?}");
    }
    assert!(!r.attempt_timeout.get().is_zero() && !r.scan_deadline.get().is_zero());
    assert!(r.scan_deadline.get().as_secs() < 300);
    assert!(r.breaker_failures >= 1);
    assert!(r.health_check_interval.get().as_millis() >= 100);
    assert!(c.max_connections >= 1 && c.max_message_size >= 1024);
    assert!(c.reload_poll_seconds >= 1);
    let a = &c.actions;
    assert!(is_field_name(&a.spam_header));
    for h in [&a.score_header, &a.symbols_header, &a.status_header] {
        assert!(h.is_empty() || is_field_name(h), "{h:?}");
    }
    for text in [
        &a.reject_message,
        &a.tempfail_message,
        &a.greylist_message,
        &a.quarantine_message,
        &a.spam_header_value,
    ] {
        assert!(!text.trim().is_empty() && !text.chars().any(char::is_control));
    }
    for s in [&c.inbound.settings, &c.outbound.settings]
        .into_iter()
        .chain(c.listener.values().map(|l| &l.settings))
        .chain(
            c.domain
                .values()
                .chain(c.address.values())
                .map(|s| &s.settings),
        )
        .flatten()
    {
        let v: serde_json::Value = serde_json::from_str(s).expect("settings are JSON");
        assert!(v.is_object());
    }
    assert!(
        c.domain
            .keys()
            .all(|d| !d.contains('@') && !d.trim().is_empty())
    );
    assert!(c.address.keys().all(|a| a.contains('@')));
}

/// The envelopes the config is tried with: plain inbound, authenticated, each of a few
/// listeners, and inbound and outbound mail for a few configured domains and addresses.
fn cases(c: &Config) -> Vec<(Connection, Envelope)> {
    let conn = Connection {
        client_addr: Some("192.0.2.1".parse().expect("address")),
        client_name: Some("mx.remote.test".into()),
        helo: Some("mx.remote.test".into()),
        daemon_name: Some("smtpd".into()),
        mta_host: Some("mx.example.test".into()),
        tls_version: None,
        tls_cipher: None,
    };
    let env = Envelope {
        from: "<a@remote.test>".into(),
        rcpts: vec!["<u@example.test>".into()],
        auth_user: None,
        queue_id: Some("4ABCD".into()),
    };
    let auth = Envelope {
        from: "<user@example.test>".into(),
        auth_user: Some("user@example.test".into()),
        ..env.clone()
    };
    let mut out = vec![(conn.clone(), env.clone()), (conn.clone(), auth.clone())];
    for name in c.listener.keys().take(3) {
        let conn = Connection {
            daemon_name: Some(name.clone()),
            ..conn.clone()
        };
        out.push((conn.clone(), env.clone()));
        out.push((conn, auth.clone()));
    }
    let parties = c
        .domain
        .keys()
        .take(3)
        .map(|d| format!("<x@{d}>"))
        .chain(c.address.keys().take(3).map(|a| format!("<{a}>")));
    for p in parties {
        let inbound = Envelope {
            rcpts: vec![p.clone(), "<u@example.test>".into()],
            ..env.clone()
        };
        let single = Envelope {
            rcpts: vec![p.clone()],
            ..env.clone()
        };
        let outbound = Envelope {
            from: p,
            ..auth.clone()
        };
        out.extend([inbound, single, outbound].map(|e| (conn.clone(), e)));
    }
    out
}

fn one_line(s: &str) -> bool {
    !s.contains(['\r', '\n', '\0'])
}

fn check_decision(d: &Decision, policy: &Policy, scanned: bool) {
    match &d.reply {
        Reply::Accept | Reply::Discard => {}
        Reply::Reject {
            code,
            enhanced,
            text,
        }
        | Reply::Tempfail {
            code,
            enhanced,
            text,
        } => {
            let class = if matches!(d.reply, Reply::Reject { .. }) {
                5
            } else {
                4
            };
            assert_eq!(code / 100, class, "{:?}", d.reply);
            assert!(enhanced.starts_with(&format!("{class}.")));
            if let Err(e) = SmtpReply::new(*code, Some(enhanced), text) {
                panic!("reply {:?} cannot be sent: {e}", d.reply);
            }
        }
    }
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    for e in &d.edits {
        let m = match e {
            Edit::Delete { name, occurrence } => Modification::delete_header(b(name), *occurrence),
            Edit::Change {
                name,
                occurrence,
                value,
            } => Modification::ChangeHeader {
                index: *occurrence,
                name: b(name),
                value: b(value),
            },
            Edit::Insert { index, name, value } => Modification::InsertHeader {
                index: *index,
                name: b(name),
                value: b(value),
            },
            Edit::Add { name, value } => Modification::AddHeader {
                name: b(name),
                value: b(value),
            },
            Edit::ChangeFrom(a) => Modification::ChangeFrom {
                address: b(a),
                args: None,
            },
            Edit::AddRcpt(a) => Modification::AddRcpt { address: b(a) },
            Edit::DelRcpt(a) => Modification::DeleteRcpt { address: b(a) },
        };
        if let Err(err) = m.validate() {
            panic!("edit {e:?} cannot be sent: {err}");
        }
    }
    if let Some(q) = &d.quarantine {
        assert!(
            !q.trim().is_empty() && !q.chars().any(char::is_control),
            "{q:?}"
        );
    }
    assert!(one_line(&d.summary), "summary {:?}", d.summary);
    if scanned && policy.mode == Mode::Observe {
        assert_eq!(d.reply, Reply::Accept, "observe mode refused");
        assert!(d.quarantine.is_none());
        assert!(!d.edits.iter().any(|e| matches!(e, Edit::Change { .. })));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(c) = config_checks::parse_three_ways(text, Config::parse) else {
        return;
    };
    check_config(&c);

    let names: Vec<Box<str>> = HEADER_NAMES.iter().map(|n| Box::from(*n)).collect();
    let mta_name = c.rspamd.mta_name.as_deref().unwrap_or("mx.example.test");
    for (conn, env) in cases(&c) {
        let policy = resolve(&c, &conn, &env);
        for (k, v) in request::headers(&conn, &env, &policy, mta_name) {
            assert!(is_field_name(&k), "request header name {k:?}");
            assert!(
                !v.is_empty() && !v.chars().any(char::is_control),
                "{k}: {v:?}"
            );
        }
        for subject in [Some("hello"), None] {
            let headers = Headers {
                names: &names,
                subject,
            };
            let mut outcomes = vec![
                (Outcome::Skipped, false),
                (
                    Outcome::Oversize {
                        size: c.max_message_size + 1,
                        max: c.max_message_size,
                    },
                    false,
                ),
                (
                    Outcome::Failed {
                        label: "timeout",
                        detail: "deadline",
                    },
                    false,
                ),
            ];
            outcomes.extend(REPLIES.iter().map(|r| (Outcome::Scanned(r), true)));
            for (outcome, scanned) in outcomes {
                let d = decide(outcome, &policy, &c.actions, c.on_oversize, headers);
                check_decision(&d, &policy, scanned);
            }
        }
    }
});
