//! The replay corpus: the repository's own messages (`tests/corpus/`) plus any extra corpora
//! named in `MILTER_EXTRA_CORPUS`.
//!
//! `MILTER_EXTRA_CORPUS` is a colon-separated list of directories, like `PATH`
//! (`MILTER_EXTRA_CORPUS=dir1:dir2`). Empty entries are ignored; a relative name is taken from
//! the repository root (cargo runs each test crate in its own package directory, so the
//! working directory would differ between crates). A named directory that does not exist,
//! is not a directory or holds no `.eml` message is an error naming it: a typo never
//! silently shrinks the corpus.
//!
//! A message is any `*.eml` file, found recursively; the envelope sidecar `X.eml.json`
//! (read by `milter-replay`) and every other file are not messages.
//!
//! ```no_run
//! for (path, bytes) in stack_tests::corpus::messages()? {
//!     println!("{}: {} bytes", path.display(), bytes.len());
//! }
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The environment variable naming extra corpus directories (colon-separated).
pub const EXTRA_ENV: &str = "MILTER_EXTRA_CORPUS";

/// How many messages `tests/corpus/` ships: replay tests assert at least this many, so a
/// lost or misnamed file is noticed (raise it when adding messages).
pub const PROJECT_MESSAGES: usize = 36;

/// The repository's own corpus, `tests/corpus/`.
pub fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// The repository root (relative `MILTER_EXTRA_CORPUS` entries are taken from here).
fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The directories named in `MILTER_EXTRA_CORPUS`, in order; an error names any entry that
/// is not an existing directory.
pub fn extra_dirs() -> Result<Vec<PathBuf>> {
    match std::env::var_os(EXTRA_ENV) {
        Some(value) => parse_extra(&value, &repo_root()),
        None => Ok(Vec::new()),
    }
}

/// `value` split like `PATH`, empty entries dropped, relative ones taken from `root`; each
/// must be an existing directory.
fn parse_extra(value: &OsStr, root: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::env::split_paths(value) {
        if entry.as_os_str().is_empty() {
            continue;
        }
        let dir = root.join(&entry);
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => dirs.push(dir),
            Ok(_) => bail!("{EXTRA_ENV}: {} is not a directory", dir.display()),
            Err(e) => bail!("{EXTRA_ENV}: corpus directory {}: {e}", dir.display()),
        }
    }
    Ok(dirs)
}

/// The corpus directories: [`project_dir`] first, then every [`extra_dirs`] entry.
pub fn dirs() -> Result<Vec<PathBuf>> {
    let mut dirs = vec![project_dir()];
    dirs.extend(extra_dirs()?);
    Ok(dirs)
}

/// Every `.eml` file under `dir`, recursively, sorted by path.
pub fn message_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("corpus directory {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("corpus directory {}", dir.display()))?
            .path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.is_file()
            && path
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("eml"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// (path, bytes) of every message of every corpus directory: the project's first, then the
/// extra ones in the order named, each sorted by path. A file reached twice (a directory
/// named twice, or inside another named one) is listed once. Every directory must hold at
/// least one message.
pub fn messages() -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for dir in dirs()? {
        let paths = message_paths(&dir)?;
        if paths.is_empty() {
            bail!("corpus directory {} holds no .eml message", dir.display());
        }
        for path in paths {
            let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if !seen.insert(key) {
                continue;
            }
            let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
            out.push((path, bytes));
        }
    }
    Ok(out)
}

/// Whether `path` is a message of the repository's own corpus (not an extra one).
pub fn is_project(path: &Path) -> bool {
    path.starts_with(project_dir())
}

/// A short name for a corpus message: its path below its corpus directory, prefixed with
/// that directory's name (`corpus/19-mime-missing-final-boundary.eml`, `mail-parser/rfc_001.eml`).
pub fn label(path: &Path) -> String {
    let dirs = dirs().unwrap_or_else(|_| vec![project_dir()]);
    for dir in dirs {
        if let Ok(rel) = path.strip_prefix(&dir) {
            let name = dir
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            return format!("{name}/{}", rel.display());
        }
    }
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_and_other_files_are_not_messages() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        for f in [
            "b.eml",
            "a.eml.json",
            "a.eml",
            "README.md",
            "sub/c.eml",
            "sub/c.json",
        ] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let got = message_paths(dir.path()).unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.eml", "b.eml", "sub/c.eml"]);
    }

    #[test]
    fn extra_dirs_are_split_like_path_and_must_exist() {
        let root = tempfile::tempdir().unwrap();
        let abs = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("rel")).unwrap();
        std::fs::write(root.path().join("file"), b"x").unwrap();
        let value = format!("rel::{}:", abs.path().display());
        let got = parse_extra(OsStr::new(&value), root.path()).unwrap();
        assert_eq!(got, [root.path().join("rel"), abs.path().to_path_buf()]);
        assert!(parse_extra(OsStr::new(""), root.path()).unwrap().is_empty());

        let err = parse_extra(OsStr::new("rel:missing-corpus"), root.path()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("missing-corpus") && msg.contains(EXTRA_ENV),
            "{msg}"
        );
        let err = parse_extra(OsStr::new("file"), root.path()).unwrap_err();
        assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
    }

    #[test]
    fn the_project_corpus_is_found() {
        let paths = message_paths(&project_dir()).unwrap();
        assert!(paths.len() >= PROJECT_MESSAGES, "{paths:?}");
        assert!(paths.iter().all(|p| is_project(p)));
    }
}
