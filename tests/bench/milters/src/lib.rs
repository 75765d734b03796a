//! Shared command line of the benchmark no-op milters (`noop-milter-core`,
//! `noop-indymilter`; `../noop-libmilter.c` takes the same options).
//!
//! Bench-only (GPL-3.0-or-later because `noop-indymilter` links indymilter): the
//! library case of `tests/bench/cases/library.sh` runs the three side by side.

use clap::{Parser, ValueEnum};

/// What the no-op asks of the MTA at negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Every event is sent and waits for the milter's reply (a typical milter).
    Replied,
    /// Every `NR_*` flag the MTA offers: events are still sent, but not replied to.
    Nr,
}

/// `--socket inet:127.0.0.1:PORT|unix:PATH --mode replied|nr [--add-header]`.
#[derive(Debug, Parser)]
#[command(about = "A milter that does nothing (benchmark anchor)")]
pub struct Args {
    /// Where to listen: `inet:HOST:PORT` or `unix:PATH`.
    #[arg(long)]
    pub socket: String,
    /// `replied`: every step asks for a reply; `nr`: every NR_* flag the MTA offers.
    #[arg(long, value_enum, default_value = "replied")]
    pub mode: Mode,
    /// Adds one header (`X-Bench: yes`) at end of message.
    #[arg(long)]
    pub add_header: bool,
    /// Connections served at once (the idle case holds 1,000).
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
}

/// The header added with `--add-header`.
pub const HEADER: (&str, &str) = ("X-Bench", "yes");

/// Where `spec` listens.
pub enum Socket<'a> {
    /// `inet:HOST:PORT`.
    Inet(&'a str),
    /// `unix:PATH`.
    Unix(&'a str),
}

/// Parses `inet:HOST:PORT` or `unix:PATH`.
pub fn parse_socket(spec: &str) -> anyhow::Result<Socket<'_>> {
    if let Some(a) = spec.strip_prefix("inet:") {
        Ok(Socket::Inet(a))
    } else if let Some(p) = spec.strip_prefix("unix:") {
        Ok(Socket::Unix(p))
    } else {
        anyhow::bail!("--socket {spec}: expected inet:HOST:PORT or unix:PATH")
    }
}
