//! Milter addresses in the forms Postfix and libmilter use: `inet:host:port`,
//! `inet:port@host`, `inet6:...`, `unix:/path`, `local:/path`.
//!
//! The server's endpoint parser had not landed when this was written; this small parser
//! covers the connect side only.

use std::path::PathBuf;

use crate::error::Error;

/// Where a milter listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP host (name or address, without brackets) and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix-domain socket path.
    Unix(PathBuf),
}

fn bad(spec: &str, reason: &str) -> Error {
    Error::Address {
        spec: spec.to_owned(),
        reason: reason.to_owned(),
    }
}

impl Endpoint {
    /// Parses a milter address.
    pub fn parse(spec: &str) -> Result<Endpoint, Error> {
        let s = spec.trim();
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| bad(spec, "expected inet:, inet6:, unix: or local:"))?;
        match kind.to_ascii_lowercase().as_str() {
            "unix" | "local" => {
                if rest.is_empty() {
                    return Err(bad(spec, "empty socket path"));
                }
                Ok(Endpoint::Unix(PathBuf::from(rest)))
            }
            "inet" | "inet6" => {
                let (host, port) = if let Some((port, host)) = rest.split_once('@') {
                    (host, port)
                } else if let Some(r) = rest.strip_prefix('[') {
                    let (host, port) = r
                        .split_once("]:")
                        .ok_or_else(|| bad(spec, "expected [address]:port"))?;
                    (host, port)
                } else {
                    rest.rsplit_once(':')
                        .ok_or_else(|| bad(spec, "expected host:port or port@host"))?
                };
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(bad(spec, "empty host"));
                }
                let port = port
                    .parse::<u16>()
                    .map_err(|_| bad(spec, "port is not a number from 1 to 65535"))?;
                if port == 0 {
                    return Err(bad(spec, "port 0"));
                }
                Ok(Endpoint::Tcp {
                    host: host.to_owned(),
                    port,
                })
            }
            _ => Err(bad(spec, "expected inet:, inet6:, unix: or local:")),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Endpoint, Error> {
        Endpoint::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(h: &str, p: u16) -> Endpoint {
        Endpoint::Tcp {
            host: h.into(),
            port: p,
        }
    }

    #[test]
    fn forms() {
        assert_eq!(
            Endpoint::parse("inet:127.0.0.1:8891").unwrap(),
            tcp("127.0.0.1", 8891)
        );
        assert_eq!(
            Endpoint::parse("inet:8891@127.0.0.1").unwrap(),
            tcp("127.0.0.1", 8891)
        );
        assert_eq!(
            Endpoint::parse("inet6:[::1]:11332").unwrap(),
            tcp("::1", 11332)
        );
        assert_eq!(
            Endpoint::parse("inet6:11332@[::1]").unwrap(),
            tcp("::1", 11332)
        );
        assert_eq!(
            Endpoint::parse("unix:/run/m.sock").unwrap(),
            Endpoint::Unix("/run/m.sock".into())
        );
        assert_eq!(
            Endpoint::parse("local:/run/m.sock").unwrap(),
            Endpoint::Unix("/run/m.sock".into())
        );
        for bad in [
            "",
            "inet:",
            "inet:host",
            "inet:h:0",
            "inet:h:x",
            "tcp:h:1",
            "unix:",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
