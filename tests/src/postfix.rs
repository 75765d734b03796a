//! Postfix 3.7 in a sandbox: an MX listener, an optional submission listener
//! (STARTTLS + Dovecot SASL), virtual Maildir delivery and a relayhost (by
//! default an internal [`Sink`]).
//!
//! The generated main.cf never uses DNS: the relayhost is a bracketed
//! address, `smtp_dns_support_level`/`lmtp_dns_support_level = disabled`
//! (Postfix ignores the older `disable_dns_lookups` once these are set) and
//! `smtpd_peername_lookup = no` (Postfix 3.7 default `yes`: smtpd would
//! resolve the client's name via getnameinfo/nsswitch, which reaches the
//! machine's resolver when /etc/hosts has no 127.0.0.1 line). Hence smtpd
//! sees every client as `unknown[127.0.0.1]` (also in `Received:`), and
//! milters get `[127.0.0.1]` as the SMFIC_CONNECT host name, `_ = unknown
//! [127.0.0.1]` and `{client_name} = unknown` (the golden frames under
//! `milter-core/tests/golden/` were recorded with the lookup on: `localhost`).

use crate::dovecot::{Dovecot, VMAIL_ID};
use crate::maildir::Maildir;
use crate::ports::free_port;
use crate::sink::Sink;
use crate::sys::{self, FileLock, Sandbox, require_binary, require_root, write_backdated};
use crate::tls;
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Users created when the builder is given none: `(address, password)`.
pub const DEFAULT_USERS: &[(&str, &str)] = &[
    ("user@example.test", "userpass"),
    ("other@example.test", "otherpass"),
];

/// Builder for [`Postfix`].
#[derive(Debug, Clone)]
pub struct PostfixBuilder {
    mx_milters: String,
    submission_milters: Option<String>,
    non_smtpd_milters: String,
    milter_default_action: String,
    milter_protocol: u32,
    domains: Vec<String>,
    users: Vec<(String, Option<String>)>,
    aliases: Vec<(String, String)>,
    relayhost: Option<SocketAddr>,
    extra_main_cf: Vec<String>,
}

/// A running sandboxed Postfix instance, stopped on drop.
#[derive(Debug)]
pub struct Postfix {
    mx_port: u16,
    submission_port: Option<u16>,
    config_dir: PathBuf,
    queue_dir: PathBuf,
    log: PathBuf,
    mail_root: PathBuf,
    relayhost: SocketAddr,
    master_pid: Option<u32>,
    // Field order = drop order after Drop::drop: Postfix is stopped in
    // Drop::drop, then Dovecot, the sink and finally the sandbox go.
    dovecot: Option<Dovecot>,
    sink: Option<Sink>,
    sandbox: Sandbox,
}

impl Postfix {
    /// A builder with no milters, `milter_default_action = tempfail`,
    /// `milter_protocol = 6`, domain `example.test` and [`DEFAULT_USERS`]
    /// unless users are added.
    pub fn builder() -> PostfixBuilder {
        PostfixBuilder {
            mx_milters: String::new(),
            submission_milters: None,
            non_smtpd_milters: String::new(),
            milter_default_action: "tempfail".into(),
            milter_protocol: 6,
            domains: Vec::new(),
            users: Vec::new(),
            aliases: Vec::new(),
            relayhost: None,
            extra_main_cf: Vec::new(),
        }
    }

    /// The MX (port-25 role) smtpd port on 127.0.0.1.
    pub fn mx_port(&self) -> u16 {
        self.mx_port
    }

    /// The submission smtpd port (STARTTLS + AUTH required).
    ///
    /// # Panics
    /// If the builder did not enable submission.
    pub fn submission_port(&self) -> u16 {
        self.submission_port
            .expect("submission was not enabled on the Postfix builder")
    }

    /// The internal sink that is the relayhost.
    ///
    /// # Panics
    /// If the builder was given an explicit relayhost.
    pub fn sink(&self) -> &Sink {
        self.sink
            .as_ref()
            .expect("Postfix was built with an explicit relayhost: no internal sink")
    }

    /// The Dovecot serving SASL/IMAP/POP3 (present when submission is enabled).
    ///
    /// # Panics
    /// If submission was not enabled.
    pub fn dovecot(&self) -> &Dovecot {
        self.dovecot
            .as_ref()
            .expect("submission was not enabled: no Dovecot")
    }

    /// The relayhost all non-local mail goes to.
    pub fn relayhost(&self) -> SocketAddr {
        self.relayhost
    }

    /// `config_directory` (for `postfix -c`, `sendmail -C`).
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// The sandbox root.
    pub fn sandbox(&self) -> &Path {
        self.sandbox.path()
    }

    /// Postfix's log file (`maillog_file`).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Current log contents.
    pub fn log(&self) -> String {
        sys::read_lossy(&self.log)
    }

    /// `queue_directory`.
    pub fn queue_dir(&self) -> &Path {
        &self.queue_dir
    }

    /// `virtual_mailbox_base`: `<sandbox>/mail/vdomains`.
    pub fn mail_root(&self) -> &Path {
        &self.mail_root
    }

    /// The Maildir of `user@domain`.
    pub fn maildir(&self, domain: &str, user: &str) -> Maildir {
        Maildir::new(self.mail_root.join(domain).join(user))
    }

    /// Waits for a log line containing `needle`; returns the line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        sys::wait_for_line(&self.log, needle, timeout)
            .with_context(|| format!("Postfix log so far:\n{}", self.log()))
    }

    /// Submits a message with `sendmail -C <config_dir> ARGS` (pickup path, so
    /// `non_smtpd_milters` apply). Fails if sendmail exits non-zero.
    pub fn sendmail(&self, args: &[&str], message: &[u8]) -> Result<Output> {
        let out = sys::run_with_input(
            Command::new("/usr/sbin/sendmail")
                .arg("-C")
                .arg(&self.config_dir)
                .args(args),
            message,
        )?;
        if !out.status.success() {
            bail!(
                "sendmail {args:?} failed with {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// `postqueue -p` output.
    pub fn mailq(&self) -> Result<String> {
        let out = sys::run(
            Command::new("/usr/sbin/postqueue")
                .arg("-c")
                .arg(&self.config_dir)
                .arg("-p"),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the queue is empty (every message delivered or bounced).
    pub fn wait_queue_empty(&self, timeout: Duration) -> Result<()> {
        let mut last = String::new();
        sys::wait_until(timeout, "an empty Postfix queue", || {
            last = self.mailq()?;
            Ok(last.contains("Mail queue is empty").then_some(()))
        })
        .with_context(|| format!("last mailq:\n{last}"))
    }

    /// Stops Postfix (also done on drop). Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        let Some(pid) = self.master_pid.take() else {
            return Ok(());
        };
        let _ = sys::run(
            Command::new("/usr/sbin/postfix")
                .arg("-c")
                .arg(&self.config_dir)
                .arg("stop"),
        );
        if !sys::wait_pid_gone(pid, Duration::from_secs(10)) {
            // master runs setsid(): its process group is this instance only.
            sys::signal(-(pid as i32), libc::SIGKILL);
            sys::wait_pid_gone(pid, Duration::from_secs(5));
        }
        if sys::pid_alive(pid) {
            bail!("Postfix master {pid} did not stop");
        }
        Ok(())
    }

    fn read_master_pid(queue_dir: &Path) -> Result<u32> {
        let p = queue_dir.join("pid/master.pid");
        let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        s.trim()
            .parse()
            .with_context(|| format!("bad pid in {}: {s:?}", p.display()))
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("[stack] {e:#}");
        }
    }
}

impl PostfixBuilder {
    /// `smtpd_milters` of the MX listener (empty: none).
    pub fn mx_milters(mut self, milters: &str) -> Self {
        self.mx_milters = milters.to_string();
        self
    }

    /// Enables the submission listener (STARTTLS required, Dovecot SASL
    /// required, `milter_macro_daemon_name=ORIGINATING`) with its own
    /// `smtpd_milters`; also starts a Dovecot for SASL and IMAP/POP3.
    pub fn submission(mut self, milters: &str) -> Self {
        self.submission_milters = Some(milters.to_string());
        self
    }

    /// `non_smtpd_milters` (sendmail/pickup path).
    pub fn non_smtpd_milters(mut self, milters: &str) -> Self {
        self.non_smtpd_milters = milters.to_string();
        self
    }

    /// `milter_default_action` (default `tempfail`).
    pub fn milter_default_action(mut self, action: &str) -> Self {
        self.milter_default_action = action.to_string();
        self
    }

    /// `milter_protocol` (default 6).
    pub fn milter_protocol(mut self, version: u32) -> Self {
        self.milter_protocol = version;
        self
    }

    /// Adds a virtual mailbox domain (domains of added users are added
    /// automatically).
    pub fn domain(mut self, domain: &str) -> Self {
        self.domains.push(domain.to_string());
        self
    }

    /// Adds a mailbox `user@domain` that can also log in (SASL, IMAP, POP3).
    pub fn user(mut self, address: &str, password: &str) -> Self {
        self.users
            .push((address.to_string(), Some(password.to_string())));
        self
    }

    /// Adds a mailbox without a login.
    pub fn mailbox(mut self, address: &str) -> Self {
        self.users.push((address.to_string(), None));
        self
    }

    /// Adds a `virtual_alias_maps` entry (`to` may be a comma list).
    pub fn alias(mut self, from: &str, to: &str) -> Self {
        self.aliases.push((from.to_string(), to.to_string()));
        self
    }

    /// Relays non-local mail to `addr` instead of an internal sink.
    pub fn relayhost(mut self, addr: SocketAddr) -> Self {
        self.relayhost = Some(addr);
        self
    }

    /// Appends a raw `name = value` line to main.cf (later lines win).
    pub fn main_cf(mut self, line: &str) -> Self {
        self.extra_main_cf.push(line.to_string());
        self
    }

    /// Writes the sandbox, starts Dovecot (if submission) and Postfix, and
    /// returns once every listener greets.
    pub fn start(mut self) -> Result<Postfix> {
        require_root("Postfix")?;
        for b in [
            "/usr/sbin/postfix",
            "/usr/sbin/postmap",
            "/usr/sbin/sendmail",
            "/usr/sbin/postqueue",
        ] {
            require_binary(b)?;
        }
        let (pf_uid, pf_gid) = sys::user_ids("postfix")?;
        if self.users.is_empty() {
            for (a, p) in DEFAULT_USERS {
                self.users.push((a.to_string(), Some(p.to_string())));
            }
        }
        let mut domains = self.domains.clone();
        for (addr, _) in &self.users {
            let (_, d) = addr
                .split_once('@')
                .with_context(|| format!("mailbox {addr:?} lacks a domain"))?;
            if !domains.iter().any(|x| x == d) {
                domains.push(d.to_string());
            }
        }
        if domains.is_empty() {
            domains.push("example.test".into());
        }

        let sb = Sandbox::new("postfix")?;
        let root = sb.path().to_path_buf();
        let etc = sb.mkdir("etc/postfix")?;
        let queue_dir = sb.mkdir("spool/postfix")?;
        let data_dir = sb.mkdir("lib/postfix")?;
        std::os::unix::fs::chown(&data_dir, Some(pf_uid), Some(pf_gid))?;
        let logdir = sb.mkdir("log")?;
        let mail_root = sb.mkdir("mail/vdomains")?;
        sys::chown_r(&root.join("mail"), VMAIL_ID, VMAIL_ID)?;
        let cert = tls::self_signed(&sb.mkdir("etc/ssl")?)?;
        let log = logdir.join("postfix.log");

        let sink = match self.relayhost {
            Some(_) => None,
            None => Some(Sink::start()?),
        };
        let relayhost = match (&sink, self.relayhost) {
            (Some(s), _) => s.addr(),
            (None, Some(a)) => a,
            (None, None) => unreachable!(),
        };

        let dovecot = match &self.submission_milters {
            Some(_) => {
                let mut b = Dovecot::builder().mail_root(&mail_root);
                for (a, p) in &self.users {
                    if let Some(p) = p {
                        b = b.user(a, p);
                    }
                }
                Some(b.start()?)
            }
            None => None,
        };

        let mx_port = free_port()?;
        let submission_port = match self.submission_milters {
            Some(_) => Some(free_port()?),
            None => None,
        };

        // Maps.
        let mut vdomains = String::new();
        for d in &domains {
            vdomains.push_str(&format!("{d} OK\n"));
        }
        let mut vmailbox = String::new();
        for (addr, _) in &self.users {
            let (local, d) = addr.split_once('@').unwrap_or((addr, ""));
            vmailbox.push_str(&format!("{addr} {d}/{local}/\n"));
        }
        let mut virtual_ = String::new();
        for (from, to) in &self.aliases {
            virtual_.push_str(&format!("{from} {to}\n"));
        }
        for (name, content) in [
            ("vdomains", &vdomains),
            ("vmailbox", &vmailbox),
            ("virtual", &virtual_),
        ] {
            write_backdated(&etc.join(name), content)?;
        }

        let sasl = match &dovecot {
            Some(d) => format!(
                "smtpd_sasl_type = dovecot\nsmtpd_sasl_path = {}\n",
                d.auth_socket().display()
            ),
            None => String::new(),
        };
        let mut main_cf = format!(
            r#"compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {log}
maillog_file_prefixes = {root}
myhostname = mx.example.test
mydomain = example.test
myorigin = $mydomain
mydestination =
local_transport = error:5.1.1 local delivery is disabled in this sandbox
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
biff = no
append_dot_mydomain = no
readme_directory = no
smtpd_banner = $myhostname ESMTP stack-tests
virtual_mailbox_domains = hash:{etc}/vdomains
virtual_mailbox_base = {mail_root}
virtual_mailbox_maps = hash:{etc}/vmailbox
virtual_alias_maps = hash:{etc}/virtual
virtual_uid_maps = static:{VMAIL_ID}
virtual_gid_maps = static:{VMAIL_ID}
virtual_minimum_uid = 100
virtual_transport = virtual
smtpd_relay_restrictions = reject_unauth_destination
relay_domains =
relay_domains_reject_code = 550
smtpd_helo_required = yes
relayhost = [127.0.0.1]:{relay_port}
# No DNS anywhere (tests must not send a packet off loopback): the relayhost is
# a bracketed address, smtp/lmtp never use DNS, and smtpd does not look up the
# client's name (it would go through nsswitch and, without an /etc/hosts
# entry for 127.0.0.1, to the machine's resolver): clients are unknown[127.0.0.1].
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
{sasl}smtpd_sasl_auth_enable = no
milter_protocol = {proto}
milter_default_action = {default_action}
milter_mail_macros = i {{mail_addr}} {{client_addr}} {{client_name}} {{auth_type}} {{auth_authen}} {{auth_author}}
smtpd_milters =
non_smtpd_milters = {non_smtpd}
stack_mx_milters = {mx_milters}
stack_submission_milters = {sub_milters}
"#,
            queue = queue_dir.display(),
            data = data_dir.display(),
            log = log.display(),
            root = root.display(),
            etc = etc.display(),
            mail_root = mail_root.display(),
            relay_port = relayhost.port(),
            cert = cert.cert.display(),
            key = cert.key.display(),
            proto = self.milter_protocol,
            default_action = self.milter_default_action,
            non_smtpd = self.non_smtpd_milters,
            mx_milters = self.mx_milters,
            sub_milters = self.submission_milters.clone().unwrap_or_default(),
        );
        if relayhost.ip().to_string() != "127.0.0.1" {
            main_cf = main_cf.replace(
                &format!("relayhost = [127.0.0.1]:{}", relayhost.port()),
                &format!("relayhost = [{}]:{}", relayhost.ip(), relayhost.port()),
            );
        }
        for l in &self.extra_main_cf {
            main_cf.push_str(l);
            main_cf.push('\n');
        }
        let mut master_cf = format!(
            "127.0.0.1:{mx_port} inet n - n - - smtpd\n  -o syslog_name=postfix/mx\n  -o smtpd_milters=$stack_mx_milters\n"
        );
        if let Some(p) = submission_port {
            master_cf.push_str(&format!(
                "127.0.0.1:{p} inet n - n - - smtpd\n  -o syslog_name=postfix/submission\n  -o smtpd_tls_security_level=encrypt\n  -o smtpd_tls_auth_only=yes\n  -o smtpd_sasl_auth_enable=yes\n  -o smtpd_client_restrictions=permit_sasl_authenticated,reject\n  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n  -o smtpd_recipient_restrictions=\n  -o milter_macro_daemon_name=ORIGINATING\n  -o smtpd_milters=$stack_submission_milters\n"
            ));
        }
        master_cf.push_str(MASTER_CF_SERVICES);
        write_backdated(&etc.join("main.cf"), &main_cf)?;
        write_backdated(&etc.join("master.cf"), &master_cf)?;
        for name in ["vdomains", "vmailbox", "virtual"] {
            sys::run_checked(
                Command::new("/usr/sbin/postmap")
                    .arg("-c")
                    .arg(&etc)
                    .arg(format!("hash:{}", etc.join(name).display())),
            )?;
        }

        let mut pf = Postfix {
            mx_port,
            submission_port,
            config_dir: etc.clone(),
            queue_dir: queue_dir.clone(),
            log,
            mail_root,
            relayhost,
            master_pid: None,
            dovecot,
            sink,
            sandbox: sb,
        };
        {
            // Serialise starts across tests and test binaries: `postfix start`
            // runs post-install/set-permissions on shared package files.
            let _lock = FileLock::acquire(&std::env::temp_dir().join("stack-tests-postfix.lock"))?;
            let stdout = logdir.join("postfix-start.out");
            let out = std::fs::File::create(&stdout)?;
            let status = Command::new("/usr/sbin/postfix")
                .arg("-c")
                .arg(&etc)
                .arg("start")
                .stdin(std::process::Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .status()
                .context("running postfix start")?;
            if let Ok(pid) = Postfix::read_master_pid(&queue_dir) {
                pf.master_pid = Some(pid);
            }
            if !status.success() {
                bail!(
                    "postfix -c {} start failed ({status}):\n{}\nlog:\n{}",
                    etc.display(),
                    sys::read_lossy(&stdout),
                    pf.log()
                );
            }
        }
        if pf.master_pid.is_none() {
            pf.master_pid = Some(Postfix::read_master_pid(&queue_dir)?);
        }
        let mut ports = vec![mx_port];
        ports.extend(submission_port);
        for p in ports {
            let banner = sys::wait_smtp_banner(p, Duration::from_secs(30))
                .with_context(|| format!("Postfix log:\n{}", pf.log()))?;
            if !banner.starts_with("220") {
                bail!("Postfix on port {p} greeted with {banner:?}");
            }
        }
        Ok(pf)
    }
}

/// Postfix 3.7's stock service list with chroot off everywhere and the
/// postlogd service for `maillog_file`.
const MASTER_CF_SERVICES: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";
