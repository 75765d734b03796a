//! OpenDKIM KeyTable and SigningTable files, read as panels write them.
//!
//! KeyTable: `keyname  domain:selector:/path/or/inline-key`, `%` in the domain is the
//! sender's domain, `%` in a path is replaced by it. SigningTable: `refile:` holds `*`
//! wildcard patterns checked in file order; `file:` (or a plain path) uses OpenDKIM's
//! lookup order `user@host`, `host`, `user@.parent`…, `.parent`…, `user@*`, `*`.

use std::path::{Path, PathBuf};

/// A table line we cannot use; names file and line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct TableError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line (0 when the file itself is the problem).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Where a KeyTable key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file; may contain `%` (the sender's domain).
    Path(String),
    /// PEM or base64 DER written into the table itself.
    Inline(String),
}

/// One KeyTable line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTableEntry {
    /// The key name SigningTable refers to.
    pub name: String,
    /// `d=`; `%` means the sender's domain.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// The key.
    pub key: KeySource,
    /// 1-based line, for messages.
    pub line: usize,
}

/// Table type from an OpenDKIM dataset spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// `file:` or a plain path: exact keys.
    File,
    /// `refile:`: wildcard patterns.
    Refile,
}

/// Splits `refile:/x`, `file:/x` or `/x` into kind and path.
pub fn parse_spec(spec: &str) -> Result<(TableKind, PathBuf), String> {
    if let Some(p) = spec.strip_prefix("refile:") {
        Ok((TableKind::Refile, PathBuf::from(p)))
    } else if let Some(p) = spec.strip_prefix("file:") {
        Ok((TableKind::File, PathBuf::from(p)))
    } else if spec.starts_with('/') || spec.starts_with("./") || spec.starts_with("../") {
        Ok((TableKind::File, PathBuf::from(spec)))
    } else {
        Err(format!(
            "{spec:?}: only file:, refile: and plain paths are supported (not db:, ldap:, …)"
        ))
    }
}

/// The text of a dataset in table-file form (`key value` lines), its kind and the file it
/// came from (`None` for `csl:`). OpenDKIM's `csl:k1=v1,k2=v2` (a comma-separated list
/// in the config itself, `=` between key and value) becomes one line per item, so both
/// forms go through one parser.
pub fn dataset(spec: &str) -> Result<(TableKind, Option<PathBuf>, String), TableError> {
    if let Some(list) = spec.strip_prefix("csl:") {
        let text = list
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(|i| match i.split_once('=') {
                Some((k, v)) => format!("{} {}\n", k.trim(), v.trim()),
                None => format!("{i}\n"),
            })
            .collect();
        return Ok((TableKind::File, None, text));
    }
    let (kind, path) = parse_spec(spec).map_err(|message| TableError {
        path: PathBuf::from(spec),
        line: 0,
        message,
    })?;
    let text = read(&path)?;
    Ok((kind, Some(path), text))
}

fn read(path: &Path) -> Result<String, TableError> {
    std::fs::read_to_string(path).map_err(|e| TableError {
        path: path.to_path_buf(),
        line: 0,
        message: format!("cannot read: {e}"),
    })
}

/// Content lines: `(line_no, key, value)`, comments and blanks skipped.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str, &str)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let l = l.split_once('#').map_or(l, |(a, _)| a).trim();
        if l.is_empty() {
            return None;
        }
        let (k, v) = l
            .split_once(|c: char| c.is_whitespace())
            .map_or((l, ""), |(k, v)| (k, v.trim()));
        Some((i + 1, k, v))
    })
}

/// A parsed KeyTable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyTable {
    /// Entries in file order.
    pub entries: Vec<KeyTableEntry>,
}

impl KeyTable {
    /// Reads a KeyTable dataset spec.
    /// `csl:` tables are named `csl:` in messages.
    pub fn load(spec: &str) -> Result<(KeyTable, PathBuf), TableError> {
        let (_, path, text) = dataset(spec)?;
        let path = path.unwrap_or_else(|| PathBuf::from("csl:"));
        Ok((KeyTable::parse(&text, &path)?, path))
    }

    /// Parses KeyTable text.
    pub fn parse(text: &str, path: &Path) -> Result<KeyTable, TableError> {
        let mut entries: Vec<KeyTableEntry> = Vec::new();
        for (line, name, value) in lines(text) {
            let err = |message: String| TableError {
                path: path.to_path_buf(),
                line,
                message,
            };
            let mut parts = value.splitn(3, ':');
            let (Some(domain), Some(selector), Some(key)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(err(format!(
                    "key {name:?}: expected \"domain:selector:keyfile\", got {value:?}"
                )));
            };
            let (domain, selector, key) = (domain.trim(), selector.trim(), key.trim());
            if domain.is_empty() || selector.is_empty() || key.is_empty() {
                return Err(err(format!("key {name:?}: empty domain, selector or key")));
            }
            if entries.iter().any(|e| e.name == name) {
                return Err(err(format!("key name {name:?} appears twice")));
            }
            let key = if key.starts_with('/') || key.starts_with("./") || key.starts_with("../") {
                KeySource::Path(key.to_string())
            } else {
                KeySource::Inline(key.to_string())
            };
            entries.push(KeyTableEntry {
                name: name.to_string(),
                domain: domain.to_ascii_lowercase(),
                selector: selector.to_string(),
                key,
                line,
            });
        }
        Ok(KeyTable { entries })
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&KeyTableEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// One SigningTable line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningEntry {
    /// Address key or wildcard pattern (lowercased).
    pub pattern: String,
    /// KeyTable name (`%` = the sender's domain).
    pub key_name: String,
    /// Optional `i=` (with `%` = the sender's domain).
    pub signer: Option<String>,
    /// 1-based line.
    pub line: usize,
}

/// A parsed SigningTable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningTable {
    /// How keys are matched.
    pub kind: TableKind,
    /// Entries in file order.
    pub entries: Vec<SigningEntry>,
}

impl SigningTable {
    /// Reads a SigningTable dataset spec.
    /// `csl:` tables are named `csl:` in messages.
    pub fn load(spec: &str) -> Result<(SigningTable, PathBuf), TableError> {
        let (kind, path, text) = dataset(spec)?;
        let path = path.unwrap_or_else(|| PathBuf::from("csl:"));
        Ok((SigningTable::parse(&text, &path, kind)?, path))
    }

    /// Parses SigningTable text.
    pub fn parse(text: &str, path: &Path, kind: TableKind) -> Result<SigningTable, TableError> {
        let mut entries = Vec::new();
        for (line, pattern, value) in lines(text) {
            let mut vals = value.split_whitespace();
            let Some(key_name) = vals.next() else {
                return Err(TableError {
                    path: path.to_path_buf(),
                    line,
                    message: format!("{pattern:?} has no key name"),
                });
            };
            // `keyname:signer` is the same as two fields.
            let (key_name, signer) = match key_name.split_once(':') {
                Some((k, s)) => (k.to_string(), Some(s.to_string())),
                None => (key_name.to_string(), vals.next().map(str::to_string)),
            };
            entries.push(SigningEntry {
                pattern: pattern.to_ascii_lowercase(),
                key_name,
                signer,
                line,
            });
        }
        Ok(SigningTable { kind, entries })
    }

    /// Entries that apply to `address` (`user@domain`), best first; only the first
    /// unless `multiple`.
    pub fn lookup(&self, address: &str, multiple: bool) -> Vec<&SigningEntry> {
        let address = address.to_ascii_lowercase();
        let mut out: Vec<&SigningEntry> = Vec::new();
        match self.kind {
            TableKind::Refile => {
                for e in &self.entries {
                    if wildcard_match(&e.pattern, &address) {
                        out.push(e);
                        if !multiple {
                            break;
                        }
                    }
                }
            }
            TableKind::File => {
                for k in exact_keys(&address) {
                    for e in self.entries.iter().filter(|e| e.pattern == k) {
                        if !out.contains(&e) {
                            out.push(e);
                        }
                    }
                    if !multiple && !out.is_empty() {
                        out.truncate(1);
                        break;
                    }
                }
            }
        }
        out
    }
}

/// OpenDKIM's flat-table lookup keys for `user@host`, in order.
pub fn exact_keys(address: &str) -> Vec<String> {
    let (user, host) = address.rsplit_once('@').unwrap_or(("", address));
    let mut keys = Vec::new();
    if !user.is_empty() {
        keys.push(format!("{user}@{host}"));
    }
    keys.push(host.to_string());
    let parents: Vec<&str> = host
        .match_indices('.')
        .filter_map(|(i, _)| host.get(i..))
        .collect();
    if !user.is_empty() {
        keys.extend(parents.iter().map(|p| format!("{user}@{p}")));
    }
    keys.extend(parents.iter().map(|p| p.to_string()));
    if !user.is_empty() {
        keys.push(format!("{user}@*"));
    }
    keys.push("*".into());
    keys
}

/// `*` matches any run of characters (including none); everything else is literal.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*@example.com", "joe@example.com"));
        assert!(!wildcard_match("*@example.com", "joe@sub.example.com"));
        assert!(wildcard_match("*@*.example.com", "joe@sub.example.com"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b*c", "aXXbYY"));
        assert!(wildcard_match("joe@example.com", "joe@example.com"));
        assert!(!wildcard_match("joe@example.com", "joe@example.co"));
    }

    #[test]
    fn key_table_panel_format() {
        let t = KeyTable::parse(
            "# ISPConfig style\n\
             default._domainkey.example.com example.com:default:/etc/opendkim/keys/example.com/default.private\n\
             \n\
             wild %:mail:/etc/opendkim/keys/%/mail.private  # comment\n",
            Path::new("/etc/opendkim/KeyTable"),
        )
        .unwrap();
        assert_eq!(t.entries.len(), 2);
        let e = t.get("default._domainkey.example.com").unwrap();
        assert_eq!(e.domain, "example.com");
        assert_eq!(e.selector, "default");
        assert_eq!(
            e.key,
            KeySource::Path("/etc/opendkim/keys/example.com/default.private".into())
        );
        assert_eq!(t.get("wild").unwrap().domain, "%");
        assert_eq!(t.get("wild").unwrap().line, 4);
    }

    #[test]
    fn key_table_errors_name_line() {
        let e =
            KeyTable::parse("a x.com:s:/k\nbroken example.com\n", Path::new("/kt")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("/kt:2:"), "{e}");
        let e = KeyTable::parse("a x.com:s:/k\na y.com:s:/k\n", Path::new("/kt")).unwrap_err();
        assert!(e.message.contains("twice"));
    }

    #[test]
    fn refile_in_file_order() {
        let t = SigningTable::parse(
            "*@example.com first\n*@*.example.com sub\n*@Example.com second\n*@* catchall\n",
            Path::new("/st"),
            TableKind::Refile,
        )
        .unwrap();
        let names = |a, m| {
            t.lookup(a, m)
                .iter()
                .map(|e| e.key_name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("Joe@EXAMPLE.com", false), vec!["first"]);
        assert_eq!(
            names("joe@example.com", true),
            vec!["first", "second", "catchall"]
        );
        assert_eq!(names("joe@a.example.com", false), vec!["sub"]);
        assert_eq!(names("joe@other.org", false), vec!["catchall"]);
    }

    #[test]
    fn file_table_lookup_order() {
        assert_eq!(
            exact_keys("user@foo.example.com"),
            vec![
                "user@foo.example.com",
                "foo.example.com",
                "user@.example.com",
                "user@.com",
                ".example.com",
                ".com",
                "user@*",
                "*"
            ]
        );
        let t = SigningTable::parse(
            ".example.com parent\nexample.com dom\nboss@example.com boss:boss@example.com\n",
            Path::new("/st"),
            TableKind::File,
        )
        .unwrap();
        let first = |a| t.lookup(a, false).first().map(|e| e.key_name.clone());
        assert_eq!(first("boss@example.com").as_deref(), Some("boss"));
        assert_eq!(
            t.lookup("boss@example.com", false)[0].signer.as_deref(),
            Some("boss@example.com")
        );
        assert_eq!(first("joe@example.com").as_deref(), Some("dom"));
        assert_eq!(first("joe@x.example.com").as_deref(), Some("parent"));
        assert_eq!(first("joe@example.org"), None);
        assert_eq!(t.lookup("boss@example.com", true).len(), 2);
    }

    #[test]
    fn specs() {
        assert_eq!(
            parse_spec("refile:/etc/opendkim/SigningTable").unwrap(),
            (
                TableKind::Refile,
                PathBuf::from("/etc/opendkim/SigningTable")
            )
        );
        assert_eq!(parse_spec("file:/k").unwrap().0, TableKind::File);
        assert_eq!(parse_spec("/k").unwrap().0, TableKind::File);
        assert!(parse_spec("db:/k.db").is_err());
    }
}
