//! The mail-stack harness: starts REAL Postfix, Dovecot, OpenDKIM and Rspamd
//! daemons on loopback, each in its own sandbox directory, for integration tests
//! anywhere in the workspace.
//!
//! Every daemon gets random free ports ([`ports::free_port`]) and a fresh
//! sandbox ([`sys::Sandbox`]), and is stopped when its handle is dropped, so
//! tests can run concurrently. The harness needs root and the Debian packages
//! installed by `tests/stack/install-deps.sh`; without them it fails with a
//! message saying what is missing (it never skips silently).
//!
//! ```no_run
//! use stack_tests::postfix::Postfix;
//! use std::time::Duration;
//!
//! let pf = Postfix::builder().mx_milters("inet:127.0.0.1:9999").start()?;
//! let out = stack_tests::swaks::swaks(&[
//!     "--server", &format!("127.0.0.1:{}", pf.mx_port()),
//!     "--from", "alice@remote.test", "--to", "user@example.test",
//! ])?;
//! assert_eq!(out.final_reply().map(|r| r.code), Some(250));
//! let msgs = pf.maildir("example.test", "user").wait_for(1, Duration::from_secs(20))?;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Environment knobs: `STACK_SANDBOX_BASE` (where sandboxes are created,
//! default the system temp dir), `STACK_KEEP_SANDBOX=1` (keep sandboxes for
//! debugging), `STACK_RSPAMD_CACHE` (rspamd DBDIR shared between runs), `STACK_SENDMAIL_ROOT` (an
//! unpacked `sendmail-bin`, see [`sendmail`]).

pub mod corpus;
pub mod daemon;
pub mod dkim;
pub mod dns;
pub mod dovecot;
pub mod hostile;
pub mod load;
pub mod mail;
pub mod maildir;
pub mod opendkim;
pub mod ports;
pub mod postfix;
pub mod recorder;
pub mod rspamd;
pub mod sendmail;
pub mod sink;
pub mod smtp;
pub mod swaks;
pub mod sys;
pub mod syslog;
pub mod tls;

/// `/usr/bin/python3`: Debian's interpreter, which has `dkim` and `aiosmtpd`
/// (a `python3` earlier on PATH may not).
pub const PYTHON: &str = "/usr/bin/python3";

/// Path of a file shipped under `tests/stack/` (scripts, tools).
pub fn stack_file(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("stack")
        .join(rel)
}
