//! `spam-milter`: command line. The logic lives in the library crate; the daemon kit
//! (`milter-daemon`) supplies config loading, reload, logging and the runtime.

use std::process::ExitCode;

use clap::Parser;
use milter_daemon::cli::ConfigArgs;
use spam_milter::state::State;

/// Rspamd bridge milter: scans each message with Rspamd and applies its verdict.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: ConfigArgs,
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
        println!(
            "{}: configuration OK; socket {}; {}",
            cli.common.source(),
            state.config.socket,
            state.describe()
        );
        return ExitCode::SUCCESS;
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
