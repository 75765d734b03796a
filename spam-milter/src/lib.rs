//! spam-milter: the Rspamd bridge.
//!
//! Each message is sent to Rspamd's `/checkv2` and the verdict applied through milter
//! actions. Config, the reply parser, the upstream pool, the decision logic and the
//! milter glue are separate modules so each can be tested alone:
//!
//! - [`config`]: the TOML file and its defaults;
//! - [`reply`]: a tolerant parser of every `/checkv2` reply shape;
//! - [`upstream`]: the transport (rspamd-client), failover, health checks, breakers;
//! - [`upstream`]'s requests are built by [`request`] from what [`message`] collected;
//! - [`policy`] picks the rules for a message, [`decision`] turns a scan result into
//!   milter actions (both sans-IO);
//! - [`milter`] is the glue to milter-core, [`metrics`] and [`state`] the daemon's.

pub mod config;
pub mod decision;
pub mod message;
pub mod metrics;
pub mod milter;
pub mod policy;
pub mod reply;
pub mod request;
pub mod state;
pub mod upstream;
