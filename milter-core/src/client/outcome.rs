//! What a milter decided about one message, and the message after its changes.

use bytes::Bytes;

use crate::client::apply::{EnvelopeChanges, Message};
use crate::proto::reply::{Modification, Verdict};

/// One command's final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageVerdict {
    /// The command's name (`CONNECT`, `RCPT`, `EOM`, ...).
    pub stage: &'static str,
    /// The answer.
    pub verdict: Verdict,
}

/// Everything the milter said about one message.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Every answered command, in order.
    pub stages: Vec<StageVerdict>,
    /// The verdict that decided the message: the end-of-message answer, or the answer that
    /// ended the message or connection early. `Continue` means accepted.
    pub verdict: Verdict,
    /// Which command [`verdict`](Self::verdict) answered.
    pub final_stage: &'static str,
    /// Modifications in the order received.
    pub modifications: Vec<Modification>,
    /// Recipients refused at RCPT, with the refusal.
    pub rejected_recipients: Vec<(String, Verdict)>,
    /// Whether `HEADER_LEADING_SPACE` was negotiated (decides how values are applied).
    pub leading_space: bool,
    /// Whether the milter skipped the rest of the body.
    pub body_skipped: bool,
    /// PROGRESS frames received.
    pub progress: u32,
    /// The message as sent, with the hidden header if one was configured.
    pub original: Message,
    /// Envelope sender as sent.
    pub sender: String,
    /// Envelope recipients as sent (all of them, refused ones included).
    pub recipients: Vec<String>,
}

impl Outcome {
    /// Whether the message was accepted (with or without changes).
    pub fn accepted(&self) -> bool {
        matches!(self.verdict, Verdict::Continue | Verdict::Accept)
    }

    /// Whether the message was refused permanently.
    pub fn rejected(&self) -> bool {
        match &self.verdict {
            Verdict::Reject => true,
            Verdict::Reply(r) => r.is_permanent(),
            _ => false,
        }
    }

    /// The SMTP reply the MTA would give for a custom-reply verdict, lines joined by `\n`
    /// (e.g. `554 5.7.1 Gtube pattern`).
    pub fn reply_text(&self) -> Option<String> {
        let Verdict::Reply(r) = &self.verdict else {
            return None;
        };
        let lines: Vec<String> = r
            .lines()
            .iter()
            .map(|l| match r.enhanced() {
                Some(e) if l.is_empty() => format!("{} {e}", r.code()),
                Some(e) => format!("{} {e} {l}", r.code()),
                None => format!("{} {l}", r.code()),
            })
            .collect();
        Some(lines.join("\n"))
    }

    /// The quarantine reason, if the milter asked to hold the message.
    pub fn quarantine_reason(&self) -> Option<String> {
        self.modifications.iter().rev().find_map(|m| match m {
            Modification::Quarantine { reason } => Some(String::from_utf8_lossy(reason).into()),
            _ => None,
        })
    }

    /// The message after the header and body modifications, as Postfix would store it.
    pub fn modified(&self) -> Message {
        let mut m = self.original.clone();
        m.apply_all(&self.modifications, self.leading_space);
        m
    }

    /// [`modified`](Self::modified), as bytes.
    pub fn modified_bytes(&self) -> Vec<u8> {
        self.modified().to_bytes()
    }

    /// The envelope after sender/recipient changes and quarantine. Refused recipients are
    /// left out.
    pub fn envelope(&self) -> EnvelopeChanges {
        let kept: Vec<String> = self
            .recipients
            .iter()
            .filter(|r| !self.rejected_recipients.iter().any(|(x, _)| x == *r))
            .cloned()
            .collect();
        let mut e = EnvelopeChanges::new(&self.sender, &kept);
        for m in &self.modifications {
            e.apply(m);
        }
        e
    }

    fn header_mods(&self, name: &str) -> impl Iterator<Item = &Modification> {
        let name = name.as_bytes().to_vec();
        self.modifications.iter().filter(move |m| match m {
            Modification::AddHeader { name: n, .. }
            | Modification::InsertHeader { name: n, .. }
            | Modification::ChangeHeader { name: n, .. } => n.eq_ignore_ascii_case(&name),
            _ => false,
        })
    }

    /// The value of the first header named `name` the milter added or inserted.
    pub fn added_header(&self, name: &str) -> Option<Bytes> {
        self.header_mods(name).find_map(|m| match m {
            Modification::AddHeader { value, .. } | Modification::InsertHeader { value, .. } => {
                Some(value.clone())
            }
            _ => None,
        })
    }

    /// Panics unless the milter added or inserted a header named `name` (for tests).
    #[track_caller]
    pub fn assert_header_added(&self, name: &str) -> &Self {
        assert!(
            self.added_header(name).is_some(),
            "expected header {name:?} to be added; modifications: {:?}",
            self.modifications
        );
        self
    }

    /// Panics unless the milter changed (not deleted) a header named `name`.
    #[track_caller]
    pub fn assert_header_changed(&self, name: &str) -> &Self {
        assert!(
            self.header_mods(name).any(
                |m| matches!(m, Modification::ChangeHeader { value, .. } if !value.is_empty())
            ),
            "expected header {name:?} to be changed; modifications: {:?}",
            self.modifications
        );
        self
    }

    /// Panics unless the milter deleted a header named `name`.
    #[track_caller]
    pub fn assert_header_deleted(&self, name: &str) -> &Self {
        assert!(
            self.header_mods(name)
                .any(|m| matches!(m, Modification::ChangeHeader { value, .. } if value.is_empty())),
            "expected header {name:?} to be deleted; modifications: {:?}",
            self.modifications
        );
        self
    }

    /// Panics if the message was not accepted.
    #[track_caller]
    pub fn assert_accepted(&self) -> &Self {
        assert!(
            self.accepted(),
            "expected the message to be accepted, got {:?} at {}",
            self.verdict,
            self.final_stage
        );
        self
    }

    /// Panics unless the message was refused with exactly this reply text.
    #[track_caller]
    pub fn assert_reply(&self, text: &str) -> &Self {
        assert_eq!(
            self.reply_text().as_deref(),
            Some(text),
            "verdict {:?} at {}",
            self.verdict,
            self.final_stage
        );
        self
    }

    /// Panics unless the final verdict is `verdict`.
    #[track_caller]
    pub fn assert_verdict(&self, verdict: &Verdict) -> &Self {
        assert_eq!(&self.verdict, verdict, "at {}", self.final_stage);
        self
    }

    /// Panics if there were any modifications.
    #[track_caller]
    pub fn assert_unmodified(&self) -> &Self {
        assert!(
            self.modifications.is_empty(),
            "expected no modifications, got {:?}",
            self.modifications
        );
        self
    }
}
