//! Applying a milter's modifications to a message the way Postfix's cleanup does, sans-IO.
//!
//! The message is kept as the bytes it arrived as: every header field the milter did not
//! touch, the separator and the body come out byte for byte, odd line endings included.
//!
//! Index rules (Postfix `cleanup_milter.c`, Sendmail docs):
//! - change/delete: 1-based per header name, case-insensitive, counted over the headers the
//!   milter saw (the MTA's own hidden `Received:` is not counted); 0 is treated as 1; an
//!   index past the last instance appends (a delete of a missing header does nothing);
//! - insert: 0-based over all headers, the hidden `Received:` included; past the end appends;
//! - add: appends to the header block.
//!
//! Without `HEADER_LEADING_SPACE` one space is put between the colon and every value the
//! milter adds, inserts or changes; with it the value is used as sent. Line feeds inside
//! values (folds) become CRLF.

use bytes::Bytes;

use crate::proto::reply::Modification;
use crate::session::mta::to_crlf;

/// One header field, as raw bytes (name, colon, value, folds and line ending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    raw: Bytes,
    name_end: usize,
    colon: usize,
    hidden: bool,
    added: bool,
}

impl HeaderField {
    fn parse(raw: Bytes) -> Option<HeaderField> {
        let colon = raw.iter().position(|&b| b == b':')?;
        let name = raw.get(..colon)?;
        let name_end = name
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(0, |p| p + 1);
        let trimmed = name.get(..name_end)?;
        if trimmed.is_empty() || !trimmed.iter().all(|&b| b.is_ascii_graphic() && b != b':') {
            return None;
        }
        Some(HeaderField {
            raw,
            name_end,
            colon,
            hidden: false,
            added: false,
        })
    }

    fn new(name: &[u8], value: &[u8], leading_space: bool) -> HeaderField {
        let mut raw = Vec::with_capacity(name.len() + value.len() + 4);
        raw.extend_from_slice(name);
        raw.push(b':');
        if !leading_space {
            raw.push(b' ');
        }
        raw.extend_from_slice(&to_crlf(value));
        raw.extend_from_slice(b"\r\n");
        HeaderField {
            raw: Bytes::from(raw),
            name_end: name.len(),
            colon: name.len(),
            hidden: false,
            added: true,
        }
    }

    /// The field name.
    pub fn name(&self) -> &[u8] {
        self.raw.get(..self.name_end).unwrap_or_default()
    }

    /// Everything after the colon up to the field's final line ending, folds included.
    pub fn value(&self) -> &[u8] {
        let v = self.raw.get(self.colon + 1..).unwrap_or_default();
        let v = v.strip_suffix(b"\n").unwrap_or(v);
        v.strip_suffix(b"\r").unwrap_or(v)
    }

    /// The field's bytes exactly as they will be written.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Whether this is the MTA's own header, hidden from the milter.
    pub fn is_hidden(&self) -> bool {
        self.hidden
    }

    /// Whether a modification created or rewrote this field.
    pub fn is_modified(&self) -> bool {
        self.added
    }

    fn is_named(&self, name: &[u8]) -> bool {
        self.name().eq_ignore_ascii_case(name)
    }
}

/// A message split into header fields, separator and body, kept byte-exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    fields: Vec<HeaderField>,
    separator: Bytes,
    body: Bytes,
    replaced_body: Option<Vec<u8>>,
}

fn split_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split_inclusive(|&b| b == b'\n')
}

impl Message {
    /// Splits `raw` into header fields, the blank separator line and the body.
    ///
    /// The header block ends at the first empty line, or at the first line that is neither
    /// a field nor a continuation (that line then starts the body, with no separator).
    pub fn parse(raw: &[u8]) -> Message {
        let raw = Bytes::copy_from_slice(raw);
        let mut fields: Vec<HeaderField> = Vec::new();
        let mut pos = 0;
        // Start of the field being collected.
        let mut field_start: Option<usize> = None;
        let mut separator = Bytes::new();
        let mut body_start = raw.len();
        for line in split_lines(&raw) {
            let start = pos;
            pos += line.len();
            let blank = line == b"\r\n" || line == b"\n";
            let continuation =
                matches!(line.first(), Some(b' ' | b'\t')) && field_start.is_some() && !blank;
            if continuation {
                continue;
            }
            if let Some(fs) = field_start.take()
                && let Some(f) = HeaderField::parse(raw.slice(fs..start))
            {
                fields.push(f);
            }
            if blank {
                separator = raw.slice(start..pos);
                body_start = pos;
                break;
            }
            let is_field = HeaderField::parse(Bytes::copy_from_slice(line)).is_some();
            if !is_field {
                body_start = start;
                break;
            }
            field_start = Some(start);
        }
        if let Some(fs) = field_start
            && let Some(f) = HeaderField::parse(raw.slice(fs..pos))
        {
            fields.push(f);
            body_start = pos;
        }
        Message {
            fields,
            separator,
            body: raw.slice(body_start.min(raw.len())..),
            replaced_body: None,
        }
    }

    /// Puts the MTA's own header (e.g. its `Received:`) at the top: hidden from the milter
    /// and from change indexes, counted by insert indexes. `raw` is the whole field with
    /// its line ending.
    pub fn with_hidden_header(mut self, raw: &[u8]) -> Message {
        if let Some(mut f) = HeaderField::parse(Bytes::copy_from_slice(raw)) {
            f.hidden = true;
            self.fields.insert(0, f);
        }
        self
    }

    /// Every header field, the hidden one included, in order.
    pub fn fields(&self) -> &[HeaderField] {
        &self.fields
    }

    /// The header fields the milter sees, in order.
    pub fn milter_headers(&self) -> impl Iterator<Item = &HeaderField> {
        self.fields.iter().filter(|f| !f.hidden)
    }

    /// The body as stored (after a replacement: the replacement, CRLF line endings).
    pub fn body(&self) -> &[u8] {
        self.replaced_body.as_deref().unwrap_or(&self.body)
    }

    /// The body the milter is sent: CRLF line endings.
    pub fn milter_body(&self) -> Vec<u8> {
        to_crlf(self.body())
    }

    /// Applies one header or body modification; envelope changes and quarantine are for
    /// [`EnvelopeChanges`] and are ignored here.
    pub fn apply(&mut self, m: &Modification, leading_space: bool) {
        match m {
            Modification::AddHeader { name, value } => {
                self.fields
                    .push(HeaderField::new(name, value, leading_space));
            }
            Modification::InsertHeader { index, name, value } => {
                let at = usize::try_from(*index)
                    .unwrap_or(usize::MAX)
                    .min(self.fields.len());
                self.fields
                    .insert(at, HeaderField::new(name, value, leading_space));
            }
            Modification::ChangeHeader { index, name, value } => {
                let nth = usize::try_from((*index).max(1)).unwrap_or(usize::MAX);
                let found = self
                    .fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| !f.hidden && f.is_named(name))
                    .nth(nth - 1)
                    .map(|(i, _)| i);
                match (found, value.is_empty()) {
                    (Some(i), true) => {
                        self.fields.remove(i);
                    }
                    (Some(i), false) => {
                        if let Some(f) = self.fields.get_mut(i) {
                            *f = HeaderField::new(name, value, leading_space);
                        }
                    }
                    (None, true) => {}
                    (None, false) => {
                        self.fields
                            .push(HeaderField::new(name, value, leading_space));
                    }
                }
            }
            Modification::ReplaceBody(chunk) => {
                // Chunks of one replacement arrive contiguously; the first starts afresh.
                let body = self.replaced_body.get_or_insert_with(Vec::new);
                body.extend_from_slice(chunk);
            }
            _ => {}
        }
    }

    /// Applies every modification in order (body replacement chunks are joined, then
    /// given CRLF line endings).
    pub fn apply_all<'a>(
        &mut self,
        mods: impl IntoIterator<Item = &'a Modification>,
        leading_space: bool,
    ) {
        for m in mods {
            self.apply(m, leading_space);
        }
        if let Some(b) = self.replaced_body.take() {
            self.replaced_body = Some(to_crlf(&b));
            if self.separator.is_empty() {
                self.separator = Bytes::from_static(b"\r\n");
            }
        }
    }

    /// The message as the MTA would write it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = self.body();
        let mut out = Vec::with_capacity(
            self.fields.iter().map(|f| f.raw.len()).sum::<usize>()
                + self.separator.len()
                + body.len(),
        );
        for f in &self.fields {
            out.extend_from_slice(&f.raw);
        }
        out.extend_from_slice(&self.separator);
        out.extend_from_slice(body);
        out
    }
}

/// The envelope after the milter's sender and recipient changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvelopeChanges {
    /// The sender, without angle brackets.
    pub sender: String,
    /// The sender's ESMTP arguments (after CHGFROM: the milter's, as one string).
    pub sender_args: Option<String>,
    /// Recipients without angle brackets, each with ESMTP arguments as one string.
    pub recipients: Vec<(String, Option<String>)>,
    /// The quarantine reason, if the milter asked to hold the message.
    pub quarantine: Option<String>,
}

fn strip_brackets(a: &[u8]) -> String {
    let s = String::from_utf8_lossy(a);
    let t = s.trim();
    t.strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(t)
        .to_owned()
}

impl EnvelopeChanges {
    /// The envelope before any change.
    pub fn new(sender: &str, recipients: &[String]) -> EnvelopeChanges {
        EnvelopeChanges {
            sender: strip_brackets(sender.as_bytes()),
            sender_args: None,
            recipients: recipients
                .iter()
                .map(|r| (strip_brackets(r.as_bytes()), None))
                .collect(),
            quarantine: None,
        }
    }

    /// Applies one envelope modification (others are ignored). DELRCPT matches the address
    /// without angle brackets, case-insensitively.
    pub fn apply(&mut self, m: &Modification) {
        let args = |a: &Option<Bytes>| a.as_ref().map(|a| String::from_utf8_lossy(a).into_owned());
        match m {
            Modification::ChangeFrom { address, args: a } => {
                self.sender = strip_brackets(address);
                self.sender_args = args(a);
            }
            Modification::AddRcpt { address } => {
                self.recipients.push((strip_brackets(address), None));
            }
            Modification::AddRcptWithArgs { address, args: a } => {
                self.recipients.push((strip_brackets(address), args(a)));
            }
            Modification::DeleteRcpt { address } => {
                let gone = strip_brackets(address);
                self.recipients
                    .retain(|(r, _)| !r.eq_ignore_ascii_case(&gone));
            }
            Modification::Quarantine { reason } => {
                self.quarantine = Some(String::from_utf8_lossy(reason).into_owned());
            }
            _ => {}
        }
    }
}
