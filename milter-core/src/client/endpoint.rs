//! Milter addresses: the same forms the server listens on (`inet:host:port`,
//! `inet:port@host`, `inet6:...`, `unix:/path`, `local:/path`), parsed by the one
//! [`Endpoint`] parser the server uses, so both sides agree.

pub use crate::address::Endpoint;
use crate::error::Error;

/// Parses a milter address to connect to; port 0 (bind-only) is refused.
pub fn parse_connect(spec: &str) -> Result<Endpoint, Error> {
    let ep = Endpoint::parse(spec)?;
    if let Endpoint::Tcp { port: 0, .. } = ep {
        return Err(Error::Address {
            spec: spec.to_owned(),
            reason: "cannot connect to port 0".to_owned(),
        });
    }
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(spec: &str) -> (String, u16) {
        match parse_connect(spec).unwrap() {
            Endpoint::Tcp { host, port, .. } => (host, port),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn forms() {
        assert_eq!(tcp("inet:127.0.0.1:8891"), ("127.0.0.1".into(), 8891));
        assert_eq!(tcp("inet:8891@127.0.0.1"), ("127.0.0.1".into(), 8891));
        assert_eq!(tcp("inet6:[::1]:11332"), ("::1".into(), 11332));
        assert_eq!(
            parse_connect("unix:/run/m.sock").unwrap(),
            Endpoint::Unix("/run/m.sock".into())
        );
        for bad in ["", "inet:", "inet:h:0", "inet:h:x", "unix:"] {
            assert!(parse_connect(bad).is_err(), "{bad}");
        }
    }
}
