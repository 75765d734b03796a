//! `--check`: one check per flow of the designed stack, each judged by an independent tool
//! (swaks' transcript, the Maildir on disk, the sink's files, dkimpy, python's IMAP/POP3
//! clients, the milters' own log lines).

use super::Binaries;
use super::accounts;
use super::clients::{self, IdleClient};
use super::layout::*;
use super::ops;
use super::sink;
use anyhow::{Context, Result, bail};
use stack_tests::swaks::{self, SwaksRun};
use stack_tests::{dkim, sys};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WAIT: Duration = Duration::from_secs(30);
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
const SUBJECT_PREFIX: &str = "stack-check-";

struct Checks {
    passed: usize,
    failed: usize,
}

impl Checks {
    fn record(&mut self, name: &str, t0: Instant, result: Result<String>) {
        let ms = t0.elapsed().as_millis();
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!("PASS  {name} [{ms} ms]\n      {detail}");
            }
            Err(e) => {
                self.failed += 1;
                println!("FAIL  {name} [{ms} ms]\n      {e:#}");
            }
        }
    }
}

/// The queue id in Postfix's "250 2.0.0 Ok: queued as ID".
fn queued_as(run: &SwaksRun) -> Result<String> {
    let r = run
        .final_reply()
        .with_context(|| format!("no reply:\n{}", run.transcript))?;
    match r.text.split("queued as ").nth(1) {
        Some(id) if r.code == 250 => Ok(id.trim().to_string()),
        _ => bail!("answered {} {}:\n{}", r.code, r.text, run.transcript),
    }
}

fn mx(from: &str, to: &str, subject: &str, extra: &[&str]) -> Result<SwaksRun> {
    let server = format!("127.0.0.1:{MX_PORT}");
    let header = format!("Subject: {subject}");
    let mut args = vec![
        "--server",
        &server,
        "--local-interface",
        REMOTE_CLIENT,
        "--from",
        from,
        "--to",
        to,
        "--header",
        &header,
    ];
    args.extend_from_slice(extra);
    swaks::swaks(&args)
}

fn wait_sink(l: &Layout, subject: &str) -> Result<sink::Stored> {
    sys::wait_until(WAIT, &format!("{subject:?} at the sink"), || {
        Ok(sink::stored(&l.sink_dir())?
            .into_iter()
            .find(|m| contains(&m.data, subject)))
    })
}

fn wait_maildir(
    l: &Layout,
    domain: &str,
    local: &str,
    subject: &str,
) -> Result<(PathBuf, Vec<u8>)> {
    let dir = l.maildir(domain, local);
    sys::wait_until(WAIT, &format!("{subject:?} in {}", dir.display()), || {
        Ok(maildir_files(&dir).into_iter().find_map(|p| {
            std::fs::read(&p)
                .ok()
                .filter(|d| contains(d, subject))
                .map(|d| (p, d))
        }))
    })
}

fn maildir_files(dir: &Path) -> Vec<PathBuf> {
    ["new", "cur"]
        .iter()
        .filter_map(|s| std::fs::read_dir(dir.join(s)).ok())
        .flat_map(|rd| rd.flatten().map(|e| e.path()))
        .collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// spam-milter's decision line containing `needle` (a queue id or sender), written after
/// byte `offset` of its log.
fn spam_line(l: &Layout, needle: &str, offset: u64) -> Result<String> {
    let path = l.log("spam-milter");
    sys::wait_until(
        Duration::from_secs(10),
        &format!("spam-milter's line for {needle}"),
        || {
            let bytes = std::fs::read(&path)?;
            let text =
                String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or(&[])).into_owned();
            Ok(text
                .lines()
                .find(|x| x.contains(needle) && x.contains("policy="))
                .map(|x| {
                    x.split("spam_milter::milter: ")
                        .last()
                        .unwrap_or(x)
                        .trim()
                        .to_string()
                }))
        },
    )
}

/// The unfolded value of the first `name:` header in a header block.
fn header(head: &str, name: &str) -> Option<String> {
    let prefix = format!("{name}:");
    let mut lines = head.lines().skip_while(|l| !l.starts_with(&prefix));
    let first = lines.next()?.strip_prefix(&prefix)?.trim().to_string();
    let rest = lines
        .take_while(|l| l.starts_with([' ', '\t']))
        .map(str::trim);
    Some(
        std::iter::once(first.as_str())
            .chain(rest)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn rel<'a>(l: &Layout, p: &'a Path) -> std::borrow::Cow<'a, str> {
    p.strip_prefix(l.root()).unwrap_or(p).to_string_lossy()
}

fn verify_signed(data: &[u8], domain: &str, l: &Layout) -> Result<String> {
    let records = accounts::all_dkim_records(l);
    let v = dkim::dkimpy_verify(data, &records)?;
    if !v.all_pass || !v.lines.iter().any(|x| x.contains(&format!("d={domain} "))) {
        bail!("dkimpy: {}", v.output.trim());
    }
    Ok(format!("dkimpy: {}", v.lines.join("; ")))
}

/// Removes the mail of earlier check runs (subjects `stack-check-*`, other run tags) from
/// the test mailbox and the sink, so the state directory does not grow run after run; the
/// latest run's mail stays for inspection.
fn clean_earlier_runs(l: &Layout, tag: &str) {
    let current = format!("{SUBJECT_PREFIX}{tag}-");
    let old = |data: &[u8]| {
        contains(data, &format!("Subject: {SUBJECT_PREFIX}")) && !contains(data, &current)
    };
    for p in maildir_files(&l.maildir("example.test", "user")) {
        if std::fs::read(&p).is_ok_and(|d| old(&d)) {
            let _ = std::fs::remove_file(&p);
        }
    }
    if let Ok(msgs) = sink::stored(&l.sink_dir()) {
        for m in msgs.into_iter().filter(|m| old(&m.data)) {
            let _ = std::fs::remove_file(m.path.with_extension("json"));
            let _ = std::fs::remove_file(&m.path);
        }
    }
}

/// Runs every check against the running stack; returns how many failed.
pub fn run(l: &Layout, bins: &Binaries) -> Result<usize> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let tag = format!("{secs}-{}", std::process::id());
    let subject = |kind: &str| format!("{SUBJECT_PREFIX}{tag}-{kind}");
    clean_earlier_runs(l, &tag);
    let spam_log = || std::fs::metadata(l.log("spam-milter")).map_or(0, |m| m.len());
    let mut c = Checks {
        passed: 0,
        failed: 0,
    };
    let started = Instant::now();

    let t = Instant::now();
    c.record(
        "587 refuses mail without AUTH",
        t,
        (|| {
            let server = format!("127.0.0.1:{SUBMISSION_PORT}");
            let s = subject("noauth");
            let base = [
                "--server",
                &server,
                "--from",
                "user@example.test",
                "--to",
                "friend@remote.test",
                "--header",
            ];
            let header = format!("Subject: {s}");
            let mut plain = base.to_vec();
            plain.push(&header);
            let mut tls = plain.clone();
            tls.push("--tls");
            let mut out = Vec::new();
            for (what, args) in [("no TLS", plain), ("TLS, no AUTH", tls)] {
                let run = swaks::swaks(&args)?;
                let r = run.final_reply().with_context(|| run.transcript.clone())?;
                if r.code < 500 {
                    bail!(
                        "{what}: answered {} {}:\n{}",
                        r.code,
                        r.text,
                        run.transcript
                    );
                }
                out.push(format!("{what}: {} {}", r.code, r.text));
            }
            Ok(out.join("\n      "))
        })(),
    );

    let t = Instant::now();
    c.record(
        "587 with AUTH: scored by Rspamd, signed, at the sink, dkimpy verifies",
        t,
        (|| {
            let s = subject("submission");
            let off = spam_log();
            let run = swaks::submit(
                SUBMISSION_PORT,
                ("user@example.test", "userpass"),
                "user@example.test",
                "friend@remote.test",
                &["--header", &format!("Subject: {s}")],
            )?;
            let qid = queued_as(&run)?;
            let line = spam_line(l, &format!("{qid}:"), off)?;
            if !line.contains("policy=outbound") {
                bail!("spam-milter did not treat it as outbound: {line}");
            }
            let msg = wait_sink(l, &s)?;
            let v = verify_signed(&msg.data, "example.test", l)?;
            Ok(format!(
                "queued as {qid}\n      spam-milter: {line}\n      {v}\n      sink: {}",
                rel(l, &msg.path)
            ))
        })(),
    );

    let t = Instant::now();
    c.record("sendmail(1) (non_smtpd_milters): scanned, signed", t, (|| {
        let s = subject("sendmail");
        let off = spam_log();
        let msg = format!(
            "From: admin@other.test\r\nTo: friend@remote.test\r\nSubject: {s}\r\n\r\nfrom a script\r\n"
        );
        let out = sys::run_with_input(
            Command::new("/usr/sbin/sendmail")
                .arg("-C")
                .arg(l.etc_postfix())
                .args(["-f", "admin@other.test", "friend@remote.test"]),
            msg.as_bytes(),
        )?;
        if !out.status.success() {
            bail!("sendmail: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stored = wait_sink(l, &s)?;
        let line = spam_line(l, "admin@other.test", off)?;
        let v = verify_signed(&stored.data, "other.test", l)?;
        Ok(format!("spam-milter: {line}\n      {v}"))
    })());

    let inbound = subject("inbound");
    let t = Instant::now();
    c.record(
        "25 to a hosted mailbox: Rspamd headers, A-R, in its Maildir",
        t,
        (|| {
            let off = spam_log();
            let run = mx("alice@remote.test", "user@example.test", &inbound, &[])?;
            let qid = queued_as(&run)?;
            let (path, data) = wait_maildir(l, "example.test", "user", &inbound)?;
            let text = String::from_utf8_lossy(&data);
            let head = text
                .split("\r\n\r\n")
                .next()
                .unwrap_or(&text)
                .split("\n\n")
                .next()
                .unwrap_or("");
            let want = [
                "X-Spamd-Result:",
                "X-Rspamd-Server:",
                "Authentication-Results:",
            ];
            let missing: Vec<&str> = want.iter().copied().filter(|h| !head.contains(h)).collect();
            if !missing.is_empty() {
                bail!("{} lacks {}:\n{head}", path.display(), missing.join(", "));
            }
            let line = spam_line(l, &format!("{qid}:"), off)?;
            if !line.contains("policy=inbound") {
                bail!("spam-milter did not treat it as inbound: {line}");
            }
            let ar = header(head, "Authentication-Results").unwrap_or_default();
            let score = header(head, "X-Spam-Status").unwrap_or_default();
            Ok(format!(
                "{}\n      Authentication-Results: {ar}; X-Spam-Status: {score}; X-Spamd-Result, \
             X-Rspamd-Server present\n      spam-milter: {line}",
                rel(l, &path)
            ))
        })(),
    );

    let t = Instant::now();
    c.record(
        "25 to an alias: delivered to its target",
        t,
        (|| {
            let s = subject("alias");
            let run = mx("alice@remote.test", "alias@example.test", &s, &[])?;
            queued_as(&run)?;
            let (path, data) = wait_maildir(l, "example.test", "user", &s)?;
            if !contains(&data, "X-Original-To: alias@example.test") {
                bail!(
                    "{} has no X-Original-To: alias@example.test",
                    path.display()
                );
            }
            Ok(format!("alias@example.test -> {}", rel(l, &path)))
        })(),
    );

    let t = Instant::now();
    c.record(
        "25 to a domain not hosted: 550",
        t,
        (|| {
            let run = mx(
                "alice@remote.test",
                "someone@not-ours.test",
                &subject("relay"),
                &[],
            )?;
            match run.final_reply() {
                Some(r) if r.code == 550 => Ok(format!("{} {}", r.code, r.text)),
                r => bail!("answered {r:?}:\n{}", run.transcript),
            }
        })(),
    );

    let t = Instant::now();
    c.record(
        "25 GTUBE: rejected with Rspamd's text",
        t,
        (|| {
            let off = spam_log();
            let run = mx(
                "spammer@remote.test",
                "user@example.test",
                &subject("gtube"),
                &["--body", GTUBE],
            )?;
            match run.final_reply() {
                Some(r) if r.code == 554 && r.text.contains("Gtube pattern") => {
                    let line = spam_line(l, "spammer@remote.test", off)?;
                    Ok(format!("{} {}\n      spam-milter: {line}", r.code, r.text))
                }
                r => bail!("answered {r:?}:\n{}", run.transcript),
            }
        })(),
    );

    let t = Instant::now();
    c.record(
        &format!("IMAPS 127.0.0.1:{IMAPS_PORT} retrieves the inbound message"),
        t,
        clients::imap_find("user@example.test", "userpass", &inbound),
    );

    let t = Instant::now();
    c.record(
        &format!("POP3S 127.0.0.1:{POP3S_PORT} retrieves the inbound message"),
        t,
        clients::pop3_find("user@example.test", "userpass", &inbound),
    );

    let t = Instant::now();
    c.record("IMAP IDLE: the client is told of new mail without polling", t, (|| {
        let idle = IdleClient::start("user@example.test", "userpass", 20)?;
        let before = idle.exists;
        let run = mx("alice@remote.test", "user@example.test", &subject("idle"), &[])?;
        queued_as(&run)?;
        let sent = Instant::now();
        let now = idle.wait_exists()?;
        let ms = sent.elapsed().as_millis();
        if ms > 10_000 {
            bail!("EXISTS came {ms} ms after the MX accepted: that is the fallback poll, not a push");
        }
        Ok(format!(
            "in IDLE: * {now} EXISTS (was {before}) {ms} ms after the MX accepted the message \
             (Dovecot's fallback poll is every 30 s)"
        ))
    })());

    let t = Instant::now();
    c.record("a domain added while running signs its next message", t, (|| {
        let domain = format!("added-{tag}.test");
        let offset = ops::dkim_log_offset(l);
        accounts::add_domain(l, bins, &domain)?;
        let address = format!("admin@{domain}");
        let result = (|| {
            accounts::add_mailbox(l, &address, "addedpass")?;
            let loaded = ops::wait_key_loaded(l, &domain, offset)?;
            let s = subject("added");
            let run = swaks::submit(
                SUBMISSION_PORT,
                (&address, "addedpass"),
                &address,
                "friend@remote.test",
                &["--header", &format!("Subject: {s}")],
            )?;
            queued_as(&run)?;
            let msg = wait_sink(l, &s)?;
            let v = verify_signed(&msg.data, &domain, l)?;
            Ok(format!(
                "add-domain {domain} + add-mailbox {address}, no restart\n      dkim-milter: {}\n      {v}",
                loaded.split("dkim_milter::reload: ").last().unwrap_or(&loaded)
            ))
        })();
        let mail = accounts::remove_domain(l, &domain)?;
        let _ = std::fs::remove_dir_all(mail);
        result
    })());

    println!(
        "{} passed, {} failed ({:.1} s of checks)",
        c.passed,
        c.failed,
        started.elapsed().as_secs_f64()
    );
    Ok(c.failed)
}
