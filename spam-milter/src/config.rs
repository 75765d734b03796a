//! TOML configuration: every option, its default, and load errors that name file and line.
//!
//! The file is optional: without one the embedded defaults give a milter on
//! `inet:127.0.0.1:11330` (beside Rspamd's 11332-11334, taken by none of them) that scans
//! with the Rspamd normal worker on `http://127.0.0.1:11333`, accepts mail with a header
//! when Rspamd is unavailable on inbound, and tempfails authenticated submissions then.
//! The sample `examples/deploy/spam-milter.toml` repeats every option with its comment.

use std::collections::BTreeMap;
use std::path::Path;

use milter_daemon::config::{ConfigError, MetricsListen, SocketMode, Span};
pub use milter_daemon::logging::{LogTarget, SyslogFacility};
use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Where the milter listens: `inet:HOST:PORT`, `inet:PORT@HOST`, `unix:/path`.
    pub socket: String,
    /// Permission bits of a `unix:` socket, octal (`"0660"`).
    pub socket_mode: Option<SocketMode>,
    /// Milter connections served at once (one per SMTP session); more wait in the backlog.
    pub max_connections: usize,
    /// Started as root: switch to this user after binding (like dkim-milter's and
    /// OpenDKIM's `UserID`), as `"user"` (its primary and supplementary groups) or
    /// `"user:group"`; names or numbers. The config is read again as that user, as every
    /// reload reads it. Unset: keep the user started as. Read at start only.
    #[serde(deserialize_with = "milter_daemon::privilege::deserialize_user")]
    pub user: Option<String>,
    /// Serve as root when `user` is unset. Off: a daemon started as root without `user`
    /// refuses to run.
    pub allow_root: bool,
    /// `tracing` filter, e.g. `info` or `spam_milter=debug`; `RUST_LOG` overrides it.
    pub log_level: String,
    /// `stderr` (default), `syslog` (`syslog(3)` on `/dev/log` with `syslog-facility`) or
    /// `journald` (native journal fields). Read at start; a change needs a restart.
    pub log_target: LogTarget,
    /// Syslog facility for `log-target = "syslog"` (also the journal's
    /// `SYSLOG_FACILITY`): `mail` (default, like OpenDKIM), `daemon`, `user`, `local0`–`local7`.
    pub syslog_facility: SyslogFacility,
    /// Seconds between checks of the config file for changes (SIGHUP reloads at once).
    pub reload_poll_seconds: u64,
    /// Where Prometheus scrapes `GET /metrics`. Unset: no endpoint. Read at start only.
    pub metrics_listen: Option<MetricsListen>,
    /// Largest message (bytes, headers included) sent to Rspamd; larger ones follow
    /// `on-oversize` unscanned. Memory stays below this times `max-connections`.
    pub max_message_size: usize,
    /// What to do with a message over `max-message-size`.
    pub on_oversize: Fallback,
    /// The Rspamd scanners.
    pub rspamd: RspamdConfig,
    /// How Rspamd's actions become milter replies and headers.
    pub actions: ActionsConfig,
    /// Policy for mail from unauthenticated clients (the MX role).
    #[serde(default = "PolicyConfig::inbound", deserialize_with = "inbound_policy")]
    pub inbound: PolicyConfig,
    /// Policy for SASL-authenticated senders (the submission role).
    #[serde(
        default = "PolicyConfig::outbound",
        deserialize_with = "outbound_policy"
    )]
    pub outbound: PolicyConfig,
    /// Overrides per `{daemon_name}` (Postfix `-o milter_macro_daemon_name=...` per
    /// master.cf service), applied over `inbound`/`outbound`.
    pub listener: BTreeMap<String, ListenerConfig>,
    /// Rspamd settings per recipient domain (inbound) or sender domain (outbound).
    pub domain: BTreeMap<String, SettingsConfig>,
    /// Rspamd settings per recipient address (inbound) or sender address (outbound);
    /// more specific than `domain`.
    pub address: BTreeMap<String, SettingsConfig>,
}

/// The Rspamd upstreams and how they are used.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RspamdConfig {
    /// Base URLs of Rspamd normal workers (`/checkv2` is appended), tried in order.
    pub upstreams: Vec<String>,
    /// `failover`: always the first healthy one in order; `round-robin`: spread the load.
    pub selection: Selection,
    /// Time allowed for one attempt against one upstream.
    pub attempt_timeout: Span,
    /// Time allowed for the whole scan, across attempts and upstreams; then the listener's
    /// `on-error` applies. Keep it below Postfix's `milter_content_timeout` (300 s).
    pub scan_deadline: Span,
    /// Controller password, sent as `Password:` (not needed for the normal worker).
    pub password: Option<String>,
    /// zstd-compress requests (costs CPU on loopback; worth it across a network).
    pub compression: bool,
    /// How often each upstream is probed with `GET /ping`.
    pub health_check_interval: Span,
    /// Consecutive failures that open an upstream's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker skips its upstream before one probe request is let through.
    pub breaker_cooldown: Span,
    /// Largest reply accepted from Rspamd, bytes.
    pub max_reply_size: usize,
    /// The `MTA-Name` sent to Rspamd: the authserv-id of its Authentication-Results.
    /// Unset: the MTA's `j` macro (its host name), else this host's name.
    pub mta_name: Option<String>,
}

/// Upstream selection order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// The first healthy upstream in the listed order.
    Failover,
    /// Healthy upstreams in turn.
    RoundRobin,
}

/// What happens to a message that could not be scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// Accept it, with the status header saying why it was not scanned (fail-open).
    Accept,
    /// Answer 451 so the client retries later (fail-closed).
    Tempfail,
    /// Answer 554 (for oversize mail on sites that refuse what they cannot scan).
    Reject,
}

/// `enforce` applies Rspamd's verdict; `observe` only labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Reject, tempfail, rewrite and add headers as Rspamd says.
    Enforce,
    /// Score and add headers, including one saying what enforce would have done; never
    /// reject, tempfail, discard, quarantine or rewrite the subject. For onboarding.
    Observe,
}

/// What the `reject` action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectWith {
    /// 554 5.7.1 with Rspamd's message (default).
    Reject,
    /// Accept into the MTA's hold queue (Postfix), labelled as spam.
    Quarantine,
    /// Accept and drop silently.
    Discard,
}

/// What the `greylist` action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GreylistWith {
    /// Accept with headers, as Rspamd's own proxy does (Rspamd's greylist module signals
    /// real greylisting as `soft reject`).
    Accept,
    /// 451 4.7.1 with `greylist-message`.
    Tempfail,
}

/// Mapping of actions to replies and headers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ActionsConfig {
    /// What `reject` does.
    pub reject_with: RejectWith,
    /// Reply text when Rspamd gives no `smtp_message` for a reject.
    pub reject_message: String,
    /// Reply text when Rspamd gives none for a soft reject.
    pub tempfail_message: String,
    /// What `greylist` does.
    pub greylist: GreylistWith,
    /// Reply text of a greylisting tempfail.
    pub greylist_message: String,
    /// Reason given to the MTA with a quarantine.
    pub quarantine_message: String,
    /// The header `add header` sets (existing copies are removed first).
    pub spam_header: String,
    /// Its value.
    pub spam_header_value: String,
    /// Header with `score / required` on every scanned message; empty: none.
    pub score_header: String,
    /// Header naming the symbols that fired (with scores); empty: none.
    pub symbols_header: String,
    /// Header saying when a message was not scanned, and in observe mode what would have
    /// happened; empty: none.
    pub status_header: String,
    /// Subject prefix for `rewrite subject` when Rspamd's reply has no `subject`.
    pub subject_prefix: String,
    /// Apply the reply's `milter` block (Rspamd's header additions and removals,
    /// `change_from`, recipients) and its `dkim-signature`.
    pub apply_milter_block: bool,
    /// Header names (case-insensitive; a trailing `*` matches a prefix) removed from
    /// mail of unauthenticated clients before anything is added, so nobody can forge
    /// a scan result. Authenticated mail keeps them.
    pub remove_forged: Vec<String>,
}

/// One direction's policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// `enforce` or `observe`.
    pub mode: Mode,
    /// What to do when Rspamd is down, slow past the deadline, or answers garbage.
    pub on_error: Fallback,
    /// Rspamd `Settings-ID` for this direction.
    pub settings_id: Option<String>,
    /// Inline Rspamd settings (JSON, as Rspamd's `Settings` header takes it).
    pub settings: Option<String>,
    /// Reply text when this direction's mail is rejected; unset: Rspamd's.
    pub reject_message: Option<String>,
    /// Add the spam header, score header and rewrite the subject (false on outbound by
    /// default: recipients should not see our verdict on our own users' mail).
    pub label: bool,
}

/// Overrides for one `{daemon_name}`; unset fields keep the direction's value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenerConfig {
    /// Treat every message on this listener as outbound (e.g. a trusted relay service).
    pub outbound: Option<bool>,
    /// Skip scanning entirely on this listener (a status header says so).
    pub skip: Option<bool>,
    /// See [`PolicyConfig::mode`].
    pub mode: Option<Mode>,
    /// See [`PolicyConfig::on_error`].
    pub on_error: Option<Fallback>,
    /// See [`PolicyConfig::settings_id`].
    pub settings_id: Option<String>,
    /// See [`PolicyConfig::settings`].
    pub settings: Option<String>,
}

/// Rspamd settings for a domain or an address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SettingsConfig {
    /// Rspamd `Settings-ID`.
    pub settings_id: Option<String>,
    /// Inline Rspamd settings (JSON).
    pub settings: Option<String>,
}

/// Rspamd's worker-proxy defaults for the texts, so migrated sites see the same replies.
impl Default for ActionsConfig {
    fn default() -> Self {
        ActionsConfig {
            reject_with: RejectWith::Reject,
            reject_message: "Spam message rejected".into(),
            tempfail_message: "Try again later".into(),
            greylist: GreylistWith::Accept,
            greylist_message: "Greylisted, try again later".into(),
            quarantine_message: "Spam message quarantined".into(),
            spam_header: "X-Spam".into(),
            spam_header_value: "Yes".into(),
            score_header: String::new(),
            symbols_header: String::new(),
            status_header: "X-Spam-Milter".into(),
            subject_prefix: "*** SPAM *** ".into(),
            apply_milter_block: true,
            remove_forged: [
                "X-Spam",
                "X-Spam-*",
                "X-Spamd-*",
                "X-Rspamd-*",
                "X-Spam-Milter*",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl Default for RspamdConfig {
    fn default() -> Self {
        RspamdConfig {
            upstreams: vec!["http://127.0.0.1:11333".into()],
            selection: Selection::Failover,
            attempt_timeout: Span::secs(10),
            scan_deadline: Span::secs(20),
            password: None,
            compression: false,
            health_check_interval: Span::secs(5),
            breaker_failures: 3,
            breaker_cooldown: Span::secs(30),
            max_reply_size: 4 * 1024 * 1024,
            mta_name: None,
        }
    }
}

impl PolicyConfig {
    fn inbound() -> PolicyConfig {
        PolicyConfig {
            mode: Mode::Enforce,
            on_error: Fallback::Accept,
            settings_id: None,
            settings: None,
            reject_message: None,
            label: true,
        }
    }

    fn outbound() -> PolicyConfig {
        PolicyConfig {
            on_error: Fallback::Tempfail,
            reject_message: Some(
                "Message refused as spam; if this is a mistake, contact your provider".into(),
            ),
            label: false,
            ..PolicyConfig::inbound()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: "inet:127.0.0.1:11330".into(),
            socket_mode: None,
            max_connections: 256,
            user: None,
            allow_root: false,
            log_level: "info".into(),
            log_target: LogTarget::Stderr,
            syslog_facility: SyslogFacility::Mail,
            reload_poll_seconds: 5,
            metrics_listen: None,
            max_message_size: 20 * 1024 * 1024,
            on_oversize: Fallback::Accept,
            rspamd: RspamdConfig::default(),
            actions: ActionsConfig::default(),
            inbound: PolicyConfig::inbound(),
            outbound: PolicyConfig::outbound(),
            listener: BTreeMap::new(),
            domain: BTreeMap::new(),
            address: BTreeMap::new(),
        }
    }
}

/// A table whose missing fields take the direction's defaults, not `PolicyConfig`'s:
/// `[outbound]` with only `mode` must keep outbound's `on-error`.
fn policy_with_defaults<'de, D>(d: D, base: fn() -> PolicyConfig) -> Result<PolicyConfig, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Partial {
        mode: Option<Mode>,
        on_error: Option<Fallback>,
        settings_id: Option<String>,
        settings: Option<String>,
        reject_message: Option<String>,
        label: Option<bool>,
    }
    let p = Partial::deserialize(d)?;
    let b = base();
    Ok(PolicyConfig {
        mode: p.mode.unwrap_or(b.mode),
        on_error: p.on_error.unwrap_or(b.on_error),
        settings_id: p.settings_id.or(b.settings_id),
        settings: p.settings.or(b.settings),
        reject_message: p.reject_message.or(b.reject_message),
        label: p.label.unwrap_or(b.label),
    })
}

/// Deserialises `[inbound]` over inbound's defaults.
fn inbound_policy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PolicyConfig, D::Error> {
    policy_with_defaults(d, PolicyConfig::inbound)
}

/// Deserialises `[outbound]` over outbound's defaults.
fn outbound_policy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PolicyConfig, D::Error> {
    policy_with_defaults(d, PolicyConfig::outbound)
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::invalid(path, m));
        let r = &self.rspamd;
        if r.upstreams.is_empty() {
            return bad("rspamd.upstreams: at least one Rspamd URL is needed".into());
        }
        for u in &r.upstreams {
            if let Err(e) = crate::upstream::parse_base_url(u) {
                return bad(format!("rspamd.upstreams: {u:?}: {e}"));
            }
        }
        if r.attempt_timeout.get().is_zero() || r.scan_deadline.get().is_zero() {
            return bad("rspamd.attempt-timeout and rspamd.scan-deadline must be above 0".into());
        }
        if r.scan_deadline.get().as_secs() >= 300 {
            return bad(format!(
                "rspamd.scan-deadline {} must stay below Postfix's milter_content_timeout (300 s)",
                r.scan_deadline
            ));
        }
        if r.breaker_failures == 0 {
            return bad("rspamd.breaker-failures must be at least 1".into());
        }
        if r.health_check_interval.get().as_millis() < 100 {
            return bad("rspamd.health-check-interval must be at least 100ms".into());
        }
        if let Some(n) = &r.mta_name
            && !is_token(n)
        {
            return bad(format!(
                "rspamd.mta-name {n:?} must be one token without spaces or ';'"
            ));
        }
        if self.max_connections == 0 {
            return bad("max-connections must be at least 1".into());
        }
        if self.max_message_size < 1024 {
            return bad("max-message-size must be at least 1024 bytes".into());
        }
        if self.reload_poll_seconds == 0 {
            return bad("reload-poll-seconds must be at least 1".into());
        }
        let a = &self.actions;
        for (what, name) in [
            ("actions.spam-header", &a.spam_header),
            ("actions.score-header", &a.score_header),
            ("actions.symbols-header", &a.symbols_header),
            ("actions.status-header", &a.status_header),
        ] {
            if !(name.is_empty() || is_field_name(name)) {
                return bad(format!("{what} {name:?} is not a header field name"));
            }
        }
        if a.spam_header.is_empty() {
            return bad("actions.spam-header must name a header".into());
        }
        for p in &a.remove_forged {
            if !is_field_name(p.strip_suffix('*').unwrap_or(p)) {
                return bad(format!("actions.remove-forged: {p:?} is not a header name"));
            }
        }
        for (what, text) in [
            ("actions.reject-message", &a.reject_message),
            (
                "outbound.reject-message",
                self.outbound
                    .reject_message
                    .as_ref()
                    .unwrap_or(&a.reject_message),
            ),
            (
                "inbound.reject-message",
                self.inbound
                    .reject_message
                    .as_ref()
                    .unwrap_or(&a.reject_message),
            ),
            ("actions.tempfail-message", &a.tempfail_message),
            ("actions.greylist-message", &a.greylist_message),
            ("actions.quarantine-message", &a.quarantine_message),
            ("actions.spam-header-value", &a.spam_header_value),
        ] {
            if text.trim().is_empty() || text.chars().any(char::is_control) {
                return bad(format!("{what} must be one line of text"));
            }
            if text.chars().count() > crate::decision::MAX_REPLY_TEXT {
                return bad(format!(
                    "{what} is longer than {} characters",
                    crate::decision::MAX_REPLY_TEXT
                ));
            }
        }
        let settings = [
            ("inbound", &self.inbound.settings),
            ("outbound", &self.outbound.settings),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .chain(
            self.listener
                .iter()
                .map(|(n, l)| (format!("listener.{n:?}"), &l.settings)),
        )
        .chain(
            self.domain
                .iter()
                .chain(self.address.iter())
                .map(|(n, s)| (format!("{n:?}"), &s.settings)),
        );
        for (owner, s) in settings {
            if let Some(s) = s
                && serde_json::from_str::<serde_json::Value>(s)
                    .map(|v| !v.is_object())
                    .unwrap_or(true)
            {
                return bad(format!(
                    "{owner}: settings must be a JSON object, e.g. '{{\"actions\": {{\"reject\": 20}}}}'"
                ));
            }
        }
        for (owner, id) in [
            ("inbound".to_string(), &self.inbound.settings_id),
            ("outbound".to_string(), &self.outbound.settings_id),
        ]
        .into_iter()
        .chain(
            self.listener
                .iter()
                .map(|(n, l)| (format!("listener.{n:?}"), &l.settings_id)),
        )
        .chain(
            self.domain
                .iter()
                .chain(self.address.iter())
                .map(|(n, s)| (format!("{n:?}"), &s.settings_id)),
        ) {
            if let Some(id) = id
                && !is_token(id)
            {
                return bad(format!("{owner}: settings-id {id:?} must be one token"));
            }
        }
        for d in self.domain.keys() {
            if d.contains('@') || d.trim().is_empty() {
                return bad(format!("domain {d:?}: a domain name, without @"));
            }
        }
        for a in self.address.keys() {
            if !a.contains('@') {
                return bad(format!("address {a:?}: a full address, local@domain"));
            }
        }
        Ok(())
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c.is_control() || c == ';')
}

/// RFC 5322 field name: printable ASCII without ':' or space.
pub fn is_field_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("/etc/spam-milter.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = p("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.socket, "inet:127.0.0.1:11330");
        assert_eq!(c.rspamd.upstreams, ["http://127.0.0.1:11333"]);
        assert_eq!(c.inbound.on_error, Fallback::Accept);
        assert_eq!(c.outbound.on_error, Fallback::Tempfail);
        assert!(c.inbound.label && !c.outbound.label);
        assert!(!c.rspamd.compression);
    }

    #[test]
    fn a_partial_direction_table_keeps_that_directions_defaults() {
        let c = p("[outbound]\nmode = \"observe\"\n").unwrap();
        assert_eq!(c.outbound.mode, Mode::Observe);
        assert_eq!(c.outbound.on_error, Fallback::Tempfail);
        assert!(!c.outbound.label);
        assert_eq!(c.inbound, Config::default().inbound);
    }

    #[test]
    fn full_file() {
        let c = p(r#"
socket = "unix:/run/spam-milter/milter.sock"
socket-mode = "0660"
max-message-size = 1048576
on-oversize = "tempfail"
[rspamd]
upstreams = ["http://10.0.0.5:11333", "http://10.0.0.6:11333/"]
selection = "round-robin"
attempt-timeout = "5s"
scan-deadline = 15
breaker-failures = 2
breaker-cooldown = "10s"
mta-name = "mx.example.net"
[actions]
reject-with = "quarantine"
greylist = "tempfail"
score-header = "X-Spam-Score"
remove-forged = ["X-Spam*", "X-Virus-Scanned"]
[inbound]
on-error = "tempfail"
settings-id = "inbound"
[listener.ORIGINATING]
outbound = true
[listener.relay]
skip = true
[domain."example.com"]
settings = '{"actions": {"reject": 20}}'
[address."ceo@example.com"]
settings-id = "strict"
"#)
        .unwrap();
        assert_eq!(c.rspamd.selection, Selection::RoundRobin);
        assert_eq!(c.rspamd.scan_deadline, Span::secs(15));
        assert_eq!(c.actions.reject_with, RejectWith::Quarantine);
        assert_eq!(c.inbound.on_error, Fallback::Tempfail);
        assert_eq!(c.listener["ORIGINATING"].outbound, Some(true));
        assert_eq!(c.socket_mode.map(SocketMode::bits), Some(0o660));
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            ("[rspamd]\nupstreams = []\n", "at least one"),
            ("[rspamd]\nupstreams = [\"ftp://x\"]\n", "ftp://x"),
            ("\n[actions]\nreject-with = \"bounce\"\n", ":3:"),
            (
                "[rspamd]\nscan-deadline = \"10 minutes\"\n",
                "milter_content_timeout",
            ),
            ("[rspamd]\nattempt-timeout = \"soon\"\n", ":2:"),
            ("bogus = 1\n", "bogus"),
            (
                "\nuser = \"a:b:c\"\n",
                ":2: user \"a:b:c\": expected \"user\" or \"user:group\"",
            ),
            ("user = \"\"\n", ":1:"),
            ("allow-root = \"yes\"\n", ":1:"),
            ("[inbound]\nbogus = 1\n", "bogus"),
            ("[domain.\"a.com\"]\nsettings = '[1]'\n", "JSON object"),
            ("[address.\"a.com\"]\nsettings-id = \"x\"\n", "local@domain"),
            ("[actions]\nspam-header = \"X Spam\"\n", "field name"),
            ("[actions]\nreject-message = \"two\\nlines\"\n", "one line"),
            (
                "[outbound]\nreject-message = \"\"\n",
                "outbound.reject-message",
            ),
        ];
        for (text, want) in cases {
            let e = p(text).unwrap_err().to_string();
            assert!(e.starts_with("/etc/spam-milter.toml"), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let long = format!("[actions]\ntempfail-message = \"{}\"\n", "x".repeat(201));
        let e = p(&long).unwrap_err().to_string();
        assert!(e.contains("tempfail-message is longer than 200"), "{e}");
        assert!(
            p(&format!(
                "[actions]\ntempfail-message = \"{}\"\n",
                "x".repeat(200)
            ))
            .is_ok()
        );
    }
}
