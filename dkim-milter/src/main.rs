//! `dkim-milter`: command line. The logic lives in the library crate; the daemon kit
//! (`milter-daemon`) supplies config loading, reload, logging and the runtime.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use dkim_milter::keygen::{self, Algo};
use dkim_milter::process::{self, UserSpec};
use dkim_milter::reload::State;
use milter_daemon::cli::ConfigArgs;

/// DKIM signing and verifying milter (OpenDKIM replacement).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: ConfigArgs,
    /// With --check-config: exit 1 on warnings too (a domain whose key is broken or
    /// missing, unsafe key permissions), not only on errors that stop the daemon.
    #[arg(long, requires = "check_config")]
    strict: bool,
    /// Run from an existing OpenDKIM configuration, translated at start and at each
    /// reload (it is watched like a TOML config).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    opendkim_config: Option<PathBuf>,
    /// Print the dkim-milter TOML equivalent of --opendkim-config and exit.
    #[arg(long, requires = "opendkim_config")]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a key in the opendkim-genkey layout and print its DNS TXT record.
    Keygen(KeygenArgs),
    /// Check each domain's keys against DNS (like opendkim-testkey): DNS state, which key
    /// signs and why. Exit 1 if a published record does not match its private key.
    Testkey(TestkeyArgs),
}

#[derive(Args, Debug)]
struct TestkeyArgs {
    /// Only this domain (default: all).
    #[arg(long)]
    domain: Option<String>,
}

fn testkey_cmd(cli: &Cli, a: &TestkeyArgs) -> ExitCode {
    let st = match State::build(cli.common.config.as_deref()) {
        Ok(st) => st,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let domain = a.domain.clone();
    let mut mismatch = false;
    let code = milter_daemon::run::block_on(async {
        let (text, bad) = dkim_milter::activation::testkey(&st, domain.as_deref()).await?;
        print!("{text}");
        mismatch = bad;
        Ok::<(), String>(())
    });
    if mismatch { ExitCode::FAILURE } else { code }
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
    /// Owner of the key files, `user[:group]` (default: `user` from --config when run as
    /// root), so the daemon can read them after dropping root.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
}

fn keygen_cmd(cli: &Cli, a: &KeygenArgs) -> ExitCode {
    let cfg = match &cli.common.config {
        Some(c) => match dkim_milter::config::Config::load(c) {
            Ok(cfg) => cfg,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => dkim_milter::config::Config::default(),
    };
    let keys_dir = a.keys_dir.clone().unwrap_or(cfg.keys_dir);
    // The daemon's user owns the files when we run as root (it reads them after dropping
    // root); --user asks for it explicitly (and fails if not permitted).
    let user = match (&a.user, &cfg.user) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(u)) if nix::unistd::geteuid().is_root() => Some(u.clone()),
        _ => None,
    };
    let owner = match user.map(|u| UserSpec::parse(&u).and_then(|s| s.resolve())) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let algo = if a.ed25519 {
        Algo::Ed25519
    } else {
        Algo::Rsa(a.bits)
    };
    match keygen::generate_for(&keys_dir, &a.domain, &a.selector, algo, owner.as_ref()) {
        Ok(g) => {
            let owned = owner.map(|o| format!(", owned by {o}")).unwrap_or_default();
            eprintln!(
                "wrote {} (0600{owned}) and {}",
                g.private_path.display(),
                g.txt_path.display()
            );
            eprintln!(
                "publish this TXT record; with key-activation = \"dns\" the key signs once \
                 DNS serves it (check with `dkim-milter testkey --domain {}`):",
                a.domain
            );
            print!("{}", g.zone_text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The state from `--opendkim-config` (with its warnings) or from `--config`.
fn build_state(cli: &Cli) -> Result<(State, Vec<String>), String> {
    let Some(p) = &cli.opendkim_config else {
        return State::build(cli.common.config.as_deref())
            .map(|s| (s, Vec::new()))
            .map_err(|e| e.to_string());
    };
    let t = dkim_milter::opendkim_conf::load(p).map_err(|e| e.to_string())?;
    let cfg = t.config().map_err(|e| e.to_string())?;
    dkim_milter::opendkim_conf::set_source(p);
    let st = State::from_config(cfg, Some(p.clone())).map_err(|e| e.to_string())?;
    Ok((st, t.warnings.iter().map(|w| w.to_string()).collect()))
}

/// `--print-config`: the translated TOML, or the error that stops it.
fn print_config(p: &std::path::Path) -> ExitCode {
    match dkim_milter::opendkim_conf::load(p).and_then(|t| t.config().map(|_| t)) {
        Ok(t) => {
            print!("{}", t.toml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: exit 1 for what stops the daemon (config syntax or values, an
/// unreadable keys dir, a broken table, an unknown user or socket owner/group); per-domain
/// key problems are warnings (every other domain signs) unless `--strict`.
fn check_config(cli: &Cli) -> ExitCode {
    let where_ = match &cli.opendkim_config {
        Some(p) => p.display().to_string(),
        None => cli.common.source(),
    };
    let st = match build_state(cli) {
        Ok((st, warnings)) => {
            for w in warnings {
                println!("warning: {w}");
            }
            st
        }
        Err(e) => {
            println!("error: {e}");
            println!("{where_}: the daemon would not start");
            return ExitCode::FAILURE;
        }
    };
    let cfg = &st.config;
    let mut errors = Vec::new();
    if let Err(e) = milter_core::server::Endpoint::parse(&cfg.socket) {
        errors.push(format!("socket: {e}"));
    }
    if let Some(u) = &cfg.user
        && let Err(e) = UserSpec::parse(u).and_then(|s| s.resolve())
    {
        errors.push(e);
    }
    if let Some(o) = &cfg.socket_owner
        && let Err(e) = process::resolve_uid(o)
    {
        errors.push(format!("socket-owner: {e}"));
    }
    if let Some(g) = &cfg.socket_group
        && let Err(e) = process::resolve_gid(g)
    {
        errors.push(format!("socket-group: {e}"));
    }
    for n in st.keys.notes() {
        let level = if n.is_warning() { "warning" } else { "ok" };
        println!("{level}: {}", n.text);
    }
    for e in &errors {
        println!("error: {e}");
    }
    let euid = nix::unistd::geteuid();
    if errors.is_empty()
        && let Err(e) = process::plan(cfg, euid)
    {
        // Depends on who runs the check, not only on the config (systemd may start the
        // daemon as another user): a note, not an error.
        println!("note: started as uid {euid} the daemon would not serve: {e}");
    }
    let usable = st.keys.usable_count();
    let warnings = st.keys.warning_count();
    if !errors.is_empty() {
        println!(
            "{where_}: {} error(s): the daemon would not start",
            errors.len()
        );
        return ExitCode::FAILURE;
    }
    if warnings > 0 && cli.strict {
        println!(
            "{where_}: {warnings} warning(s), failing because of --strict; {usable} signing \
             domain(s)/key(s) usable"
        );
        return ExitCode::FAILURE;
    }
    let warned = if warnings > 0 {
        format!(
            " ({warnings} warning(s) above: those domains follow their settings, every other signs)"
        )
    } else {
        String::new()
    };
    let authserv = match &cfg.authserv_id {
        Some(id) => id.clone(),
        None => format!("the MTA's j macro, else {}", st.authserv_id),
    };
    println!(
        "{where_}: configuration OK; {usable} signing domain(s)/key(s){warned}; socket {}; \
         authserv-id {authserv}",
        cfg.socket
    );
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Keygen(a)) = &cli.command {
        return keygen_cmd(&cli, a);
    }
    if let Some(Command::Testkey(a)) = &cli.command {
        return testkey_cmd(&cli, a);
    }
    if let (true, Some(p)) = (cli.print_config, &cli.opendkim_config) {
        return print_config(p);
    }
    if cli.common.check_config {
        return check_config(&cli);
    }
    let (state, warnings) = match build_state(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = milter_daemon::logging::init(
        &state.config.log_level,
        state.config.log_target,
        state.config.syslog_facility,
        "dkim-milter",
    ) {
        tracing::error!("{e}");
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    state.log_notes();
    let config_path = cli.opendkim_config.or(cli.common.config);
    milter_daemon::run::block_on(async move {
        let registry =
            milter_daemon::metrics::install().map_err(dkim_milter::milter::ServeError::Metrics)?;
        let metrics = dkim_milter::metrics::DkimMetrics::new(&registry);
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
