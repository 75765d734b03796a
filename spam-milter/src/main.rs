//! `spam-milter`: command line. The logic lives in the library crate; the daemon kit
//! (`milter-daemon`) supplies config loading, reload, logging and the runtime.

use std::process::ExitCode;

use clap::Parser;
use milter_daemon::cli::ConfigArgs;
use milter_daemon::privilege::{self, UserSpec};
use spam_milter::state::State;

/// Rspamd bridge milter: scans each message with Rspamd and applies its verdict.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: ConfigArgs,
}

/// `--check-config`: exit 1 for what stops the daemon (config syntax or values, an
/// unknown `user`); whether it would serve as root depends on who starts it: a note.
fn check_config(cli: &Cli, state: &State) -> ExitCode {
    let cfg = &state.config;
    if let Some(u) = &cfg.user
        && let Err(e) = UserSpec::parse(u).and_then(|s| s.resolve())
    {
        println!("error: {e}");
        println!("{}: the daemon would not start", cli.common.source());
        return ExitCode::FAILURE;
    }
    let euid = nix::unistd::geteuid();
    if let Err(e) = privilege::plan(cfg.user.as_deref(), cfg.allow_root, euid, "spam-milter") {
        // systemd may start the daemon as another user than the one running the check.
        println!("note: started as uid {euid} the daemon would not serve: {e}");
    }
    println!(
        "{}: configuration OK; socket {}; {}",
        cli.common.source(),
        cfg.socket,
        state.describe()
    );
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let state = match State::build(cli.common.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.common.check_config {
        return check_config(&cli, &state);
    }
    if let Err(e) = milter_daemon::logging::init(
        &state.config.log_level,
        state.config.log_target,
        state.config.syslog_facility,
        "spam-milter",
    ) {
        tracing::error!("{e}");
    }
    let config_path = cli.common.config;
    milter_daemon::run::block_on(async move {
        let registry =
            milter_daemon::metrics::install().map_err(spam_milter::milter::ServeError::Metrics)?;
        let metrics = spam_milter::metrics::SpamMetrics::new(&registry);
        let shared = milter_daemon::reload::shared(state);
        let m = metrics.clone();
        tokio::spawn(milter_daemon::reload::watch(
            shared.clone(),
            config_path,
            move |ok, _| m.reloaded(ok),
        ));
        spam_milter::milter::serve(shared, None, metrics).await
    })
}
