//! Dovecot: passwd-file users, the SASL socket Postfix authenticates
//! against, and IMAPS/POP3S on loopback.

use crate::ports::free_port;
use crate::sys::{self, Sandbox, require_binary, require_root, spawn_daemon};
use crate::tls;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// Virtual mail uid/gid shared by Postfix `virtual(8)` and Dovecot.
pub const VMAIL_ID: u32 = 5000;

/// Dovecot's host name (`hostname`, and `DOVECOT_HOSTDOMAIN` for the master
/// and, via `import_environment`, every child): without it Dovecot calls
/// gethostbyname(gethostname()) at start, which reaches the machine's
/// resolver unless /etc/hosts lists the host name (strace: with it, neither
/// doveconf nor dovecot opens /etc/hosts or /etc/resolv.conf; passwd-file
/// auth and the loopback listeners need no other lookup).
const HOSTNAME: &str = "mx.example.test";

/// Builder for [`Dovecot`].
#[derive(Debug, Clone)]
pub struct DovecotBuilder {
    mail_root: Option<PathBuf>,
    users: Vec<(String, String)>,
}

/// A running Dovecot master (foreground child), stopped on drop.
#[derive(Debug)]
pub struct Dovecot {
    child: Option<Child>,
    imaps_port: u16,
    pop3s_port: u16,
    auth_socket: PathBuf,
    log: PathBuf,
    sandbox: Sandbox,
}

impl Dovecot {
    /// A builder. Users' homes (= Maildirs) are `<mail_root>/{domain}/{local}`.
    pub fn builder() -> DovecotBuilder {
        DovecotBuilder {
            mail_root: None,
            users: Vec::new(),
        }
    }

    /// IMAPS port on 127.0.0.1.
    pub fn imaps_port(&self) -> u16 {
        self.imaps_port
    }

    /// POP3S port on 127.0.0.1.
    pub fn pop3s_port(&self) -> u16 {
        self.pop3s_port
    }

    /// The auth socket for Postfix (`smtpd_sasl_type = dovecot`).
    pub fn auth_socket(&self) -> &Path {
        &self.auth_socket
    }

    /// Dovecot's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The sandbox directory.
    pub fn sandbox(&self) -> &Path {
        self.sandbox.path()
    }

    /// Logs in over IMAPS (python imaplib) and returns every message of INBOX
    /// whose Subject contains `subject` (raw RFC822 bytes, base64-transported).
    /// Fails if the login is refused.
    pub fn imap_fetch_by_subject(
        &self,
        user: &str,
        pass: &str,
        subject: &str,
    ) -> Result<Vec<Vec<u8>>> {
        const SCRIPT: &str = r#"
import imaplib, ssl, sys, base64
port, user, pw, subj = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
m = imaplib.IMAP4_SSL('127.0.0.1', port, ssl_context=ctx)
try:
    m.login(user, pw)
except imaplib.IMAP4.error as e:
    print('LOGIN-FAILED', e); sys.exit(3)
m.select('INBOX', readonly=True)
typ, data = m.search(None, 'SUBJECT', '"%s"' % subj)
for num in data[0].split():
    typ, msg = m.fetch(num, '(RFC822)')
    print('MSG', base64.b64encode(msg[0][1]).decode())
m.logout()
"#;
        let out = sys::run(
            Command::new(crate::PYTHON)
                .arg("-c")
                .arg(SCRIPT)
                .arg(self.imaps_port.to_string())
                .args([user, pass, subject]),
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.code() == Some(3) {
            bail!("IMAP login refused for {user}: {}", stdout.trim());
        }
        if !out.status.success() {
            bail!(
                "IMAP client failed ({}): {}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix("MSG "))
            .map(decode_base64)
            .collect()
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => bail!("bad base64 byte {c:#x}"),
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

impl DovecotBuilder {
    /// Directory holding `{domain}/{local}` Maildirs (Postfix's
    /// `virtual_mailbox_base`). Required.
    pub fn mail_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.mail_root = Some(dir.into());
        self
    }

    /// Adds a login `user@domain` with a plaintext password.
    pub fn user(mut self, address: &str, password: &str) -> Self {
        self.users.push((address.to_string(), password.to_string()));
        self
    }

    /// Writes the config and starts `dovecot -F`; returns once IMAPS, POP3S
    /// and the auth socket are up.
    pub fn start(self) -> Result<Dovecot> {
        require_root("Dovecot")?;
        require_binary("/usr/sbin/dovecot")?;
        sys::user_ids("dovecot")?;
        sys::user_ids("dovenull")?;
        let mail_root = self
            .mail_root
            .context("Dovecot::builder().mail_root(..) is required")?;
        let sb = Sandbox::new("dovecot")?;
        let root = sb.path().to_path_buf();
        let etc = sb.mkdir("etc")?;
        sb.mkdir("run")?;
        sb.mkdir("lib")?;
        let logdir = sb.mkdir("log")?;
        let cert = tls::self_signed(&sb.mkdir("ssl")?)?;
        let (imaps_port, pop3s_port) = (free_port()?, free_port()?);
        let mut users = String::new();
        for (addr, pw) in &self.users {
            let (local, domain) = addr
                .split_once('@')
                .with_context(|| format!("user {addr:?} lacks a domain"))?;
            let home = mail_root.join(domain).join(local);
            users.push_str(&format!(
                "{addr}:{{PLAIN}}{pw}:{VMAIL_ID}:{VMAIL_ID}::{}::\n",
                home.display()
            ));
        }
        std::fs::write(etc.join("users"), users)?;
        let base = root.join("run/dovecot");
        let log = logdir.join("dovecot.log");
        let conf = format!(
            r#"instance_name = stack-{imaps_port}
base_dir = {base}
state_dir = {root}/lib
log_path = {log}
hostname = {HOSTNAME}
import_environment = TZ CORE_OUTOFMEM CORE_ERROR LISTEN_PID LISTEN_FDS NOTIFY_SOCKET DOVECOT_HOSTDOMAIN={HOSTNAME}
protocols = imap pop3
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = yes
auth_mechanisms = plain login
first_valid_uid = {VMAIL_ID}
last_valid_uid = {VMAIL_ID}
first_valid_gid = {VMAIL_ID}
last_valid_gid = {VMAIL_ID}
mail_location = maildir:~
default_login_user = dovenull
default_internal_user = dovecot
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/etc/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/etc/users
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s_port}
    ssl = yes
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"#,
            base = base.display(),
            root = root.display(),
            log = log.display(),
            cert = cert.cert.display(),
            key = cert.key.display(),
        );
        let conf_path = etc.join("dovecot.conf");
        std::fs::write(&conf_path, conf)?;
        let child = spawn_daemon(
            Command::new("/usr/sbin/dovecot")
                .env("DOVECOT_HOSTDOMAIN", HOSTNAME)
                .arg("-F")
                .arg("-c")
                .arg(&conf_path),
            &logdir.join("dovecot.stdout"),
        )?;
        let mut dc = Dovecot {
            child: Some(child),
            imaps_port,
            pop3s_port,
            auth_socket: base.join("auth-postfix"),
            log,
            sandbox: sb,
        };
        let ready = sys::wait_until(Duration::from_secs(20), "Dovecot listeners", || {
            if let Some(c) = dc.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                bail!(
                    "dovecot exited with {st}: {}{}",
                    sys::read_lossy(&logdir.join("dovecot.stdout")),
                    sys::read_lossy(&dc.log)
                );
            }
            Ok((dc.auth_socket.exists()
                && sys::port_open(imaps_port)
                && sys::port_open(pop3s_port))
            .then_some(()))
        });
        ready?;
        Ok(dc)
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sys::stop_child(&mut c, Duration::from_secs(5));
        }
    }
}
