//! systemd integration: socket activation and readiness notification.
//!
//! With a `.socket` unit systemd owns the listening socket and passes it to every
//! instance of the daemon (`LISTEN_FDS`), so a restart leaves it listening: connections
//! that arrive while no instance runs wait in its backlog instead of being refused.
//! `Type=notify` units learn from `READY=1` that the daemon serves, and from `STOPPING=1`
//! that it drains.

use milter_core::server::{Builder, Server, systemd_listeners};

/// Adds the sockets systemd passed to `builder`, or, when there are none, the configured
/// `socket` address. Logs which, so an operator can tell a socket-activated instance from
/// one that bound its own.
pub fn listen(builder: Builder, socket: &str) -> Result<Builder, milter_core::Error> {
    let inherited = systemd_listeners()?;
    if inherited.is_empty() {
        tracing::info!(socket, "binding the configured socket");
        return builder.listen(socket);
    }
    let mut builder = builder;
    for (name, listener) in inherited {
        tracing::info!(
            address = %listener.local_addr(),
            name,
            configured = socket,
            "using the socket systemd passed (socket activation); the configured socket is not bound"
        );
        builder = builder.listener(listener);
    }
    Ok(builder)
}

/// Tells systemd (when `NOTIFY_SOCKET` is set) that `server` is ready, and that it is
/// stopping once its shutdown begins. Call it just before [`Server::serve`]. A failed
/// notification is logged, not fatal: the daemon serves either way.
pub fn notify_serving(server: &Server) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    send(sd_notify::NotifyState::Ready, "READY=1");
    let shutdown = server.shutdown_handle();
    tokio::spawn(async move {
        shutdown.wait().await;
        send(sd_notify::NotifyState::Stopping, "STOPPING=1");
    });
}

fn send(state: sd_notify::NotifyState<'_>, what: &str) {
    match sd_notify::notify(&[state]) {
        Ok(()) => tracing::debug!("sent {what} to systemd"),
        Err(e) => tracing::warn!(error = %e, "cannot send {what} to systemd"),
    }
}
