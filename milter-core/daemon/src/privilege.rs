//! Serving as an unprivileged user: the `user` and `allow-root` options both daemons
//! take, with OpenDKIM's `UserID` semantics.
//!
//! A daemon started as root refuses to serve unless it is told whom to become (`user`) or
//! that root is wanted (`allow-root`); with `user` it binds its sockets as root, then
//! switches every thread to that user, its groups and gid, and checks that root cannot
//! be regained. Lookups go through NSS (nix's `getpwnam_r`/`getgrnam_r`), so accounts
//! from LDAP and the like work too.

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User};
use serde::Deserialize;

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

/// Serde `deserialize_with` for the `user` option (an `Option<String>`): checks its syntax
/// while parsing, so a bad value is reported with the file and line like every other option.
pub fn deserialize_user<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    UserSpec::parse(&s).map_err(serde::de::Error::custom)?;
    Ok(Some(s))
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

/// Decides from the options `user` and `allow-root` and the user the process runs as
/// (`euid`): `Err` when it must not serve (root without `user` or `allow-root`, or a `user`
/// it cannot become). `suggested` is the account the refusal proposes (`"opendkim"`).
pub fn plan(
    user: Option<&str>,
    allow_root: bool,
    euid: Uid,
    suggested: &str,
) -> Result<Privileges, String> {
    let Some(spec) = user else {
        if euid.is_root() && !allow_root {
            return Err(format!(
                "refusing to run as root: set user = \"{suggested}\" (the daemon switches \
                 to it after binding) or allow-root = true"
            ));
        }
        return Ok(Privileges::Keep);
    };
    let target = UserSpec::parse(spec)?.resolve()?;
    if target.uid.is_root() && !allow_root {
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
        let e = plan(None, false, root, "milter").unwrap_err();
        assert!(
            e.contains("refusing to run as root: set user = \"milter\""),
            "{e}"
        );
        assert!(e.contains("allow-root = true"), "{e}");
        assert_eq!(plan(None, true, root, "milter"), Ok(Privileges::Keep));
        assert_eq!(plan(None, false, other, "milter"), Ok(Privileges::Keep));
        let to_nobody = plan(Some("65534:65534"), false, root, "milter").unwrap();
        assert!(
            matches!(&to_nobody, Privileges::Switch(t) if t.uid.as_raw() == 65534),
            "{to_nobody:?}"
        );
        // Already that user: nothing to switch.
        assert_eq!(
            plan(Some("4000123:1"), false, other, "milter"),
            Ok(Privileges::Keep)
        );
        let e = plan(Some("65534:65534"), false, other, "milter").unwrap_err();
        assert!(e.contains("only root can switch"), "{e}");
        let e = plan(Some("root"), false, root, "milter").unwrap_err();
        assert!(e.contains("allow-root"), "{e}");
        assert!(plan(Some("root"), true, root, "milter").is_ok());
        let e = plan(Some("no-such-user-here"), false, root, "milter").unwrap_err();
        assert!(e.contains("no such user"), "{e}");
    }
}
