//! Hosted domains, mailboxes and aliases: the flat files in their designed formats, each
//! update atomic (write a temporary file, postmap it, rename both into place), so Postfix
//! and Dovecot never read half a file. Postfix daemons notice a replaced .db (its old inode
//! is unlinked) and restart with the new one; Dovecot re-reads its passwd-file when the
//! mtime or size changes.
//!
//! | file | line |
//! |---|---|
//! | etc/postfix/vdomains | `example.test OK` |
//! | etc/postfix/vmailbox | `user@example.test example.test/user/` (trailing `/`: Maildir) |
//! | etc/postfix/virtual  | `alias@example.test user@example.test` (targets: a comma list) |
//! | etc/dovecot/users    | `user@example.test:{SHA512-CRYPT}$6$...:5000:5000::{maildir}::` |
//! | etc/dkim/keys/{domain}/mail.private (+ mail.txt) | from `dkim-milter keygen` |

use super::Binaries;
use super::config::{VMAIL_ID, write_atomic};
use super::layout::{Layout, SELECTOR};
use anyhow::{Context, Result, bail};
use stack_tests::sys;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

/// Domains, mailboxes (with passwords) and aliases a new state directory starts with.
pub const DEFAULT_DOMAINS: &[&str] = &["example.test", "other.test"];
/// Default logins.
pub const DEFAULT_MAILBOXES: &[(&str, &str)] = &[
    ("user@example.test", "userpass"),
    ("other@example.test", "otherpass"),
    ("admin@other.test", "adminpass"),
];
/// Default aliases.
pub const DEFAULT_ALIASES: &[(&str, &str)] = &[
    ("alias@example.test", "user@example.test"),
    ("postmaster@example.test", "user@example.test"),
    ("team@example.test", "user@example.test,other@example.test"),
];

const VDOMAINS_HEAD: &str = "# Hosted domains (virtual_mailbox_domains): \"DOMAIN OK\". Change with mail-stack add-domain.\n";
const VMAILBOX_HEAD: &str = "# Mailboxes (virtual_mailbox_maps): \"ADDRESS DOMAIN/USER/\", relative to virtual_mailbox_base.\n";
const VIRTUAL_HEAD: &str = "# Aliases (virtual_alias_maps): \"ADDRESS TARGET[,TARGET...]\". Change with mail-stack add-alias.\n";
const USERS_HEAD: &str =
    "# Dovecot passwd-file: ADDRESS:{SHA512-CRYPT}HASH:UID:GID::HOME:: (HOME = the Maildir).\n";

/// A parsed `KEY VALUE` map source.
fn read_table(path: &Path) -> Result<Vec<(String, String)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (k.to_string(), v.trim().to_string())
        })
        .collect())
}

/// Replaces a Postfix map: source and .db built under temporary names, then renamed.
fn write_map(l: &Layout, name: &str, head: &str, rows: &[(String, String)]) -> Result<()> {
    let mut text = head.to_string();
    for (k, v) in rows {
        text.push_str(&format!("{k} {v}\n"));
    }
    let etc = l.etc_postfix();
    let tmp = etc.join(format!(".{name}.new-{}", std::process::id()));
    let tmp_db = etc.join(format!(".{name}.new-{}.db", std::process::id()));
    // Backdated: Postfix commands stall ~2 s on a map source younger than ~2 s.
    write_atomic(
        &tmp,
        text.as_bytes(),
        0o644,
        Some(SystemTime::now() - Duration::from_secs(60)),
    )?;
    let built = sys::run_checked(
        Command::new("/usr/sbin/postmap")
            .arg("-c")
            .arg(&etc)
            .arg(format!("hash:{}", tmp.display())),
    );
    if let Err(e) = built {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&tmp_db);
        return Err(e);
    }
    std::fs::rename(&tmp_db, etc.join(format!("{name}.db")))?;
    std::fs::rename(&tmp, etc.join(name))?;
    Ok(())
}

/// Hosted domains.
pub fn domains(l: &Layout) -> Result<Vec<String>> {
    Ok(read_table(&l.map("vdomains"))?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

/// Mailbox addresses.
pub fn mailboxes(l: &Layout) -> Result<Vec<String>> {
    Ok(read_table(&l.map("vmailbox"))?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

/// Aliases `(from, to)`.
pub fn aliases(l: &Layout) -> Result<Vec<(String, String)>> {
    read_table(&l.map("virtual"))
}

fn valid_domain(d: &str) -> Result<()> {
    let ok = d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if !ok {
        bail!("{d:?} is not a domain name (lower-case letters, digits, '-', at least one dot)");
    }
    Ok(())
}

/// `(local, domain)` of a lower-case address.
fn split_address(a: &str) -> Result<(&str, &str)> {
    let (local, domain) = a
        .split_once('@')
        .with_context(|| format!("{a:?} is not an address (local@domain)"))?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_' | b'+')
        })
        && !local.starts_with('.');
    if !local_ok {
        bail!("{a:?}: the local part may hold lower-case letters, digits and . - _ +");
    }
    valid_domain(domain)?;
    Ok((local, domain))
}

fn require_hosted(l: &Layout, domain: &str) -> Result<()> {
    if !domains(l)?.iter().any(|d| d == domain) {
        bail!("{domain} is not hosted here: run add-domain {domain} first");
    }
    Ok(())
}

/// Every key record in the keys dir: `(name, TXT value)` (any selector).
pub fn all_dkim_records(l: &Layout) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(l.keys_dir()) else {
        return out;
    };
    for dom in rd.flatten() {
        let domain = dom.file_name().to_string_lossy().into_owned();
        let Ok(files) = std::fs::read_dir(dom.path()) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            if p.extension().is_some_and(|x| x == "txt")
                && let (Some(sel), Ok(txt)) = (p.file_stem(), std::fs::read_to_string(&p))
                && let Ok(rec) = stack_tests::dkim::txt_record_from_zone(&txt)
            {
                out.push((
                    format!("{}._domainkey.{domain}", sel.to_string_lossy()),
                    rec,
                ));
            }
        }
    }
    out.sort();
    out
}

/// Hosts `domain`: makes its key with `dkim-milter keygen` (unless it has one) and adds it
/// to vdomains. Returns keygen's zone-file text (the TXT record to publish).
pub fn add_domain(l: &Layout, bins: &Binaries, domain: &str) -> Result<String> {
    valid_domain(domain)?;
    let _lock = sys::FileLock::acquire(&l.accounts_lock())?;
    let zone = l.keys_dir().join(domain).join(format!("{SELECTOR}.txt"));
    if !zone.exists() {
        sys::run_checked(
            Command::new(&bins.dkim_milter)
                .args(["keygen", "--domain", domain, "--selector", SELECTOR])
                .arg("--keys-dir")
                .arg(l.keys_dir()),
        )
        .context("dkim-milter keygen")?;
    }
    let mut rows = read_table(&l.map("vdomains"))?;
    if !rows.iter().any(|(k, _)| k == domain) {
        rows.push((domain.to_string(), "OK".to_string()));
        write_map(l, "vdomains", VDOMAINS_HEAD, &rows)?;
    }
    std::fs::read_to_string(&zone).with_context(|| format!("reading {}", zone.display()))
}

/// Adds (or re-passwords) the mailbox `address` of a hosted domain, with its Maildir.
pub fn add_mailbox(l: &Layout, address: &str, password: &str) -> Result<()> {
    let address = address.to_ascii_lowercase();
    let (local, domain) = split_address(&address)?;
    if password.is_empty() || password.contains(['\n', '\r']) {
        bail!("the password must be one non-empty line");
    }
    let hash = sha512_crypt(password)?;
    let _lock = sys::FileLock::acquire(&l.accounts_lock())?;
    require_hosted(l, domain)?;
    let maildir = l.maildir(domain, local);
    let dom_dir = l.mail_root().join(domain);
    for d in [dom_dir.clone(), maildir.clone()] {
        if !d.exists() {
            std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
            std::os::unix::fs::chown(&d, Some(VMAIL_ID), Some(VMAIL_ID))?;
        }
    }
    for sub in ["cur", "new", "tmp"] {
        let d = maildir.join(sub);
        if !d.exists() {
            std::fs::create_dir(&d)?;
            std::os::unix::fs::chown(&d, Some(VMAIL_ID), Some(VMAIL_ID))?;
        }
    }
    // Dovecot first: by the time Postfix accepts mail for the address, it can log in.
    let line = format!(
        "{address}:{{SHA512-CRYPT}}{hash}:{VMAIL_ID}:{VMAIL_ID}::{}::",
        maildir.display()
    );
    let mut users = read_users(l)?;
    users.retain(|u| !u.starts_with(&format!("{address}:")));
    users.push(line);
    write_users(l, &users)?;
    let mut rows = read_table(&l.map("vmailbox"))?;
    if !rows.iter().any(|(k, _)| *k == address) {
        rows.push((address.clone(), format!("{domain}/{local}/")));
        write_map(l, "vmailbox", VMAILBOX_HEAD, &rows)?;
    }
    Ok(())
}

/// Adds (or replaces) the alias `from` -> `to` (`to`: one address or a comma list).
pub fn add_alias(l: &Layout, from: &str, to: &str) -> Result<()> {
    let from = from.to_ascii_lowercase();
    let (_, domain) = split_address(&from)?;
    let targets: Vec<String> = to
        .split(',')
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        bail!("no alias target given");
    }
    for t in &targets {
        split_address(t)?;
    }
    let _lock = sys::FileLock::acquire(&l.accounts_lock())?;
    require_hosted(l, domain)?;
    let mut rows = read_table(&l.map("virtual"))?;
    rows.retain(|(k, _)| *k != from);
    rows.push((from, targets.join(",")));
    write_map(l, "virtual", VIRTUAL_HEAD, &rows)
}

/// Stops hosting `domain`: its vdomains line, mailboxes, logins, aliases and key go; its
/// Maildirs stay (returned).
pub fn remove_domain(l: &Layout, domain: &str) -> Result<std::path::PathBuf> {
    valid_domain(domain)?;
    let _lock = sys::FileLock::acquire(&l.accounts_lock())?;
    let suffix = format!("@{domain}");
    let mut users = read_users(l)?;
    users.retain(|u| !u.split(':').next().unwrap_or("").ends_with(&suffix));
    write_users(l, &users)?;
    for (name, head) in [("vmailbox", VMAILBOX_HEAD), ("virtual", VIRTUAL_HEAD)] {
        let mut rows = read_table(&l.map(name))?;
        let before = rows.len();
        rows.retain(|(k, _)| !k.ends_with(&suffix));
        if rows.len() != before {
            write_map(l, name, head, &rows)?;
        }
    }
    let mut rows = read_table(&l.map("vdomains"))?;
    rows.retain(|(k, _)| k != domain);
    write_map(l, "vdomains", VDOMAINS_HEAD, &rows)?;
    let keys = l.keys_dir().join(domain);
    if keys.exists() {
        std::fs::remove_dir_all(&keys).with_context(|| format!("removing {}", keys.display()))?;
    }
    Ok(l.mail_root().join(domain))
}

fn read_users(l: &Layout) -> Result<Vec<String>> {
    match std::fs::read_to_string(l.users_file()) {
        Ok(t) => Ok(t
            .lines()
            .filter(|x| !x.trim().is_empty() && !x.starts_with('#'))
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).context("reading the Dovecot users file"),
    }
}

/// Replaces the users file (mode 0640, group dovecot). Its mtime moves forward by at least
/// a second: Dovecot reloads a passwd-file when mtime or size changed, and a re-passworded
/// line can keep the size.
fn write_users(l: &Layout, lines: &[String]) -> Result<()> {
    let path = l.users_file();
    let mut text = USERS_HEAD.to_string();
    for u in lines {
        text.push_str(u);
        text.push('\n');
    }
    let now = SystemTime::now();
    let mtime = match std::fs::metadata(&path).and_then(|m| m.modified()) {
        Ok(old) if old + Duration::from_secs(1) > now => old + Duration::from_secs(1),
        _ => now,
    };
    write_atomic(&path, text.as_bytes(), 0o640, Some(mtime))?;
    let (_, dovecot_gid) = sys::user_ids("dovecot")?;
    std::os::unix::fs::chown(&path, Some(0), Some(dovecot_gid))?;
    Ok(())
}

/// `$6$...` (SHA512-CRYPT) of `password`, from `openssl passwd -6` (the password goes in on
/// stdin, not on a command line).
fn sha512_crypt(password: &str) -> Result<String> {
    let out = sys::run_with_input(
        Command::new("/usr/bin/openssl").args(["passwd", "-6", "-stdin"]),
        format!("{password}\n").as_bytes(),
    )?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !hash.starts_with("$6$") {
        bail!(
            "openssl passwd -6 failed: {}{}",
            hash,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(hash)
}

/// Creates the empty flat files on the first start and fills in the default accounts.
pub fn ensure_initialized(l: &Layout, bins: &Binaries) -> Result<()> {
    let fresh = !l.map("vdomains").exists();
    for (name, head) in [
        ("vdomains", VDOMAINS_HEAD),
        ("vmailbox", VMAILBOX_HEAD),
        ("virtual", VIRTUAL_HEAD),
    ] {
        if !l.map(name).exists() || !l.etc_postfix().join(format!("{name}.db")).exists() {
            let rows = read_table(&l.map(name))?;
            write_map(l, name, head, &rows)?;
        }
    }
    if !l.users_file().exists() {
        write_users(l, &[])?;
    }
    if fresh {
        for d in DEFAULT_DOMAINS {
            add_domain(l, bins, d)?;
        }
        for (a, p) in DEFAULT_MAILBOXES {
            add_mailbox(l, a, p)?;
        }
        for (f, t) in DEFAULT_ALIASES {
            add_alias(l, f, t)?;
        }
    }
    Ok(())
}
