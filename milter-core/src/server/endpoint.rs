//! Listen addresses in the forms MTAs and milters write them, and binding them.
//!
//! Accepted forms: `inet:HOST:PORT`, `inet:PORT@HOST` (OpenDKIM, libmilter),
//! `inet6:PORT@HOST`, `inet6:[ADDR]:PORT`, `inet:PORT` (all interfaces), `[::1]:PORT`,
//! `HOST:PORT`, `unix:/path`, `local:/path` and a bare `/path`.
//!
//! Instead of an address the server also takes a socket that is already listening
//! ([`Inherited`]): one systemd passes by socket activation ([`systemd_listeners`]), or one
//! the caller bound or received. The socket outlives the process's restarts, so the MTA
//! never finds nothing listening.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

use crate::error::Error;

pub use crate::address::Endpoint;
use crate::address::bad;

/// How unix-domain sockets are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocketOptions {
    /// Permission bits set after binding (e.g. `0o660` so the MTA's group can connect).
    pub mode: Option<u32>,
    /// Owner, by user name or numeric id.
    pub owner: Option<String>,
    /// Group, by group name or numeric id.
    pub group: Option<String>,
    /// Remove a leftover socket file when nothing answers on it (a crashed predecessor).
    /// A socket someone still listens on is never removed.
    pub remove_stale: bool,
}

impl Default for UnixSocketOptions {
    fn default() -> Self {
        UnixSocketOptions {
            mode: None,
            owner: None,
            group: None,
            remove_stale: true,
        }
    }
}

/// An address the server is bound to (more kinds of socket may come).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BoundAddr {
    /// A TCP address (with the real port when 0 was asked for).
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl fmt::Display for BoundAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoundAddr::Tcp(a) => write!(f, "inet:{a}"),
            BoundAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A bound listener; a unix socket file is removed when this is dropped (if it is still
/// the file we created).
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

impl Listener {
    pub(crate) fn local_addr(&self) -> BoundAddr {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => BoundAddr::Tcp(a),
                Err(_) => BoundAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], 0))),
            },
            Listener::Unix(_, f) => BoundAddr::Unix(f.path.clone()),
        }
    }
}

/// Our socket file: removed on drop if it is still the inode we bound.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && Some((m.dev(), m.ino())) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn io_err(spec: &Endpoint, what: &str, e: io::Error) -> Error {
    Error::Address {
        spec: spec.to_string(),
        reason: format!("{what}: {e}"),
    }
}

pub(crate) async fn bind(ep: &Endpoint, opts: &UnixSocketOptions) -> Result<Listener, Error> {
    match ep {
        Endpoint::Tcp { host, port, ipv6 } => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| io_err(ep, "cannot resolve host", e))?
                .filter(|a| !*ipv6 || a.is_ipv6())
                .collect();
            let mut last = None;
            for a in addrs {
                match TcpListener::bind(a).await {
                    Ok(l) => return Ok(Listener::Tcp(l)),
                    Err(e) => last = Some(e),
                }
            }
            Err(match last {
                Some(e) => io_err(ep, "cannot bind", e),
                None => bad(&ep.to_string(), "host has no usable address"),
            })
        }
        Endpoint::Unix(path) => bind_unix(ep, path, opts),
    }
}

fn bind_unix(ep: &Endpoint, path: &Path, opts: &UnixSocketOptions) -> Result<Listener, Error> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(bad(
                &ep.to_string(),
                "path exists and is not a socket; not removing it",
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(bad(
                    &ep.to_string(),
                    "socket is already in use by another process",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                if !opts.remove_stale {
                    return Err(bad(
                        &ep.to_string(),
                        "a stale socket file exists (nothing listens on it) and remove_stale is off",
                    ));
                }
                std::fs::remove_file(path)
                    .map_err(|e| io_err(ep, "cannot remove stale socket", e))?;
                tracing::info!(path = %path.display(), "removed stale socket file");
            }
            Err(e) => return Err(io_err(ep, "cannot probe existing socket", e)),
        }
    }
    // Resolve names before binding, so a typo leaves no socket behind.
    let uid = match &opts.owner {
        Some(o) => Some(
            resolve_id(o, IdKind::User)
                .ok_or_else(|| bad(&ep.to_string(), format!("unknown socket owner {o:?}")))?,
        ),
        None => None,
    };
    let gid = match &opts.group {
        Some(g) => Some(
            resolve_id(g, IdKind::Group)
                .ok_or_else(|| bad(&ep.to_string(), format!("unknown socket group {g:?}")))?,
        ),
        None => None,
    };
    let listener = bind_staged(path, |at| {
        if let Some(mode) = opts.mode {
            std::fs::set_permissions(at, std::fs::Permissions::from_mode(mode))
                .map_err(|e| ("cannot set socket mode", e))?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::chown(at, uid, gid)
                .map_err(|e| ("cannot change socket owner/group", e))?;
        }
        Ok(())
    })
    .map_err(|(what, e)| io_err(ep, what, e))?;
    let meta = std::fs::symlink_metadata(path).ok();
    let file = SocketFile {
        path: path.to_owned(),
        id: meta.map(|m| (m.dev(), m.ino())),
    };
    Ok(Listener::Unix(listener, file))
}

/// A listening socket handed to the server ready-made, instead of an address to bind.
///
/// A unix socket file of an inherited listener belongs to whoever created it (systemd):
/// the server never removes it, so the next process finds it in place.
#[derive(Debug)]
#[non_exhaustive]
pub enum Inherited {
    /// A listening TCP socket.
    Tcp(std::net::TcpListener),
    /// A listening unix-domain stream socket.
    Unix(std::os::unix::net::UnixListener),
}

impl From<std::net::TcpListener> for Inherited {
    fn from(l: std::net::TcpListener) -> Inherited {
        Inherited::Tcp(l)
    }
}

impl From<std::os::unix::net::UnixListener> for Inherited {
    fn from(l: std::os::unix::net::UnixListener) -> Inherited {
        Inherited::Unix(l)
    }
}

fn inherited_err(what: impl fmt::Display, reason: impl fmt::Display) -> Error {
    Error::Address {
        spec: what.to_string(),
        reason: format!("inherited socket: {reason}"),
    }
}

impl Inherited {
    /// Takes a file descriptor that must be a listening stream socket (TCP or unix), as a
    /// supervisor hands it over; anything else is refused, naming what it is.
    pub fn from_fd(fd: OwnedFd) -> Result<Inherited, Error> {
        use std::os::fd::AsRawFd;
        let raw = fd.as_raw_fd();
        let what = format!("fd {raw}");
        let sock = socket2::Socket::from(fd);
        let ty = sock
            .r#type()
            .map_err(|e| inherited_err(&what, format!("not a socket ({e})")))?;
        if ty != socket2::Type::STREAM {
            return Err(inherited_err(&what, "not a stream socket"));
        }
        match sock.is_listener() {
            Ok(true) => {}
            Ok(false) => return Err(inherited_err(&what, "the socket is not listening")),
            Err(e) => return Err(inherited_err(&what, e)),
        }
        let addr = sock
            .local_addr()
            .map_err(|e| inherited_err(&what, format!("no local address ({e})")))?;
        if addr.as_socket().is_some() {
            Ok(Inherited::Tcp(sock.into()))
        } else if addr.is_unix() {
            Ok(Inherited::Unix(sock.into()))
        } else {
            Err(inherited_err(&what, "neither a TCP nor a unix socket"))
        }
    }

    /// Where it listens.
    pub fn local_addr(&self) -> BoundAddr {
        match self {
            Inherited::Tcp(l) => BoundAddr::Tcp(
                l.local_addr()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            ),
            Inherited::Unix(l) => BoundAddr::Unix(
                l.local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(Path::to_owned))
                    .unwrap_or_default(),
            ),
        }
    }
}

/// The listening sockets systemd passed by socket activation (`LISTEN_FDS`, for this
/// process by `LISTEN_PID`), each with its name from `LISTEN_FDNAMES` (`FileDescriptorName=`
/// of the .socket unit; systemd's default is the unit's name). Empty when there are none.
///
/// The sockets are taken once per process: the variables are removed, so a second call
/// (or a child process) finds none. A passed descriptor that is not a listening TCP or
/// unix stream socket is an error.
pub fn systemd_listeners() -> Result<Vec<(String, Inherited)>, Error> {
    // listenfd owns the unsafe part (turning the passed fd numbers into owned sockets,
    // each at most once, then removing LISTEN_FDS/LISTEN_PID) and checks LISTEN_PID; the
    // names it does not read. LISTEN_FDNAMES stays set (removing a variable is unsafe
    // in edition 2024, and without LISTEN_FDS it means nothing).
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::with_capacity(fds.len().min(64));
    for i in 0..fds.len() {
        let name = names.get(i).cloned().unwrap_or_default();
        let what = format!("LISTEN_FDS socket {} ({name:?})", i + 3);
        let taken = match fds.take_tcp_listener(i) {
            Ok(Some(l)) => Inherited::Tcp(l),
            Ok(None) => continue,
            Err(_) => match fds.take_unix_listener(i) {
                Ok(Some(l)) => Inherited::Unix(l),
                Ok(None) => continue,
                Err(e) => return Err(inherited_err(&what, e)),
            },
        };
        out.push((name, taken));
    }
    Ok(out)
}

/// A tokio listener (non-blocking, registered) on a duplicate of an inherited socket's
/// descriptor; the original closes with its owner, the socket stays open until both have.
pub(crate) fn adopt(l: &Inherited) -> Result<Listener, Error> {
    let addr = l.local_addr();
    let err = |e: io::Error| inherited_err(&addr, e);
    match l {
        Inherited::Tcp(l) => {
            let l = l.try_clone().map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            Ok(Listener::Tcp(TcpListener::from_std(l).map_err(err)?))
        }
        Inherited::Unix(l) => {
            let l = l.try_clone().map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            let path = match &addr {
                BoundAddr::Unix(p) => p.clone(),
                BoundAddr::Tcp(_) => PathBuf::new(),
            };
            // No inode recorded: never removed on drop, the file is not ours.
            let file = SocketFile { path, id: None };
            Ok(Listener::Unix(
                UnixListener::from_std(l).map_err(err)?,
                file,
            ))
        }
    }
}

type StageError = (&'static str, io::Error);

/// Binds the socket in a private (0700) directory beside `path`, lets `prepare` set its mode
/// and owner there, then renames it into place: nobody can connect while it still has the
/// umask's permissions. Where the staging path would be too long for a socket address, it
/// binds in place and prepares afterwards.
fn bind_staged(
    path: &Path,
    prepare: impl Fn(&Path) -> Result<(), StageError>,
) -> Result<UnixListener, StageError> {
    use std::os::unix::fs::DirBuilderExt;

    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = parent.join(format!(".milter-bind-{}", std::process::id()));
    let staged = staging.join("s");
    // sun_path holds 108 bytes including the NUL.
    if staged.as_os_str().len() >= 108 {
        let listener = UnixListener::bind(path).map_err(|e| ("cannot bind", e))?;
        prepare(path)?;
        return Ok(listener);
    }
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| ("cannot create the staging directory", e))?;
    let result = (|| {
        let listener = UnixListener::bind(&staged).map_err(|e| ("cannot bind", e))?;
        prepare(&staged)?;
        std::fs::rename(&staged, path).map_err(|e| ("cannot move the socket into place", e))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Which name service database [`resolve_id`] asks.
#[derive(Debug, Clone, Copy)]
enum IdKind {
    User,
    Group,
}

/// A numeric id, or a name looked up through the system's NSS (`getpwnam_r` /
/// `getgrnam_r` via `nix`), so LDAP, SSSD or systemd-userdb accounts resolve as they do
/// for every other program; a lookup error is logged and treated as unknown.
fn resolve_id(name: &str, kind: IdKind) -> Option<u32> {
    if let Ok(id) = name.parse() {
        return Some(id);
    }
    let found = match kind {
        IdKind::User => nix::unistd::User::from_name(name).map(|u| u.map(|u| u.uid.as_raw())),
        IdKind::Group => nix::unistd::Group::from_name(name).map(|g| g.map(|g| g.gid.as_raw())),
    };
    found.unwrap_or_else(|e| {
        tracing::warn!(name, ?kind, error = %e, "user/group lookup failed");
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16, ipv6: bool) -> Endpoint {
        Endpoint::Tcp {
            host: host.into(),
            port,
            ipv6,
        }
    }

    #[test]
    fn parses_every_form() {
        let cases = [
            ("inet:127.0.0.1:8891", tcp("127.0.0.1", 8891, false)),
            ("inet:8891@127.0.0.1", tcp("127.0.0.1", 8891, false)),
            ("inet:8891@localhost", tcp("localhost", 8891, false)),
            ("inet6:8891@::1", tcp("::1", 8891, true)),
            ("inet6:8891@[::1]", tcp("::1", 8891, true)),
            ("inet6:[::1]:8891", tcp("::1", 8891, true)),
            ("[::1]:8891", tcp("::1", 8891, false)),
            ("127.0.0.1:8891", tcp("127.0.0.1", 8891, false)),
            ("localhost:0", tcp("localhost", 0, false)),
            ("inet:8891", tcp("0.0.0.0", 8891, false)),
            ("unix:/run/m.sock", Endpoint::Unix("/run/m.sock".into())),
            ("local:/run/m.sock", Endpoint::Unix("/run/m.sock".into())),
            ("/run/m.sock", Endpoint::Unix("/run/m.sock".into())),
        ];
        for (spec, want) in cases {
            assert_eq!(Endpoint::parse(spec).unwrap(), want, "{spec}");
        }
    }

    #[test]
    fn refuses_nonsense() {
        for spec in [
            "",
            "inet:",
            "inet:host",
            "inet:127.0.0.1:99999",
            "inet:127.0.0.1:port",
            "unix:",
            "inet::8891",
            "[::1]8891",
            "something",
            "inet:8891@",
        ] {
            let e = Endpoint::parse(spec).unwrap_err();
            assert!(matches!(e, Error::Address { .. }), "{spec}: {e}");
        }
    }

    #[test]
    fn display_round_trips() {
        for spec in ["inet:127.0.0.1:25", "inet6:[::1]:25", "unix:/tmp/x"] {
            let ep = Endpoint::parse(spec).unwrap();
            assert_eq!(ep.to_string(), spec);
            assert_eq!(Endpoint::parse(&ep.to_string()).unwrap(), ep);
        }
    }

    #[test]
    fn ids_by_number_and_name() {
        assert_eq!(resolve_id("0", IdKind::User), Some(0));
        assert_eq!(resolve_id("root", IdKind::User), Some(0));
        assert_eq!(resolve_id("root", IdKind::Group), Some(0));
        assert_eq!(resolve_id("no-such-user-xyz", IdKind::User), None);
        assert_eq!(resolve_id("no-such-group-xyz", IdKind::Group), None);
        // The running user's own name, as NSS knows it, maps back to our uid.
        let me = nix::unistd::getuid();
        if let Ok(Some(u)) = nix::unistd::User::from_uid(me) {
            assert_eq!(resolve_id(&u.name, IdKind::User), Some(me.as_raw()));
        }
    }
}
