//! TOML loading with errors that name the file and the line, and the value types both
//! daemons' configs share (networks, listen addresses, socket modes, durations).
//!
//! A daemon's config is a `#[derive(Deserialize)]` struct with `deny_unknown_fields`; this
//! module reads it, maps toml's byte span to a line, and leaves cross-field checks to the
//! daemon, which reports them through [`ConfigError::Invalid`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A configuration that could not be read or is invalid; always says where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// TOML syntax or a bad value; `line` is 1-based when toml gave a position.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending item.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A value that parses but contradicts another one.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] for `path`.
    pub fn invalid(path: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// 1-based line number of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .get(..offset.min(text.len()))
        .map(|b| b.iter().filter(|c| **c == b'\n').count() + 1)
        .unwrap_or(1)
}

/// Parses `text` (the content of `path`, which is only used in messages).
pub fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        line: e.span().map(|s| line_of(text, s.start)),
        message: e.message().trim().to_string(),
    })
}

/// Reads and parses a file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// An IP network in CIDR notation (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `addr/prefix`; `None` when the prefix is too long for the family.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// 127.0.0.0/8 and ::1: the host itself.
    pub fn loopback() -> Vec<Cidr> {
        vec![
            Cidr {
                addr: IpAddr::from([127, 0, 0, 0]),
                prefix: 8,
            },
            Cidr {
                addr: IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                prefix: 128,
            },
        ]
    }

    /// True if `ip` is inside this network. IPv4-mapped IPv6 addresses match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A `metrics-listen` address, checked when the file is read (so errors carry the line).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MetricsListen(String);

impl MetricsListen {
    /// The address as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MetricsListen {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match crate::metrics::parse_listen(&s) {
            Ok(_) => Ok(MetricsListen(s)),
            Err(e) => Err(format!("metrics-listen: {e}")),
        }
    }
}

/// Permission bits of a unix socket, written in octal (`"0660"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SocketMode(u32);

impl SocketMode {
    /// The bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl TryFrom<String> for SocketMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let m = s.trim();
        let m = m.strip_prefix("0o").unwrap_or(m);
        u32::from_str_radix(m, 8)
            .ok()
            .filter(|b| *b <= 0o777)
            .map(SocketMode)
            .ok_or_else(|| {
                format!("socket-mode {s:?} must be octal permission bits such as \"0660\"")
            })
    }
}

/// A duration written as a number of seconds (`20`, `0.5`) or with units (`"20s"`,
/// `"500ms"`, `"1m 30s"`), so operators need not remember each option's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "DurationRepr")]
pub struct Span(Duration);

impl Span {
    /// From a [`Duration`].
    pub const fn new(d: Duration) -> Span {
        Span(d)
    }
    /// Whole seconds.
    pub const fn secs(s: u64) -> Span {
        Span(Duration::from_secs(s))
    }
    /// Milliseconds.
    pub const fn millis(ms: u64) -> Span {
        Span(Duration::from_millis(ms))
    }
    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Int(u64),
    Float(f64),
    Text(String),
}

impl TryFrom<DurationRepr> for Span {
    type Error = String;
    fn try_from(r: DurationRepr) -> Result<Self, String> {
        match r {
            DurationRepr::Int(s) => Ok(Span(Duration::from_secs(s))),
            DurationRepr::Float(f) => Duration::try_from_secs_f64(f)
                .map(Span)
                .map_err(|_| format!("duration {f} must be a non-negative number of seconds")),
            DurationRepr::Text(t) => humantime::parse_duration(t.trim())
                .map(Span)
                .map_err(|e| format!("duration {t:?}: {e} (write e.g. \"20s\" or \"500ms\")")),
        }
    }
}

/// The host's name for headers and logs: the FQDN when the resolver library knows one
/// (via `/etc/hostname` plus `/etc/hosts`), else the kernel's host name, else `localhost`.
pub fn hostname() -> String {
    let short = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    if short.contains('.') {
        return short;
    }
    // /etc/hosts lines name the FQDN before the aliases: "127.0.1.1 mx.example.com mx".
    std::fs::read_to_string("/etc/hosts")
        .ok()
        .and_then(|hosts| {
            hosts.lines().find_map(|l| {
                let l = l.split('#').next()?;
                let mut names = l.split_whitespace().skip(1);
                let names: Vec<&str> = names.by_ref().collect();
                names
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(&short))
                    .then(|| {
                        names
                            .iter()
                            .find(|n| n.contains('.'))
                            .map(|n| n.to_string())
                    })
                    .flatten()
            })
        })
        .unwrap_or(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    #[allow(dead_code)] // only parsed
    struct Sample {
        #[serde(default)]
        nets: Vec<Cidr>,
        timeout: Option<Span>,
        mode: Option<SocketMode>,
        listen: Option<MetricsListen>,
    }

    fn p(t: &str) -> Result<Sample, ConfigError> {
        parse(t, Path::new("/etc/x.toml"))
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = p("timeout = 1\n\nnets = [\"10.0.0.0/33\"]\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("/etc/x.toml:3:"), "{s}");
        assert!(s.contains("prefix length"), "{s}");
        let e = p("timeout = 1\nbogus = 2\n").unwrap_err();
        assert!(e.to_string().starts_with("/etc/x.toml:2:"), "{e}");
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = p("mode = \"0999\"").unwrap_err();
        assert!(e.to_string().contains("socket-mode"), "{e}");
        let e = p("\nlisten = \"unix:/run/m.sock\"").unwrap_err();
        assert!(e.to_string().starts_with("/etc/x.toml:2:"), "{e}");
        assert!(e.to_string().contains("TCP only"), "{e}");
        let e = load::<Sample>(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/x.toml: cannot read")
        );
    }

    #[test]
    fn durations_in_any_spelling() {
        let d = |t: &str| p(&format!("timeout = {t}")).map(|s| s.timeout.unwrap().get());
        assert_eq!(d("20").unwrap(), Duration::from_secs(20));
        assert_eq!(d("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(d("\"500ms\"").unwrap(), Duration::from_millis(500));
        assert_eq!(d("\"1m 30s\"").unwrap(), Duration::from_secs(90));
        let e = d("\"soon\"").unwrap_err().to_string();
        assert!(e.starts_with("/etc/x.toml:1:") && e.contains("soon"), "{e}");
        assert!(d("-1.0").is_err());
        assert_eq!(Span::secs(90).to_string(), "1m 30s");
    }

    #[test]
    fn socket_mode_bits() {
        assert_eq!(p("mode = \"0660\"").unwrap().mode.unwrap().bits(), 0o660);
        assert_eq!(p("mode = \"0o600\"").unwrap().mode.unwrap().bits(), 0o600);
    }

    #[test]
    fn cidr_edges() {
        let c: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(c.contains("203.0.113.9".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        assert!(
            "::/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!("300.1.1.1".parse::<Cidr>().is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
        let lo = Cidr::loopback();
        assert!(
            lo.iter()
                .any(|c| c.contains("::ffff:127.0.0.1".parse().unwrap()))
        );
        assert!(!lo.iter().any(|c| c.contains("192.0.2.1".parse().unwrap())));
        assert_eq!(Cidr::new("10.0.0.0".parse().unwrap(), 33), None);
    }

    #[test]
    fn line_of_offsets() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
