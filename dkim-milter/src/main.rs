//! `dkim-milter`: command line. The logic lives in the library crate; the daemon kit
//! (`milter-daemon`) supplies config loading, reload, logging and the runtime.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use dkim_milter::keygen::{self, Algo};
use dkim_milter::reload::State;
use milter_daemon::cli::ConfigArgs;

/// DKIM signing and verifying milter (OpenDKIM replacement).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: ConfigArgs,
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

fn keygen_cmd(cli: &Cli, a: &KeygenArgs) -> ExitCode {
    let keys_dir = match (&a.keys_dir, &cli.common.config) {
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
    let where_ = cli.common.source();
    match State::build(cli.common.config.as_deref()) {
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
    if cli.common.check_config {
        return check_config(&cli);
    }
    let state = match State::build(cli.common.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    milter_daemon::logging::init(&state.config.log_level);
    state.log_notes();
    let config_path = cli.common.config;
    milter_daemon::run::block_on(async move {
        let registry = milter_core::metrics::Registry::new();
        let metrics = dkim_milter::metrics::DkimMetrics::new(&registry)
            .map_err(dkim_milter::milter::ServeError::Metrics)?;
        let shared = milter_daemon::reload::shared(state);
        let m = metrics.clone();
        tokio::spawn(milter_daemon::reload::watch(
            shared.clone(),
            config_path,
            move |ok, st| {
                m.reloaded(ok);
                m.keys(st);
            },
        ));
        dkim_milter::milter::serve(shared, None, metrics).await
    })
}
