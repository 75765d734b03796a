//! A no-op milter on milter-core: continues at every step, accepts at end of message
//! (optionally adding one header). The library benchmark's subject.

use bench_milters::{Args, HEADER, Mode};
use clap::Parser;
use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::{Actions, ProtocolFlags, Server, Verdict};

/// Every no-reply flag of protocol version 6.
const NR_ALL: ProtocolFlags = ProtocolFlags::NR_CONNECT
    .union(ProtocolFlags::NR_HELO)
    .union(ProtocolFlags::NR_MAIL)
    .union(ProtocolFlags::NR_RCPT)
    .union(ProtocolFlags::NR_DATA)
    .union(ProtocolFlags::NR_HEADER)
    .union(ProtocolFlags::NR_EOH)
    .union(ProtocolFlags::NR_BODY)
    .union(ProtocolFlags::NR_UNKNOWN);

struct Noop {
    mode: Mode,
    add_header: bool,
}

impl Milter for Noop {
    fn negotiate(&mut self, _offer: &Offer) -> Request {
        // Request::new(): every event, each replied to (not the EVENTS-derived default,
        // which would turn the events a no-op ignores off).
        let mut r = Request::new();
        if self.mode == Mode::Nr {
            r = r.with_optional_protocol(NR_ALL);
        }
        if self.add_header {
            r = r.with_actions(Actions::ADD_HEADERS);
        }
        r
    }

    async fn eom(&mut self, _ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        if self.add_header && actions.add_header(HEADER.0, HEADER.1).is_err() {
            return Verdict::Tempfail;
        }
        Verdict::Accept
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (mode, add_header) = (args.mode, args.add_header);
    Server::builder()
        .listen(&args.socket)?
        .max_connections(args.max_connections)
        .shutdown_deadline(std::time::Duration::from_secs(1))
        .serve(move || Noop { mode, add_header })
        .await?;
    Ok(())
}
