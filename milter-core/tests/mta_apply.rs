//! Applying modifications like Postfix's cleanup: header index rules, leading space,
//! folds, body replacement, envelope changes, and byte-exactness of everything untouched.

use bytes::Bytes;
use milter_core::Modification;
use milter_core::client::{EnvelopeChanges, Message};

const MSG: &[u8] = b"Subject: one\r\nX-A: 1\r\nx-a: 2\nFrom: a@example.test\r\nX-A:3\r\n  folded\r\n\r\nbody\nline\r\n";

fn change(index: u32, name: &str, value: &str) -> Modification {
    Modification::ChangeHeader {
        index,
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn insert(index: u32, name: &str, value: &str) -> Modification {
    Modification::InsertHeader {
        index,
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn add(name: &str, value: &str) -> Modification {
    Modification::AddHeader {
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn apply(msg: &[u8], mods: &[Modification], leading_space: bool) -> String {
    let mut m = Message::parse(msg);
    m.apply_all(mods, leading_space);
    String::from_utf8(m.to_bytes()).unwrap()
}

#[test]
fn untouched_messages_are_byte_exact() {
    for msg in [
        MSG,
        b"no header block at all\n",
        b"A: 1\n\n",
        b"A: 1",
        b"",
        b"A: 1\r\nnot a header line\r\nB: 2\r\n\r\nbody",
        b"A: 1\r\n\r\n\r\n\r\n",
        b"A: caf\xc3\xa9\r\nB: \xff\xfe\r\n\r\n\x00\x01",
    ] {
        assert_eq!(
            Message::parse(msg).to_bytes(),
            msg,
            "{:?}",
            String::from_utf8_lossy(msg)
        );
    }
}

#[test]
fn parse_sees_headers_as_the_milter_does() {
    let m = Message::parse(MSG);
    let h: Vec<(String, String)> = m
        .milter_headers()
        .map(|f| {
            (
                String::from_utf8_lossy(f.name()).into(),
                String::from_utf8_lossy(f.value()).into(),
            )
        })
        .collect();
    assert_eq!(
        h,
        vec![
            ("Subject".into(), " one".into()),
            ("X-A".into(), " 1".into()),
            ("x-a".into(), " 2".into()),
            ("From".into(), " a@example.test".into()),
            ("X-A".into(), "3\r\n  folded".into()),
        ]
    );
    assert_eq!(m.body(), b"body\nline\r\n");
    assert_eq!(m.milter_body(), b"body\r\nline\r\n");
}

#[test]
fn change_header_counts_per_name_case_insensitively_from_1() {
    let out = apply(MSG, &[change(2, "X-A", " two")], true);
    assert_eq!(
        out,
        "Subject: one\r\nX-A: 1\r\nX-A: two\r\nFrom: a@example.test\r\nX-A:3\r\n  folded\r\n\r\nbody\nline\r\n"
    );
}

#[test]
fn change_header_index_0_is_treated_as_1() {
    let out = apply(MSG, &[change(0, "x-A", " first")], true);
    assert!(
        out.starts_with("Subject: one\r\nx-A: first\r\nx-a: 2\n"),
        "{out}"
    );
}

#[test]
fn change_header_past_the_last_instance_appends() {
    let out = apply(MSG, &[change(9, "X-A", " new")], true);
    assert!(
        out.ends_with("  folded\r\nX-A: new\r\n\r\nbody\nline\r\n"),
        "{out}"
    );
}

#[test]
fn empty_value_deletes_and_deleting_a_missing_header_does_nothing() {
    let out = apply(MSG, &[change(3, "X-A", "")], true);
    assert_eq!(
        out,
        "Subject: one\r\nX-A: 1\r\nx-a: 2\nFrom: a@example.test\r\n\r\nbody\nline\r\n"
    );
    assert_eq!(apply(MSG, &[change(4, "X-A", "")], true).as_bytes(), MSG);
    assert_eq!(apply(MSG, &[change(1, "Nope", "")], true).as_bytes(), MSG);
}

#[test]
fn insert_header_is_0_based_over_all_headers() {
    let out = apply(MSG, &[insert(0, "DKIM-Signature", " v=1")], true);
    assert!(
        out.starts_with("DKIM-Signature: v=1\r\nSubject: one\r\n"),
        "{out}"
    );
    let out = apply(MSG, &[insert(2, "X-B", " b")], true);
    assert!(
        out.starts_with("Subject: one\r\nX-A: 1\r\nX-B: b\r\nx-a: 2\n"),
        "{out}"
    );
    let out = apply(MSG, &[insert(100, "X-B", " b")], true);
    assert!(
        out.ends_with("  folded\r\nX-B: b\r\n\r\nbody\nline\r\n"),
        "{out}"
    );
}

#[test]
fn the_hidden_received_header_counts_for_insert_but_not_for_change() {
    let hidden = b"Received: from client by mx; now\r\n";
    let mut m = Message::parse(MSG).with_hidden_header(hidden);
    assert_eq!(m.milter_headers().count(), 5, "the milter never sees it");
    m.apply_all(
        &[
            insert(0, "DKIM-Signature", " top"),
            insert(3, "X-After-Subject", " y"),
            change(1, "Received", " changed"),
        ],
        true,
    );
    let out = String::from_utf8(m.to_bytes()).unwrap();
    // Index 0 is above the MTA's Received:; applied in order, index 3 then counts the new
    // header and the Received: and lands after Subject;
    // CHGHEADER Received #1 finds no visible Received: and appends.
    assert!(
        out.starts_with(
            "DKIM-Signature: top\r\nReceived: from client by mx; now\r\nSubject: one\r\nX-After-Subject: y\r\nX-A: 1\r\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("  folded\r\nReceived: changed\r\n\r\n"),
        "{out}"
    );
}

#[test]
fn add_header_appends_to_the_header_block() {
    let out = apply(MSG, &[add("X-Spam", " No"), add("X-Two", " 2")], true);
    assert!(
        out.ends_with("  folded\r\nX-Spam: No\r\nX-Two: 2\r\n\r\nbody\nline\r\n"),
        "{out}"
    );
}

#[test]
fn without_leading_space_one_space_is_added_to_new_values() {
    let out = apply(
        MSG,
        &[add("X-Spam", "No"), change(1, "Subject", "two")],
        false,
    );
    assert!(out.starts_with("Subject: two\r\n"), "{out}");
    assert!(out.contains("X-Spam: No\r\n\r\n"), "{out}");
    // With it, the value is used as sent, even without a space.
    let out = apply(MSG, &[add("X-Spam", "No")], true);
    assert!(out.contains("X-Spam:No\r\n\r\n"), "{out}");
}

#[test]
fn lf_folds_in_values_become_crlf() {
    let out = apply(MSG, &[add("X-Long", " a;\n\tb;\r\n\tc")], true);
    assert!(out.contains("X-Long: a;\r\n\tb;\r\n\tc\r\n\r\n"), "{out}");
}

#[test]
fn replace_body_joins_chunks_and_uses_crlf() {
    let out = apply(
        MSG,
        &[
            Modification::ReplaceBody(Bytes::from_static(b"new\nbo")),
            Modification::ReplaceBody(Bytes::from_static(b"dy\n")),
        ],
        true,
    );
    assert!(out.ends_with("  folded\r\n\r\nnew\r\nbody\r\n"), "{out}");
}

#[test]
fn untouched_headers_keep_their_bytes_when_others_change() {
    let out = apply(
        MSG,
        &[change(1, "Subject", " changed"), insert(0, "X-Top", " t")],
        true,
    );
    // The odd LF-only line and the folded field are kept exactly.
    assert_eq!(
        out,
        "X-Top: t\r\nSubject: changed\r\nX-A: 1\r\nx-a: 2\nFrom: a@example.test\r\nX-A:3\r\n  folded\r\n\r\nbody\nline\r\n"
    );
}

#[test]
fn envelope_changes() {
    let mut e = EnvelopeChanges::new("<a@x>", &["b@y".into(), "<c@y>".into()]);
    for m in [
        Modification::ChangeFrom {
            address: Bytes::from_static(b"<new@x>"),
            args: Some(Bytes::from_static(b"RET=HDRS")),
        },
        Modification::AddRcpt {
            address: Bytes::from_static(b"<d@z>"),
        },
        Modification::AddRcptWithArgs {
            address: Bytes::from_static(b"e@z"),
            args: Some(Bytes::from_static(b"NOTIFY=NEVER")),
        },
        Modification::DeleteRcpt {
            address: Bytes::from_static(b"<B@y>"),
        },
        Modification::Quarantine {
            reason: Bytes::from_static(b"held"),
        },
    ] {
        e.apply(&m);
    }
    assert_eq!(e.sender, "new@x");
    assert_eq!(e.sender_args.as_deref(), Some("RET=HDRS"));
    assert_eq!(
        e.recipients,
        vec![
            ("c@y".to_owned(), None),
            ("d@z".to_owned(), None),
            ("e@z".to_owned(), Some("NOTIFY=NEVER".to_owned()))
        ]
    );
    assert_eq!(e.quarantine.as_deref(), Some("held"));
}
