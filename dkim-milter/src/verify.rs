//! Inbound verification: buffer the message (bounded), verify with mail-auth, build
//! `Authentication-Results`, and spot forged A-R headers that claim our authserv-id.
//!
//! mail-auth has no streaming verifier, so the message is kept whole up to
//! `verify-max-message-size`; past that we stop buffering and report `neutral`/`none`.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mail_auth::dkim::DomainKey;
use mail_auth::dns::TxtRecordParser;
use mail_auth::headers::HeaderWriter;
use mail_auth::hickory_resolver::config::{
    NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DnsCache, MessageAuthenticator, Mx,
    Negative, Parameters, RecordSet, ResolverCache, TxtRecord,
};

use crate::config::DnsServer;
use crate::sign::milter_value;

/// A bounded TTL map: the verifier's DNS cache (and, pre-filled, the test zone).
pub struct BoundedCache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
    max_entries: usize,
}

impl<K: Hash + Eq, V: Clone> BoundedCache<K, V> {
    /// An empty cache holding at most `max_entries`.
    pub fn new(max_entries: usize) -> Self {
        BoundedCache {
            map: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(1),
        }
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for BoundedCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.map.lock().ok()?;
        let (v, until) = map.get(name)?;
        (*until > Instant::now()).then(|| v.clone())
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.lock().ok()?.remove(name).map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= self.max_entries {
            let now = Instant::now();
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= self.max_entries {
                map.clear();
            }
        }
        map.insert(key, (value, valid_until));
    }
}

type Answer<T> = Result<RecordSet<T>, Negative>;

/// The five caches mail-auth wants; only TXT matters for DKIM.
pub struct Caches {
    txt: BoundedCache<Box<str>, TxtRecord>,
    mx: BoundedCache<Box<str>, Answer<Mx>>,
    ipv4: BoundedCache<Box<str>, Answer<Ipv4Addr>>,
    ipv6: BoundedCache<Box<str>, Answer<Ipv6Addr>>,
    ptr: BoundedCache<IpAddr, Answer<Box<str>>>,
}

impl Caches {
    /// Caches bounded to `max_entries` each.
    pub fn new(max_entries: usize) -> Caches {
        Caches {
            txt: BoundedCache::new(max_entries),
            mx: BoundedCache::new(16),
            ipv4: BoundedCache::new(16),
            ipv6: BoundedCache::new(16),
            ptr: BoundedCache::new(16),
        }
    }

    /// Pre-fills a DKIM key record, e.g. `("sel._domainkey.example.com", "v=DKIM1; k=rsa; p=…")`.
    pub fn insert_dkim_key(&self, name: &str, record: &str, ttl: Duration) {
        let fqdn = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
        self.txt.insert(
            fqdn.into_boxed_str(),
            TxtRecord::from(DomainKey::parse(record.as_bytes())),
            Instant::now() + ttl,
        );
    }
}

impl DnsCache for Caches {
    type Txt = BoundedCache<Box<str>, TxtRecord>;
    type Mx = BoundedCache<Box<str>, Answer<Mx>>;
    type Ipv4 = BoundedCache<Box<str>, Answer<Ipv4Addr>>;
    type Ipv6 = BoundedCache<Box<str>, Answer<Ipv6Addr>>;
    type Ptr = BoundedCache<IpAddr, Answer<Box<str>>>;
    fn txt(&self) -> Option<&Self::Txt> {
        Some(&self.txt)
    }
    fn mx(&self) -> Option<&Self::Mx> {
        Some(&self.mx)
    }
    fn ipv4(&self) -> Option<&Self::Ipv4> {
        Some(&self.ipv4)
    }
    fn ipv6(&self) -> Option<&Self::Ipv6> {
        Some(&self.ipv6)
    }
    fn ptr(&self) -> Option<&Self::Ptr> {
        Some(&self.ptr)
    }
}

/// Collects a message for verification, up to a size limit.
#[derive(Debug)]
pub struct MessageBuffer {
    buf: Vec<u8>,
    limit: usize,
    overflow: bool,
    in_body: bool,
    dkim_signatures: usize,
}

impl MessageBuffer {
    /// A buffer that gives up past `limit` bytes.
    pub fn new(limit: usize) -> MessageBuffer {
        MessageBuffer {
            buf: Vec::new(),
            limit,
            overflow: false,
            in_body: false,
            dkim_signatures: 0,
        }
    }

    fn push(&mut self, parts: &[&[u8]]) {
        if self.overflow {
            return;
        }
        let n: usize = parts.iter().map(|p| p.len()).sum();
        if self.buf.len().saturating_add(n) > self.limit {
            self.overflow = true;
            self.buf = Vec::new();
            return;
        }
        for p in parts {
            self.buf.extend_from_slice(p);
        }
    }

    /// A header field, value with leading space as under HDR_LEADSPC; LF folds become CRLF.
    pub fn header(&mut self, name: &str, value: &[u8]) {
        if name.eq_ignore_ascii_case("DKIM-Signature") {
            self.dkim_signatures += 1;
        }
        let mut v = Vec::with_capacity(value.len() + 8);
        crate::sign::push_crlf_normalized(&mut v, value);
        self.push(&[name.as_bytes(), b":", &v, b"\r\n"]);
    }

    /// A body chunk (CRLF).
    pub fn body(&mut self, chunk: &[u8]) {
        if !self.in_body {
            self.in_body = true;
            self.push(&[b"\r\n"]);
        }
        self.push(&[chunk]);
    }

    /// True once the limit was passed.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Number of DKIM-Signature fields seen.
    pub fn signature_count(&self) -> usize {
        self.dkim_signatures
    }

    /// The message, `None` if it overflowed.
    pub fn finish(mut self) -> Option<Vec<u8>> {
        if !self.in_body {
            self.body(b"");
        }
        (!self.overflow).then_some(self.buf)
    }
}

/// One signature's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigResult {
    /// d= (empty if the signature could not be parsed).
    pub domain: String,
    /// s=
    pub selector: String,
    /// `pass`, `fail`, `neutral`, `permerror`, `temperror`, `none`.
    pub result: &'static str,
    /// Error text for non-pass.
    pub detail: Option<String>,
}

/// What verification produced.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Per signature.
    pub results: Vec<SigResult>,
    /// A-R value for INSHEADER/ADDHEADER with LEADSPC (leading space, `\n\t` folds).
    pub auth_results: String,
}

impl VerifyReport {
    /// `d=example.com s=sel pass; …` for the one-line log.
    pub fn summary(&self) -> String {
        if self.results.is_empty() {
            return "no signatures".into();
        }
        self.results
            .iter()
            .map(|r| {
                format!(
                    "d={} s={} {}{}",
                    r.domain,
                    r.selector,
                    r.result,
                    r.detail
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Verifies messages against DNS (through the cache).
pub struct Verifier {
    auth: MessageAuthenticator,
    caches: Caches,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("DNS resolver setup failed: {0}")]
pub struct ResolverError(String);

/// The hickory configuration for querying exactly `servers` (config `dns-servers`): UDP,
/// and TCP when an answer is truncated, each `timeout` per server; no search domains, no
/// `/etc/hosts`, nothing from `/etc/resolv.conf`.
pub fn resolver_config(servers: &[DnsServer], timeout: Duration) -> (ResolverConfig, ResolverOpts) {
    let name_servers = servers
        .iter()
        .map(|s| {
            let mut ns = NameServerConfig::udp_and_tcp(s.addr().ip());
            for c in &mut ns.connections {
                c.port = s.addr().port();
            }
            ns
        })
        .collect();
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    opts.use_hosts_file = ResolveHosts::Never;
    (ResolverConfig::from_name_servers(name_servers), opts)
}

/// The authenticator whose resolver queries `servers` (see [`resolver_config`]), or the
/// system resolver (`/etc/resolv.conf`, its own timeout; `timeout` unused) for `None`.
pub fn authenticator(
    servers: Option<&[DnsServer]>,
    timeout: Duration,
) -> Result<MessageAuthenticator, ResolverError> {
    let auth = match servers {
        None => MessageAuthenticator::new_system_conf(),
        Some(servers) => {
            let (config, opts) = resolver_config(servers, timeout);
            MessageAuthenticator::new(config, opts)
        }
    };
    auth.map_err(|e| ResolverError(e.to_string()))
}

impl Verifier {
    /// A verifier using the system resolver (`/etc/resolv.conf`).
    pub fn system() -> Result<Verifier, ResolverError> {
        let auth = authenticator(None, Duration::ZERO)?;
        Ok(Verifier::with_authenticator(auth, Caches::new(4096)))
    }

    /// A verifier querying exactly `servers` (config `dns-servers`).
    pub fn with_servers(
        servers: &[DnsServer],
        timeout: Duration,
    ) -> Result<Verifier, ResolverError> {
        let auth = authenticator(Some(servers), timeout)?;
        Ok(Verifier::with_authenticator(auth, Caches::new(4096)))
    }

    /// A verifier with given parts (tests pre-fill `caches`).
    pub fn with_authenticator(auth: MessageAuthenticator, caches: Caches) -> Verifier {
        Verifier { auth, caches }
    }

    /// The DNS caches (to pre-fill).
    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    /// A-R for a message we did not verify (too big): `neutral` if it was signed.
    pub fn report_skipped(&self, signatures: usize, why: &str, authserv_id: &str) -> VerifyReport {
        let result = if signatures > 0 { "neutral" } else { "none" };
        VerifyReport {
            results: Vec::new(),
            auth_results: format!(" {};\n\tdkim={result} ({why})", authserv_id),
        }
    }

    /// Verifies a whole message (CRLF).
    pub async fn verify(&self, raw: &[u8], authserv_id: &str) -> VerifyReport {
        let Some(msg) = AuthenticatedMessage::parse(raw) else {
            return VerifyReport {
                results: Vec::new(),
                auth_results: format!(
                    " {};\n\tdkim=permerror (message could not be parsed)",
                    authserv_id
                ),
            };
        };
        let outs = self
            .auth
            .verify_dkim(Parameters::new(&msg).with_cache(&self.caches))
            .await;
        let results: Vec<SigResult> = outs
            .iter()
            .map(|o| {
                let (result, detail) = match o.result() {
                    DkimResult::Pass => ("pass", None),
                    DkimResult::Neutral(e) => ("neutral", Some(e.to_string())),
                    DkimResult::Fail(e) => ("fail", Some(e.to_string())),
                    DkimResult::PermError(e) => ("permerror", Some(e.to_string())),
                    DkimResult::TempError(e) => ("temperror", Some(e.to_string())),
                    DkimResult::None => ("none", None),
                };
                SigResult {
                    domain: o.signature().map(|s| s.d.clone()).unwrap_or_default(),
                    selector: o.signature().map(|s| s.s.clone()).unwrap_or_default(),
                    result,
                    detail,
                }
            })
            .collect();
        let auth_results = if outs.is_empty() {
            format!(" {};\n\tdkim=none", authserv_id)
        } else {
            milter_value(
                &AuthenticationResults::new(authserv_id)
                    .with_dkim_results(&outs, msg.first_from_address())
                    .to_header(),
            )
        };
        VerifyReport {
            results,
            auth_results,
        }
    }
}

/// The authserv-id of an Authentication-Results value (first token, comments skipped).
pub fn ar_authserv_id(value: &str) -> Option<&str> {
    let mut s = value.trim_start();
    // Skip leading comments.
    while let Some(rest) = s.strip_prefix('(') {
        let end = rest.find(')')?;
        s = rest.get(end + 1..)?.trim_start();
    }
    let end = s
        .find(|c: char| c == ';' || c == '(' || c.is_whitespace())
        .unwrap_or(s.len());
    let id = s.get(..end)?;
    (!id.is_empty()).then_some(id)
}

/// Most forged Authentication-Results one message may carry; a message with more is
/// refused rather than passed with some of them left in.
pub const MAX_FORGED_AR: usize = 10_000;

/// Tracks incoming Authentication-Results fields and which claim our authserv-id, as
/// the headers stream past: a per-name occurrence counter plus the (bounded) list of
/// forged occurrences, never the headers themselves, so it works however large the
/// header block is. Indexes are 1-based per header name, as SMFIR_CHGHEADER wants.
#[derive(Debug, Default, Clone)]
pub struct ForgedArTracker {
    seen: u32,
    forged: Vec<u32>,
    overflow: bool,
}

impl ForgedArTracker {
    /// Looks at one incoming header field; true if it is an A-R claiming `authserv_id`.
    pub fn observe(&mut self, name: &str, value: &str, authserv_id: &str) -> bool {
        if !name.eq_ignore_ascii_case("Authentication-Results") {
            return false;
        }
        self.seen = self.seen.saturating_add(1);
        if !ar_authserv_id(value).is_some_and(|id| id.eq_ignore_ascii_case(authserv_id)) {
            return false;
        }
        if self.forged.len() < MAX_FORGED_AR {
            self.forged.push(self.seen);
        } else {
            self.overflow = true;
        }
        true
    }

    /// True if more than [`MAX_FORGED_AR`] were seen (not all could be removed).
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// CHGHEADER indexes to delete, highest first (so earlier deletes don't shift later ones).
    pub fn forged_indexes(&self) -> Vec<u32> {
        let mut v = self.forged.clone();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authserv_id_parsing_and_forgery() {
        assert_eq!(
            ar_authserv_id(" mx.example.com; dkim=pass"),
            Some("mx.example.com")
        );
        assert_eq!(
            ar_authserv_id(" (c) mx.example.com 1; none"),
            Some("mx.example.com")
        );
        assert_eq!(ar_authserv_id("mx.example.com;"), Some("mx.example.com"));
        assert_eq!(ar_authserv_id("  "), None);
        let mut t = ForgedArTracker::default();
        t.observe(
            "Authentication-Results",
            " other.example; dkim=pass",
            "mx.example.com",
        );
        t.observe(
            "authentication-results",
            " MX.example.com; dkim=pass",
            "mx.example.com",
        );
        t.observe("Subject", " mx.example.com;", "mx.example.com");
        t.observe(
            "Authentication-Results",
            " mx.example.com;\n\tspf=pass",
            "mx.example.com",
        );
        assert!(!t.observe(
            "Authentication-Results",
            " mx.example.com.evil; x",
            "mx.example.com",
        ));
        assert_eq!(t.forged_indexes(), vec![3, 2]);
        assert!(!t.overflowed());
    }

    #[test]
    fn forged_tracker_is_bounded() {
        let mut t = ForgedArTracker::default();
        for i in 0..MAX_FORGED_AR + 5 {
            assert!(t.observe("Authentication-Results", " mx.test; x", "mx.test"));
            if i % 2 == 0 {
                t.observe("Authentication-Results", " other.test; x", "mx.test");
            }
        }
        assert!(t.overflowed());
        let idx = t.forged_indexes();
        assert_eq!(idx.len(), MAX_FORGED_AR);
        // Occurrence numbers count the genuine A-R fields in between.
        assert_eq!(idx.last(), Some(&1));
        assert_eq!(idx[idx.len() - 2], 3);
    }

    #[test]
    fn buffer_limit() {
        let mut b = MessageBuffer::new(64);
        b.header("From", b" a@example.com");
        b.header("DKIM-Signature", b" v=1;\n\tb=x");
        assert_eq!(b.signature_count(), 1);
        b.body(b"short\r\n");
        assert!(!b.overflowed());
        let mut b2 = MessageBuffer::new(64);
        b2.header("From", b" a@example.com");
        b2.body(&[b'x'; 100]);
        assert!(b2.overflowed());
        assert!(b2.finish().is_none());
        let raw = b.finish().unwrap();
        assert_eq!(
            raw,
            b"From: a@example.com\r\nDKIM-Signature: v=1;\r\n\tb=x\r\n\r\nshort\r\n".to_vec()
        );
    }

    fn servers(list: &[&str]) -> Vec<DnsServer> {
        list.iter()
            .map(|s| DnsServer::try_from(s.to_string()).unwrap())
            .collect()
    }

    #[test]
    fn resolver_config_uses_only_the_listed_servers() {
        let (config, opts) = resolver_config(
            &servers(&["127.0.0.1:5353", "[::1]:5300", "192.0.2.53"]),
            Duration::from_millis(1500),
        );
        assert!(config.domain().is_none() && config.search().is_empty());
        let got: Vec<(String, Vec<u16>)> = config
            .name_servers()
            .iter()
            .map(|n| {
                (
                    n.ip.to_string(),
                    n.connections.iter().map(|c| c.port).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1".to_string(), vec![5353, 5353]),
                ("::1".to_string(), vec![5300, 5300]),
                ("192.0.2.53".to_string(), vec![53, 53]),
            ]
        );
        assert_eq!(opts.timeout, Duration::from_millis(1500));
        assert_eq!(opts.use_hosts_file, ResolveHosts::Never);
    }

    /// A signature whose key is in no cache is looked up on the configured server (a stub
    /// on loopback without the record: the key is missing, so no pass).
    #[tokio::test]
    async fn key_lookups_go_to_dns_servers() {
        let dns = stack_tests::dns::DnsStub::builder().start().unwrap();
        let v =
            Verifier::with_servers(&servers(&[&dns.nameserver()]), Duration::from_secs(5)).unwrap();
        let raw = b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=stub.test; s=sel;\r\n\
                    \th=from; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n\
                    From: a@stub.test\r\n\r\n";
        let rep = v.verify(raw, "mx.test").await;
        assert_eq!(rep.results.len(), 1, "{rep:?}");
        assert_ne!(rep.results[0].result, "pass", "{rep:?}");
        let q = dns.queries_for("sel._domainkey.stub.test");
        assert!(
            q.iter().any(|q| q.type_name() == "TXT"),
            "{:?}",
            dns.queries()
        );
    }

    #[test]
    fn bounded_cache_never_exceeds_limit() {
        let c: BoundedCache<u32, u32> = BoundedCache::new(3);
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..10 {
            c.insert(i, i, later);
            assert!(c.map.lock().unwrap().len() <= 3);
        }
        assert_eq!(c.get(&9), Some(9));
        c.insert(100, 1, Instant::now() - Duration::from_secs(1));
        assert_eq!(c.get(&100), None);
    }
}
