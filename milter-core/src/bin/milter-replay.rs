//! `milter-replay`: sends stored messages through a milter as Postfix would, prints each
//! verdict and modification, writes the modified messages, or generates load.
//!
//! ```text
//! milter-replay --milter inet:127.0.0.1:8891 [--envelope-dir DIR] [--out DIR]
//!               [--concurrency N --count M] [--connection-per-message]
//!               [--hidden-received TEXT] FILE_OR_DIR...
//! ```
//!
//! With `--out DIR`, each message the milter lets through is written there, modified as the
//! MTA would deliver it; refused and discarded messages are not written.
//!
//! Exit status: 0 when every message got an answer, 1 on protocol, I/O or timeout errors,
//! 2 on bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use milter_core::Modification;
use milter_core::client::replay::{Load, collect_inputs, load_transaction};
use milter_core::client::{ClientConfig, MilterClient, Outcome, Transaction};

/// Sends stored messages through a milter as Postfix would.
#[derive(Parser, Debug)]
#[command(
    name = "milter-replay",
    version,
    after_help = "SPEC: inet:HOST:PORT, inet:PORT@HOST, unix:/path\n\
envelope sidecar: msg.eml.json or msg.json (client_addr, client_port, client_name, helo,\n\
sender, sender_args, recipients, auth_user, auth_type, macros, daemon_name)"
)]
struct Args {
    /// The milter to talk to.
    #[arg(long, value_name = "SPEC")]
    milter: String,
    /// Where the envelope sidecars are (default: next to each message).
    #[arg(long, value_name = "DIR")]
    envelope_dir: Option<PathBuf>,
    /// Writes each message the milter lets through here, modified as delivered.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Load mode: connections sending at once (default 1).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Load mode: messages in all, cycling through the inputs (default: one each).
    #[arg(long, value_name = "M")]
    count: Option<usize>,
    /// A new connection (CONNECT, HELO) for every message, as Postfix without connection
    /// caching; load mode also reports connect-to-answer latencies.
    #[arg(long)]
    connection_per_message: bool,
    /// A Received header the MTA adds but the milter does not see, e.g. 'Received: ...'.
    #[arg(long, value_name = "TEXT")]
    hidden_received: Option<String>,
    /// Messages: files, or directories of .eml files.
    #[arg(required = true, value_name = "FILE_OR_DIR")]
    inputs: Vec<PathBuf>,
}

fn show(v: &[u8]) -> String {
    String::from_utf8_lossy(v).escape_debug().to_string()
}

fn describe(m: &Modification) -> String {
    match m {
        Modification::AddHeader { name, value } => {
            format!("add header {}:{}", show(name), show(value))
        }
        Modification::InsertHeader { index, name, value } => {
            format!("insert header at {index} {}:{}", show(name), show(value))
        }
        Modification::ChangeHeader { index, name, value } if value.is_empty() => {
            format!("delete header {} #{index}", show(name))
        }
        Modification::ChangeHeader { index, name, value } => {
            format!("change header {} #{index}:{}", show(name), show(value))
        }
        Modification::ChangeFrom { address, args } => format!(
            "change sender {} {}",
            show(address),
            show(args.as_deref().unwrap_or_default())
        ),
        Modification::AddRcpt { address } => format!("add recipient {}", show(address)),
        Modification::AddRcptWithArgs { address, args } => format!(
            "add recipient {} {}",
            show(address),
            show(args.as_deref().unwrap_or_default())
        ),
        Modification::DeleteRcpt { address } => format!("delete recipient {}", show(address)),
        Modification::ReplaceBody(b) => format!("replace body chunk ({} bytes)", b.len()),
        Modification::Quarantine { reason } => format!("quarantine: {}", show(reason)),
    }
}

fn print_outcome(name: &str, o: &Outcome) {
    let verdict = match o.reply_text() {
        Some(t) => format!("{} ({t})", o.verdict.name()),
        None if o.accepted() => "accept".to_owned(),
        None => o.verdict.name().to_owned(),
    };
    println!("{name}: {verdict} at {}", o.final_stage);
    for (r, v) in &o.rejected_recipients {
        println!("  recipient {r} refused: {}", v.name());
    }
    for m in &o.modifications {
        println!("  {}", describe(m));
    }
}

async fn replay(args: &Args, config: ClientConfig, files: Vec<PathBuf>) -> ExitCode {
    let mut failed = false;
    if let Some(out) = &args.out
        && let Err(e) = std::fs::create_dir_all(out)
    {
        eprintln!("milter-replay: {}: {e}", out.display());
        return ExitCode::from(1);
    }
    let mut client: Option<MilterClient> = None;
    for f in &files {
        let name = f.display().to_string();
        let tx = match load_transaction(f, args.envelope_dir.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("milter-replay: {e}");
                failed = true;
                continue;
            }
        };
        if client.is_none() {
            match MilterClient::connect(&args.milter, config.clone()).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    eprintln!("milter-replay: {name}: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        match c.send_transaction(&tx).await {
            Ok(o) => {
                print_outcome(&name, &o);
                // Only what the MTA would deliver is written: a refused or discarded
                // message has no modified form.
                if let Some(out) = &args.out
                    && o.accepted()
                    && let Some(file) = f.file_name()
                {
                    let path = out.join(file);
                    if let Err(e) = std::fs::write(&path, o.modified_bytes()) {
                        eprintln!("milter-replay: {}: {e}", path.display());
                        failed = true;
                    }
                }
                if (args.connection_per_message || c.session().connection_done())
                    && let Some(c) = client.take()
                {
                    let _ = c.quit().await;
                }
            }
            Err(e) => {
                eprintln!("milter-replay: {name}: {e}");
                failed = true;
                client = None;
            }
        }
    }
    if let Some(c) = client
        && let Err(e) = c.quit().await
    {
        eprintln!("milter-replay: quit: {e}");
        failed = true;
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn load(args: &Args, config: ClientConfig, files: Vec<PathBuf>) -> ExitCode {
    let mut inputs: Vec<Transaction> = Vec::new();
    for f in &files {
        match load_transaction(f, args.envelope_dir.as_deref()) {
            Ok(t) => inputs.push(t),
            Err(e) => {
                eprintln!("milter-replay: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let concurrency = args.concurrency.unwrap_or(1);
    let count = args.count.unwrap_or(inputs.len());
    let load = Load::new(args.milter.as_str(), Arc::new(inputs))
        .client_config(config)
        .concurrency(concurrency)
        .messages(count)
        .connection_per_message(args.connection_per_message);
    match load.run().await {
        Ok(r) => {
            println!("concurrency {concurrency}: {}", r.summary());
            for e in &r.error_samples {
                eprintln!("  error: {e}");
            }
            if r.errors > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("milter-replay: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    // clap exits with status 2 on bad arguments, as before.
    let args = Args::parse();
    let files = match collect_inputs(&args.inputs) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            eprintln!("milter-replay: no .eml files found");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("milter-replay: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = ClientConfig::default();
    if let Some(h) = &args.hidden_received {
        let mut h = h.trim_end().to_owned();
        h.push_str("\r\n");
        config.hidden_received = Some(Bytes::from(h));
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("milter-replay: {e}");
            return ExitCode::from(1);
        }
    };
    if args.concurrency.is_some() || args.count.is_some() {
        rt.block_on(load(&args, config, files))
    } else {
        rt.block_on(replay(&args, config, files))
    }
}
