//! Adds one configured header to every message.

use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Events, Offer, Request};
use milter_core::{Actions, Verdict};

/// Adds `name: value` at the end of every message's header block.
#[derive(Debug, Clone)]
pub struct AddHeader {
    name: String,
    value: String,
}

impl AddHeader {
    /// A milter adding `name: value`. Refused at start if the header would be invalid.
    pub fn new(name: &str, value: &str) -> anyhow::Result<AddHeader> {
        // Validate once, up front, with the same rules end of message applies.
        EomActions::new(Actions::ADD_HEADERS).add_header(name.to_owned(), value.to_owned())?;
        Ok(AddHeader {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl Milter for AddHeader {
    /// Only end of message, which always comes: the MTA sends nothing else.
    const EVENTS: Events = Events::empty();

    fn negotiate(&mut self, _offer: &Offer) -> Request {
        Request::new()
            .with_events(Self::EVENTS)
            .with_actions(Actions::ADD_HEADERS)
    }

    async fn eom(&mut self, ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        let queue_id = ctx.macro_str("i").unwrap_or_default();
        match actions.add_header(self.name.clone(), self.value.clone()) {
            Ok(()) => {
                tracing::info!(queue_id, header = %self.name, "accepted: header added");
                Verdict::Continue
            }
            Err(e) => {
                tracing::warn!(queue_id, error = %e, "tempfail: header could not be added");
                Verdict::Tempfail
            }
        }
    }
}
