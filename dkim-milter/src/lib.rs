//! dkim-milter: DKIM signing and verifying milter, a drop-in replacement for OpenDKIM.
//!
//! The domain logic is sans-IO and lives in small modules; the milter glue adapts it
//! to milter-core's handler API.

pub mod activation;
pub mod address;
pub mod bodyhash;
pub mod config;
pub mod decision;
pub mod keygen;
pub mod keys;
pub mod keystore;
pub mod metrics;
pub mod milter;
pub mod opendkim_conf;
pub mod process;
pub mod reload;
pub mod sign;
pub mod tables;
pub mod transaction;
pub mod verify;
