//! Macro values per stage, looked up the way libmilter's `smfi_getsymval` does.

use std::borrow::Cow;

use bytes::Bytes;

use crate::error::{Code, ProtocolError};
use crate::proto::command::code;
use crate::proto::rules::{bare_macro_name, session_rank};

/// Default bound on the bytes a session keeps in macros.
pub const DEFAULT_MACRO_BYTES: usize = 64 * 1024;

/// The macros the MTA has defined, kept per stage.
#[derive(Debug, Clone)]
pub struct Macros {
    /// (command code, pairs), oldest stage first.
    stages: Vec<(u8, Vec<(Bytes, Bytes)>)>,
    bytes: usize,
    limit: usize,
}

impl Default for Macros {
    fn default() -> Self {
        Macros::with_limit(DEFAULT_MACRO_BYTES)
    }
}

impl Macros {
    /// An empty store bounded to `limit` bytes of names and values.
    pub fn with_limit(limit: usize) -> Macros {
        Macros {
            stages: Vec::new(),
            bytes: 0,
            limit,
        }
    }

    /// Records the macros of one `D` frame. The stage's earlier values and those of every
    /// later stage are forgotten. Codes outside the usual stages (Postfix also sends `L`,
    /// `B`, `A`, `U`) are kept like any other.
    pub fn define(
        &mut self,
        for_command: u8,
        pairs: Vec<(Bytes, Bytes)>,
    ) -> Result<(), ProtocolError> {
        let this = rank(for_command);
        self.stages.retain(|(c, _)| rank(*c) < this);
        self.bytes = self.stages.iter().map(|(_, p)| size(p)).sum();
        let add = size(&pairs);
        if self.bytes + add > self.limit {
            return Err(ProtocolError::Malformed {
                code: Code(code::MACRO),
                reason: "macros exceed the per-session limit",
            });
        }
        self.bytes += add;
        self.stages.push((for_command, pairs));
        Ok(())
    }

    /// Forgets the macros of the message stages (MAIL onward), as after an abort.
    pub fn clear_message(&mut self) {
        let mail = rank(code::MAIL);
        self.stages.retain(|(c, _)| rank(*c) < mail);
        self.bytes = self.stages.iter().map(|(_, p)| size(p)).sum();
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.stages.clear();
        self.bytes = 0;
    }

    /// The value of `name`, searching from the newest stage back; `x` and `{x}` are the
    /// same macro.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let bare = bare_macro_name(name.as_bytes());
        self.stages.iter().rev().find_map(|(_, pairs)| {
            pairs
                .iter()
                .find_map(|(n, v)| (bare_macro_name(n) == bare).then_some(v.as_ref()))
        })
    }

    /// [`get`](Self::get), decoded lossily as UTF-8.
    pub fn get_str(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get(name).map(String::from_utf8_lossy)
    }

    /// Every defined (name, value), oldest stage first.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.stages
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(n, v)| (n.as_ref(), v.as_ref())))
    }
}

/// Commands rank in session order; defining macros for one forgets the macros of every
/// later one (a new MAIL drops the last message's RCPT macros).
fn rank(c: u8) -> usize {
    session_rank(c)
}

fn size(pairs: &[(Bytes, Bytes)]) -> usize {
    pairs.iter().map(|(n, v)| n.len() + v.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&'static str, &'static str)]) -> Vec<(Bytes, Bytes)> {
        p.iter()
            .map(|(n, v)| {
                (
                    Bytes::from_static(n.as_bytes()),
                    Bytes::from_static(v.as_bytes()),
                )
            })
            .collect()
    }

    #[test]
    fn braces_are_optional_and_newest_wins() {
        let mut m = Macros::default();
        m.define(b'C', pairs(&[("j", "mx"), ("{daemon_name}", "smtpd")]))
            .unwrap();
        m.define(b'M', pairs(&[("{auth_type}", "PLAIN"), ("i", "Q1")]))
            .unwrap();
        m.define(b'R', pairs(&[("i", "Q2")])).unwrap();
        assert_eq!(m.get("daemon_name"), Some(&b"smtpd"[..]));
        assert_eq!(m.get("{j}"), Some(&b"mx"[..]));
        assert_eq!(m.get("auth_type"), Some(&b"PLAIN"[..]));
        assert_eq!(m.get("i"), Some(&b"Q2"[..]));
        assert_eq!(m.get("nope"), None);
    }

    #[test]
    fn new_mail_forgets_later_stages() {
        let mut m = Macros::default();
        m.define(b'C', pairs(&[("j", "mx")])).unwrap();
        m.define(b'M', pairs(&[("{mail_addr}", "a@x")])).unwrap();
        m.define(b'R', pairs(&[("{rcpt_addr}", "b@y")])).unwrap();
        m.define(b'E', pairs(&[("i", "Q")])).unwrap();
        m.define(b'M', pairs(&[("{mail_addr}", "c@x")])).unwrap();
        assert_eq!(m.get("rcpt_addr"), None);
        assert_eq!(m.get("i"), None);
        assert_eq!(m.get("mail_addr"), Some(&b"c@x"[..]));
        assert_eq!(m.get("j"), Some(&b"mx"[..]));
        m.clear_message();
        assert_eq!(m.get("mail_addr"), None);
        assert_eq!(m.get("j"), Some(&b"mx"[..]));
    }

    #[test]
    fn bounded() {
        let mut m = Macros::with_limit(10);
        assert!(m.define(b'C', pairs(&[("j", "123456789")])).is_ok());
        assert!(m.define(b'H', pairs(&[("x", "y")])).is_err());
        // Redefining a stage releases its old bytes.
        assert!(m.define(b'C', pairs(&[("j", "1")])).is_ok());
        assert!(m.define(b'H', pairs(&[("x", "y")])).is_ok());
    }
}
