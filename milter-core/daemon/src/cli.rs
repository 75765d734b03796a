//! The arguments every daemon takes, flattened into its own clap parser (which adds
//! `--version` and its subcommands).

use std::path::PathBuf;

/// `--config FILE` and `--check-config`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// TOML configuration file (embedded defaults when absent).
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Validate the configuration and everything it names, print the findings, then
    /// exit 0 (usable) or 1.
    #[arg(long)]
    pub check_config: bool,
}

impl ConfigArgs {
    /// Where the configuration comes from, for messages.
    pub fn source(&self) -> String {
        self.config
            .as_ref()
            .map_or("embedded defaults".to_string(), |p| p.display().to_string())
    }
}
