//! From a scan result to milter actions: the reply, the header edits and the one-line
//! reason. Sans-IO and deterministic, so every action and policy is unit-tested.
//!
//! Order of the edits, as Postfix applies them in sequence: deletions first (per name from
//! the last occurrence up, so the occurrence numbers stay valid), then changes, then
//! insertions, then appended headers, then envelope changes. Forged scan headers of
//! unauthenticated clients go in the same deletions, whatever Rspamd says.

use std::collections::{BTreeMap, HashMap};

use crate::config::{ActionsConfig, Fallback, GreylistWith, Mode, RejectWith};
use crate::policy::{Direction, Policy};
use crate::reply::{Action, ScanReply, SpamHeader};

/// What the scan gave.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Rspamd answered.
    Scanned(&'a ScanReply),
    /// Rspamd could not be asked or did not answer usefully; `label` is the bounded reason.
    Failed {
        /// Bounded reason (`timeout`, `connect`, ...).
        label: &'static str,
        /// The error, for the log.
        detail: &'a str,
    },
    /// The message is larger than `max-message-size`.
    Oversize {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The listener skips scanning.
    Skipped,
}

/// The final answer to the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Accept (with the edits).
    Accept,
    /// 5xx.
    Reject {
        /// Code.
        code: u16,
        /// Enhanced status code.
        enhanced: &'static str,
        /// Text.
        text: String,
    },
    /// 4xx.
    Tempfail {
        /// Code.
        code: u16,
        /// Enhanced status code.
        enhanced: &'static str,
        /// Text.
        text: String,
    },
    /// Accept and drop.
    Discard,
}

impl Reply {
    fn describe(&self) -> String {
        match self {
            Reply::Accept => "accept".into(),
            Reply::Discard => "discard".into(),
            Reply::Reject {
                code,
                enhanced,
                text,
            }
            | Reply::Tempfail {
                code,
                enhanced,
                text,
            } => format!("{code} {enhanced} {text}"),
        }
    }
}

/// One modification at end of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Delete the `occurrence`-th (1-based) header called `name`.
    Delete {
        /// Name.
        name: String,
        /// 1-based occurrence.
        occurrence: u32,
    },
    /// Replace the `occurrence`-th header's value.
    Change {
        /// Name.
        name: String,
        /// 1-based occurrence.
        occurrence: u32,
        /// New value.
        value: String,
    },
    /// Insert at a 0-based position among all headers (0: top).
    Insert {
        /// Position.
        index: u32,
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// Append at the end of the header block.
    Add {
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// Replace the envelope sender.
    ChangeFrom(String),
    /// Add a recipient.
    AddRcpt(String),
    /// Remove a recipient.
    DelRcpt(String),
}

/// The decision for one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The reply.
    pub reply: Reply,
    /// Put the message on hold with this reason.
    pub quarantine: Option<String>,
    /// Modifications, in the order they are sent.
    pub edits: Vec<Edit>,
    /// Bounded label of what was applied, for metrics: an action's label, `unscanned`,
    /// `oversize`, `skipped`.
    pub label: &'static str,
    /// The fallback taken, when Rspamd could not decide.
    pub fallback: Option<Fallback>,
    /// Forged scan headers removed (occurrences).
    pub forged_removed: usize,
    /// Why, for the log line: action and score, or the error, and what was done.
    pub summary: String,
}

/// What the message's headers were, for removals and insertions.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    /// Names in order.
    pub names: &'a [Box<str>],
    /// The first Subject's value.
    pub subject: Option<&'a str>,
}

/// True if `name` matches a `remove-forged` pattern (case-insensitive, `*` suffix = prefix).
pub fn is_forged_name(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name
            .get(..prefix.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(prefix)),
        None => name.eq_ignore_ascii_case(p),
    })
}

/// A header value that cannot start a new header: every line break becomes a fold (LF
/// followed by whitespace, as milter values fold), bare CRs go, and trailing breaks are
/// dropped. Rspamd's values come from rules and Lua; a `\nX-Evil: 1` in one must not add
/// a header of its own.
pub fn folded(value: &str) -> String {
    let v = value.replace('\r', "");
    let v = v.trim_end_matches('\n');
    let mut out = String::with_capacity(v.len() + 4);
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '\n' {
            while chars.peek() == Some(&'\n') {
                chars.next();
            }
            if !matches!(chars.peek(), Some(' ') | Some('\t')) {
                out.push('\t');
            }
        }
    }
    out
}

/// Longest reply text sent, in characters (SMTP allows 512 octets per reply line; Postfix
/// and clients show far less).
pub const MAX_REPLY_TEXT: usize = 200;

/// Reply text from Rspamd or config: one line of printable text, at most
/// [`MAX_REPLY_TEXT`] characters (Rspamd's `smtp_message` comes from rules and may hold
/// anything; the config's texts are checked at load, and cut here all the same).
pub fn reply_text(candidates: &[Option<&str>], fallback: &str) -> String {
    for c in candidates
        .iter()
        .chain(std::iter::once(&Some(fallback)))
        .flatten()
    {
        let mut s: String = c
            .chars()
            .map(|ch| if ch.is_control() { ' ' } else { ch })
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if let Some((i, _)) = s.char_indices().nth(MAX_REPLY_TEXT) {
            s.truncate(i);
        }
        if !s.is_empty() {
            return s;
        }
    }
    "Message refused".to_string()
}

struct Builder<'a> {
    headers: Headers<'a>,
    /// Per name (lowercase): its first spelling and its occurrences, counted once so a
    /// removal costs a lookup, not a pass over every header.
    counts: HashMap<String, (&'a str, u32)>,
    /// name (lowercase) -> (spelling, occurrences to delete).
    deletions: BTreeMap<String, (String, Vec<u32>)>,
    changes: Vec<Edit>,
    inserts: Vec<Edit>,
    adds: Vec<Edit>,
    envelope: Vec<Edit>,
}

impl<'a> Builder<'a> {
    fn new(headers: Headers<'a>) -> Builder<'a> {
        let mut counts: HashMap<String, (&'a str, u32)> = HashMap::new();
        for n in headers.names {
            counts.entry(n.to_ascii_lowercase()).or_insert((n, 0)).1 += 1;
        }
        Builder {
            headers,
            counts,
            deletions: BTreeMap::new(),
            changes: Vec::new(),
            inserts: Vec::new(),
            adds: Vec::new(),
            envelope: Vec::new(),
        }
    }

    /// Rspamd's index: 0 all, n > 0 the n-th, n < 0 counted from the end.
    fn delete(&mut self, name: &str, index: i32) {
        let count = self.count(name);
        let which: Vec<u32> = match index {
            0 => (1..=count).collect(),
            n if n > 0 => vec![n.unsigned_abs()]
                .into_iter()
                .filter(|i| *i <= count)
                .collect(),
            n => {
                let from_end = n.unsigned_abs();
                if from_end <= count {
                    vec![count - from_end + 1]
                } else {
                    vec![]
                }
            }
        };
        if which.is_empty() {
            return;
        }
        let e = self
            .deletions
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| (name.to_string(), Vec::new()));
        e.1.extend(which);
    }

    fn count(&self, name: &str) -> u32 {
        self.counts
            .get(&name.to_ascii_lowercase())
            .map_or(0, |(_, c)| *c)
    }

    fn add(&mut self, name: &str, value: &str) {
        self.adds.push(Edit::Add {
            name: name.into(),
            value: folded(value),
        });
    }

    fn finish(self) -> Vec<Edit> {
        let mut out = Vec::new();
        for (_, (name, mut occ)) in self.deletions {
            occ.sort_unstable();
            occ.dedup();
            for o in occ.into_iter().rev() {
                out.push(Edit::Delete {
                    name: name.clone(),
                    occurrence: o,
                });
            }
        }
        out.extend(self.changes);
        out.extend(self.inserts);
        out.extend(self.adds);
        out.extend(self.envelope);
        out
    }
}

/// Decides what to do with one message.
pub fn decide(
    outcome: Outcome<'_>,
    policy: &Policy,
    cfg: &ActionsConfig,
    on_oversize: Fallback,
    headers: Headers<'_>,
) -> Decision {
    let mut b = Builder::new(headers);
    let mut forged_removed = 0;
    if policy.strip_forged {
        let forged: Vec<(&str, u32)> = b
            .counts
            .values()
            .filter(|(n, _)| is_forged_name(&cfg.remove_forged, n))
            .copied()
            .collect();
        for (name, c) in forged {
            b.delete(name, 0);
            forged_removed += c as usize;
        }
    }
    let fallback = |b: &mut Builder<'_>, f: Fallback, why: String, label: &'static str| {
        let reply = match f {
            Fallback::Accept => {
                status(b, cfg, &format!("unscanned ({why})"));
                Reply::Accept
            }
            Fallback::Tempfail => Reply::Tempfail {
                code: 451,
                enhanced: "4.7.1",
                text: "Message could not be scanned for spam, try again later".into(),
            },
            Fallback::Reject => Reply::Reject {
                code: 554,
                enhanced: "5.7.1",
                text: "Message could not be scanned for spam".into(),
            },
        };
        let name = match f {
            Fallback::Accept => "accept",
            Fallback::Tempfail => "tempfail",
            Fallback::Reject => "reject",
        };
        let summary = format!("{why}: {name} by policy -> {}", reply.describe());
        (reply, label, Some(f), summary)
    };

    let (reply, quarantine, label, fb, summary) = match outcome {
        Outcome::Skipped => {
            status(&mut b, cfg, "skipped (listener not scanned)");
            (
                Reply::Accept,
                None,
                "skipped",
                None,
                "not scanned (listener skips scanning)".to_string(),
            )
        }
        Outcome::Oversize { size, max } => {
            let (r, l, f, s) = fallback(
                &mut b,
                on_oversize,
                format!("message of {size} bytes over max-message-size {max}"),
                "oversize",
            );
            let r = match r {
                Reply::Tempfail { .. } => Reply::Tempfail {
                    code: 452,
                    enhanced: "4.3.1",
                    text: "Message too large to scan for spam".into(),
                },
                Reply::Reject { .. } => Reply::Reject {
                    code: 552,
                    enhanced: "5.3.4",
                    text: "Message too large to scan for spam".into(),
                },
                r => r,
            };
            (r, None, l, f, s)
        }
        Outcome::Failed { label, detail } => {
            let (r, l, f, s) = fallback(
                &mut b,
                policy.on_error,
                format!("rspamd unavailable: {label}"),
                "unscanned",
            );
            (r, None, l, f, format!("{s} ({detail})"))
        }
        Outcome::Scanned(reply) => {
            let (r, q, s) = scanned(&mut b, reply, policy, cfg);
            (r, q, reply.action.metric_label(), None, s)
        }
    };
    Decision {
        reply,
        quarantine,
        edits: b.finish(),
        label,
        fallback: fb,
        forged_removed,
        summary,
    }
}

fn scanned(
    b: &mut Builder<'_>,
    r: &ScanReply,
    policy: &Policy,
    cfg: &ActionsConfig,
) -> (Reply, Option<String>, String) {
    let m = &r.milter;
    let mut reject_with = cfg.reject_with;
    if cfg.apply_milter_block {
        for rm in &m.remove_headers {
            b.delete(&rm.name, rm.index);
        }
        let total = i64::try_from(b.headers.names.len()).unwrap_or(i64::MAX);
        for h in &m.add_headers {
            match h.order {
                Some(o) if o >= 0 => b.inserts.push(Edit::Insert {
                    index: o.unsigned_abs(),
                    name: h.name.clone(),
                    value: folded(&h.value),
                }),
                // As Rspamd's proxy counts: from the end, past the MTA's own Received.
                Some(o) if o < -1 => b.inserts.push(Edit::Insert {
                    index: u32::try_from((total + i64::from(o) + 2).max(0)).unwrap_or(0),
                    name: h.name.clone(),
                    value: folded(&h.value),
                }),
                _ => b.add(&h.name, &h.value),
            }
        }
        for (i, sig) in r.dkim_signatures.iter().enumerate() {
            b.inserts.push(Edit::Insert {
                index: u32::try_from(i + 1).unwrap_or(u32::MAX),
                name: "DKIM-Signature".into(),
                value: folded(sig),
            });
        }
        if let Some(f) = &m.change_from {
            b.envelope.push(Edit::ChangeFrom(f.clone()));
        }
        b.envelope
            .extend(m.add_rcpt.iter().map(|a| Edit::AddRcpt(a.clone())));
        b.envelope
            .extend(m.del_rcpt.iter().map(|a| Edit::DelRcpt(a.clone())));
        match m.reject.as_deref() {
            Some(s) if s.eq_ignore_ascii_case("discard") => reject_with = RejectWith::Discard,
            Some(s) if s.eq_ignore_ascii_case("quarantine") => reject_with = RejectWith::Quarantine,
            _ => {}
        }
        if m.no_action {
            b.add("X-Rspamd-Action", r.action.as_str());
        }
    }
    let score = format!("{:.2} / {:.2}", r.score, r.required_score);
    if policy.label && !cfg.score_header.is_empty() {
        b.add(&cfg.score_header, &score);
    }
    if policy.label && !cfg.symbols_header.is_empty() && !r.symbols.is_empty() {
        let list: Vec<String> = r
            .symbols
            .iter()
            .map(|s| format!("{}({:.2})", s.name, s.score))
            .collect();
        b.add(&cfg.symbols_header, &list.join(",\n\t"));
    }
    let spam_headers: Vec<(String, String)> = match m.spam_header.clone() {
        Some(SpamHeader::Value(v)) if cfg.apply_milter_block => vec![(cfg.spam_header.clone(), v)],
        Some(SpamHeader::Headers(h)) if cfg.apply_milter_block => h,
        _ => vec![(cfg.spam_header.clone(), cfg.spam_header_value.clone())],
    };
    let smtp_message = r.smtp_message.as_deref();
    let reject_text = reply_text(
        &[policy.reject_message.as_deref(), smtp_message],
        &cfg.reject_message,
    );
    let observe = policy.mode == Mode::Observe;
    // What enforce mode does, expressed as a reply plus header work.
    let mut label_spam = false;
    let mut new_subject: Option<String> = None;
    let mut quarantine = None;
    let reply = match &r.action {
        Action::NoAction | Action::Other(_) => Reply::Accept,
        Action::Greylist => match cfg.greylist {
            GreylistWith::Accept => Reply::Accept,
            GreylistWith::Tempfail => Reply::Tempfail {
                code: 451,
                enhanced: "4.7.1",
                text: reply_text(&[smtp_message], &cfg.greylist_message),
            },
        },
        Action::AddHeader => {
            label_spam = true;
            Reply::Accept
        }
        Action::RewriteSubject => {
            new_subject = Some(match (&r.subject, b.headers.subject) {
                (Some(s), _) => s.clone(),
                (None, Some(orig)) => format!("{}{orig}", cfg.subject_prefix),
                (None, None) => cfg.subject_prefix.trim_end().to_string(),
            });
            Reply::Accept
        }
        Action::SoftReject => Reply::Tempfail {
            code: 451,
            enhanced: "4.7.1",
            text: reply_text(&[smtp_message], &cfg.tempfail_message),
        },
        Action::Reject => match reject_with {
            RejectWith::Reject => Reply::Reject {
                code: 554,
                enhanced: "5.7.1",
                text: reject_text.clone(),
            },
            RejectWith::Quarantine => {
                label_spam = true;
                quarantine = Some(reply_text(&[smtp_message], &cfg.quarantine_message));
                Reply::Accept
            }
            RejectWith::Discard => Reply::Discard,
        },
        Action::Discard => Reply::Discard,
        Action::Quarantine => {
            label_spam = true;
            quarantine = Some(reply_text(&[smtp_message], &cfg.quarantine_message));
            Reply::Accept
        }
    };
    let mut summary = format!("action={:?} score={score}", r.action.as_str());
    if r.is_skipped {
        summary.push_str(" (rspamd skipped rules)");
    }
    if let Action::Other(name) = &r.action {
        summary.push_str(&format!(" (unknown action {name:?} accepted)"));
    }
    if observe {
        let would = match (&reply, &quarantine, &new_subject) {
            (Reply::Accept, Some(_), _) => "quarantine".to_string(),
            (Reply::Accept, None, Some(_)) => "rewrite subject".to_string(),
            (Reply::Accept, None, None) if label_spam => "add header".to_string(),
            (other, _, _) => other.describe(),
        };
        status(
            b,
            cfg,
            &format!(
                "observe; rspamd {} score {score}; would {would}",
                r.action.as_str()
            ),
        );
        summary.push_str(&format!(" -> observe mode, would {would}: accept"));
        return (Reply::Accept, None, summary);
    }
    if label_spam && policy.label {
        for (name, value) in &spam_headers {
            b.delete(name, 0);
            b.add(name, value);
        }
    }
    if let Some(s) = new_subject {
        if policy.label {
            if b.headers.subject.is_some() {
                b.changes.push(Edit::Change {
                    name: "Subject".into(),
                    occurrence: 1,
                    value: folded(&s),
                });
            } else {
                b.add("Subject", &s);
            }
        } else {
            summary.push_str(" (not labelled: direction unlabelled)");
        }
    } else if label_spam && !policy.label {
        summary.push_str(" (not labelled: direction unlabelled)");
    }
    if let Some(q) = &quarantine {
        summary.push_str(&format!(" -> quarantine ({q})"));
    }
    summary.push_str(&format!(" -> {}", reply.describe()));
    if policy.direction == Direction::Outbound && matches!(reply, Reply::Reject { .. }) {
        summary.push_str(" (outbound spam refused)");
    }
    (reply, quarantine, summary)
}

fn status(b: &mut Builder<'_>, cfg: &ActionsConfig, text: &str) {
    if !cfg.status_header.is_empty() {
        b.add(&cfg.status_header, text);
    }
}
