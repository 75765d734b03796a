//! Arbitrary bytes through spam_milter::reply::parse, with the default limits and with small
//! ones; checks that caps hold, kept values are clean, and caps never change a verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spam_milter::reply::{
    Action, MAX_SPAM_HEADERS, ReplyError, ReplyLimits, ScanReply, SpamHeader, parse,
};

const SMALL: ReplyLimits = ReplyLimits {
    max_bytes: 1 << 20,
    max_symbols: 8,
    max_add_headers: 4,
    max_remove_headers: 4,
    max_header_value: 64,
};

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

fn check_value(value: &str, limits: &ReplyLimits) {
    assert!(!value.is_empty());
    assert!(value.len() <= limits.max_header_value);
    assert!(!value.contains('\0'));
    assert!(!value.contains("\r\n"));
}

fn check_address(address: &str) {
    assert!(!address.is_empty());
    assert!(!address.contains(['\0', '\r', '\n']));
}

fn check(r: &ScanReply, limits: &ReplyLimits) {
    assert!(r.symbols.len() <= limits.max_symbols);
    assert!(r.milter.add_headers.len() <= limits.max_add_headers);
    assert!(r.milter.remove_headers.len() <= limits.max_remove_headers);
    assert!(r.dkim_signatures.len() <= limits.max_add_headers);

    assert!(r.score.is_finite() && r.required_score.is_finite());
    assert!(r.time_real.is_none_or(f64::is_finite));
    assert!(r.symbols.iter().all(|s| s.score.is_finite()));
    assert!(r.thresholds.iter().all(|(_, t)| t.is_finite()));

    for h in &r.milter.add_headers {
        assert!(valid_name(&h.name), "{h:?}");
        check_value(&h.value, limits);
    }
    for h in &r.milter.remove_headers {
        assert!(valid_name(&h.name), "{h:?}");
    }
    for sig in &r.dkim_signatures {
        check_value(sig, limits);
    }
    if let Some(subject) = &r.subject {
        check_value(subject, limits);
    }
    match &r.milter.spam_header {
        Some(SpamHeader::Value(value)) => check_value(value, limits),
        Some(SpamHeader::Headers(pairs)) => {
            assert!(!pairs.is_empty() && pairs.len() <= MAX_SPAM_HEADERS);
            for (name, value) in pairs {
                assert!(valid_name(name));
                check_value(value, limits);
            }
        }
        None => {}
    }
    r.milter.change_from.iter().for_each(|a| check_address(a));
    r.milter.add_rcpt.iter().for_each(|a| check_address(a));
    r.milter.del_rcpt.iter().for_each(|a| check_address(a));

    if let Some(smtp) = &r.smtp_message {
        assert!(
            r.messages
                .iter()
                .any(|(k, v)| k == "smtp_message" && v == smtp)
        );
    }

    // The action's name maps back to the same action, and the label set is fixed.
    assert_eq!(Action::from_name(r.action.as_str()), r.action);
    assert!(matches!(
        r.action.metric_label(),
        "no_action"
            | "greylist"
            | "add_header"
            | "rewrite_subject"
            | "soft_reject"
            | "reject"
            | "discard"
            | "quarantine"
            | "other"
    ));
}

fuzz_target!(|data: &[u8]| {
    let full = parse(data, &ReplyLimits::default());
    let small = parse(data, &SMALL);

    // The size check is exact, and comes before anything else.
    if !data.is_empty() {
        let tight = ReplyLimits {
            max_bytes: data.len() - 1,
            ..SMALL
        };
        assert_eq!(
            parse(data, &tight),
            Err(ReplyError::TooLarge {
                size: data.len(),
                max: data.len() - 1
            })
        );
    }

    match (&full, &small) {
        (Ok(f), Ok(s)) => {
            check(f, &ReplyLimits::default());
            check(s, &SMALL);
            // Caps drop items; they never change the verdict.
            assert_eq!(f.action, s.action);
            assert_eq!(f.is_skipped, s.is_skipped);
            assert_eq!(f.score.to_bits(), s.score.to_bits());
            assert_eq!(f.required_score.to_bits(), s.required_score.to_bits());
            assert_eq!(f.smtp_message, s.smtp_message);
            assert_eq!(f.messages, s.messages);
            assert_eq!(f.milter.no_action, s.milter.no_action);
            assert_eq!(f.milter.reject, s.milter.reject);
            assert_eq!(f.milter.change_from, s.milter.change_from);
            // Symbols are kept in order up to the cap, and what the cap dropped is counted.
            let n = f.symbols.len().min(SMALL.max_symbols);
            assert_eq!(s.symbols[..], f.symbols[..n]);
            if s.symbols.len() < f.symbols.len()
                || s.milter.remove_headers.len() < f.milter.remove_headers.len()
                || s.milter.add_headers.len() < f.milter.add_headers.len()
                || s.dkim_signatures.len() < f.dkim_signatures.len()
            {
                assert!(s.truncated > 0);
            }
        }
        // Reading less can only avoid an error: what is skipped (unknown keys, items over a
        // cap, unused sub-fields) is checked for JSON syntax but not for UTF-8 or escapes,
        // so small caps may accept a body the default ones refuse.
        (Err(ReplyError::Json(_)), Ok(s)) => check(s, &SMALL),
        (Err(ReplyError::Json(_)), Err(ReplyError::Json(_) | ReplyError::MissingAction)) => {}
        (Err(ReplyError::MissingAction), Err(ReplyError::MissingAction)) => {}
        _ => panic!("caps changed the outcome: {full:?} / {small:?}"),
    }
});
