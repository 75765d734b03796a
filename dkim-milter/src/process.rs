//! The process around the milter: which user it serves as (`user`, `allow-root`), the
//! pid file (`pid-file`), and user/group names for the socket (`socket-owner`,
//! `socket-group`).
//!
//! Order at start: refuse root early (before anything is bound), bind the milter socket
//! (chowned while still root) and the metrics port, write the pid file, then switch user,
//! and read the keys and tables again as that user so that what works at start also
//! works at every later reload.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::Config;

/// `user = "name"` or `"name:group"` (names or numbers), as OpenDKIM's `UserID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// User name or uid.
    pub user: String,
    /// Group name or gid; `None`: the user's primary group.
    pub group: Option<String>,
}

impl UserSpec {
    /// Parses the option's value (syntax only; [`UserSpec::resolve`] looks it up).
    pub fn parse(s: &str) -> Result<UserSpec, String> {
        let bad = || format!("user {s:?}: expected \"user\" or \"user:group\" (names or numbers)");
        let token = |t: &str| !t.is_empty() && !t.contains(|c: char| c.is_whitespace());
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        if !token(user) || group.is_some_and(|g| !token(g) || g.contains(':')) {
            return Err(bad());
        }
        Ok(UserSpec {
            user: user.to_string(),
            group: group.map(str::to_string),
        })
    }

    /// Looks the user (and group) up through NSS (`getpwnam_r`, `getgrnam_r`).
    pub fn resolve(&self) -> Result<Target, String> {
        let entry = match self.user.parse::<u32>() {
            Ok(n) => User::from_uid(Uid::from_raw(n)),
            Err(_) => User::from_name(&self.user),
        }
        .map_err(|e| format!("user {:?}: lookup failed: {e}", self.user))?;
        let (uid, name, primary) = match (&entry, self.user.parse::<u32>()) {
            (Some(u), _) => (u.uid, Some(u.name.clone()), Some(u.gid)),
            (None, Ok(n)) => (Uid::from_raw(n), None, None),
            (None, Err(_)) => return Err(format!("user {:?}: no such user", self.user)),
        };
        let gid = match &self.group {
            Some(g) => resolve_gid(g)?,
            None => primary.ok_or_else(|| {
                format!(
                    "user {:?}: uid without a passwd entry; name the group too (\"{}:GROUP\")",
                    self.user, self.user
                )
            })?,
        };
        Ok(Target {
            uid,
            gid,
            name,
            spec: match &self.group {
                Some(g) => format!("{}:{g}", self.user),
                None => self.user.clone(),
            },
        })
    }
}

/// Resolves a group name or number to a gid.
pub fn resolve_gid(g: &str) -> Result<Gid, String> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(Gid::from_raw(n));
    }
    match Group::from_name(g) {
        Ok(Some(gr)) => Ok(gr.gid),
        Ok(None) => Err(format!("group {g:?}: no such group")),
        Err(e) => Err(format!("group {g:?}: lookup failed: {e}")),
    }
}

/// Resolves a user name or number to a uid.
pub fn resolve_uid(u: &str) -> Result<Uid, String> {
    if let Ok(n) = u.parse::<u32>() {
        return Ok(Uid::from_raw(n));
    }
    match User::from_name(u) {
        Ok(Some(us)) => Ok(us.uid),
        Ok(None) => Err(format!("user {u:?}: no such user")),
        Err(e) => Err(format!("user {u:?}: lookup failed: {e}")),
    }
}

/// A looked-up user to serve as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its uid.
    pub uid: Uid,
    /// The gid to switch to.
    pub gid: Gid,
    /// Its name, for the supplementary groups (`None`: a bare uid).
    pub name: Option<String>,
    /// The option as written, for messages.
    pub spec: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (uid {}, gid {})", self.spec, self.uid, self.gid)
    }
}

/// What to do about the user once bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Privileges {
    /// Serve as the user started as.
    Keep,
    /// Switch to this user after binding.
    Switch(Target),
}

/// Decides from the config and the user the process runs as (`euid`): `Err` when it must
/// not serve (root without `user` or `allow-root`, or a `user` it cannot become).
pub fn plan(cfg: &Config, euid: Uid) -> Result<Privileges, String> {
    let Some(spec) = &cfg.user else {
        if euid.is_root() && !cfg.allow_root {
            return Err(
                "refusing to run as root: set user = \"opendkim\" (the daemon switches \
                        to it after binding) or allow-root = true"
                    .into(),
            );
        }
        return Ok(Privileges::Keep);
    };
    let target = UserSpec::parse(spec)?.resolve()?;
    if target.uid.is_root() && !cfg.allow_root {
        return Err(format!(
            "user = {spec:?} is root: set allow-root = true to serve as root"
        ));
    }
    if target.uid == euid {
        return Ok(Privileges::Keep);
    }
    if !euid.is_root() {
        return Err(format!(
            "user = {spec:?}: running as uid {euid}, and only root can switch to {target}; \
             start it as root or as that user"
        ));
    }
    Ok(Privileges::Switch(target))
}

/// Switches the whole process (every thread: glibc's set*id reach them all) to `t`:
/// supplementary groups, gid, then uid; checks that root cannot be regained.
pub fn switch_to(t: &Target) -> Result<(), String> {
    let fail = |what: &str, e: nix::Error| format!("switching to user {t}: {what}: {e}");
    match &t.name {
        Some(n) => {
            let c = CString::new(n.as_str()).map_err(|e| format!("user name {n:?}: {e}"))?;
            nix::unistd::initgroups(&c, t.gid).map_err(|e| fail("initgroups", e))?;
        }
        None => nix::unistd::setgroups(&[t.gid]).map_err(|e| fail("setgroups", e))?,
    }
    nix::unistd::setgid(t.gid).map_err(|e| fail("setgid", e))?;
    nix::unistd::setuid(t.uid).map_err(|e| fail("setuid", e))?;
    let (uid, euid) = (nix::unistd::getuid(), nix::unistd::geteuid());
    let (gid, egid) = (nix::unistd::getgid(), nix::unistd::getegid());
    if uid != t.uid || euid != t.uid || gid != t.gid || egid != t.gid {
        return Err(format!(
            "switching to user {t}: now uid {uid}/{euid}, gid {gid}/{egid}"
        ));
    }
    if !t.uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(format!("switched to user {t}, but root could be regained"));
    }
    Ok(())
}

/// The pid file: written once the daemon listens, removed at exit (when it still holds
/// our pid). A directory it had to create is handed to the serving user, so that user
/// can remove the file at exit.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
    created_dir: Option<PathBuf>,
}

impl PidFile {
    /// Writes our pid to `path` (via a temporary file and a rename, mode 0644), creating
    /// a missing parent directory (0755).
    pub fn write(path: &Path) -> Result<PidFile, String> {
        let err =
            |what: &str, e: std::io::Error| format!("pid-file {}: {what}: {e}", path.display());
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .ok_or_else(|| format!("pid-file {}: no directory", path.display()))?;
        let created_dir = if dir.exists() {
            None
        } else {
            std::fs::create_dir_all(dir).map_err(|e| err("cannot create its directory", e))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| err("cannot set its directory's mode", e))?;
            Some(dir.to_path_buf())
        };
        let pid = std::process::id();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{pid}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            writeln!(f, "{pid}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(err("cannot write", e));
        }
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
            created_dir,
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives a directory this pid file created to `t`, who must remove the file at exit.
    pub fn hand_to(&self, t: &Target) -> Result<(), String> {
        match &self.created_dir {
            Some(d) => std::os::unix::fs::chown(d, Some(t.uid.as_raw()), Some(t.gid.as_raw()))
                .map_err(|e| format!("pid-file directory {}: chown to {t}: {e}", d.display())),
            None => Ok(()),
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours =
            std::fs::read_to_string(&self.path).is_ok_and(|s| s.trim() == self.pid.to_string());
        if !ours {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(
                "cannot remove pid-file {}: {e} (its directory must be writable by the user serving)",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_spec_syntax() {
        assert_eq!(
            UserSpec::parse("opendkim").unwrap(),
            UserSpec {
                user: "opendkim".into(),
                group: None
            }
        );
        assert_eq!(
            UserSpec::parse("opendkim:postfix")
                .unwrap()
                .group
                .as_deref(),
            Some("postfix")
        );
        for bad in ["", ":x", "a:", "a b", "a:b:c"] {
            assert!(UserSpec::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lookups() {
        let root = UserSpec::parse("root").unwrap().resolve().unwrap();
        assert!(root.uid.is_root() && root.gid.as_raw() == 0);
        assert_eq!(root.name.as_deref(), Some("root"));
        let n = UserSpec::parse("0:0").unwrap().resolve().unwrap();
        assert!(n.uid.is_root());
        let e = UserSpec::parse("no-such-user-here")
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(e.contains("no such user"), "{e}");
        let e = UserSpec::parse("root:no-such-group")
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(e.contains("no such group"), "{e}");
        // A uid without a passwd entry needs its group spelled out.
        let e = UserSpec::parse("4000123").unwrap().resolve().unwrap_err();
        assert!(e.contains("name the group"), "{e}");
        let t = UserSpec::parse("4000123:4000123")
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(
            (t.uid.as_raw(), t.gid.as_raw(), t.name),
            (4000123, 4000123, None)
        );
    }

    #[test]
    fn root_is_refused_unless_told() {
        let root = Uid::from_raw(0);
        let other = Uid::from_raw(4000123);
        let cfg = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c
        };
        let e = plan(&cfg(|_| {}), root).unwrap_err();
        assert!(e.contains("refusing to run as root"), "{e}");
        assert_eq!(
            plan(&cfg(|c| c.allow_root = true), root),
            Ok(Privileges::Keep)
        );
        assert_eq!(plan(&cfg(|_| {}), other), Ok(Privileges::Keep));
        let to_nobody = plan(&cfg(|c| c.user = Some("65534:65534".into())), root).unwrap();
        assert!(
            matches!(&to_nobody, Privileges::Switch(t) if t.uid.as_raw() == 65534),
            "{to_nobody:?}"
        );
        // Already that user: nothing to switch.
        assert_eq!(
            plan(&cfg(|c| c.user = Some("4000123:1".into())), other),
            Ok(Privileges::Keep)
        );
        let e = plan(&cfg(|c| c.user = Some("65534:65534".into())), other).unwrap_err();
        assert!(e.contains("only root can switch"), "{e}");
        let e = plan(&cfg(|c| c.user = Some("root".into())), root).unwrap_err();
        assert!(e.contains("allow-root"), "{e}");
    }

    #[test]
    fn pid_file_written_and_removed() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("run/sub/dkim-milter.pid");
        let pf = PidFile::write(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(pf.path(), p);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        drop(pf);
        assert!(!p.exists());
        // Not ours any more (a successor wrote its own): left alone.
        let pf = PidFile::write(&p).unwrap();
        std::fs::write(&p, "1\n").unwrap();
        drop(pf);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1\n");
        let e = PidFile::write(Path::new("/proc/no/such.pid")).unwrap_err();
        assert!(e.contains("/proc/no/such.pid"), "{e}");
    }
}
