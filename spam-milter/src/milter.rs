//! Milter glue: collects each message through milter-core's handler API, asks the
//! upstream pool at end of message, and applies the [`Decision`] as milter actions.
//!
//! One [`SpamMilter`] per milter connection (one SMTP session). Session facts live as
//! long as the connection; a message's envelope, buffer and the state it is judged by
//! are taken at MAIL and dropped at end of message or abort, so a reload never changes a
//! message half way.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::server::{Server, ShutdownHandle, UnixSocketOptions};
use milter_core::{
    Actions, Bytes, ConnectInfo, Envelope as MilterEnvelope, ProtocolFlags, SocketInfo, Stage,
    Verdict,
};

use crate::decision::{self, Decision, Edit, Headers, Outcome, Reply};
use crate::message::{Collector, Connection, Envelope};
use crate::metrics::SpamMetrics;
use crate::policy;
use crate::request;
use crate::state::{Shared, State};
use crate::upstream::{Pool, ScanRequest};

/// The server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding or serving failed (bad socket address, address in use, permissions).
    #[error("milter server: {0}")]
    Server(#[from] milter_core::Error),
    /// The metrics could not be registered (a bug: the names are fixed).
    #[error("metrics: {0}")]
    Metrics(#[from] milter_daemon::metrics::MetricsError),
    /// The upstream pool could not be built.
    #[error("rspamd upstreams: {0}")]
    Pool(String),
    /// Root without `user` or `allow-root`, or `user` could not be become.
    #[error("{0}")]
    Privileges(String),
    /// After switching to `user`, the config could not be read again as that user (so
    /// every later reload would fail).
    #[error("as user {user}: {error}")]
    AsUser {
        /// The `user` option.
        user: String,
        /// What failed.
        error: milter_daemon::ConfigError,
    },
}

/// Actions we cannot work without: Rspamd's header work.
pub const REQUIRED_ACTIONS: Actions = Actions::ADD_HEADERS.union(Actions::CHANGE_HEADERS);

/// Actions used when the MTA offers them (Postfix offers all): the milter block's envelope
/// changes and quarantine. Without them those parts of a verdict are logged and skipped.
pub const OPTIONAL_ACTIONS: Actions = Actions::CHANGE_FROM
    .union(Actions::ADD_RCPT)
    .union(Actions::DELETE_RCPT)
    .union(Actions::QUARANTINE);

/// The negotiation request for an offer: no reply to any event before end of message
/// (Postfix then streams the message without waiting), the macros Rspamd needs.
pub fn request(offer: &Offer) -> Request {
    Request::new()
        .with_actions(REQUIRED_ACTIONS | (OPTIONAL_ACTIONS & offer.actions))
        .with_optional_protocol(ProtocolFlags::ALL_NO_REPLY)
        .with_macros(
            Stage::Connect,
            ["j", "{daemon_name}", "{client_addr}", "{client_name}"],
        )
        .with_macros(Stage::Helo, ["{tls_version}", "{cipher}"])
        .with_macros(
            Stage::MailFrom,
            [
                "i",
                "{auth_type}",
                "{auth_authen}",
                "{tls_version}",
                "{cipher}",
            ],
        )
        .with_macros(Stage::Data, ["i"])
        .with_macros(Stage::EndOfHeaders, ["i"])
        .with_macros(Stage::EndOfMessage, ["i"])
}

/// What every connection shares: the reloadable state, the upstream pool, the metrics.
#[derive(Debug)]
pub struct Services {
    state: Shared,
    pool: Arc<Pool>,
    metrics: Option<SpamMetrics>,
    hostname: String,
}

impl Services {
    /// Bundles them; `hostname` is the `MTA-Name` of last resort.
    pub fn new(
        state: Shared,
        pool: Arc<Pool>,
        metrics: Option<SpamMetrics>,
        hostname: String,
    ) -> Services {
        Services {
            state,
            pool,
            metrics,
            hostname,
        }
    }
}

/// One message in progress.
#[derive(Debug)]
struct Message {
    state: Arc<State>,
    env: Envelope,
    collector: Collector,
}

/// The handler for one milter connection.
#[derive(Debug)]
pub struct SpamMilter {
    shared: Arc<Services>,
    conn: Connection,
    // Boxed: between messages a connection holds a pointer, not the message state inline
    // in its task (an idle connection's footprint: tests/bench/cases/idle.sh).
    msg: Option<Box<Message>>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

impl SpamMilter {
    /// A handler on the shared state and pool.
    pub fn new(shared: Arc<Services>) -> SpamMilter {
        SpamMilter {
            shared,
            conn: Connection::default(),
            msg: None,
        }
    }

    fn session_macros(&mut self, ctx: &Context<'_>) {
        if let Some(d) = non_empty(ctx.macro_str("{daemon_name}")) {
            self.conn.daemon_name = Some(d);
        }
        if let Some(j) = non_empty(ctx.macro_str("j")) {
            self.conn.mta_host = Some(j);
        }
        if let Some(v) = non_empty(ctx.macro_str("{tls_version}")) {
            self.conn.tls_version = Some(v);
        }
        if let Some(c) = non_empty(ctx.macro_str("{cipher}")) {
            self.conn.tls_cipher = Some(c);
        }
    }

    fn message(&mut self, ctx: &Context<'_>) -> &mut Message {
        let shared = &self.shared;
        self.msg.get_or_insert_with(|| {
            let state = shared.state.load_full();
            let max = state.config.max_message_size;
            Box::new(Message {
                env: Envelope {
                    auth_user: non_empty(ctx.macro_str("{auth_authen}")),
                    queue_id: non_empty(ctx.macro_str("i")),
                    ..Envelope::default()
                },
                collector: Collector::new(max),
                state,
            })
        })
    }
}

impl Milter for SpamMilter {
    fn negotiate(&mut self, offer: &Offer) -> Request {
        request(offer)
    }

    async fn connect(&mut self, ctx: &Context<'_>, info: &ConnectInfo) -> Verdict {
        self.conn = Connection {
            client_addr: match &info.socket {
                SocketInfo::Inet { addr, .. } => Some(*addr),
                _ => None,
            },
            ..Connection::default()
        };
        let name = String::from_utf8_lossy(&info.hostname).into_owned();
        self.conn.set_client_name(&name);
        if self.conn.client_name.is_none()
            && let Some(n) = non_empty(ctx.macro_str("{client_name}"))
        {
            self.conn.set_client_name(&n);
        }
        if self.conn.client_addr.is_none() {
            self.conn.client_addr =
                non_empty(ctx.macro_str("{client_addr}")).and_then(|a| a.parse::<IpAddr>().ok());
        }
        self.session_macros(ctx);
        self.msg = None;
        Verdict::Continue
    }

    async fn helo(&mut self, ctx: &Context<'_>, helo: Bytes) -> Verdict {
        self.conn.helo = non_empty(Some(String::from_utf8_lossy(&helo).into_owned()));
        self.session_macros(ctx);
        Verdict::Continue
    }

    async fn mail(&mut self, ctx: &Context<'_>, from: &MilterEnvelope) -> Verdict {
        self.session_macros(ctx);
        self.msg = None;
        let m = self.message(ctx);
        m.env.from = String::from_utf8_lossy(&from.address).into_owned();
        Verdict::Continue
    }

    async fn rcpt(&mut self, ctx: &Context<'_>, rcpt: &MilterEnvelope) -> Verdict {
        let m = self.message(ctx);
        // Bounded like everything per message: Postfix's own recipient limit is 1000.
        if m.env.rcpts.len() < 10_000 {
            m.env
                .rcpts
                .push(String::from_utf8_lossy(&rcpt.address).into_owned());
        }
        Verdict::Continue
    }

    async fn header(&mut self, ctx: &Context<'_>, name: Bytes, value: Bytes) -> Verdict {
        self.message(ctx).collector.header(&name, &value);
        Verdict::Continue
    }

    async fn eoh(&mut self, ctx: &Context<'_>) -> Verdict {
        let m = self.message(ctx);
        m.collector.end_of_headers();
        if let Some(q) = non_empty(ctx.macro_str("i")) {
            m.env.queue_id = Some(q);
        }
        Verdict::Continue
    }

    async fn body(&mut self, ctx: &Context<'_>, chunk: Bytes) -> Verdict {
        self.message(ctx).collector.body(&chunk);
        Verdict::Continue
    }

    async fn eom(&mut self, ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        self.message(ctx);
        let Some(mut m) = self.msg.take() else {
            return Verdict::Continue;
        };
        if let Some(q) = non_empty(ctx.macro_str("i")) {
            m.env.queue_id = Some(q);
        }
        let cfg = &m.state.config;
        let policy = policy::resolve(cfg, &self.conn, &m.env);
        let started = Instant::now();
        let mut upstream = None;
        let error_text: String;
        let scanned;
        let outcome = if policy.skip {
            Outcome::Skipped
        } else if m.collector.oversize() || m.collector.too_many_headers() {
            Outcome::Oversize {
                size: m.collector.size(),
                max: cfg.max_message_size,
            }
        } else {
            let mta_name = cfg
                .rspamd
                .mta_name
                .clone()
                .or_else(|| self.conn.mta_host.clone())
                .unwrap_or_else(|| self.shared.hostname.clone());
            let req = ScanRequest {
                headers: request::headers(&self.conn, &m.env, &policy, &mta_name),
                body: m.collector.take_message(),
            };
            scanned = self.shared.pool.scan(&req).await;
            match &scanned {
                Ok(s) => {
                    upstream = Some(s.upstream.clone());
                    if let Some(metrics) = &self.shared.metrics {
                        metrics.scanned(s.elapsed);
                    }
                    Outcome::Scanned(&s.reply)
                }
                Err(e) => {
                    if let Some(metrics) = &self.shared.metrics {
                        metrics.scan_error(e.label());
                    }
                    error_text = e.to_string();
                    Outcome::Failed {
                        label: e.label(),
                        detail: &error_text,
                    }
                }
            }
        };
        let headers = Headers {
            names: m.collector.header_names(),
            subject: m.collector.subject(),
        };
        let d = decision::decide(outcome, &policy, &cfg.actions, cfg.on_oversize, headers);
        let forged = d.forged_removed;
        if let Some(metrics) = &self.shared.metrics {
            metrics.decision(&d);
        }
        let verdict = apply(&d, actions);
        // The decision line's parts are only built when it will be written (a bench or a
        // busy site at log-level warn pays nothing for them).
        if tracing::enabled!(tracing::Level::INFO) {
            let qid = m.env.queue_id.as_deref().unwrap_or("NOQUEUE");
            let client = match (&self.conn.client_addr, &self.conn.client_name) {
                (Some(a), Some(n)) => format!("{n}[{a}]"),
                (Some(a), None) => format!("unknown[{a}]"),
                (None, _) => "local".to_string(),
            };
            let took = started.elapsed();
            let forged_note = if forged > 0 {
                format!("; removed {forged} forged header(s)")
            } else {
                String::new()
            };
            let up = upstream
                .map(|u| format!(" upstream={u}"))
                .unwrap_or_default();
            let daemon = self
                .conn
                .daemon_name
                .as_deref()
                .map(|d| format!(" daemon={d}"))
                .unwrap_or_default();
            tracing::info!(
                "{qid}: client={client}{daemon} from={} rcpts={} policy={}: {}{forged_note}{up} latency={}ms",
                m.env.from,
                m.env.rcpts.len(),
                policy.name,
                d.summary,
                took.as_millis()
            );
        }
        verdict
    }

    async fn abort(&mut self, _ctx: &Context<'_>) {
        self.msg = None;
    }

    async fn close(&mut self, _ctx: &Context<'_>) {
        self.msg = None;
    }
}

/// Turns a decision into modifications and the verdict. An edit the MTA did not allow
/// (an action not offered) is skipped with a warning; the verdict still stands, because
/// dropping Rspamd's header work is better than refusing the message for it.
pub fn apply(d: &Decision, actions: &mut EomActions) -> Verdict {
    for e in &d.edits {
        let r = match e {
            Edit::Delete { name, occurrence } => {
                actions.delete_header(name.clone().into_bytes(), *occurrence)
            }
            Edit::Change {
                name,
                occurrence,
                value,
            } => actions.change_header(
                name.clone().into_bytes(),
                *occurrence,
                value.clone().into_bytes(),
            ),
            Edit::Insert { index, name, value } => actions.insert_header(
                *index,
                name.clone().into_bytes(),
                value.clone().into_bytes(),
            ),
            Edit::Add { name, value } => {
                actions.add_header(name.clone().into_bytes(), value.clone().into_bytes())
            }
            Edit::ChangeFrom(a) => actions.change_from(a.clone().into_bytes(), None),
            Edit::AddRcpt(a) => actions.add_rcpt(a.clone().into_bytes()),
            Edit::DelRcpt(a) => actions.delete_rcpt(a.clone().into_bytes()),
        };
        if let Err(err) = r {
            tracing::warn!("modification {e:?} skipped: {err}");
        }
    }
    if let Some(q) = &d.quarantine
        && let Err(err) = actions.quarantine(q.clone().into_bytes())
    {
        tracing::warn!("quarantine skipped (the MTA did not offer it): {err}");
    }
    match &d.reply {
        Reply::Accept => Verdict::Continue,
        Reply::Discard => Verdict::Discard,
        Reply::Reject {
            code,
            enhanced,
            text,
        }
        | Reply::Tempfail {
            code,
            enhanced,
            text,
        } => Verdict::reply(*code, enhanced, text),
    }
}

/// Serves until SIGTERM/SIGINT (or `shutdown`), then lets messages in flight finish.
pub async fn serve(
    state: Shared,
    shutdown: Option<ShutdownHandle>,
    metrics: SpamMetrics,
) -> Result<(), ServeError> {
    let st = state.load_full();
    let cfg = &st.config;
    // Refused before anything is bound; switched after binding (milter-daemon's privilege).
    let privileges = milter_daemon::privilege::plan(
        cfg.user.as_deref(),
        cfg.allow_root,
        nix::unistd::geteuid(),
        "spam-milter",
    )
    .map_err(ServeError::Privileges)?;
    let pool = Arc::new(Pool::new(&cfg.rspamd).map_err(|e| ServeError::Pool(e.to_string()))?);
    let unix = UnixSocketOptions {
        mode: cfg.socket_mode.map(|m| m.bits()),
        ..UnixSocketOptions::default()
    };
    // The socket systemd passed, if any (socket activation), else the configured one.
    let mut builder = milter_daemon::systemd::listen(Server::builder(), &cfg.socket)?
        .unix_socket(unix)
        .max_connections(cfg.max_connections)
        .shutdown_deadline(Duration::from_secs(30));
    if let Some(h) = shutdown {
        builder = builder.shutdown_handle(h);
    }
    let server = builder.bind().await?;
    let health = pool.spawn_health_checks();
    if let Some(spec) = &cfg.metrics_listen {
        let addr =
            milter_daemon::metrics::serve(spec, metrics.handle().clone(), server.shutdown_handle())
                .await?;
        tracing::info!("spam-milter metrics on http://{addr}/metrics");
    }
    if let milter_daemon::privilege::Privileges::Switch(target) = &privileges {
        milter_daemon::privilege::switch_to(target).map_err(ServeError::Privileges)?;
        tracing::info!("switched to user {target}");
        // Read the config as the user every later reload reads it as.
        let again =
            State::build(st.config_path.as_deref()).map_err(|error| ServeError::AsUser {
                user: target.spec.clone(),
                error,
            })?;
        state.store(Arc::new(again));
    }
    for a in server.local_addrs() {
        tracing::info!("spam-milter listening on {a}; {}", st.describe());
    }
    let shared = Arc::new(Services::new(
        state,
        pool,
        Some(metrics),
        milter_daemon::config::hostname(),
    ));
    drop(st);
    milter_daemon::systemd::notify_serving(&server);
    let r = server.serve(move || SpamMilter::new(shared.clone())).await;
    health.abort();
    r?;
    Ok(())
}
