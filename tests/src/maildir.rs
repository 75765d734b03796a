//! Reading Maildirs Postfix `virtual(8)` delivers into.

use crate::sys;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A Maildir (`cur/`, `new/`, `tmp/`).
#[derive(Debug, Clone)]
pub struct Maildir {
    path: PathBuf,
}

impl Maildir {
    /// A Maildir at `path` (it need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Maildir {
        Maildir { path: path.into() }
    }

    /// The Maildir root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Messages in `new/`, sorted by file name (delivery time order).
    pub fn new_messages(&self) -> Result<Vec<Vec<u8>>> {
        let dir = self.path.join("new");
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read(p).map_err(Into::into))
            .collect()
    }

    /// Waits until `new/` holds at least `n` messages; returns them all.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Vec<u8>>> {
        sys::wait_until(
            timeout,
            &format!("{n} message(s) in {}/new", self.path.display()),
            || {
                let m = self.new_messages()?;
                Ok((m.len() >= n).then_some(m))
            },
        )
    }
}
