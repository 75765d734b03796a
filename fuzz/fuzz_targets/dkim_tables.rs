//! Arbitrary text through dkim-milter's OpenDKIM table parsers: as a KeyTable, and as a
//! SigningTable of both kinds (`file:` exact keys, `refile:` wildcards), then lookups.
//!
//! Checked: no panic; errors name the file and a line of the text (`path:line: `); a
//! comment line in front moves every line number (entries' and errors') down by one and
//! changes nothing else; KeyTable entries have unique names, non-empty lowercase domains,
//! selectors without `:`, trimmed keys, a path exactly when the
//! key starts with `/`, `./` or `../`, and `get` finds each by name; SigningTable entries
//! keep file order with lowercase patterns and key names without spaces
//! or `:`. Lookups:
//! at most one entry unless `multiple`, and then a prefix of the `multiple` answer,
//! without duplicates; a `refile:` answer is the matching entries in file order; a
//! `file:` answer only holds entries whose pattern is one of the address's lookup keys;
//! each entry is found by an address made from its own pattern; `*` matches any text.
#![no_main]

use std::path::Path;

use dkim_milter::tables::{
    KeySource, KeyTable, SigningTable, TableError, TableKind, exact_keys, wildcard_match,
};
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/etc/opendkim/KeyTable";

fn check_error(e: &TableError, text: &str) {
    assert_eq!(e.path, Path::new(PATH));
    assert!(e.line >= 1 && e.line <= text.lines().count(), "{e}");
    assert!(e.to_string().starts_with(&format!("{PATH}:{}: ", e.line)));
}

fn check_key_table(t: &KeyTable, text: &str) {
    let lines = text.lines().count();
    let mut last = 0;
    for (i, e) in t.entries.iter().enumerate() {
        assert!(e.line > last && e.line <= lines, "line {}", e.line);
        last = e.line;
        assert!(!e.name.is_empty() && !e.name.contains(char::is_whitespace));
        assert!(!e.name.contains('#'));
        assert!(t.entries[..i].iter().all(|o| o.name != e.name), "duplicate");
        assert_eq!(t.get(&e.name), Some(e));
        assert!(!e.domain.is_empty() && !e.domain.contains(':'));
        assert_eq!(e.domain, e.domain.to_ascii_lowercase());
        assert!(!e.selector.is_empty() && !e.selector.contains(':'));
        let key = match &e.key {
            KeySource::Path(p) => {
                assert!(p.starts_with('/') || p.starts_with("./") || p.starts_with("../"));
                p
            }
            KeySource::Inline(k) => {
                assert!(!(k.starts_with('/') || k.starts_with("./") || k.starts_with("../")));
                k
            }
        };
        assert!(!key.is_empty() && key.trim() == key);
    }
}

fn check_signing_table(t: &SigningTable, text: &str, kind: TableKind) {
    assert_eq!(t.kind, kind);
    let lines = text.lines().count();
    let mut last = 0;
    for e in &t.entries {
        assert!(e.line > last && e.line <= lines);
        last = e.line;
        assert!(!e.pattern.is_empty() && !e.pattern.contains(char::is_whitespace));
        assert_eq!(e.pattern, e.pattern.to_ascii_lowercase());
        // (An empty key name, from `pattern :signer`, is let through here and reported
        // when the KeyTable has no such key.)
        assert!(!e.key_name.contains(char::is_whitespace) && !e.key_name.contains(':'));
    }

    let mut addresses: Vec<String> = vec!["user@example.com".into(), "Boss@Sub.Example.COM".into()];
    for e in t.entries.iter().take(8) {
        addresses.push(e.pattern.replace('*', ""));
        addresses.push(e.pattern.replace('*', "x@y."));
        // Each entry is reachable from its own pattern.
        let own = e.pattern.replace('*', "");
        let found = t.lookup(&own, true);
        match kind {
            TableKind::Refile => {
                assert!(wildcard_match(&e.pattern, &e.pattern));
                assert!(wildcard_match(&e.pattern, &own));
                assert!(found.contains(&e), "{:?} not found by {own:?}", e.pattern);
            }
            TableKind::File if !e.pattern.starts_with('@') && !e.pattern.contains('*') => {
                assert!(found.contains(&e), "{:?} not found", e.pattern);
            }
            TableKind::File => {}
        }
    }
    for a in addresses.iter().take(12) {
        let all = t.lookup(a, true);
        let first = t.lookup(a, false);
        assert!(first.len() <= 1);
        assert_eq!(first.first(), all.first(), "{a:?}");
        for (i, e) in all.iter().enumerate() {
            assert!(!all[..i].contains(e), "duplicate answer for {a:?}");
        }
        let lower = a.to_ascii_lowercase();
        match kind {
            TableKind::Refile => {
                let expected: Vec<_> = t
                    .entries
                    .iter()
                    .filter(|e| wildcard_match(&e.pattern, &lower))
                    .collect();
                assert_eq!(all, expected, "{a:?}");
            }
            TableKind::File => {
                let keys = exact_keys(&lower);
                assert!(all.iter().all(|e| keys.contains(&e.pattern)), "{a:?}");
                if let Some(e) = first.first() {
                    // The first answer comes from the earliest key that has an entry.
                    let k = keys.iter().position(|k| *k == e.pattern).expect("key");
                    assert!(
                        keys[..k]
                            .iter()
                            .all(|k| t.entries.iter().all(|x| x.pattern != *k))
                    );
                }
            }
        }
    }
}

fn shift_key_table(t: &KeyTable) -> KeyTable {
    let mut t = t.clone();
    t.entries.iter_mut().for_each(|e| e.line += 1);
    t
}

fn shift_signing_table(t: &SigningTable) -> SigningTable {
    let mut t = t.clone();
    t.entries.iter_mut().for_each(|e| e.line += 1);
    t
}

fn shift_error(e: &TableError) -> TableError {
    TableError {
        line: e.line + 1,
        ..e.clone()
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(PATH);
    let shifted_text = format!("# fuzz\n{text}");

    let kt = KeyTable::parse(text, path);
    match &kt {
        Ok(t) => check_key_table(t, text),
        Err(e) => check_error(e, text),
    }
    let again = KeyTable::parse(&shifted_text, path);
    assert_eq!(
        again,
        kt.as_ref().map(shift_key_table).map_err(shift_error),
        "a leading comment changed the KeyTable"
    );

    for kind in [TableKind::File, TableKind::Refile] {
        let st = SigningTable::parse(text, path, kind);
        match &st {
            Ok(t) => check_signing_table(t, text, kind),
            Err(e) => check_error(e, text),
        }
        let again = SigningTable::parse(&shifted_text, path, kind);
        assert_eq!(
            again,
            st.as_ref().map(shift_signing_table).map_err(shift_error),
            "a leading comment changed the SigningTable"
        );
    }
});
