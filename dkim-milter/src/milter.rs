//! Milter glue: adapts [`Transaction`](crate::transaction::Transaction) to milter-core.

/// The server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// milter-core's tokio server is not available in this build yet.
    #[error("the milter server (milter-core server module) is not available in this build")]
    NoServer,
}

/// Serves the milter protocol with the shared state until shutdown.
pub async fn serve(shared: crate::reload::Shared) -> Result<(), ServeError> {
    let _ = shared;
    Err(ServeError::NoServer)
}
