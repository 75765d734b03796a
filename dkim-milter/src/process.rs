//! The process around the milter: which user it serves as (`user`, `allow-root`), the
//! pid file (`pid-file`), and user/group names for the socket (`socket-owner`,
//! `socket-group`).
//!
//! Order at start: refuse root early (before anything is bound), bind the milter socket
//! (chowned while still root) and the metrics port, write the pid file, then switch user,
//! and read the keys and tables again as that user so that what works at start also
//! works at every later reload.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::Uid;

use crate::config::Config;

// The user switch is the daemon kit's, shared with spam-milter.
pub use milter_daemon::privilege::{
    Privileges, Target, UserSpec, resolve_gid, resolve_uid, switch_to,
};

/// Decides from the config and the user the process runs as (`euid`): `Err` when it must
/// not serve (root without `user` or `allow-root`, or a `user` it cannot become).
pub fn plan(cfg: &Config, euid: Uid) -> Result<Privileges, String> {
    milter_daemon::privilege::plan(cfg.user.as_deref(), cfg.allow_root, euid, "opendkim")
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
