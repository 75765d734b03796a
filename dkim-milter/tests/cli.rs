//! The binary: `keygen`, `--check-config`, `--version`.

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

    // A broken key: exit 1, the domain named.
    std::fs::write(keys.join("example.com/ed.private"), "junk").unwrap();
    let o = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("error: example.com: not signing"), "{out}");

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
