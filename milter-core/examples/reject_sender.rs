//! The smallest useful milter: refuse mail from one sender.
//! `cargo run --example reject_sender -- inet:127.0.0.1:8891 spammer@example.net`
use milter_core::handler::{Context, Milter};
use milter_core::{Envelope, Verdict, server::Server};

struct RejectSender(String);

impl Milter for RejectSender {
    async fn mail(&mut self, _ctx: &Context<'_>, from: &Envelope) -> Verdict {
        if from.address_str().eq_ignore_ascii_case(&self.0) {
            return Verdict::reply(550, "5.7.1", "Sender refused");
        }
        Verdict::Continue
    }
}

#[tokio::main]
async fn main() -> Result<(), milter_core::Error> {
    let mut args = std::env::args().skip(1);
    let socket = args.next().unwrap_or_else(|| "inet:127.0.0.1:8891".into());
    let sender = args.next().unwrap_or_else(|| "spammer@example.net".into());
    Server::builder()
        .listen(&socket)?
        .serve(move || RejectSender(sender.clone()))
        .await
}
