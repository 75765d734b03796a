//! Replies the milter sends (`SMFIR_*`): verdicts, modifications, progress and the
//! negotiation answer.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Code, ProtocolError, UsageError};
use crate::proto::flags::{Actions, ProtocolFlags, Stage};
use crate::proto::reader::Reader;
use crate::proto::rules::put_cstr;
use crate::proto::smtp_reply::{SmtpReply, SmtpReplyError};
use crate::wire::{Frame, encode_frame};

/// Reply codes (`SMFIR_*`).
pub mod code {
    /// Negotiation answer.
    pub const OPTNEG: u8 = b'O';
    /// Continue (at end of message: accept).
    pub const CONTINUE: u8 = b'c';
    /// Accept; no more events for this message (or connection).
    pub const ACCEPT: u8 = b'a';
    /// Reject.
    pub const REJECT: u8 = b'r';
    /// Temporary failure.
    pub const TEMPFAIL: u8 = b't';
    /// Accept, then silently discard.
    pub const DISCARD: u8 = b'd';
    /// Reject or tempfail with this SMTP reply.
    pub const REPLYCODE: u8 = b'y';
    /// Skip the rest of the body.
    pub const SKIP: u8 = b's';
    /// Still working; restart the MTA's timer.
    pub const PROGRESS: u8 = b'p';
    /// Append a header.
    pub const ADDHEADER: u8 = b'h';
    /// Insert a header at a position.
    pub const INSHEADER: u8 = b'i';
    /// Change or delete a header.
    pub const CHGHEADER: u8 = b'm';
    /// Change the envelope sender.
    pub const CHGFROM: u8 = b'e';
    /// Add a recipient.
    pub const ADDRCPT: u8 = b'+';
    /// Add a recipient with ESMTP arguments.
    pub const ADDRCPT_PAR: u8 = b'2';
    /// Delete a recipient.
    pub const DELRCPT: u8 = b'-';
    /// A chunk of the replacement body.
    pub const REPLBODY: u8 = b'b';
    /// Quarantine (hold) the message.
    pub const QUARANTINE: u8 = b'q';
    /// Postfix only: answer 421 and disconnect.
    pub const SHUTDOWN: u8 = b'4';
}

/// Macros the milter wants at one stage, sent at the end of the negotiation answer.
///
/// Postfix cannot be silenced by an empty list: it then falls back to its main.cf list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroRequest {
    /// The stage.
    pub stage: Stage,
    /// Macro names, e.g. `i`, `{auth_type}`.
    pub names: Vec<String>,
}

/// The milter's negotiation answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptNegReply {
    /// Protocol version: the lower of the MTA's and 6.
    pub version: u32,
    /// Actions the milter will use (a subset of the offer).
    pub actions: Actions,
    /// Steps and options the milter wants (a subset of the offer).
    pub protocol: ProtocolFlags,
    /// Macro lists per stage.
    pub macros: Vec<MacroRequest>,
}

/// The text [`Verdict::reply`] falls back to for a 5xx whose text cannot be sent
/// (Postfix's text for a milter's plain reject).
const GENERIC_REJECT: &str = "Command rejected";
/// The text [`Verdict::reply`] falls back to for a 4xx whose text cannot be sent
/// (Postfix's text for a milter's plain tempfail).
const GENERIC_TEMPFAIL: &str = "Service unavailable - try again later";

/// A final answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on (at end of message: accept the message, with any modifications).
    Continue,
    /// Accept; no more events for this message, or for the connection at CONNECT/HELO.
    Accept,
    /// Reject (at RCPT: only this recipient).
    Reject,
    /// Temporary failure (at RCPT: only this recipient).
    Tempfail,
    /// Accept and discard the message.
    Discard,
    /// Reject (5xx) or tempfail (4xx) with this SMTP reply.
    Reply(SmtpReply),
    /// Skip the rest of the body; valid only in reply to BODY and when SKIP was negotiated.
    Skip,
    /// Postfix only: answer 421 and close the SMTP session.
    Shutdown,
}

impl Verdict {
    /// A reject or tempfail with a custom reply; the code's class decides which.
    ///
    /// A reply that cannot be sent as given (a control character or an over-long line in
    /// the text, an enhanced code of the wrong form) falls back by the code's class, with a
    /// logged warning, so a typo in a text never changes what happens to the mail: a 5xx
    /// still rejects and a 4xx still tempfails, with the same code. A bad enhanced code
    /// is replaced by `5.7.1` / `4.7.1`; a bad text by a generic one, Postfix's own
    /// wording for a milter's reject or tempfail (`Command rejected`, `Service
    /// unavailable - try again later`). A code that is not 4xx or 5xx falls back to plain
    /// [`Verdict::Tempfail`], which never accepts mail the milter meant to refuse. Use
    /// [`SmtpReply::new`] directly to handle the error yourself.
    pub fn reply(code: u16, enhanced: &str, text: &str) -> Verdict {
        let enhanced = (!enhanced.is_empty()).then_some(enhanced);
        let e = match SmtpReply::new(code, enhanced, text) {
            Ok(r) => return Verdict::Reply(r),
            Err(e) => e,
        };
        let (generic, default_enhanced) = match code {
            500..=599 => (GENERIC_REJECT, "5.7.1"),
            400..=499 => (GENERIC_TEMPFAIL, "4.7.1"),
            _ => {
                tracing::warn!(error = %e, code, "invalid SMTP reply code; tempfailing instead");
                return Verdict::Tempfail;
            }
        };
        let bad_enhanced = matches!(
            e,
            SmtpReplyError::BadEnhancedCode(_) | SmtpReplyError::ClassMismatch { .. }
        );
        let fallback = if bad_enhanced {
            // Keep the text when only the enhanced code is wrong.
            SmtpReply::new(code, Some(default_enhanced), text)
        } else {
            SmtpReply::new(code, enhanced, generic)
        }
        .or_else(|_| SmtpReply::new(code, Some(default_enhanced), generic));
        match fallback {
            Ok(r) => {
                tracing::warn!(
                    error = %e,
                    code,
                    fallback = %r,
                    "invalid SMTP reply text; sending a generic text with the same code"
                );
                Verdict::Reply(r)
            }
            // Unreachable for a 4xx/5xx code; stay on the refusing side regardless.
            Err(_) if code >= 500 => Verdict::Reject,
            Err(_) => Verdict::Tempfail,
        }
    }

    /// The wire code.
    pub fn code(&self) -> u8 {
        match self {
            Verdict::Continue => code::CONTINUE,
            Verdict::Accept => code::ACCEPT,
            Verdict::Reject => code::REJECT,
            Verdict::Tempfail => code::TEMPFAIL,
            Verdict::Discard => code::DISCARD,
            Verdict::Reply(_) => code::REPLYCODE,
            Verdict::Skip => code::SKIP,
            Verdict::Shutdown => code::SHUTDOWN,
        }
    }

    /// A name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Continue => "continue",
            Verdict::Accept => "accept",
            Verdict::Reject => "reject",
            Verdict::Tempfail => "tempfail",
            Verdict::Discard => "discard",
            Verdict::Reply(r) if r.is_permanent() => "reject with reply",
            Verdict::Reply(_) => "tempfail with reply",
            Verdict::Skip => "skip",
            Verdict::Shutdown => "shutdown",
        }
    }
}

/// A change to the message, allowed only in reply to end of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modification {
    /// Append a header at the end of the header block (`ADD_HEADERS`).
    AddHeader {
        /// Field name.
        name: Bytes,
        /// Field value; fold with `\n` plus whitespace. With `HEADER_LEADING_SPACE` the
        /// value is used as is, so supply the space after the colon yourself.
        value: Bytes,
    },
    /// Insert a header at a 0-based position over all headers, the MTA's own `Received:`
    /// included (`ADD_HEADERS`). 0 is the very top; a position past the end appends.
    InsertHeader {
        /// 0-based position.
        index: u32,
        /// Field name.
        name: Bytes,
        /// Field value.
        value: Bytes,
    },
    /// Change the `index`-th (1-based, per name, case-insensitive) header of this name; an
    /// empty value deletes it (`CHANGE_HEADERS`). The MTA's own `Received:` is not counted.
    ChangeHeader {
        /// 1-based occurrence among headers of this name (Postfix treats 0 as 1).
        index: u32,
        /// Field name.
        name: Bytes,
        /// New value; empty deletes.
        value: Bytes,
    },
    /// Replace the envelope sender (`CHANGE_FROM`).
    ChangeFrom {
        /// New sender address.
        address: Bytes,
        /// ESMTP arguments as one space-separated string.
        args: Option<Bytes>,
    },
    /// Add a recipient (`ADD_RCPT`).
    AddRcpt {
        /// The address.
        address: Bytes,
    },
    /// Add a recipient with ESMTP arguments (`ADD_RCPT_WITH_ARGS`).
    AddRcptWithArgs {
        /// The address.
        address: Bytes,
        /// ESMTP arguments as one space-separated string.
        args: Option<Bytes>,
    },
    /// Remove a recipient, spelled as in its RCPT command (`DELETE_RCPT`).
    DeleteRcpt {
        /// The address.
        address: Bytes,
    },
    /// One chunk of the replacement body (`CHANGE_BODY`); the chunks of one replacement
    /// must be sent together.
    ReplaceBody(Bytes),
    /// Hold the message with this reason (`QUARANTINE`).
    Quarantine {
        /// Why; must not be empty.
        reason: Bytes,
    },
}

impl Modification {
    /// Deletes the `index`-th header named `name` (a change to an empty value).
    pub fn delete_header(name: impl Into<Bytes>, index: u32) -> Modification {
        Modification::ChangeHeader {
            index,
            name: name.into(),
            value: Bytes::new(),
        }
    }

    /// The action that must have been negotiated.
    pub fn required_action(&self) -> Actions {
        match self {
            Modification::AddHeader { .. } | Modification::InsertHeader { .. } => {
                Actions::ADD_HEADERS
            }
            Modification::ChangeHeader { .. } => Actions::CHANGE_HEADERS,
            Modification::ChangeFrom { .. } => Actions::CHANGE_FROM,
            Modification::AddRcpt { .. } => Actions::ADD_RCPT,
            Modification::AddRcptWithArgs { .. } => Actions::ADD_RCPT_WITH_ARGS,
            Modification::DeleteRcpt { .. } => Actions::DELETE_RCPT,
            Modification::ReplaceBody(_) => Actions::CHANGE_BODY,
            Modification::Quarantine { .. } => Actions::QUARANTINE,
        }
    }

    /// The wire code.
    pub fn code(&self) -> u8 {
        match self {
            Modification::AddHeader { .. } => code::ADDHEADER,
            Modification::InsertHeader { .. } => code::INSHEADER,
            Modification::ChangeHeader { .. } => code::CHGHEADER,
            Modification::ChangeFrom { .. } => code::CHGFROM,
            Modification::AddRcpt { .. } => code::ADDRCPT,
            Modification::AddRcptWithArgs { .. } => code::ADDRCPT_PAR,
            Modification::DeleteRcpt { .. } => code::DELRCPT,
            Modification::ReplaceBody(_) => code::REPLBODY,
            Modification::Quarantine { .. } => code::QUARANTINE,
        }
    }

    /// A name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Modification::AddHeader { .. } => "add header",
            Modification::InsertHeader { .. } => "insert header",
            Modification::ChangeHeader { value, .. } if value.is_empty() => "delete header",
            Modification::ChangeHeader { .. } => "change header",
            Modification::ChangeFrom { .. } => "change sender",
            Modification::AddRcpt { .. } => "add recipient",
            Modification::AddRcptWithArgs { .. } => "add recipient with arguments",
            Modification::DeleteRcpt { .. } => "delete recipient",
            Modification::ReplaceBody(_) => "replace body",
            Modification::Quarantine { .. } => "quarantine",
        }
    }

    /// Checks the fields can be sent: no NUL inside C strings, header names that are
    /// field names, a non-empty quarantine reason and addresses, and header values whose
    /// only line breaks are folds.
    ///
    /// A header value may break lines only to fold them: `\n` (or `\r\n`) followed by a
    /// space or tab. A bare CR, or a LF starting a line without leading whitespace, would
    /// let the value end the header and start another (header injection), so both are
    /// refused, as is a break at the very end.
    pub fn validate(&self) -> Result<(), UsageError> {
        self.check(true)
    }

    /// The checks of an MTA reading the modification: as [`Modification::validate`] but
    /// header values are checked only for NUL (Postfix lets a milter's line breaks
    /// through).
    pub(crate) fn validate_received(&self) -> Result<(), UsageError> {
        self.check(false)
    }

    fn check(&self, strict_values: bool) -> Result<(), UsageError> {
        use crate::proto::rules::check_field as no_nul;
        fn header_name(n: &[u8]) -> Result<(), UsageError> {
            if n.is_empty() || !n.iter().all(|&b| b.is_ascii_graphic() && b != b':') {
                return Err(UsageError::InvalidField {
                    field: "header name",
                    reason: "must be printable ASCII without ':' or spaces",
                });
            }
            Ok(())
        }
        fn non_empty(field: &'static str, v: &[u8]) -> Result<(), UsageError> {
            no_nul(field, v)?;
            if v.is_empty() {
                return Err(UsageError::InvalidField {
                    field,
                    reason: "must not be empty",
                });
            }
            Ok(())
        }
        match self {
            Modification::AddHeader { name, value }
            | Modification::InsertHeader { name, value, .. }
            | Modification::ChangeHeader { name, value, .. } => {
                header_name(name)?;
                no_nul("header value", value)?;
                if strict_values {
                    header_value_folds(value)?;
                }
                Ok(())
            }
            Modification::ChangeFrom { address, args }
            | Modification::AddRcptWithArgs { address, args } => {
                non_empty("address", address)?;
                no_nul("ESMTP arguments", args.as_deref().unwrap_or_default())
            }
            Modification::AddRcpt { address } | Modification::DeleteRcpt { address } => {
                non_empty("address", address)
            }
            Modification::ReplaceBody(_) => Ok(()),
            Modification::Quarantine { reason } => non_empty("quarantine reason", reason),
        }
    }
}

/// Refuses line breaks in a header value that are not folds (`\n` or `\r\n`, then a
/// space or tab).
fn header_value_folds(v: &[u8]) -> Result<(), UsageError> {
    let bad = |reason| {
        Err(UsageError::InvalidField {
            field: "header value",
            reason,
        })
    };
    let mut i = 0;
    while let Some(&b) = v.get(i) {
        let after_break = match b {
            b'\r' if v.get(i + 1) == Some(&b'\n') => i + 2,
            b'\r' => return bad("contains a bare CR"),
            b'\n' => i + 1,
            _ => {
                i += 1;
                continue;
            }
        };
        match v.get(after_break) {
            Some(b' ' | b'\t') => i = after_break + 1,
            Some(_) => {
                return bad(
                    "has a line break not followed by a space or tab (not a fold: it would start a new header)",
                );
            }
            None => return bad("ends with a line break"),
        }
    }
    Ok(())
}

/// Anything the milter sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The negotiation answer.
    OptNeg(OptNegReply),
    /// A final answer to a command.
    Verdict(Verdict),
    /// A modification (end of message only).
    Modification(Modification),
    /// Still working (end of message only, to be portable).
    Progress,
}

impl Reply {
    /// The wire code.
    pub fn code(&self) -> u8 {
        match self {
            Reply::OptNeg(_) => code::OPTNEG,
            Reply::Verdict(v) => v.code(),
            Reply::Modification(m) => m.code(),
            Reply::Progress => code::PROGRESS,
        }
    }

    /// Appends the reply as one frame to `out`. Validation and the send cap are the
    /// session's business; this writes what it is given.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut p = BytesMut::new();
        match self {
            Reply::OptNeg(o) => {
                p.put_u32(o.version);
                p.put_u32(o.actions.bits());
                p.put_u32(o.protocol.bits());
                for m in &o.macros {
                    p.put_u32(m.stage as u32);
                    p.put_slice(m.names.join(" ").as_bytes());
                    p.put_u8(0);
                }
            }
            Reply::Verdict(Verdict::Reply(r)) => put_cstr(&mut p, r.to_wire().as_bytes()),
            Reply::Verdict(_) | Reply::Progress => {}
            Reply::Modification(m) => match m {
                Modification::AddHeader { name, value } => {
                    put_cstr(&mut p, name);
                    put_cstr(&mut p, value);
                }
                Modification::InsertHeader { index, name, value }
                | Modification::ChangeHeader { index, name, value } => {
                    p.put_u32(*index);
                    put_cstr(&mut p, name);
                    put_cstr(&mut p, value);
                }
                Modification::ChangeFrom { address, args }
                | Modification::AddRcptWithArgs { address, args } => {
                    put_cstr(&mut p, address);
                    if let Some(a) = args {
                        put_cstr(&mut p, a);
                    }
                }
                Modification::AddRcpt { address } | Modification::DeleteRcpt { address } => {
                    put_cstr(&mut p, address)
                }
                Modification::ReplaceBody(b) => p.put_slice(b),
                Modification::Quarantine { reason } => put_cstr(&mut p, reason),
            },
        }
        encode_frame(self.code(), &p, out);
    }

    /// Parses a frame from a milter, as strictly as Postfix does since 2026.
    pub fn decode(frame: Frame) -> Result<Reply, ProtocolError> {
        let mut r = Reader::new(frame.code, frame.payload);
        let reply = match frame.code {
            code::OPTNEG => {
                let version = r.u32("negotiation shorter than 12 bytes")?;
                let actions =
                    Actions::from_bits_retain(r.u32("negotiation shorter than 12 bytes")?);
                let protocol =
                    ProtocolFlags::from_bits_retain(r.u32("negotiation shorter than 12 bytes")?);
                let mut macros = Vec::new();
                while !r.is_empty() {
                    let stage = r.u32("truncated macro list")?;
                    let names = r.cstr("macro list not NUL-terminated")?;
                    let Some(stage) = Stage::from_u32(stage) else {
                        // Postfix ignores unknown stages with a warning.
                        continue;
                    };
                    let names = String::from_utf8_lossy(&names)
                        .split_ascii_whitespace()
                        .map(str::to_owned)
                        .collect();
                    macros.push(MacroRequest { stage, names });
                }
                Reply::OptNeg(OptNegReply {
                    version,
                    actions,
                    protocol,
                    macros,
                })
            }
            code::CONTINUE => empty(&r, Reply::Verdict(Verdict::Continue))?,
            code::ACCEPT => empty(&r, Reply::Verdict(Verdict::Accept))?,
            code::REJECT => empty(&r, Reply::Verdict(Verdict::Reject))?,
            code::TEMPFAIL => empty(&r, Reply::Verdict(Verdict::Tempfail))?,
            code::DISCARD => empty(&r, Reply::Verdict(Verdict::Discard))?,
            code::SKIP => empty(&r, Reply::Verdict(Verdict::Skip))?,
            code::SHUTDOWN => empty(&r, Reply::Verdict(Verdict::Shutdown))?,
            code::PROGRESS => empty(&r, Reply::Progress)?,
            code::REPLYCODE => {
                let text = r.cstr("reply text not NUL-terminated")?;
                r.finish("data after the reply text")?;
                let reply = SmtpReply::parse(&text)
                    .map_err(|_| r.malformed("reply text is not a valid 4xx/5xx SMTP reply"))?;
                Reply::Verdict(Verdict::Reply(reply))
            }
            code::ADDHEADER => {
                let name = r.cstr("header name not NUL-terminated")?;
                let value = r.cstr("header value not NUL-terminated")?;
                r.finish("data after the header value")?;
                Reply::Modification(Modification::AddHeader { name, value })
            }
            code::INSHEADER | code::CHGHEADER => {
                let index = r.u32("header index missing")?;
                let name = r.cstr("header name not NUL-terminated")?;
                let value = r.cstr("header value not NUL-terminated")?;
                r.finish("data after the header value")?;
                Reply::Modification(if frame.code == code::INSHEADER {
                    Modification::InsertHeader { index, name, value }
                } else {
                    Modification::ChangeHeader { index, name, value }
                })
            }
            code::CHGFROM | code::ADDRCPT_PAR => {
                let address = r.cstr("address not NUL-terminated")?;
                let args = if r.is_empty() {
                    None
                } else {
                    Some(r.cstr("arguments not NUL-terminated")?)
                };
                r.finish("data after the arguments")?;
                Reply::Modification(if frame.code == code::CHGFROM {
                    Modification::ChangeFrom { address, args }
                } else {
                    Modification::AddRcptWithArgs { address, args }
                })
            }
            code::ADDRCPT | code::DELRCPT => {
                let address = r.cstr("address not NUL-terminated")?;
                r.finish("data after the address")?;
                Reply::Modification(if frame.code == code::ADDRCPT {
                    Modification::AddRcpt { address }
                } else {
                    Modification::DeleteRcpt { address }
                })
            }
            code::REPLBODY => Reply::Modification(Modification::ReplaceBody(r.rest())),
            code::QUARANTINE => {
                let reason = r.cstr("quarantine reason not NUL-terminated")?;
                r.finish("data after the quarantine reason")?;
                if reason.is_empty() {
                    return Err(r.malformed("empty quarantine reason"));
                }
                Reply::Modification(Modification::Quarantine { reason })
            }
            other => return Err(ProtocolError::UnknownReply(Code(other))),
        };
        Ok(reply)
    }
}

fn empty(r: &Reader, reply: Reply) -> Result<Reply, ProtocolError> {
    r.finish("unexpected data")?;
    Ok(reply)
}
