//! The daemon kit: what dkim-milter and spam-milter share so neither writes it twice.
//!
//! - [`config`]: TOML loading whose errors name file and line, and the shared value types
//!   (networks, durations, socket modes, the metrics listen address).
//! - [`reload`]: an atomically swapped serving state, rebuilt on SIGHUP/SIGUSR1 or when
//!   its files change; a broken file keeps the old state.
//! - [`cli`]: the `--config` / `--check-config` arguments every daemon takes.
//! - [`logging`] and [`run`]: `tracing` set-up and the runtime around a daemon's `serve`.
//! - [`metrics`]: the Prometheus recorder (metrics-exporter-prometheus), the `GET /metrics`
//!   endpoint (hyper), bounded counter sets and the reload counter.
//! - [`privilege`]: `user` / `allow-root`: refuse root unless told, switch user after binding.
//! - [`systemd`]: socket activation (serve on the socket systemd holds across restarts)
//!   and `READY=1`/`STOPPING=1` notification.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod privilege;
pub mod reload;
pub mod run;
pub mod systemd;

pub use config::{Cidr, ConfigError, MetricsListen, SocketMode, Span};
pub use reload::{Fingerprint, Reloadable, Shared};
