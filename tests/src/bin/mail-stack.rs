//! The main job: the designed mail stack on loopback, under one state directory.
//!
//! Postfix in the MX role (spam-milter -> Rspamd -> Maildir) and the submission role
//! (STARTTLS, SASL through Dovecot, spam-milter then dkim-milter -> the sink standing in
//! for remote MX hosts), Dovecot IMAPS/POP3S, Rspamd with its controller on loopback and a
//! DNS stub as the only resolver. `tests/stack/run-stack.sh` installs what is missing,
//! builds, and runs this binary.
//!
//! ```text
//! mail-stack [up] [--detach]        bring the stack up (foreground until Ctrl-C, or detached)
//! mail-stack status | down          from any shell
//! mail-stack add-domain DOMAIN      key made with dkim-milter keygen, signing without a restart
//! mail-stack add-mailbox ADDRESS PASSWORD
//! mail-stack add-alias FROM TO[,TO...]
//! mail-stack remove-domain DOMAIN
//! mail-stack --check                every flow, on the running stack or on one brought up for it
//! options: --state-dir DIR (default $MILTER_STACK_DIR or /var/tmp/milter-stack),
//!          --dkim-milter PATH, --spam-milter PATH (default: next to this binary)
//! ```

#[path = "mail_stack/mod.rs"]
mod mail_stack;

use anyhow::{Context, Result, bail};
use mail_stack::layout::{DEFAULT_STATE_DIR, Layout, STATE_ENV};
use mail_stack::stack::Stack;
use mail_stack::{Binaries, accounts, checks, ops, procs, stack, usage};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: mail-stack [COMMAND] [OPTIONS]
commands:
  up [--detach]                 bring the stack up (default; foreground until Ctrl-C)
  status                        what runs, where
  down                          stop everything the stack started; check /proc
  add-domain DOMAIN             host DOMAIN; its DKIM key is made and used without a restart
  add-mailbox ADDRESS PASSWORD  add (or re-password) a mailbox of a hosted domain
  add-alias FROM TO[,TO...]     add (or replace) an alias
  remove-domain DOMAIN          stop hosting DOMAIN (its Maildirs stay)
  --check                       check every flow (on the running stack, or bring one up and down)
options:
  --state-dir DIR               default $MILTER_STACK_DIR, else /var/tmp/milter-stack
  --dkim-milter PATH            default: next to this binary
  --spam-milter PATH            default: next to this binary";

enum Cmd {
    Up { detach: bool, supervise: bool },
    Status,
    Down,
    Check,
    AddDomain(String),
    AddMailbox(String, String),
    AddAlias(String, String),
    RemoveDomain(String),
}

struct Args {
    cmd: Cmd,
    state: PathBuf,
    bins: Binaries,
}

fn parse_args() -> Result<Args> {
    let mut bins = Binaries::beside_self();
    let mut state = std::env::var_os(STATE_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from);
    let (mut detach, mut supervise, mut check) = (false, false, false);
    let mut words = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--state-dir" => state = PathBuf::from(value("--state-dir")?),
            "--dkim-milter" => bins.dkim_milter = PathBuf::from(value("--dkim-milter")?),
            "--spam-milter" => bins.spam_milter = PathBuf::from(value("--spam-milter")?),
            "--detach" | "-d" => detach = true,
            "--supervise" => supervise = true,
            "--check" => check = true,
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            o if o.starts_with('-') => bail!("unknown option {o:?}\n{USAGE}"),
            _ => words.push(a),
        }
    }
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let cmd = match (check, w.as_slice()) {
        (true, []) | (false, ["check"]) => Cmd::Check,
        (false, [] | ["up"]) => Cmd::Up { detach, supervise },
        (false, ["status"]) => Cmd::Status,
        (false, ["down"]) => Cmd::Down,
        (false, ["add-domain", d]) => Cmd::AddDomain(d.to_ascii_lowercase()),
        (false, ["add-mailbox", a, p]) => Cmd::AddMailbox(a.to_string(), p.to_string()),
        (false, ["add-alias", f, t]) => Cmd::AddAlias(f.to_string(), t.to_string()),
        (false, ["remove-domain", d]) => Cmd::RemoveDomain(d.to_ascii_lowercase()),
        _ => bail!("cannot make sense of {:?}\n{USAGE}", words),
    };
    Ok(Args { cmd, state, bins })
}

fn main() {
    let code = match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mail-stack: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn real_main() -> Result<i32> {
    let args = parse_args()?;
    let l = Layout::new(&args.state);
    match args.cmd {
        Cmd::Up {
            detach: true,
            supervise: false,
        } => up_detached(&l, &args.bins),
        Cmd::Up { supervise, .. } => up_foreground(&l, &args.bins, supervise),
        Cmd::Status => {
            restore_sigpipe();
            ops::status(&l)
        }
        Cmd::Down => ops::down(&l).map(|()| 0),
        Cmd::Check => check(&l, &args.bins),
        Cmd::AddDomain(d) => add_domain(&l, &args.bins, &d),
        Cmd::AddMailbox(a, p) => {
            stack::prepare(&l, &args.bins)?;
            accounts::add_mailbox(&l, &a, &p)?;
            println!(
                "mailbox {a} added: Maildir {}; it can log in (IMAPS, POP3S, SMTP AUTH) now",
                {
                    let a = a.to_ascii_lowercase();
                    let (local, d) = a.split_once('@').unwrap_or((&a, ""));
                    l.maildir(d, local).display().to_string()
                }
            );
            Ok(0)
        }
        Cmd::AddAlias(f, t) => {
            stack::prepare(&l, &args.bins)?;
            accounts::add_alias(&l, &f, &t)?;
            println!("alias {f} -> {t} added (virtual map rebuilt; Postfix picks it up by itself)");
            Ok(0)
        }
        Cmd::RemoveDomain(d) => {
            stack::prepare(&l, &args.bins)?;
            let mail = accounts::remove_domain(&l, &d)?;
            println!(
                "{d} is no longer hosted; its mail stays in {}",
                mail.display()
            );
            Ok(0)
        }
    }
}

fn add_domain(l: &Layout, bins: &Binaries, d: &str) -> Result<i32> {
    stack::prepare(l, bins)?;
    let offset = ops::dkim_log_offset(l);
    let zone = accounts::add_domain(l, bins, d)?;
    println!(
        "{d} is hosted; its DKIM key: {}",
        l.keys_dir().join(d).display()
    );
    println!(
        "publish this TXT record (the stack's DNS stub serves it already):\n{}",
        zone.trim_end()
    );
    if ops::is_up(l) {
        let line = ops::wait_key_loaded(l, d, offset)?;
        println!("dkim-milter signs for {d} now, no restart: {line}");
    }
    println!(
        "next: {} add-mailbox someone@{d} PASSWORD",
        usage::run_command(l)
    );
    Ok(0)
}

/// `status | head` ends quietly, like other command-line tools, instead of a panic about a
/// broken pipe.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: resetting a signal to its default disposition has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and the threads it starts later) so
/// they are taken with sigtimedwait; children get a clean mask from std's spawn.
#[allow(unsafe_code)]
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the local set; pthread_sigmask changes this
    // thread's mask only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The pending blocked signal, waiting up to `timeout`.
#[allow(unsafe_code)]
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: both pointers are to live values; a null siginfo is allowed.
    let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}

fn up_foreground(l: &Layout, bins: &Binaries, supervise: bool) -> Result<i32> {
    let set = block_signals();
    let mut stack = Stack::start(l, bins)?;
    if supervise {
        println!(
            "[mail-stack] up in {:.1} s (supervisor pid {})",
            stack.startup.as_secs_f64(),
            std::process::id()
        );
    } else {
        usage::print(l, stack.startup, stack.dns_port(), false);
    }
    loop {
        match wait_signal(&set, Duration::from_millis(500)) {
            Some(libc::SIGHUP) if supervise => continue,
            Some(sig) => {
                println!("[mail-stack] signal {sig}: stopping the stack");
                break;
            }
            None => {
                for msg in stack.reap_exited() {
                    eprintln!(
                        "[mail-stack] {msg}; the stack keeps running without it (down, then up)"
                    );
                }
            }
        }
    }
    let t = Instant::now();
    stack.stop()?;
    println!("[mail-stack] stopped in {:.1} s", t.elapsed().as_secs_f64());
    Ok(0)
}

/// Starts a supervisor in its own session (log: {state}/log/mail-stack.log) and returns
/// once the stack is ready.
#[allow(unsafe_code)]
fn up_detached(l: &Layout, bins: &Binaries) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    stack::preflight(l, bins)?;
    stack::prepare_dirs(l)?;
    if procs::supervisor_running(l) {
        bail!(
            "a stack already runs in {}: use status or down",
            l.root().display()
        );
    }
    let log = l.log("mail-stack");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let start = std::fs::metadata(&log).map_or(0, |m| m.len());
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["up", "--supervise", "--state-dir"])
        .arg(l.root())
        .arg("--dkim-milter")
        .arg(&bins.dkim_milter)
        .arg("--spam-milter")
        .arg(&bins.spam_milter)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the supervisor")?;
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            let text = stack_tests::sys::read_lossy(&log);
            bail!(
                "the supervisor exited with {st}:\n{}",
                text.get(start as usize..).unwrap_or(&text)
            );
        }
        if ops::is_up(l) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(180) {
            bail!("the stack is not up after 180 s; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dns = std::fs::read_to_string(l.dns_port_file())
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0);
    usage::print(l, t0.elapsed(), dns, true);
    println!("supervisor pid {} (log {})", child.id(), log.display());
    Ok(0)
}

fn check(l: &Layout, bins: &Binaries) -> Result<i32> {
    let set = block_signals();
    stack::prepare_dirs(l)?;
    let _serial = stack_tests::sys::FileLock::acquire(&l.check_lock())?;
    let t0 = Instant::now();
    // Ctrl-C during the checks still stops what the check started (not a stack it found).
    let ours = Arc::new(AtomicBool::new(false));
    {
        let (l, ours) = (l.clone(), ours.clone());
        std::thread::spawn(move || {
            if let Some(sig) = wait_signal(&set, Duration::from_secs(u32::MAX as u64)) {
                println!("[mail-stack] signal {sig}: stopping");
                if ours.load(Ordering::SeqCst) {
                    let _ = ops::down(&l);
                }
                std::process::exit(130);
            }
        });
    }
    if ops::is_up(l) {
        println!("== checking the running stack in {}", l.root().display());
        let failed = checks::run(l, bins)?;
        return Ok(i32::from(failed > 0));
    }
    if procs::supervisor_running(l) {
        bail!(
            "a stack in {} is starting or not ready: see `status`, or `down` it",
            l.root().display()
        );
    }
    ours.store(true, Ordering::SeqCst);
    println!(
        "== bringing the stack up in {} for the check",
        l.root().display()
    );
    let mut stack = Stack::start(l, bins)?;
    println!("== up in {:.1} s", stack.startup.as_secs_f64());
    let failed = checks::run(l, bins);
    let pgids = procs::recorded_pgids(l);
    let t = Instant::now();
    let stopped = stack.stop();
    drop(stack);
    ours.store(false, Ordering::SeqCst);
    let failed = failed?;
    stopped?;
    let left = procs::stack_processes(l, &pgids);
    let down_ok = left.is_empty();
    if down_ok {
        println!(
            "PASS  down leaves nothing running [{} ms]\n      every daemon stopped by pid; /proc shows no process of the stack",
            t.elapsed().as_millis()
        );
    } else {
        println!("FAIL  down leaves nothing running\n      still running: {left:?}");
    }
    println!(
        "== {} in {:.1} s (bring-up, checks, teardown)",
        if failed == 0 && down_ok {
            "all checks passed"
        } else {
            "CHECKS FAILED"
        },
        t0.elapsed().as_secs_f64()
    );
    Ok(i32::from(failed > 0 || !down_ok))
}
