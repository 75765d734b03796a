//! The few command-line flags every example shares, and running the server.

use anyhow::{Context as _, Result, bail};
use milter_core::handler::Milter;
use milter_core::server::{Server, UnixSocketOptions};

/// `--flag value` pairs in order, plus the flags every example understands.
#[derive(Debug, Clone)]
pub struct Args {
    /// Where to listen (`--socket`, default `inet:127.0.0.1:8891`).
    pub socket: String,
    /// Unix socket permission bits (`--socket-mode 660`, octal).
    pub socket_mode: Option<u32>,
    /// Connections served at once (`--max-connections`).
    pub max_connections: usize,
    /// The example's own flags, in order.
    pub rest: Vec<(String, String)>,
}

impl Args {
    /// Parses `--flag value` pairs; `known` lists the example's own flags.
    pub fn parse(
        argv: impl IntoIterator<Item = String>,
        known: &[&str],
        usage: &str,
    ) -> Result<Args> {
        let mut args = Args {
            socket: "inet:127.0.0.1:8891".into(),
            socket_mode: None,
            max_connections: 256,
            rest: Vec::new(),
        };
        let mut it = argv.into_iter();
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                println!("usage: {usage}");
                std::process::exit(0);
            }
            let value = it
                .next()
                .with_context(|| format!("{flag} needs a value\nusage: {usage}"))?;
            match flag.as_str() {
                "--socket" => args.socket = value,
                "--socket-mode" => {
                    args.socket_mode = Some(
                        u32::from_str_radix(&value, 8)
                            .with_context(|| format!("--socket-mode {value:?} is not octal"))?,
                    )
                }
                "--max-connections" => {
                    args.max_connections = value
                        .parse()
                        .with_context(|| format!("--max-connections {value:?}"))?
                }
                f if known.contains(&f) => args.rest.push((flag, value)),
                _ => bail!("unknown flag {flag}\nusage: {usage}"),
            }
        }
        Ok(args)
    }

    /// Every value given for `flag`.
    pub fn all(&self, flag: &str) -> Vec<String> {
        self.rest
            .iter()
            .filter(|(f, _)| f == flag)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The last value given for `flag`.
    pub fn last(&self, flag: &str) -> Option<String> {
        self.all(flag).pop()
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Serves `factory` on the configured socket until SIGTERM/SIGINT.
pub async fn serve<F, M>(args: &Args, factory: F) -> Result<()>
where
    F: Fn() -> M + Send + Sync + 'static,
    M: Milter,
{
    Server::builder()
        .listen(&args.socket)?
        .unix_socket(UnixSocketOptions {
            mode: args.socket_mode,
            ..UnixSocketOptions::default()
        })
        .max_connections(args.max_connections)
        .serve(factory)
        .await?;
    Ok(())
}
