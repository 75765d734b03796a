//! Replaying stored messages through a milter, once each or as a load generator.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::client::{ClientConfig, MilterClient, Transaction};
use crate::error::Error;

/// Expands files and directories into `.eml` files (directories: their `.eml` files,
/// sorted; not recursive). A file given by name is taken whatever its extension.
pub fn collect_inputs(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "eml"))
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// The envelope sidecar of `msg.eml`: `msg.eml.json`, else `msg.json`, looked up next to
/// the message or, when `dir` is given, in `dir`.
pub fn sidecar_path(message: &Path, dir: Option<&Path>) -> Option<PathBuf> {
    let file = message.file_name()?;
    let base = dir.map_or_else(
        || message.parent().map(Path::to_path_buf),
        |d| Some(d.to_path_buf()),
    )?;
    let mut long = file.to_os_string();
    long.push(".json");
    let short = Path::new(file).with_extension("json");
    [base.join(long), base.join(short)]
        .into_iter()
        .find(|p| p.is_file())
}

/// Reads a message and its envelope sidecar (default envelope when there is none).
#[cfg(feature = "cli")]
pub fn load_transaction(
    message: &Path,
    envelope_dir: Option<&Path>,
) -> Result<Transaction, String> {
    use crate::client::Envelope;
    let bytes = std::fs::read(message).map_err(|e| format!("{}: {e}", message.display()))?;
    let envelope = match sidecar_path(message, envelope_dir) {
        Some(p) => {
            let text = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_slice::<Envelope>(&text)
                .map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => Envelope::default(),
    };
    Ok(Transaction {
        envelope,
        message: bytes::Bytes::from(bytes),
    })
}

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Messages that got a final answer.
    pub completed: usize,
    /// Messages that failed (I/O, timeout, protocol error), with the first errors.
    pub errors: usize,
    /// Up to ten error texts.
    pub error_samples: Vec<String>,
    /// Accepted messages.
    pub accepted: usize,
    /// Messages with at least one modification.
    pub modified: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Per-message latencies, MAIL to final answer (connection setup excluded), sorted.
    pub latencies: Vec<Duration>,
    /// Connections opened (negotiated) during the run.
    pub connections: usize,
    /// With [`Load::connection_per_message`]: per-message latencies from the TCP or
    /// unix connect to the final answer (negotiation, CONNECT, HELO included), sorted;
    /// empty otherwise.
    pub connect_latencies: Vec<Duration>,
}

impl LoadReport {
    /// Completed messages per second.
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.completed as f64 / s
        } else {
            0.0
        }
    }

    /// The `p`-th percentile latency (0..=100), nearest rank.
    pub fn percentile(&self, p: f64) -> Duration {
        nearest_rank(&self.latencies, p)
    }

    /// The `p`-th percentile of [`LoadReport::connect_latencies`], nearest rank.
    pub fn connect_percentile(&self, p: f64) -> Duration {
        nearest_rank(&self.connect_latencies, p)
    }

    /// One line of figures; with a connection per message it ends with the
    /// connect-to-answer percentiles.
    pub fn summary(&self) -> String {
        let mut line = self.session_summary();
        if !self.connect_latencies.is_empty() {
            line.push_str(&format!(
                ", {} connections, connect to answer p50 {:.2} ms, p99 {:.2} ms",
                self.connections,
                self.connect_percentile(50.0).as_secs_f64() * 1e3,
                self.connect_percentile(99.0).as_secs_f64() * 1e3,
            ));
        }
        line
    }

    fn session_summary(&self) -> String {
        format!(
            "{} messages in {:.2} s over connections: {:.1} msg/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, {} errors, {} accepted, {} modified",
            self.completed,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.percentile(50.0).as_secs_f64() * 1e3,
            self.percentile(90.0).as_secs_f64() * 1e3,
            self.percentile(99.0).as_secs_f64() * 1e3,
            self.errors,
            self.accepted,
            self.modified
        )
    }
}

fn nearest_rank(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    sorted.get(i).copied().unwrap_or_default()
}

// How a load run sends its messages (the builder's settings, unpacked).
#[derive(Debug, Clone, Copy)]
struct LoadOptions {
    concurrency: usize,
    count: usize,
    connection_per_message: bool,
}

/// A load run: stored messages sent through a milter over several connections at once.
///
/// ```no_run
/// # async fn demo(inputs: Vec<milter_core::client::Transaction>) -> Result<(), milter_core::Error> {
/// use std::sync::Arc;
/// use milter_core::client::replay::Load;
///
/// let report = Load::new("inet:127.0.0.1:8891", Arc::new(inputs))
///     .concurrency(64)
///     .messages(10_000)
///     .run()
///     .await?;
/// println!("{}", report.summary());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Load {
    endpoint: String,
    config: ClientConfig,
    inputs: Arc<Vec<Transaction>>,
    concurrency: usize,
    messages: Option<usize>,
    connection_per_message: bool,
}

impl Load {
    /// Sends each of `inputs` once over one connection to `endpoint` (an address as
    /// [`MilterClient::connect`] takes it), with the default [`ClientConfig`], until the
    /// setters say otherwise.
    pub fn new(endpoint: impl Into<String>, inputs: Arc<Vec<Transaction>>) -> Load {
        Load {
            endpoint: endpoint.into(),
            config: ClientConfig::default(),
            inputs,
            concurrency: 1,
            messages: None,
            connection_per_message: false,
        }
    }

    /// The MTA side's settings for every connection.
    pub fn client_config(mut self, config: ClientConfig) -> Load {
        self.config = config;
        self
    }

    /// How many connections send at once (at least 1; default 1).
    pub fn concurrency(mut self, connections: usize) -> Load {
        self.concurrency = connections.max(1);
        self
    }

    /// How many messages to send in all, cycling through the inputs (default: each input
    /// once).
    pub fn messages(mut self, count: usize) -> Load {
        self.messages = Some(count);
        self
    }

    /// A new connection (negotiation, CONNECT, HELO) for every message and QUIT after it,
    /// as Postfix does without connection caching (default: off, each connection carries
    /// many messages with ABORT between them, as one long SMTP session does).
    pub fn connection_per_message(mut self, on: bool) -> Load {
        self.connection_per_message = on;
        self
    }

    /// Runs it. A connection that fails is replaced by a new one. An error only when there
    /// is nothing to send; failed messages are counted in the report.
    pub async fn run(&self) -> Result<LoadReport, Error> {
        let options = LoadOptions {
            concurrency: self.concurrency,
            count: self.messages.unwrap_or(self.inputs.len()),
            connection_per_message: self.connection_per_message,
        };
        run_load(&self.endpoint, &self.config, self.inputs.clone(), options).await
    }
}
async fn run_load(
    endpoint: &str,
    config: &ClientConfig,
    inputs: Arc<Vec<Transaction>>,
    options: LoadOptions,
) -> Result<LoadReport, Error> {
    let LoadOptions {
        concurrency,
        count,
        connection_per_message,
    } = options;
    if inputs.is_empty() {
        return Err(Error::Usage(crate::error::UsageError::InvalidField {
            field: "inputs",
            reason: "no messages to send",
        }));
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, inputs, config, endpoint) = (
            next.clone(),
            inputs.clone(),
            config.clone(),
            endpoint.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut r = Partial::default();
            let mut client: Option<MilterClient> = None;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                let Some(tx) = inputs.get(n % inputs.len()) else {
                    break;
                };
                let t0 = Instant::now();
                if client.is_none() {
                    match MilterClient::connect(&endpoint, config.clone()).await {
                        Ok(c) => {
                            r.connections += 1;
                            client = Some(c);
                        }
                        Err(e) => {
                            r.error(e);
                            continue;
                        }
                    }
                }
                let Some(c) = client.as_mut() else { continue };
                match c.send_transaction(tx).await {
                    Ok(o) => {
                        let mail = c.mail_sent_at().unwrap_or(t0);
                        r.latencies.push(mail.elapsed());
                        if connection_per_message {
                            r.connect_latencies.push(t0.elapsed());
                        }
                        r.completed += 1;
                        r.accepted += usize::from(o.accepted());
                        r.modified += usize::from(!o.modifications.is_empty());
                        if (connection_per_message || c.session().connection_done())
                            && let Some(c) = client.take()
                        {
                            let _ = c.quit().await;
                        }
                    }
                    Err(e) => {
                        r.error(e);
                        client = None;
                    }
                }
            }
            if let Some(c) = client
                && let Err(e) = c.quit().await
            {
                r.error(e);
            }
            r
        }));
    }
    let mut report = LoadReport {
        completed: 0,
        errors: 0,
        error_samples: Vec::new(),
        accepted: 0,
        modified: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        connections: 0,
        connect_latencies: Vec::new(),
    };
    for t in tasks {
        let r = t.await.map_err(|e| Error::Io(std::io::Error::other(e)))?;
        report.completed += r.completed;
        report.errors += r.errors;
        report.accepted += r.accepted;
        report.modified += r.modified;
        report.latencies.extend(r.latencies);
        report.connections += r.connections;
        report.connect_latencies.extend(r.connect_latencies);
        for s in r.samples {
            if report.error_samples.len() < 10 {
                report.error_samples.push(s);
            }
        }
    }
    report.elapsed = start.elapsed();
    report.latencies.sort();
    report.connect_latencies.sort();
    Ok(report)
}

#[derive(Default)]
struct Partial {
    completed: usize,
    errors: usize,
    accepted: usize,
    modified: usize,
    latencies: Vec<Duration>,
    connections: usize,
    connect_latencies: Vec<Duration>,
    samples: Vec<String>,
}

impl Partial {
    fn error(&mut self, e: Error) {
        self.errors += 1;
        if self.samples.len() < 10 {
            self.samples.push(e.to_string());
        }
    }
}
