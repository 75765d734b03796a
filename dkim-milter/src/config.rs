//! TOML configuration: every option, its default, and load errors that name file and line.
//!
//! The file is optional: without one the embedded defaults give an OpenDKIM-like
//! signer for `/etc/opendkim/keys` on `inet:127.0.0.1:8891`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use milter_daemon::config::{Cidr, ConfigError, MetricsListen, SocketMode, Span, hostname};
pub use milter_daemon::logging::{LogTarget, SyslogFacility};

/// Which of signing and verifying this instance does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Mode {
    /// Sign only (OpenDKIM `Mode s`).
    Sign,
    /// Verify only (`Mode v`).
    Verify,
    /// Both (`Mode sv`), the default.
    SignVerify,
}

impl Mode {
    /// True if outbound mail may be signed.
    pub fn signs(self) -> bool {
        matches!(self, Mode::Sign | Mode::SignVerify)
    }
    /// True if inbound mail is verified.
    pub fn verifies(self) -> bool {
        matches!(self, Mode::Verify | Mode::SignVerify)
    }
}

impl TryFrom<String> for Mode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sign" | "s" => Ok(Mode::Sign),
            "verify" | "v" => Ok(Mode::Verify),
            "sign+verify" | "sv" | "vs" => Ok(Mode::SignVerify),
            _ => Err(format!(
                "mode {s:?}: expected \"sign\", \"verify\" or \"sign+verify\""
            )),
        }
    }
}

/// One half of `c=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canon {
    /// `simple`.
    Simple,
    /// `relaxed`.
    Relaxed,
}

impl Canon {
    /// The mail-auth equivalent.
    pub fn to_mail_auth(self) -> mail_auth::dkim::Canonicalization {
        match self {
            Canon::Simple => mail_auth::dkim::Canonicalization::Simple,
            Canon::Relaxed => mail_auth::dkim::Canonicalization::Relaxed,
        }
    }
}

/// `header/body` canonicalization, written like OpenDKIM's `Canonicalization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Canonicalization {
    /// Header canonicalization.
    pub header: Canon,
    /// Body canonicalization.
    pub body: Canon,
}

impl TryFrom<String> for Canonicalization {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let one = |p: &str| match p.trim().to_ascii_lowercase().as_str() {
            "simple" => Ok(Canon::Simple),
            "relaxed" => Ok(Canon::Relaxed),
            _ => Err(format!(
                "canonicalization {s:?}: expected simple or relaxed, as \"header/body\""
            )),
        };
        let (h, b) = s.split_once('/').unwrap_or((s.as_str(), "simple"));
        Ok(Canonicalization {
            header: one(h)?,
            body: one(b)?,
        })
    }
}

/// What to do with a message from our own user when its domain's key is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnKeyError {
    /// Answer 4xx so the client retries once the key is fixed (default).
    Tempfail,
    /// Pass the message on unsigned.
    Accept,
}

/// What a domain directory without any `*.private` file means (a panel made the directory
/// but no key yet, or a rotation removed the old key before the new one arrived).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmptyDomainDir {
    /// A warning for that domain; its mail passes unsigned, as for a domain without a
    /// directory (OpenDKIM's `On-KeyNotFound accept`; default).
    Unsigned,
    /// A broken key: its mail follows `on-key-error`.
    KeyError,
}

/// Whether a connection for which the MTA names no client address (socket family
/// unknown, as Sendmail's `-bs` and local pickups report) counts as ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownClient {
    /// As if from 127.0.0.1, so internal exactly when `internal-hosts` holds it: what
    /// OpenDKIM does (its `mlfi_connect` substitutes the loopback address). Default.
    Loopback,
    /// Always internal, whatever `internal-hosts` says.
    Internal,
    /// Never internal: only SASL or an originating daemon name makes it ours.
    External,
}

/// How strictly private key file permissions are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyPermissions {
    /// Refuse world-accessible or group-writable keys; warn about group-readable ones (default).
    Refuse,
    /// Only warn.
    Warn,
    /// Do not look.
    Ignore,
}

/// How a selector is picked when `{keys-dir}/{domain}/` holds several keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectorRule {
    /// Per algorithm, the selector whose name sorts last (byte order): date-named
    /// selectors such as `2025-06` rotate forward (default).
    HighestName,
    /// Per algorithm, the `.private` file with the newest mtime (ties: highest name).
    Newest,
}

/// When a key found in `{keys-dir}/{domain}/` (selector rule, not pinned) may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyActivation {
    /// Only once `{selector}._domainkey.{domain}` publishes its public key (default): a key
    /// dropped in before its record exists does not break DKIM, the previous key keeps
    /// signing. While no key of the domain is verified yet (fresh install, DNS not
    /// reachable) the selector rule's pick signs, with a warning, as OpenDKIM would.
    Dns,
    /// Like `dns`, but while no key is verified the domain does not sign (its mail
    /// follows `on-key-error`).
    DnsStrict,
    /// The selector rule's pick signs at once (no DNS check; what OpenDKIM does).
    Immediate,
}

impl KeyActivation {
    /// The option value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyActivation::Dns => "dns",
            KeyActivation::DnsStrict => "dns-strict",
            KeyActivation::Immediate => "immediate",
        }
    }
}

/// One `dns-servers` entry: `IP` or `IP:PORT` (IPv6 with a port as `[::1]:5353`), port 53
/// when not given. Host names are refused: the resolver cannot resolve its own servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct DnsServer(SocketAddr);

impl DnsServer {
    /// The port when an entry names none.
    pub const DEFAULT_PORT: u16 = 53;

    /// The server's address and port.
    pub fn addr(self) -> SocketAddr {
        self.0
    }
}

impl std::fmt::Display for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl TryFrom<String> for DnsServer {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let t = s.trim();
        let bare = t
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(t);
        let addr = match bare.parse::<IpAddr>() {
            Ok(ip) => Some(SocketAddr::new(ip, DnsServer::DEFAULT_PORT)),
            Err(_) => t.parse::<SocketAddr>().ok(),
        };
        match addr {
            Some(a) if a.port() != 0 => Ok(DnsServer(a)),
            Some(_) => Err(format!("dns-servers entry {s:?}: port 0 is not a DNS port")),
            None => Err(format!(
                "dns-servers entry {s:?}: expected an IP address or IP:PORT such as \"127.0.0.1\", \
                 \"192.0.2.53:5353\" or \"[::1]:53\" (no host names)"
            )),
        }
    }
}

/// Per-domain overrides (`[domain."example.com"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DomainConfig {
    /// Selectors to sign with, in `{keys-dir}/{domain}/{selector}.private`. One RSA and/or
    /// one Ed25519 key; overrides the selector rule.
    #[serde(default)]
    pub selectors: Vec<String>,
}

/// The whole configuration. Field docs are the option reference; the sample
/// `examples/deploy/dkim-milter.toml` repeats them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Where the milter listens: `inet:HOST:PORT`, `inet:PORT@HOST` (OpenDKIM), `unix:/path`.
    pub socket: String,
    /// Permission bits of a `unix:` socket, octal (e.g. `"0660"` so Postfix's group can
    /// connect). Unset: the process umask decides.
    pub socket_mode: Option<SocketMode>,
    /// Owner of a `unix:` socket (user name or number), set after binding. Unset: the
    /// user the daemon starts as. Changing it needs root (or CAP_CHOWN).
    pub socket_owner: Option<String>,
    /// Group of a `unix:` socket (group name or number), e.g. `postfix`. Unset: the
    /// directory's (setgid) or the daemon's group.
    pub socket_group: Option<String>,
    /// A file to write the daemon's pid to once it listens, removed again at exit, e.g.
    /// `/run/dkim-milter/dkim-milter.pid` (a missing directory is created). Unset: none.
    pub pid_file: Option<PathBuf>,
    /// Started as root: switch to this user after binding (OpenDKIM `UserID`), as
    /// `"user"` (its primary and supplementary groups) or `"user:group"`; names or
    /// numbers. Keys and tables are read again as that user. Unset: keep the user started as.
    #[serde(deserialize_with = "milter_daemon::privilege::deserialize_user")]
    pub user: Option<String>,
    /// Serve as root when `user` is unset. Off: a daemon started as root without `user`
    /// refuses to run.
    pub allow_root: bool,
    /// Root of the opendkim-genkey layout `{keys-dir}/{domain}/{selector}.private`.
    pub keys_dir: PathBuf,
    /// Clients whose mail is signed (OpenDKIM `InternalHosts`), CIDR or address.
    pub internal_hosts: Vec<Cidr>,
    /// Clients inside `internal-hosts` that are not internal after all (OpenDKIM's
    /// `!`-prefixed `InternalHosts` entries), CIDR or address.
    pub internal_hosts_except: Vec<Cidr>,
    /// `{daemon_name}` values whose mail is signed, e.g. `ORIGINATING` set by
    /// `-o milter_macro_daemon_name=ORIGINATING` on submission in master.cf.
    pub originating_daemon_names: Vec<String>,
    /// What a connection without a client address is (Sendmail `-bs`, PHP `mail()`
    /// through the sendmail command): without this, local mail would go unsigned.
    pub unknown_client: UnknownClient,
    /// `c=` as `header/body`.
    pub canonicalization: Canonicalization,
    /// authserv-id written into (and protected in) Authentication-Results. Default: the
    /// MTA's `j` macro (its `myhostname`), else this host's FQDN.
    pub authserv_id: Option<String>,
    /// `sign`, `verify` or `sign+verify`.
    pub mode: Mode,
    /// `tempfail` or `accept` when the sender domain's key is broken.
    pub on_key_error: OnKeyError,
    /// `unsigned` or `key-error`: what a domain directory without keys means.
    pub empty_domain_dir: EmptyDomainDir,
    /// Sign `sub.example.com` with the key of `example.com` when it has none of its own.
    pub sign_subdomains: bool,
    /// Only sign when the SASL login (`{auth_authen}`) has the From domain after its `@`.
    pub require_sasl_domain_match: bool,
    /// Signature lifetime in seconds (`x=`); none by default.
    pub signature_ttl: Option<u64>,
    /// OpenDKIM KeyTable (`file:`/plain path). Used together with `signing-table`;
    /// when set, the keys-dir scan is not used.
    pub key_table: Option<String>,
    /// OpenDKIM SigningTable (`refile:` wildcard patterns, or `file:`/plain path).
    pub signing_table: Option<String>,
    /// Apply every SigningTable match instead of the first (OpenDKIM `MultipleSignatures`).
    pub multiple_signatures: bool,
    /// Selector choice when a domain directory has several keys.
    pub selector_rule: SelectorRule,
    /// When a new key in the directory layout starts signing (see [`KeyActivation`]).
    /// Pinned selectors and KeyTable keys are never gated.
    pub key_activation: KeyActivation,
    /// Seconds between DNS checks of the directory layout's keys (also checked right
    /// after every reload). Default 300: a published key signs at most 5 minutes after
    /// its record is visible to `dns-servers`.
    pub key_recheck_seconds: u64,
    /// Sign with Ed25519 too when a domain has an Ed25519 key next to its RSA key.
    pub dual_sign: bool,
    /// Private key permission policy (OpenDKIM `RequireSafeKeys`).
    pub key_permissions: KeyPermissions,
    /// Headers to sign (`h=`) when present, as OpenDKIM's `SignHeaders`; absent ones are
    /// not listed, so a mailing list may still add e.g. `List-Id`.
    pub sign_headers: Vec<String>,
    /// Headers signed once more than present (From by default): nobody can add one,
    /// present or not (OpenDKIM's `OversignHeaders`).
    pub oversign_headers: Vec<String>,
    /// DEPRECATED, ignored: verification streams the body (memory does not grow with the
    /// message), so there is no size limit any more. Still accepted, with a warning.
    pub verify_max_message_size: Option<u64>,
    /// DKIM-Signature fields verified per message, in header order; further ones are not
    /// evaluated (A-R `dkim=policy`, and a log line). Each costs a key lookup and an RSA
    /// check, so this bounds what one message can make us do. Default 10.
    pub max_signatures: usize,
    /// RSA keys shorter than this many bits fail verification (OpenDKIM `MinimumKeyBits`).
    /// Default 1024.
    pub minimum_key_bits: usize,
    /// `tracing` filter, e.g. `info` or `dkim_milter=debug`; `RUST_LOG` overrides it.
    pub log_level: String,
    /// `stderr` (default), `syslog` (`syslog(3)` on `/dev/log` with `syslog-facility`) or
    /// `journald` (native journal fields). Read at start; a change needs a restart.
    pub log_target: LogTarget,
    /// Syslog facility for `log-target = "syslog"` (also the journal's
    /// `SYSLOG_FACILITY`): `mail` (default, like OpenDKIM), `daemon`, `user`, `local0`–`local7`.
    pub syslog_facility: SyslogFacility,
    /// Seconds between checks of the config, tables and keys dir for changes.
    pub reload_poll_seconds: u64,
    /// Milter connections served at once (one per SMTP session); more wait in the
    /// listen backlog. Read at start only.
    pub max_connections: usize,
    /// Where Prometheus scrapes `GET /metrics` (`HOST:PORT`, `inet:PORT@HOST`; a bare
    /// port means 127.0.0.1). Unset: no metrics endpoint. Read at start only.
    pub metrics_listen: Option<MetricsListen>,
    /// DNS servers the verifier and the key-activation checks query (UDP, TCP for long answers), as `IP` or `IP:PORT`
    /// (`[IPv6]:PORT`; port 53 by default), e.g. `["127.0.0.1:5353", "192.0.2.53"]`, instead
    /// of `/etc/resolv.conf`'s. They should be recursive resolvers: the list is used alone,
    /// without resolv.conf's search domains, options or `/etc/hosts`. Unset: the system
    /// resolver. Read at start; a change needs a restart.
    pub dns_servers: Option<Vec<DnsServer>>,
    /// How long a query to one `dns-servers` server may take before the lookup gives up on
    /// it (the next server is tried; when none answers the signature is `temperror`):
    /// seconds or e.g. `"1500ms"`. Default 5 s. The system resolver keeps resolv.conf's
    /// `options timeout:`.
    pub dns_timeout: Span,
    /// FOR TESTS: a file of `name record` lines (e.g. `sel._domainkey.example.com v=DKIM1;
    /// k=rsa; p=…`) whose TXT records the verifier uses instead of DNS. Read at start.
    pub dns_override_file: Option<PathBuf>,
    /// Per-domain overrides.
    pub domain: BTreeMap<String, DomainConfig>,
}

/// The default `sign-headers`: RFC 6376 §5.4.1's "SHOULD" list ([`RFC6376_SIGN_HEADERS`],
/// its first 19 entries) plus Message-ID and the MIME headers.
pub const DEFAULT_SIGN_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Resent-Date",
    "Resent-From",
    "Resent-To",
    "Resent-Cc",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// RFC 6376 §5.4.1's list alone (OpenDKIM's default, libopendkim's `dkim_should_signhdrs`).
pub const RFC6376_SIGN_HEADERS: &[&str] = DEFAULT_SIGN_HEADERS.split_at(19).0;

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: "inet:127.0.0.1:8891".into(),
            socket_mode: None,
            socket_owner: None,
            socket_group: None,
            pid_file: None,
            user: None,
            allow_root: false,
            keys_dir: PathBuf::from("/etc/opendkim/keys"),
            internal_hosts: Cidr::loopback(),
            internal_hosts_except: Vec::new(),
            originating_daemon_names: Vec::new(),
            unknown_client: UnknownClient::Loopback,
            canonicalization: Canonicalization {
                header: Canon::Relaxed,
                body: Canon::Relaxed,
            },
            authserv_id: None,
            mode: Mode::SignVerify,
            on_key_error: OnKeyError::Tempfail,
            empty_domain_dir: EmptyDomainDir::Unsigned,
            sign_subdomains: false,
            require_sasl_domain_match: false,
            signature_ttl: None,
            key_table: None,
            signing_table: None,
            multiple_signatures: false,
            selector_rule: SelectorRule::HighestName,
            key_activation: KeyActivation::Dns,
            key_recheck_seconds: 300,
            dual_sign: true,
            key_permissions: KeyPermissions::Refuse,
            sign_headers: DEFAULT_SIGN_HEADERS.iter().map(|s| s.to_string()).collect(),
            oversign_headers: vec!["From".into()],
            verify_max_message_size: None,
            max_signatures: crate::verify::DEFAULT_MAX_SIGNATURES,
            minimum_key_bits: crate::verify::DEFAULT_MINIMUM_KEY_BITS,
            log_level: "info".into(),
            log_target: LogTarget::Stderr,
            syslog_facility: SyslogFacility::Mail,
            reload_poll_seconds: 5,
            max_connections: 256,
            metrics_listen: None,
            dns_servers: None,
            dns_timeout: Span::secs(5),
            dns_override_file: None,
            domain: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Parses `text` (the content of `path`, used in messages) and checks it.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = milter_daemon::config::parse(text, path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = milter_daemon::config::load(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The embedded defaults, checked like a file.
    pub fn defaults() -> Config {
        Config::default()
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::invalid(path, message);
        if self.key_table.is_some() != self.signing_table.is_some() {
            return Err(bad(
                "key-table and signing-table must be set together".into()
            ));
        }
        if !self
            .sign_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("from"))
        {
            return Err(bad("sign-headers must include From (RFC 6376 §5.4)".into()));
        }
        if let Some(id) = &self.authserv_id
            && (id.is_empty() || id.contains(|c: char| c.is_whitespace() || c == ';'))
        {
            return Err(bad(format!(
                "authserv-id {id:?} must be one token without spaces or ';'"
            )));
        }
        let unix = matches!(
            milter_core::server::Endpoint::parse(&self.socket),
            Ok(milter_core::server::Endpoint::Unix(_))
        );
        for (name, set) in [
            ("socket-owner", self.socket_owner.is_some()),
            ("socket-group", self.socket_group.is_some()),
        ] {
            if set && !unix {
                return Err(bad(format!(
                    "{name} applies to unix: sockets only (socket is {:?})",
                    self.socket
                )));
            }
        }
        for (name, v) in [
            ("socket-owner", &self.socket_owner),
            ("socket-group", &self.socket_group),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.contains(|c: char| c.is_whitespace() || c == ':'))
            {
                return Err(bad(format!(
                    "{name} {v:?} must be one user or group name or number"
                )));
            }
        }
        if let Some(p) = &self.pid_file
            && (!p.is_absolute() || p.file_name().is_none())
        {
            return Err(bad(format!(
                "pid-file {:?} must be an absolute file path",
                p.display().to_string()
            )));
        }
        if self.reload_poll_seconds == 0 {
            return Err(bad("reload-poll-seconds must be at least 1".into()));
        }
        if self.key_recheck_seconds == 0 {
            return Err(bad("key-recheck-seconds must be at least 1".into()));
        }
        if self.max_connections == 0 {
            return Err(bad("max-connections must be at least 1".into()));
        }
        if self.dns_servers.as_ref().is_some_and(Vec::is_empty) {
            return Err(bad(
                "dns-servers must list at least one server (leave it out to use the system resolver)"
                    .into(),
            ));
        }
        if self.dns_timeout.get().is_zero() {
            return Err(bad("dns-timeout must be longer than 0".into()));
        }
        if self.max_signatures == 0 {
            return Err(bad(
                "max-signatures must be at least 1 (use mode = \"sign\" to not verify)".into(),
            ));
        }
        if self.verify_max_message_size.is_some() {
            tracing::warn!(
                "{}: verify-max-message-size is deprecated and ignored: verification streams \
                 the body, so messages of any size are verified",
                path.display()
            );
        }
        for (d, dc) in &self.domain {
            if dc.selectors.len() > 2 {
                return Err(bad(format!(
                    "domain {d:?}: at most two selectors (one RSA, one Ed25519)"
                )));
            }
        }
        Ok(())
    }

    /// `socket-mode` as permission bits (`None` if unset or invalid).
    pub fn socket_mode_bits(&self) -> Option<u32> {
        self.socket_mode.map(SocketMode::bits)
    }

    /// The authserv-id when the MTA does not name itself (no usable `j` macro):
    /// configured, else this host's name (the FQDN from /etc/hosts when the kernel's is
    /// short).
    pub fn authserv_id(&self) -> String {
        self.authserv_id.clone().unwrap_or_else(hostname)
    }

    /// True if `ip` is an internal host.
    pub fn is_internal(&self, ip: IpAddr) -> bool {
        self.internal_hosts.iter().any(|c| c.contains(ip))
            && !self.internal_hosts_except.iter().any(|c| c.contains(ip))
    }

    /// True if a connection without a client address counts as internal (`unknown-client`).
    pub fn unknown_client_is_internal(&self) -> bool {
        match self.unknown_client {
            UnknownClient::Loopback => self.is_internal(IpAddr::from([127, 0, 0, 1])),
            UnknownClient::Internal => true,
            UnknownClient::External => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6376_list_is_the_default_list_up_to_list_archive() {
        assert_eq!(RFC6376_SIGN_HEADERS.first(), Some(&"From"));
        assert_eq!(RFC6376_SIGN_HEADERS.last(), Some(&"List-Archive"));
        assert_eq!(DEFAULT_SIGN_HEADERS[19], "Message-ID");
    }

    fn p(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("/etc/dkim-milter.toml"))
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = p("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.socket, "inet:127.0.0.1:8891");
        assert_eq!(c.keys_dir, PathBuf::from("/etc/opendkim/keys"));
        assert!(c.is_internal("127.3.4.5".parse().unwrap()));
        assert!(c.is_internal("::1".parse().unwrap()));
        assert!(c.is_internal("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.is_internal("192.0.2.1".parse().unwrap()));
        assert_eq!(c.mode, Mode::SignVerify);
        assert_eq!(c.on_key_error, OnKeyError::Tempfail);
        assert_eq!(c.canonicalization.header, Canon::Relaxed);
        assert_eq!(c.canonicalization.body, Canon::Relaxed);
        assert!(!c.sign_subdomains && !c.require_sasl_domain_match);
        assert_eq!(c.signature_ttl, None);
    }

    #[test]
    fn full_file() {
        let c = p(r#"
socket = "unix:/run/dkim.sock"
keys-dir = "/srv/keys"
internal-hosts = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
originating-daemon-names = ["ORIGINATING"]
canonicalization = "relaxed/simple"
authserv-id = "mx.example.net"
mode = "sign"
on-key-error = "accept"
sign-subdomains = true
require-sasl-domain-match = true
signature-ttl = 864000
key-table = "file:/etc/opendkim/KeyTable"
signing-table = "refile:/etc/opendkim/SigningTable"
selector-rule = "newest"
log-level = "debug"
[domain."example.com"]
selectors = ["2025", "ed"]
"#)
        .unwrap();
        assert_eq!(c.mode, Mode::Sign);
        assert!(c.is_internal("10.1.2.3".parse().unwrap()));
        assert!(c.is_internal("2001:db8:1::5".parse().unwrap()));
        assert!(c.is_internal("192.0.2.7".parse().unwrap()));
        assert!(!c.is_internal("192.0.2.8".parse().unwrap()));
        assert!(!c.is_internal("127.0.0.1".parse().unwrap()));
        let except =
            p("internal-hosts = [\"10.0.0.0/8\"]\ninternal-hosts-except = [\"10.9.0.0/16\"]")
                .unwrap();
        assert!(except.is_internal("10.1.2.3".parse().unwrap()));
        assert!(!except.is_internal("10.9.2.3".parse().unwrap()));
        assert_eq!(c.canonicalization.body, Canon::Simple);
        assert_eq!(c.authserv_id(), "mx.example.net");
        assert_eq!(c.domain["example.com"].selectors, vec!["2025", "ed"]);
        assert_eq!(c.selector_rule, SelectorRule::Newest);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = p("mode = \"sv\"\n\ninternal-hosts = [\"10.0.0.0/33\"]\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("/etc/dkim-milter.toml:3:"), "{s}");
        assert!(s.contains("prefix length"), "{s}");

        let e = p("socket = \"x\"\nbogus-option = 1\n").unwrap_err();
        assert!(e.to_string().starts_with("/etc/dkim-milter.toml:2:"), "{e}");
        assert!(e.to_string().contains("bogus-option"), "{e}");

        let e = p("canonicalization = \"relaxed/loose\"").unwrap_err();
        assert!(e.to_string().contains(":1:"), "{e}");

        let e = p("on-key-error = \"reject\"").unwrap_err();
        assert!(e.to_string().contains(":1:"), "{e}");

        let e = p("key-table = \"/etc/opendkim/KeyTable\"").unwrap_err();
        assert!(e.to_string().contains("signing-table"), "{e}");

        let e = p("socket-mode = \"0999\"").unwrap_err();
        assert!(e.to_string().contains("socket-mode"), "{e}");
        assert_eq!(
            p("socket-mode = \"0660\"").unwrap().socket_mode_bits(),
            Some(0o660)
        );

        let e = p("log-level = \"info\"\nmetrics-listen = \"unix:/run/m.sock\"").unwrap_err();
        assert!(e.to_string().starts_with("/etc/dkim-milter.toml:2:"), "{e}");
        assert!(e.to_string().contains("TCP only"), "{e}");
        assert_eq!(
            p("metrics-listen = \"9102\"")
                .unwrap()
                .metrics_listen
                .map(|m| m.as_str().to_owned()),
            Some("9102".to_owned())
        );

        let e = p("sign-headers = [\"Subject\"]").unwrap_err();
        assert!(e.to_string().contains("From"), "{e}");

        assert_eq!(Config::default().key_activation, KeyActivation::Dns);
        for v in [
            KeyActivation::Dns,
            KeyActivation::DnsStrict,
            KeyActivation::Immediate,
        ] {
            let c = p(&format!("key-activation = \"{}\"", v.as_str())).unwrap();
            assert_eq!(c.key_activation, v);
        }
        let e = p("key-activation = \"later\"").unwrap_err();
        assert!(e.to_string().contains("`dns-strict`"), "{e}");
        let e = p("key-recheck-seconds = 0").unwrap_err();
        assert!(e.to_string().contains("key-recheck-seconds"), "{e}");
    }

    #[test]
    fn verification_limits() {
        let c = p("").unwrap();
        assert_eq!((c.max_signatures, c.minimum_key_bits), (10, 1024));
        let c = p("max-signatures = 3\nminimum-key-bits = 2048").unwrap();
        assert_eq!((c.max_signatures, c.minimum_key_bits), (3, 2048));
        assert!(p("max-signatures = 0").is_err());
        // Deprecated, still accepted (and ignored).
        assert_eq!(
            p("verify-max-message-size = 1000")
                .unwrap()
                .verify_max_message_size,
            Some(1000)
        );
    }

    #[test]
    fn dns_servers_and_timeout() {
        let c = p("").unwrap();
        assert_eq!(c.dns_servers, None);
        assert_eq!(c.dns_timeout, Span::secs(5));

        let c = p(r#"
dns-servers = ["127.0.0.1:5353", "192.0.2.53", " [::1]:5300 ", "2001:db8::53", "[2001:db8::1]"]
dns-timeout = "1500ms"
"#)
        .unwrap();
        let addrs: Vec<String> = c
            .dns_servers
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            addrs,
            [
                "127.0.0.1:5353",
                "192.0.2.53:53",
                "[::1]:5300",
                "[2001:db8::53]:53",
                "[2001:db8::1]:53"
            ]
        );
        assert_eq!(c.dns_timeout.get(), std::time::Duration::from_millis(1500));
        assert_eq!(p("dns-timeout = 2").unwrap().dns_timeout, Span::secs(2));

        // Bad entries name file, line and the entry.
        for (text, needle) in [
            (
                "mode = \"sv\"\ndns-servers = [\"127.0.0.1\", \"ns.example.com\"]\n",
                "ns.example.com",
            ),
            (
                "log-level = \"info\"\ndns-servers = [\"127.0.0.1:99999\"]",
                "99999",
            ),
            (
                "log-level = \"info\"\ndns-servers = [\"127.0.0.1:0\"]",
                "port 0",
            ),
            ("log-level = \"info\"\ndns-servers = [\"[::1\"]", "[::1"),
            (
                "log-level = \"info\"\ndns-servers = \"127.0.0.1\"",
                "sequence",
            ),
            ("log-level = \"info\"\ndns-timeout = \"soon\"", "soon"),
        ] {
            let e = p(text).unwrap_err().to_string();
            assert!(e.starts_with("/etc/dkim-milter.toml:2:"), "{text:?}: {e}");
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let e = p("dns-servers = []").unwrap_err();
        assert!(e.to_string().contains("at least one server"), "{e}");
        let e = p("dns-timeout = 0").unwrap_err();
        assert!(e.to_string().contains("dns-timeout"), "{e}");
    }

    #[test]
    fn operations_options() {
        let c = p("").unwrap();
        assert_eq!((&c.user, c.allow_root, &c.pid_file), (&None, false, &None));
        assert_eq!(c.empty_domain_dir, EmptyDomainDir::Unsigned);
        let c = p(r#"
socket = "local:/run/dkim-milter/dkim.sock"
socket-owner = "opendkim"
socket-group = "postfix"
pid-file = "/run/dkim-milter/dkim-milter.pid"
user = "opendkim:opendkim"
allow-root = true
empty-domain-dir = "key-error"
unknown-client = "external"
"#)
        .unwrap();
        assert_eq!(c.socket_group.as_deref(), Some("postfix"));
        assert_eq!(
            c.pid_file.as_deref(),
            Some(Path::new("/run/dkim-milter/dkim-milter.pid"))
        );
        assert_eq!(c.empty_domain_dir, EmptyDomainDir::KeyError);
        assert_eq!(c.unknown_client, UnknownClient::External);
        for (text, needle) in [
            ("socket-group = \"postfix\"", "unix: sockets only"),
            (
                "socket = \"unix:/x.sock\"\nsocket-owner = \"a b\"",
                "one user or group",
            ),
            ("pid-file = \"run/x.pid\"", "absolute"),
            (
                "user = \"a:b:c\"",
                "dkim-milter.toml:1: user \"a:b:c\": expected",
            ),
            ("user = \"\"", "user:group"),
            (
                "empty-domain-dir = \"tempfail\"",
                "expected `unsigned` or `key-error`",
            ),
        ] {
            let e = p(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let e = Config::load(Path::new("/nonexistent/dkim.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/dkim.toml: cannot read")
        );
    }
}
