//! examples/deploy/: the production material for spam-milter and dkim-milter, checked the way
//! an operator would meet it.
//!
//! * Both systemd units pass `systemd-analyze verify` and score at most 2.0 ("OK") in
//!   `systemd-analyze security --offline`, with the hardening the README promises; both
//!   socket units (socket activation) pass `systemd-analyze verify` beside their service and
//!   listen where README.md's socket lines say, `0660` for the unit's user and `postfix`.
//! * postfix-main.cf and postfix-master.cf load into a test Postfix (`postconf`, `postfix
//!   check`, no warning), and the loaded configuration has what the comments say: spam-milter
//!   alone on port 25, spam-milter then dkim-milter on submission and for sendmail(1), the
//!   macros both milters ask for, `milter_default_action = tempfail`, daemon name ORIGINATING
//!   on a chrooted submission service, sockets inside the chroot.
//! * Each milter, run as an unprivileged user with README.md's socket lines in a directory
//!   made as milters-tmpfiles.conf says, makes a socket the `postfix` user can connect to and
//!   another user cannot.

use anyhow::{Context, Result, bail};
use stack_tests::sys::{self, Sandbox};
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/deploy")
        .join(file)
}

fn read(file: &str) -> Result<String> {
    std::fs::read_to_string(deploy(file)).with_context(|| format!("reading examples/deploy/{file}"))
}

/// A workspace binary next to this test's (cargo builds them for `cargo test --workspace`).
fn built(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join(name);
    p.is_file().then_some(p)
}

const MILTERS: [&str; 2] = ["spam-milter", "dkim-milter"];
const QUEUE: &str = "/var/spool/postfix";

/// `[Service]` settings of a unit, each key with all its values.
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in text.lines().map(str::trim) {
        if l.starts_with('#') || l.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            out.entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    out
}

/// `(directory, mode, user, group)` lines of milters-tmpfiles.conf.
fn tmpfiles() -> Result<Vec<(String, String, String, String)>> {
    Ok(read("milters-tmpfiles.conf")?
        .lines()
        .filter(|l| l.starts_with("d "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[1].to_string(),
                f[2].to_string(),
                f[3].to_string(),
                f[4].to_string(),
            )
        })
        .collect())
}

/// The `socket = "..."` and `socket-mode = "..."` lines README.md gives for `milter`.
fn readme_socket(milter: &str) -> Result<(String, String)> {
    let readme = read("README.md")?;
    let block = readme
        .split("```toml")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or(b))
        .find(|b| b.contains(&format!("/etc/{milter}.toml")))
        .with_context(|| format!("README.md has no TOML block for {milter}"))?;
    let value = |key: &str| -> Result<String> {
        block
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key} = ")))
            .map(|v| v.trim_matches('"').to_string())
            .with_context(|| format!("README.md's {milter} block has no {key}"))
    };
    Ok((value("socket")?, value("socket-mode")?))
}

#[test]
fn systemd_units_verify_and_are_hardened() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let tmpfiles = tmpfiles()?;
    let tool = Path::new("/usr/bin/systemd-analyze").exists();
    if !tool {
        println!(
            "SKIP systemd-analyze verify/security: /usr/bin/systemd-analyze is missing \
             (tests/stack/install-deps.sh installs the systemd package); static checks only"
        );
    }
    for name in MILTERS {
        let file = format!("{name}.service");
        let text = read(&file)?;
        let s = unit_settings(&text);
        let one = |k: &str| s.get(k).map(|v| v.join(" ")).unwrap_or_default();
        let user = one("User");
        assert!(
            !user.is_empty() && user != "root",
            "{file}: runs as {user:?}, not an unprivileged user"
        );
        for (k, want) in [
            ("CapabilityBoundingSet", ""),
            ("AmbientCapabilities", ""),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
            ("SystemCallArchitectures", "native"),
            ("MemoryDenyWriteExecute", "yes"),
            ("RestrictNamespaces", "yes"),
        ] {
            assert_eq!(one(k), want, "{file}: {k}=");
        }
        assert_eq!(
            s.get("SystemCallFilter")
                .and_then(|v| v.first())
                .map(String::as_str),
            Some("@system-service"),
            "{file}: SystemCallFilter="
        );
        // The socket directory from milters-tmpfiles.conf is writable, owned by the unit's user.
        let dir = format!("{QUEUE}/{name}");
        assert_eq!(one("ReadWritePaths"), dir, "{file}: ReadWritePaths=");
        let row = tmpfiles
            .iter()
            .find(|r| r.0 == dir)
            .with_context(|| format!("milters-tmpfiles.conf does not create {dir}"))?;
        assert_eq!(
            (row.1.as_str(), row.2.as_str(), row.3.as_str()),
            ("2750", user.as_str(), "postfix"),
            "milters-tmpfiles.conf: {dir}"
        );
        assert!(
            read("milters-sysusers.conf")?
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(user.as_str())),
            "milters-sysusers.conf does not create {user}"
        );
        // The socket unit: the README's path, reachable by Postfix only, named.
        let sock_file = format!("{name}.socket");
        let sock_text = read(&sock_file)?;
        let so = unit_settings(&sock_text);
        let sone = |k: &str| so.get(k).map(|v| v.join(" ")).unwrap_or_default();
        let (readme_path, readme_mode) = readme_socket(name)?;
        for (k, want) in [
            (
                "ListenStream",
                readme_path.trim_start_matches("unix:").to_string(),
            ),
            ("SocketMode", readme_mode),
            ("SocketUser", user.clone()),
            ("SocketGroup", "postfix".to_string()),
            ("FileDescriptorName", name.to_string()),
            ("WantedBy", "sockets.target".to_string()),
        ] {
            assert_eq!(sone(k), want, "{sock_file}: {k}=");
        }
        assert_eq!(
            one("Type"),
            "notify",
            "{file}: Type= (the daemons send READY=1)"
        );
        if !tool {
            continue;
        }
        // verify checks that ExecStart's binary exists: use the one cargo built here.
        let bin = built(name);
        let exe = bin
            .as_ref()
            .map_or_else(|| "/bin/true".to_string(), |p| p.display().to_string());
        if bin.is_none() {
            println!("note: {name} is not built; verifying {file} with ExecStart=/bin/true");
        }
        let unit = tmp.path().join(&file);
        std::fs::write(&unit, text.replace(&format!("/usr/local/bin/{name}"), &exe))?;
        let out = sys::run(
            Command::new("/usr/bin/systemd-analyze")
                .arg("verify")
                .arg(&unit),
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains(&file),
            "systemd-analyze verify {file}: {}\n{stderr}",
            out.status
        );
        // Beside its service, which it activates.
        let sock_unit = tmp.path().join(&sock_file);
        std::fs::write(&sock_unit, &sock_text)?;
        let out = sys::run(
            Command::new("/usr/bin/systemd-analyze")
                .arg("verify")
                .arg(&sock_unit),
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains(&sock_file),
            "systemd-analyze verify {sock_file}: {}\n{stderr}",
            out.status
        );
        let out = sys::run(
            Command::new("/usr/bin/systemd-analyze")
                .args(["security", "--offline=yes"])
                .arg(&unit),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no exposure level in:\n{text}"))?;
        println!("{file}: systemd-analyze verify ok; security exposure {score}");
        assert!(score <= 2.0, "{file}: exposure {score} > 2.0:\n{text}");
    }
    Ok(())
}

/// A comma/space separated Postfix list.
fn plist(v: &str) -> Vec<String> {
    v.split([',', ' ', '\t'])
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn postconf(etc: &Path, args: &[&str]) -> Result<BTreeMap<String, String>> {
    let out = sys::run_checked(
        Command::new("/usr/sbin/postconf")
            .arg("-c")
            .arg(etc)
            .args(args),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        bail!("postconf {args:?} warned:\n{stderr}");
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once(" = ")
                .or_else(|| l.strip_suffix(" =").map(|k| (k, "")))
        })
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

#[test]
fn postfix_lines_load_with_the_documented_milters() -> Result<()> {
    sys::require_root("loading the Postfix lines into a test Postfix")?;
    sys::require_binary("/usr/sbin/postconf")?;
    let stock_master = Path::new("/usr/share/postfix/master.cf.dist");
    let sb = Sandbox::new("deploy-postfix")?;
    let etc = sb.mkdir("etc")?;
    let queue = sb.mkdir("spool")?;
    let data = sb.mkdir("lib")?;
    let (uid, gid) = sys::user_ids("postfix")?;
    std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
    let main_lines = read("postfix-main.cf")?;
    let master_lines = read("postfix-master.cf")?;
    std::fs::write(
        etc.join("main.cf"),
        format!(
            "compatibility_level = 3.6\nqueue_directory = {}\ndata_directory = {}\n\
             mail_owner = postfix\nsetgid_group = postdrop\nmyhostname = mx.example.test\n\
             inet_interfaces = loopback-only\nsmtpd_tls_cert_file = /etc/ssl/certs/ssl-cert-snakeoil.pem\n\
             smtpd_tls_key_file = /etc/ssl/private/ssl-cert-snakeoil.key\n\n{main_lines}",
            queue.display(),
            data.display()
        ),
    )?;
    std::fs::write(
        etc.join("master.cf"),
        format!(
            "{}\n{master_lines}",
            std::fs::read_to_string(stock_master)
                .with_context(|| format!("reading Debian's {}", stock_master.display()))?
        ),
    )?;

    let main = postconf(&etc, &["-n"])?;
    let get = |k: &str| main.get(k).cloned().unwrap_or_default();
    let services = postconf(&etc, &["-P"])?;
    let sub = |k: &str| {
        services
            .get(&format!("submission/inet/{k}"))
            .cloned()
            .unwrap_or_default()
    };
    let spam = "unix:spam-milter/spam-milter.sock".to_string();
    let dkim = "unix:dkim-milter/dkim-milter.sock".to_string();

    assert_eq!(get("milter_protocol"), "6");
    assert_eq!(get("milter_default_action"), "tempfail");
    assert_eq!(
        plist(&get("smtpd_milters")),
        std::slice::from_ref(&spam),
        "port 25: spam-milter only"
    );
    assert_eq!(
        plist(&get("non_smtpd_milters")),
        [spam.clone(), dkim.clone()],
        "sendmail(1): spam-milter, then dkim-milter"
    );
    assert_eq!(
        plist(&sub("smtpd_milters")),
        [spam.clone(), dkim.clone()],
        "submission: spam-milter, then dkim-milter"
    );
    assert_eq!(sub("milter_macro_daemon_name"), "ORIGINATING");
    assert_eq!(sub("smtpd_tls_security_level"), "encrypt");
    assert_eq!(sub("smtpd_sasl_auth_enable"), "yes");
    assert_eq!(sub("smtpd_sasl_type"), "dovecot");
    assert_eq!(
        sub("smtpd_relay_restrictions"),
        "permit_sasl_authenticated,reject"
    );

    // What the milters ask for in negotiation (spam-milter/src/milter.rs,
    // dkim-milter/src/milter.rs), at the stage they need it.
    for (param, need) in [
        (
            "milter_connect_macros",
            &["j", "{daemon_name}", "{client_addr}", "{client_name}"][..],
        ),
        ("milter_helo_macros", &["{tls_version}", "{cipher}"][..]),
        (
            "milter_mail_macros",
            &["i", "{auth_type}", "{auth_authen}"][..],
        ),
        ("milter_data_macros", &["i"][..]),
        ("milter_end_of_header_macros", &["i"][..]),
        ("milter_end_of_data_macros", &["i"][..]),
    ] {
        let have = plist(&get(param));
        for m in need {
            assert!(have.iter().any(|h| h == m), "{param} lacks {m}: {have:?}");
        }
    }

    // The submission service is chrooted (Debian's default) and on 587; its sockets are
    // relative, i.e. inside the queue directory, where README.md's TOML lines put them.
    let m = sys::run_checked(
        Command::new("/usr/sbin/postconf")
            .arg("-c")
            .arg(&etc)
            .args(["-M", "submission/inet"]),
    )?;
    let m = String::from_utf8_lossy(&m.stdout);
    let f: Vec<&str> = m.split_whitespace().collect();
    assert_eq!(f.get(4), Some(&"y"), "submission is not chrooted: {m}");
    let services_db = std::fs::read_to_string("/etc/services").unwrap_or_default();
    assert!(
        services_db
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["submission", "587/tcp"])),
        "/etc/services does not map submission to 587/tcp"
    );
    for (milter, spec) in [("spam-milter", &spam), ("dkim-milter", &dkim)] {
        let rel = spec.strip_prefix("unix:").context("not a unix socket")?;
        assert!(
            !rel.starts_with('/'),
            "{spec} is not relative to the chroot"
        );
        let (socket, mode) = readme_socket(milter)?;
        assert_eq!(
            socket,
            format!("unix:{QUEUE}/{rel}"),
            "README.md's {milter} socket"
        );
        assert_eq!(mode, "0660", "README.md's {milter} socket-mode");
    }

    // `postfix check` runs post-install's permission checks on shared package files: one at
    // a time with the harness's Postfix starts.
    let lock = sys::FileLock::acquire(&std::env::temp_dir().join("stack-tests-postfix.lock"))?;
    let out = sys::run(
        Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&etc)
            .arg("check"),
    )?;
    drop(lock);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("warning"),
        "postfix check: {}\n{text}",
        out.status
    );
    println!(
        "loaded: smtpd_milters = {}; submission smtpd_milters = {}; non_smtpd_milters = {}",
        get("smtpd_milters"),
        sub("smtpd_milters"),
        get("non_smtpd_milters")
    );
    Ok(())
}

/// Connects to a unix socket as `user` (setpriv); Ok(true) if the connect succeeded.
fn connect_as(user: &str, path: &Path) -> Result<bool> {
    let out = sys::run(
        Command::new("/usr/bin/setpriv")
            .args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                stack_tests::PYTHON,
                "-c",
                "import socket, sys\ns = socket.socket(socket.AF_UNIX)\n\
                 try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(3)",
            ])
            .arg(path),
    )?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(3) => Ok(false),
        _ => bail!(
            "connect as {user} failed oddly ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn sockets_in_the_chroot_admit_postfix_only() -> Result<()> {
    sys::require_root("running the milters as an unprivileged user")?;
    sys::require_binary("/usr/bin/setpriv")?;
    let (_, postfix_gid) = sys::user_ids("postfix")?;
    for milter in MILTERS {
        let Some(bin) = built(milter) else {
            println!("SKIP {milter}: not built (cargo test --workspace builds it)");
            continue;
        };
        let (socket, mode) = readme_socket(milter)?;
        let sb = Sandbox::new("deploy-socket")?;
        let spool = sb.mkdir("spool")?;
        // As milters-tmpfiles.conf makes it: owner = the milter's account (here nobody), group
        // postfix, 2750.
        let dir = spool.join(milter);
        std::fs::create_dir(&dir)?;
        std::os::unix::fs::chown(&dir, Some(65534), Some(postfix_gid))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2750))?;
        let path = socket
            .strip_prefix(&format!("unix:{QUEUE}/"))
            .map(|rel| spool.join(rel))
            .context("README socket is not under the queue directory")?;
        let keys = sb.mkdir("keys")?;
        let extra = match milter {
            "dkim-milter" => format!(
                "keys-dir = \"{}\"\ndns-servers = [\"127.0.0.1:9\"]\n",
                keys.display()
            ),
            _ => "[rspamd]\nupstreams = [\"http://127.0.0.1:9\"]\n".to_string(),
        };
        let conf = sb.path().join(format!("{milter}.toml"));
        std::fs::write(
            &conf,
            format!(
                "socket = \"unix:{}\"\nsocket-mode = \"{mode}\"\n{extra}",
                path.display()
            ),
        )?;
        let log = sb.path().join(format!("{milter}.log"));
        let mut child = sys::spawn_daemon(
            Command::new("/usr/bin/setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&bin)
                .arg("--config")
                .arg(&conf),
            &log,
        )?;
        let result = (|| -> Result<()> {
            sys::wait_until(
                Duration::from_secs(20),
                &format!("{}", path.display()),
                || {
                    if let Some(st) = child.try_wait()? {
                        bail!("{milter} exited with {st}: {}", sys::read_lossy(&log));
                    }
                    Ok(path.exists().then_some(()))
                },
            )?;
            let meta = std::fs::metadata(&path)?;
            assert!(meta.file_type().is_socket());
            assert_eq!(
                meta.gid(),
                postfix_gid,
                "{milter}'s socket is not group postfix"
            );
            assert_eq!(meta.uid(), 65534, "{milter}'s socket owner");
            assert_eq!(meta.mode() & 0o777, 0o660, "{milter}'s socket mode");
            assert!(
                connect_as("postfix", &path)?,
                "postfix cannot connect to {milter}"
            );
            assert!(
                !connect_as("dovenull", &path)?,
                "a user outside the postfix group can connect to {milter}"
            );
            println!(
                "{milter} as nobody: {} is nobody:postfix 0660; postfix connects, dovenull is refused",
                path.display()
            );
            Ok(())
        })();
        sys::stop_child(&mut child, Duration::from_secs(10));
        result?;
    }
    Ok(())
}
