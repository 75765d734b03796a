//! DKIM keys (opendkim-genkey) and the two independent verifiers: dkimpy
//! (`tests/stack/tools/dkim_verify.py`) and `opendkim -t`. Both read key
//! records from a file, never DNS.

use crate::sys::{self, require_binary};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A key pair made by `opendkim-genkey`.
#[derive(Debug, Clone)]
pub struct DkimKey {
    /// Signing domain (`d=`).
    pub domain: String,
    /// Selector (`s=`).
    pub selector: String,
    /// PEM private key file.
    pub private_key: PathBuf,
    /// The TXT record value (`v=DKIM1; h=sha256; k=rsa; p=...`), the quoted
    /// strings of genkey's `.txt` joined.
    pub txt_record: String,
}

impl DkimKey {
    /// `selector._domainkey.domain`.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// `(dns_name, txt_record)`.
    pub fn record(&self) -> (String, String) {
        (self.dns_name(), self.txt_record.clone())
    }
}

/// Runs `opendkim-genkey -b BITS -h sha256 -d DOMAIN -s SELECTOR -D DIR`.
pub fn opendkim_genkey(domain: &str, selector: &str, bits: u32, dir: &Path) -> Result<DkimKey> {
    require_binary("/usr/sbin/opendkim-genkey")?;
    std::fs::create_dir_all(dir)?;
    sys::run_checked(
        Command::new("/usr/sbin/opendkim-genkey")
            .args([
                "-b",
                &bits.to_string(),
                "-h",
                "sha256",
                "-d",
                domain,
                "-s",
                selector,
            ])
            .arg("-D")
            .arg(dir),
    )?;
    let txt_path = dir.join(format!("{selector}.txt"));
    let txt = std::fs::read_to_string(&txt_path)
        .with_context(|| format!("reading {}", txt_path.display()))?;
    Ok(DkimKey {
        domain: domain.to_string(),
        selector: selector.to_string(),
        private_key: dir.join(format!("{selector}.private")),
        txt_record: txt_record_from_zone(&txt)?,
    })
}

/// Joins the quoted strings of a zone-file TXT record (genkey's `.txt`).
pub fn txt_record_from_zone(zone: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = zone;
    while let Some(a) = rest.find('"') {
        let after = &rest[a + 1..];
        let b = after.find('"').context("unbalanced quotes in TXT record")?;
        out.push_str(&after[..b]);
        rest = &after[b + 1..];
    }
    if out.is_empty() {
        bail!("no quoted TXT data in {zone:?}");
    }
    Ok(out)
}

/// Writes a key-record file (`name record` per line), the format both
/// verifiers read (and OpenDKIM's `TestDNSData file:`).
pub fn write_key_records(path: &Path, records: &[(String, String)]) -> Result<()> {
    let mut s = String::new();
    for (name, rec) in records {
        s.push_str(&format!("{name} {rec}\n"));
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

/// A verifier's verdict on every signature of one message.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// True only if there was at least one signature and all verified.
    pub all_pass: bool,
    /// One line per signature (`PASS d=... s=...` / `FAIL ...`), or the
    /// verifier's result lines.
    pub lines: Vec<String>,
    /// Full verifier output for failure messages.
    pub output: String,
}

/// Verifies every DKIM-Signature of `message` with dkimpy against `records`.
pub fn dkimpy_verify(message: &[u8], records: &[(String, String)]) -> Result<Verdict> {
    require_binary(crate::PYTHON)?;
    let script = crate::stack_file("tools/dkim_verify.py");
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys.txt");
    let msg = dir.path().join("message.eml");
    write_key_records(&keys, records)?;
    std::fs::write(&msg, message)?;
    let out = sys::run(
        Command::new(crate::PYTHON)
            .arg(&script)
            .arg(&keys)
            .arg(&msg),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let output = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    if out.status.code().is_none_or(|c| c > 1) {
        bail!("dkim_verify.py crashed ({}): {output}", out.status);
    }
    let lines: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
        .map(str::to_string)
        .collect();
    Ok(Verdict {
        all_pass: out.status.success() && !lines.is_empty(),
        lines,
        output,
    })
}

/// Verifies `message` with `opendkim -t` (test mode, `TestDNSData`).
///
/// Caveats (dkim.md §6): test mode lacks SMFIP_HDR_LEADSPC, so `c=simple`
/// header signatures can fail spuriously, and a body without a final CRLF
/// reads as "not signed". Use dkimpy as the primary oracle.
pub fn opendkim_test_verify(message: &[u8], records: &[(String, String)]) -> Result<Verdict> {
    require_binary("/usr/sbin/opendkim")?;
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("testdns");
    let msg = dir.path().join("message.eml");
    let conf = dir.path().join("opendkim-verify.conf");
    write_key_records(&keys, records)?;
    std::fs::write(&msg, message)?;
    std::fs::write(
        &conf,
        format!(
            "Mode v\nTestDNSData file:{}\nMinimumKeyBits 1024\nSyslog no\nAuthservID test.local\nAlwaysAddARHeader yes\n",
            keys.display()
        ),
    )?;
    let out = sys::run(
        Command::new("/usr/sbin/opendkim")
            .arg("-x")
            .arg(&conf)
            .arg("-vvv")
            .arg("-t")
            .arg(&msg),
    )?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The exit code is 0 even on failure: read the per-signature lines. With several
    // signatures `-vvv` prints one "verification" line only, so every signature must also
    // have its own `dkim=pass` in the Authentication-Results OpenDKIM adds.
    let lines: Vec<String> = output
        .lines()
        .filter(|l| l.contains("verification (") || l.contains("not signed"))
        .map(str::to_string)
        .collect();
    let signatures = header_block(message)
        .split(|&b| b == b'\n')
        .filter(|l| {
            l.get(..15)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"dkim-signature:"))
        })
        .count();
    let all_pass = !lines.is_empty()
        && lines.iter().all(|l| l.contains("succeeded"))
        && output.matches("dkim=pass").count() == signatures
        && !output.contains("dkim=fail");
    Ok(Verdict {
        all_pass,
        lines,
        output,
    })
}

/// The message's header block (up to the first empty line).
fn header_block(message: &[u8]) -> &[u8] {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| message.windows(2).position(|w| w == b"\n\n"))
        .unwrap_or(message.len());
    message.get(..end).unwrap_or(message)
}
