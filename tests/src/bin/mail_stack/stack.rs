//! Bringing the stack up and down. The supervisor (this process) runs the loopback DNS stub
//! (every daemon's only resolver) and the sink, starts each daemon as the leader of its own
//! process group with a pid file in `{state}/run/`, and stops them in reverse order.

use super::Binaries;
use super::accounts;
use super::config;
use super::layout::*;
use super::procs::{self, DAEMONS, SUPERVISOR, TryLock};
use super::sink::Sink;
use anyhow::{Context, Result, bail};
use stack_tests::dns::DnsStub;
use stack_tests::sys;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// A running stack; stopped (everything it started, by pid) on drop.
pub struct Stack {
    l: Layout,
    dns: Arc<DnsStub>,
    sink: Option<Sink>,
    watcher: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    children: Vec<(&'static str, Child)>,
    postfix_master: Option<u32>,
    stopped: bool,
    /// How long the bring-up took.
    pub startup: Duration,
    _lock: TryLock,
}

/// Fails unless everything the stack needs is there.
pub fn preflight(l: &Layout, bins: &Binaries) -> Result<()> {
    sys::require_root("the mail stack")?;
    for b in [
        "/usr/sbin/postfix",
        "/usr/sbin/postmap",
        "/usr/sbin/postqueue",
        "/usr/sbin/sendmail",
        "/usr/sbin/dovecot",
        "/usr/bin/rspamd",
        "/usr/bin/openssl",
        "/usr/bin/swaks",
        stack_tests::PYTHON,
    ] {
        sys::require_binary(b)?;
    }
    for b in [&bins.dkim_milter, &bins.spam_milter] {
        sys::require_binary(&b.to_string_lossy()).with_context(|| {
            format!(
                "{} is missing: build it (tests/stack/run-stack.sh does)",
                b.display()
            )
        })?;
    }
    for u in ["postfix", "dovecot", "dovenull"] {
        sys::user_ids(u)?;
    }
    // Postfix's unprivileged processes, Dovecot's login user and the vmail uid all have to
    // reach into the state directory.
    for dir in l.root().ancestors().skip(1) {
        if let Ok(meta) = std::fs::metadata(dir)
            && meta.permissions().mode() & 0o001 == 0
        {
            bail!(
                "{} (mode {:o}) cannot be searched by other users, so Postfix and Dovecot \
                 cannot reach {}: pick another state directory (--state-dir or ${STATE_ENV})",
                dir.display(),
                meta.permissions().mode() & 0o7777,
                l.root().display()
            );
        }
    }
    Ok(())
}

/// Creates the directory tree (idempotent) with the owners the daemons need.
pub fn prepare_dirs(l: &Layout) -> Result<()> {
    let dirs = [
        l.root().to_path_buf(),
        l.etc_postfix(),
        l.etc_dovecot(),
        l.etc_ssl(),
        l.etc_rspamd().join("local.d"),
        l.keys_dir(),
        l.queue_dir(),
        l.postfix_data(),
        l.dovecot_state(),
        l.rspamd_db(),
        l.mail_root(),
        l.sink_dir(),
        l.run_dir(),
        l.dovecot_base(),
        l.log_dir(),
    ];
    for d in &dirs {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    for d in [
        l.root().to_path_buf(),
        l.root().join("etc"),
        l.root().join("var"),
    ] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    }
    let (pf_uid, pf_gid) = sys::user_ids("postfix")?;
    std::os::unix::fs::chown(l.postfix_data(), Some(pf_uid), Some(pf_gid))?;
    std::os::unix::fs::chown(
        l.root().join("var/mail"),
        Some(config::VMAIL_ID),
        Some(config::VMAIL_ID),
    )?;
    std::os::unix::fs::chown(
        l.mail_root(),
        Some(config::VMAIL_ID),
        Some(config::VMAIL_ID),
    )?;
    std::fs::set_permissions(l.keys_dir(), std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Writes the configuration that does not depend on the DNS stub's port, the TLS
/// certificate and (on the first start) the default accounts. Enough for `add-*` on a
/// stack that is not running.
pub fn prepare(l: &Layout, bins: &Binaries) -> Result<()> {
    prepare_dirs(l)?;
    config::write_if_changed(
        &l.etc_postfix().join("main.cf"),
        &config::postfix_main_cf(l),
        true,
    )?;
    config::write_if_changed(
        &l.etc_postfix().join("master.cf"),
        &config::postfix_master_cf(),
        true,
    )?;
    config::write_if_changed(
        &l.etc_dovecot().join("dovecot.conf"),
        &config::dovecot_conf(l),
        false,
    )?;
    let cert = l.etc_ssl().join("cert.pem");
    let stale = std::fs::metadata(&cert)
        .and_then(|m| m.modified())
        .map(|t| {
            SystemTime::now().duration_since(t).unwrap_or_default()
                > Duration::from_secs(20 * 86400)
        })
        .unwrap_or(true);
    if stale || !l.etc_ssl().join("key.pem").exists() {
        stack_tests::tls::self_signed(&l.etc_ssl())?;
    }
    accounts::ensure_initialized(l, bins)
}

/// Fails if a fixed port is taken.
fn require_free_ports() -> Result<()> {
    let busy: Vec<String> = PORTS
        .iter()
        .filter(|(p, _)| std::net::TcpListener::bind(("127.0.0.1", *p)).is_err())
        .map(|(p, what)| format!("127.0.0.1:{p} ({what})"))
        .collect();
    if !busy.is_empty() {
        bail!(
            "port(s) in use: {}; another program (or another stack) listens there \
             (`ss -ltnp` shows which)",
            busy.join(", ")
        );
    }
    Ok(())
}

/// Seeds an empty Rspamd cache from the test harness's (its hyperscan databases take
/// ~10 s to compile; Rspamd checks each file's hash and recompiles what does not fit).
fn seed_rspamd_cache(l: &Layout) {
    let db = l.rspamd_db();
    if std::fs::read_dir(&db)
        .map(|mut d| d.next().is_some())
        .unwrap_or(true)
    {
        return;
    }
    let seed = std::env::var_os("STACK_RSPAMD_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join("rspamd-cache"))
        });
    let Some(seed) = seed.filter(|s| s.is_dir()) else {
        return;
    };
    let Ok(_lock) = sys::FileLock::acquire(&seed.join(".start.lock")) else {
        return;
    };
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(&seed) {
        for e in rd.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with('.') || !e.path().is_file() {
                continue;
            }
            if std::fs::copy(e.path(), db.join(&name)).is_ok() {
                n += 1;
            }
        }
    }
    println!(
        "[mail-stack] seeded the Rspamd cache with {n} file(s) from {}",
        seed.display()
    );
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

/// Whether Rspamd's controller answers `/ping`.
pub fn rspamd_pong() -> bool {
    http_get(RSPAMD_CONTROLLER_PORT, "/ping").is_some_and(|b| b.contains("pong"))
}

impl Stack {
    /// Brings the whole stack up and returns once every daemon answers.
    pub fn start(l: &Layout, bins: &Binaries) -> Result<Stack> {
        let t0 = Instant::now();
        preflight(l, bins)?;
        prepare_dirs(l)?;
        let lock = TryLock::try_acquire(&l.supervisor_lock())?.with_context(|| {
            format!(
                "a stack already runs in {} (supervisor pid {}): use status or down",
                l.root().display(),
                procs::read_pid(l, SUPERVISOR).map_or("?".into(), |p| p.to_string())
            )
        })?;
        for (name, exe) in DAEMONS {
            if let Some(pid) = procs::live_pid(l, name, exe) {
                bail!("{name} (pid {pid}) of an earlier run is still running: run down first");
            }
        }
        require_free_ports()?;
        prepare(l, bins)?;
        seed_rspamd_cache(l);

        let mut dns = DnsStub::builder().a(HOSTNAME, std::net::Ipv4Addr::LOCALHOST);
        for (name, rec) in accounts::all_dkim_records(l) {
            dns = dns.txt(&name, &rec);
        }
        let dns = Arc::new(dns.start()?);
        let ns = dns.nameserver();
        config::write_atomic(
            &l.dns_port_file(),
            format!("{}\n", dns.port()).as_bytes(),
            0o644,
            None,
        )?;
        for (name, body) in config::rspamd_local_d(l, &ns) {
            config::write_if_changed(&l.etc_rspamd().join("local.d").join(name), &body, false)?;
        }
        write_milter_config(&bins.dkim_milter, &l.dkim_config(), |root| {
            config::dkim_milter_toml(l, &ns, root)
        })?;
        write_milter_config(
            &bins.spam_milter,
            &l.spam_config(),
            config::spam_milter_toml,
        )?;
        let sink = Sink::start(SINK_PORT, &l.sink_dir(), &l.log("sink"))?;
        procs::write_pid(l, SUPERVISOR, std::process::id())?;

        let mut stack = Stack {
            l: l.clone(),
            dns,
            sink: Some(sink),
            watcher: None,
            children: Vec::new(),
            postfix_master: None,
            stopped: false,
            startup: Duration::ZERO,
            _lock: lock,
        };
        stack.spawn_all(bins)?;
        stack.wait_ready()?;
        stack.watcher = Some(spawn_key_watcher(l.clone(), stack.dns.clone()));
        stack.startup = t0.elapsed();
        config::write_atomic(
            &l.ready_file(),
            format!("up {:.1}s\n", stack.startup.as_secs_f64()).as_bytes(),
            0o644,
            None,
        )?;
        Ok(stack)
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command, out: &Path) -> Result<()> {
        let child = sys::spawn_daemon(clean_sigmask(cmd), out)?;
        procs::write_pid(&self.l, name, child.id())?;
        self.children.push((name, child));
        Ok(())
    }

    fn spawn_all(&mut self, bins: &Binaries) -> Result<()> {
        let l = self.l.clone();
        // Rspamd first: its first start compiles the hyperscan cache (~10 s) while the others start.
        self.spawn(
            "rspamd",
            Command::new("/usr/bin/rspamd")
                .args([
                    "-f",
                    "-u",
                    "root",
                    "-g",
                    "root",
                    "-c",
                    "/etc/rspamd/rspamd.conf",
                ])
                .arg(format!("--var=LOCAL_CONFDIR={}", l.etc_rspamd().display()))
                .arg(format!("--var=DBDIR={}", l.rspamd_db().display()))
                .arg(format!("--var=RUNDIR={}", l.run_dir().display()))
                .arg(format!("--var=LOGDIR={}", l.log_dir().display())),
            &l.log("rspamd.stdout"),
        )?;
        for (name, bin, conf) in [
            ("spam-milter", &bins.spam_milter, l.spam_config()),
            ("dkim-milter", &bins.dkim_milter, l.dkim_config()),
        ] {
            let mut cmd = Command::new(bin);
            cmd.arg("--config").arg(&conf).env("NO_COLOR", "1");
            // The HTTP client honours proxy variables; scans must go straight to Rspamd.
            for v in [
                "HTTP_PROXY",
                "http_proxy",
                "HTTPS_PROXY",
                "https_proxy",
                "ALL_PROXY",
                "all_proxy",
            ] {
                cmd.env_remove(v);
            }
            self.spawn(name, &mut cmd, &l.log(name))?;
        }
        self.spawn(
            "dovecot",
            Command::new("/usr/sbin/dovecot")
                .env("DOVECOT_HOSTDOMAIN", HOSTNAME)
                .arg("-F")
                .arg("-c")
                .arg(l.etc_dovecot().join("dovecot.conf")),
            &l.log("dovecot.stdout"),
        )?;
        self.start_postfix()
    }

    fn start_postfix(&mut self) -> Result<()> {
        let l = self.l.clone();
        // The harness serialises `postfix start` across instances (post-install touches
        // shared package files); take the same lock.
        let _lock = sys::FileLock::acquire(&std::env::temp_dir().join("stack-tests-postfix.lock"))?;
        let out_path = l.log("postfix-start");
        let out = std::fs::File::create(&out_path)?;
        let status = clean_sigmask(&mut Command::new("/usr/sbin/postfix"))
            .arg("-c")
            .arg(l.etc_postfix())
            .arg("start")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .context("running postfix start")?;
        let pid_path = l.queue_dir().join("pid/master.pid");
        if let Some(pid) = std::fs::read_to_string(&pid_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            self.postfix_master = Some(pid);
            procs::write_pid(&l, "postfix", pid)?;
        }
        if !status.success() || self.postfix_master.is_none() {
            bail!(
                "postfix -c {} start failed ({status}):\n{}\n{}",
                l.etc_postfix().display(),
                sys::read_lossy(&out_path),
                procs::tail(&l.log("postfix"), 20)
            );
        }
        Ok(())
    }

    fn check_children(&mut self) -> Result<()> {
        for (name, child) in &mut self.children {
            if let Some(st) = child.try_wait()? {
                let log = match *name {
                    "rspamd" => self.l.log("rspamd"),
                    "dovecot" => self.l.log("dovecot"),
                    n => self.l.log(n),
                };
                bail!("{name} exited with {st}; {}", procs::tail(&log, 30));
            }
        }
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut pending: BTreeMap<&str, bool> = BTreeMap::new();
        loop {
            self.check_children()?;
            pending.insert(
                "rspamd",
                rspamd_pong() && sys::port_open(RSPAMD_NORMAL_PORT),
            );
            pending.insert("spam-milter", sys::port_open(SPAM_MILTER_PORT));
            pending.insert("dkim-milter", sys::port_open(DKIM_MILTER_PORT));
            pending.insert(
                "dovecot",
                self.l.dovecot_base().join("auth-postfix").exists()
                    && sys::port_open(IMAPS_PORT)
                    && sys::port_open(POP3S_PORT),
            );
            if pending.values().all(|v| *v) {
                break;
            }
            if Instant::now() > deadline {
                let waiting: Vec<&str> = pending
                    .iter()
                    .filter(|(_, v)| !**v)
                    .map(|(k, _)| *k)
                    .collect();
                bail!("timed out waiting for {}", waiting.join(", "));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for p in [MX_PORT, SUBMISSION_PORT] {
            let banner = sys::wait_smtp_banner(p, Duration::from_secs(30))
                .with_context(|| procs::tail(&self.l.log("postfix"), 20))?;
            if !banner.starts_with("220") {
                bail!("Postfix on port {p} greeted with {banner:?}");
            }
        }
        Ok(())
    }

    /// Daemons that exited on their own since the last call (the supervisor logs them).
    pub fn reap_exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, child) in &mut self.children {
            if let Ok(Some(st)) = child.try_wait() {
                out.push(format!("{name} exited on its own with {st}"));
            }
        }
        out
    }

    /// The DNS stub's port.
    pub fn dns_port(&self) -> u16 {
        self.dns.port()
    }

    /// Stops everything that was started, in reverse order (idempotent).
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let l = self.l.clone();
        let _ = std::fs::remove_file(l.ready_file());
        let mut errors = Vec::new();
        let mut times = Vec::new();
        let t0 = Instant::now();
        if let Some(pid) = self.postfix_master.take() {
            if let Err(e) = stop_postfix(&l, pid) {
                errors.push(format!("{e:#}"));
            }
            times.push(format!("postfix {} ms", t0.elapsed().as_millis()));
        }
        procs::remove_pid(&l, "postfix");
        // The rest at once: SIGTERM to all, then wait for each.
        let t0 = Instant::now();
        for (_, child) in &self.children {
            sys::signal(child.id() as i32, libc::SIGTERM);
        }
        for (name, mut child) in self.children.drain(..).rev() {
            if let Err(e) = procs::stop_pid(child.id(), Some(&mut child), Duration::from_secs(15)) {
                errors.push(format!("{name}: {e:#}"));
            }
            times.push(format!("{name} {} ms", t0.elapsed().as_millis()));
            procs::remove_pid(&l, name);
        }
        println!("[mail-stack] stopped: {}", times.join(", "));
        if let Some((stop, t)) = self.watcher.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = t.join();
        }
        self.sink.take();
        let _ = std::fs::remove_file(l.dns_port_file());
        procs::remove_pid(&l, SUPERVISOR);
        if !errors.is_empty() {
            bail!("stopping the stack: {}", errors.join("; "));
        }
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("[mail-stack] {e:#}");
        }
    }
}

/// Writes a milter's config with `allow-root = true` (the stack runs its daemons as root)
/// and checks it with `--check-config`; a binary that does not know that option (it was
/// added later) gets the file without it.
fn write_milter_config(bin: &Path, path: &Path, text: impl Fn(bool) -> String) -> Result<()> {
    let check = || {
        sys::run(
            Command::new(bin)
                .arg("--config")
                .arg(path)
                .arg("--check-config"),
        )
    };
    config::write_if_changed(path, &text(true), false)?;
    let out = check()?;
    if out.status.success() {
        return Ok(());
    }
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if said.contains("allow-root") {
        config::write_if_changed(path, &text(false), false)?;
        let out = check()?;
        if out.status.success() {
            return Ok(());
        }
    }
    bail!(
        "{} --config {} --check-config:\n{said}",
        bin.display(),
        path.display()
    )
}

/// Gives the child an empty signal mask: the supervisor blocks SIGINT/SIGTERM/SIGHUP to
/// take them with sigtimedwait, and std's spawn passes the caller's mask on.
#[allow(unsafe_code)]
pub fn clean_sigmask(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: sigemptyset and pthread_sigmask are async-signal-safe and touch only the
    // child's own local set and mask between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        })
    }
}

/// `postfix -c DIR stop`, then the master's process group if it lingers.
pub fn stop_postfix(l: &Layout, master: u32) -> Result<()> {
    let _ = sys::run(
        Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(l.etc_postfix())
            .arg("stop"),
    );
    procs::stop_pid(master, None, Duration::from_secs(10)).context("Postfix master")
}

/// Keeps the DNS stub's DKIM records equal to the keys dir (polled every 0.5 s), so a key
/// made by add-domain is published within a second.
fn spawn_key_watcher(l: Layout, dns: Arc<DnsStub>) -> (Arc<AtomicBool>, JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let t = std::thread::spawn(move || {
        let mut published: BTreeMap<String, String> =
            accounts::all_dkim_records(&l).into_iter().collect();
        while !stop2.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(500));
            let now: BTreeMap<String, String> =
                accounts::all_dkim_records(&l).into_iter().collect();
            if now == published {
                continue;
            }
            for name in published.keys() {
                if !now.contains_key(name) {
                    dns.remove(name);
                }
            }
            for (name, rec) in &now {
                if published.get(name) != Some(rec) {
                    dns.remove(name);
                    if let Err(e) = dns.add_txt(name, rec) {
                        eprintln!("[mail-stack] cannot publish {name}: {e:#}");
                    } else {
                        println!("[mail-stack] DNS stub: published {name}");
                    }
                }
            }
            published = now;
        }
    });
    (stop, t)
}
