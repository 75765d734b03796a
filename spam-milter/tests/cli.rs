//! The binary's command line: --version, --check-config on the shipped sample and on
//! broken files (file and line in the message), and the sample's values being the
//! embedded defaults.

use std::path::Path;
use std::process::Command;

use spam_milter::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_spam-milter");

fn sample() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/deploy/spam-milter.toml")
}

#[test]
fn the_sample_config_is_the_defaults_and_checks_ok() {
    let c = Config::load(&sample()).unwrap();
    assert_eq!(
        c,
        Config::default(),
        "examples/deploy/spam-milter.toml drifted from the defaults"
    );
    let o = Command::new(BIN)
        .arg("--check-config")
        .arg("--config")
        .arg(sample())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("configuration OK; socket inet:127.0.0.1:11330"),
        "{out}"
    );
    assert!(out.contains("rspamd http://127.0.0.1:11333"), "{out}");
}

#[test]
fn a_broken_config_is_refused_with_file_and_line() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("bad.toml");
    std::fs::write(
        &p,
        "socket = \"inet:127.0.0.1:11330\"\n[rspamd]\nscan-deadline = \"forever\"\n",
    )
    .unwrap();
    for args in [vec!["--check-config"], vec![]] {
        let o = Command::new(BIN)
            .args(&args)
            .arg("--config")
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("{}:3:", p.display())),
            "{args:?}: {err}"
        );
        assert!(err.contains("forever"), "{err}");
    }
}

#[test]
fn version_and_help() {
    let o = Command::new(BIN).arg("--version").output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("spam-milter "));
    let o = Command::new(BIN).arg("--help").output().unwrap();
    let h = String::from_utf8_lossy(&o.stdout);
    assert!(
        h.contains("--config") && h.contains("--check-config"),
        "{h}"
    );
}
