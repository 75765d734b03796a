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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mail_auth::crypto::{Algorithm, SigningKey};
use mail_auth::headers::Writable;

use crate::config::{Config, EmptyDomainDir, SelectorRule};
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
    /// Broken (or empty, with `empty-domain-dir = "key-error"`): on-key-error applies.
    Broken(String),
    /// No key in the directory: mail passes unsigned.
    Empty(String),
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
) -> Result<Vec<SignKey>, DirProblem> {
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
        return Ok(keys);
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
    Ok(keys)
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
                        Ok(keys) => DomainKeys::Keys(keys),
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
                .filter(|r| matches!(r, DomainKeys::Keys(_)))
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
