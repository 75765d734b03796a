//! Which rules apply to a message: its direction (inbound, or outbound for authenticated
//! senders), the listener's overrides by `{daemon_name}`, and per-domain or per-address
//! Rspamd settings. Sans-IO: facts in, a [`Policy`] out.

use crate::config::{Config, Fallback, Mode, PolicyConfig, SettingsConfig};
use crate::message::{Connection, Envelope};

/// Mail from outside (scored as inbound) or from our own users (outbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Unauthenticated clients: the MX role.
    Inbound,
    /// SASL-authenticated senders, or a listener configured as outbound.
    Outbound,
}

impl Direction {
    /// `inbound` / `outbound`, for logs, metrics and Rspamd's `MTA-Tag`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// The rules for one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Its direction.
    pub direction: Direction,
    /// Enforce or observe.
    pub mode: Mode,
    /// When Rspamd cannot answer.
    pub on_error: Fallback,
    /// Do not scan at all (a listener with `skip = true`).
    pub skip: bool,
    /// Rspamd `Settings-ID`.
    pub settings_id: Option<String>,
    /// Inline Rspamd settings (JSON).
    pub settings: Option<String>,
    /// Reply text for rejects; `None`: Rspamd's or the configured default.
    pub reject_message: Option<String>,
    /// Add the spam, score and symbols headers and rewrite subjects.
    pub label: bool,
    /// Strip forged scan headers first (inbound only: our users' mail is theirs).
    pub strip_forged: bool,
    /// How the policy was chosen, for the log line (`inbound`, `outbound@ORIGINATING`,
    /// `inbound+domain example.com`).
    pub name: String,
}

/// Resolves the policy for a message.
pub fn resolve(cfg: &Config, conn: &Connection, env: &Envelope) -> Policy {
    let listener = conn
        .daemon_name
        .as_deref()
        .and_then(|d| cfg.listener.get(d).map(|l| (d, l)));
    let outbound = env.auth_user.is_some() || listener.and_then(|(_, l)| l.outbound) == Some(true);
    let (direction, base): (Direction, &PolicyConfig) = if outbound {
        (Direction::Outbound, &cfg.outbound)
    } else {
        (Direction::Inbound, &cfg.inbound)
    };
    let mut p = Policy {
        direction,
        mode: base.mode,
        on_error: base.on_error,
        skip: false,
        settings_id: base.settings_id.clone(),
        settings: base.settings.clone(),
        reject_message: base.reject_message.clone(),
        label: base.label,
        // An authenticated user may legitimately forward a scanned message; a listener
        // declared outbound (a trusted relay) likewise.
        strip_forged: direction == Direction::Inbound,
        name: direction.as_str().to_string(),
    };
    if let Some((name, l)) = listener {
        p.name = format!("{}@{name}", p.name);
        p.skip = l.skip.unwrap_or(false);
        p.mode = l.mode.unwrap_or(p.mode);
        p.on_error = l.on_error.unwrap_or(p.on_error);
        if l.settings_id.is_some() {
            p.settings_id = l.settings_id.clone();
        }
        if l.settings.is_some() {
            p.settings = l.settings.clone();
        }
    }
    match per_party(cfg, direction, env) {
        Party::None => {}
        Party::One(key, s) => {
            p.name = format!("{}+{key}", p.name);
            if s.settings_id.is_some() {
                p.settings_id = s.settings_id.clone();
            }
            if s.settings.is_some() {
                p.settings = s.settings.clone();
            }
        }
        Party::Conflict => p
            .name
            .push_str("+recipients disagree, no per-domain settings"),
    }
    p
}

enum Party<'a> {
    None,
    One(&'a str, &'a SettingsConfig),
    Conflict,
}

/// Per-domain/per-address settings: of the sender for outbound mail, of the recipients for
/// inbound. Rspamd scans a message once, so recipients with different entries cannot each
/// have theirs; then none applies (the direction's own settings do), rather than letting
/// one recipient's lenient entry decide for a stricter one.
fn per_party<'a>(cfg: &'a Config, dir: Direction, env: &Envelope) -> Party<'a> {
    let lookup = |addr: &str| -> Option<(&'a str, &'a SettingsConfig)> {
        let addr = addr.to_ascii_lowercase();
        if let Some((k, s)) = cfg
            .address
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&addr))
        {
            return Some((k.as_str(), s));
        }
        let domain = addr.rsplit_once('@')?.1;
        cfg.domain
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(domain))
            .map(|(k, s)| (k.as_str(), s))
    };
    match dir {
        Direction::Outbound => match lookup(env.sender()) {
            Some((k, s)) => Party::One(k, s),
            None => Party::None,
        },
        Direction::Inbound => {
            let mut found: Option<(&str, &SettingsConfig)> = None;
            for r in env.recipients() {
                let Some((k, s)) = lookup(r) else {
                    continue;
                };
                match found {
                    None => found = Some((k, s)),
                    Some((_, prev)) if prev == s => {}
                    Some(_) => return Party::Conflict,
                }
            }
            match found {
                Some((k, s)) => Party::One(k, s),
                None => Party::None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(t: &str) -> Config {
        Config::parse(t, Path::new("t.toml")).unwrap()
    }

    fn env(from: &str, rcpts: &[&str], auth: Option<&str>) -> Envelope {
        Envelope {
            from: format!("<{from}>"),
            rcpts: rcpts.iter().map(|r| format!("<{r}>")).collect(),
            auth_user: auth.map(String::from),
            queue_id: None,
        }
    }

    fn conn(daemon: Option<&str>) -> Connection {
        Connection {
            daemon_name: daemon.map(String::from),
            ..Connection::default()
        }
    }

    #[test]
    fn authenticated_senders_are_outbound() {
        let c = cfg("");
        let p = resolve(
            &c,
            &conn(None),
            &env("u@ex.com", &["x@y"], Some("u@ex.com")),
        );
        assert_eq!(p.direction, Direction::Outbound);
        assert_eq!(p.on_error, Fallback::Tempfail);
        assert!(!p.strip_forged && !p.label);
        let p = resolve(&c, &conn(None), &env("a@remote", &["u@ex.com"], None));
        assert_eq!(p.direction, Direction::Inbound);
        assert!(p.strip_forged && p.label);
        assert_eq!(p.name, "inbound");
    }

    #[test]
    fn listener_overrides_apply_by_daemon_name() {
        let c = cfg(
            "[listener.ORIGINATING]\noutbound = true\nsettings-id = \"sub\"\n\
             [listener.mx]\nmode = \"observe\"\non-error = \"tempfail\"\n",
        );
        let p = resolve(&c, &conn(Some("ORIGINATING")), &env("a@b", &["c@d"], None));
        assert_eq!(p.direction, Direction::Outbound);
        assert_eq!(p.settings_id.as_deref(), Some("sub"));
        assert_eq!(p.name, "outbound@ORIGINATING");
        let p = resolve(&c, &conn(Some("mx")), &env("a@b", &["c@d"], None));
        assert_eq!((p.mode, p.on_error), (Mode::Observe, Fallback::Tempfail));
        let p = resolve(&c, &conn(Some("other")), &env("a@b", &["c@d"], None));
        assert_eq!(p.name, "inbound");
    }

    #[test]
    fn per_domain_settings_follow_the_recipients_or_the_sender() {
        let c = cfg("[domain.\"ex.com\"]\nsettings-id = \"lenient\"\n\
             [domain.\"strict.com\"]\nsettings-id = \"strict\"\n\
             [address.\"ceo@ex.com\"]\nsettings = '{\"actions\":{\"reject\":5}}'\n");
        let p = resolve(
            &c,
            &conn(None),
            &env("a@r", &["u@EX.com", "v@ex.com"], None),
        );
        assert_eq!(p.settings_id.as_deref(), Some("lenient"));
        assert_eq!(p.name, "inbound+ex.com");
        let p = resolve(&c, &conn(None), &env("a@r", &["ceo@ex.com"], None));
        assert!(p.settings.is_some() && p.settings_id.is_none());
        let p = resolve(
            &c,
            &conn(None),
            &env("a@r", &["u@ex.com", "b@strict.com"], None),
        );
        assert_eq!(p.settings_id, None);
        assert!(p.name.contains("disagree"), "{}", p.name);
        let p = resolve(&c, &conn(None), &env("u@strict.com", &["x@r"], Some("u")));
        assert_eq!(p.settings_id.as_deref(), Some("strict"));
        let p = resolve(&c, &conn(None), &env("a@r", &["nobody@else.org"], None));
        assert_eq!(p.name, "inbound");
    }
}
