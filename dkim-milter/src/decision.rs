//! Sign, verify or neither: a pure function of the message's origin and sender.
//!
//! Mail is signed only when it comes from one of ours (SASL-authenticated, an internal
//! host, or an originating daemon) *and* its From domain has a key. Port-25 strangers
//! are never signed, whatever their From says; their mail is verified instead.

use std::net::IpAddr;

use crate::config::{Config, Mode};
use crate::keystore::{Lookup, SignKey};

/// What the MTA told us about the message (macros and headers).
#[derive(Debug, Clone, Default)]
pub struct Origin<'a> {
    /// `{auth_type}`: non-empty means SASL-authenticated (OpenDKIM's test).
    pub auth_type: Option<&'a str>,
    /// `{auth_authen}`: the SASL login name.
    pub auth_authen: Option<&'a str>,
    /// `{daemon_name}`.
    pub daemon_name: Option<&'a str>,
    /// Client address; `None` for local submission (sendmail/pickup) or unknown.
    pub client_addr: Option<IpAddr>,
    /// The MTA said the socket family is unknown (no client address at all), as
    /// Sendmail's `-bs` does; `unknown-client` decides what that is.
    pub unknown_family: bool,
    /// The From header's address (`user@domain`), if one could be parsed.
    pub from_address: Option<&'a str>,
}

/// Why the client counts as ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// `{auth_type}` was set.
    Authenticated,
    /// Client IP in internal-hosts.
    InternalHost,
    /// `{daemon_name}` in originating-daemon-names.
    OriginatingDaemon,
    /// No client address (local submission), internal by `unknown-client`.
    LocalSubmission,
}

/// The reason for a decision; renders as a log phrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Ours and the domain has keys.
    Ours(Trust),
    /// Not ours: verify.
    External,
    /// Ours, but no From address to pick a domain from.
    NoFromAddress,
    /// Ours, but we have no key for the From domain.
    NoKey,
    /// Ours, but the From domain's directory holds no key (`empty-domain-dir =
    /// "unsigned"`).
    EmptyDomainDir {
        /// The domain whose directory is empty.
        domain: String,
        /// Which directory.
        detail: String,
    },
    /// Ours, but the domain's key is broken.
    KeyError {
        /// Domain at fault.
        domain: String,
        /// Why.
        error: String,
    },
    /// SASL login's domain differs from the From domain (require-sasl-domain-match).
    SaslDomainMismatch {
        /// The login.
        login: String,
    },
    /// Mode excludes what would have been done.
    ModeDisabled(&'static str),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Ours(Trust::Authenticated) => f.write_str("authenticated sender"),
            Reason::Ours(Trust::InternalHost) => f.write_str("client is an internal host"),
            Reason::Ours(Trust::OriginatingDaemon) => f.write_str("originating daemon"),
            Reason::Ours(Trust::LocalSubmission) => {
                f.write_str("local submission (no client address)")
            }
            Reason::External => {
                f.write_str("external client (not authenticated, not internal, not originating)")
            }
            Reason::NoFromAddress => f.write_str("no usable From address"),
            Reason::NoKey => f.write_str("no signing key for the From domain"),
            Reason::EmptyDomainDir { domain, detail } => {
                write!(f, "no signing key for the From domain: {domain}: {detail}")
            }
            Reason::KeyError { domain, error } => write!(f, "key error for {domain}: {error}"),
            Reason::SaslDomainMismatch { login } => {
                write!(f, "SASL login {login:?} is not in the From domain")
            }
            Reason::ModeDisabled(what) => write!(f, "{what} disabled by mode"),
        }
    }
}

/// The decision.
#[derive(Debug, Clone)]
pub enum Action {
    /// Sign with these keys.
    Sign(Vec<SignKey>),
    /// Verify the message's signatures.
    Verify,
    /// Do nothing (not ours to sign, or no key).
    Neither,
    /// Ours, the key is broken: apply on-key-error.
    KeyError,
}

/// Decision plus reason.
#[derive(Debug, Clone)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// Why.
    pub reason: Reason,
}

/// Decides. `lookup` maps a From address to the store's answer (normally
/// [`KeyStore::lookup`](crate::keystore::KeyStore::lookup)).
pub fn decide(cfg: &Config, origin: &Origin<'_>, lookup: impl Fn(&str) -> Lookup) -> Decision {
    let trust = if origin.auth_type.is_some_and(|a| !a.trim().is_empty()) {
        Some(Trust::Authenticated)
    } else if origin.client_addr.is_some_and(|ip| cfg.is_internal(ip)) {
        Some(Trust::InternalHost)
    } else if origin.daemon_name.is_some_and(|d| {
        cfg.originating_daemon_names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(d))
    }) {
        Some(Trust::OriginatingDaemon)
    } else if origin.unknown_family && cfg.unknown_client_is_internal() {
        Some(Trust::LocalSubmission)
    } else {
        None
    };
    let d = |action, reason| Decision { action, reason };
    // Like OpenDKIM in mode sv: whatever we do not sign is verified (an internal relay
    // such as a content filter's reinjection still gets Authentication-Results).
    let not_signed = |reason| {
        if cfg.mode.verifies() {
            d(Action::Verify, reason)
        } else {
            d(Action::Neither, reason)
        }
    };
    let Some(trust) = trust else {
        return if cfg.mode.verifies() {
            d(Action::Verify, Reason::External)
        } else {
            d(Action::Neither, Reason::External)
        };
    };
    if cfg.mode == Mode::Verify {
        return not_signed(Reason::ModeDisabled("signing"));
    }
    let Some(from) = origin.from_address.filter(|f| f.contains('@')) else {
        return not_signed(Reason::NoFromAddress);
    };
    let from_domain = from.rsplit_once('@').map_or("", |(_, d)| d);
    if cfg.require_sasl_domain_match
        && trust == Trust::Authenticated
        && let Some(login) = origin.auth_authen
    {
        let login_domain = login.rsplit_once('@').map(|(_, d)| d);
        if !login_domain.is_some_and(|ld| ld.eq_ignore_ascii_case(from_domain)) {
            return d(
                Action::Neither,
                Reason::SaslDomainMismatch {
                    login: login.to_string(),
                },
            );
        }
    }
    match lookup(from) {
        Lookup::Sign(keys) => d(Action::Sign(keys), Reason::Ours(trust)),
        Lookup::NoKey => not_signed(Reason::NoKey),
        Lookup::EmptyDir { domain, detail } => {
            not_signed(Reason::EmptyDomainDir { domain, detail })
        }
        Lookup::KeyError { domain, error } => {
            d(Action::KeyError, Reason::KeyError { domain, error })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{AnyKey, KeyKind};
    use crate::keystore::SharedKey;
    use std::sync::Arc;

    fn key() -> SignKey {
        let pem = crate::keys::tests::openssl(&["genpkey", "-algorithm", "ED25519"]);
        let k = crate::keys::parse_private_key(&pem).unwrap();
        let AnyKey::Ed25519(_) = &k.key else { panic!() };
        SignKey {
            domain: "example.com".into(),
            selector: "s".into(),
            kind: KeyKind::Ed25519,
            bits: 256,
            identity: None,
            path: "/k".into(),
            public: crate::keystore::PublicKey::of(&k),
            key: SharedKey(Arc::new(k.key)),
        }
    }

    fn store(k: SignKey) -> impl Fn(&str) -> Lookup {
        move |from: &str| match from.rsplit_once('@').map(|x| x.1) {
            Some("example.com") => Lookup::Sign(vec![k.clone()]),
            Some("broken.com") => Lookup::KeyError {
                domain: "broken.com".into(),
                error: "bad key".into(),
            },
            Some("empty.com") => Lookup::EmptyDir {
                domain: "empty.com".into(),
                detail: "/k/empty.com: no *.private key files".into(),
            },
            _ => Lookup::NoKey,
        }
    }

    fn run(cfg: &Config, o: Origin<'_>) -> Decision {
        decide(cfg, &o, store(key()))
    }

    #[test]
    fn stranger_on_port_25_is_verified_never_signed() {
        let c = Config::default();
        let o = Origin {
            client_addr: Some("203.0.113.5".parse().unwrap()),
            from_address: Some("ceo@example.com"),
            daemon_name: Some("smtpd"),
            ..Default::default()
        };
        let dec = run(&c, o.clone());
        assert!(matches!(dec.action, Action::Verify));
        assert_eq!(dec.reason, Reason::External);
        let c2 = Config {
            mode: Mode::Sign,
            ..Config::default()
        };
        assert!(matches!(run(&c2, o).action, Action::Neither));
        // Empty auth_type does not count as authenticated.
        let o = Origin {
            auth_type: Some(""),
            client_addr: Some("203.0.113.5".parse().unwrap()),
            from_address: Some("ceo@example.com"),
            ..Default::default()
        };
        assert!(matches!(run(&c, o).action, Action::Verify));
    }

    #[test]
    fn unknown_client_follows_the_option() {
        use crate::config::UnknownClient;
        let local = Origin {
            unknown_family: true,
            from_address: Some("www-data@example.com"),
            ..Default::default()
        };
        // Default: like OpenDKIM, as if from 127.0.0.1, which internal-hosts holds.
        let dec = run(&Config::default(), local.clone());
        assert!(matches!(dec.action, Action::Sign(_)));
        assert_eq!(dec.reason, Reason::Ours(Trust::LocalSubmission));
        // Loopback out of internal-hosts: no longer ours.
        let no_lo = Config {
            internal_hosts: vec!["10.0.0.0/8".parse().unwrap()],
            ..Config::default()
        };
        assert_eq!(run(&no_lo, local.clone()).reason, Reason::External);
        let always = Config {
            unknown_client: UnknownClient::Internal,
            ..no_lo
        };
        assert_eq!(
            run(&always, local.clone()).reason,
            Reason::Ours(Trust::LocalSubmission)
        );
        let never = Config {
            unknown_client: UnknownClient::External,
            ..Config::default()
        };
        let dec = run(&never, local.clone());
        assert!(matches!(dec.action, Action::Verify));
        assert_eq!(dec.reason, Reason::External);
        // A unix-socket or unparsable client (no address, family known) is not local.
        let other = Origin {
            unknown_family: false,
            ..local
        };
        assert_eq!(run(&Config::default(), other).reason, Reason::External);
    }

    #[test]
    fn trusted_origins_sign() {
        let c = Config {
            originating_daemon_names: vec!["ORIGINATING".into()],
            ..Config::default()
        };
        let ext = Some("203.0.113.5".parse().unwrap());
        for (o, t) in [
            (
                Origin {
                    auth_type: Some("PLAIN"),
                    client_addr: ext,
                    ..Default::default()
                },
                Trust::Authenticated,
            ),
            (
                Origin {
                    client_addr: Some("127.0.0.1".parse().unwrap()),
                    ..Default::default()
                },
                Trust::InternalHost,
            ),
            (
                Origin {
                    daemon_name: Some("originating"),
                    client_addr: ext,
                    ..Default::default()
                },
                Trust::OriginatingDaemon,
            ),
        ] {
            let o = Origin {
                from_address: Some("joe@example.com"),
                ..o
            };
            let dec = run(&c, o);
            assert!(matches!(dec.action, Action::Sign(ref k) if k.len() == 1));
            assert_eq!(dec.reason, Reason::Ours(t));
        }
    }

    #[test]
    fn ours_without_key_or_from_or_with_broken_key() {
        let c = Config::default();
        let base = Origin {
            client_addr: Some("::1".parse().unwrap()),
            ..Default::default()
        };
        let dec = run(
            &c,
            Origin {
                from_address: Some("a@nokey.org"),
                ..base.clone()
            },
        );
        // Not ours to sign: verified (mode sv), like OpenDKIM.
        assert!(matches!(dec.action, Action::Verify));
        assert_eq!(dec.reason.to_string(), "no signing key for the From domain");
        let s = Config {
            mode: Mode::Sign,
            ..Config::default()
        };
        let dec = run(
            &s,
            Origin {
                from_address: Some("a@nokey.org"),
                ..base.clone()
            },
        );
        assert!(matches!(dec.action, Action::Neither));
        let dec = run(
            &c,
            Origin {
                from_address: None,
                ..base.clone()
            },
        );
        assert_eq!(dec.reason, Reason::NoFromAddress);
        let dec = run(
            &c,
            Origin {
                from_address: Some("a@broken.com"),
                ..base.clone()
            },
        );
        assert!(matches!(dec.action, Action::KeyError));
        assert_eq!(dec.reason.to_string(), "key error for broken.com: bad key");
        // An empty domain directory is "no key" (verified in mode sv), never a key error.
        let dec = run(
            &c,
            Origin {
                from_address: Some("a@empty.com"),
                ..base.clone()
            },
        );
        assert!(matches!(dec.action, Action::Verify));
        assert_eq!(
            dec.reason.to_string(),
            "no signing key for the From domain: empty.com: /k/empty.com: no *.private key files"
        );
        let v = Config {
            mode: Mode::Verify,
            ..Config::default()
        };
        let dec = run(
            &v,
            Origin {
                from_address: Some("a@example.com"),
                ..base
            },
        );
        assert_eq!(dec.reason, Reason::ModeDisabled("signing"));
        assert!(matches!(dec.action, Action::Verify));
    }

    #[test]
    fn sasl_domain_rule() {
        let mut c = Config {
            require_sasl_domain_match: true,
            ..Config::default()
        };
        let o = |login| Origin {
            auth_type: Some("LOGIN"),
            auth_authen: Some(login),
            client_addr: Some("198.51.100.1".parse().unwrap()),
            from_address: Some("boss@example.com"),
            ..Default::default()
        };
        assert!(matches!(
            run(&c, o("joe@EXAMPLE.com")).action,
            Action::Sign(_)
        ));
        let dec = run(&c, o("joe@evil.org"));
        assert!(matches!(dec.action, Action::Neither));
        assert!(dec.reason.to_string().contains("joe@evil.org"));
        assert!(matches!(run(&c, o("joe")).action, Action::Neither));
        c.require_sasl_domain_match = false;
        assert!(matches!(run(&c, o("joe@evil.org")).action, Action::Sign(_)));
    }
}
