//! The serving state (the parsed config), reloaded through the daemon kit on SIGHUP,
//! SIGUSR1 or a change of the file; a broken file leaves the previous state serving.
//!
//! Policies, actions, settings and limits change on reload. The socket, the metrics
//! address and the Rspamd upstream list are read at start (the pool keeps each upstream's
//! health across reloads); a change to them is logged as needing a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use milter_daemon::config::ConfigError;
use milter_daemon::reload::{Fingerprint, Reloadable};

use crate::config::Config;

/// Everything a message needs, immutable once built.
#[derive(Debug)]
pub struct State {
    /// The config.
    pub config: Config,
    /// Where it came from (`None`: embedded defaults).
    pub config_path: Option<PathBuf>,
    fingerprint: Fingerprint,
}

/// The shared, swappable state.
pub type Shared = milter_daemon::Shared<State>;

impl State {
    /// Loads the config file, or the embedded defaults.
    pub fn build(config_path: Option<&Path>) -> Result<State, ConfigError> {
        let fingerprint = Fingerprint::of(config_path.map(Path::to_path_buf).into_iter().collect());
        let config = match config_path {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        Ok(State {
            config,
            config_path: config_path.map(Path::to_path_buf),
            fingerprint,
        })
    }

    /// One line saying what this state serves.
    pub fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "rspamd {} ({:?}, deadline {}); inbound {:?}/on-error {:?}; outbound {:?}/on-error {:?}; {} listener, {} domain, {} address override(s)",
            c.rspamd.upstreams.join(", "),
            c.rspamd.selection,
            c.rspamd.scan_deadline,
            c.inbound.mode,
            c.inbound.on_error,
            c.outbound.mode,
            c.outbound.on_error,
            c.listener.len(),
            c.domain.len(),
            c.address.len(),
        )
        .to_lowercase()
    }
}

impl Reloadable for State {
    type Error = ConfigError;

    fn build(config_path: Option<&Path>) -> Result<State, ConfigError> {
        State::build(config_path)
    }

    fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    fn current_fingerprint(&self, config_path: Option<&Path>) -> Fingerprint {
        Fingerprint::of(config_path.map(Path::to_path_buf).into_iter().collect())
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.config.reload_poll_seconds.max(1))
    }

    fn replacing(&self, previous: &State, why: &str) {
        let (new, old) = (&self.config, &previous.config);
        for (what, changed) in [
            ("socket", new.socket != old.socket),
            ("metrics-listen", new.metrics_listen != old.metrics_listen),
            (
                "max-connections",
                new.max_connections != old.max_connections,
            ),
            ("log-target", new.log_target != old.log_target),
            ("user", new.user != old.user),
            ("allow-root", new.allow_root != old.allow_root),
            (
                "syslog-facility",
                new.syslog_facility != old.syslog_facility,
            ),
            (
                "rspamd upstreams and their timeouts",
                crate::config::RspamdConfig {
                    mta_name: None,
                    ..new.rspamd.clone()
                } != crate::config::RspamdConfig {
                    mta_name: None,
                    ..old.rspamd.clone()
                },
            ),
        ] {
            if changed {
                tracing::warn!("{what} changed: takes effect only after a restart");
            }
        }
        tracing::info!("reloaded ({why}): {}", self.describe());
    }
}
