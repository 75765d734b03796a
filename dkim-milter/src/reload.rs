//! The serving state (config + key store), reloaded through the daemon kit.
//!
//! A new [`State`] is built off to the side (on SIGHUP/SIGUSR1, or when the poller sees a
//! change under the config, tables or keys dir) and swapped in by
//! [`milter_daemon::reload`]; a state that fails to build leaves the previous one serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use milter_daemon::reload::{Fingerprint, Reloadable};

use crate::config::{Config, ConfigError};
use crate::keystore::{KeyStore, StoreError};
use crate::sign::SignOptions;
use crate::tables::dataset;

/// Why a state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Config file problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Keys dir or table problem.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything a message needs, immutable once built.
#[derive(Debug)]
pub struct State {
    /// The config.
    pub config: Config,
    /// Where it came from (`None`: embedded defaults).
    pub config_path: Option<PathBuf>,
    /// Signing keys.
    pub keys: KeyStore,
    /// Signer options derived from the config.
    pub sign_options: SignOptions,
    /// The effective authserv-id.
    pub authserv_id: String,
    /// Stamps of the files this state was built from (taken before reading them).
    pub fingerprint: Fingerprint,
}

impl State {
    /// Loads config (or defaults) and all keys.
    pub fn build(config_path: Option<&Path>) -> Result<State, LoadError> {
        let config = match config_path {
            Some(p) if crate::opendkim_conf::is_source(p) => {
                crate::opendkim_conf::load(p)?.config()?
            }
            Some(p) => Config::load(p)?,
            None => Config::defaults(),
        };
        State::from_config(config, config_path.map(Path::to_path_buf))
    }

    /// Loads the keys for an already parsed config.
    pub fn from_config(config: Config, config_path: Option<PathBuf>) -> Result<State, LoadError> {
        let fingerprint = fingerprint(config_path.as_deref(), &config);
        let keys = KeyStore::load(&config)?;
        Ok(State {
            fingerprint,
            sign_options: SignOptions::from_config(&config),
            authserv_id: config.authserv_id(),
            keys,
            config,
            config_path,
        })
    }

    /// Logs the load-time findings (one line each).
    pub fn log_notes(&self) {
        for n in self.keys.notes() {
            if n.is_warning() {
                tracing::warn!("{}", n.text);
            } else {
                tracing::info!("{}", n.text);
            }
        }
    }
}

/// The shared, swappable state.
pub type Shared = milter_daemon::Shared<State>;

impl Reloadable for State {
    type Error = LoadError;

    fn build(config_path: Option<&Path>) -> Result<State, LoadError> {
        State::build(config_path)
    }

    fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    fn current_fingerprint(&self, config_path: Option<&Path>) -> Fingerprint {
        fingerprint(config_path, &self.config)
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.config.reload_poll_seconds.max(1))
    }

    fn replacing(&self, previous: &State, why: &str) {
        // What DNS said about the keys survives the reload (same key = same public key).
        self.keys.gate().adopt(previous.keys.gate());
        if self.config.socket != previous.config.socket {
            tracing::warn!(
                "socket changed from {} to {}: takes effect only after a restart",
                previous.config.socket,
                self.config.socket
            );
        }
        let (new, old) = (&self.config, &previous.config);
        for (name, changed) in [
            ("socket-mode", new.socket_mode != old.socket_mode),
            ("socket-owner", new.socket_owner != old.socket_owner),
            ("socket-group", new.socket_group != old.socket_group),
            ("pid-file", new.pid_file != old.pid_file),
            ("user", new.user != old.user),
            ("allow-root", new.allow_root != old.allow_root),
            ("metrics-listen", new.metrics_listen != old.metrics_listen),
            ("log-target", new.log_target != old.log_target),
            (
                "syslog-facility",
                new.syslog_facility != old.syslog_facility,
            ),
            (
                "dns-servers (verifier and key checks)",
                new.dns_servers != old.dns_servers,
            ),
            (
                "max-connections",
                new.max_connections != old.max_connections,
            ),
            ("dns-timeout", new.dns_timeout != old.dns_timeout),
            (
                "minimum-key-bits",
                new.minimum_key_bits != old.minimum_key_bits,
            ),
            (
                "dns-override-file",
                new.dns_override_file != old.dns_override_file,
            ),
        ] {
            if changed {
                tracing::warn!("{name} changed: takes effect only after a restart");
            }
        }
        self.log_notes();
        tracing::info!(
            "reloaded ({why}): {} signing domains/keys usable",
            self.keys.usable_count()
        );
    }
}

/// Files and directories whose change triggers a reload: the config file, the
/// tables and the key files they name, and `{keys-dir}`, its domain dirs and files.
pub fn fingerprint(config_path: Option<&Path>, cfg: &Config) -> Fingerprint {
    let mut paths: Vec<PathBuf> = Vec::new();
    if let Some(p) = config_path {
        paths.push(p.to_path_buf());
    }
    let tables = [&cfg.key_table, &cfg.signing_table];
    if tables.iter().all(|t| t.is_some()) {
        for spec in tables.into_iter().flatten() {
            if let Ok((_, p, text)) = dataset(spec) {
                {
                    // Key files named in a KeyTable (third colon field of each line).
                    for line in text.lines() {
                        if let Some(path) = line
                            .split_whitespace()
                            .nth(1)
                            .and_then(|v| v.splitn(3, ':').nth(2))
                            .filter(|k| k.starts_with('/') && !k.contains('%'))
                        {
                            paths.push(PathBuf::from(path));
                        }
                    }
                }
                paths.extend(p);
            }
        }
    } else {
        paths.push(cfg.keys_dir.clone());
        if let Ok(rd) = std::fs::read_dir(&cfg.keys_dir) {
            for d in rd.flatten() {
                paths.push(d.path());
                if let Ok(files) = std::fs::read_dir(d.path()) {
                    paths.extend(files.flatten().map(|f| f.path()));
                }
            }
        }
    }
    Fingerprint::of(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::DkimMetrics;
    use milter_daemon::reload::{reload_now, shared as share, watch};

    fn selectors(shared: &Shared, from: &str) -> Vec<String> {
        match shared.load().keys.lookup(from) {
            crate::keystore::Lookup::Sign(k) => k.into_iter().map(|k| k.selector).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn broken_config_keeps_previous_state() {
        let t = tempfile::tempdir().unwrap();
        let keys = t.path().join("keys");
        crate::keys::tests::opendkim_genkey(&keys, "example.com", "a");
        let cfgp = t.path().join("dkim.toml");
        std::fs::write(&cfgp, format!("keys-dir = {:?}\n", keys)).unwrap();
        let shared: Shared = share(State::build(Some(&cfgp)).unwrap());
        assert_eq!(selectors(&shared, "x@example.com"), vec!["a"]);

        let fp0 = fingerprint(Some(&cfgp), &shared.load().config);
        crate::keys::tests::opendkim_genkey(&keys, "example.com", "b");
        let fp1 = fingerprint(Some(&cfgp), &shared.load().config);
        assert_ne!(fp0, fp1, "a new key file changes the fingerprint");
        assert!(reload_now(&shared, Some(&cfgp), "test"));
        assert_eq!(selectors(&shared, "x@example.com"), vec!["b"]);

        std::fs::write(&cfgp, "keys-dir = 5\n").unwrap();
        assert!(!reload_now(&shared, Some(&cfgp), "test"));
        assert_eq!(selectors(&shared, "x@example.com"), vec!["b"]);

        std::fs::write(&cfgp, "keys-dir = \"/nonexistent\"\n").unwrap();
        assert!(!reload_now(&shared, Some(&cfgp), "test"));
        assert_eq!(selectors(&shared, "x@example.com"), vec!["b"]);
    }

    #[tokio::test]
    async fn watcher_picks_up_new_key_dir() {
        let t = tempfile::tempdir().unwrap();
        let keys = t.path().join("keys");
        crate::keys::tests::opendkim_genkey(&keys, "example.com", "a");
        let cfgp = t.path().join("dkim.toml");
        std::fs::write(
            &cfgp,
            format!("keys-dir = {:?}\nreload-poll-seconds = 1\n", keys),
        )
        .unwrap();
        let shared: Shared = share(State::build(Some(&cfgp)).unwrap());
        let rec = milter_daemon::metrics::recorder();
        let registry = rec.handle();
        let metrics = metrics::with_local_recorder(&rec, || DkimMetrics::new(&registry));
        let task = tokio::spawn(watch(shared.clone(), Some(cfgp.clone()), move |ok, st| {
            metrics.reloaded(ok);
            metrics.keys(st);
        }));
        assert!(selectors(&shared, "x@example.org").is_empty());
        crate::keys::tests::opendkim_genkey(&keys, "example.org", "new");
        let mut ok = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if selectors(&shared, "x@example.org") == vec!["new"] {
                ok = true;
                break;
            }
        }
        assert!(ok, "new domain picked up by the poller");
        let value = |text: &str, series: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        };
        // Let the counter catch up with the swap (and any second poll settle).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let text = registry.render();
        // One reload, or two if a poll caught the key directory half written.
        let oks = value(&text, "dkim_milter_reloads_total{result=\"ok\"}").unwrap_or(0);
        assert!((1..=2).contains(&oks), "{text}");
        assert_eq!(value(&text, "dkim_milter_keys_loaded"), Some(2), "{text}");

        // A broken file is tried once (not every poll), counted as failed; the gauges
        // keep describing the state still serving.
        std::fs::write(&cfgp, "keys-dir = 5\n").unwrap();
        let mut failed = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if registry
                .render()
                .contains("dkim_milter_reloads_total{result=\"failed\"} 1\n")
            {
                failed = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        task.abort();
        let text = registry.render();
        assert!(failed, "{text}");
        assert!(
            text.contains("dkim_milter_reloads_total{result=\"failed\"} 1\n"),
            "{text}"
        );
        assert_eq!(
            value(&text, "dkim_milter_reloads_total{result=\"ok\"}"),
            Some(oks),
            "{text}"
        );
        assert_eq!(value(&text, "dkim_milter_keys_loaded"), Some(2), "{text}");
    }
}
