//! Messages signed by our signer, fed the milter way, checked by the independent
//! verifiers: dkimpy (primary oracle) and `opendkim -t` (relaxed, well-formed cases).
//! Keys come from opendkim-genkey, openssl and our own keygen.

use std::path::Path;
use std::sync::Arc;

use dkim_milter::config::Config;
use dkim_milter::keygen::{self, Algo};
use dkim_milter::reload::State;
use dkim_milter::transaction::{Facts, Transaction};
use stack_tests::dkim::{dkimpy_verify, opendkim_genkey, opendkim_test_verify};

const HEADERS: &[(&str, &str)] = &[
    (
        "Received",
        " from client (client [198.51.100.7])\n\tby mx.test; Fri, 28 Nov 2026 10:00:00 +0000",
    ),
    ("From", " \"Joe Sender\" <joe@example.com>"),
    ("To", " You <you@example.org>"),
    ("Subject", " Interop test with a folded\n\tsubject line"),
    ("Date", " Fri, 28 Nov 2026 10:00:00 +0000"),
    ("Message-ID", " <interop-1@example.com>"),
    ("MIME-Version", " 1.0"),
    ("Content-Type", " text/plain; charset=utf-8"),
];

const BODY: &[&[u8]] = &[
    b"Hello,  this has   spaces \t\r\nand trailing whitespace   \r\n",
    b"\r\n8-bit: caf\xc3\xa9 \r\nsplit line acr",
    b"oss chunks\r\n\r\n\r\n",
];

fn state(f: impl FnOnce(&mut Config)) -> Arc<State> {
    let mut c = Config {
        authserv_id: Some("mx.test".into()),
        ..Config::default()
    };
    f(&mut c);
    Arc::new(State::from_config(c, None).expect("state loads"))
}

/// Runs a message through a Transaction as an authenticated submission and returns the
/// message as the MTA would deliver it, plus the log line.
fn sign(st: Arc<State>, from: &str) -> (Vec<u8>, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut tx = Transaction::new(
        st,
        Facts {
            auth_type: Some("PLAIN".into()),
            auth_authen: Some("joe@example.com".into()),
            client_addr: Some("198.51.100.7".parse().unwrap()),
            ..Facts::default()
        },
        true,
    );
    let from_h = format!(" {from}");
    let headers: Vec<(&str, &str)> = HEADERS
        .iter()
        .map(|(n, v)| {
            if *n == "From" {
                (*n, from_h.as_str())
            } else {
                (*n, *v)
            }
        })
        .collect();
    for (n, v) in &headers {
        tx.header(n.as_bytes(), v.as_bytes());
    }
    tx.end_of_headers();
    for c in BODY {
        tx.body(c);
    }
    let out = rt.block_on(tx.end_of_message(None));
    assert!(out.tempfail.is_none(), "{}", out.log);
    let mut m = Vec::new();
    // Each insert went to index 0 in order, so the last one is on top.
    for (n, v) in out.insert_top.iter().rev() {
        m.extend_from_slice(format!("{n}:{}\r\n", v.replace('\n', "\r\n")).as_bytes());
    }
    for (n, v) in &headers {
        m.extend_from_slice(format!("{n}:{}\r\n", v.replace('\n', "\r\n")).as_bytes());
    }
    m.extend_from_slice(b"\r\n");
    for c in BODY {
        m.extend_from_slice(c);
    }
    (m, out.log)
}

fn record_of(txt: &Path) -> String {
    dkim_milter::keys::parse_txt_file(&std::fs::read_to_string(txt).unwrap())
        .unwrap()
        .record
}

fn assert_both_pass(msg: &[u8], records: &[(String, String)], expect_sigs: usize) {
    let py = dkimpy_verify(msg, records).expect("dkimpy runs");
    assert!(py.all_pass, "dkimpy: {}", py.output);
    assert_eq!(py.lines.len(), expect_sigs, "dkimpy: {}", py.output);
    let od = opendkim_test_verify(msg, records).expect("opendkim runs");
    assert!(od.all_pass, "opendkim -t: {}", od.output);
    // opendkim logs a "verification (...)" line for one signature only; its A-R lists all.
    assert_eq!(
        od.output.matches("dkim=pass").count(),
        expect_sigs,
        "opendkim: {}",
        od.output
    );
}

fn assert_both_fail(msg: &[u8], records: &[(String, String)]) {
    let py = dkimpy_verify(msg, records).expect("dkimpy runs");
    assert!(
        !py.all_pass,
        "dkimpy passed a tampered message: {}",
        py.output
    );
    let od = opendkim_test_verify(msg, records).expect("opendkim runs");
    assert!(
        !od.all_pass,
        "opendkim passed a tampered message: {}",
        od.output
    );
}

fn tamper(msg: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(msg).replace("Hello,", "Hellp,");
    s.into_bytes()
}

fn openssl(args: &[&str], out: &Path) {
    let o = std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(out, o.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn opendkim_genkey_pkcs8_rsa2048() {
    let t = tempfile::tempdir().unwrap();
    let k = opendkim_genkey("example.com", "gen", 2048, &t.path().join("example.com")).unwrap();
    assert!(
        std::fs::read_to_string(&k.private_key)
            .unwrap()
            .contains("BEGIN PRIVATE KEY")
    );
    let st = state(|c| c.keys_dir = t.path().to_path_buf());
    let (msg, log) = sign(st, "Joe <joe@example.com>");
    assert!(
        log.contains("signed d=example.com s=gen a=rsa-sha256"),
        "{log}"
    );
    assert_both_pass(&msg, &[k.record()], 1);
    assert_both_fail(&tamper(&msg), &[k.record()]);
}

#[test]
fn pkcs1_rsa_and_relaxed_simple() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("example.com");
    std::fs::create_dir_all(&d).unwrap();
    let k = opendkim_genkey("example.com", "p1", 2048, &d).unwrap();
    // Rewrite the key as PKCS#1 (what OpenSSL 1.1-era opendkim-genkey wrote).
    openssl(
        &[
            "rsa",
            "-traditional",
            "-in",
            k.private_key.to_str().unwrap(),
        ],
        &k.private_key,
    );
    assert!(
        std::fs::read_to_string(&k.private_key)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    let st = state(|c| {
        c.keys_dir = t.path().to_path_buf();
        c.canonicalization = "relaxed/simple".to_string().try_into().unwrap();
    });
    let (msg, _) = sign(st, "joe@example.com");
    assert!(String::from_utf8_lossy(&msg).contains("c=relaxed/simple"));
    assert_both_pass(&msg, &[k.record()], 1);
}

#[test]
fn legacy_rsa_1024() {
    let t = tempfile::tempdir().unwrap();
    let k = opendkim_genkey("example.com", "old", 1024, &t.path().join("example.com")).unwrap();
    let st = state(|c| c.keys_dir = t.path().to_path_buf());
    assert!(
        st.keys
            .notes()
            .iter()
            .any(|n| n.text.contains("under 2048")),
        "{:?}",
        st.keys.notes()
    );
    let (msg, _) = sign(st, "joe@example.com");
    assert_both_pass(&msg, &[k.record()], 1);
}

#[test]
fn dual_rsa_and_ed25519_from_our_keygen() {
    let t = tempfile::tempdir().unwrap();
    let rsa = keygen::generate(t.path(), "example.com", "rsa2026", Algo::Rsa(2048)).unwrap();
    let ed = keygen::generate(t.path(), "example.com", "ed2026", Algo::Ed25519).unwrap();
    let records = vec![
        (
            "rsa2026._domainkey.example.com".to_string(),
            record_of(&rsa.txt_path),
        ),
        (
            "ed2026._domainkey.example.com".to_string(),
            record_of(&ed.txt_path),
        ),
    ];
    let st = state(|c| c.keys_dir = t.path().to_path_buf());
    let (msg, log) = sign(st, "joe@example.com");
    assert!(
        log.contains("a=rsa-sha256") && log.contains("a=ed25519-sha256"),
        "{log}"
    );
    assert_both_pass(&msg, &records, 2);
    assert_both_fail(&tamper(&msg), &records);
}

#[test]
fn ed25519_from_openssl_pem() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("example.com");
    std::fs::create_dir_all(&d).unwrap();
    openssl(&["genpkey", "-algorithm", "ED25519"], &d.join("ed.private"));
    let k = dkim_milter::keys::parse_private_key(&std::fs::read(d.join("ed.private")).unwrap())
        .unwrap();
    let st = state(|c| c.keys_dir = t.path().to_path_buf());
    let (msg, _) = sign(st, "joe@example.com");
    assert_both_pass(
        &msg,
        &[("ed._domainkey.example.com".into(), k.dns_record())],
        1,
    );
}

#[test]
fn keytable_signingtable_panel_setup() {
    let t = tempfile::tempdir().unwrap();
    let keys = t.path().join("keys");
    let a = opendkim_genkey("example.com", "default", 2048, &keys.join("example.com")).unwrap();
    let b = opendkim_genkey("example.net", "mail", 2048, &keys.join("example.net")).unwrap();
    let kt = t.path().join("KeyTable");
    let stp = t.path().join("SigningTable");
    std::fs::write(
        &kt,
        format!(
            "default._domainkey.example.com example.com:default:{}\nmail._domainkey.example.net example.net:mail:{}\n",
            a.private_key.display(),
            b.private_key.display()
        ),
    )
    .unwrap();
    std::fs::write(
        &stp,
        "*@example.com default._domainkey.example.com\n*@*.example.net mail._domainkey.example.net\n*@example.net mail._domainkey.example.net\n",
    )
    .unwrap();
    let st = state(|c| {
        c.key_table = Some(format!("file:{}", kt.display()));
        c.signing_table = Some(format!("refile:{}", stp.display()));
    });
    let (msg, log) = sign(st.clone(), "joe@example.com");
    assert!(log.contains("d=example.com s=default"), "{log}");
    assert_both_pass(&msg, &[a.record()], 1);
    let (msg, log) = sign(st.clone(), "x@sub.example.net");
    assert!(log.contains("d=example.net s=mail"), "{log}");
    assert_both_pass(&msg, &[b.record()], 1);
    let (_, log) = sign(st, "x@unlisted.org");
    assert!(log.contains("not signed (no signing key"), "{log}");
}
