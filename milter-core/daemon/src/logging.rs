//! `tracing` to stderr (journald and container logs take it from there); `RUST_LOG`
//! overrides the configured filter.

/// Installs the subscriber once; later calls are no-ops. An invalid `level` falls back to
/// `info` rather than silencing the daemon.
pub fn init(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
