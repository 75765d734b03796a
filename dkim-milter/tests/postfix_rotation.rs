//! Safe key rotation through real Postfix: a key dropped into the keys dir before its
//! DNS record exists does not sign; the previous key keeps signing until the (loopback
//! stub) DNS publishes the new one, then the new one signs. Every signature is checked
//! by dkimpy and `opendkim -t`.

mod support;

use stack_tests::postfix::Postfix;
use support::*;

fn send(pf: &Postfix, subject: &str, n: usize) -> Vec<u8> {
    pf.sendmail(
        &["-f", "a@rot.test", "-i", "friend@remote.test"],
        &message("a@rot.test", "friend@remote.test", subject),
    )
    .unwrap();
    by_subject(&pf.sink().wait_for(n, T).unwrap(), subject)
}

fn selector(msg: &[u8]) -> Option<String> {
    tag(&header_values(msg, "DKIM-Signature")[0], "s")
}

#[test]
fn new_key_waits_for_its_dns_record_then_signs() {
    let keys = tempfile::tempdir().unwrap();
    let a = genkey(keys.path(), "rot.test", "a", 2048);
    let d = Daemon::start(keys.path(), "key-recheck-seconds = 1\n");
    let (a_name, a_rec) = a.record();
    d.dns().add_txt(&a_name, &a_rec).unwrap();
    d.wait_lines(
        "rot.test: s=a: DNS a._domainkey.rot.test: published, matches",
        1,
    );
    let pf = Postfix::builder()
        .non_smtpd_milters(&d.spec())
        .start()
        .unwrap();
    let msg = send(&pf, "before rotation", 1);
    assert_eq!(selector(&msg).as_deref(), Some("a"));
    assert_verifies(&msg, &[a.record()], 1);

    // b: a higher name and a newer file, so the selector rule alone would pick it now.
    let b = genkey(keys.path(), "rot.test", "b", 2048);
    d.wait_lines(
        "rot.test: s=b: DNS b._domainkey.rot.test: not published (NXDOMAIN or no TXT record); \
         not used until its record is published",
        1,
    );
    assert!(!d.dns().queries_for(&b.dns_name()).is_empty());
    let msg = send(&pf, "record not yet published", 2);
    assert_eq!(
        selector(&msg).as_deref(),
        Some("a"),
        "b signed before DNS had it"
    );
    assert_verifies(&msg, &[a.record()], 1);

    let (b_name, b_rec) = b.record();
    d.dns().add_txt(&b_name, &b_rec).unwrap();
    d.wait_lines(
        "rot.test: s=b (rsa) signs: newest key published in DNS and matching; was s=a",
        1,
    );
    let msg = send(&pf, "record published", 3);
    assert_eq!(selector(&msg).as_deref(), Some("b"));
    // Only b's record: the signature needs the new key.
    assert_verifies(&msg, &[b.record()], 1);
}

/// The control: with `key-activation = "immediate"` (the old behaviour) the same new key
/// signs before its record exists, and DKIM fails at the receivers.
#[test]
fn immediate_activation_signs_with_an_unpublished_key() {
    let keys = tempfile::tempdir().unwrap();
    let a = genkey(keys.path(), "rot.test", "a", 2048);
    let d = Daemon::start(keys.path(), "key-activation = \"immediate\"\n");
    d.dns().add_txt(&a.dns_name(), &a.txt_record).unwrap();
    let pf = Postfix::builder()
        .non_smtpd_milters(&d.spec())
        .start()
        .unwrap();
    let b = genkey(keys.path(), "rot.test", "b", 2048);
    d.wait_lines("rot.test: s=b rsa-2048", 1);
    let msg = send(&pf, "immediate", 1);
    assert_eq!(selector(&msg).as_deref(), Some("b"));
    assert!(
        d.dns().queries_for(&b.dns_name()).is_empty(),
        "no DNS check"
    );
    // Signed with b, whose record a receiver does not find yet.
    let py = stack_tests::dkim::dkimpy_verify(&msg, &[a.record()]).unwrap();
    assert!(!py.all_pass, "{}", py.output);
}
