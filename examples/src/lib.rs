//! Example milters built on `milter-core`, each a small library type (so the Postfix
//! end-to-end tests can run it in-process) plus a runnable binary with CLI flags:
//!
//! - [`add_header`]: adds a configurable header to every message (`add-header`).
//! - [`reject_sender`]: rejects by sender or recipient with a custom, possibly multi-line,
//!   SMTP reply (`reject-sender`).
//! - [`body_rules`]: rewrites a word in the body, or quarantines by body content
//!   (`body-rules`).

pub mod add_header;
pub mod body_rules;
pub mod cli;
pub mod reject_sender;
