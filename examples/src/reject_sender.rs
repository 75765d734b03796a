//! Rejects mail by sender or by recipient with a custom SMTP reply.

use milter_core::handler::{Context, Milter};
use milter_core::negotiate::Events;
use milter_core::{Envelope, SmtpReply, Verdict};

/// Rules: addresses (`user@domain`) or whole domains (`@domain`), matched
/// case-insensitively.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Senders to refuse at MAIL FROM (the whole message).
    pub senders: Vec<String>,
    /// Recipients to refuse at RCPT TO (only that recipient).
    pub recipients: Vec<String>,
}

/// Refuses listed senders and recipients with `reply`.
#[derive(Debug, Clone)]
pub struct RejectSender {
    rules: Rules,
    reply: SmtpReply,
}

impl RejectSender {
    /// `text` may hold several lines separated by `\n`; each becomes one line of the
    /// multi-line SMTP reply. Refused at start if code, status or text is invalid.
    pub fn new(rules: Rules, code: u16, status: Option<&str>, text: &str) -> anyhow::Result<Self> {
        let reply = SmtpReply::new(code, status, text)?;
        Ok(RejectSender { rules, reply })
    }

    fn listed(list: &[String], env: &Envelope) -> Option<String> {
        let addr = env.address_str().to_ascii_lowercase();
        list.iter()
            .find(|rule| {
                let rule = rule.to_ascii_lowercase();
                if rule.starts_with('@') {
                    addr.ends_with(&rule)
                } else {
                    addr == rule
                }
            })
            .cloned()
    }
}

impl Milter for RejectSender {
    /// MAIL and RCPT: the MTA sends no other event (end of message always comes).
    const EVENTS: Events = Events::MAIL.union(Events::RCPT);

    async fn mail(&mut self, _ctx: &Context<'_>, from: &Envelope) -> Verdict {
        match Self::listed(&self.rules.senders, from) {
            Some(rule) => {
                tracing::info!(sender = %from.address_str(), rule, "rejected: sender is listed");
                Verdict::Reply(self.reply.clone())
            }
            None => Verdict::Continue,
        }
    }

    async fn rcpt(&mut self, _ctx: &Context<'_>, rcpt: &Envelope) -> Verdict {
        match Self::listed(&self.rules.recipients, rcpt) {
            Some(rule) => {
                tracing::info!(recipient = %rcpt.address_str(), rule, "rejected: recipient is listed");
                Verdict::Reply(self.reply.clone())
            }
            None => Verdict::Continue,
        }
    }
}
