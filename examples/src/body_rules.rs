//! Body rules: replace a word everywhere in the body, or quarantine a message whose body
//! contains a word.

use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Events, Offer, Request};
use milter_core::{Actions, Bytes, Verdict};

/// The rules, applied at end of message.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `(from, to)`: every occurrence of `from` in the body becomes `to`.
    pub replace: Vec<(String, String)>,
    /// A body containing any of these is held in quarantine.
    pub quarantine: Vec<String>,
    /// Bodies larger than this are passed unchanged (the milter must bound its memory).
    pub max_body: usize,
}

/// Buffers the body (up to `max_body`), then rewrites or quarantines it.
#[derive(Debug, Clone)]
pub struct BodyRules {
    rules: std::sync::Arc<Rules>,
    body: Vec<u8>,
    too_big: bool,
}

impl BodyRules {
    /// A per-connection instance sharing `rules`.
    pub fn new(rules: std::sync::Arc<Rules>) -> BodyRules {
        BodyRules {
            rules,
            body: Vec::new(),
            too_big: false,
        }
    }

    fn reset(&mut self) {
        self.body.clear();
        self.too_big = false;
    }
}

fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(hay.len());
    let mut n = 0;
    let mut i = 0;
    while i < hay.len() {
        if !from.is_empty() && hay.get(i..i + from.len()) == Some(from) {
            out.extend_from_slice(to);
            i += from.len();
            n += 1;
        } else if let Some(&b) = hay.get(i) {
            out.push(b);
            i += 1;
        }
    }
    (out, n)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

impl Milter for BodyRules {
    /// Body chunks only (end of message and abort always come). The per-message state is
    /// reset in `eom` and `abort`, one of which ends every message.
    const EVENTS: Events = Events::BODY;

    fn negotiate(&mut self, _offer: &Offer) -> Request {
        Request::new()
            .with_events(Self::EVENTS)
            .with_actions(Actions::CHANGE_BODY | Actions::QUARANTINE)
    }

    async fn body(&mut self, _ctx: &Context<'_>, chunk: Bytes) -> Verdict {
        if self.too_big || self.body.len() + chunk.len() > self.rules.max_body {
            self.too_big = true;
            self.body.clear();
        } else {
            self.body.extend_from_slice(&chunk);
        }
        Verdict::Continue
    }

    async fn eom(&mut self, ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        let queue_id = ctx.macro_str("i").unwrap_or_default();
        // This message is over for the handler: take its state, leave a clean one.
        let body = std::mem::take(&mut self.body);
        let too_big = std::mem::replace(&mut self.too_big, false);
        if too_big {
            tracing::info!(
                queue_id,
                max = self.rules.max_body,
                "accepted unchanged: body over the size limit"
            );
            return Verdict::Continue;
        }
        if let Some(word) = self
            .rules
            .quarantine
            .iter()
            .find(|w| contains(&body, w.as_bytes()))
        {
            let reason = format!("body contains {word:?}");
            if let Err(e) = actions.quarantine(reason.clone()) {
                tracing::warn!(queue_id, error = %e, "tempfail: cannot quarantine");
                return Verdict::Tempfail;
            }
            tracing::info!(queue_id, reason, "quarantined");
            return Verdict::Continue;
        }
        let mut new = body.clone();
        let mut total = 0;
        for (from, to) in &self.rules.replace {
            let (out, n) = replace_all(&new, from.as_bytes(), to.as_bytes());
            new = out;
            total += n;
        }
        if total == 0 {
            tracing::info!(queue_id, "accepted unchanged: no rule matched");
            return Verdict::Continue;
        }
        if let Err(e) = actions.replace_body(&new) {
            tracing::warn!(queue_id, error = %e, "tempfail: cannot replace the body");
            return Verdict::Tempfail;
        }
        tracing::info!(queue_id, replacements = total, "accepted: body rewritten");
        Verdict::Continue
    }

    async fn abort(&mut self, _ctx: &Context<'_>) {
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_occurrence() {
        assert_eq!(
            replace_all(b"a cat, a cat", b"cat", b"dog"),
            (b"a dog, a dog".to_vec(), 2)
        );
        assert_eq!(replace_all(b"abc", b"", b"x"), (b"abc".to_vec(), 0));
        assert!(contains(b"hello world", b"o w"));
        assert!(!contains(b"hello", b""));
    }
}
