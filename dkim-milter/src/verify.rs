//! Inbound verification in bounded memory: keep the header block, hash the body as it
//! streams past (one hash per distinct `c=`/`a=`/`l=`), then check each signature with
//! mail-auth's parser, key records and A-R writer; also spot forged A-R headers that
//! claim our authserv-id.
//!
//! mail-auth 0.15.1 verifies only whole messages (`AuthenticatedMessage::parse` computes
//! body hashes from the raw body, and its verifier, key bytes and incremental body hasher
//! are crate-private), so the steps after the body hash (AUID rule, signature check with
//! aws-lc) are done here, in mail-auth's order and with its error values.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_auth::crypto::{Algorithm, CryptoError};
use mail_auth::dkim::{DkimError, DomainKey, Signature, VerifySignature};
use mail_auth::dns::ToFqdn;
use mail_auth::dns::TxtRecordParser;
use mail_auth::headers::HeaderWriter;
use mail_auth::hickory_resolver::config::{
    NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::hickory_resolver::proto::rr::{Name, RData};
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DnsCache, Error,
    MessageAuthenticator, Mx, Negative, RecordSet, ResolverCache, TxtRecord,
};

use crate::bodyhash::{BodyDigest, BodyHashKey, BodyHasher};
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
    keys: BoundedCache<Box<str>, Arc<RawKey>>,
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
            keys: BoundedCache::new(max_entries),
            mx: BoundedCache::new(16),
            ipv4: BoundedCache::new(16),
            ipv6: BoundedCache::new(16),
            ptr: BoundedCache::new(16),
        }
    }

    /// Pre-fills a DKIM key record, e.g. `("sel._domainkey.example.com", "v=DKIM1; k=rsa; p=…")`.
    pub fn insert_dkim_key(&self, name: &str, record: &str, ttl: Duration) {
        let fqdn = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
        self.insert_records(&fqdn, &[record.as_bytes().to_vec()], Instant::now() + ttl);
    }

    /// Caches one DNS answer at `fqdn`: mail-auth's parse of it (the first record that
    /// parses, else the error) and that record's key bytes.
    fn insert_records(&self, fqdn: &str, records: &[Vec<u8>], until: Instant) {
        let parsed = DomainKey::parse_records(records);
        if parsed.is_ok()
            && let Some(raw) = records
                .iter()
                .find(|r| DomainKey::parse(r).is_ok())
                .and_then(|r| RawKey::parse(r))
        {
            self.keys.insert(fqdn.into(), Arc::new(raw), until);
        }
        self.txt.insert(fqdn.into(), TxtRecord::from(parsed), until);
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

/// RSA keys shorter than this fail verification unless configured (`minimum-key-bits`),
/// as OpenDKIM's `MinimumKeyBits` default.
pub const DEFAULT_MINIMUM_KEY_BITS: usize = 1024;

/// Most DKIM-Signature fields verified per message unless configured (`max-signatures`),
/// as Rspamd's and glts dkim-milter's default.
pub const DEFAULT_MAX_SIGNATURES: usize = 10;

/// One message's verification in progress: the header block (bounded by the caller,
/// see `transaction::MAX_HEADER_BYTES`) and one running body hash per distinct
/// (`c=`, hash, `l=`) of the first `max_signatures` signatures. The body itself is never
/// kept, so memory does not grow with the message.
#[derive(Debug)]
pub struct MessageVerifier {
    header_block: Vec<u8>,
    hashers: Vec<BodyHasher>,
    max_signatures: usize,
}

/// A message whose body is hashed, ready for [`Verifier::verify_streamed`].
#[derive(Debug)]
pub struct HashedMessage {
    header_block: Vec<u8>,
    body_hashes: Vec<(BodyHashKey, Vec<u8>)>,
    max_signatures: usize,
}

impl MessageVerifier {
    /// Starts from the header fields (values as under HDR_LEADSPC; LF folds become CRLF).
    pub fn new<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        max_signatures: usize,
    ) -> MessageVerifier {
        let mut block = Vec::new();
        for (name, value) in headers {
            block.extend_from_slice(name.as_bytes());
            block.push(b':');
            crate::sign::push_crlf_normalized(&mut block, value);
            block.extend_from_slice(b"\r\n");
        }
        block.extend_from_slice(b"\r\n");
        Self::from_header_block(block, max_signatures)
    }

    /// Starts from a raw header block (with its empty line).
    fn from_header_block(header_block: Vec<u8>, max_signatures: usize) -> MessageVerifier {
        let mut hashers: Vec<BodyHasher> = Vec::new();
        if let Some(msg) = AuthenticatedMessage::parse(&header_block) {
            for h in msg.dkim_signatures().iter().take(max_signatures) {
                let key = (h.header.cb, BodyDigest::from(h.header.a), h.header.l);
                if !hashers.iter().any(|b| b.key() == key) {
                    hashers.push(BodyHasher::new(key));
                }
            }
        }
        MessageVerifier {
            header_block,
            hashers,
            max_signatures,
        }
    }

    /// A body chunk (CRLF), hashed at once and dropped.
    pub fn body(&mut self, chunk: &[u8]) {
        for h in &mut self.hashers {
            h.write(chunk);
        }
    }

    /// Ends the body.
    pub fn finish(self) -> HashedMessage {
        HashedMessage {
            header_block: self.header_block,
            body_hashes: self
                .hashers
                .into_iter()
                .map(|h| (h.key(), h.finish()))
                .collect(),
            max_signatures: self.max_signatures,
        }
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
    minimum_key_bits: usize,
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
        Verifier {
            auth,
            caches,
            minimum_key_bits: DEFAULT_MINIMUM_KEY_BITS,
        }
    }

    /// The DNS caches (to pre-fill).
    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    /// RSA keys shorter than `bits` fail verification (config `minimum-key-bits`).
    pub fn with_minimum_key_bits(mut self, bits: usize) -> Verifier {
        self.minimum_key_bits = bits;
        self
    }

    /// Verifies a whole message (CRLF): the same streaming path the milter uses.
    pub async fn verify(&self, raw: &[u8], authserv_id: &str) -> VerifyReport {
        let Some(msg) = AuthenticatedMessage::parse(raw) else {
            return unparsable(authserv_id);
        };
        let mut mv =
            MessageVerifier::from_header_block(msg.raw_headers().to_vec(), DEFAULT_MAX_SIGNATURES);
        mv.body(msg.raw_body());
        self.verify_streamed(mv.finish(), authserv_id).await
    }

    /// Verifies a message whose body was hashed as it streamed past. Results and A-R
    /// text are those mail-auth's `verify_dkim` gave for the whole message (same
    /// parser, same error values, same A-R writer), except that signatures past
    /// `max-signatures` are reported as not evaluated and ATPS (RFC 6541) is not checked.
    pub async fn verify_streamed(&self, m: HashedMessage, authserv_id: &str) -> VerifyReport {
        let Some(msg) = AuthenticatedMessage::parse(&m.header_block) else {
            return unparsable(authserv_id);
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut outs: Vec<DkimOutput<'_>> = msg
            .errors()
            .iter()
            .filter(|e| matches!(e.header, Error::Dkim(_)))
            .map(|e| DkimOutput::from(DkimResult::Neutral(e.header.clone())))
            .collect();
        let mut skipped: Vec<&Signature> = Vec::new();
        for (idx, h) in msg.dkim_signatures().iter().enumerate() {
            let sig = &h.header;
            if idx >= m.max_signatures {
                skipped.push(sig);
                continue;
            }
            let result = self.check(&msg, idx, sig, &m.body_hashes, now).await;
            outs.push(DkimOutput::from(result).with_signature(sig));
        }
        let mut results: Vec<SigResult> = outs
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
        let mut auth_results = if outs.is_empty() {
            format!(" {};\n\tdkim=none", authserv_id)
        } else {
            milter_value(
                &AuthenticationResults::new(authserv_id)
                    .with_dkim_results(&outs, msg.first_from_address())
                    .to_header(),
            )
        };
        if !skipped.is_empty() {
            let why = format!("not evaluated: over max-signatures {}", m.max_signatures);
            tracing::info!(
                "{} DKIM signature(s) {why}: {}",
                skipped.len(),
                skipped
                    .iter()
                    .map(|s| format!("d={} s={}", s.d, s.s))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for sig in skipped {
                // RFC 8601 `policy`: a local rule, not the signature, decided.
                auth_results.push_str(&format!(
                    ";\n\tdkim=policy ({why}) header.d={} header.s={}",
                    ar_token(&sig.d),
                    ar_token(&sig.s)
                ));
                results.push(SigResult {
                    domain: sig.d.clone(),
                    selector: sig.s.clone(),
                    result: "policy",
                    detail: Some(why.clone()),
                });
            }
        }
        VerifyReport {
            results,
            auth_results,
        }
    }

    /// One signature, in mail-auth's order: expiry, body hash, key, AUID, header hash.
    async fn check(
        &self,
        msg: &AuthenticatedMessage<'_>,
        idx: usize,
        sig: &Signature,
        body_hashes: &[(BodyHashKey, Vec<u8>)],
        now: u64,
    ) -> DkimResult {
        if !(sig.x == 0 || (sig.x > sig.t && sig.x > now)) {
            return DkimResult::Neutral(Error::Dkim(DkimError::SignatureExpired));
        }
        let key = (sig.cb, BodyDigest::from(sig.a), sig.l);
        let bh = body_hashes.iter().find(|(k, _)| *k == key).map(|(_, h)| h);
        if bh != Some(&sig.bh) {
            return DkimResult::Neutral(Error::Dkim(DkimError::BodyHashMismatch));
        }
        let (record, raw) = match self.key(&sig.domain_key().to_fqdn()).await {
            Ok(k) => k,
            Err(e) => return DkimResult::from(e),
        };
        if !auid_matches(sig, &record) {
            return DkimResult::Fail(Error::Dkim(DkimError::AuidMismatch));
        }
        // The header hash input of this one signature: mail-auth builds it for the first
        // signature left, so leave only this one.
        let mut only = msg.clone();
        let mut n = 0;
        only.retain_dkim_signatures(|_| {
            n += 1;
            if n == idx + 1 {
                Ok(())
            } else {
                Err(DkimError::UnsupportedVersion)
            }
        });
        let Some(data) = only.canonicalized_dkim_headers() else {
            return DkimResult::Fail(Error::Crypto(CryptoError::FailedVerification));
        };
        match raw.verify(sig.a, &data, &sig.b, self.minimum_key_bits) {
            Ok(()) => DkimResult::Pass,
            Err(e) => DkimResult::Fail(e),
        }
    }

    /// The key record at `name` (`sel._domainkey.dom.`): mail-auth's parsed record (its
    /// flags and errors, cached in `caches.txt`) and the key bytes, which mail-auth keeps
    /// private (cached in `caches.keys`). Both come from one DNS answer.
    async fn key(&self, name: &str) -> Result<(Arc<DomainKey>, Arc<RawKey>), Error> {
        if self.caches.txt.get(name).is_none() || self.caches.keys.get(name).is_none() {
            // On a DNS error, mail-auth's own lookup below asks again and reports it
            // exactly as before (and caches the negative answer).
            if let Ok(lookup) = self.resolver_txt(name).await {
                let (records, until) = lookup;
                self.caches.insert_records(name, &records, until);
            }
        }
        let record = self
            .auth
            .txt_lookup::<DomainKey>(name, Some(&self.caches.txt))
            .await?;
        let raw = self
            .caches
            .keys
            .get(name)
            .ok_or(Error::Dns(mail_auth::DnsError::InvalidRecordType))?;
        Ok((record, raw))
    }

    /// The TXT records at `name`, each record's strings joined, as mail-auth joins them.
    async fn resolver_txt(&self, name: &str) -> Result<(Vec<Vec<u8>>, Instant), ()> {
        let name = Name::from_str_relaxed(name).map_err(|_| ())?;
        let lookup = self
            .auth
            .resolver()
            .txt_lookup(name)
            .await
            .map_err(|_| ())?;
        let until = lookup.valid_until();
        let records = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .flat_map(|c| c.iter().copied())
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        Ok((records, until))
    }
}

/// A-R for a message whose header block mail-auth cannot parse.
fn unparsable(authserv_id: &str) -> VerifyReport {
    VerifyReport {
        results: Vec::new(),
        auth_results: format!(
            " {};\n\tdkim=permerror (message could not be parsed)",
            authserv_id
        ),
    }
}

/// `value` as an RFC 8601 pvalue: as is when a plain token, else quoted.
fn ar_token(value: &str) -> String {
    if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        value.to_string()
    } else {
        format!("\"{}\"", value.replace(['\\', '"'], ""))
    }
}

/// RFC 6376 §3.5 `i=`: its domain is `d=` or, unless the key says `t=s`, a subdomain.
/// mail-auth's check is crate-private; this is the same rule.
fn auid_matches(sig: &Signature, record: &DomainKey) -> bool {
    if sig.i.is_empty() {
        return true;
    }
    let auid = sig.i.rsplit_once('@').map_or("", |(_, d)| d).as_bytes();
    let d = sig.d.as_bytes();
    match auid
        .len()
        .checked_sub(d.len())
        .and_then(|at| auid.split_at_checked(at))
    {
        Some((parent, suffix)) if suffix.eq_ignore_ascii_case(d) => {
            parent.is_empty() || (!record.requires_strict_identity() && parent.ends_with(b"."))
        }
        _ => false,
    }
}

/// A key record's key type and `p=` bytes. mail-auth parses the record (and is the
/// judge of whether it is valid) but keeps the key private, so the two tags are read
/// here again from the same record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawKey {
    ed25519: bool,
    p: Vec<u8>,
}

impl RawKey {
    /// `k=` and `p=` of a DKIM key record (`None` without a decodable `p=`).
    pub fn parse(record: &[u8]) -> Option<RawKey> {
        use base64::Engine;
        let text = std::str::from_utf8(record).ok()?;
        let mut ed25519 = false;
        let mut p = None;
        for tag in text.split(';') {
            let Some((k, v)) = tag.split_once('=') else {
                continue;
            };
            let v: String = v.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            match k.trim() {
                "k" => ed25519 = v.eq_ignore_ascii_case("ed25519"),
                "p" => p = base64::engine::general_purpose::STANDARD.decode(v).ok(),
                _ => {}
            }
        }
        Some(RawKey { ed25519, p: p? })
    }

    /// Checks `signature` over the header hash input `data` with this key, as mail-auth's
    /// aws-lc backend does (same algorithms, same errors), refusing RSA keys shorter
    /// than `minimum_bits` as OpenDKIM's `MinimumKeyBits` does.
    fn verify(
        &self,
        alg: Algorithm,
        data: &[u8],
        signature: &[u8],
        minimum_bits: usize,
    ) -> Result<(), Error> {
        use aws_lc_rs::signature::{
            ED25519, RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
            RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, UnparsedPublicKey,
        };
        use rsa::pkcs1::{DecodeRsaPublicKey, EncodeRsaPublicKey};
        use rsa::pkcs8::DecodePublicKey;
        use rsa::traits::PublicKeyParts;
        let failed = Error::Crypto(CryptoError::FailedVerification);
        match (self.ed25519, alg) {
            (false, Algorithm::RsaSha256 | Algorithm::RsaSha1) => {
                let key = rsa::PublicKey::from_public_key_der(&self.p)
                    .or_else(|_| rsa::PublicKey::from_pkcs1_der(&self.p))
                    .map_err(|_| failed.clone())?;
                let bits = key.size() * 8;
                if bits < minimum_bits {
                    return Err(Error::Crypto(CryptoError::Library(format!(
                        "RSA key of {bits} bits is shorter than minimum-key-bits {minimum_bits}"
                    ))));
                }
                let der = key.to_pkcs1_der().map_err(|_| failed.clone())?;
                let params = if alg == Algorithm::RsaSha1 {
                    &RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY
                } else {
                    &RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY
                };
                UnparsedPublicKey::new(params, der.as_bytes())
                    .verify(data, signature)
                    .map_err(|_| failed)
            }
            (true, Algorithm::Ed25519Sha256) => {
                // RFC 8463: Ed25519 signs the SHA-256 of the header hash input.
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
                UnparsedPublicKey::new(&ED25519, &self.p)
                    .verify(digest.as_ref(), signature)
                    .map_err(|e| Error::Crypto(CryptoError::Library(e.to_string())))
            }
            _ => Err(Error::Crypto(CryptoError::IncompatibleAlgorithms)),
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
    fn header_block_as_delivered_and_one_hasher_per_kind() {
        let sig = |c: &str, a: &str| {
            format!(" v=1; a={a}; c={c}; d=example.com; s=s;\n\th=from; bh=AAAA; b=AAAA")
        };
        let (s1, s2, s3) = (
            sig("relaxed/relaxed", "rsa-sha256"),
            sig("simple/relaxed", "ed25519-sha256"),
            sig("relaxed/simple", "rsa-sha256"),
        );
        let headers: Vec<(&str, &[u8])> = vec![
            ("DKIM-Signature", s1.as_bytes()),
            ("DKIM-Signature", s2.as_bytes()),
            ("DKIM-Signature", s3.as_bytes()),
            ("From", b" a@example.com"),
        ];
        let mv = MessageVerifier::new(headers.clone(), 10);
        assert!(mv.header_block.ends_with(b"From: a@example.com\r\n\r\n"));
        assert!(mv.header_block.starts_with(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s;\r\n\th=from;"));
        // relaxed+sha256 twice (one hasher), simple+sha256 once.
        assert_eq!(mv.hashers.len(), 2);
        // Only the first max-signatures get a hasher.
        assert_eq!(MessageVerifier::new(headers, 1).hashers.len(), 1);
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
