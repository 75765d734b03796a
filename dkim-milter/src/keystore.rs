//! The set of signing keys, per domain, built once per (re)load.
//!
//! Sources: the opendkim-genkey directory layout `{keys-dir}/{domain}/{selector}.private`,
//! or OpenDKIM KeyTable + SigningTable. A broken key is recorded as that domain's
//! error (or that KeyTable entry's), a warning for the operator, and the other domains
//! keep signing; only an unreadable keys dir or a broken table fails the whole load.
//! A domain directory without any key is a warning too; by default its mail passes
//! unsigned (`empty-domain-dir`).
//!
//! Selector rule for the directory layout, per domain:
//! 1. `[domain."d"] selectors = [...]` in the config: exactly those (a missing or broken
//!    one is the domain's error);
//! 2. otherwise every `.private` file is a candidate, grouped by algorithm, and per
//!    algorithm the `selector-rule` picks one: `highest-name` (default; byte order,
//!    so `2025-06` beats `2024-11`) or `newest` (mtime, ties by name). If the picked
//!    key is broken the domain is in error; we never silently fall back to another one;
//! 3. with `dual-sign` (default) the RSA and the Ed25519 pick both sign; otherwise RSA
//!    only (Ed25519 only if the domain has no RSA key).
//!
//! With `key-activation = "dns"` (default) or `"dns-strict"`, rule 2 changes (safe key
//! rotation, see [`crate::activation`]): every candidate is loaded, and per algorithm the
//! key that signs is the *newest* (mtime, ties by name) whose public key DNS publishes.
//! Newest, not the selector rule's order: the file the operator dropped in last is the
//! rotation target, while name order lets a stray `old-default.private` outrank
//! `default`. Until one is verified, `dns` signs with the rule's pick (so a fresh
//! install without DNS still signs, as OpenDKIM would) and `dns-strict` does not sign.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mail_auth::crypto::{Algorithm, SigningKey};
use mail_auth::headers::Writable;

use crate::activation::Gate;
use crate::config::{Config, EmptyDomainDir, KeyActivation, SelectorRule};
use crate::keys::{self, AnyKey, KeyKind, ParsedKey};
use crate::tables::{KeySource, KeyTable, SigningTable};

/// A key shared between the store and in-flight messages.
#[derive(Clone)]
pub struct SharedKey(pub Arc<AnyKey>);

impl SigningKey for SharedKey {
    type Hasher = mail_auth::crypto::Sha256;
    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }
    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

/// A key's public half, to compare with a DNS record.
#[derive(Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// SubjectPublicKeyInfo DER (RSA) or the raw 32 bytes (Ed25519).
    pub spki: Vec<u8>,
    /// RSA only: PKCS#1 RSAPublicKey DER, which some records publish instead.
    pub pkcs1: Option<Vec<u8>>,
}

impl PublicKey {
    /// True if a record's `p=` bytes are this key.
    pub fn matches(&self, p: &[u8]) -> bool {
        p == self.spki.as_slice() || self.pkcs1.as_deref() == Some(p)
    }

    /// The public half of a parsed key.
    pub fn of(k: &ParsedKey) -> Arc<PublicKey> {
        Arc::new(PublicKey {
            spki: k.public_key.clone(),
            pkcs1: k.public_key_pkcs1.clone(),
        })
    }
}

/// A key ready to sign for one domain.
#[derive(Clone)]
pub struct SignKey {
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// Algorithm.
    pub kind: KeyKind,
    /// Key size.
    pub bits: usize,
    /// `i=`, when a SigningTable gives one.
    pub identity: Option<String>,
    /// Where the key came from.
    pub path: PathBuf,
    /// The public key (for DNS checks).
    pub public: Arc<PublicKey>,
    /// The key.
    pub key: SharedKey,
}

impl std::fmt::Debug for SignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "d={} s={} a={} ({} bits)",
            self.domain,
            self.selector,
            self.kind.algorithm_name(),
            self.bits
        )
    }
}

/// Result of asking the store for a sender's keys.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Sign with these (one or two signatures).
    Sign(Vec<SignKey>),
    /// The sender's domain has keys, but they are broken.
    KeyError {
        /// The domain (or KeyTable name) at fault.
        domain: String,
        /// Why.
        error: String,
    },
    /// The sender's domain has a directory but no key in it (`empty-domain-dir =
    /// "unsigned"`): not signed, like [`Lookup::NoKey`], with the reason logged.
    EmptyDir {
        /// The domain.
        domain: String,
        /// Which directory.
        detail: String,
    },
    /// We do not sign for this sender.
    NoKey,
}

/// How much a load-time finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// A key loaded as expected.
    Info,
    /// A key loaded, or a file was skipped, but something needs the operator's eye
    /// (permissions, a short RSA key, a `.txt` that does not match, a bad file name).
    Warning,
    /// The domain (or KeyTable key) named in the text does not sign. Still a warning
    /// for `--check-config` (only `--strict` fails on it): every other domain signs.
    NotSigning,
}

/// A load-time finding, for logs and `--check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// How much it matters.
    pub level: Level,
    /// Human text, starting with the domain or file.
    pub text: String,
}

impl Note {
    /// True for anything but a plain "loaded" line.
    pub fn is_warning(&self) -> bool {
        self.level != Level::Info
    }
}

/// One domain of the directory layout.
#[derive(Debug, Clone)]
enum DomainKeys {
    /// Ready to sign.
    Keys(Vec<SignKey>),
    /// Candidates per algorithm; which signs depends on DNS (`key-activation = "dns*"`).
    Gated(Vec<KindCandidates>),
    /// Broken (or empty, with `empty-domain-dir = "key-error"`): on-key-error applies.
    Broken(String),
    /// No key in the directory: mail passes unsigned.
    Empty(String),
}

/// One algorithm's candidates of a gated domain.
#[derive(Debug, Clone)]
struct KindCandidates {
    kind: KeyKind,
    /// Loaded keys, in selector-rule order (the first is the rule's pick).
    cands: Vec<(SignKey, std::time::SystemTime)>,
    /// The rule's pick did not load: the domain's error while nothing is verified.
    pick_error: Option<String>,
}

/// A key the DNS checker looks at.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// Algorithm.
    pub kind: KeyKind,
    /// Size.
    pub bits: usize,
    /// The file.
    pub path: PathBuf,
    /// Public half.
    pub public: Arc<PublicKey>,
}

impl Candidate {
    fn of(k: &SignKey) -> Candidate {
        Candidate {
            domain: k.domain.clone(),
            selector: k.selector.clone(),
            kind: k.kind,
            bits: k.bits,
            path: k.path.clone(),
            public: k.public.clone(),
        }
    }
}

/// Why [`load_domain_dir`] found nothing to sign with.
enum DirProblem {
    Empty(String),
    Broken(String),
}

/// A problem that makes the whole store unusable (the old one keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The keys directory cannot be listed.
    #[error("keys dir {path}: {error}")]
    KeysDir {
        /// The dir.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// A KeyTable/SigningTable problem.
    #[error(transparent)]
    Table(#[from] crate::tables::TableError),
}

enum Source {
    Dir(BTreeMap<String, DomainKeys>),
    Tables {
        keys: BTreeMap<String, Result<SignKey, String>>,
        table: SigningTable,
        key_table: KeyTable,
        multiple: bool,
    },
}

/// All signing keys.
pub struct KeyStore {
    source: Source,
    gate: Arc<Gate>,
    activation: KeyActivation,
    dual_sign: bool,
    sign_subdomains: bool,
    permissions: crate::config::KeyPermissions,
    notes: Vec<Note>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("notes", &self.notes)
            .finish_non_exhaustive()
    }
}

fn describe(key: &ParsedKey) -> String {
    format!("{}-{}", key.kind.k(), key.bits)
}

/// Loads one key file with all checks; the error text names the file.
fn load_checked(
    path: &Path,
    domain: &str,
    selector: &str,
    cfg: &Config,
    notes: &mut Vec<Note>,
) -> Result<SignKey, String> {
    let (parsed, perm_warning) = keys::load_key_file(path, cfg.key_permissions)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = format!(
        "{domain}: s={selector} {} from {}",
        describe(&parsed),
        path.display()
    );
    let mut level = Level::Info;
    if let Some(w) = perm_warning {
        text.push_str(&format!("; warning: {w}"));
        level = Level::Warning;
    }
    if parsed.is_legacy() {
        text.push_str(&format!(
            "; warning: RSA key under {} bits; accepted, rotate to 2048",
            keys::AWS_LC_MIN_RSA_BITS
        ));
        level = Level::Warning;
    }
    let txt = path.with_extension("txt");
    match keys::check_txt(&parsed, &txt) {
        Ok(Some(_)) => text.push_str(&format!("; {} matches", txt.display())),
        Ok(None) => {}
        Err(e) => {
            text.push_str(&format!("; warning: {e}"));
            level = Level::Warning;
        }
    }
    notes.push(Note { level, text });
    Ok(SignKey {
        domain: domain.to_string(),
        selector: selector.to_string(),
        kind: parsed.kind,
        bits: parsed.bits,
        identity: None,
        path: path.to_path_buf(),
        public: PublicKey::of(&parsed),
        key: SharedKey(Arc::new(parsed.key)),
    })
}

/// Valid DNS label characters for a domain directory or selector name.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Reads the key kind of a candidate without keeping it (for grouping).
fn peek_kind(path: &Path) -> Option<KeyKind> {
    let data = std::fs::read(path).ok()?;
    keys::parse_private_key(&data).ok().map(|k| k.kind)
}

fn load_domain_dir(
    dir: &Path,
    domain: &str,
    cfg: &Config,
    notes: &mut Vec<Note>,
) -> Result<DomainKeys, DirProblem> {
    if let Some(dc) = cfg.domain.get(domain).filter(|d| !d.selectors.is_empty()) {
        let mut keys = Vec::new();
        for sel in &dc.selectors {
            let k = load_checked(&dir.join(format!("{sel}.private")), domain, sel, cfg, notes)
                .map_err(DirProblem::Broken)?;
            if keys.iter().any(|o: &SignKey| o.kind == k.kind) {
                return Err(DirProblem::Broken(format!(
                    "configured selectors {:?} hold two {} keys; list one RSA and/or one Ed25519",
                    dc.selectors,
                    k.kind.k()
                )));
            }
            keys.push(k);
        }
        return Ok(DomainKeys::Keys(keys));
    }
    let rd = std::fs::read_dir(dir)
        .map_err(|e| DirProblem::Broken(format!("{}: {e}", dir.display())))?;
    // (selector, mtime, path)
    let mut cands: Vec<(String, std::time::SystemTime, PathBuf)> = Vec::new();
    for ent in rd.flatten() {
        let p = ent.path();
        let Some(sel) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".private"))
        else {
            continue;
        };
        if !is_dns_name(sel) {
            notes.push(Note {
                level: Level::Warning,
                text: format!(
                    "{domain}: warning: ignoring {}: not a valid selector name",
                    p.display()
                ),
            });
            continue;
        }
        let mtime = ent
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        cands.push((sel.to_string(), mtime, p));
    }
    if cands.is_empty() {
        return Err(DirProblem::Empty(format!(
            "{}: no *.private key files",
            dir.display()
        )));
    }
    match cfg.selector_rule {
        SelectorRule::HighestName => cands.sort_by(|a, b| b.0.cmp(&a.0)),
        SelectorRule::Newest => cands.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0))),
    }
    if cfg.key_activation != KeyActivation::Immediate {
        return load_gated(&cands, domain, cfg, notes);
    }
    // Best candidate per kind; an unparsable file counts as "RSA" (its kind is unknown),
    // so a broken newest RSA key is an error rather than a silent fallback.
    let mut picked: BTreeMap<KeyKind, &(String, std::time::SystemTime, PathBuf)> = BTreeMap::new();
    for c in &cands {
        let kind = peek_kind(&c.2).unwrap_or(KeyKind::Rsa);
        picked.entry(kind).or_insert(c);
    }
    let mut chosen: Vec<_> = picked.into_iter().collect();
    if !cfg.dual_sign && chosen.len() > 1 {
        chosen.retain(|(k, _)| *k == KeyKind::Rsa);
    }
    let mut keys = Vec::new();
    for (_, (sel, _, path)) in chosen {
        keys.push(load_checked(path, domain, sel, cfg, notes).map_err(DirProblem::Broken)?);
    }
    Ok(DomainKeys::Keys(keys))
}

/// Loads every candidate (in selector-rule order), grouped by algorithm; a broken file
/// is a warning unless it is the rule's pick (then it is the domain's error while no
/// other key is verified, as without gating).
fn load_gated(
    cands: &[(String, std::time::SystemTime, PathBuf)],
    domain: &str,
    cfg: &Config,
    notes: &mut Vec<Note>,
) -> Result<DomainKeys, DirProblem> {
    let mut kinds: Vec<KindCandidates> = Vec::new();
    for (sel, mtime, path) in cands {
        let peek = peek_kind(path).unwrap_or(KeyKind::Rsa);
        let idx = match kinds.iter().position(|k| k.kind == peek) {
            Some(i) => i,
            None => {
                kinds.push(KindCandidates {
                    kind: peek,
                    cands: Vec::new(),
                    pick_error: None,
                });
                kinds.len() - 1
            }
        };
        let first = kinds[idx].cands.is_empty() && kinds[idx].pick_error.is_none();
        match load_checked(path, domain, sel, cfg, notes) {
            Ok(k) => kinds[idx].cands.push((k, *mtime)),
            Err(e) if first => kinds[idx].pick_error = Some(e),
            Err(e) => notes.push(Note {
                level: Level::Warning,
                text: format!("{domain}: warning: candidate s={sel} ignored: {e}"),
            }),
        }
    }
    kinds.sort_by_key(|k| k.kind);
    if kinds.iter().all(|k| k.cands.is_empty()) {
        // Nothing loaded at all: the domain is broken, exactly as without gating.
        let errs: Vec<String> = kinds.into_iter().filter_map(|k| k.pick_error).collect();
        return Err(DirProblem::Broken(errs.join("; ")));
    }
    for k in kinds.iter().filter(|k| k.cands.len() > 1) {
        notes.push(Note {
            level: Level::Info,
            text: format!(
                "{domain}: {} {} keys: the newest one published in DNS signs (key-activation = \"{}\"); \
                 see `dkim-milter testkey --domain {domain}`",
                k.cands.len(),
                k.kind.k(),
                cfg.key_activation.as_str()
            ),
        });
    }
    Ok(DomainKeys::Gated(kinds))
}

impl KeyStore {
    /// Builds the store from the config. Per-domain problems become notes and
    /// per-domain errors; only an unreadable keys dir or a bad table fails.
    pub fn load(cfg: &Config) -> Result<KeyStore, StoreError> {
        let mut notes = Vec::new();
        let source = match (&cfg.key_table, &cfg.signing_table) {
            (Some(kt), Some(st)) => {
                let (key_table, kt_path) = KeyTable::load(kt)?;
                let (table, st_path) = SigningTable::load(st)?;
                let mut keys = BTreeMap::new();
                for e in &key_table.entries {
                    let r = match &e.key {
                        KeySource::Path(p) if p.contains('%') => continue, // per sender, at use
                        KeySource::Path(p) => {
                            let dom = if e.domain == "%" {
                                "(sender)"
                            } else {
                                &e.domain
                            };
                            load_checked(Path::new(p), dom, &e.selector, cfg, &mut notes)
                        }
                        KeySource::Inline(data) => keys::parse_private_key(data.as_bytes())
                            .map(|k| SignKey {
                                domain: e.domain.clone(),
                                selector: e.selector.clone(),
                                kind: k.kind,
                                bits: k.bits,
                                identity: None,
                                path: kt_path.clone(),
                                public: PublicKey::of(&k),
                                key: SharedKey(Arc::new(k.key)),
                            })
                            .map_err(|err| {
                                format!("{}:{}: inline key: {err}", kt_path.display(), e.line)
                            }),
                    };
                    if let Err(err) = &r {
                        notes.push(Note {
                            level: Level::NotSigning,
                            text: format!("KeyTable entry {}: {err}", e.name),
                        });
                    }
                    keys.insert(e.name.clone(), r);
                }
                for s in &table.entries {
                    if s.key_name != "%" && key_table.get(&s.key_name).is_none() {
                        notes.push(Note {
                            level: Level::NotSigning,
                            text: format!(
                                "{}:{}: key name {:?} is not in the KeyTable",
                                st_path.display(),
                                s.line,
                                s.key_name
                            ),
                        });
                    }
                }
                Source::Tables {
                    keys,
                    table,
                    key_table,
                    multiple: cfg.multiple_signatures,
                }
            }
            _ => {
                let rd = std::fs::read_dir(&cfg.keys_dir).map_err(|e| StoreError::KeysDir {
                    path: cfg.keys_dir.clone(),
                    error: e.to_string(),
                })?;
                let mut domains = BTreeMap::new();
                let mut names: Vec<(String, PathBuf)> = rd
                    .flatten()
                    // `metadata` follows symlinks: panels link alias domains to one key directory.
                    .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.is_dir()))
                    .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
                    .collect();
                names.sort();
                for (name, path) in names {
                    if !is_dns_name(&name) || !name.contains('.') {
                        continue;
                    }
                    let domain = name.to_ascii_lowercase();
                    let entry = match load_domain_dir(&path, &domain, cfg, &mut notes) {
                        Ok(keys) => keys,
                        Err(DirProblem::Empty(e))
                            if cfg.empty_domain_dir == EmptyDomainDir::Unsigned =>
                        {
                            notes.push(Note {
                                level: Level::NotSigning,
                                text: format!(
                                    "{domain}: not signing: {e}; its mail passes unsigned \
                                     (empty-domain-dir = \"unsigned\")"
                                ),
                            });
                            DomainKeys::Empty(e)
                        }
                        Err(DirProblem::Empty(e) | DirProblem::Broken(e)) => {
                            notes.push(Note {
                                level: Level::NotSigning,
                                text: format!("{domain}: not signing: {e}"),
                            });
                            DomainKeys::Broken(e)
                        }
                    };
                    domains.insert(domain, entry);
                }
                for d in cfg.domain.keys() {
                    if !domains.contains_key(&d.to_ascii_lowercase()) {
                        notes.push(Note {
                            level: Level::NotSigning,
                            text: format!(
                                "{d}: configured in [domain] but {} has no such directory",
                                cfg.keys_dir.display()
                            ),
                        });
                    }
                }
                Source::Dir(domains)
            }
        };
        Ok(KeyStore {
            source,
            gate: Arc::new(Gate::default()),
            activation: cfg.key_activation,
            dual_sign: cfg.dual_sign,
            sign_subdomains: cfg.sign_subdomains,
            permissions: cfg.key_permissions,
            notes,
        })
    }

    /// Load-time findings, in order.
    pub fn notes(&self) -> &[Note] {
        &self.notes
    }

    /// Number of domains (dir layout) or KeyTable keys that can sign.
    pub fn usable_count(&self) -> usize {
        match &self.source {
            Source::Dir(d) => d
                .values()
                .filter(|r| matches!(r, DomainKeys::Keys(_) | DomainKeys::Gated(_)))
                .count(),
            Source::Tables { keys, .. } => keys.values().filter(|r| r.is_ok()).count(),
        }
    }

    /// Number of domains (dir layout) or KeyTable keys whose key could not be loaded
    /// (their mail follows `on-key-error`).
    pub fn broken_count(&self) -> usize {
        match &self.source {
            Source::Dir(d) => d
                .values()
                .filter(|r| matches!(r, DomainKeys::Broken(_)))
                .count(),
            Source::Tables { keys, .. } => keys.values().filter(|r| r.is_err()).count(),
        }
    }

    /// Number of load-time warnings: domains or keys that do not sign, and keys that
    /// sign but need a look (see [`Note::is_warning`]).
    pub fn warning_count(&self) -> usize {
        self.notes.iter().filter(|n| n.is_warning()).count()
    }

    /// What the DNS checker records into (carried over reloads with [`Gate::adopt`]).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// True if some domain's key choice depends on DNS.
    pub fn has_gated(&self) -> bool {
        matches!(&self.source, Source::Dir(d) if d.values().any(|v| matches!(v, DomainKeys::Gated(_))))
    }

    /// Every key whose activation depends on DNS.
    pub fn gated_candidates(&self) -> Vec<Candidate> {
        let Source::Dir(domains) = &self.source else {
            return Vec::new();
        };
        domains
            .values()
            .filter_map(|v| match v {
                DomainKeys::Gated(kinds) => Some(kinds),
                _ => None,
            })
            .flatten()
            .flat_map(|kc| kc.cands.iter().map(|(k, _)| Candidate::of(k)))
            .collect()
    }

    /// Every loaded key with a fixed domain (gated, pinned, KeyTable), for `testkey`.
    pub fn all_keys(&self) -> Vec<Candidate> {
        match &self.source {
            Source::Dir(domains) => domains
                .values()
                .flat_map(|v| match v {
                    DomainKeys::Keys(keys) => keys.iter().map(Candidate::of).collect(),
                    DomainKeys::Gated(kinds) => kinds
                        .iter()
                        .flat_map(|kc| kc.cands.iter().map(|(k, _)| Candidate::of(k)))
                        .collect(),
                    _ => Vec::new(),
                })
                .collect(),
            Source::Tables { keys, .. } => keys
                .values()
                .flatten()
                .filter(|k| k.domain != "(sender)")
                .map(Candidate::of)
                .collect(),
        }
    }

    /// `Some(why)` if `domain`'s key `selector` signs now.
    pub fn why_active(&self, domain: &str, selector: &str) -> Option<String> {
        match &self.source {
            Source::Dir(domains) => match domains.get(domain)? {
                DomainKeys::Keys(keys) => keys.iter().any(|k| k.selector == selector).then(|| {
                    if self.activation == KeyActivation::Immediate {
                        "selector rule (key-activation = \"immediate\")".into()
                    } else {
                        "pinned in [domain] selectors (not DNS-gated)".into()
                    }
                }),
                DomainKeys::Gated(kinds) => self
                    .resolve(domain, kinds)
                    .ok()?
                    .into_iter()
                    .find(|(k, _)| k.selector == selector)
                    .map(|(_, why)| why.to_string()),
                _ => None,
            },
            Source::Tables { keys, .. } => keys
                .values()
                .flatten()
                .any(|k| k.domain == domain && k.selector == selector)
                .then(|| "KeyTable (not DNS-gated; the SigningTable decides)".into()),
        }
    }

    /// Which gated key signs per algorithm, and why; see the module doc.
    fn resolve(
        &self,
        domain: &str,
        kinds: &[KindCandidates],
    ) -> Result<Vec<(SignKey, &'static str)>, String> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for kc in kinds {
            let verified = kc
                .cands
                .iter()
                .filter(|(k, _)| self.gate.verified(domain, &k.selector, &k.public))
                .max_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.selector.cmp(&b.0.selector)));
            if let Some((k, _)) = verified {
                out.push((k.clone(), "newest key published in DNS and matching"));
                continue;
            }
            match (self.activation, &kc.pick_error, kc.cands.first()) {
                (KeyActivation::DnsStrict, _, _) => errors.push(format!(
                    "no {} key is published in DNS yet (key-activation = \"dns-strict\")",
                    kc.kind.k()
                )),
                (_, Some(e), _) => errors.push(e.clone()),
                (_, None, Some((k, _))) => out.push((
                    k.clone(),
                    "selector-rule pick: no key verified in DNS yet (key-activation = \"dns\")",
                )),
                (_, None, None) => {}
            }
        }
        if out.is_empty() {
            return Err(if errors.is_empty() {
                "no usable key".into()
            } else {
                errors.join("; ")
            });
        }
        if !self.dual_sign && out.len() > 1 {
            out.retain(|(k, _)| k.kind == KeyKind::Rsa);
        }
        Ok(out)
    }

    /// Logs, once per change, which gated key signs for each domain and algorithm.
    pub fn log_activation(&self) {
        let Source::Dir(domains) = &self.source else {
            return;
        };
        for (d, v) in domains {
            let DomainKeys::Gated(kinds) = v else {
                continue;
            };
            match self.resolve(d, kinds) {
                Ok(keys) => {
                    for (k, why) in keys {
                        if let Some(prev) = self.gate.set_active(d, k.kind, &k.selector) {
                            let was = prev.map(|p| format!("; was s={p}")).unwrap_or_default();
                            if why.starts_with("newest") {
                                tracing::info!(
                                    "{d}: s={} ({}) signs: {why}{was}",
                                    k.selector,
                                    k.kind.k()
                                );
                            } else {
                                tracing::warn!(
                                    "{d}: s={} ({}) signs: {why}{was}",
                                    k.selector,
                                    k.kind.k()
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    if self.gate.set_active(d, KeyKind::Rsa, "").is_some() {
                        tracing::warn!("{d}: not signing: {e}");
                    }
                }
            }
        }
    }

    /// Keys for a From address (`user@domain`, domain lowercased by the caller or not).
    pub fn lookup(&self, from_address: &str) -> Lookup {
        let from_address = from_address.to_ascii_lowercase();
        let Some((_, from_domain)) = from_address.rsplit_once('@') else {
            return Lookup::NoKey;
        };
        match &self.source {
            Source::Dir(domains) => {
                let mut d = from_domain;
                loop {
                    match domains.get(d) {
                        Some(DomainKeys::Keys(keys)) => return Lookup::Sign(keys.clone()),
                        Some(DomainKeys::Gated(kinds)) => {
                            return match self.resolve(d, kinds) {
                                Ok(keys) => {
                                    Lookup::Sign(keys.into_iter().map(|(k, _)| k).collect())
                                }
                                Err(error) => Lookup::KeyError {
                                    domain: d.to_string(),
                                    error,
                                },
                            };
                        }
                        Some(DomainKeys::Broken(e)) => {
                            return Lookup::KeyError {
                                domain: d.to_string(),
                                error: e.clone(),
                            };
                        }
                        Some(DomainKeys::Empty(e)) => {
                            return Lookup::EmptyDir {
                                domain: d.to_string(),
                                detail: e.clone(),
                            };
                        }
                        None => {}
                    }
                    if !self.sign_subdomains {
                        return Lookup::NoKey;
                    }
                    match d.split_once('.') {
                        Some((_, parent)) if parent.contains('.') => d = parent,
                        _ => return Lookup::NoKey,
                    }
                }
            }
            Source::Tables {
                keys,
                table,
                key_table,
                multiple,
            } => {
                let mut out = Vec::new();
                for entry in table.lookup(&from_address, *multiple) {
                    let name = if entry.key_name == "%" {
                        from_domain
                    } else {
                        entry.key_name.as_str()
                    };
                    let Some(kt) = key_table.get(name) else {
                        return Lookup::KeyError {
                            domain: from_domain.to_string(),
                            error: format!("SigningTable names key {name:?}, not in the KeyTable"),
                        };
                    };
                    let loaded = match (&kt.key, keys.get(name)) {
                        (_, Some(r)) => r.clone(),
                        (KeySource::Path(p), None) => {
                            let path = PathBuf::from(p.replace('%', from_domain));
                            keys::load_key_file(&path, self.permissions)
                                .map(|(k, _)| SignKey {
                                    domain: String::new(),
                                    selector: kt.selector.clone(),
                                    kind: k.kind,
                                    bits: k.bits,
                                    identity: None,
                                    path: path.clone(),
                                    public: PublicKey::of(&k),
                                    key: SharedKey(Arc::new(k.key)),
                                })
                                .map_err(|e| format!("{}: {e}", path.display()))
                        }
                        (KeySource::Inline(_), None) => Err("key not loaded".into()),
                    };
                    let mut key = match loaded {
                        Ok(k) => k,
                        Err(error) => {
                            return Lookup::KeyError {
                                domain: from_domain.to_string(),
                                error,
                            };
                        }
                    };
                    key.domain = if kt.domain == "%" {
                        from_domain.to_string()
                    } else {
                        kt.domain.clone()
                    };
                    key.identity = entry
                        .signer
                        .as_ref()
                        .map(|s| s.replace('%', from_domain))
                        .filter(|i| {
                            let idom = i.rsplit_once('@').map_or(i.as_str(), |(_, d)| d);
                            idom == key.domain || idom.ends_with(&format!(".{}", key.domain))
                        });
                    out.push(key);
                }
                if out.is_empty() {
                    Lookup::NoKey
                } else {
                    Lookup::Sign(out)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn genkey(dir: &Path, domain: &str, sel: &str) {
        let d = dir.join(domain);
        std::fs::create_dir_all(&d).unwrap();
        let st = std::process::Command::new("opendkim-genkey")
            .args(["-D", d.to_str().unwrap(), "-d", domain, "-s", sel])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn ed_key(dir: &Path, domain: &str, sel: &str) {
        let pem = crate::keys::tests::openssl(&["genpkey", "-algorithm", "ED25519"]);
        let p = dir.join(domain).join(format!("{sel}.private"));
        std::fs::write(&p, pem).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn cfg(dir: &Path) -> Config {
        Config {
            keys_dir: dir.to_path_buf(),
            ..Config::default()
        }
    }

    fn sels(l: Lookup) -> Vec<String> {
        match l {
            Lookup::Sign(k) => k
                .iter()
                .map(|k| format!("{}/{}", k.domain, k.selector))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn symlinked_domain_dir_signs_as_its_own_name() {
        let t = tempfile::tempdir().unwrap();
        genkey(t.path(), "example.com", "default");
        std::os::unix::fs::symlink(t.path().join("example.com"), t.path().join("alias.org"))
            .unwrap();
        let s = KeyStore::load(&cfg(t.path())).unwrap();
        assert_eq!(sels(s.lookup("a@alias.org")), vec!["alias.org/default"]);
        assert_eq!(sels(s.lookup("a@example.com")), vec!["example.com/default"]);
    }

    #[test]
    fn dir_layout_selector_rule_dual_and_broken_domain() {
        let t = tempfile::tempdir().unwrap();
        genkey(t.path(), "example.com", "2024");
        genkey(t.path(), "example.com", "2025");
        ed_key(t.path(), "example.com", "ed1");
        genkey(t.path(), "other.org", "default");
        genkey(t.path(), "broken.net", "default");
        std::fs::write(t.path().join("broken.net/default.private"), "garbage").unwrap();
        let s = KeyStore::load(&cfg(t.path())).unwrap();
        assert_eq!(
            sels(s.lookup("Joe@Example.COM")),
            vec!["example.com/2025", "example.com/ed1"]
        );
        assert_eq!(sels(s.lookup("a@other.org")), vec!["other.org/default"]);
        match s.lookup("a@broken.net") {
            Lookup::KeyError { domain, error } => {
                assert_eq!(domain, "broken.net");
                assert!(error.contains("default.private"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.lookup("a@sub.example.com"), Lookup::NoKey));
        assert!(matches!(s.lookup("nobody"), Lookup::NoKey));
        assert_eq!(s.usable_count(), 2);
        assert!(
            s.notes()
                .iter()
                .any(|n| n.level == Level::NotSigning && n.text.starts_with("broken.net"))
        );
        assert!(
            s.notes()
                .iter()
                .any(|n| n.level == Level::Info && n.text.contains("2025.txt matches"))
        );
        assert_eq!(s.broken_count(), 1);
        assert_eq!(s.warning_count(), 1);
    }

    #[test]
    fn empty_domain_dir_is_unsigned_or_a_key_error() {
        let t = tempfile::tempdir().unwrap();
        genkey(t.path(), "example.com", "default");
        std::fs::create_dir(t.path().join("empty.org")).unwrap();
        let s = KeyStore::load(&cfg(t.path())).unwrap();
        match s.lookup("a@empty.org") {
            Lookup::EmptyDir { domain, detail } => {
                assert_eq!(domain, "empty.org");
                assert!(detail.contains("no *.private key files"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.lookup("a@example.com"), Lookup::Sign(_)));
        assert_eq!((s.usable_count(), s.broken_count()), (1, 0));
        assert_eq!(s.warning_count(), 1);
        assert!(s.notes().iter().any(|n| n.level == Level::NotSigning
            && n.text.starts_with("empty.org: not signing")
            && n.text.contains("passes unsigned")));

        let mut c = cfg(t.path());
        c.empty_domain_dir = EmptyDomainDir::KeyError;
        let s = KeyStore::load(&c).unwrap();
        assert!(matches!(s.lookup("a@empty.org"), Lookup::KeyError { .. }));
        assert_eq!((s.usable_count(), s.broken_count()), (1, 1));
    }

    #[test]
    fn explicit_selectors_subdomains_and_no_dual() {
        let t = tempfile::tempdir().unwrap();
        genkey(t.path(), "example.com", "2024");
        genkey(t.path(), "example.com", "2025");
        ed_key(t.path(), "example.com", "ed1");
        let mut c = cfg(t.path());
        c.domain.insert(
            "example.com".into(),
            crate::config::DomainConfig {
                selectors: vec!["2024".into()],
            },
        );
        c.sign_subdomains = true;
        let s = KeyStore::load(&c).unwrap();
        assert_eq!(
            sels(s.lookup("a@mail.sub.example.com")),
            vec!["example.com/2024"]
        );
        let mut c = cfg(t.path());
        c.dual_sign = false;
        let s = KeyStore::load(&c).unwrap();
        assert_eq!(sels(s.lookup("a@example.com")), vec!["example.com/2025"]);
    }

    #[test]
    fn unsafe_permissions_disable_only_that_domain() {
        let t = tempfile::tempdir().unwrap();
        genkey(t.path(), "example.com", "default");
        genkey(t.path(), "open.org", "default");
        std::fs::set_permissions(
            t.path().join("open.org/default.private"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let s = KeyStore::load(&cfg(t.path())).unwrap();
        assert!(matches!(s.lookup("a@example.com"), Lookup::Sign(_)));
        match s.lookup("a@open.org") {
            Lookup::KeyError { error, .. } => assert!(error.contains("not secure"), "{error}"),
            other => panic!("{other:?}"),
        }
    }

    fn set_mtime(dir: &Path, domain: &str, sel: &str, secs: u64) {
        let f = std::fs::File::options()
            .write(true)
            .open(dir.join(domain).join(format!("{sel}.private")))
            .unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .unwrap();
    }

    fn verify(s: &KeyStore, domain: &str, sel: &str, state: crate::activation::DnsState) {
        let c = s
            .gated_candidates()
            .into_iter()
            .find(|c| c.domain == domain && c.selector == sel)
            .unwrap();
        s.gate().record(domain, sel, &c.public, state);
    }

    #[test]
    fn dns_gated_rotation_new_key_waits_for_its_record() {
        use crate::activation::DnsState;
        let t = tempfile::tempdir().unwrap();
        genkey(t.path(), "example.com", "a");
        set_mtime(t.path(), "example.com", "a", 1_000);
        let s = KeyStore::load(&cfg(t.path())).unwrap();
        assert!(s.has_gated());
        // Nothing verified yet: the rule's pick signs (fresh install).
        assert_eq!(sels(s.lookup("x@example.com")), vec!["example.com/a"]);
        verify(&s, "example.com", "a", DnsState::Matching);

        // A new key, higher name and newer: not used while its record is absent.
        genkey(t.path(), "example.com", "b");
        set_mtime(t.path(), "example.com", "b", 2_000);
        let s2 = KeyStore::load(&cfg(t.path())).unwrap();
        s2.gate().adopt(s.gate());
        assert_eq!(sels(s2.lookup("x@example.com")), vec!["example.com/a"]);
        verify(&s2, "example.com", "b", DnsState::Absent);
        assert_eq!(sels(s2.lookup("x@example.com")), vec!["example.com/a"]);
        assert!(
            s2.why_active("example.com", "a")
                .unwrap()
                .contains("published in DNS")
        );
        assert_eq!(s2.why_active("example.com", "b"), None);
        // A DNS error does not take a out of service.
        verify(&s2, "example.com", "a", DnsState::Error("timeout".into()));
        assert_eq!(sels(s2.lookup("x@example.com")), vec!["example.com/a"]);
        // Published: b (newest verified) signs.
        verify(&s2, "example.com", "b", DnsState::Matching);
        assert_eq!(sels(s2.lookup("x@example.com")), vec!["example.com/b"]);
        // Published with another key: back to a.
        verify(
            &s2,
            "example.com",
            "b",
            DnsState::Different("p= is another key".into()),
        );
        assert_eq!(sels(s2.lookup("x@example.com")), vec!["example.com/a"]);

        // Without gating the rule's pick signs at once.
        let mut c = cfg(t.path());
        c.key_activation = KeyActivation::Immediate;
        let s3 = KeyStore::load(&c).unwrap();
        assert!(!s3.has_gated());
        assert_eq!(sels(s3.lookup("x@example.com")), vec!["example.com/b"]);

        // dns-strict: nothing verified, nothing signs.
        let mut c = cfg(t.path());
        c.key_activation = KeyActivation::DnsStrict;
        let s4 = KeyStore::load(&c).unwrap();
        match s4.lookup("x@example.com") {
            Lookup::KeyError { error, .. } => assert!(error.contains("dns-strict"), "{error}"),
            other => panic!("{other:?}"),
        }
        verify(&s4, "example.com", "a", DnsState::Matching);
        assert_eq!(sels(s4.lookup("x@example.com")), vec!["example.com/a"]);
    }

    #[test]
    fn stray_old_default_does_not_outrank_default() {
        use crate::activation::DnsState;
        let t = tempfile::tempdir().unwrap();
        genkey(t.path(), "example.com", "old-default");
        set_mtime(t.path(), "example.com", "old-default", 1_000);
        genkey(t.path(), "example.com", "default");
        set_mtime(t.path(), "example.com", "default", 2_000);
        let s = KeyStore::load(&cfg(t.path())).unwrap();
        // Byte order puts old-default first: that is what the rule alone would pick.
        assert_eq!(
            sels(s.lookup("x@example.com")),
            vec!["example.com/old-default"]
        );
        verify(&s, "example.com", "default", DnsState::Matching);
        verify(&s, "example.com", "old-default", DnsState::Absent);
        assert_eq!(sels(s.lookup("x@example.com")), vec!["example.com/default"]);
        // Even if both are published, the newer file signs.
        verify(&s, "example.com", "old-default", DnsState::Matching);
        assert_eq!(sels(s.lookup("x@example.com")), vec!["example.com/default"]);
    }

    #[test]
    fn missing_keys_dir_is_fatal() {
        let e = KeyStore::load(&cfg(Path::new("/nonexistent/keys"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/keys"));
    }

    #[test]
    fn key_and_signing_tables() {
        let t = tempfile::tempdir().unwrap();
        genkey(t.path(), "example.com", "default");
        genkey(t.path(), "example.org", "mail");
        let kt = t.path().join("KeyTable");
        let st = t.path().join("SigningTable");
        let k = t.path().display();
        std::fs::write(
            &kt,
            format!(
                "default._domainkey.example.com example.com:default:{k}/example.com/default.private\n\
                 org %:mail:{k}/%/mail.private\n\
                 bad example.net:x:{k}/nope.private\n"
            ),
        )
        .unwrap();
        std::fs::write(
            &st,
            "*@example.com default._domainkey.example.com\n*@example.org org\n*@example.net bad\n",
        )
        .unwrap();
        let mut c = cfg(t.path());
        c.key_table = Some(format!("file:{}", kt.display()));
        c.signing_table = Some(format!("refile:{}", st.display()));
        let s = KeyStore::load(&c).unwrap();
        assert_eq!(sels(s.lookup("a@example.com")), vec!["example.com/default"]);
        assert_eq!(sels(s.lookup("a@example.org")), vec!["example.org/mail"]);
        assert!(matches!(s.lookup("a@example.net"), Lookup::KeyError { .. }));
        assert!(matches!(s.lookup("a@elsewhere.com"), Lookup::NoKey));

        std::fs::write(&st, "*@example.com\n").unwrap();
        let e = KeyStore::load(&c).unwrap_err();
        assert!(e.to_string().contains(":1:"), "{e}");
    }
}
