//! Where everything lives: the fixed loopback ports and the state directory's layout.
//!
//! ```text
//! {state}/
//!   etc/postfix/    main.cf master.cf vdomains vmailbox virtual (+ .db)
//!   etc/dovecot/    dovecot.conf users (SHA512-CRYPT hashes)
//!   etc/ssl/        cert.pem key.pem (self-signed: mx.example.test, 127.0.0.1)
//!   etc/rspamd/     local.d/* (Rspamd's LOCAL_CONFDIR; the stock /etc/rspamd is read as is)
//!   etc/dkim/keys/  {domain}/{selector}.private + .txt (dkim-milter keygen)
//!   etc/dkim-milter.toml  etc/spam-milter.toml
//!   var/spool/postfix/  var/lib/{postfix,dovecot,rspamd}  (rspamd: the hyperscan cache)
//!   var/mail/vdomains/{domain}/{user}/   Maildirs (uid/gid 5000)
//!   var/sink/       what the stand-in for remote MX hosts received (.eml + .json)
//!   run/            pid files, dns.port, ready, Dovecot's base_dir
//!   log/            one log per daemon
//! ```

use std::path::{Path, PathBuf};

/// Postfix smtpd in the MX role (port 25's stand-in).
pub const MX_PORT: u16 = 2525;
/// The sink standing in for every remote MX (Postfix's relayhost).
pub const SINK_PORT: u16 = 2526;
/// Postfix smtpd in the submission role (port 587's stand-in).
pub const SUBMISSION_PORT: u16 = 2587;
/// Dovecot IMAPS (993's stand-in).
pub const IMAPS_PORT: u16 = 2993;
/// Dovecot POP3S (995's stand-in).
pub const POP3S_PORT: u16 = 2995;
/// spam-milter's milter socket.
pub const SPAM_MILTER_PORT: u16 = 2530;
/// spam-milter's Prometheus endpoint.
pub const SPAM_METRICS_PORT: u16 = 2531;
/// Rspamd's normal worker (`/checkv2`), which spam-milter scans with.
pub const RSPAMD_NORMAL_PORT: u16 = 2533;
/// Rspamd's controller and web UI (loopback only).
pub const RSPAMD_CONTROLLER_PORT: u16 = 2534;
/// dkim-milter's milter socket.
pub const DKIM_MILTER_PORT: u16 = 2891;
/// dkim-milter's Prometheus endpoint.
pub const DKIM_METRICS_PORT: u16 = 2892;

/// Every fixed TCP port, with what listens there (the DNS stub's port is picked per start).
pub const PORTS: &[(u16, &str)] = &[
    (MX_PORT, "Postfix MX (smtpd, spam-milter)"),
    (SINK_PORT, "sink (remote MX hosts)"),
    (SUBMISSION_PORT, "Postfix submission (STARTTLS + SASL)"),
    (IMAPS_PORT, "Dovecot IMAPS"),
    (POP3S_PORT, "Dovecot POP3S"),
    (SPAM_MILTER_PORT, "spam-milter"),
    (SPAM_METRICS_PORT, "spam-milter metrics"),
    (RSPAMD_NORMAL_PORT, "Rspamd normal worker"),
    (RSPAMD_CONTROLLER_PORT, "Rspamd controller"),
    (DKIM_MILTER_PORT, "dkim-milter"),
    (DKIM_METRICS_PORT, "dkim-milter metrics"),
];

/// The host name Postfix, Dovecot and the milters' Authentication-Results use.
pub const HOSTNAME: &str = "mx.example.test";
/// The DKIM selector of every key the stack makes.
pub const SELECTOR: &str = "mail";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/tmp/milter-stack";
/// Environment variable naming another state directory (`--state-dir` wins).
pub const STATE_ENV: &str = "MILTER_STACK_DIR";
/// Source address of test clients playing "the internet" on the MX port.
pub const REMOTE_CLIENT: &str = "127.0.0.2";

/// The paths of one state directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root` (made absolute).
    pub fn new(root: &Path) -> Layout {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(root))
                .unwrap_or_else(|_| root.to_path_buf())
        };
        Layout { root }
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Postfix's config_directory.
    pub fn etc_postfix(&self) -> PathBuf {
        self.at("etc/postfix")
    }
    /// A Postfix map source (`vdomains`, `vmailbox`, `virtual`).
    pub fn map(&self, name: &str) -> PathBuf {
        self.etc_postfix().join(name)
    }
    /// Dovecot's config directory.
    pub fn etc_dovecot(&self) -> PathBuf {
        self.at("etc/dovecot")
    }
    /// Dovecot's passwd-file (logins and homes).
    pub fn users_file(&self) -> PathBuf {
        self.etc_dovecot().join("users")
    }
    /// TLS certificate directory.
    pub fn etc_ssl(&self) -> PathBuf {
        self.at("etc/ssl")
    }
    /// Rspamd's LOCAL_CONFDIR (holds `local.d/`).
    pub fn etc_rspamd(&self) -> PathBuf {
        self.at("etc/rspamd")
    }
    /// dkim-milter's keys-dir.
    pub fn keys_dir(&self) -> PathBuf {
        self.at("etc/dkim/keys")
    }
    /// dkim-milter's config file.
    pub fn dkim_config(&self) -> PathBuf {
        self.at("etc/dkim-milter.toml")
    }
    /// spam-milter's config file.
    pub fn spam_config(&self) -> PathBuf {
        self.at("etc/spam-milter.toml")
    }
    /// Lock serialising account updates.
    pub fn accounts_lock(&self) -> PathBuf {
        self.at("etc/.accounts.lock")
    }
    /// Postfix queue_directory.
    pub fn queue_dir(&self) -> PathBuf {
        self.at("var/spool/postfix")
    }
    /// Postfix data_directory.
    pub fn postfix_data(&self) -> PathBuf {
        self.at("var/lib/postfix")
    }
    /// Dovecot state_dir.
    pub fn dovecot_state(&self) -> PathBuf {
        self.at("var/lib/dovecot")
    }
    /// Rspamd DBDIR: the hyperscan cache kept between starts.
    pub fn rspamd_db(&self) -> PathBuf {
        self.at("var/lib/rspamd")
    }
    /// virtual_mailbox_base.
    pub fn mail_root(&self) -> PathBuf {
        self.at("var/mail/vdomains")
    }
    /// The Maildir of `local@domain`.
    pub fn maildir(&self, domain: &str, local: &str) -> PathBuf {
        self.mail_root().join(domain).join(local)
    }
    /// Where the sink keeps what it received.
    pub fn sink_dir(&self) -> PathBuf {
        self.at("var/sink")
    }
    /// Pid files and other run-time state.
    pub fn run_dir(&self) -> PathBuf {
        self.at("run")
    }
    /// Dovecot base_dir (its sockets, among them Postfix's SASL socket).
    pub fn dovecot_base(&self) -> PathBuf {
        self.at("run/dovecot")
    }
    /// The pid file of a component.
    pub fn pid_file(&self, name: &str) -> PathBuf {
        self.run_dir().join(format!("{name}.pid"))
    }
    /// Written once every daemon answers; removed at teardown.
    pub fn ready_file(&self) -> PathBuf {
        self.run_dir().join("ready")
    }
    /// The DNS stub's port of the running stack.
    pub fn dns_port_file(&self) -> PathBuf {
        self.run_dir().join("dns.port")
    }
    /// Held (flock) by the supervisor while it runs.
    pub fn supervisor_lock(&self) -> PathBuf {
        self.run_dir().join("supervisor.lock")
    }
    /// Held by `--check` so two checks never interleave.
    pub fn check_lock(&self) -> PathBuf {
        self.run_dir().join("check.lock")
    }
    /// Log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.at("log")
    }
    /// A component's log file.
    pub fn log(&self, name: &str) -> PathBuf {
        self.log_dir().join(format!("{name}.log"))
    }
}
