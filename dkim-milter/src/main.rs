//! `dkim-milter`: command line. The logic lives in the library crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use dkim_milter::keygen::{self, Algo};
use dkim_milter::reload::State;

/// DKIM signing and verifying milter (OpenDKIM replacement).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (embedded defaults when absent).
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration and load every key, then exit 0 (ok) or 1.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a key in the opendkim-genkey layout and print its DNS TXT record.
    Keygen(KeygenArgs),
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// Signing domain (d=).
    #[arg(long)]
    domain: String,
    /// Selector (s=).
    #[arg(long, default_value = "default")]
    selector: String,
    /// RSA key size.
    #[arg(long, default_value_t = 2048, conflicts_with = "ed25519")]
    bits: usize,
    /// Make an Ed25519 key instead of RSA.
    #[arg(long)]
    ed25519: bool,
    /// Keys directory (default: keys-dir from --config, else /etc/opendkim/keys).
    #[arg(long, value_name = "DIR")]
    keys_dir: Option<PathBuf>,
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn keygen_cmd(cli: &Cli, a: &KeygenArgs) -> ExitCode {
    let keys_dir = match (&a.keys_dir, &cli.config) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => match dkim_milter::config::Config::load(c) {
            Ok(cfg) => cfg.keys_dir,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => dkim_milter::config::Config::default().keys_dir,
    };
    let algo = if a.ed25519 {
        Algo::Ed25519
    } else {
        Algo::Rsa(a.bits)
    };
    match keygen::generate(&keys_dir, &a.domain, &a.selector, algo) {
        Ok(g) => {
            eprintln!(
                "wrote {} (0600) and {}",
                g.private_path.display(),
                g.txt_path.display()
            );
            eprintln!("publish this TXT record, then reload (SIGHUP) or wait for the poller:");
            print!("{}", g.zone_text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(cli: &Cli) -> ExitCode {
    let where_ = cli
        .config
        .as_ref()
        .map_or("embedded defaults".to_string(), |p| p.display().to_string());
    match State::build(cli.config.as_deref()) {
        Ok(st) => {
            let mut errors = 0;
            for n in st.keys.notes() {
                if n.error {
                    errors += 1;
                    println!("error: {}", n.text);
                } else if n.text.contains("warning:") {
                    println!("warning: {}", n.text);
                } else {
                    println!("ok: {}", n.text);
                }
            }
            if errors > 0 {
                println!(
                    "{where_}: {errors} problem(s); {} signing domain(s)/key(s) usable",
                    st.keys.usable_count()
                );
                ExitCode::FAILURE
            } else {
                println!(
                    "{where_}: configuration OK; {} signing domain(s)/key(s); socket {}; authserv-id {}",
                    st.keys.usable_count(),
                    st.config.socket,
                    st.authserv_id
                );
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Keygen(a)) = &cli.command {
        return keygen_cmd(&cli, a);
    }
    if cli.check_config {
        return check_config(&cli);
    }
    let state = match State::build(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&state.config.log_level);
    state.log_notes();
    serve(state, cli.config)
}

fn serve(state: State, config_path: Option<PathBuf>) -> ExitCode {
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
    rt.block_on(async move {
        let registry = milter_core::metrics::Registry::new();
        let metrics = match dkim_milter::metrics::DkimMetrics::new(&registry) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("metrics: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shared: dkim_milter::reload::Shared =
            std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(state));
        tokio::spawn(dkim_milter::reload::watch(
            shared.clone(),
            config_path,
            metrics.clone(),
        ));
        match dkim_milter::milter::serve(shared, None, metrics).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}
