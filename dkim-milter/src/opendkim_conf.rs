//! Reads an existing `opendkim.conf` (`--opendkim-config`) and translates it into the
//! equivalent dkim-milter TOML, so a host migrates without retyping anything.
//!
//! The translation is sans-IO: the few things that need the system (dataset files,
//! host names in `InternalHosts`, the host name for `AuthservID HOSTNAME`) come through
//! [`Env`]. The result is a TOML table, parsed by the normal [`Config`] loader, so what
//! `--print-config` shows is exactly what runs. Options without an equivalent give one
//! warning each, naming file and line.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use crate::config::{Cidr, Config, ConfigError};

/// What the translation needs from the system.
pub trait Env {
    /// The content of a dataset file.
    fn read(&self, path: &Path) -> Result<String, String>;
    /// The addresses of a host name (OpenDKIM resolves `InternalHosts` names at start).
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String>;
    /// This host's name, for `AuthservID HOSTNAME`.
    fn hostname(&self) -> String;
}

/// The real system: files, the system resolver (`/etc/hosts` first, per nsswitch).
pub struct SystemEnv;

impl Env for SystemEnv {
    fn read(&self, path: &Path) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        (host, 0)
            .to_socket_addrs()
            .map(|a| a.map(|s| s.ip()).collect())
            .map_err(|e| e.to_string())
    }
    fn hostname(&self) -> String {
        milter_daemon::config::hostname()
    }
}

/// An option that is read but has no (or no exact) equivalent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file (the config, or a dataset file it names).
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What is ignored and why.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.path.display(), self.message),
            l => write!(f, "{}:{l}: {}", self.path.display(), self.message),
        }
    }
}

/// The translated configuration.
#[derive(Debug, Clone)]
pub struct Translation {
    /// The equivalent dkim-milter options.
    pub table: toml::Table,
    /// One per ignored option.
    pub warnings: Vec<Warning>,
    /// The OpenDKIM file it came from.
    pub source: PathBuf,
}

impl Translation {
    /// The TOML text `--print-config` shows.
    pub fn toml(&self) -> String {
        let mut out = format!(
            "# dkim-milter configuration translated from {}\n",
            self.source.display()
        );
        for w in &self.warnings {
            out.push_str(&format!("# warning: {w}\n"));
        }
        out.push_str(&toml::to_string(&self.table).unwrap_or_default());
        out
    }

    /// The [`Config`] it means, checked like a TOML file.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let text = toml::to_string(&self.table).map_err(|e| {
            ConfigError::invalid(&self.source, format!("cannot render the translation: {e}"))
        })?;
        Config::parse(&text, &self.source)
    }
}

/// The `--opendkim-config` file, set once by `main`. A process-wide mark because every
/// later load (the re-read after dropping privileges, each reload) goes through the kit's
/// `Reloadable::build(path)`, which has only the path to go on.
static SOURCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Marks `path` as an OpenDKIM config: [`crate::reload::State::build`] translates it.
pub fn set_source(path: &Path) {
    let _ = SOURCE.set(path.to_path_buf());
}

/// True if `path` is the file given to [`set_source`].
pub fn is_source(path: &Path) -> bool {
    SOURCE.get().is_some_and(|p| p == path)
}

/// Reads and translates `path` with the real system.
pub fn load(path: &Path) -> Result<Translation, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    translate(&text, path, &SystemEnv)
}

/// OpenDKIM's default signed headers: RFC 6376 §5.4.1's "SHOULD" list, as libopendkim's
/// `dkim_should_signhdrs` (dkim-milter's own default adds Message-ID and MIME headers).
pub const OPENDKIM_SIGN_HEADERS: &[&str] = crate::config::RFC6376_SIGN_HEADERS;

/// Options read without effect and why; everything else unknown is also ignored.
const NO_EQUIVALENT: &[(&str, &str)] = &[
    (
        "externalignorelist",
        "only silences OpenDKIM's \"external host tried to send\" log line, which dkim-milter does not write",
    ),
    (
        "syslogsuccess",
        "dkim-milter always logs each signature and verification at info",
    ),
    ("logwhy", "use log-level = \"debug\" for the reasons"),
    ("autorestart", "use systemd's Restart="),
    (
        "autorestartrate",
        "use systemd's StartLimitBurst= and StartLimitIntervalSec=",
    ),
    (
        "trustanchorfile",
        "dkim-milter does not validate DNSSEC; key lookups go to the configured resolver",
    ),
    (
        "background",
        "dkim-milter stays in the foreground (run it under systemd)",
    ),
    (
        "removeoldsignatures",
        "dkim-milter keeps existing signatures (it adds its own at the top)",
    ),
];

#[derive(Clone, Copy)]
struct At<'a> {
    path: &'a Path,
    line: usize,
}

impl At<'_> {
    fn err(self, message: impl Into<String>) -> ConfigError {
        ConfigError::Parse {
            path: self.path.to_path_buf(),
            line: Some(self.line),
            message: message.into(),
        }
    }
    fn warn(self, message: impl Into<String>) -> Warning {
        Warning {
            path: self.path.to_path_buf(),
            line: self.line,
            message: message.into(),
        }
    }
}

/// One entry of a list dataset and where it was written.
struct Item {
    text: String,
    path: PathBuf,
    line: usize,
}

/// Entries of a list dataset: `file:`/`refile:`/a path (first word of each line, `#`
/// comments), `csl:a,b`, or a bare comma-separated list as OpenDKIM reads it.
fn list(value: &str, at: At<'_>, env: &dyn Env) -> Result<Vec<Item>, ConfigError> {
    let file = value
        .strip_prefix("file:")
        .or_else(|| value.strip_prefix("refile:"))
        .or_else(|| value.starts_with('/').then_some(value));
    if let Some(p) = file {
        let path = PathBuf::from(p);
        let text = env.read(&path).map_err(|e| at.err(e))?;
        return Ok(text
            .lines()
            .enumerate()
            .filter_map(|(i, l)| {
                let l = l.split_once('#').map_or(l, |(a, _)| a);
                let word = l.split_whitespace().next()?;
                Some(Item {
                    text: word.to_string(),
                    path: path.clone(),
                    line: i + 1,
                })
            })
            .collect());
    }
    if let Some((kind, _)) = value.split_once(':')
        && [
            "db", "dsn", "ldap", "ldaps", "lua", "memcache", "redis", "mdb",
        ]
        .contains(&kind)
    {
        return Err(at.err(format!(
            "{value:?}: {kind}: datasets are not supported (use file:, refile: or csl:)"
        )));
    }
    let csl = value.strip_prefix("csl:").unwrap_or(value);
    Ok(csl
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Item {
            text: s.to_string(),
            path: at.path.to_path_buf(),
            line: at.line,
        })
        .collect())
}

/// OpenDKIM's booleans: the first letter of true/yes/1 (and on), else false/no/0.
fn boolean(value: &str, at: At<'_>) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" | "on" | "y" | "t" => Ok(true),
        "no" | "false" | "0" | "off" | "n" | "f" => Ok(false),
        _ => Err(at.err(format!("{value:?}: expected yes or no"))),
    }
}

/// A `PeerList`-style network: address, `addr/prefix`, `addr/dotted-mask`, `[v6]`.
fn network(s: &str) -> Option<Cidr> {
    let s = s.trim_start_matches('[').replace(']', "");
    if let Some((a, m)) = s.split_once('/')
        && let Ok(mask) = m.parse::<Ipv4Addr>()
    {
        let bits = u32::from(mask);
        // Only contiguous masks are networks.
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return None;
        }
        return Cidr::new(a.parse().ok()?, bits.leading_ones() as u8);
    }
    s.parse::<Cidr>().ok()
}

/// `InternalHosts`: networks and host names (resolved now, as OpenDKIM does at start),
/// `!` entries excluded.
fn hosts(
    items: Vec<Item>,
    env: &dyn Env,
    warnings: &mut Vec<Warning>,
) -> (Vec<String>, Vec<String>) {
    let (mut inside, mut except) = (Vec::new(), Vec::new());
    for it in items {
        let at = At {
            path: &it.path,
            line: it.line,
        };
        let (neg, entry) = match it.text.strip_prefix('!') {
            Some(e) => (true, e),
            None => (false, it.text.as_str()),
        };
        let nets: Vec<String> = if let Some(c) = network(entry) {
            vec![c.to_string()]
        } else if entry.starts_with('.') || entry.contains('*') {
            warnings.push(at.warn(format!(
                "InternalHosts entry {entry:?}: domain patterns match the client's host name, \
                 which dkim-milter does not use; ignored"
            )));
            continue;
        } else {
            match env.resolve(entry) {
                Ok(ips) if !ips.is_empty() => {
                    let set: BTreeSet<IpAddr> = ips.into_iter().collect();
                    set.into_iter().map(|ip| ip.to_string()).collect()
                }
                Ok(_) | Err(_) => {
                    warnings.push(at.warn(format!(
                        "InternalHosts entry {entry:?} does not resolve now; ignored \
                         (names are resolved at start)"
                    )));
                    continue;
                }
            }
        };
        if neg {
            except.extend(nets);
        } else {
            inside.extend(nets);
        }
    }
    (inside, except)
}

fn strings(v: Vec<String>) -> toml::Value {
    toml::Value::Array(v.into_iter().map(toml::Value::String).collect())
}

/// Adds one option after checking it.
fn put(
    table: &mut toml::Table,
    path: &Path,
    key: &str,
    value: toml::Value,
    line: usize,
) -> Result<(), ConfigError> {
    check(key, &value, At { path, line })?;
    table.insert(key.to_string(), value);
    Ok(())
}

/// Checks one translated option on its own so a bad value names its OpenDKIM line.
fn check(key: &str, value: &toml::Value, at: At<'_>) -> Result<(), ConfigError> {
    let mut t = toml::Table::new();
    t.insert(key.to_string(), value.clone());
    let text = toml::to_string(&t).unwrap_or_default();
    milter_daemon::config::parse::<Config>(&text, at.path)
        .map(drop)
        .map_err(|e| match e {
            ConfigError::Parse { message, .. } => at.err(message),
            other => other,
        })
}

/// Translates OpenDKIM config `text` (from `path`, used in messages).
pub fn translate(text: &str, path: &Path, env: &dyn Env) -> Result<Translation, ConfigError> {
    // (lowercased name, value, line); later lines override earlier ones like OpenDKIM.
    let mut opts: Vec<(String, String, usize)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.split_once('#').map_or(raw, |(a, _)| a).trim();
        if l.is_empty() {
            continue;
        }
        let (k, v) = l
            .split_once(char::is_whitespace)
            .map_or((l, ""), |(k, v)| (k, v.trim()));
        opts.retain(|(n, _, _)| !n.eq_ignore_ascii_case(k));
        opts.push((k.to_ascii_lowercase(), v.to_string(), i + 1));
    }
    let get = |name: &str| opts.iter().find(|(n, _, _)| n == name);
    let at = |line| At { path, line };

    let mut table = toml::Table::new();
    let mut warnings = Vec::new();
    let s = |v: &str| toml::Value::String(v.to_string());

    // OpenDKIM's defaults where they differ from dkim-milter's, so that an option left
    // out means what it meant to OpenDKIM.
    put(&mut table, path, "canonicalization", s("simple/simple"), 0)?;
    put(
        &mut table,
        path,
        "sign-headers",
        strings(
            OPENDKIM_SIGN_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        ),
        0,
    )?;
    put(
        &mut table,
        path,
        "internal-hosts",
        strings(vec!["127.0.0.1".into()]),
        0,
    )?;
    put(&mut table, path, "mode", s("sign+verify"), 0)?;

    let simple = ["domain", "selector", "keyfile"];
    let mut on_key_error = None;
    for (name, value, line) in &opts {
        let (line, value) = (*line, value.as_str());
        let a = at(line);
        match name.as_str() {
            "socket" => put(&mut table, path, "socket", s(value), line)?,
            "mode" => {
                let mut m: Vec<char> = value.to_ascii_lowercase().chars().collect();
                m.sort_unstable();
                let mode = match m.as_slice() {
                    ['s'] => "sign",
                    ['v'] => "verify",
                    ['s', 'v'] => "sign+verify",
                    _ => return Err(a.err(format!("Mode {value:?}: expected s, v or sv"))),
                };
                put(&mut table, path, "mode", s(mode), line)?;
            }
            "canonicalization" => put(&mut table, path, "canonicalization", s(value), line)?,
            "keytable" => put(&mut table, path, "key-table", s(value), line)?,
            "signingtable" => put(&mut table, path, "signing-table", s(value), line)?,
            "subdomains" => put(
                &mut table,
                path,
                "sign-subdomains",
                toml::Value::Boolean(boolean(value, a)?),
                line,
            )?,
            "multiplesignatures" => put(
                &mut table,
                path,
                "multiple-signatures",
                toml::Value::Boolean(boolean(value, a)?),
                line,
            )?,
            "signheaders" | "oversignheaders" => {
                let key = if name == "signheaders" {
                    "sign-headers"
                } else {
                    "oversign-headers"
                };
                let mut hs: Vec<String> =
                    list(value, a, env)?.into_iter().map(|i| i.text).collect();
                // OpenDKIM adds From, which RFC 6376 requires, to SignHeaders itself.
                if key == "sign-headers" && !hs.iter().any(|h| h.eq_ignore_ascii_case("from")) {
                    hs.insert(0, "From".into());
                }
                put(&mut table, path, key, strings(hs), line)?;
            }
            "internalhosts" => {
                let (inside, except) = hosts(list(value, a, env)?, env, &mut warnings);
                put(&mut table, path, "internal-hosts", strings(inside), line)?;
                if !except.is_empty() {
                    put(
                        &mut table,
                        path,
                        "internal-hosts-except",
                        strings(except),
                        line,
                    )?;
                }
            }
            "minimumkeybits" => {
                let bits: i64 = value
                    .parse()
                    .map_err(|_| a.err(format!("MinimumKeyBits {value:?}: expected a number")))?;
                put(
                    &mut table,
                    path,
                    "minimum-key-bits",
                    toml::Value::Integer(bits),
                    line,
                )?;
            }
            "requiresafekeys" => {
                let v = if boolean(value, a)? { "refuse" } else { "warn" };
                put(&mut table, path, "key-permissions", s(v), line)?;
            }
            "authservid" => {
                let id = if value == "HOSTNAME" {
                    env.hostname()
                } else {
                    value.to_string()
                };
                put(&mut table, path, "authserv-id", s(&id), line)?;
            }
            "userid" => {
                put(&mut table, path, "user", s(value), line)?;
            }
            "pidfile" => put(&mut table, path, "pid-file", s(value), line)?,
            "umask" => {} // with the socket, below
            "syslog" => {
                let v = if boolean(value, a)? {
                    "syslog"
                } else {
                    "stderr"
                };
                put(&mut table, path, "log-target", s(v), line)?;
            }
            "syslogfacility" => put(&mut table, path, "syslog-facility", s(value), line)?,
            "alwaysaddarheader" => {
                if !boolean(value, a)? {
                    warnings.push(a.warn(
                        "AlwaysAddARHeader no: dkim-milter always adds Authentication-Results \
                         (dkim=none for unsigned mail)",
                    ));
                }
            }
            "removeoldsignatures" if !boolean(value, a)? => {}
            // dkim-milter signs rsa-sha256 (plus ed25519-sha256 where such a key exists).
            "signaturealgorithm" if value.eq_ignore_ascii_case("rsa-sha256") => {}
            n if simple.contains(&n) => {}
            n if n.starts_with("on-") => {
                let act = value.to_ascii_lowercase();
                let act = match act.chars().next() {
                    Some('a') => "accept",
                    Some('t') => "tempfail",
                    Some('r') => "reject",
                    Some('d') => "discard",
                    Some('q') => "quarantine",
                    _ => return Err(a.err(format!("{n} {value:?}: unknown action"))),
                };
                let orig = &raw_name(text, line);
                match n {
                    // A key that cannot be used to sign: dkim-milter's on-key-error.
                    "on-signatureerror" | "on-default" if matches!(act, "accept" | "tempfail") => {
                        if n == "on-signatureerror" || on_key_error.is_none() {
                            on_key_error = Some((act, line));
                        }
                        if n == "on-default" && act != "accept" {
                            warnings.push(a.warn(format!(
                                "{orig} {value}: applied to signing key errors only; \
                                 verification results never reject in dkim-milter"
                            )));
                        }
                    }
                    "on-badsignature" | "on-dnserror" | "on-keynotfound" | "on-nosignature"
                    | "on-security" | "on-default"
                        if act == "accept" => {}
                    _ => warnings.push(a.warn(format!(
                        "{orig} {value}: no equivalent; dkim-milter accepts verified mail and \
                         records the result in Authentication-Results"
                    ))),
                }
            }
            n => {
                let why = NO_EQUIVALENT
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map_or("no dkim-milter equivalent", |(_, w)| w);
                warnings.push(a.warn(format!("{} ignored: {why}", raw_name(text, line))));
            }
        }
    }
    if let Some((act, line)) = on_key_error {
        put(&mut table, path, "on-key-error", s(act), line)?;
    }

    // UMask: OpenDKIM creates its socket with mode 0777 & ~UMask.
    if let Some((_, v, line)) = get("umask") {
        let a = at(*line);
        let mask = u32::from_str_radix(v.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| a.err(format!("UMask {v:?}: expected an octal mask such as 007")))?;
        let unix = table
            .get("socket")
            .and_then(toml::Value::as_str)
            .is_some_and(|s| {
                s.starts_with("local:") || s.starts_with("unix:") || s.starts_with('/')
            });
        if unix {
            put(
                &mut table,
                path,
                "socket-mode",
                s(&format!("{:04o}", 0o777 & !mask)),
                *line,
            )?;
        } else {
            warnings.push(a.warn(
                "UMask ignored: it only sets the permissions of a local: socket here \
                 (dkim-milter writes its pid file 0644)",
            ));
        }
    }

    // Simple mode: Domain + Selector + KeyFile, when no KeyTable.
    let (d, sel, kf) = (get("domain"), get("selector"), get("keyfile"));
    if get("keytable").is_some() {
        for o in [d, sel, kf].into_iter().flatten() {
            warnings.push(at(o.2).warn(format!(
                "{} ignored: a KeyTable is set (as in OpenDKIM)",
                raw_name(text, o.2)
            )));
        }
    } else if let (Some(d), Some(sel), Some(kf)) = (d, sel, kf) {
        if !kf.1.starts_with('/') {
            return Err(at(kf.2).err(format!("KeyFile {:?}: must be an absolute path", kf.1)));
        }
        let domains = list(&d.1, at(d.2), env)?;
        let subs = table
            .get("sign-subdomains")
            .and_then(toml::Value::as_bool)
            .unwrap_or(false);
        let (mut keys, mut signing) = (Vec::new(), Vec::new());
        for (n, dom) in domains.iter().enumerate() {
            let dom = dom.text.to_ascii_lowercase();
            if dom.contains([',', '=', ':']) || dom.is_empty() {
                return Err(at(d.2).err(format!("Domain {dom:?}: not a domain name")));
            }
            keys.push(format!("key{n}={dom}:{}:{}", sel.1, kf.1));
            signing.push(format!("{dom}=key{n}"));
            if subs {
                signing.push(format!(".{dom}=key{n}"));
            }
        }
        if kf.1.contains(',') {
            return Err(at(kf.2).err("KeyFile: a path with a comma cannot be used"));
        }
        put(
            &mut table,
            path,
            "key-table",
            s(&format!("csl:{}", keys.join(","))),
            kf.2,
        )?;
        put(
            &mut table,
            path,
            "signing-table",
            s(&format!("csl:{}", signing.join(","))),
            d.2,
        )?;
    } else if let Some(o) = d.or(sel).or(kf) {
        return Err(at(o.2).err("Domain, Selector and KeyFile must be set together"));
    }
    if table.contains_key("key-table") != table.contains_key("signing-table") {
        let line = get("keytable").or(get("signingtable")).map_or(0, |o| o.2);
        return Err(at(line).err("KeyTable and SigningTable must be set together"));
    }
    if !table.contains_key("key-table")
        && table
            .get("mode")
            .and_then(toml::Value::as_str)
            .is_some_and(|m| m != "verify")
    {
        warnings.push(at(get("mode").map_or(0, |o| o.2)).warn(
            "no KeyTable/SigningTable and no Domain/Selector/KeyFile: keys come from \
             keys-dir (/etc/opendkim/keys/{domain}/{selector}.private)",
        ));
    }

    // Warn once per option (a repeated option was already reduced to its last line).
    Ok(Translation {
        table,
        warnings,
        source: path.to_path_buf(),
    })
}

/// The option name as written on `line`, for messages.
fn raw_name(text: &str, line: usize) -> String {
    text.lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Files and host names from maps: no system access.
    struct Fake {
        files: BTreeMap<PathBuf, String>,
        hosts: BTreeMap<String, Vec<IpAddr>>,
    }

    impl Env for Fake {
        fn read(&self, path: &Path) -> Result<String, String> {
            self.files
                .get(path)
                .cloned()
                .ok_or_else(|| format!("cannot read {}", path.display()))
        }
        fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
            self.hosts
                .get(host)
                .cloned()
                .ok_or_else(|| "NXDOMAIN".into())
        }
        fn hostname(&self) -> String {
            "mx.example.net".into()
        }
    }

    fn fake() -> Fake {
        Fake {
            files: BTreeMap::from([(
                PathBuf::from("/etc/opendkim/TrustedHosts"),
                "# panel\n127.0.0.1\nmail.example.com\n10.0.0.0/8\n!10.9.0.0/16\n.example.org\nnowhere.invalid\n"
                    .to_string(),
            )]),
            hosts: BTreeMap::from([(
                "mail.example.com".to_string(),
                vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()],
            )]),
        }
    }

    fn tr(text: &str) -> Result<(Translation, Config), ConfigError> {
        let t = translate(text, Path::new("/etc/opendkim.conf"), &fake())?;
        let c = t.config()?;
        Ok((t, c))
    }

    #[test]
    fn simple_mode_and_opendkim_defaults() {
        let (t, c) = tr(
            "Domain example.com,example.org\nSelector mail\nKeyFile /etc/dkimkeys/mail.private\n\
             SubDomains yes\n",
        )
        .unwrap();
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert_eq!(
            c.key_table.as_deref(),
            Some(
                "csl:key0=example.com:mail:/etc/dkimkeys/mail.private,\
                 key1=example.org:mail:/etc/dkimkeys/mail.private"
            )
        );
        assert_eq!(
            c.signing_table.as_deref(),
            Some("csl:example.com=key0,.example.com=key0,example.org=key1,.example.org=key1")
        );
        // OpenDKIM's defaults, not dkim-milter's.
        assert_eq!(c.canonicalization.header, crate::config::Canon::Simple);
        assert_eq!(c.canonicalization.body, crate::config::Canon::Simple);
        assert_eq!(c.sign_headers.len(), OPENDKIM_SIGN_HEADERS.len());
        assert!(c.is_internal("127.0.0.1".parse().unwrap()));
        assert!(!c.is_internal("127.0.0.2".parse().unwrap()));
        // The csl: tables load as tables.
        let (kt, _) = crate::tables::KeyTable::load(c.key_table.as_deref().unwrap()).unwrap();
        assert_eq!(kt.get("key1").unwrap().domain, "example.org");
        let (st, _) =
            crate::tables::SigningTable::load(c.signing_table.as_deref().unwrap()).unwrap();
        assert_eq!(st.entries.len(), 4);
        assert_eq!(st.entries[1].pattern, ".example.com");
    }

    #[test]
    fn internal_hosts_dataset() {
        let (t, c) = tr("KeyTable /k\nSigningTable refile:/s\n\
                         InternalHosts refile:/etc/opendkim/TrustedHosts\n")
        .unwrap();
        for (ip, want) in [
            ("127.0.0.1", true),
            ("192.0.2.10", true),
            ("2001:db8::10", true),
            ("10.1.2.3", true),
            ("10.9.1.1", false),
            ("192.0.2.11", false),
        ] {
            assert_eq!(c.is_internal(ip.parse().unwrap()), want, "{ip}");
        }
        let w: Vec<String> = t.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("/etc/opendkim/TrustedHosts:6: InternalHosts entry \".example.org\"")
        );
        assert!(
            w[1].starts_with(
                "/etc/opendkim/TrustedHosts:7: InternalHosts entry \"nowhere.invalid\""
            )
        );
        // Inline lists, dotted masks.
        let (_, c) =
            tr("KeyTable /k\nSigningTable /s\nInternalHosts 192.168.0.0/255.255.0.0, ::1\n")
                .unwrap();
        assert!(c.is_internal("192.168.7.7".parse().unwrap()));
        assert!(c.is_internal("::1".parse().unwrap()));
        // A missing dataset file names the config line.
        let e = tr("Mode s\nInternalHosts file:/nope\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/opendkim.conf:2:"), "{e}");
    }

    #[test]
    fn options_map_and_warn_once() {
        let (t, c) = tr(
            "Socket local:/run/opendkim/opendkim.sock\nUMask 007\nUserID opendkim\n\
             Mode v\nAuthservID HOSTNAME\nMinimumKeyBits 2048\nRequireSafeKeys no\n\
             Syslog yes\nSyslogFacility local3\nOn-Default accept\nOn-SignatureError tempfail\n\
             On-BadSignature reject\nAlwaysAddARHeader yes\nRemoveOldSignatures no\n\
             SignHeaders Subject,Date\nOversignHeaders From,Subject\n\
             LogWhy yes\nLogWhy no\nBogusOption 1\n",
        )
        .unwrap();
        assert_eq!(c.socket, "local:/run/opendkim/opendkim.sock");
        assert_eq!(c.socket_mode_bits(), Some(0o770));
        assert_eq!(c.user.as_deref(), Some("opendkim"));
        assert_eq!(c.mode, crate::config::Mode::Verify);
        assert_eq!(c.authserv_id.as_deref(), Some("mx.example.net"));
        assert_eq!(c.minimum_key_bits, 2048);
        assert_eq!(c.key_permissions, crate::config::KeyPermissions::Warn);
        assert_eq!(c.log_target, crate::config::LogTarget::Syslog);
        assert_eq!(c.syslog_facility, crate::config::SyslogFacility::Local3);
        assert_eq!(c.on_key_error, crate::config::OnKeyError::Tempfail);
        assert_eq!(c.sign_headers, ["From", "Subject", "Date"]);
        assert_eq!(c.oversign_headers, ["From", "Subject"]);
        let w: Vec<String> = t.warnings.iter().map(|w| w.to_string()).collect();
        // LogWhy twice: one warning, for the line that counts.
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w.iter()
                .any(|w| w.starts_with("/etc/opendkim.conf:12: On-BadSignature reject"))
        );
        assert!(
            w.iter()
                .any(|w| w.starts_with("/etc/opendkim.conf:18: LogWhy ignored"))
        );
        assert!(
            w.iter()
                .any(|w| w.starts_with("/etc/opendkim.conf:19: BogusOption ignored"))
        );
        let toml = t.toml();
        assert!(toml.contains("socket-mode = \"0770\""), "{toml}");
        assert!(
            toml.contains("# warning: /etc/opendkim.conf:19: BogusOption"),
            "{toml}"
        );

        let (_, c) = tr("On-Default accept\nKeyTable /k\nSigningTable /s\n").unwrap();
        assert_eq!(c.on_key_error, crate::config::OnKeyError::Accept);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, needle) in [
            ("Syslog yes\nMode x\n", 2, "Mode"),
            ("Syslog maybe\n", 1, "yes or no"),
            ("Canonicalization relaxed/loose\n", 1, "canonicalization"),
            ("MinimumKeyBits lots\n", 1, "MinimumKeyBits"),
            ("Socket local:/x\nUMask 9\n", 2, "UMask"),
            ("Domain example.com\nSelector s\n", 1, "together"),
            (
                "Domain example.com\nSelector s\nKeyFile rel.key\n",
                3,
                "absolute",
            ),
            ("Mode s\nKeyTable /k\n", 2, "SigningTable"),
            ("InternalHosts ldap://x/y\n", 1, "not supported"),
            ("On-Default shrug\n", 1, "unknown action"),
        ] {
            let e = tr(text).map(|_| ()).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("/etc/opendkim.conf:{line}:")) && e.contains(needle),
                "{text:?}: {e}"
            );
        }
    }
}
