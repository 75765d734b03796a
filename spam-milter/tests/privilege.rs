//! Issue #12, least privilege: spam-milter started as root with `user` serves as that user
//! (every thread: uids, gids, no supplementary group, no capability), still scans through
//! a real Rspamd, and reports a file that user cannot read (its own config, at start and
//! at a reload) cleanly; started as root without `user` or `allow-root` it refuses.

mod support;

use std::os::unix::fs::PermissionsExt;

use milter_core::client::{ClientConfig, Envelope, MilterClient};
use stack_tests::rspamd::Rspamd;
use stack_tests::sys::Credentials;
use support::*;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn envelope() -> Envelope {
    Envelope {
        sender: "alice@remote.test".into(),
        recipients: vec!["user@example.test".into()],
        ..Envelope::default()
    }
}

/// A clean message is accepted as scanned (no status header) and GTUBE is rejected with
/// Rspamd's reason: both prove a real scan.
async fn assert_scans(spec: &str, what: &str) {
    let mut c = MilterClient::connect(spec, ClientConfig::default())
        .await
        .unwrap();
    let clean = message(
        "Alice <alice@remote.test>",
        "user@example.test",
        &format!("clean {what}"),
        "",
        "A normal message.",
    );
    let o = c.send(&envelope(), &clean).await.unwrap();
    assert!(o.accepted(), "{what}: {:?}", o.verdict);
    assert!(
        o.added_header("X-Spam-Milter").is_none(),
        "{what}: not scanned"
    );
    let spam = message(
        "Alice <alice@remote.test>",
        "user@example.test",
        &format!("gtube {what}"),
        "",
        GTUBE,
    );
    let o = c.send(&envelope(), &spam).await.unwrap();
    assert!(o.rejected(), "{what}: {:?}", o.verdict);
    let text = o.reply_text().unwrap_or_default();
    assert!(text.starts_with("554 5.7.1"), "{what}: {text}");
    let _ = c.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_as_root_with_user_it_serves_unprivileged_and_reports_unreadable_config() {
    if !is_root() {
        println!("SKIP: needs root");
        return;
    }
    let (uid, gid) = stack_tests::sys::user_ids("nobody").unwrap();
    let rspamd = Rspamd::builder().start().unwrap();
    // The config's directory is traversable by nobody, the file (root's, 0644) readable.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start_in(
        dir,
        &format!(
            "user = \"nobody\"\n[rspamd]\nupstreams = [\"http://127.0.0.1:{}\"]\n",
            rspamd.normal_port()
        ),
    );
    let threads = Credentials::of_every_thread(d.pid()).unwrap();
    assert!(threads.len() > 1, "{threads:?}");
    for (task, c) in &threads {
        c.check_unprivileged(uid, gid)
            .unwrap_or_else(|e| panic!("{task}: {e:#}"));
    }
    assert!(
        d.log()
            .contains(&format!("switched to user nobody (uid {uid}, gid {gid})")),
        "{}",
        d.log()
    );
    assert_scans(&d.spec(), "as nobody").await;

    // The config made unreadable for nobody (root's, 0600) and changed: the reload is
    // refused with the reason, and the previous configuration keeps serving.
    let cfg = d.config_path().to_path_buf();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&cfg, format!("{text}\n# changed\n")).unwrap();
    let line = &d.wait_lines("refused, previous configuration keeps serving", 1)[0];
    assert!(
        line.contains("spam.toml: cannot read") && line.contains("Permission denied"),
        "{line}"
    );
    assert_scans(&d.spec(), "after the unreadable reload").await;
}

#[test]
fn a_config_the_user_cannot_read_stops_it_at_start_with_the_reason() {
    if !is_root() {
        println!("SKIP: needs root");
        return;
    }
    let port = stack_tests::ports::free_port().unwrap();
    // Root's file, 0600: nobody cannot read it, so every later reload would fail; it
    // stops at start instead of serving on until then.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.path().join("spam.toml");
    std::fs::write(
        &cfg,
        format!(
            "socket = \"inet:127.0.0.1:{port}\"\nuser = \"nobody\"\n\
             [rspamd]\nupstreams = [\"http://127.0.0.1:9\"]\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, log) = Daemon::run_config_to_exit(&cfg);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("as user nobody: ")
            && log.contains("spam.toml: cannot read")
            && log.contains("Permission denied"),
        "{log}"
    );
    assert!(!log.contains("listening on"), "{log}");
}

#[test]
fn root_without_user_or_allow_root_is_refused() {
    if !is_root() {
        println!("SKIP: needs root");
        return;
    }
    let port = stack_tests::ports::free_port().unwrap();
    let base = format!("socket = \"inet:127.0.0.1:{port}\"\n");
    let (code, log) = Daemon::run_to_exit(&base);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("refusing to run as root: set user = \"spam-milter\"")
            && log.contains("allow-root = true"),
        "{log}"
    );
    assert!(!log.contains("listening on"), "{log}");
    // Nothing was bound.
    assert!(!stack_tests::sys::port_open(port), "port {port} bound");

    // `user = "root"` is root too; an unknown user stops it before binding; a bad value
    // is a config error with file and line.
    for (body, want) in [
        ("user = \"root\"\n", "is root: set allow-root = true"),
        ("user = \"no-such-user-here\"\n", "no such user"),
        ("\nuser = \"a b\"\n", "spam.toml:3: user \"a b\": expected"),
    ] {
        let (code, log) = Daemon::run_to_exit(&format!("{base}{body}"));
        assert_eq!(code, Some(1), "{body}: {log}");
        assert!(log.contains(want), "{body}: {log}");
        assert!(!log.contains("listening on"), "{body}: {log}");
    }
}
