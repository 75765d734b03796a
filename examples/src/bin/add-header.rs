//! `add-header --socket inet:127.0.0.1:8891 --name X-Scanned --value yes`
use milter_examples::{add_header::AddHeader, cli};

const USAGE: &str = "add-header [--socket SPEC] [--socket-mode OCTAL] --name NAME --value VALUE";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cli::init_logging();
    let args = cli::Args::parse(std::env::args().skip(1), &["--name", "--value"], USAGE)?;
    let name = args.last("--name").unwrap_or_else(|| "X-Milter".into());
    let value = args.last("--value").unwrap_or_else(|| "passed".into());
    let milter = AddHeader::new(&name, &value)?;
    cli::serve(&args, move || milter.clone()).await
}
