//! The main job: a working mail stack on loopback with our milters in it.
//!
//! Postfix (MX and submission with Dovecot SASL), Dovecot (IMAPS/POP3S), a sink standing in
//! for remote MXes, and dkim-milter signing outbound and verifying inbound mail. It prints how
//! to use the stack and runs until Ctrl-C or SIGTERM. With `--check` it sends mail through
//! every flow, checks each result with independent tools, prints one line per check and
//! exits non-zero if any failed.
//!
//! Usage: `mail-stack --dkim-milter PATH [--check]` (tests/stack/run-stack.sh builds and
//! passes the binary).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use stack_tests::dkim::{self, DkimKey};
use stack_tests::postfix::Postfix;
use stack_tests::{ports, swaks, sys};

const DOMAINS: [&str; 2] = ["example.test", "other.test"];

/// Source address of clients playing the internet: on loopback, but not an internal host.
const REMOTE_CLIENT: &str = "127.0.0.2";

struct Args {
    dkim_milter: PathBuf,
    check: bool,
}

fn parse_args() -> Result<Args> {
    let mut dkim_milter = None;
    let mut check = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dkim-milter" => dkim_milter = it.next().map(PathBuf::from),
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: mail-stack --dkim-milter PATH [--check]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(Args {
        dkim_milter: dkim_milter.context("--dkim-milter PATH is required")?,
        check,
    })
}

/// dkim-milter running as a child process, stopped on drop.
struct DkimMilter {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for DkimMilter {
    fn drop(&mut self) {
        sys::stop_child(&mut self.child, Duration::from_secs(10));
    }
}

fn start_dkim_milter(bin: &Path, dir: &Path) -> Result<(DkimMilter, Vec<DkimKey>)> {
    let keys_dir = dir.join("keys");
    let mut keys = Vec::new();
    for domain in DOMAINS {
        let out = sys::run_checked(
            Command::new(bin)
                .args([
                    "keygen",
                    "--domain",
                    domain,
                    "--selector",
                    "mail",
                    "--keys-dir",
                ])
                .arg(&keys_dir),
        )?;
        let zone = keys_dir.join(domain).join("mail.txt");
        let txt = std::fs::read_to_string(&zone)
            .with_context(|| format!("keygen wrote no {}", zone.display()))?;
        keys.push(DkimKey {
            domain: domain.to_string(),
            selector: "mail".to_string(),
            private_key: keys_dir.join(domain).join("mail.private"),
            txt_record: dkim::txt_record_from_zone(&txt)?,
        });
        drop(out);
    }
    let port = ports::free_port()?;
    let config = dir.join("dkim-milter.toml");
    // Only 127.0.0.1 is internal (local sendmail/pickup mail); "internet" clients connect
    // from 127.0.0.2 (REMOTE_CLIENT), so port-25 strangers really are strangers here.
    std::fs::write(
        &config,
        format!(
            "socket = \"inet:127.0.0.1:{port}\"\n\
             keys-dir = \"{}\"\n\
             internal-hosts = [\"127.0.0.1\", \"::1\"]\n\
             originating-daemon-names = [\"ORIGINATING\"]\n\
             authserv-id = \"mx.example.test\"\n\
             key-permissions = \"warn\"\n",
            keys_dir.display()
        ),
    )?;
    sys::run_checked(
        Command::new(bin)
            .arg("--config")
            .arg(&config)
            .arg("--check-config"),
    )?;
    let log = dir.join("dkim-milter.log");
    let child = sys::spawn_daemon(Command::new(bin).arg("--config").arg(&config), &log)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sys::port_open(port) {
        if Instant::now() > deadline {
            bail!(
                "dkim-milter did not listen on {port}; its log:\n{}",
                sys::read_lossy(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((DkimMilter { child, port, log }, keys))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let sandbox = sys::Sandbox::new("mail-stack")?;
    let (milter, keys) = start_dkim_milter(&args.dkim_milter, sandbox.path())?;
    let spec = format!("inet:127.0.0.1:{}", milter.port);
    let postfix = Postfix::builder()
        .mx_milters(&spec)
        .submission(&spec)
        .non_smtpd_milters(&spec)
        .domain("example.test")
        .domain("other.test")
        .user("user@example.test", "userpass")
        .user("admin@other.test", "adminpass")
        .alias("alias@example.test", "user@example.test")
        .start()?;

    if args.check {
        let failed = run_checks(&postfix, &keys, &milter)?;
        if failed > 0 {
            bail!("{failed} check(s) failed");
        }
        return Ok(());
    }

    print_usage(&postfix, &milter, sandbox.path());
    wait_for_signal();
    println!("stopping");
    Ok(())
}

fn print_usage(pf: &Postfix, milter: &DkimMilter, dir: &Path) {
    let dovecot = pf.dovecot();
    println!(
        "mail stack is up (Ctrl-C stops it)\n\
         \n  MX (inbound, verified):      127.0.0.1:{mx}\n  \
         submission (SASL, signed):   127.0.0.1:{sub}  STARTTLS + AUTH\n  \
         IMAPS / POP3S:               127.0.0.1:{imaps} / 127.0.0.1:{pop3s}\n  \
         dkim-milter:                 inet:127.0.0.1:{dkim}  log {dlog}\n  \
         remote MX sink:              {sink}\n  \
         Postfix log:                 {plog}\n  \
         Maildirs:                    {maildirs}\n  \
         accounts:                    user@example.test/userpass, admin@other.test/adminpass\n\
         \ntry:\n  \
         swaks --server 127.0.0.1:{sub} --tls --auth PLAIN --auth-user user@example.test \
         --auth-password userpass --from user@example.test --to friend@remote.test\n  \
         swaks --server 127.0.0.1:{mx} --local-interface {remote} --from alice@remote.test \
         --to user@example.test\n\
         \nsandbox: {dir}",
        mx = pf.mx_port(),
        sub = pf.submission_port(),
        imaps = dovecot.imaps_port(),
        pop3s = dovecot.pop3s_port(),
        dkim = milter.port,
        dlog = milter.log.display(),
        sink = pf.relayhost(),
        plog = pf.log_path().display(),
        maildirs = pf.mail_root().display(),
        dir = dir.display(),
        remote = REMOTE_CLIENT,
    );
}

/// Blocks until SIGINT or SIGTERM, so the daemons are stopped by the handles' Drop.
fn wait_for_signal() {
    let mut set = blocked_signal_set();
    let mut sig: libc::c_int = 0;
    loop {
        // sigwait returns 0 once one of the blocked signals is pending.
        if sigwait(&mut set, &mut sig) == 0 {
            return;
        }
    }
}

#[allow(unsafe_code)]
fn blocked_signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the local set; pthread_sigmask blocks the two
    // signals for this (only) thread so sigwait can take them.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

#[allow(unsafe_code)]
fn sigwait(set: &mut libc::sigset_t, sig: &mut libc::c_int) -> libc::c_int {
    // SAFETY: both pointers are to live locals.
    unsafe { libc::sigwait(set, sig) }
}

struct Checks {
    failed: usize,
    passed: usize,
}

impl Checks {
    fn record(&mut self, name: &str, result: Result<String>) {
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!("PASS  {name}: {detail}");
            }
            Err(e) => {
                self.failed += 1;
                println!("FAIL  {name}: {e:#}");
            }
        }
    }
}

fn run_checks(pf: &Postfix, keys: &[DkimKey], milter: &DkimMilter) -> Result<usize> {
    let records: Vec<(String, String)> = keys.iter().map(DkimKey::record).collect();
    let mut c = Checks {
        failed: 0,
        passed: 0,
    };
    let t = Duration::from_secs(30);

    c.record("submission is signed and verifies", {
        let subject = "stack-check-submission";
        (|| {
            let run = swaks::submit(
                pf.submission_port(),
                ("user@example.test", "userpass"),
                "user@example.test",
                "friend@remote.test",
                &["--header", &format!("Subject: {subject}")],
            )?;
            let code = run.final_reply().map(|r| r.code);
            if code != Some(250) {
                bail!("submission answered {code:?}:\n{}", run.transcript);
            }
            let msgs = pf.sink().wait_for(1, t)?;
            let msg = msgs
                .iter()
                .find(|m| m.text().contains(subject))
                .context("message not at the sink")?;
            let dkimpy = dkim::dkimpy_verify(&msg.data, &records)?;
            let opendkim = dkim::opendkim_test_verify(&msg.data, &records)?;
            if !dkimpy.all_pass || !opendkim.all_pass {
                bail!(
                    "dkimpy: {:?}; opendkim -t: {:?}",
                    dkimpy.lines,
                    opendkim.lines
                );
            }
            Ok("d=example.test; dkimpy and opendkim -t pass".to_string())
        })()
    });

    c.record("sendmail (non_smtpd_milters) is signed", {
        (|| {
            let before = pf.sink().messages().len();
            let msg = b"From: admin@other.test\r\nTo: friend@remote.test\r\nSubject: stack-check-sendmail\r\n\r\nhello\r\n";
            let out = pf.sendmail(&["-f", "admin@other.test", "friend@remote.test"], msg)?;
            if !out.status.success() {
                bail!("sendmail failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let msgs = pf.sink().wait_for(before + 1, t)?;
            let msg = msgs
                .iter()
                .find(|m| m.text().contains("stack-check-sendmail"))
                .context("message not at the sink")?;
            if !msg.text().contains("d=other.test") {
                bail!("no d=other.test signature:\n{}", msg.text());
            }
            let v = dkim::dkimpy_verify(&msg.data, &records)?;
            if !v.all_pass {
                bail!("dkimpy: {:?}", v.lines);
            }
            Ok("d=other.test; dkimpy passes".to_string())
        })()
    });

    c.record(
        "a port-25 stranger claiming our domain is delivered unsigned, with A-R",
        {
            (|| {
                let run = swaks::swaks(&[
                    "--server",
                    &format!("127.0.0.1:{}", pf.mx_port()),
                    "--local-interface",
                    REMOTE_CLIENT,
                    // A stranger claiming a hosted domain: must not get our signature.
                    "--from",
                    "boss@example.test",
                    "--to",
                    "alias@example.test",
                    "--header",
                    "Subject: stack-check-inbound",
                ])?;
                let code = run.final_reply().map(|r| r.code);
                if code != Some(250) {
                    bail!("MX answered {code:?}:\n{}", run.transcript);
                }
                let msgs = pf.maildir("example.test", "user").wait_for(1, t)?;
                let text = String::from_utf8_lossy(&msgs[0]).into_owned();
                if text.contains("DKIM-Signature:") {
                    bail!("inbound mail from a stranger was signed:\n{text}");
                }
                if !text.contains("Authentication-Results: mx.example.test") {
                    bail!("no Authentication-Results from dkim-milter:\n{text}");
                }
                Ok("delivered to example.test/user, not signed, A-R added".to_string())
            })()
        },
    );

    c.record("IMAPS reads the delivered message", {
        pf.dovecot()
            .imap_fetch_by_subject("user@example.test", "userpass", "stack-check-inbound")
            .and_then(|found| match found.first() {
                Some(m) => Ok(format!("found, {} bytes", m.len())),
                None => Err(anyhow::anyhow!("IMAP search found no message")),
            })
    });

    c.record("dkim-milter logged one decision line per message", {
        (|| {
            let log = sys::read_lossy(&milter.log);
            let signed: Vec<&str> = log.lines().filter(|l| l.contains(": signed ")).collect();
            let unsigned: Vec<&str> = log.lines().filter(|l| l.contains(": not signed")).collect();
            // Two signed messages (submission, sendmail) and one inbound verified one.
            if signed.len() != 2
                || unsigned.len() != 1
                || !unsigned.iter().all(|l| l.contains("external client"))
            {
                bail!(
                    "expected 2 signed and 1 not-signed decision lines in {}:\n{log}",
                    milter.log.display()
                );
            }
            Ok(format!(
                "{}\n      {}",
                signed.join("\n      "),
                unsigned.join("")
            ))
        })()
    });

    println!("{} passed, {} failed", c.passed, c.failed);
    Ok(c.failed)
}
