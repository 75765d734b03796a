//! The daemon as a system service started as root: it refuses to serve as root unless
//! told, and with `user` it binds a unix socket with the configured owner, group and
//! mode, writes its pid file, switches user, still signs behind a real Postfix (keys read
//! again, and reloaded, as that user), logs the client and daemon name per message, and
//! removes its pid file and socket at exit.

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use stack_tests::postfix::Postfix;
use support::*;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn chown_r(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_r(&e.unwrap().path(), uid, gid);
        }
    }
}

#[test]
fn root_without_user_or_allow_root_refuses_to_start() {
    if !is_root() {
        println!("SKIP: needs root");
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    let pid_file = t.path().join("dkim-milter.pid");
    let (code, log) = Daemon::run_to_exit(
        None,
        &format!(
            "keys-dir = {:?}\npid-file = {:?}",
            keys.path().display().to_string(),
            pid_file.display().to_string()
        ),
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("refusing to run as root: set user = \"opendkim\"")
            && log.contains("allow-root = true"),
        "{log}"
    );
    assert!(!log.contains("listening on"), "{log}");
    assert!(!pid_file.exists(), "nothing was bound, no pid file");

    // A user that does not exist stops it too, before anything is bound.
    let (code, log) = Daemon::run_to_exit(
        None,
        &format!(
            "keys-dir = {:?}\nuser = \"no-such-user-here\"",
            keys.path().display().to_string()
        ),
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("no such user"), "{log}");
}

#[test]
fn user_switch_after_binding_with_socket_owner_group_mode_and_pid_file() {
    if !is_root() {
        println!("SKIP: needs root");
        return;
    }
    let (_, postfix_gid) = stack_tests::sys::user_ids("postfix").unwrap();
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Keys owned by the serving user (as /etc/opendkim/keys by opendkim).
    let keys = t.path().join("keys");
    let key = genkey(&keys, "ops.test", "s", 2048);
    chown_r(&keys, NOBODY, NOBODY);
    // Another domain's key that nobody may not read (root's, 0600, in root's 0700
    // directory): reported once read as nobody; ops.test signs regardless.
    let other = genkey(&keys, "other.test", "s", 2048);
    let other_dir = other.private_key.parent().unwrap();
    chown_r(other_dir, 0, 0);
    std::fs::set_permissions(other_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // The socket directory: the user's (so it can remove the socket at exit), Postfix's
    // group may enter.
    let sock_dir = t.path().join("sock");
    std::fs::create_dir(&sock_dir).unwrap();
    std::os::unix::fs::chown(&sock_dir, Some(NOBODY), Some(postfix_gid)).unwrap();
    std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let socket = sock_dir.join("dkim-milter.sock");
    // Its directory does not exist yet: made, and handed to the user.
    let pid_file = t.path().join("run/dkim-milter.pid");

    let spec = format!("unix:{}", socket.display());
    let mut d = Daemon::start_with(
        Some(&spec),
        &format!(
            "keys-dir = {:?}\nauthserv-id = \"{AUTHSERV}\"\nreload-poll-seconds = 1\n\
             user = \"nobody\"\nsocket-owner = \"nobody\"\nsocket-group = \"postfix\"\n\
             socket-mode = \"0660\"\npid-file = {:?}",
            keys.display().to_string(),
            pid_file.display().to_string()
        ),
    );
    let pid = d.pid().unwrap();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{pid}\n")
    );
    assert_eq!(
        std::fs::metadata(pid_file.parent().unwrap()).unwrap().uid(),
        NOBODY
    );
    // Every thread (the runtime's workers were started before the switch) is nobody, with
    // no supplementary group but nobody's and no capability left.
    let threads = stack_tests::sys::Credentials::of_every_thread(pid).unwrap();
    assert!(threads.len() > 1, "{threads:?}");
    for (task, c) in &threads {
        c.check_unprivileged(NOBODY, NOBODY)
            .unwrap_or_else(|e| panic!("{task}: {e:#}"));
    }
    let log = d.log();
    let after = &log[log
        .find("keys read again as nobody")
        .unwrap_or_else(|| panic!("{log}"))..];
    assert!(
        after
            .lines()
            .any(|l| l.contains("other.test") && l.contains("Permission denied")),
        "{log}"
    );
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (NOBODY, postfix_gid, 0o660)
    );
    assert!(
        d.log()
            .contains("switched to user nobody (uid 65534, gid 65534)"),
        "{}",
        d.log()
    );

    // Postfix (group postfix) connects; the key read again as nobody signs.
    let pf = Postfix::builder().non_smtpd_milters(&spec).start().unwrap();
    pf.sendmail(
        &["-f", "a@ops.test", "-i", "friend@remote.test"],
        &message("a@ops.test", "friend@remote.test", "ops one"),
    )
    .unwrap();
    let msg = by_subject(&pf.sink().wait_for(1, T).unwrap(), "ops one");
    assert_verifies(&msg, &[key.record()], 1);
    // One line per message, naming the client address and the daemon name.
    let line = &d.wait_lines("from=a@ops.test: signed d=ops.test s=s", 1)[0];
    assert!(
        line.contains("(client is an internal host); client=127.0.0.1 daemon="),
        "{line}"
    );

    // A reload reads the keys as nobody as well.
    d.signal(libc::SIGHUP);
    d.wait_lines("reloaded (SIGHUP): 1 signing domains/keys usable", 1);

    // SIGTERM: exit 0, the pid file and the socket are gone.
    assert!(d.terminate(), "{}", d.log());
    assert!(!pid_file.exists(), "{}", d.log());
    assert!(!socket.exists(), "{}", d.log());
}
