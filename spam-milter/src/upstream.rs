//! The Rspamd upstreams: transport, failover, health checks and circuit breakers.
//!
//! [`Pool::scan`] sends one message to Rspamd's `POST /checkv2` and returns the parsed
//! verdict ([`Scanned`]) or says whose fault it was that there is none ([`ScanError`]).
//! Upstreams are picked per [`Selection`], skipping those whose [`Breaker`] is open or
//! whose last `GET /ping` health check failed, and the next one is tried after a failure,
//! all within `scan-deadline`.
//!
//! # Two transports
//!
//! `http://` upstreams (the usual case: Rspamd on loopback or the local network) go
//! through `upstream/plain.rs`: hyper's low-level HTTP/1 client on a fresh TCP connection
//! per scan, no pool, the reply read bounded by `max-reply-size`, no system proxy. It was
//! split off from the rspamd-client path for speed (tests/bench/PROFILE-spam.md).
//! `https://` upstreams go through rspamd-client, as described next; the reply parsing,
//! zstd handling, timeouts, failover, breakers and the request headers below are the same
//! for both.
//!
//! # Where `rspamd-client` 0.7.0 is used, wrapped or bypassed (rspamd.md §4.5)
//!
//! - **Used (https only):** one [`RspamdAsyncClient`] per upstream, built once in [`Pool::new`], and
//!   the crate's public low-level request path
//!   `ReqwestRequest::new(client, body, RspamdCommand::Scan, envelope).response()`, which
//!   sends the request (URL `{base}/checkv2`, `Password:`, optional zstd request body) and
//!   returns the raw `(HeaderMap, Bytes)` of a 2xx reply.
//! - **Bypassed: reply parsing.** `RspamdAsyncClient::scan` deserialises into the crate's
//!   own types, which reject whole replies over one odd field (`milter.add_headers` as an
//!   array or a string, `remove_headers` arrays, `messages` arrays; §4.5 items 2-5). We
//!   parse with [`crate::reply::parse`] instead, after splitting at `Message-Offset`.
//! - **Wrapped: zstd replies** (item 1). Rspamd before 3.11 marks a compressed reply only
//!   with `Compression: zstd`, which reqwest ignores and the crate checks only on its
//!   HTTPCrypt path. When that header is present and the body starts with the zstd magic
//!   `28 b5 2f fd` we decode it ourselves, with a streaming decoder bounded by
//!   `max-reply-size`. (Rspamd 3.11+ also sends `Content-Encoding: zstd`; reqwest has then
//!   decoded the body already, which is why the magic is checked.)
//! - **Wrapped: retries** (item 6). `retries(0)` panics (debug) or wraps to ~4 billion
//!   attempts (release), and the crate sleeps a full timeout between retries and never
//!   retries a 5xx. We always pass `retries(1)` (one attempt in total) and do failover,
//!   deadlines and breakers here.
//! - **Wrapped: timeouts.** Every attempt runs under `tokio::time::timeout` with
//!   min(`attempt-timeout`, time left before `scan-deadline`). reqwest's own timeout (the
//!   crate's `Config::timeout`) is set to `attempt-timeout` plus [`CLIENT_TIMEOUT_SLACK`]:
//!   it is only a backstop, so that ours always fires first and a timeout is reported as
//!   [`ScanError::Timeout`] (the crate turns reqwest's errors into strings, and a
//!   reqwest timeout cannot be told from a connection error there).
//! - **Lost: error bodies** (item 7). A non-2xx reply becomes the string
//!   `"Status: 500 Internal Server Error"` and its body (Rspamd's error text) is dropped by
//!   the crate; [`ScanError::Status`] carries only the code.
//! - **Residual risk (https only): unbounded reply read.** The crate reads the whole reply into memory
//!   (`response.bytes()`) before we see it, and reqwest decodes a `Content-Encoding: zstd`
//!   reply on the way, also without a bound. We check the size of what it returns against
//!   `max-reply-size` ([`ScanError::TooLarge`]), which bounds the parser but not that
//!   buffer. Only a broken or hostile server on the configured upstream address could
//!   send such a reply; keep upstreams on loopback or a trusted network.
//! - **Cannot turn off (https only): system proxies** (item 9). The crate's reqwest client honours
//!   `HTTP_PROXY`/`http_proxy`/`ALL_PROXY`/`all_proxy` (and `HTTPS_PROXY` for `https://`),
//!   even for 127.0.0.1, and its `Config` cannot disable that. [`Pool::new`] logs a WARN
//!   naming the variable when one is set and `NO_PROXY`/`no_proxy` does not cover the
//!   upstream's host. The health checks use our own reqwest client with `.no_proxy()`.
//! - **Not offered: unix sockets** (item 11). The crate only speaks TCP, so upstreams are
//!   `http://` or `https://` URLs.
//! - **Headers through [`rspamd_client::EnvelopeData`].** Its `additional_headers` is a
//!   `HashMap` (one value per name, arbitrary order), so `From`, `Rcpt` (one header per
//!   recipient, in order), `IP`, `User`, `Helo` and `Hostname` go to its typed fields and
//!   every other name to `additional_headers`, where each name may appear only once (the
//!   order between different names does not matter to Rspamd). Repeated `Flags` headers
//!   are joined with `,` (Rspamd reads a comma list); any other repeated name, a name the
//!   transport owns (`Password`, `Compression`, `Content-*`, `File`, ...) or a value that
//!   is not a valid HTTP header value is refused as [`ScanError::Request`] before any
//!   upstream is contacted.
//! - **No connection reuse** (item 8): Rspamd's normal worker closes the connection after
//!   each reply, so expect one TCP connection per scan attempt.
//!
//! # Metrics
//!
//! Registered by [`Pool::new`]; label values are the configured base URLs, so they are
//! bounded by the configuration:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `spam_milter_upstream_requests_total` | counter | `upstream`, `result` (`ok`/`error`), one per attempt |
//! | `spam_milter_upstream_failovers_total` | counter | attempts that moved on to another upstream after a failure |
//! | `spam_milter_upstreams_healthy` | gauge | upstreams usable now (breaker not open, last health check not failed) |
//! | `spam_milter_upstream_breakers_open` | gauge | breakers not closed (open or half-open) |
//! | `spam_milter_upstream_health_checks_total` | counter | `upstream`, `result` (`ok`/`error`) |
#![warn(missing_docs)]

use std::io::Read;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::{Counter, Gauge};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use rspamd_client::backend::async_client::ReqwestRequest;
use rspamd_client::backend::traits::Request as _;
use rspamd_client::error::RspamdError;
use rspamd_client::protocol::commands::RspamdCommand;
use rspamd_client::{EnvelopeData, RspamdAsyncClient};

use crate::config::{RspamdConfig, Selection};
use crate::reply::{self, ReplyError, ReplyLimits, ScanReply};

mod plain;

/// Added to `attempt-timeout` for reqwest's own (backstop) timeout, so that our
/// `tokio::time::timeout` always fires first.
pub const CLIENT_TIMEOUT_SLACK: Duration = Duration::from_secs(1);

/// Longest timeout of one `GET /ping` health check (shorter if `attempt-timeout` or
/// `health-check-interval` is shorter).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The zstd frame magic number, as the first four bytes of a frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Request headers the transport sets itself or that must never reach Rspamd from here
/// (`File`/`Path`/`Shm*` make Rspamd read a local file instead of the body, and make the
/// crate send a GET without body).
const RESERVED_HEADERS: &[&str] = &[
    "password",
    "compression",
    "content-encoding",
    "content-length",
    "content-type",
    "transfer-encoding",
    "accept-encoding",
    "connection",
    "host",
    "key",
    "file",
    "path",
    "shm",
    "shm-offset",
    "shm-length",
];

/// Checks an upstream base URL: `http://host:port` or `https://...`, no query.
pub fn parse_base_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || rest.contains('?') || rest.contains('#') {
        return Err("expected http://HOST:PORT".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Request, result, errors

/// One message to scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanRequest {
    /// Rspamd request headers (`From`, `Rcpt` once per recipient, `IP`, `Helo`,
    /// `Hostname`, `Queue-Id`, `User`, `Flags`, `Settings-ID`, `Settings`, `MTA-Name`,
    /// ...), all sent. `Rcpt` keeps its order; `Flags` may repeat (joined with `,`); any
    /// other name may appear once (see the [module docs](self)).
    pub headers: Vec<(String, String)>,
    /// The whole message, headers and body, as the MTA delivered it (CRLF line ends).
    pub body: Bytes,
}

/// A verdict, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Scanned {
    /// The parsed `/checkv2` reply.
    pub reply: ScanReply,
    /// The base URL of the upstream that answered, as configured.
    pub upstream: Arc<str>,
    /// Attempts made, this successful one included (2 after one failover).
    pub attempts: u32,
    /// Time from the start of [`Pool::scan`] to the verdict, across attempts.
    pub elapsed: Duration,
    /// The rewritten message Rspamd appended after the JSON (`Flags: body_block` and a
    /// `Message-Offset` reply header), if any.
    pub rewritten_body: Option<Bytes>,
}

/// Why a scan gave no verdict, and who is at fault.
///
/// After several failed attempts the error is the last attempt's, with the total number
/// of attempts. [`ScanError::label`] gives a bounded metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// `scan-deadline` passed: either while an attempt was running (`upstream` is the one
    /// that was cut short) or before another upstream could be tried.
    #[error("scan deadline passed{} after {attempts} attempt(s)", on(upstream))]
    Deadline {
        /// The upstream whose attempt the deadline cut short, if one was running.
        upstream: Option<Arc<str>>,
        /// Attempts made.
        attempts: u32,
    },
    /// No upstream could be tried: every breaker is open (or half-open with its one
    /// trial request already running).
    #[error("no rspamd upstream available (all circuit breakers open)")]
    Unavailable,
    /// The connection failed, or broke before the reply was complete.
    #[error("rspamd {upstream}: connection failed: {error} (attempt {attempts})")]
    Connect {
        /// The upstream.
        upstream: Arc<str>,
        /// Attempts made.
        attempts: u32,
        /// What went wrong, as reported by the HTTP client.
        error: String,
    },
    /// One attempt took longer than `attempt-timeout`.
    #[error("rspamd {upstream}: no reply within the attempt timeout (attempt {attempts})")]
    Timeout {
        /// The upstream.
        upstream: Arc<str>,
        /// Attempts made.
        attempts: u32,
    },
    /// The upstream answered with a non-2xx status (rspamd-client drops the body).
    #[error("rspamd {upstream}: HTTP status {code} (attempt {attempts})")]
    Status {
        /// The upstream.
        upstream: Arc<str>,
        /// Attempts made.
        attempts: u32,
        /// The HTTP status code.
        code: u16,
    },
    /// The reply could not be used: not a `/checkv2` JSON object, no `action`, a zstd
    /// reply that does not decode, a bad `Message-Offset`.
    #[error("rspamd {upstream}: unusable reply: {reason} (attempt {attempts})")]
    Garbage {
        /// The upstream.
        upstream: Arc<str>,
        /// Attempts made.
        attempts: u32,
        /// Why it could not be used.
        reason: String,
    },
    /// The reply (after zstd decoding, if any) is over `max-reply-size`.
    #[error("rspamd {upstream}: reply over the {max}-byte limit (attempt {attempts})")]
    TooLarge {
        /// The upstream.
        upstream: Arc<str>,
        /// Attempts made.
        attempts: u32,
        /// `max-reply-size`.
        max: usize,
    },
    /// Our fault: the request headers cannot be sent (a repeated name other than `Rcpt`
    /// and `Flags`, a name the transport owns, a value with control characters). No
    /// upstream was contacted and no breaker is affected.
    #[error("bad rspamd request: {reason}")]
    Request {
        /// What is wrong with the request.
        reason: String,
    },
}

fn on(upstream: &Option<Arc<str>>) -> String {
    upstream
        .as_ref()
        .map(|u| format!(" during an attempt on {u}"))
        .unwrap_or_default()
}

impl ScanError {
    /// A bounded metric label: `deadline`, `unavailable`, `connect`, `timeout`,
    /// `http_status`, `garbage`, `too_large`, `bad_request`.
    pub fn label(&self) -> &'static str {
        match self {
            ScanError::Deadline { .. } => "deadline",
            ScanError::Unavailable => "unavailable",
            ScanError::Connect { .. } => "connect",
            ScanError::Timeout { .. } => "timeout",
            ScanError::Status { .. } => "http_status",
            ScanError::Garbage { .. } => "garbage",
            ScanError::TooLarge { .. } => "too_large",
            ScanError::Request { .. } => "bad_request",
        }
    }

    /// The upstream of the (last) attempt, where there was one.
    pub fn upstream(&self) -> Option<&Arc<str>> {
        match self {
            ScanError::Deadline { upstream, .. } => upstream.as_ref(),
            ScanError::Unavailable | ScanError::Request { .. } => None,
            ScanError::Connect { upstream, .. }
            | ScanError::Timeout { upstream, .. }
            | ScanError::Status { upstream, .. }
            | ScanError::Garbage { upstream, .. }
            | ScanError::TooLarge { upstream, .. } => Some(upstream),
        }
    }

    /// Attempts made before giving up (0 when no upstream was tried).
    pub fn attempts(&self) -> u32 {
        match self {
            ScanError::Unavailable | ScanError::Request { .. } => 0,
            ScanError::Deadline { attempts, .. }
            | ScanError::Connect { attempts, .. }
            | ScanError::Timeout { attempts, .. }
            | ScanError::Status { attempts, .. }
            | ScanError::Garbage { attempts, .. }
            | ScanError::TooLarge { attempts, .. } => *attempts,
        }
    }
}

/// The pool could not be built (a configuration problem, reported at start or reload).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// `upstreams` is empty.
    #[error("no rspamd upstream configured")]
    NoUpstreams,
    /// An upstream URL does not parse.
    #[error("rspamd upstream {upstream:?}: {reason}")]
    Url {
        /// The configured URL.
        upstream: String,
        /// Why it does not parse.
        reason: String,
    },
    /// rspamd-client (or reqwest) refused to build a client.
    #[error("rspamd upstream {upstream}: cannot build the HTTP client: {reason}")]
    Client {
        /// The configured URL (empty for the health-check client).
        upstream: String,
        /// The client's error.
        reason: String,
    },
}

/// What went wrong in one attempt, before the upstream and attempt count are attached.
#[derive(Debug)]
enum Fault {
    Connect(String),
    Timeout,
    Status(u16),
    Garbage(String),
    TooLarge(usize),
}

impl Fault {
    fn into_error(self, upstream: Arc<str>, attempts: u32) -> ScanError {
        match self {
            Fault::Connect(error) => ScanError::Connect {
                upstream,
                attempts,
                error,
            },
            Fault::Timeout => ScanError::Timeout { upstream, attempts },
            Fault::Status(code) => ScanError::Status {
                upstream,
                attempts,
                code,
            },
            Fault::Garbage(reason) => ScanError::Garbage {
                upstream,
                attempts,
                reason,
            },
            Fault::TooLarge(max) => ScanError::TooLarge {
                upstream,
                attempts,
                max,
            },
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Connect(e) => write!(f, "connection failed: {e}"),
            Fault::Timeout => f.write_str("no reply within the attempt timeout"),
            Fault::Status(c) => write!(f, "HTTP status {c}"),
            Fault::Garbage(r) => write!(f, "unusable reply: {r}"),
            Fault::TooLarge(m) => write!(f, "reply over the {m}-byte limit"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Circuit breaker (sans-IO)

/// A [`Breaker`]'s state as seen at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; consecutive failures are counted.
    Closed,
    /// Tripped: requests are refused until the cooldown has passed.
    Open,
    /// Cooldown over (or a health check succeeded): one trial request may go through;
    /// its success closes the breaker, its failure opens it again.
    HalfOpen,
}

/// How a request was let through by [`Breaker::admit`]; give it back to
/// [`Breaker::abandon`] if the request ends without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker was closed.
    Normal,
    /// The one trial request of a half-open breaker.
    Trial,
}

/// A consecutive-failure circuit breaker, driven by explicit [`Instant`]s (no clock, no
/// IO, so it is tested without sleeping).
///
/// Closed → Open after `threshold` consecutive failures → HalfOpen once `cooldown` has
/// passed (or early, after a successful health check), letting exactly one trial request
/// through → Closed on its success, Open again (for another cooldown) on its failure.
/// Any success closes the breaker and resets the count.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { since: Instant },
    HalfOpen { trial_running: bool },
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures (0 counts as 1)
    /// and stays open for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            phase: Phase::Closed,
        }
    }

    /// The state at `now` (an open breaker whose cooldown has passed is half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { since } if now.saturating_duration_since(since) >= self.cooldown => {
                BreakerState::HalfOpen
            }
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Consecutive failures counted since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Whether [`Breaker::admit`] would let a request through at `now`.
    pub fn would_admit(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Closed => true,
            Phase::Open { since } => now.saturating_duration_since(since) >= self.cooldown,
            Phase::HalfOpen { trial_running } => !trial_running,
        }
    }

    /// Lets a request through, or not. A half-open breaker admits one trial at a time.
    pub fn admit(&mut self, now: Instant) -> Option<Admission> {
        match self.phase {
            Phase::Closed => Some(Admission::Normal),
            Phase::Open { since } if now.saturating_duration_since(since) >= self.cooldown => {
                self.phase = Phase::HalfOpen {
                    trial_running: true,
                };
                Some(Admission::Trial)
            }
            Phase::Open { .. } => None,
            Phase::HalfOpen {
                trial_running: false,
            } => {
                self.phase = Phase::HalfOpen {
                    trial_running: true,
                };
                Some(Admission::Trial)
            }
            Phase::HalfOpen {
                trial_running: true,
            } => None,
        }
    }

    /// A request succeeded: closes the breaker. Returns whether it was not closed before.
    pub fn record_success(&mut self) -> bool {
        self.failures = 0;
        let was_tripped = self.phase != Phase::Closed;
        self.phase = Phase::Closed;
        was_tripped
    }

    /// A request failed at `now`. Returns whether this opened the breaker (the
    /// `threshold`-th consecutive failure while closed, or any failure while half-open).
    /// A late failure of a request admitted before the breaker opened changes nothing.
    pub fn record_failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        match self.phase {
            Phase::Closed if self.failures < self.threshold => false,
            Phase::Closed | Phase::HalfOpen { .. } => {
                self.phase = Phase::Open { since: now };
                true
            }
            Phase::Open { .. } => false,
        }
    }

    /// A request admitted as `admission` ended without a result (cancelled, or cut short
    /// by the caller's deadline): frees the trial slot of a half-open breaker.
    pub fn abandon(&mut self, admission: Admission) {
        if admission == Admission::Trial
            && self.phase
                == (Phase::HalfOpen {
                    trial_running: true,
                })
        {
            self.phase = Phase::HalfOpen {
                trial_running: false,
            };
        }
    }

    /// A health check succeeded at `now`: an open breaker becomes half-open before its
    /// cooldown is over (it still needs a successful trial request to close). Returns
    /// whether it changed.
    pub fn health_ok(&mut self, now: Instant) -> bool {
        match self.phase {
            Phase::Open { since } if now.saturating_duration_since(since) < self.cooldown => {
                self.phase = Phase::HalfOpen {
                    trial_running: false,
                };
                true
            }
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The pool

/// One upstream's state, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// The base URL, as configured.
    pub url: Arc<str>,
    /// False once a health check has failed, until one succeeds.
    pub healthy: bool,
    /// Why the last health check failed, while `healthy` is false.
    pub health_error: Option<String>,
    /// The circuit breaker's state now.
    pub breaker: BreakerState,
    /// Consecutive failed requests.
    pub consecutive_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Health {
    /// Not probed yet: counted as healthy.
    Unknown,
    Up,
    Down(String),
}

#[derive(Debug)]
struct UpState {
    breaker: Breaker,
    health: Health,
}

struct Upstream {
    url: Arc<str>,
    /// The lean path for `http://` upstreams (`None`: https, through `client`).
    plain: Option<plain::Endpoint>,
    client: RspamdAsyncClient,
    ping: reqwest::Url,
    state: Mutex<UpState>,
    ok: Counter,
    err: Counter,
    probe_ok: Counter,
    probe_err: Counter,
}

impl Upstream {
    fn lock(&self) -> MutexGuard<'_, UpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The Rspamd upstreams of one configuration, shared by every milter connection.
///
/// Build it with [`Pool::new`], put it in an `Arc`, start [`Pool::spawn_health_checks`]
/// and call [`Pool::scan`] for each message. After a reload, a new pool built with the
/// same recorder shares the same counters; abort the old health-check task (it also ends
/// by itself once the old pool is dropped).
pub struct Pool {
    upstreams: Vec<Upstream>,
    selection: Selection,
    attempt_timeout: Duration,
    scan_deadline: Duration,
    max_reply_size: usize,
    limits: ReplyLimits,
    /// `Password:` for the plain path (rspamd-client sends it on the https path).
    password: Option<HeaderValue>,
    /// zstd request bodies (`compression = true`).
    compression: bool,
    health_interval: Duration,
    probe_timeout: Duration,
    probe_client: reqwest::Client,
    next: AtomicUsize,
    failovers: Counter,
    healthy: Gauge,
    breakers_open: Gauge,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("selection", &self.selection)
            .field("upstreams", &self.status())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Builds one rspamd-client client per upstream and resolves the
    /// `spam_milter_upstream*` metrics against the current recorder. Logs a WARN when a proxy variable in
    /// the environment would route scans through a proxy (see the [module docs](self)).
    pub fn new(cfg: &RspamdConfig) -> Result<Pool, PoolError> {
        if cfg.upstreams.is_empty() {
            return Err(PoolError::NoUpstreams);
        }
        let attempt_timeout = cfg.attempt_timeout.get();
        let health_interval = cfg.health_check_interval.get();
        let probe_timeout = PROBE_TIMEOUT.min(attempt_timeout).min(health_interval);
        let n = cfg.upstreams.len();
        // One series pair per configured upstream: bounded by the configuration.
        metrics::describe_counter!(
            "spam_milter_upstream_requests_total",
            "Requests (attempts) sent to each Rspamd upstream, by result (ok/error)."
        );
        metrics::describe_counter!(
            "spam_milter_upstream_health_checks_total",
            "GET /ping health checks of each Rspamd upstream, by result (ok/error)."
        );
        metrics::describe_counter!(
            "spam_milter_upstream_failovers_total",
            "Scan attempts that moved on to another Rspamd upstream after a failure."
        );
        metrics::describe_gauge!(
            "spam_milter_upstreams_healthy",
            "Rspamd upstreams usable now (breaker not open, last health check not failed)."
        );
        metrics::describe_gauge!(
            "spam_milter_upstream_breakers_open",
            "Rspamd upstreams whose circuit breaker is open or half-open."
        );
        let requests = |u: &str, result: &'static str| metrics::counter!("spam_milter_upstream_requests_total", "upstream" => u.to_owned(), "result" => result);
        let checks = |u: &str, result: &'static str| metrics::counter!("spam_milter_upstream_health_checks_total", "upstream" => u.to_owned(), "result" => result);
        let failovers = metrics::counter!("spam_milter_upstream_failovers_total");
        let healthy = metrics::gauge!("spam_milter_upstreams_healthy");
        let breakers_open = metrics::gauge!("spam_milter_upstream_breakers_open");
        let probe_client = reqwest::Client::builder()
            .no_proxy()
            .timeout(probe_timeout)
            .build()
            .map_err(|e| PoolError::Client {
                upstream: String::new(),
                reason: error_chain(&e),
            })?;

        let mut upstreams = Vec::with_capacity(n);
        for u in &cfg.upstreams {
            let bad = |reason: String| PoolError::Url {
                upstream: u.clone(),
                reason,
            };
            parse_base_url(u).map_err(bad)?;
            let mut ping = reqwest::Url::parse(u).map_err(|e| bad(e.to_string()))?;
            if ping.host_str().is_none() {
                return Err(bad("no host".into()));
            }
            ping.set_path("/ping");
            let plain = plain::Endpoint::of(&ping);
            // Only the https path (rspamd-client's reqwest) looks at proxy variables.
            if plain.is_some() {
            } else if let Some(var) = proxy_warning(&ping, |k| std::env::var(k).ok()) {
                tracing::warn!(
                    "{var} is set in the environment and NO_PROXY does not cover {u}: \
                     rspamd-client will send scans for {u} through that proxy (it cannot be \
                     turned off in its config); add the host to NO_PROXY or unset {var}"
                );
            }
            let mut config = rspamd_client::Config::builder()
                .base_url(u.clone())
                .timeout(attempt_timeout.saturating_add(CLIENT_TIMEOUT_SLACK))
                .retries(1)
                .zstd(cfg.compression)
                .build();
            config.password = cfg.password.clone();
            let client = RspamdAsyncClient::new(config).map_err(|e| PoolError::Client {
                upstream: u.clone(),
                reason: e.to_string(),
            })?;
            upstreams.push(Upstream {
                url: Arc::from(u.as_str()),
                plain,
                client,
                ping,
                state: Mutex::new(UpState {
                    breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown.get()),
                    health: Health::Unknown,
                }),
                ok: requests(u, "ok"),
                err: requests(u, "error"),
                probe_ok: checks(u, "ok"),
                probe_err: checks(u, "error"),
            });
        }
        let pool = Pool {
            upstreams,
            selection: cfg.selection,
            attempt_timeout,
            scan_deadline: cfg.scan_deadline.get(),
            max_reply_size: cfg.max_reply_size,
            limits: ReplyLimits {
                max_bytes: cfg.max_reply_size,
                ..ReplyLimits::default()
            },
            password: match &cfg.password {
                None => None,
                Some(p) => Some(HeaderValue::from_str(p).map_err(|_| PoolError::Client {
                    upstream: String::new(),
                    reason: "the password has control characters".into(),
                })?),
            },
            compression: cfg.compression,
            health_interval,
            probe_timeout,
            probe_client,
            next: AtomicUsize::new(0),
            failovers,
            healthy,
            breakers_open,
        };
        pool.refresh_gauges();
        Ok(pool)
    }

    /// Each upstream's health and breaker state now, in configured order.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        let now = Instant::now();
        self.upstreams
            .iter()
            .map(|u| {
                let st = u.lock();
                UpstreamStatus {
                    url: u.url.clone(),
                    healthy: !matches!(st.health, Health::Down(_)),
                    health_error: match &st.health {
                        Health::Down(r) => Some(r.clone()),
                        _ => None,
                    },
                    breaker: st.breaker.state(now),
                    consecutive_failures: st.breaker.consecutive_failures(),
                }
            })
            .collect()
    }

    /// Scans one message: tries upstreams in `selection` order until one gives a verdict,
    /// each at most once, never past `scan-deadline`.
    ///
    /// Upstreams whose breaker refuses the request are skipped, and so are those whose
    /// last health check failed, unless every upstream the breakers allow has failed its
    /// health check (then they are tried anyway: a health check alone never stops mail).
    /// Each attempt gets min(`attempt-timeout`, time left). A connection error, timeout,
    /// non-2xx status, unusable or oversized reply counts as a failure of that upstream
    /// for its breaker; an attempt cut short by the scan deadline does not.
    pub async fn scan(&self, req: &ScanRequest) -> Result<Scanned, ScanError> {
        let start = Instant::now();
        let prepared =
            Prepared::new(&req.headers).map_err(|reason| ScanError::Request { reason })?;
        let deadline = start + self.scan_deadline;
        let n = self.upstreams.len();
        let first = match self.selection {
            Selection::Failover => 0,
            Selection::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        let order = (0..n).map(|k| (first + k) % n);
        let any_healthy = order.clone().any(|i| {
            let st = self.upstreams[i].lock();
            st.breaker.would_admit(start) && !matches!(st.health, Health::Down(_))
        });
        let mut attempts = 0u32;
        let mut last: Option<ScanError> = None;
        for i in order {
            let up = &self.upstreams[i];
            let now = Instant::now();
            if any_healthy && matches!(up.lock().health, Health::Down(_)) {
                continue;
            }
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                return Err(ScanError::Deadline {
                    upstream: None,
                    attempts,
                });
            }
            let Some(admission) = up.lock().breaker.admit(now) else {
                tracing::debug!("rspamd upstream {}: skipped, circuit breaker open", up.url);
                continue;
            };
            let pending = Pending {
                up,
                admission: Some(admission),
            };
            if attempts > 0 {
                self.failovers.increment(1);
            }
            attempts += 1;
            let budget = self.attempt_timeout.min(remaining);
            let outcome =
                tokio::time::timeout(budget, self.attempt(up, &prepared, &req.body)).await;
            let fault = match outcome {
                Ok(Ok((reply, rewritten_body))) => {
                    up.ok.increment(1);
                    if pending.success() {
                        tracing::info!("rspamd upstream {}: circuit breaker closed", up.url);
                    }
                    self.refresh_gauges();
                    return Ok(Scanned {
                        reply,
                        upstream: up.url.clone(),
                        attempts,
                        elapsed: start.elapsed(),
                        rewritten_body,
                    });
                }
                Ok(Err(fault)) => fault,
                Err(_) if budget < self.attempt_timeout => {
                    // Cut short by the scan deadline: not this upstream's fault.
                    up.err.increment(1);
                    drop(pending);
                    tracing::warn!(
                        "rspamd upstream {}: scan deadline passed during attempt {attempts}",
                        up.url
                    );
                    return Err(ScanError::Deadline {
                        upstream: Some(up.url.clone()),
                        attempts,
                    });
                }
                Err(_) => Fault::Timeout,
            };
            up.err.increment(1);
            tracing::warn!("rspamd upstream {}: {fault} (attempt {attempts})", up.url);
            if pending.failure() {
                let (failures, cooldown) = {
                    let st = up.lock();
                    (st.breaker.consecutive_failures(), st.breaker.cooldown)
                };
                tracing::warn!(
                    "rspamd upstream {}: circuit breaker open after {failures} consecutive \
                     failures; skipping it for {cooldown:?}",
                    up.url,
                );
            }
            self.refresh_gauges();
            last = Some(fault.into_error(up.url.clone(), attempts));
        }
        Err(last.unwrap_or(ScanError::Unavailable))
    }

    /// One request to one upstream, without the timeout (the caller applies it).
    async fn attempt(
        &self,
        up: &Upstream,
        prepared: &Prepared,
        body: &Bytes,
    ) -> Result<(ScanReply, Option<Bytes>), Fault> {
        if let Some(ep) = &up.plain {
            let mut headers = prepared.wire.clone();
            if let Some(p) = &self.password {
                headers.insert("password", p.clone());
            }
            let body = if self.compression {
                headers.insert("content-encoding", HeaderValue::from_static("zstd"));
                headers.insert("compression", HeaderValue::from_static("zstd"));
                let z = zstd::encode_all(&body[..], 0)
                    .map_err(|e| Fault::Connect(format!("zstd request body: {e}")))?;
                plain::Chunks::new([Bytes::from(z)])
            } else {
                plain::Chunks::new([body.clone()])
            };
            let (headers, raw) = plain::post(ep, headers, body, self.max_reply_size).await?;
            return self.read_reply(&headers, raw);
        }
        let request = ReqwestRequest::new(
            up.client.clone(),
            body.clone(),
            RspamdCommand::Scan,
            prepared.envelope(),
        )
        .await
        .map_err(classify)?;
        let (headers, raw) = request.response().await.map_err(classify)?;
        self.read_reply(&headers, raw)
    }

    /// Size check, zstd decoding, `Message-Offset` split and parsing of a 2xx reply.
    fn read_reply(
        &self,
        headers: &HeaderMap,
        raw: Bytes,
    ) -> Result<(ScanReply, Option<Bytes>), Fault> {
        let max = self.max_reply_size;
        if raw.len() > max {
            return Err(Fault::TooLarge(max));
        }
        let compressed = headers
            .get_all("compression")
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"zstd"));
        let body = if compressed && raw.starts_with(&ZSTD_MAGIC) {
            Bytes::from(decode_zstd(&raw, max)?)
        } else {
            raw
        };
        let (json, rewritten) = match headers.get("message-offset") {
            None => (body, None),
            Some(v) => {
                let offset = v
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .filter(|&o| o <= body.len())
                    .ok_or_else(|| Fault::Garbage(format!("bad Message-Offset {v:?}")))?;
                let tail = body.slice(offset..);
                (body.slice(..offset), Some(tail))
            }
        };
        let reply = reply::parse(&json, &self.limits).map_err(|e| match e {
            ReplyError::TooLarge { max, .. } => Fault::TooLarge(max),
            e => Fault::Garbage(e.to_string()),
        })?;
        Ok((reply, rewritten))
    }

    /// Starts probing every upstream with `GET {base}/ping` (expecting `pong`) each
    /// `health-check-interval`, the first round at once.
    ///
    /// A failed probe marks the upstream down (logged once, `rspamd upstream X down:
    /// reason`), a successful one up (`... up again`) and moves an open breaker to
    /// half-open early. The task holds only a weak reference: it ends when the pool is
    /// dropped, or when the handle is aborted.
    pub fn spawn_health_checks(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Pool> = Arc::downgrade(self);
        let interval = self.health_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.probe_all().await;
            }
        })
    }

    /// One round of health checks, all upstreams at once.
    async fn probe_all(&self) {
        let mut set = tokio::task::JoinSet::new();
        for (i, up) in self.upstreams.iter().enumerate() {
            let client = self.probe_client.clone();
            let url = up.ping.clone();
            let limit = self.probe_timeout;
            set.spawn(async move {
                let r = match tokio::time::timeout(limit, probe(&client, url)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("/ping: no answer within {limit:?}")),
                };
                (i, r)
            });
        }
        while let Some(done) = set.join_next().await {
            if let Ok((i, result)) = done {
                self.apply_probe(&self.upstreams[i], result);
            }
        }
        self.refresh_gauges();
    }

    fn apply_probe(&self, up: &Upstream, result: Result<(), String>) {
        let now = Instant::now();
        let mut st = up.lock();
        match result {
            Ok(()) => {
                up.probe_ok.increment(1);
                let was_down = matches!(st.health, Health::Down(_));
                st.health = Health::Up;
                let half_opened = st.breaker.health_ok(now);
                drop(st);
                if was_down {
                    tracing::info!("rspamd upstream {} up again", up.url);
                }
                if half_opened {
                    tracing::info!(
                        "rspamd upstream {}: health check passed, circuit breaker half-open",
                        up.url
                    );
                }
            }
            Err(reason) => {
                up.probe_err.increment(1);
                let was_down = matches!(st.health, Health::Down(_));
                st.health = Health::Down(reason.clone());
                drop(st);
                if !was_down {
                    tracing::warn!("rspamd upstream {} down: {reason}", up.url);
                }
            }
        }
    }

    fn refresh_gauges(&self) {
        let now = Instant::now();
        let (mut healthy, mut open) = (0, 0);
        for up in &self.upstreams {
            let st = up.lock();
            let state = st.breaker.state(now);
            if state != BreakerState::Closed {
                open += 1;
            }
            if state != BreakerState::Open && !matches!(st.health, Health::Down(_)) {
                healthy += 1;
            }
        }
        self.healthy.set(healthy as f64);
        self.breakers_open.set(open as f64);
    }
}

/// A breaker admission not yet resolved; dropping it (a cancelled scan) frees a
/// half-open breaker's trial slot.
struct Pending<'a> {
    up: &'a Upstream,
    admission: Option<Admission>,
}

impl Pending<'_> {
    /// Returns whether the breaker closed.
    fn success(mut self) -> bool {
        self.admission = None;
        self.up.lock().breaker.record_success()
    }

    /// Returns whether the breaker opened.
    fn failure(mut self) -> bool {
        self.admission = None;
        self.up.lock().breaker.record_failure(Instant::now())
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.admission.take() {
            self.up.lock().breaker.abandon(a);
        }
    }
}

/// Sorts the rspamd-client error of one attempt into a [`Fault`].
fn classify(e: RspamdError) -> Fault {
    match e {
        RspamdError::HttpError(s) => match s.strip_prefix("Status: ") {
            Some(rest) => rest
                .get(..3)
                .and_then(|c| c.parse().ok())
                .map(Fault::Status)
                .unwrap_or(Fault::Connect(s)),
            None => Fault::Connect(s),
        },
        RspamdError::HTTPError(e) if e.is_decode() => Fault::Garbage(error_chain(&e)),
        RspamdError::HTTPError(e) if e.is_timeout() => Fault::Timeout,
        RspamdError::HTTPError(e) => Fault::Connect(error_chain(&e)),
        RspamdError::IOError(e) => Fault::Connect(e.to_string()),
        e => Fault::Garbage(e.to_string()),
    }
}

/// An error and its sources, `: `-separated (reqwest's Display omits the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Decodes a zstd reply, refusing to produce more than `max` bytes.
fn decode_zstd(raw: &[u8], max: usize) -> Result<Vec<u8>, Fault> {
    let garbage = |e: std::io::Error| Fault::Garbage(format!("zstd reply does not decode: {e}"));
    let mut dec = zstd::stream::read::Decoder::with_buffer(raw).map_err(garbage)?;
    // Bound the decoder's window too (a frame may ask for up to 2 GiB of it).
    let window = usize::BITS - max.max(1).leading_zeros();
    dec.window_log_max(window.clamp(23, 27)).map_err(garbage)?;
    let mut out = Vec::new();
    Read::take(&mut dec, max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(garbage)?;
    if out.len() > max {
        return Err(Fault::TooLarge(max));
    }
    Ok(out)
}

/// `GET /ping` must answer 2xx with `pong`.
async fn probe(client: &reqwest::Client, url: reqwest::Url) -> Result<(), String> {
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("/ping: {}", error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("/ping answered HTTP {}", resp.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("/ping: {}", error_chain(&e)))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > 64 {
            break;
        }
    }
    if body.trim_ascii() == b"pong" {
        Ok(())
    } else {
        let shown: String = String::from_utf8_lossy(&body).chars().take(32).collect();
        Err(format!("/ping answered {shown:?}, not \"pong\""))
    }
}

// ---------------------------------------------------------------------------------------
// Request headers -> EnvelopeData

/// The request headers checked once and sorted into `EnvelopeData`'s fields (it is not
/// `Clone`, so one is built per attempt).
#[derive(Debug, Default)]
struct Prepared {
    from: Option<String>,
    rcpt: Vec<String>,
    ip: Option<String>,
    user: Option<String>,
    helo: Option<String>,
    hostname: Option<String>,
    /// Every other header, each name once (case-insensitively), in order.
    extra: Vec<(String, String)>,
    /// All of the above as the plain path sends them (same names, same order).
    wire: HeaderMap,
}

impl Prepared {
    fn new(headers: &[(String, String)]) -> Result<Prepared, String> {
        let mut p = Prepared::default();
        for (name, value) in headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("{name:?} is not an HTTP header name"));
            }
            if HeaderValue::from_str(value).is_err() {
                return Err(format!(
                    "header {name}: value {value:?} has control characters"
                ));
            }
            let lower = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(format!(
                    "header {name} is set by the transport, not the request"
                ));
            }
            let once = |slot: &mut Option<String>| {
                if slot.is_some() {
                    return Err(format!("header {name} given twice"));
                }
                *slot = Some(value.clone());
                Ok(())
            };
            match lower.as_str() {
                "rcpt" => p.rcpt.push(value.clone()),
                "from" => once(&mut p.from)?,
                "ip" => once(&mut p.ip)?,
                "user" => once(&mut p.user)?,
                "helo" => once(&mut p.helo)?,
                "hostname" => once(&mut p.hostname)?,
                _ => match p
                    .extra
                    .iter_mut()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                {
                    Some((_, v)) if lower == "flags" => {
                        v.push(',');
                        v.push_str(value);
                    }
                    Some(_) => return Err(format!("header {name} given twice")),
                    None => p.extra.push((name.clone(), value.clone())),
                },
            }
        }
        p.wire = p.wire_headers()?;
        Ok(p)
    }

    /// The headers in rspamd-client's order (`EnvelopeData`'s iteration order).
    fn wire_headers(&self) -> Result<HeaderMap, String> {
        let mut m = HeaderMap::with_capacity(8 + self.rcpt.len() + self.extra.len());
        let typed = [
            ("from", &self.from),
            ("ip", &self.ip),
            ("user", &self.user),
            ("helo", &self.helo),
            ("hostname", &self.hostname),
        ];
        let typed = typed
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_deref()?)));
        let rcpt = self.rcpt.iter().map(|r| ("rcpt", r.as_str()));
        let extra = self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (k, v) in typed.chain(rcpt).chain(extra) {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("{k:?} is not an HTTP header name"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("header {k}: value {v:?} has control characters"))?;
            m.append(name, value);
        }
        Ok(m)
    }

    fn envelope(&self) -> EnvelopeData {
        EnvelopeData {
            from: self.from.clone(),
            rcpt: self.rcpt.clone(),
            ip: self.ip.clone(),
            user: self.user.clone(),
            helo: self.helo.clone(),
            hostname: self.hostname.clone(),
            file_path: None,
            body_block: false,
            additional_headers: self.extra.iter().cloned().collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Proxy environment check

/// The proxy variable that would route requests to `url` through a proxy, if any: the
/// first of `HTTP_PROXY`/`http_proxy`/`ALL_PROXY`/`all_proxy` (`HTTPS_PROXY`/`https_proxy`
/// first for `https://`) that is set, unless `NO_PROXY`/`no_proxy` covers the host.
fn proxy_warning(url: &reqwest::Url, env: impl Fn(&str) -> Option<String>) -> Option<&'static str> {
    let vars: &[&'static str] = if url.scheme() == "https" {
        &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    };
    let var = vars
        .iter()
        .copied()
        .find(|v| env(v).is_some_and(|x| !x.trim().is_empty()))?;
    let host = url.host_str()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let no = env("NO_PROXY")
        .or_else(|| env("no_proxy"))
        .unwrap_or_default();
    (!no_proxy_covers(&no, host)).then_some(var)
}

/// reqwest's (hyper-util's) `NO_PROXY` rules: comma list of `*`, IP addresses, IP
/// networks (`10.0.0.0/8`) and domains (matching themselves and their subdomains, with or
/// without a leading dot).
fn no_proxy_covers(list: &str, host: &str) -> bool {
    let ip: Option<IpAddr> = host.parse().ok();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some(ip) = ip {
                if let Ok(a) = entry.parse::<IpAddr>() {
                    return a == ip;
                }
                if let Some((net, len)) = entry.split_once('/')
                    && let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>())
                {
                    return in_network(ip, net, len);
                }
                return false;
            }
            let d = entry.strip_prefix('.').unwrap_or(entry);
            host.eq_ignore_ascii_case(d)
                || (host.len() > d.len()
                    && host.as_bytes()[host.len() - d.len() - 1] == b'.'
                    && host[host.len() - d.len()..].eq_ignore_ascii_case(d))
        })
}

fn in_network(ip: IpAddr, net: IpAddr, len: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn breaker_opens_after_threshold_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, 100 * MS);
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert!(!b.record_failure(t0));
        assert!(!b.record_failure(t0));
        // A success in between resets the count.
        assert!(!b.record_success());
        assert!(!b.record_failure(t0));
        assert!(!b.record_failure(t0));
        assert_eq!(b.admit(t0), Some(Admission::Normal));
        assert!(b.record_failure(t0), "third consecutive failure opens it");
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.consecutive_failures(), 3);
        assert!(!b.would_admit(t0 + 99 * MS));
        assert_eq!(b.admit(t0 + 99 * MS), None);
    }

    #[test]
    fn half_open_lets_exactly_one_trial_through() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, 100 * MS);
        assert!(b.record_failure(t0));
        let t1 = t0 + 100 * MS;
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(b.would_admit(t1));
        assert_eq!(b.admit(t1), Some(Admission::Trial));
        assert_eq!(b.admit(t1), None, "second request while the trial runs");
        assert!(!b.would_admit(t1 + 500 * MS));
        assert!(b.record_success(), "trial success closes it");
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.admit(t1), Some(Admission::Normal));
    }

    #[test]
    fn failed_trial_reopens_for_another_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, 100 * MS);
        b.record_failure(t0);
        b.record_failure(t0);
        let t1 = t0 + 150 * MS;
        assert_eq!(b.admit(t1), Some(Admission::Trial));
        assert!(b.record_failure(t1));
        assert_eq!(b.state(t1 + 99 * MS), BreakerState::Open);
        assert_eq!(b.admit(t1 + 99 * MS), None);
        assert_eq!(b.state(t1 + 100 * MS), BreakerState::HalfOpen);
        assert_eq!(b.admit(t1 + 100 * MS), Some(Admission::Trial));
    }

    #[test]
    fn abandoned_trial_frees_the_slot() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, 10 * MS);
        b.record_failure(t0);
        let t1 = t0 + 10 * MS;
        let a = b.admit(t1).unwrap();
        assert_eq!(a, Admission::Trial);
        assert_eq!(b.admit(t1), None);
        b.abandon(a);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.admit(t1), Some(Admission::Trial));
        // Abandoning a normal admission changes nothing.
        let mut c = Breaker::new(1, 10 * MS);
        c.abandon(Admission::Normal);
        assert_eq!(c.state(t0), BreakerState::Closed);
    }

    #[test]
    fn late_failure_while_open_does_not_extend_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, 100 * MS);
        b.record_failure(t0);
        assert!(!b.record_failure(t0 + 50 * MS));
        assert_eq!(b.state(t0 + 100 * MS), BreakerState::HalfOpen);
    }

    #[test]
    fn health_check_moves_open_to_half_open_early() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(60));
        assert!(!b.health_ok(t0), "closed: nothing to do");
        b.record_failure(t0);
        assert_eq!(b.admit(t0 + MS), None);
        assert!(b.health_ok(t0 + MS));
        assert_eq!(b.state(t0 + MS), BreakerState::HalfOpen);
        assert!(!b.health_ok(t0 + 2 * MS), "already half-open");
        assert_eq!(b.admit(t0 + 2 * MS), Some(Admission::Trial));
        assert_eq!(b.admit(t0 + 2 * MS), None);
    }

    #[test]
    fn zero_threshold_counts_as_one() {
        let t0 = Instant::now();
        let mut b = Breaker::new(0, MS);
        assert!(b.record_failure(t0));
    }

    #[test]
    fn labels_are_bounded_and_distinct() {
        let u: Arc<str> = Arc::from("http://x");
        let all = [
            ScanError::Deadline {
                upstream: None,
                attempts: 0,
            },
            ScanError::Unavailable,
            Fault::Connect("x".into()).into_error(u.clone(), 1),
            Fault::Timeout.into_error(u.clone(), 1),
            Fault::Status(500).into_error(u.clone(), 1),
            Fault::Garbage("x".into()).into_error(u.clone(), 1),
            Fault::TooLarge(1).into_error(u.clone(), 2),
            ScanError::Request { reason: "x".into() },
        ];
        let labels: Vec<_> = all.iter().map(ScanError::label).collect();
        // The metrics' fixed label set is exactly these, in this order.
        assert_eq!(labels, crate::metrics::SCAN_ERRORS);
        // The metrics resolve exactly these up front (a new kind must be added there).
        assert_eq!(labels, crate::metrics::SCAN_ERRORS);
        assert_eq!(all[6].attempts(), 2);
        assert_eq!(all[6].upstream().map(|u| &**u), Some("http://x"));
        assert!(all[4].to_string().contains("HTTP status 500"), "{}", all[4]);
    }

    #[test]
    fn classify_reads_the_status_out_of_the_crates_string() {
        assert!(matches!(
            classify(RspamdError::HttpError(
                "Status: 503 Service Unavailable".into()
            )),
            Fault::Status(503)
        ));
        assert!(matches!(
            classify(RspamdError::HttpError(
                "error sending request for url".into()
            )),
            Fault::Connect(_)
        ));
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn headers_are_sorted_into_the_envelope() {
        let p = Prepared::new(&h(&[
            ("From", "<a@example.com>"),
            ("Rcpt", "<b@example.com>"),
            ("Rcpt", "<c@example.com>"),
            ("IP", "192.0.2.1"),
            ("Helo", "mx.example.net"),
            ("Hostname", "mx.example.net"),
            ("User", "alice"),
            ("Queue-Id", "4AbC"),
            ("Flags", "milter"),
            ("flags", "body_block"),
            ("Settings-ID", "inbound"),
        ]))
        .unwrap();
        let e = p.envelope();
        assert_eq!(e.from.as_deref(), Some("<a@example.com>"));
        assert_eq!(e.rcpt, ["<b@example.com>", "<c@example.com>"]);
        assert_eq!(e.user.as_deref(), Some("alice"));
        assert_eq!(e.additional_headers["Flags"], "milter,body_block");
        assert_eq!(e.additional_headers["Queue-Id"], "4AbC");
        assert_eq!(e.additional_headers.len(), 3);
    }

    #[test]
    fn unsendable_headers_are_refused() {
        for bad in [
            h(&[("Queue-Id", "a"), ("queue-id", "b")]),
            h(&[("From", "<a@x>"), ("from", "<b@x>")]),
            h(&[("File", "/etc/passwd")]),
            h(&[("Compression", "zstd")]),
            h(&[("Helo", "a\r\nX-Evil: 1")]),
            h(&[("Bad Name", "x")]),
        ] {
            assert!(Prepared::new(&bad).is_err(), "{bad:?}");
        }
        // UTF-8 values are fine (SMTPUTF8 addresses).
        assert!(Prepared::new(&h(&[("Rcpt", "<jörg@exämple.de>")])).is_ok());
    }

    #[test]
    fn zstd_decoding_is_bounded() {
        let json = br#"{"action":"no action","score":1.0}"#;
        let z = zstd::encode_all(&json[..], 3).unwrap();
        assert!(z.starts_with(&ZSTD_MAGIC));
        assert_eq!(decode_zstd(&z, 1024).unwrap(), json);
        let big = zstd::encode_all(&vec![b' '; 100_000][..], 3).unwrap();
        assert!(big.len() < 1000);
        assert!(matches!(
            decode_zstd(&big, 10_000),
            Err(Fault::TooLarge(10_000))
        ));
        let mut broken = ZSTD_MAGIC.to_vec();
        broken.extend_from_slice(b"not a frame");
        assert!(matches!(decode_zstd(&broken, 1024), Err(Fault::Garbage(_))));
    }

    #[test]
    fn proxy_variables_warn_unless_no_proxy_covers_the_host() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let local = url("http://127.0.0.1:11333/ping");
        assert_eq!(proxy_warning(&local, env(&[])), None);
        assert_eq!(
            proxy_warning(&local, env(&[("http_proxy", "http://proxy:3128")])),
            Some("http_proxy")
        );
        assert_eq!(
            proxy_warning(&local, env(&[("ALL_PROXY", "socks5://p")])),
            Some("ALL_PROXY")
        );
        assert_eq!(
            proxy_warning(&local, env(&[("HTTPS_PROXY", "http://p")])),
            None,
            "https proxy does not apply to http"
        );
        for no in [
            "127.0.0.1",
            "localhost, 127.0.0.0/8",
            "*",
            " 10.0.0.1 ,127.0.0.1",
        ] {
            let pairs: &'static [(&str, &str)] =
                Box::leak(vec![("HTTP_PROXY", "http://p"), ("no_proxy", no)].into_boxed_slice());
            assert_eq!(proxy_warning(&local, env(pairs)), None, "{no}");
        }
        assert_eq!(
            proxy_warning(
                &local,
                env(&[("HTTP_PROXY", "http://p"), ("NO_PROXY", "localhost")])
            ),
            Some("HTTP_PROXY")
        );
        let named = url("http://rspamd.example.net:11333/");
        assert!(no_proxy_covers(".example.net", "rspamd.example.net"));
        assert!(no_proxy_covers("example.net", "rspamd.example.net"));
        assert!(!no_proxy_covers("ample.net", "rspamd.example.net"));
        assert_eq!(
            proxy_warning(
                &named,
                env(&[("HTTP_PROXY", "http://p"), ("NO_PROXY", "example.net")])
            ),
            None
        );
        let v6 = url("http://[::1]:11333/");
        assert_eq!(
            proxy_warning(&v6, env(&[("HTTP_PROXY", "http://p"), ("NO_PROXY", "::1")])),
            None
        );
        assert!(no_proxy_covers("fd00::/8", "fd12::1"));
        assert!(!no_proxy_covers("10.0.0.0/8", "11.0.0.1"));
    }
}
