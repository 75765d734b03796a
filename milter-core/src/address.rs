//! Socket addresses in the forms MTAs and milters write them, shared by the server (where
//! it listens) and the client (where it connects), so both sides parse one syntax.
//!
//! Accepted forms: `inet:HOST:PORT`, `inet:PORT@HOST` (OpenDKIM, libmilter),
//! `inet6:PORT@HOST`, `inet6:[ADDR]:PORT`, `inet:PORT` (all interfaces), `[::1]:PORT`,
//! `HOST:PORT`, `unix:/path`, `local:/path` and a bare `/path`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;

/// A socket address in milter syntax: where the server listens, or where the client
/// connects. More forms may come (hence `non_exhaustive`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// A TCP socket; `host` is an address or a name resolved at bind time.
    Tcp {
        /// Host name or address, without brackets.
        host: String,
        /// Port (0 picks a free one; the server reports the one it got).
        port: u16,
        /// `inet6:` was given: bind an IPv6 address only.
        ipv6: bool,
    },
    /// A unix-domain socket at this path.
    Unix(PathBuf),
}

pub(crate) fn bad(spec: &str, reason: impl Into<String>) -> Error {
    Error::Address {
        spec: spec.to_owned(),
        reason: reason.into(),
    }
}

impl Endpoint {
    /// Parses a listen address (see the module docs for the forms).
    pub fn parse(spec: &str) -> Result<Endpoint, Error> {
        let s = spec.trim();
        if let Some(path) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("local:")) {
            if path.is_empty() {
                return Err(bad(spec, "empty socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        let (rest, ipv6) = if let Some(r) = s.strip_prefix("inet6:") {
            (r, true)
        } else if let Some(r) = s.strip_prefix("inet:") {
            (r, false)
        } else if s.contains(':') {
            (s, false)
        } else {
            return Err(bad(
                spec,
                "expected inet:HOST:PORT, inet:PORT@HOST, inet6:PORT@HOST, [ADDR]:PORT, HOST:PORT, unix:/path or local:/path",
            ));
        };
        let (host, port) = if let Some((port, host)) = rest.split_once('@') {
            (host, port)
        } else if let Some(inner) = rest.strip_prefix('[') {
            let (addr, port) = inner
                .split_once("]:")
                .ok_or_else(|| bad(spec, "expected [ADDR]:PORT"))?;
            (addr, port)
        } else if rest.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty() {
            (if ipv6 { "::" } else { "0.0.0.0" }, rest)
        } else {
            rest.rsplit_once(':')
                .ok_or_else(|| bad(spec, "missing :PORT"))?
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad(spec, "empty host"));
        }
        if host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
            return Err(bad(spec, "host contains a space, '/' or '@'"));
        }
        let port: u16 = port.parse().map_err(|_| {
            bad(
                spec,
                format!("port {port:?} is not a number from 0 to 65535"),
            )
        })?;
        Ok(Endpoint::Tcp {
            host: host.to_owned(),
            port,
            ipv6,
        })
    }
}

impl FromStr for Endpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Endpoint, Error> {
        Endpoint::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port, ipv6 } => {
                let scheme = if *ipv6 { "inet6" } else { "inet" };
                if host.contains(':') {
                    write!(f, "{scheme}:[{host}]:{port}")
                } else {
                    write!(f, "{scheme}:{host}:{port}")
                }
            }
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}
