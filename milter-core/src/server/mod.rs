//! The tokio server: listens, runs one [`Milter`] per connection, and shuts down
//! without cutting SMTP sessions.
//!
//! ```no_run
//! # use milter_core::handler::Milter;
//! # struct Noop; impl Milter for Noop {}
//! # async fn run() -> Result<(), milter_core::Error> {
//! use milter_core::Verdict;
//! use milter_core::server::Server;
//! use std::time::Duration;
//!
//! Server::builder()
//!     .listen("inet:127.0.0.1:8891")?
//!     .max_connections(100)
//!     .callback_timeout(Duration::from_secs(60))
//!     .callback_timeout_verdict(Verdict::Tempfail)
//!     .shutdown_deadline(Duration::from_secs(300))
//!     .serve(|| Noop)
//!     .await
//! # }
//! ```
//!
//! Behaviour worth knowing:
//! - When `max_connections` are busy the server stops accepting; further MTA connects wait
//!   in the kernel's backlog rather than being accepted and dropped.
//! - A peer's malformed frame, out-of-order command, timeout or I/O error closes that
//!   connection only, with one log line giving the reason. A panicking handler closes its
//!   connection only, logged.
//! - Waits for the MTA default to libmilter's (7210 s; see [`Timeouts::libmilter`]): an
//!   SMTP session can leave its milter connection quiet for a long time, and closing it
//!   makes the MTA apply its default action (Postfix: `milter_default_action`) to that
//!   session's next message.
//! - Every handler callback runs under a time budget ([`Builder::callback_timeout`],
//!   default 300 s). When it runs out, the callback's future is dropped and the command
//!   answered with [`Builder::callback_timeout_verdict`] (default tempfail); at end of
//!   message PROGRESS stops then too, so a hung backend (DNS, a scanner) cannot keep the
//!   SMTP client waiting or hold a connection slot for ever. While a callback that owes
//!   the MTA an answer runs, the socket is watched: if the MTA closes the connection (it
//!   gave up waiting, e.g. after Postfix's `milter_command_timeout`), the callback is
//!   dropped at once and its slot freed. A callback that blocks its thread instead of
//!   awaiting cannot be dropped; keep blocking work in `spawn_blocking`.
//! - With the `metrics` feature, every connection, message, verdict, protocol error and
//!   timeout is counted through the `metrics` facade into whatever recorder the program
//!   installed before [`Builder::bind`] (names: `milter_core::metrics`).
//!
//! # Shutdown: draining without cutting sessions
//!
//! The MTA opens one milter connection per SMTP session and keeps it for all of that
//! session's messages. If the milter closes it between messages, Postfix applies
//! `milter_default_action` (tempfail; `shutdown` since 3.11: 421 and disconnect) to the
//! session's next message; Sendmail likewise applies the filter's `F=` flag. So on SIGTERM
//! or SIGINT (or [`ShutdownHandle::shutdown`]) the server:
//!
//! 1. stops accepting at once: the listening sockets are closed (unix socket files it
//!    created are removed; inherited ones stay), so a new instance can bind the same
//!    address, or accept on the same inherited socket, and take the MTA's new connections;
//! 2. keeps serving every open connection as before, further messages included, until
//!    the MTA sends QUIT or closes it. Connections that are between messages, or have
//!    only done CONNECT/HELO, are *not* closed: every message in flight, and every later
//!    message of those SMTP sessions, gets its reply;
//! 3. when the drain deadline ([`Builder::shutdown_deadline`], default 30 s) passes,
//!    stops what is left: a callback still running is dropped and its command answered
//!    with the callback-timeout verdict, `abort`/`close` run (1 s grace), and the
//!    connections close. Size the deadline to the MTA's SMTP sessions (Postfix's
//!    `smtpd_timeout` is 300 s per command, and its SMTP client reuses connections for up
//!    to 300 s), and keep the service manager's stop timeout above it;
//! 4. returns from [`Server::serve`] once every connection has closed.
//!
//! A second SIGTERM/SIGINT during the drain skips to step 3.
//!
//! # Restarts that refuse nothing: an inherited listener
//!
//! A process that binds its own address leaves a gap on restart: between the old one
//! closing its listener and the new one binding, a connection is refused and the MTA
//! applies its default action to that SMTP session. Hand the server a socket that a
//! longer-lived owner keeps listening instead ([`Builder::listener`], [`Builder::listen_fd`],
//! or systemd socket activation through [`systemd_listeners`]): while no process accepts,
//! new connections wait in the socket's backlog, and the next process accepts them.
//!
//! ```no_run
//! # use milter_core::handler::Milter;
//! # struct Noop; impl Milter for Noop {}
//! # async fn run() -> Result<(), milter_core::Error> {
//! use milter_core::server::{Server, systemd_listeners};
//!
//! let mut builder = Server::builder();
//! let inherited = systemd_listeners()?;
//! if inherited.is_empty() {
//!     builder = builder.listen("inet:127.0.0.1:8891")?;
//! }
//! for (_name, listener) in inherited {
//!     builder = builder.listener(listener);
//! }
//! builder.serve(|| Noop).await
//! # }
//! ```

mod conn;
mod endpoint;
mod limits;
mod metrics;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use conn::{ConnectionConfig, serve_connection};
pub use endpoint::{BoundAddr, Endpoint, Inherited, UnixSocketOptions, systemd_listeners};
pub use limits::{Limits, Timeouts};
pub use metrics::ServerMetrics;

use crate::error::Error;
use crate::handler::Milter;
use crate::proto::Verdict;
use endpoint::Listener;

/// Asks a server to shut down gracefully; clones share the request.
#[derive(Debug, Clone, Default)]
pub struct ShutdownHandle {
    token: CancellationToken,
}

impl ShutdownHandle {
    /// A handle not yet triggered.
    pub fn new() -> ShutdownHandle {
        ShutdownHandle::default()
    }

    /// Stops accepting; open connections are served until the MTA quits or closes them,
    /// or the server's drain deadline passes (see the [module docs](self)).
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Whether shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown is requested.
    pub async fn wait(&self) {
        self.token.cancelled().await
    }
}

/// Configures and binds a [`Server`].
#[derive(Debug, Clone)]
pub struct Builder {
    endpoints: Vec<Endpoint>,
    /// Shared so the builder stays `Clone`; [`Builder::bind`] duplicates the descriptor.
    inherited: Vec<Arc<Inherited>>,
    unix: UnixSocketOptions,
    limits: Limits,
    timeouts: Timeouts,
    callback_timeout_verdict: Verdict,
    shutdown_deadline: Duration,
    handle_signals: bool,
    shutdown: ShutdownHandle,
}

impl Builder {
    /// Adds a listen address (`inet:HOST:PORT`, `inet:PORT@HOST`, `unix:/path`, ...; see
    /// [`Endpoint`]). Refused here, at start, if it does not parse.
    pub fn listen(mut self, spec: &str) -> Result<Builder, Error> {
        self.endpoints.push(Endpoint::parse(spec)?);
        Ok(self)
    }

    /// Serves on a socket that is already listening (TCP or unix), e.g. one held by a
    /// supervisor across restarts; see [Restarts](self#restarts-that-refuse-nothing-an-inherited-listener).
    /// Its unix socket file, if any, is left in place at shutdown.
    pub fn listener(mut self, listener: impl Into<Inherited>) -> Builder {
        self.inherited.push(Arc::new(listener.into()));
        self
    }

    /// Serves on a listening socket given as a file descriptor; refused unless it is a
    /// listening TCP or unix stream socket.
    pub fn listen_fd(self, fd: std::os::fd::OwnedFd) -> Result<Builder, Error> {
        Ok(self.listener(Inherited::from_fd(fd)?))
    }

    /// Adds a parsed listen address.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Builder {
        self.endpoints.push(endpoint);
        self
    }

    /// Mode, owner, group and stale-file handling of unix sockets.
    pub fn unix_socket(mut self, options: UnixSocketOptions) -> Builder {
        self.unix = options;
        self
    }

    /// Connections served at once (default 256); at least 1.
    pub fn max_connections(mut self, n: usize) -> Builder {
        self.limits.max_connections = n.max(1);
        self
    }

    /// All limits at once.
    pub fn limits(mut self, limits: Limits) -> Builder {
        self.limits = limits;
        self.limits.max_connections = self.limits.max_connections.max(1);
        self
    }

    /// Per-phase timeouts and the callback budget (default [`Timeouts::libmilter`]).
    /// Replaces a budget set by [`callback_timeout`](Self::callback_timeout) before it.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Builder {
        self.timeouts = timeouts;
        self
    }

    /// The most any one handler callback may run (default 300 s; [`Duration::MAX`]: no
    /// limit). Past it the callback's future is dropped (at its current await point) and
    /// the command is answered with [`callback_timeout_verdict`](Self::callback_timeout_verdict);
    /// at end of message PROGRESS stops and what the handler recorded in its
    /// [`EomActions`](crate::handler::EomActions) is not sent. `abort` and `close` are
    /// bounded too (then simply abandoned). Sets [`Timeouts::callback`].
    ///
    /// Separately, while a callback owes the MTA an answer, a closed connection (the MTA
    /// gave up) drops the callback at once, whatever its budget.
    pub fn callback_timeout(mut self, budget: Duration) -> Builder {
        self.timeouts.callback = budget;
        self
    }

    /// The answer to a command whose callback ran out of its budget (default
    /// [`Verdict::Tempfail`]: the MTA retries later, nothing is lost). [`Verdict::Accept`]
    /// or [`Verdict::Continue`] fail open instead. A verdict the protocol does not allow
    /// at that stage becomes a logged tempfail, as for the handler's own verdicts.
    pub fn callback_timeout_verdict(mut self, verdict: Verdict) -> Builder {
        self.callback_timeout_verdict = verdict;
        self
    }

    /// How long a shutdown keeps serving open connections before it stops them (default
    /// 30 s); see the [module docs](self).
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Builder {
        self.shutdown_deadline = deadline;
        self
    }

    /// Whether SIGTERM and SIGINT trigger a graceful shutdown (default true).
    pub fn handle_signals(mut self, on: bool) -> Builder {
        self.handle_signals = on;
        self
    }

    /// Uses `handle` to request shutdown (e.g. shared with the rest of a daemon).
    pub fn shutdown_handle(mut self, handle: ShutdownHandle) -> Builder {
        self.shutdown = handle;
        self
    }

    /// Binds every address. Errors name the address and the reason (in use, permission,
    /// not a socket, ...).
    pub async fn bind(self) -> Result<Server, Error> {
        if self.endpoints.is_empty() && self.inherited.is_empty() {
            return Err(Error::Address {
                spec: String::new(),
                reason: "no listen address given".into(),
            });
        }
        let metrics = ServerMetrics::register();
        let mut listeners = Vec::with_capacity(self.endpoints.len() + self.inherited.len());
        for l in &self.inherited {
            let l = endpoint::adopt(l)?;
            tracing::info!(address = %l.local_addr(), "listening on an inherited socket");
            listeners.push(l);
        }
        for ep in &self.endpoints {
            let l = endpoint::bind(ep, &self.unix).await?;
            tracing::info!(address = %l.local_addr(), "listening");
            listeners.push(l);
        }
        Ok(Server {
            listeners,
            limits: self.limits,
            timeouts: self.timeouts,
            callback_timeout_verdict: self.callback_timeout_verdict,
            shutdown_deadline: self.shutdown_deadline,
            handle_signals: self.handle_signals,
            shutdown: self.shutdown,
            metrics,
        })
    }

    /// Binds, then serves until shutdown; `factory` makes one handler per connection.
    pub async fn serve<F, M>(self, factory: F) -> Result<(), Error>
    where
        F: Fn() -> M + Send + Sync + 'static,
        M: Milter,
    {
        self.bind().await?.serve(factory).await
    }
}

/// A bound milter server.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<Listener>,
    limits: Limits,
    timeouts: Timeouts,
    callback_timeout_verdict: Verdict,
    shutdown_deadline: Duration,
    handle_signals: bool,
    shutdown: ShutdownHandle,
    metrics: ServerMetrics,
}

impl Server {
    /// A builder with the defaults: [`Timeouts::libmilter`] (300 s callback budget,
    /// answered with tempfail), [`Limits::standard`], a 30 s drain deadline, signals
    /// handled.
    pub fn builder() -> Builder {
        Builder {
            endpoints: Vec::new(),
            inherited: Vec::new(),
            unix: UnixSocketOptions::default(),
            limits: Limits::standard(),
            timeouts: Timeouts::libmilter(),
            callback_timeout_verdict: Verdict::Tempfail,
            shutdown_deadline: Duration::from_secs(30),
            handle_signals: true,
            shutdown: ShutdownHandle::new(),
        }
    }

    /// The addresses bound (with real ports when port 0 was asked for).
    pub fn local_addrs(&self) -> Vec<BoundAddr> {
        self.listeners.iter().map(Listener::local_addr).collect()
    }

    /// A handle that shuts this server down gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves until shutdown is requested, then drains (see the [module docs](self)):
    /// returns once every connection has closed, by itself or at the drain deadline.
    pub async fn serve<F, M>(self, factory: F) -> Result<(), Error>
    where
        F: Fn() -> M + Send + Sync + 'static,
        M: Milter,
    {
        let shutdown = self.shutdown.clone();
        // Triggered at the drain deadline: every connection stops.
        let hard_stop = ShutdownHandle::new();
        if self.handle_signals {
            spawn_signal_watch(shutdown.clone(), hard_stop.clone())?;
        }
        let shared = Arc::new(Shared {
            factory,
            permits: Arc::new(Semaphore::new(self.limits.max_connections)),
            tracker: TaskTracker::new(),
            hard_stop: hard_stop.clone(),
            next_id: AtomicU64::new(1),
            accepting: shutdown.clone(),
            config: ConnectionConfig {
                timeouts: self.timeouts,
                limits: self.limits,
                connection_id: 0,
                shutdown: hard_stop.clone(),
                metrics: Some(self.metrics),
                callback_timeout_verdict: self.callback_timeout_verdict,
            },
        });
        let mut accepts = tokio::task::JoinSet::new();
        for l in self.listeners {
            accepts.spawn(accept_loop(l, shared.clone()));
        }
        tokio::select! {
            _ = shutdown.wait() => {}
            Some(r) = accepts.join_next() => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "accept loop ended unexpectedly; shutting down");
                }
            }
        }
        shutdown.shutdown();
        // Stop accepting: the loops end and drop their listeners (removing socket files).
        accepts.abort_all();
        while accepts.join_next().await.is_some() {}
        shared.tracker.close();
        let open = shared.tracker.len();
        tracing::info!(
            open_connections = open,
            deadline = ?self.shutdown_deadline,
            "shutting down: no longer accepting; open connections are served until the MTA closes them or the deadline passes"
        );
        let drained = tokio::select! {
            r = tokio::time::timeout(self.shutdown_deadline, shared.tracker.wait()) => r.is_ok(),
            _ = hard_stop.wait() => false,
        };
        if !drained {
            tracing::warn!(
                open_connections = shared.tracker.len(),
                "drain deadline passed; closing the remaining connections"
            );
            hard_stop.shutdown();
            shared.tracker.wait().await;
        }
        // Also ends the signal watch.
        hard_stop.shutdown();
        tracing::info!("server stopped");
        Ok(())
    }
}

/// How long a connection told to stop may take to answer and run `abort`/`close`
/// before its task is aborted.
const STOP_GRACE: Duration = Duration::from_secs(1);

struct Shared<F> {
    factory: F,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    /// Triggered at the drain deadline (also [`ConnectionConfig::shutdown`]).
    hard_stop: ShutdownHandle,
    next_id: AtomicU64,
    /// Triggered when the server stops accepting.
    accepting: ShutdownHandle,
    config: ConnectionConfig,
}

/// First signal: graceful shutdown (drain). Second: stop the connections now.
fn spawn_signal_watch(shutdown: ShutdownHandle, hard_stop: ShutdownHandle) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = shutdown.wait() => "",
        };
        if !name.is_empty() {
            tracing::info!(signal = name, "shutdown requested by signal");
            shutdown.shutdown();
        }
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hard_stop.wait() => return,
        };
        tracing::warn!(
            signal = name,
            "second signal: not waiting for open connections"
        );
        hard_stop.shutdown();
    });
    Ok(())
}

async fn accept_loop<F, M>(listener: Listener, shared: Arc<Shared<F>>)
where
    F: Fn() -> M + Send + Sync + 'static,
    M: Milter,
{
    let shutdown = shared.accepting.clone();
    loop {
        // Backpressure: take a slot before accepting, so a full server leaves new
        // connections in the backlog instead of accepting and dropping them.
        let permit = tokio::select! {
            p = shared.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.wait() => return,
        };
        let accepted = tokio::select! {
            r = accept(&listener) => r,
            _ = shutdown.wait() => return,
        };
        match accepted {
            Ok(Accepted::Tcp(stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::warn!(%peer, error = %e, "cannot set TCP_NODELAY");
                }
                spawn_connection(stream, peer.to_string(), permit, &shared);
            }
            Ok(Accepted::Unix(stream)) => {
                let peer = match &listener {
                    Listener::Unix(..) => listener.local_addr().to_string(),
                    Listener::Tcp(_) => String::new(),
                };
                spawn_connection(stream, peer, permit, &shared);
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

fn spawn_connection<S, F, M>(
    stream: S,
    peer: String,
    permit: tokio::sync::OwnedSemaphorePermit,
    shared: &Arc<Shared<F>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    F: Fn() -> M + Send + Sync + 'static,
    M: Milter,
{
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("milter_conn", id, peer = %peer);
    span.in_scope(|| tracing::debug!("connection accepted"));
    let inner_shared = shared.clone();
    let inner = tokio::spawn(
        async move {
            let mut config = inner_shared.config.clone();
            config.connection_id = id;
            serve_connection(stream, &inner_shared.factory, &config).await
        }
        .instrument(span.clone()),
    );
    let hard_stop = shared.hard_stop.clone();
    shared.tracker.spawn(async move {
        let _permit = permit;
        let abort = inner.abort_handle();
        // The connection sees the stop itself; this only catches one that does not end.
        let overdue = async {
            hard_stop.wait().await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        tokio::select! {
            r = inner => match r {
                Ok(_) => {}
                Err(e) if e.is_panic() => {
                    let msg = panic_message(e.into_panic());
                    span.in_scope(|| {
                        tracing::error!(panic = %msg, "connection closed: handler panicked: {msg}")
                    });
                }
                Err(_) => {}
            },
            _ = overdue => {
                abort.abort();
                span.in_scope(|| tracing::warn!("connection aborted: it did not stop within {STOP_GRACE:?} of the drain deadline"));
            }
        }
    });
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
