//! Safe key rotation: a key of the directory layout signs only once DNS publishes it.
//!
//! The [`Gate`] remembers, per `(domain, selector, public key)`, what DNS last said; the
//! key store asks it at lookup time (a short mutex, no I/O). The [`Checker`] queries
//! `{selector}._domainkey.{domain}` off the message path: at start, after every reload
//! and every `key-recheck-seconds`, at most [`MAX_IN_FLIGHT`] queries at a time, each
//! bounded by a timeout.
//!
//! A DNS error (timeout, SERVFAIL) never takes a verified key out of service: only a
//! definite answer (no record, another key, revoked) does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_auth::{DnsError, MessageAuthenticator};

use crate::config::Config;
use crate::keys::{self, KeyKind};
use crate::keystore::PublicKey;

/// Most DNS checks running at once.
pub const MAX_IN_FLIGHT: usize = 16;

/// What DNS says about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsState {
    /// The record publishes this private key's public key.
    Matching,
    /// A record exists but does not publish this key (another key, revoked, unparsable).
    Different(String),
    /// NXDOMAIN or no TXT record.
    Absent,
    /// The lookup failed (timeout, server failure): nothing known.
    Error(String),
}

impl std::fmt::Display for DnsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsState::Matching => f.write_str("published, matches the private key"),
            DnsState::Different(why) => write!(f, "published but DIFFERENT: {why}"),
            DnsState::Absent => f.write_str("not published (NXDOMAIN or no TXT record)"),
            DnsState::Error(e) => write!(f, "DNS error: {e}"),
        }
    }
}

/// Compares a published TXT record with a private key's public key.
pub fn compare(record: &str, kind: KeyKind, public: &PublicKey) -> DnsState {
    let rec = match keys::parse_txt_file(record) {
        Ok(r) => r,
        Err(e) => return DnsState::Different(format!("record does not parse ({e})")),
    };
    if rec.p.is_empty() {
        return DnsState::Different("key revoked (empty p=)".into());
    }
    if rec.k != kind.k() {
        return DnsState::Different(format!("k={} but the private key is {}", rec.k, kind.k()));
    }
    if public.matches(&rec.p) {
        DnsState::Matching
    } else {
        DnsState::Different("p= is another key".into())
    }
}

#[derive(Debug, Clone)]
struct Checked {
    state: DnsState,
    public: Arc<PublicKey>,
    verified: bool,
}

/// What DNS said about each candidate key, shared by a store and the checker. Bounded:
/// after each full check only the store's current candidates are kept.
#[derive(Debug, Default)]
pub struct Gate {
    /// domain → selector → last answer (nested so a lookup needs no allocation).
    checked: Mutex<HashMap<String, HashMap<String, Checked>>>,
    /// Last logged active selectors per domain and algorithm (to log changes once).
    active: Mutex<HashMap<(String, KeyKind), String>>,
}

impl Gate {
    /// True if `domain`/`selector` was verified with exactly this public key.
    pub fn verified(&self, domain: &str, selector: &str, public: &PublicKey) -> bool {
        let Ok(m) = self.checked.lock() else {
            return false;
        };
        m.get(domain)
            .and_then(|d| d.get(selector))
            .is_some_and(|c| c.verified && *c.public == *public)
    }

    /// The last DNS answer for a key (`None`: not checked yet, or the file changed since).
    pub fn state(&self, domain: &str, selector: &str, public: &PublicKey) -> Option<DnsState> {
        let m = self.checked.lock().ok()?;
        m.get(domain)
            .and_then(|d| d.get(selector))
            .filter(|c| *c.public == *public)
            .map(|c| c.state.clone())
    }

    /// Records an answer; returns true if the state changed. A DNS error keeps a key
    /// verified that was verified with the same public key.
    pub fn record(
        &self,
        domain: &str,
        selector: &str,
        public: &Arc<PublicKey>,
        state: DnsState,
    ) -> bool {
        let Ok(mut m) = self.checked.lock() else {
            return false;
        };
        let per = m.entry(domain.to_string()).or_default();
        let prev = per.get(selector).filter(|c| *c.public == **public);
        let verified = match state {
            DnsState::Matching => true,
            DnsState::Error(_) => prev.is_some_and(|c| c.verified),
            _ => false,
        };
        let changed = prev.is_none_or(|c| c.state != state);
        per.insert(
            selector.to_string(),
            Checked {
                state,
                public: public.clone(),
                verified,
            },
        );
        changed
    }

    /// Drops entries for keys no longer in the store.
    pub fn retain(&self, keep: &HashSet<(String, String)>) {
        if let Ok(mut m) = self.checked.lock() {
            for (d, per) in m.iter_mut() {
                per.retain(|sel, _| keep.contains(&(d.clone(), sel.clone())));
            }
            m.retain(|_, per| !per.is_empty());
        }
        if let Ok(mut a) = self.active.lock() {
            let domains: HashSet<&str> = keep.iter().map(|(d, _)| d.as_str()).collect();
            a.retain(|(d, _), _| domains.contains(d.as_str()));
        }
    }

    /// Takes over what `previous` knew (a reload builds a new store).
    pub fn adopt(&self, previous: &Gate) {
        if std::ptr::eq(self, previous) {
            return;
        }
        let (Ok(mut m), Ok(p)) = (self.checked.lock(), previous.checked.lock()) else {
            return;
        };
        for (d, per) in p.iter() {
            let mine = m.entry(d.clone()).or_default();
            for (sel, v) in per {
                mine.entry(sel.clone()).or_insert_with(|| v.clone());
            }
        }
        drop((m, p));
        if let (Ok(mut a), Ok(p)) = (self.active.lock(), previous.active.lock()) {
            a.extend(p.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }

    /// Sets the active selector; returns the previous one if it changed.
    pub(crate) fn set_active(
        &self,
        domain: &str,
        kind: KeyKind,
        selector: &str,
    ) -> Option<Option<String>> {
        let mut a = self.active.lock().ok()?;
        let prev = a.insert((domain.to_string(), kind), selector.to_string());
        (prev.as_deref() != Some(selector)).then_some(prev)
    }
}

/// Looks keys up in DNS: the configured resolver (`dns-servers`, `dns-timeout`, else the
/// system resolver), records from `dns-override-file` first.
pub struct Checker {
    auth: MessageAuthenticator,
    overrides: HashMap<String, String>,
    timeout: Duration,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("overrides", &self.overrides.len())
            .finish_non_exhaustive()
    }
}

/// Reads a `dns-override-file`: `name record` lines, `#` comments.
pub fn read_override_file(path: &std::path::Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, record)) = line.split_once(char::is_whitespace) else {
            return Err(format!("line {}: expected `name record`", i + 1));
        };
        out.push((fqdn(name), record.trim().to_string()));
    }
    Ok(out)
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_ascii_lowercase())
}

impl Checker {
    /// A checker for `config`'s resolver. Its own hickory cache is off (TTL caps of
    /// zero): the recheck interval, not a cached NXDOMAIN, decides when a new record is seen.
    pub fn new(config: &Config) -> Result<Checker, String> {
        use mail_auth::hickory_resolver::system_conf::read_system_conf;
        let (rc, mut opts) = match config.dns_servers.as_deref() {
            Some(servers) => crate::verify::resolver_config(servers, config.dns_timeout.get()),
            None => read_system_conf().map_err(|e| format!("system resolver: {e}"))?,
        };
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        let auth = MessageAuthenticator::new(rc, opts).map_err(|e| e.to_string())?;
        let overrides = match config.dns_override_file.as_deref() {
            Some(p) => read_override_file(p)
                .map_err(|e| format!("dns-override-file {}: {e}", p.display()))?
                .into_iter()
                .collect(),
            None => HashMap::new(),
        };
        Ok(Checker {
            auth,
            overrides,
            // Several servers and a TCP retry fit in; the hard bound is ours.
            timeout: config.dns_timeout.get().saturating_mul(3),
        })
    }

    /// Asks DNS about one key.
    pub async fn check(
        &self,
        domain: &str,
        selector: &str,
        kind: KeyKind,
        public: &PublicKey,
    ) -> DnsState {
        let name = fqdn(&format!("{selector}._domainkey.{domain}"));
        if let Some(rec) = self.overrides.get(&name) {
            return compare(rec, kind, public);
        }
        match tokio::time::timeout(self.timeout, self.auth.txt_raw_lookup(name.as_str())).await {
            Err(_) => DnsState::Error(format!("no answer within {:?}", self.timeout)),
            Ok(Err(mail_auth::Error::Dns(DnsError::RecordNotFound(_)))) => DnsState::Absent,
            Ok(Err(e)) => DnsState::Error(e.to_string()),
            Ok(Ok(bytes)) => compare(&String::from_utf8_lossy(&bytes), kind, public),
        }
    }

    /// Checks every gated candidate of `store` (at most [`MAX_IN_FLIGHT`] at once),
    /// records the answers in the store's gate and logs what changed.
    pub async fn check_store(self: &Arc<Self>, store: &crate::keystore::KeyStore) {
        let list = store.gated_candidates();
        let gate = store.gate();
        let mut keep = HashSet::new();
        for chunk in list.chunks(MAX_IN_FLIGHT) {
            let mut set = tokio::task::JoinSet::new();
            for c in chunk {
                let (me, c) = (self.clone(), c.clone());
                set.spawn(async move {
                    let st = me.check(&c.domain, &c.selector, c.kind, &c.public).await;
                    (c, st)
                });
            }
            while let Some(joined) = set.join_next().await {
                let Ok((c, st)) = joined else { continue };
                keep.insert((c.domain.clone(), c.selector.clone()));
                let name = format!("{}._domainkey.{}", c.selector, c.domain);
                let was_verified = gate.verified(&c.domain, &c.selector, &c.public);
                if gate.record(&c.domain, &c.selector, &c.public, st.clone()) {
                    match &st {
                        DnsState::Matching => {
                            tracing::info!("{}: s={}: DNS {name}: {st}", c.domain, c.selector)
                        }
                        DnsState::Error(_) if was_verified => tracing::warn!(
                            "{}: s={}: DNS {name}: {st}; stays active (verified before)",
                            c.domain,
                            c.selector
                        ),
                        _ => tracing::warn!(
                            "{}: s={}: DNS {name}: {st}; not used until its record is published",
                            c.domain,
                            c.selector
                        ),
                    }
                }
            }
        }
        gate.retain(&keep);
        store.log_activation();
    }
}

/// The checker task: checks `shared`'s store now, whenever a reload swaps in a new
/// state (looked at every second) and every `key-recheck-seconds`. Runs until aborted.
pub async fn run(shared: crate::reload::Shared, checker: Arc<Checker>) {
    let mut last: Option<Arc<crate::reload::State>> = None;
    let mut due = tokio::time::Instant::now();
    loop {
        let st = shared.load_full();
        let swapped = last.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &st));
        if swapped || tokio::time::Instant::now() >= due {
            if st.keys.has_gated() {
                checker.check_store(&st.keys).await;
            }
            due = tokio::time::Instant::now()
                + Duration::from_secs(st.config.key_recheck_seconds.max(1));
            last = Some(st);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One key for `testkey`: what it is, what DNS says, whether it signs and why.
#[derive(Debug, Clone)]
pub struct KeyReport {
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// Algorithm and size, e.g. `rsa-2048`.
    pub what: String,
    /// The key file.
    pub path: String,
    /// DNS answer.
    pub dns: DnsState,
    /// `Some(why)` if it signs.
    pub active: Option<String>,
}

/// Checks every key of the store (gated or not) and says which signs: `testkey`.
pub async fn report(
    checker: &Arc<Checker>,
    store: &crate::keystore::KeyStore,
    only: Option<&str>,
) -> BTreeMap<String, Vec<KeyReport>> {
    checker.check_store(store).await;
    let mut out: BTreeMap<String, Vec<KeyReport>> = BTreeMap::new();
    for c in store.all_keys() {
        if only.is_some_and(|d| !d.eq_ignore_ascii_case(&c.domain)) {
            continue;
        }
        let dns = checker
            .check(&c.domain, &c.selector, c.kind, &c.public)
            .await;
        let active = store.why_active(&c.domain, &c.selector);
        out.entry(c.domain.clone()).or_default().push(KeyReport {
            domain: c.domain.clone(),
            selector: c.selector.clone(),
            what: format!("{}-{}", c.kind.k(), c.bits),
            path: c.path.display().to_string(),
            dns,
            active,
        });
    }
    for keys in out.values_mut() {
        keys.sort_by(|a, b| a.selector.cmp(&b.selector));
    }
    out
}

/// `dkim-milter testkey`: what [`report`] found, as text; `Ok(true)` if some published
/// record does not match its key (the exit code is 1 then).
pub async fn testkey(
    state: &crate::reload::State,
    only: Option<&str>,
) -> Result<(String, bool), String> {
    use std::fmt::Write;
    let checker = Arc::new(Checker::new(&state.config)?);
    let only = only.map(|d| d.trim_end_matches('.').to_ascii_lowercase());
    let domains = report(&checker, &state.keys, only.as_deref()).await;
    let mut out = String::new();
    let mut mismatch = false;
    if domains.is_empty() {
        let _ = writeln!(
            out,
            "no keys{}",
            only.map(|d| format!(" for {d}")).unwrap_or_default()
        );
    }
    for (domain, keys) in &domains {
        let _ = writeln!(out, "{domain}:");
        for k in keys {
            mismatch |= matches!(k.dns, DnsState::Different(_));
            let _ = writeln!(
                out,
                "  s={} {} {}\n    DNS {}._domainkey.{}: {}\n    {}",
                k.selector,
                k.what,
                k.path,
                k.selector,
                k.domain,
                k.dns,
                match &k.active {
                    Some(why) => format!("ACTIVE: {why}"),
                    None => "not signing".to_string(),
                }
            );
        }
    }
    let _ = writeln!(
        out,
        "key-activation = \"{}\"; {}",
        state.config.key_activation.as_str(),
        if mismatch {
            "MISMATCH: a published record does not match its private key"
        } else {
            "no mismatches"
        }
    );
    Ok((out, mismatch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DnsServer;

    fn parsed(pem: &[u8]) -> (KeyKind, Arc<PublicKey>, String) {
        let k = keys::parse_private_key(pem).unwrap();
        (k.kind, PublicKey::of(&k), k.dns_record())
    }

    /// Against a real DNS server on loopback: every state, and a record published later
    /// is seen at once (no cached NXDOMAIN).
    #[tokio::test]
    async fn checker_states_against_the_dns_stub() {
        let t = tempfile::tempdir().unwrap();
        let rec = keys::tests::opendkim_genkey(t.path(), "d.test", "s1");
        let pem = std::fs::read(t.path().join("d.test/s1.private")).unwrap();
        let (kind, public, own) = parsed(&pem);
        assert_eq!(compare(&rec, kind, &public), DnsState::Matching);
        let other = keys::tests::opendkim_genkey(t.path(), "d.test", "s2");
        let dns = stack_tests::dns::DnsStub::builder()
            .txt("bad._domainkey.d.test", &other)
            .txt("rev._domainkey.d.test", "v=DKIM1; k=rsa; p=")
            .start()
            .unwrap();
        let mut cfg = Config {
            dns_servers: Some(vec![DnsServer::try_from(dns.nameserver()).unwrap()]),
            dns_timeout: crate::config::Span::secs(2),
            ..Config::default()
        };
        let c = Checker::new(&cfg).unwrap();
        assert_eq!(
            c.check("d.test", "s1", kind, &public).await,
            DnsState::Absent
        );
        assert!(matches!(
            c.check("d.test", "bad", kind, &public).await,
            DnsState::Different(w) if w.contains("another key")
        ));
        assert!(matches!(
            c.check("d.test", "rev", kind, &public).await,
            DnsState::Different(w) if w.contains("revoked")
        ));
        dns.add_txt("s1._domainkey.d.test", &own).unwrap();
        assert_eq!(
            c.check("d.test", "s1", kind, &public).await,
            DnsState::Matching
        );
        assert!(!dns.queries_for("s1._domainkey.d.test").is_empty());

        // The override file answers first, the server is not asked.
        let ov = t.path().join("zone");
        std::fs::write(&ov, format!("S9._domainkey.d.test. {own}\n")).unwrap();
        cfg.dns_override_file = Some(ov);
        let c = Checker::new(&cfg).unwrap();
        assert_eq!(
            c.check("d.test", "s9", kind, &public).await,
            DnsState::Matching
        );
        assert!(dns.queries_for("s9._domainkey.d.test").is_empty());

        // A server that never answers: an error, not "absent".
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        cfg.dns_servers = Some(vec![
            DnsServer::try_from(silent.local_addr().unwrap().to_string()).unwrap(),
        ]);
        cfg.dns_timeout = crate::config::Span::secs(1);
        let c = Checker::new(&cfg).unwrap();
        assert!(matches!(
            c.check("d.test", "s1", kind, &public).await,
            DnsState::Error(_)
        ));
    }

    fn pk(b: &[u8]) -> Arc<PublicKey> {
        Arc::new(PublicKey {
            spki: b.to_vec(),
            pkcs1: None,
        })
    }

    #[test]
    fn dns_error_keeps_a_verified_key_definite_answers_do_not() {
        let g = Gate::default();
        let k = pk(b"one");
        assert!(!g.verified("d.test", "s", &k));
        g.record("d.test", "s", &k, DnsState::Error("timeout".into()));
        assert!(!g.verified("d.test", "s", &k), "an error never verifies");
        g.record("d.test", "s", &k, DnsState::Matching);
        assert!(g.verified("d.test", "s", &k));
        g.record("d.test", "s", &k, DnsState::Error("timeout".into()));
        assert!(g.verified("d.test", "s", &k), "an error keeps it");
        assert!(!g.verified("d.test", "s", &pk(b"two")), "another file");
        g.record("d.test", "s", &k, DnsState::Absent);
        assert!(!g.verified("d.test", "s", &k));
        g.record("d.test", "s", &k, DnsState::Matching);
        g.record("d.test", "s", &k, DnsState::Different("x".into()));
        assert!(!g.verified("d.test", "s", &k));
        // A different key under the same selector starts unverified.
        g.record("d.test", "s", &k, DnsState::Matching);
        g.record("d.test", "s", &pk(b"two"), DnsState::Error("x".into()));
        assert!(!g.verified("d.test", "s", &pk(b"two")));
        let n = Gate::default();
        g.record("d.test", "s", &k, DnsState::Matching);
        n.adopt(&g);
        assert!(n.verified("d.test", "s", &k));
        n.retain(&HashSet::new());
        assert!(!n.verified("d.test", "s", &k));
    }
}
