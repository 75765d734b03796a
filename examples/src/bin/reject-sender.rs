//! `reject-sender --sender spam@example.net --sender @bad.example --recipient old@example.org
//!   --code 550 --status 5.7.1 --text "Not accepted here\nSee https://example.org/policy"`
use milter_examples::{
    cli,
    reject_sender::{RejectSender, Rules},
};

const USAGE: &str = "reject-sender [--socket SPEC] [--sender ADDR|@DOMAIN]... [--recipient ADDR|@DOMAIN]... [--code 550] [--status 5.7.1] [--text 'line 1\\nline 2']";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cli::init_logging();
    let args = cli::Args::parse(
        std::env::args().skip(1),
        &["--sender", "--recipient", "--code", "--status", "--text"],
        USAGE,
    )?;
    let rules = Rules {
        senders: args.all("--sender"),
        recipients: args.all("--recipient"),
    };
    let code = args
        .last("--code")
        .map(|c| c.parse())
        .transpose()?
        .unwrap_or(550);
    let status = args.last("--status").unwrap_or_else(|| "5.7.1".into());
    // The shell passes "\n" literally; accept it as a line break.
    let text = args
        .last("--text")
        .unwrap_or_else(|| "Message refused by policy".into())
        .replace("\\n", "\n");
    let status = (!status.is_empty()).then_some(status);
    let milter = RejectSender::new(rules, code, status.as_deref(), &text)?;
    cli::serve(&args, move || milter.clone()).await
}
