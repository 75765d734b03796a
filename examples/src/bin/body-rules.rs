//! `body-rules --replace colour=color --quarantine-word casino --max-body 10485760`
use std::sync::Arc;

use anyhow::Context as _;
use milter_examples::{
    body_rules::{BodyRules, Rules},
    cli,
};

const USAGE: &str = "body-rules [--socket SPEC] [--replace FROM=TO]... [--quarantine-word WORD]... [--max-body BYTES]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cli::init_logging();
    let args = cli::Args::parse(
        std::env::args().skip(1),
        &["--replace", "--quarantine-word", "--max-body"],
        USAGE,
    )?;
    let mut replace = Vec::new();
    for r in args.all("--replace") {
        let (from, to) = r
            .split_once('=')
            .with_context(|| format!("--replace {r:?}: expected FROM=TO"))?;
        anyhow::ensure!(!from.is_empty(), "--replace {r:?}: FROM is empty");
        replace.push((from.to_owned(), to.to_owned()));
    }
    let rules = Arc::new(Rules {
        replace,
        quarantine: args.all("--quarantine-word"),
        max_body: args
            .last("--max-body")
            .map(|m| m.parse())
            .transpose()?
            .unwrap_or(10 << 20),
    });
    cli::serve(&args, move || BodyRules::new(rules.clone())).await
}
