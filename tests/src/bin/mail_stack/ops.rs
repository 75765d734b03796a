//! Operations from another shell: `status`, `down`, and waiting for dkim-milter to pick up
//! a new key after `add-domain`.

use super::accounts;
use super::layout::*;
use super::procs::{self, DAEMONS, SUPERVISOR};
use super::stack;
use anyhow::{Result, bail};
use stack_tests::sys;
use std::time::{Duration, Instant};

/// Stops the stack in the state directory: the supervisor (which stops its daemons), then
/// by pid whatever is left of a supervisor that died; then checks /proc that nothing of
/// the stack runs.
pub fn down(l: &Layout) -> Result<()> {
    let t0 = Instant::now();
    let pgids = procs::recorded_pgids(l);
    let mut stopped = Vec::new();
    if let Some(pid) = procs::live_pid(l, SUPERVISOR, "mail-stack")
        && pid != std::process::id()
    {
        sys::signal(pid as i32, libc::SIGTERM);
        if !sys::wait_pid_gone(pid, Duration::from_secs(60)) {
            sys::signal(pid as i32, libc::SIGKILL);
            sys::wait_pid_gone(pid, Duration::from_secs(5));
        }
        stopped.push(format!("supervisor {pid}"));
    }
    for (name, exe) in DAEMONS.iter().rev() {
        if let Some(pid) = procs::live_pid(l, name, exe) {
            let r = if *name == "postfix" {
                stack::stop_postfix(l, pid)
            } else {
                procs::stop_pid(pid, None, Duration::from_secs(15))
            };
            r?;
            stopped.push(format!("{name} {pid}"));
        }
        procs::remove_pid(l, name);
    }
    procs::remove_pid(l, SUPERVISOR);
    let _ = std::fs::remove_file(l.ready_file());
    let _ = std::fs::remove_file(l.dns_port_file());
    let left = procs::stack_processes(l, &pgids);
    if !left.is_empty() {
        let list: Vec<String> = left
            .iter()
            .map(|p| format!("{} {} ({})", p.pid, p.exe, p.why))
            .collect();
        bail!("still running after down: {}", list.join("; "));
    }
    let what = if stopped.is_empty() {
        "nothing was running".to_string()
    } else {
        format!("stopped {}", stopped.join(", "))
    };
    println!(
        "mail stack in {} is down: {what}; /proc shows no process of it ({:.1} s)",
        l.root().display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether a complete stack runs (supervisor up and ready).
pub fn is_up(l: &Layout) -> bool {
    procs::live_pid(l, SUPERVISOR, "mail-stack").is_some() && l.ready_file().exists()
}

/// One line of `status`: component, live pid, ports, a note.
type Row = (&'static str, Option<u32>, Vec<(u16, &'static str)>, String);

/// Prints the state of every component; returns the exit code (0 up, 1 partly, 3 down).
pub fn status(l: &Layout) -> Result<i32> {
    let dns = std::fs::read_to_string(l.dns_port_file())
        .ok()
        .map(|p| format!("DNS stub 127.0.0.1:{}", p.trim()))
        .unwrap_or_else(|| "DNS stub".into());
    let rows: Vec<Row> = vec![
        (
            "supervisor",
            procs::live_pid(l, SUPERVISOR, "mail-stack"),
            vec![(SINK_PORT, "sink")],
            dns,
        ),
        (
            "rspamd",
            procs::live_pid(l, "rspamd", "rspamd"),
            vec![
                (RSPAMD_NORMAL_PORT, "normal"),
                (RSPAMD_CONTROLLER_PORT, "controller"),
            ],
            format!("log {}", l.log("rspamd").display()),
        ),
        (
            "spam-milter",
            procs::live_pid(l, "spam-milter", "spam-milter"),
            vec![(SPAM_MILTER_PORT, "milter"), (SPAM_METRICS_PORT, "metrics")],
            format!("log {}", l.log("spam-milter").display()),
        ),
        (
            "dkim-milter",
            procs::live_pid(l, "dkim-milter", "dkim-milter"),
            vec![(DKIM_MILTER_PORT, "milter"), (DKIM_METRICS_PORT, "metrics")],
            format!("log {}", l.log("dkim-milter").display()),
        ),
        (
            "dovecot",
            procs::live_pid(l, "dovecot", "dovecot"),
            vec![(IMAPS_PORT, "imaps"), (POP3S_PORT, "pop3s")],
            format!("log {}", l.log("dovecot").display()),
        ),
        (
            "postfix",
            procs::live_pid(l, "postfix", "master"),
            vec![(MX_PORT, "mx"), (SUBMISSION_PORT, "submission")],
            format!("log {}", l.log("postfix").display()),
        ),
    ];
    let running = rows.iter().filter(|r| r.1.is_some()).count();
    let state = match running {
        0 => "DOWN",
        n if n == rows.len() && l.ready_file().exists() => "UP",
        _ => "PARTLY UP (run down, then up)",
    };
    println!("mail stack in {}: {state}", l.root().display());
    for (name, pid, ports, extra) in &rows {
        let ports: Vec<String> = ports
            .iter()
            .map(|(p, what)| {
                let ok = if pid.is_some() && sys::port_open(*p) {
                    ""
                } else {
                    " (closed)"
                };
                format!("{what} 127.0.0.1:{p}{ok}")
            })
            .collect();
        let pid = pid.map_or_else(|| "not running".to_string(), |p| format!("pid {p}"));
        println!("  {name:<12} {pid:<12} {}; {extra}", ports.join(", "));
    }
    let domains = accounts::domains(l).unwrap_or_default();
    println!(
        "  accounts:    {} domain(s) ({}), {} mailbox(es), {} alias(es)",
        domains.len(),
        domains.join(" "),
        accounts::mailboxes(l).map(|m| m.len()).unwrap_or(0),
        accounts::aliases(l).map(|a| a.len()).unwrap_or(0)
    );
    Ok(match running {
        0 => 3,
        n if n == rows.len() => 0,
        _ => 1,
    })
}

/// Byte length of dkim-milter's log now (where to look for the next reload's lines).
pub fn dkim_log_offset(l: &Layout) -> u64 {
    std::fs::metadata(l.log("dkim-milter")).map_or(0, |m| m.len())
}

/// Waits until dkim-milter's log, after `offset`, says it loaded `domain`'s key.
pub fn wait_key_loaded(l: &Layout, domain: &str, offset: u64) -> Result<String> {
    let needle = format!("{domain}: s={SELECTOR}");
    let path = l.log("dkim-milter");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let bytes = std::fs::read(&path).unwrap_or_default();
        let text = String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or(&[]));
        // A reload that caught keygen half-way reports an error; the next poll sees the
        // finished files.
        let bad = |l: &str| l.contains("ERROR") || l.contains("WARN") || l.contains("error");
        if let Some(line) = text.lines().find(|l| l.contains(&needle) && !bad(l)) {
            return Ok(line.trim().to_string());
        }
        if Instant::now() > deadline {
            bail!(
                "dkim-milter did not load {domain}'s key within 15 s; {}",
                procs::tail(&path, 10)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
