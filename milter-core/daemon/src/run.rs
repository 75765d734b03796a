//! The runtime around a daemon's async `serve`, mapping its result to an exit code.

use std::future::Future;
use std::process::ExitCode;

/// Runs `fut` on a multi-threaded tokio runtime; an error is logged and exits 1.
pub fn block_on<F, E>(fut: F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
