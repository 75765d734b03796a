//! The binary: `keygen`, `testkey`, `--check-config`, `--version`.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dkim-milter"))
}

#[test]
fn keygen_prints_record_and_never_overwrites() {
    let t = tempfile::tempdir().unwrap();
    let run = || {
        bin()
            .args([
                "keygen",
                "--domain",
                "example.com",
                "--selector",
                "s1",
                "--keys-dir",
            ])
            .arg(t.path())
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("s1._domainkey\tIN\tTXT\t( \"v=DKIM1; h=sha256; k=rsa; \""),
        "{out}"
    );
    // What is printed is exactly the .txt written.
    let txt = std::fs::read_to_string(t.path().join("example.com/s1.txt")).unwrap();
    assert_eq!(txt, out);
    let again = run();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
}

#[test]
fn check_config_ok_and_failures() {
    let t = tempfile::tempdir().unwrap();
    let keys = t.path().join("keys");
    let o = bin()
        .args([
            "keygen",
            "--ed25519",
            "--domain",
            "example.com",
            "--selector",
            "ed",
            "--keys-dir",
        ])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(o.status.success());
    let cfg = t.path().join("dkim.toml");
    std::fs::write(
        &cfg,
        format!("keys-dir = {keys:?}\nauthserv-id = \"mx.test\"\n"),
    )
    .unwrap();
    let o = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("configuration OK; 1 signing domain"), "{out}");
    assert!(out.contains("ed.txt matches"), "{out}");

    // A broken key: a warning naming the domain, exit 0 (every other domain would sign);
    // exit 1 with --strict.
    std::fs::write(keys.join("example.com/ed.private"), "junk").unwrap();
    let check = |extra: &[&str]| {
        let o = bin()
            .arg("--config")
            .arg(&cfg)
            .arg("--check-config")
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, out) = check(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("warning: example.com: not signing"), "{out}");
    assert!(
        out.contains("configuration OK; 0 signing domain(s)/key(s) (1 warning(s) above"),
        "{out}"
    );
    let (code, out) = check(&["--strict"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("warning: example.com: not signing"), "{out}");
    assert!(out.contains("failing because of --strict"), "{out}");

    // What stops the daemon is an error: an unknown user or socket group.
    for (extra, needle) in [
        (
            "user = \"no-such-user-here\"",
            "error: user \"no-such-user-here\": no such user",
        ),
        (
            "socket = \"unix:/tmp/x.sock\"\nsocket-group = \"no-such-group-here\"",
            "error: socket-group: group \"no-such-group-here\": no such group",
        ),
    ] {
        std::fs::write(&cfg, format!("keys-dir = {keys:?}\n{extra}\n")).unwrap();
        let (code, out) = check(&[]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(needle), "{out}");
        assert!(out.contains("the daemon would not start"), "{out}");
    }
    // --strict only goes with --check-config.
    let o = bin().arg("--strict").output().unwrap();
    assert_eq!(o.status.code(), Some(2));

    // A syntax error: exit 1 with file:line.
    std::fs::write(&cfg, "keys-dir = \"/x\"\nmode = \"both\"\n").unwrap();
    let o = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1));
    assert!(out.contains(&format!("{}:2:", cfg.display())), "{out}");
}

#[test]
fn version() {
    let o = bin().arg("--version").output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("dkim-milter 0.1.0"));
}

#[test]
fn sample_config_is_valid() {
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/deploy/dkim-milter.toml");
    let c = dkim_milter::config::Config::load(&sample).expect("sample parses");
    // The sample documents the defaults.
    assert_eq!(c, dkim_milter::config::Config::default());
}

fn keygen(keys: &std::path::Path, domain: &str, sel: &str) -> (String, String) {
    let o = bin()
        .args([
            "keygen",
            "--domain",
            domain,
            "--selector",
            sel,
            "--keys-dir",
        ])
        .arg(keys)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let txt = String::from_utf8_lossy(&o.stdout).to_string();
    (
        format!("{sel}._domainkey.{domain}"),
        stack_tests::dkim::txt_record_from_zone(&txt).unwrap(),
    )
}

/// `testkey` asks the configured DNS (a loopback stub, plus the override file) about
/// every key, says which signs and why, and exits 1 on a published record that does not
/// match its key.
#[test]
fn testkey_reports_dns_state_active_key_and_mismatch() {
    let t = tempfile::tempdir().unwrap();
    let keys = t.path().join("keys");
    let a = keygen(&keys, "example.com", "a");
    let _b = keygen(&keys, "example.com", "b");
    let _c = keygen(&keys, "example.com", "c");
    let other = keygen(&keys, "other.org", "default");
    let dns = stack_tests::dns::DnsStub::builder()
        .txt(&a.0, &a.1)
        // c's name publishes a's key: the classic "wrong record".
        .txt("c._domainkey.example.com", &a.1)
        .start()
        .unwrap();
    let zone = t.path().join("zone");
    std::fs::write(&zone, format!("{} {}\n", other.0, other.1)).unwrap();
    let cfg = t.path().join("dkim.toml");
    std::fs::write(
        &cfg,
        format!(
            "keys-dir = {keys:?}\ndns-servers = [\"{}\"]\ndns-override-file = {zone:?}\n",
            dns.nameserver()
        ),
    )
    .unwrap();
    let o = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("testkey")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let k = keys.display();
    for want in [
        format!(
            "example.com:\n  s=a rsa-2048 {k}/example.com/a.private\n    \
             DNS a._domainkey.example.com: published, matches the private key\n    \
             ACTIVE: newest key published in DNS and matching\n"
        ),
        format!(
            "  s=b rsa-2048 {k}/example.com/b.private\n    DNS b._domainkey.example.com: \
             not published (NXDOMAIN or no TXT record)\n    not signing\n"
        ),
        "    DNS c._domainkey.example.com: published but DIFFERENT: p= is another key\n    \
         not signing\n"
            .to_string(),
        "MISMATCH".to_string(),
    ] {
        assert!(out.contains(&want), "missing {want:?} in:\n{out}");
    }
    assert!(!dns.queries_for("b._domainkey.example.com").is_empty());

    // One domain, answered from the override file: no mismatch, exit 0.
    let o = bin()
        .arg("--config")
        .arg(&cfg)
        .args(["testkey", "--domain", "other.org"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        out.starts_with(&format!(
            "other.org:\n  s=default rsa-2048 {k}/other.org/default.private\n    \
             DNS default._domainkey.other.org: published, matches the private key\n    ACTIVE:"
        )),
        "{out}"
    );
    assert!(!out.contains("example.com"), "{out}");
    assert!(dns.queries_for("default._domainkey.other.org").is_empty());
}

/// Run as root with `user` in the config, keygen hands the files to that user.
#[test]
fn keygen_as_root_gives_the_files_to_the_configured_user() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let keys = t.path().join("keys");
    let cfg = t.path().join("dkim.toml");
    std::fs::write(
        &cfg,
        format!("keys-dir = {keys:?}\nuser = \"nobody:nogroup\"\n"),
    )
    .unwrap();
    let o = bin()
        .arg("--config")
        .arg(&cfg)
        .args(["keygen", "--domain", "own.test", "--selector", "s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("owned by nobody:nogroup"), "{err}");
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("s._domainkey\tIN\tTXT"));
    let m = std::fs::metadata(keys.join("own.test/s.private")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o600));
    let d = std::fs::metadata(keys.join("own.test")).unwrap();
    assert_eq!((d.uid(), d.mode() & 0o777), (65534, 0o750));
}
