//! Reload without restart: a daemon's serving state is rebuilt off to the side and
//! swapped in atomically, on SIGHUP (SIGUSR1 is an alias, as operators of other mail
//! daemons expect) or when the files it was built from change.
//!
//! Messages in flight keep the `Arc` they started with, so a reload never changes a
//! message half way. A state that fails to build is logged with file and reason, counted,
//! and the previous one keeps serving; the same broken files are not retried every poll.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};

/// A daemon's serving state: everything a message needs, immutable once built.
pub trait Reloadable: Sized + Send + Sync + 'static {
    /// Why a state could not be built (its `Display` names the file and line).
    type Error: std::fmt::Display + Send + 'static;

    /// Builds the state from the config file (`None`: embedded defaults) and whatever it
    /// names (keys, tables, maps).
    fn build(config_path: Option<&Path>) -> Result<Self, Self::Error>;

    /// The stamps of the inputs, taken before they were read, so a change that races the
    /// build is seen by the next poll.
    fn fingerprint(&self) -> &Fingerprint;

    /// The inputs' stamps now (the list is taken again, so new files are seen).
    fn current_fingerprint(&self, config_path: Option<&Path>) -> Fingerprint;

    /// How often to compare fingerprints.
    fn poll_interval(&self) -> Duration;

    /// Called once a new state is built, before it replaces `previous`: log what it
    /// serves and warn about options that only take effect at start.
    fn replacing(&self, previous: &Self, why: &str);
}

/// The shared, swappable state.
pub type Shared<S> = Arc<ArcSwap<S>>;

/// Wraps a first state for serving.
pub fn shared<S: Reloadable>(state: S) -> Shared<S> {
    Arc::new(ArcSwap::from_pointee(state))
}

/// Modification stamps (mtime, size, mode) of a set of paths; a missing path has none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(PathBuf, Option<Stamp>)>);

type Stamp = (SystemTime, u64, u32);

fn stamp(p: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.mode()))
}

impl Fingerprint {
    /// Stamps `paths` now (sorted, duplicates removed).
    pub fn of(mut paths: Vec<PathBuf>) -> Fingerprint {
        paths.sort();
        paths.dedup();
        Fingerprint(
            paths
                .into_iter()
                .map(|p| {
                    let s = stamp(&p);
                    (p, s)
                })
                .collect(),
        )
    }

    /// The paths stamped.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.0.iter().map(|(p, _)| p.as_path())
    }
}

/// Builds a new state and swaps it in; on failure logs and keeps the old one.
/// Returns true if swapped.
pub fn reload_now<S: Reloadable>(
    shared: &Shared<S>,
    config_path: Option<&Path>,
    why: &str,
) -> bool {
    match S::build(config_path) {
        Ok(new) => {
            new.replacing(&shared.load(), why);
            shared.store(Arc::new(new));
            true
        }
        Err(e) => {
            tracing::error!("reload ({why}) refused, previous configuration keeps serving: {e}");
            false
        }
    }
}

/// Runs forever: reload on SIGHUP or SIGUSR1, and when the fingerprint changes (polled
/// every [`Reloadable::poll_interval`]). `after` sees each attempt's result and the state
/// serving afterwards (for metrics). Must run inside a tokio runtime.
pub async fn watch<S, F>(shared: Shared<S>, config_path: Option<PathBuf>, after: F)
where
    S: Reloadable,
    F: Fn(bool, &S) + Send + 'static,
{
    let mut hup = listen(SignalKind::hangup(), "SIGHUP");
    let mut usr1 = listen(SignalKind::user_defined1(), "SIGUSR1");
    let mut last = shared.load().fingerprint().clone();
    loop {
        let poll = shared
            .load()
            .poll_interval()
            .max(Duration::from_millis(100));
        let why = tokio::select! {
            _ = recv(&mut hup) => "SIGHUP",
            _ = recv(&mut usr1) => "SIGUSR1",
            _ = tokio::time::sleep(poll) => "files changed",
        };
        let current = shared.load().current_fingerprint(config_path.as_deref());
        if why == "files changed" && current == last {
            continue;
        }
        let (shared2, path) = (shared.clone(), config_path.clone());
        let ok = tokio::task::spawn_blocking(move || reload_now(&shared2, path.as_deref(), why))
            .await
            .unwrap_or(false);
        after(ok, &shared.load());
        // Remember what was tried, so a broken file is not retried every poll. (After a
        // reload that changed which paths are watched, the next poll reloads once more.)
        last = current;
    }
}

fn listen(kind: SignalKind, name: &str) -> Option<tokio::signal::unix::Signal> {
    match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for {name} ({e}); reload on file change only");
            None
        }
    }
}

async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
    match s.as_mut() {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A state that is the file's text; "broken" in it fails the build.
    struct Text {
        text: String,
        fp: Fingerprint,
    }

    impl Reloadable for Text {
        type Error = String;
        fn build(p: Option<&Path>) -> Result<Text, String> {
            let p = p.ok_or("no file")?;
            let fp = Fingerprint::of(vec![p.to_path_buf()]);
            let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
            if text.contains("broken") {
                return Err(format!("{}:1: broken", p.display()));
            }
            Ok(Text { text, fp })
        }
        fn fingerprint(&self) -> &Fingerprint {
            &self.fp
        }
        fn current_fingerprint(&self, p: Option<&Path>) -> Fingerprint {
            Fingerprint::of(p.map(Path::to_path_buf).into_iter().collect())
        }
        fn poll_interval(&self) -> Duration {
            Duration::from_millis(100)
        }
        fn replacing(&self, _: &Text, _: &str) {}
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..100 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn file_change_and_signals_reload_and_a_broken_file_keeps_the_old_state() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c.toml");
        std::fs::write(&p, "one").unwrap();
        let s = shared(Text::build(Some(&p)).unwrap());
        let (oks, fails) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (o, f) = (oks.clone(), fails.clone());
        let task = tokio::spawn(watch(s.clone(), Some(p.clone()), move |ok, _| {
            if ok { &o } else { &f }.fetch_add(1, Ordering::SeqCst);
        }));
        std::fs::write(&p, "two, longer").unwrap();
        until("file change", || s.load().text == "two, longer").await;

        std::fs::write(&p, "broken").unwrap();
        until("failed reload", || fails.load(Ordering::SeqCst) == 1).await;
        // Not retried while the file stays the same; the old state keeps serving.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(fails.load(Ordering::SeqCst), 1);
        assert_eq!(s.load().text, "two, longer");

        // SIGUSR1 is an alias of SIGHUP: a reload even without a file change.
        std::fs::write(&p, "three").unwrap();
        until("reload of three", || s.load().text == "three").await;
        let before = oks.load(Ordering::SeqCst);
        let me = std::process::id().to_string();
        for sig in ["-USR1", "-HUP"] {
            let n = oks.load(Ordering::SeqCst);
            std::process::Command::new("kill")
                .args([sig, &me])
                .status()
                .unwrap();
            until(sig, || oks.load(Ordering::SeqCst) > n).await;
        }
        assert!(oks.load(Ordering::SeqCst) >= before + 2);
        task.abort();
    }
}
