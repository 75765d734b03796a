//! Milter glue: adapts [`Transaction`] to milter-core's handler API and runs the server.
//!
//! One [`DkimMilter`] per milter connection. Connection facts (client address,
//! `{daemon_name}`) live as long as the connection; the [`Transaction`] lives from MAIL
//! to end of message or abort, and takes the state current at MAIL, so a reload never
//! changes a message half way.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::proto::command::code;
use milter_core::server::{Server, ShutdownHandle, UnixSocketOptions};
use milter_core::{
    Actions, Bytes, ConnectInfo, Envelope, ProtocolFlags, SocketInfo, Stage, Verdict,
};

use crate::config::Config;
use crate::metrics::DkimMetrics;
use crate::process::{self, Privileges};
use crate::reload::{Shared, State};
use crate::transaction::{EomOutcome, Facts, Transaction};
use crate::verify::{Caches, Verifier, authenticator};

/// The server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding or serving failed (bad socket address, address in use, permissions).
    #[error("milter server: {0}")]
    Server(#[from] milter_core::Error),
    /// The metrics recorder or endpoint could not be set up.
    #[error("metrics: {0}")]
    Metrics(#[from] milter_daemon::metrics::MetricsError),
    /// The resolver for `dns-servers` could not be set up.
    #[error("dns-servers: {0}")]
    Resolver(#[from] crate::verify::ResolverError),
    /// The process set-up (`user`, `allow-root`, `pid-file`, socket owner/group) failed.
    #[error("{0}")]
    Process(String),
    /// Keys and tables could not be read again as the `user` switched to.
    #[error("as user {user}: {error}")]
    AsUser {
        /// The user.
        user: String,
        /// What failed.
        error: crate::reload::LoadError,
    },
    /// The resolver for the key DNS checks (safe key rotation) could not be set up.
    #[error("key DNS checks: {0}")]
    KeyChecks(String),
    /// The DNS override file (a test hook) could not be read.
    #[error("dns-override-file {path}: {reason}")]
    DnsOverride {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Protocol steps we ask for when offered: no reply to events we never refuse (Postfix
/// then streams them without waiting), SKIP, and header values with their leading space.
///
/// `HEADER_LEADING_SPACE` is optional so an MTA without it still works: the transaction
/// then restores the stripped space itself (exact for all but odd `c=simple` headers).
/// `SKIP` only takes effect when `NR_BODY` was not negotiated (a skip is a reply).
pub const OPTIONAL_PROTOCOL: ProtocolFlags = ProtocolFlags::HEADER_LEADING_SPACE
    .union(ProtocolFlags::SKIP)
    .union(ProtocolFlags::ALL_NO_REPLY);

/// The milter negotiation request: header insert/delete, the macros the decision needs.
pub fn request() -> Request {
    Request::new()
        .with_actions(Actions::ADD_HEADERS | Actions::CHANGE_HEADERS)
        .with_optional_protocol(OPTIONAL_PROTOCOL)
        .with_macros(Stage::Connect, ["j", "{daemon_name}"])
        .with_macros(Stage::MailFrom, ["i", "{auth_type}", "{auth_authen}"])
        .with_macros(Stage::Data, ["i"])
        .with_macros(Stage::EndOfHeaders, ["i"])
        .with_macros(Stage::EndOfMessage, ["i"])
}

/// The handler for one milter connection.
pub struct DkimMilter {
    shared: Shared,
    verifier: Option<Arc<Verifier>>,
    // Shared, not cloned per connection: the counter sets hold Vecs (an idle connection's
    // footprint is measured in tests/bench/cases/idle.sh).
    metrics: Option<Arc<DkimMetrics>>,
    leadspc: bool,
    client_addr: Option<IpAddr>,
    unknown_family: bool,
    daemon_name: Option<String>,
    mta_hostname: Option<String>,
    // Boxed: a connection between messages (most of them, on a busy MX) then holds a
    // pointer, not the whole transaction inline in its task (tests/bench/cases/idle.sh).
    tx: Option<Box<Transaction>>,
}

impl std::fmt::Debug for DkimMilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimMilter")
            .field("client_addr", &self.client_addr)
            .field("daemon_name", &self.daemon_name)
            .field("in_message", &self.tx.is_some())
            .finish_non_exhaustive()
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

impl DkimMilter {
    /// A handler sharing the reloadable state and the verifier (`None`: no resolver, so
    /// inbound mail is passed with a log line saying so).
    pub fn new(shared: Shared, verifier: Option<Arc<Verifier>>) -> DkimMilter {
        DkimMilter {
            shared,
            verifier,
            metrics: None,
            leadspc: false,
            client_addr: None,
            unknown_family: false,
            daemon_name: None,
            mta_hostname: None,
            tx: None,
        }
    }

    /// Counts each message's outcome in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<DkimMetrics>) -> DkimMilter {
        self.metrics = Some(metrics);
        self
    }

    /// The transaction, started here if MAIL was not seen (a MTA that skips MAIL).
    fn tx(&mut self, ctx: &Context<'_>) -> &mut Transaction {
        self.tx.get_or_insert_with(|| {
            Box::new(Transaction::new(
                self.shared.load_full(),
                Facts {
                    client_addr: self.client_addr,
                    unknown_family: self.unknown_family,
                    daemon_name: self.daemon_name.clone(),
                    mta_hostname: self.mta_hostname.clone(),
                    auth_type: non_empty(ctx.macro_str("{auth_type}")),
                    auth_authen: non_empty(ctx.macro_str("{auth_authen}")),
                    queue_id: non_empty(ctx.macro_str("i")),
                },
                self.leadspc,
            ))
        })
    }

    /// Picks up a queue id that arrived after MAIL (Postfix assigns it late for some paths).
    fn refresh_queue_id(&mut self, ctx: &Context<'_>) {
        if let (Some(tx), Some(q)) = (self.tx.as_mut(), non_empty(ctx.macro_str("i"))) {
            tx.facts_mut().queue_id = Some(q);
        }
    }
}

/// Turns the outcome into modifications; the verdict to answer with.
///
/// Deletions go first: inserting our own `Authentication-Results` first would shift
/// the per-name occurrence numbers the deletions refer to.
pub fn apply_outcome(out: &EomOutcome, actions: &mut EomActions) -> Verdict {
    let mut failed = None;
    for (name, idx) in &out.delete {
        if let Err(e) = actions.delete_header(*name, *idx) {
            failed.get_or_insert(e);
        }
    }
    for (name, value) in &out.insert_top {
        if let Err(e) = actions.insert_header(0, *name, value.clone().into_bytes()) {
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        tracing::error!("{}; modification refused ({e}): tempfail", out.log);
        return Verdict::reply(451, "4.3.0", "DKIM milter internal error, try again later");
    }
    if let Some(text) = &out.reject {
        let (enhanced, text) = text.split_once(' ').unwrap_or(("5.7.1", text.as_str()));
        tracing::warn!("{}", out.log);
        return Verdict::reply(550, enhanced, text);
    }
    match &out.tempfail {
        Some(text) => {
            let (enhanced, text) = match text.split_once(' ') {
                Some((e, t)) if e.chars().all(|c| c.is_ascii_digit() || c == '.') => (e, t),
                _ => ("4.7.0", text.as_str()),
            };
            tracing::warn!("{}", out.log);
            Verdict::reply(451, enhanced, text)
        }
        None => {
            tracing::info!("{}", out.log);
            Verdict::Continue
        }
    }
}

impl Milter for DkimMilter {
    fn negotiate(&mut self, offer: &Offer) -> Request {
        self.leadspc = offer.protocol.contains(ProtocolFlags::HEADER_LEADING_SPACE);
        request()
    }

    async fn connect(&mut self, ctx: &Context<'_>, info: &ConnectInfo) -> Verdict {
        self.client_addr = match &info.socket {
            SocketInfo::Inet { addr, .. } => Some(*addr),
            _ => None,
        };
        self.unknown_family = matches!(info.socket, SocketInfo::Unknown);
        self.daemon_name = non_empty(ctx.macro_str("{daemon_name}"));
        self.mta_hostname = non_empty(ctx.macro_str("j"));
        self.tx = None;
        Verdict::Continue
    }

    async fn mail(&mut self, ctx: &Context<'_>, _from: &Envelope) -> Verdict {
        if let Some(n) = ctx.negotiated() {
            self.leadspc = n.leading_space();
        }
        // {daemon_name} is a connect macro, but a QUIT_NC reuse may bring a new one.
        if let Some(d) = non_empty(ctx.macro_str("{daemon_name}")) {
            self.daemon_name = Some(d);
        }
        if let Some(j) = non_empty(ctx.macro_str("j")) {
            self.mta_hostname = Some(j);
        }
        self.tx = None;
        self.tx(ctx);
        Verdict::Continue
    }

    async fn header(&mut self, ctx: &Context<'_>, name: Bytes, value: Bytes) -> Verdict {
        self.tx(ctx).header(&name, &value);
        Verdict::Continue
    }

    async fn eoh(&mut self, ctx: &Context<'_>) -> Verdict {
        self.refresh_queue_id(ctx);
        self.tx(ctx).end_of_headers();
        Verdict::Continue
    }

    async fn body(&mut self, ctx: &Context<'_>, chunk: Bytes) -> Verdict {
        let tx = self.tx(ctx);
        tx.body(&chunk);
        let can_skip = ctx
            .negotiated()
            .is_some_and(|n| n.skip() && !n.no_reply(code::BODY));
        if can_skip && !tx.wants_body() {
            Verdict::Skip
        } else {
            Verdict::Continue
        }
    }

    async fn eom(&mut self, ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        self.refresh_queue_id(ctx);
        self.tx(ctx);
        let Some(tx) = self.tx.take() else {
            return Verdict::Continue;
        };
        let out = tx.end_of_message(self.verifier.as_deref()).await;
        if let Some(m) = &self.metrics {
            m.message(&out.tally);
        }
        apply_outcome(&out, actions)
    }

    async fn abort(&mut self, _ctx: &Context<'_>) {
        self.tx = None;
    }

    async fn close(&mut self, _ctx: &Context<'_>) {
        self.tx = None;
    }
}

/// Builds the verifier: a resolver for `dns-servers` (an error if it cannot be built),
/// else the system resolver; its cache pre-filled from `dns-override-file` when set.
/// `Ok(None)` when there is no system resolver (logged; inbound mail is then passed).
pub fn build_verifier(config: &Config) -> Result<Option<Verifier>, ServeError> {
    let servers = config.dns_servers.as_deref();
    let auth = match authenticator(servers, config.dns_timeout.get()) {
        Ok(a) => a,
        Err(e) if servers.is_some() => return Err(e.into()),
        Err(e) => {
            tracing::warn!("no DNS resolver ({e}); inbound mail will not be verified");
            return Ok(None);
        }
    };
    match servers {
        Some(list) => tracing::info!(
            "verifier DNS: {} (timeout {})",
            list.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            config.dns_timeout
        ),
        None => tracing::debug!("verifier DNS: the system resolver (/etc/resolv.conf)"),
    }
    let caches = Caches::new(4096);
    if let Some(p) = config.dns_override_file.as_deref() {
        let bad = |reason: String| ServeError::DnsOverride {
            path: p.display().to_string(),
            reason,
        };
        let records = crate::activation::read_override_file(p).map_err(bad)?;
        let n = records.len();
        for (name, record) in records {
            // Ten years: the entries are the test zone, not a cache.
            caches.insert_dkim_key(&name, &record, Duration::from_secs(10 * 365 * 86400));
        }
        tracing::warn!(
            "dns-override-file {}: {n} TXT record(s) used instead of DNS (a test hook)",
            p.display()
        );
    }
    Ok(Some(
        Verifier::with_authenticator(auth, caches).with_minimum_key_bits(config.minimum_key_bits),
    ))
}

/// Serves the milter protocol with the shared state until SIGTERM/SIGINT (or `shutdown`),
/// then lets messages in flight finish. The server counts into the recorder current when
/// it binds (the one `metrics` renders), which `metrics-listen` (when set) serves on
/// `GET /metrics`.
///
/// Started as root it refuses to serve unless `user` or `allow-root` is set; with `user`
/// it binds (socket owner, group and mode set while still root), writes `pid-file`,
/// switches user and reads keys and tables again as that user.
pub async fn serve(
    shared: Shared,
    shutdown: Option<ShutdownHandle>,
    metrics: DkimMetrics,
) -> Result<(), ServeError> {
    let st = shared.load_full();
    let privileges =
        process::plan(&st.config, nix::unistd::geteuid()).map_err(ServeError::Process)?;
    let verifier = if st.config.mode.verifies() {
        build_verifier(&st.config)?.map(Arc::new)
    } else {
        None
    };
    // Names resolved here, through NSS, so accounts from LDAP and the like work too.
    let owner = match &st.config.socket_owner {
        Some(o) => Some(
            process::resolve_uid(o)
                .map_err(|e| ServeError::Process(format!("socket-owner: {e}")))?
                .to_string(),
        ),
        None => None,
    };
    let group = match &st.config.socket_group {
        Some(g) => Some(
            process::resolve_gid(g)
                .map_err(|e| ServeError::Process(format!("socket-group: {e}")))?
                .to_string(),
        ),
        None => None,
    };
    let unix = UnixSocketOptions {
        mode: st.config.socket_mode_bits(),
        owner,
        group,
        ..UnixSocketOptions::default()
    };
    // The socket systemd passed, if any (socket activation), else the configured one.
    let mut builder = milter_daemon::systemd::listen(Server::builder(), &st.config.socket)?
        .unix_socket(unix)
        .max_connections(st.config.max_connections)
        .shutdown_deadline(Duration::from_secs(30));
    if let Some(h) = shutdown {
        builder = builder.shutdown_handle(h);
    }
    let server = builder.bind().await?;
    if let Some(spec) = &st.config.metrics_listen {
        let addr =
            milter_daemon::metrics::serve(spec, metrics.handle().clone(), server.shutdown_handle())
                .await?;
        tracing::info!("dkim-milter metrics on http://{addr}/metrics");
    }
    // Removed when this function returns, whichever way.
    let pid_file = match &st.config.pid_file {
        Some(p) => Some(process::PidFile::write(p).map_err(ServeError::Process)?),
        None => None,
    };
    let mut st = st;
    if let Privileges::Switch(target) = &privileges {
        if let Some(pf) = &pid_file {
            pf.hand_to(target).map_err(ServeError::Process)?;
        }
        process::switch_to(target).map_err(ServeError::Process)?;
        tracing::info!("switched to user {target}");
        // Read keys and tables as the user every later reload reads them as.
        let again =
            State::build(st.config_path.as_deref()).map_err(|error| ServeError::AsUser {
                user: target.spec.clone(),
                error,
            })?;
        if again.keys.notes() != st.keys.notes() {
            tracing::info!("keys read again as {}:", target.spec);
            again.log_notes();
        }
        again.keys.gate().adopt(st.keys.gate());
        shared.store(Arc::new(again));
        st = shared.load_full();
    }
    let key_checks = start_key_checks(&shared, &st).await?;
    metrics.keys(&st);
    if let Some(pf) = &pid_file {
        tracing::info!(
            "pid {} written to {}",
            std::process::id(),
            pf.path().display()
        );
    }
    let authserv = match &st.config.authserv_id {
        Some(id) => id.clone(),
        None => format!("the MTA's j macro, else {}", st.authserv_id),
    };
    for a in server.local_addrs() {
        tracing::info!(
            "dkim-milter listening on {a}; {} signing domain(s)/key(s); authserv-id {authserv}",
            st.keys.usable_count(),
        );
    }
    let warnings = st.keys.warning_count();
    if warnings > 0 {
        tracing::warn!("{warnings} key warning(s) above; every other domain signs");
    }
    drop(st);
    milter_daemon::systemd::notify_serving(&server);
    let metrics = Arc::new(metrics);
    server
        .serve(move || {
            DkimMilter::new(shared.clone(), verifier.clone()).with_metrics(metrics.clone())
        })
        .await?;
    drop(pid_file);
    if let Some(t) = key_checks {
        t.abort();
    }
    Ok(())
}

/// Longest the first DNS check of the keys may hold up the start; what is not answered
/// by then is checked in the background (until then those domains use the fallback).
const FIRST_CHECK_LIMIT: Duration = Duration::from_secs(10);

/// Safe key rotation: checks the gated keys once before serving (bounded), then keeps
/// checking in a background task (see [`crate::activation::run`]).
async fn start_key_checks(
    shared: &Shared,
    st: &State,
) -> Result<Option<tokio::task::JoinHandle<()>>, ServeError> {
    // Started even with "immediate", so a reload that turns gating on has its checks.
    let checker = match crate::activation::Checker::new(&st.config) {
        Ok(c) => Arc::new(c),
        Err(e) if st.config.key_activation == crate::config::KeyActivation::Immediate => {
            tracing::warn!("no key DNS checks ({e}); fine while key-activation = \"immediate\"");
            return Ok(None);
        }
        Err(e) => return Err(ServeError::KeyChecks(e)),
    };
    if st.keys.has_gated()
        && tokio::time::timeout(FIRST_CHECK_LIMIT, checker.check_store(&st.keys))
            .await
            .is_err()
    {
        tracing::warn!(
            "DNS check of the keys not done after {FIRST_CHECK_LIMIT:?}; continuing in the background"
        );
    }
    Ok(Some(tokio::spawn(crate::activation::run(
        shared.clone(),
        checker,
    ))))
}
