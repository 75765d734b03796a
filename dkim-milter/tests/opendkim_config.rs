//! `--opendkim-config`: Debian's stock opendkim.conf plus a KeyTable and SigningTable runs
//! both real OpenDKIM and dkim-milter behind real Postfix, and both sign the same message
//! the same way (d=, s=, a=, c=, the h= set); dkimpy and `opendkim -t` verify both. The
//! panel fixture is translated and checked through the CLI.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use stack_tests::daemon::DaemonProcess;
use stack_tests::postfix::Postfix;
use support::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/opendkim");

/// Debian's file with only what a test sandbox must change: the socket (inet on a free
/// port instead of /run/opendkim, which the system's own OpenDKIM may hold) and the pid
/// file; then the KeyTable and SigningTable lines an operator adds.
fn debian_conf(sandbox: &Path, name: &str, port: u16, kt: &Path, st: &Path) -> std::path::PathBuf {
    let stock = std::fs::read_to_string(format!("{FIXTURES}/debian-stock.conf")).unwrap();
    let mut out = String::new();
    let (mut socket, mut pid) = (false, false);
    for l in stock.lines() {
        if l.starts_with("Socket") {
            out.push_str(&format!("Socket\t\t\tinet:{port}@127.0.0.1\n"));
            socket = true;
        } else if l.starts_with("PidFile") {
            out.push_str(&format!("PidFile\t\t\t{}/{name}.pid\n", sandbox.display()));
            pid = true;
        } else if l.starts_with("Syslog\t") && name == "dkim-milter" {
            // The stock `Syslog yes` would send our log to the host's /dev/log, where this
            // test cannot read the decision and warning lines; stderr keeps them in the
            // test's log file. The translation of `Syslog yes` is checked on the unchanged
            // file below (--print-config), syslog delivery itself in tests/syslog.rs.
            out.push_str("Syslog\t\t\tno\n");
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    assert!(socket && pid, "the stock file has Socket and PidFile lines");
    out.push_str(&format!(
        "KeyTable\t\tfile:{}\nSigningTable\t\trefile:{}\n",
        kt.display(),
        st.display()
    ));
    let p = sandbox.join(format!("{name}.conf"));
    std::fs::write(&p, out).unwrap();
    p
}

fn chown_to_opendkim(p: &Path) {
    let u = nix::unistd::User::from_name("opendkim")
        .unwrap()
        .expect("the opendkim user (opendkim package)");
    std::os::unix::fs::chown(p, Some(u.uid.as_raw()), Some(u.gid.as_raw())).unwrap();
}

fn signed_via(milter: &str, subject: &str) -> Vec<u8> {
    let pf = Postfix::builder().mx_milters(milter).start().unwrap();
    let r = smtp_send(
        pf.mx_port(),
        "user@example.test",
        "other@example.test",
        &message("user@example.test", "other@example.test", subject),
    );
    assert_eq!(r.code, 250, "{r:?}");
    pf.maildir("example.test", "other")
        .wait_for(1, T)
        .unwrap()
        .remove(0)
}

fn wait_port(port: u16) {
    let end = std::time::Instant::now() + T;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < end, "nothing listens on {port}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn h_set(sig: &str) -> BTreeSet<String> {
    tag(sig, "h")
        .unwrap_or_default()
        .split(':')
        .map(|h| h.to_ascii_lowercase())
        .collect()
}

#[test]
fn debian_stock_config_signs_like_opendkim() {
    // Not under /tmp: OpenDKIM's RequireSafeKeys (on in Debian's file by default) refuses
    // a key below a world-writable directory.
    let sb = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // UserID opendkim: both daemons read tables and key as that user.
    std::fs::set_permissions(
        sb.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let key = genkey(&sb.path().join("keys"), "example.test", "deb2026", 2048);
    chown_to_opendkim(&key.private_key);
    let kt = sb.path().join("KeyTable");
    let st = sb.path().join("SigningTable");
    std::fs::write(
        &kt,
        format!(
            "deb2026._domainkey.example.test example.test:deb2026:{}\n",
            key.private_key.display()
        ),
    )
    .unwrap();
    std::fs::write(&st, "*@example.test deb2026._domainkey.example.test\n").unwrap();

    // Real OpenDKIM from the file.
    let od_port = stack_tests::ports::free_port().unwrap();
    let od_conf = debian_conf(sb.path(), "opendkim", od_port, &kt, &st);
    let mut od = DaemonProcess::spawn(
        "opendkim",
        Command::new("/usr/sbin/opendkim")
            .arg("-f")
            .arg("-x")
            .arg(&od_conf),
        &sb.path().join("opendkim.log"),
    )
    .unwrap();
    wait_port(od_port);
    let by_opendkim = signed_via(&format!("inet:127.0.0.1:{od_port}"), "parity");
    od.terminate(std::time::Duration::from_secs(10));

    // dkim-milter from the same file.
    let dm_port = stack_tests::ports::free_port().unwrap();
    let dm_conf = debian_conf(sb.path(), "dkim-milter", dm_port, &kt, &st);
    let mut dm = DaemonProcess::spawn(
        "dkim-milter",
        Command::new(env!("CARGO_BIN_EXE_dkim-milter"))
            .arg("--opendkim-config")
            .arg(&dm_conf),
        &sb.path().join("dkim-milter.log"),
    )
    .unwrap();
    dm.wait_ready("dkim-milter listening on", T).unwrap();
    // The unchanged stock file's `Syslog yes` becomes log-target = "syslog".
    let printed = Command::new(env!("CARGO_BIN_EXE_dkim-milter"))
        .arg("--opendkim-config")
        .arg(format!("{FIXTURES}/debian-stock.conf"))
        .arg("--print-config")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.lines().any(|l| l == "log-target = \"syslog\""),
        "{printed}"
    );
    let log = dm.log();
    // One warning per ignored option, with file:line.
    for (opt, line) in [("SyslogSuccess", 7), ("TrustAnchorFile", 50)] {
        let needle = format!("{}:{line}: {opt} ignored", dm_conf.display());
        assert_eq!(log.matches(&needle).count(), 1, "{needle} in:\n{log}");
    }
    let by_us =
        std::panic::catch_unwind(|| signed_via(&format!("inet:127.0.0.1:{dm_port}"), "parity"))
            .unwrap_or_else(|_| panic!("dkim-milter log:\n{}", dm.log()));
    dm.terminate(std::time::Duration::from_secs(10));

    let theirs = &header_values(&by_opendkim, "DKIM-Signature")[0];
    let ours = &header_values(&by_us, "DKIM-Signature")[0];
    for t in ["d", "s", "a", "c"] {
        assert_eq!(
            tag(ours, t),
            tag(theirs, t),
            "{t}=: ours {ours}\ntheirs {theirs}"
        );
    }
    assert_eq!(tag(ours, "c").as_deref(), Some("relaxed/simple"));
    assert_eq!(h_set(ours), h_set(theirs), "ours {ours}\ntheirs {theirs}");
    assert_verifies(&by_opendkim, &[key.record()], 1);
    assert_verifies(&by_us, &[key.record()], 1);
}

#[test]
fn panel_config_translates_and_checks() {
    let sb = tempfile::tempdir().unwrap();
    let etc = sb.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    // The panel's files with /etc/opendkim/ pointing into the sandbox, and its keys.
    for f in ["panel.conf", "TrustedHosts", "KeyTable", "SigningTable"] {
        let t = std::fs::read_to_string(format!("{FIXTURES}/{f}")).unwrap();
        std::fs::write(
            etc.join(f),
            t.replace("/etc/opendkim/", &format!("{}/", etc.display())),
        )
        .unwrap();
    }
    let keys = etc.join("keys");
    let a = genkey(&keys, "example.com", "default", 2048);
    let b = genkey(&keys, "example.net", "default", 2048);
    for k in [&a, &b] {
        chown_to_opendkim(&k.private_key);
    }
    let conf = etc.join("panel.conf");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_dkim-milter"))
            .arg("--opendkim-config")
            .arg(&conf)
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, toml) = run(&["--print-config"]);
    assert_eq!(code, Some(0), "{toml}");
    for want in [
        "socket = \"inet:8891@localhost\"",
        "user = \"opendkim:opendkim\"",
        "canonicalization = \"relaxed/simple\"",
        "internal-hosts = [\"127.0.0.1/32\", \"::1/128\", \"127.0.0.1\", \"192.168.1.0/24\", \"10.0.0.0/8\"]",
        "internal-hosts-except = [\"192.168.1.99/32\"]",
        "log-target = \"syslog\"",
    ] {
        assert!(toml.contains(want), "{want} in:\n{toml}");
    }
    assert!(toml.contains(&format!(
        "key-table = \"refile:{}/KeyTable\"",
        etc.display()
    )));
    assert!(toml.contains("ExternalIgnoreList ignored"), "{toml}");
    assert!(
        toml.contains("TrustedHosts:7: InternalHosts entry \"*.example.com\""),
        "{toml}"
    );
    // What --print-config shows is a config dkim-milter loads as it is.
    let printed = sb.path().join("printed.toml");
    std::fs::write(&printed, &toml).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_dkim-milter"))
        .arg("--config")
        .arg(&printed)
        .arg("--check-config")
        .output()
        .unwrap();
    let printed_check = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{printed_check}");

    let (code, check) = run(&["--check-config"]);
    assert_eq!(code, Some(0), "{check}");
    assert!(check.contains("2 signing domain(s)/key(s)"), "{check}");
    assert!(
        check.contains("warning: ") && check.contains("AutoRestart ignored"),
        "{check}"
    );
}
