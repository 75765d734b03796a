//! Rspamd's `POST /checkv2` JSON reply, read tolerantly.
//!
//! Rspamd's reply has changed shape across versions and configurations: `messages` may be an
//! object or (with `compat_messages`) an array, `dkim-signature` a string or an array, and
//! each `milter.add_headers` value an object, an array of objects or a bare string. One odd
//! field must never cost the whole verdict, so [`parse`] follows three rules:
//!
//! - unknown keys are skipped without being built;
//! - a known key whose value has an unexpected type is treated as absent (only a missing or
//!   non-string `action` is an error, [`ReplyError::MissingAction`], because without it
//!   there is no verdict);
//! - everything is bounded: the body size is checked first ([`ReplyError::TooLarge`]), and
//!   symbols, added and removed headers, DKIM signatures and header value lengths are
//!   capped by [`ReplyLimits`]; items over a cap are dropped and counted in
//!   [`ScanReply::truncated`].
//!
//! The JSON is read in one pass by serde visitors that see each object's entries in the
//! order Rspamd wrote them, so header and symbol order is kept without serde_json's
//! `preserve_order` feature (which would change `serde_json::Map` for the whole build).
//! If a key appears more than once, the last occurrence with a usable type wins. What is
//! skipped (unknown keys, items over a cap, sub-fields nobody uses such as a symbol's
//! `options`) is checked for JSON syntax only: invalid UTF-8 or a lone surrogate escape
//! there does not fail the reply, while in a string that is read it is a
//! [`ReplyError::Json`] (serde_json's rule).
//!
//! Header values are made ready for milter use: NUL bytes are removed and every CRLF becomes
//! a bare LF (Rspamd folds with CRLF unless the request carried `Flags: milter`; milter
//! header values fold with LF and the MTA adds the CR). A value that is empty afterwards is
//! dropped. Envelope addresses (`change_from`, `add_rcpt`, `del_rcpt`) are not repaired: an
//! empty one, or one holding NUL, CR or LF, is dropped.
#![warn(missing_docs)]

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Pairs kept from an object-valued `spam_header` (Rspamd sets one or two).
pub const MAX_SPAM_HEADERS: usize = 8;
/// Default [`ReplyLimits::max_bytes`]: 4 MiB, far above any real reply (a few KiB) while
/// keeping a broken or hostile scanner from making us buffer and parse without end.
pub const DEFAULT_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Default [`ReplyLimits::max_symbols`]: real replies carry tens of symbols (9 to 18 in the
/// Rspamd 3.4 samples), so this only stops a runaway list.
pub const DEFAULT_MAX_SYMBOLS: usize = 256;
/// Default [`ReplyLimits::max_add_headers`]: Rspamd's `milter_headers` adds one header per
/// enabled routine (7 or 8 in the samples).
pub const DEFAULT_MAX_ADD_HEADERS: usize = 64;
/// Default [`ReplyLimits::max_remove_headers`]: `milter_headers` removes one per routine
/// (8 or 9 in the samples).
pub const DEFAULT_MAX_REMOVE_HEADERS: usize = 64;
/// Default [`ReplyLimits::max_header_value`]: 16 KiB, room for a long folded
/// `X-Spamd-Result` or `DKIM-Signature` but not for a runaway value.
pub const DEFAULT_MAX_HEADER_VALUE: usize = 16 * 1024;

/// Bounds applied while parsing, so a reply costs a known amount of memory and produces a
/// known maximum of milter modifications whatever Rspamd (or whatever answers in its place)
/// sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Largest body accepted at all; a larger one is [`ReplyError::TooLarge`].
    pub max_bytes: usize,
    /// Symbols kept in [`ScanReply::symbols`]; later ones are counted as truncated.
    pub max_symbols: usize,
    /// Added headers kept in [`MilterBlock::add_headers`] (each array element counts), and
    /// separately the signatures kept in [`ScanReply::dkim_signatures`].
    pub max_add_headers: usize,
    /// Removals kept in [`MilterBlock::remove_headers`] (each index counts).
    pub max_remove_headers: usize,
    /// Longest header value kept, in bytes after normalisation; applies to added headers,
    /// DKIM signatures, the spam header and the rewritten subject. A longer one is dropped
    /// and counted as truncated.
    pub max_header_value: usize,
}

impl Default for ReplyLimits {
    fn default() -> Self {
        ReplyLimits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_symbols: DEFAULT_MAX_SYMBOLS,
            max_add_headers: DEFAULT_MAX_ADD_HEADERS,
            max_remove_headers: DEFAULT_MAX_REMOVE_HEADERS,
            max_header_value: DEFAULT_MAX_HEADER_VALUE,
        }
    }
}

/// Why a reply gave no verdict; the caller then applies its scan-failure policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The body is over [`ReplyLimits::max_bytes`]; it was not parsed.
    #[error("Rspamd reply of {size} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Size of the body received, in bytes.
        size: usize,
        /// The limit it exceeded.
        max: usize,
    },
    /// The body is not JSON, has trailing data, or its top level is not an object.
    #[error("Rspamd reply is not a JSON object: {0}")]
    Json(String),
    /// The object has no `action` key, or its value is not a string.
    #[error("Rspamd reply has no string `action`")]
    MissingAction,
}

/// The action Rspamd recommends, the core of the verdict.
///
/// Rspamd spells the built-ins with spaces (`"add header"`); [`Action::from_name`] also
/// accepts underscores and any letter case, as configs and Lua rules use both. Custom
/// actions configured in Rspamd become [`Action::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// `no action`: accept.
    NoAction,
    /// `greylist`: Rspamd's milter accepts; real greylisting arrives as a soft reject.
    Greylist,
    /// `add header`: accept and mark as spam.
    AddHeader,
    /// `rewrite subject`: accept with [`ScanReply::subject`] as the new Subject.
    RewriteSubject,
    /// `soft reject`: temporary failure.
    SoftReject,
    /// `reject`: permanent rejection.
    Reject,
    /// `discard`: accept and drop silently (milter-only action).
    Discard,
    /// `quarantine`: accept and hold (milter-only action).
    Quarantine,
    /// Any other action name, kept exactly as Rspamd sent it.
    Other(String),
}

impl Action {
    /// Maps an action name to its variant: case-insensitive, `_` and ` ` interchangeable,
    /// surrounding whitespace ignored; anything else is [`Action::Other`] with the name as
    /// given.
    #[must_use]
    pub fn from_name(name: &str) -> Action {
        let norm: String = name
            .trim()
            .chars()
            .map(|c| {
                if c == '_' {
                    ' '
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        match norm.as_str() {
            "no action" => Action::NoAction,
            "greylist" => Action::Greylist,
            "add header" => Action::AddHeader,
            "rewrite subject" => Action::RewriteSubject,
            "soft reject" => Action::SoftReject,
            "reject" => Action::Reject,
            "discard" => Action::Discard,
            "quarantine" => Action::Quarantine,
            _ => Action::Other(name.to_owned()),
        }
    }

    /// Rspamd's spelling of the action (`"no action"`, `"add header"`, ...), for logs and
    /// the `X-Rspamd-Action` header; [`Action::Other`] gives the name as received.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Action::NoAction => "no action",
            Action::Greylist => "greylist",
            Action::AddHeader => "add header",
            Action::RewriteSubject => "rewrite subject",
            Action::SoftReject => "soft reject",
            Action::Reject => "reject",
            Action::Discard => "discard",
            Action::Quarantine => "quarantine",
            Action::Other(name) => name,
        }
    }

    /// A metric label from a fixed set (`no_action`, ..., `other`), so custom action names
    /// cannot grow a metric's cardinality.
    #[must_use]
    pub fn metric_label(&self) -> &'static str {
        match self {
            Action::NoAction => "no_action",
            Action::Greylist => "greylist",
            Action::AddHeader => "add_header",
            Action::RewriteSubject => "rewrite_subject",
            Action::SoftReject => "soft_reject",
            Action::Reject => "reject",
            Action::Discard => "discard",
            Action::Quarantine => "quarantine",
            Action::Other(_) => "other",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One symbol Rspamd matched, for logs and per-symbol metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Symbol {
    /// Symbol name (the key in Rspamd's `symbols` object).
    pub name: String,
    /// Its contribution to the score (`score`; 0.0 when absent or not a number).
    pub score: f64,
}

/// One header Rspamd asks to add (`milter.add_headers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddHeader {
    /// Header field name, already checked to be a valid field name.
    pub name: String,
    /// Value with NULs removed and folding as bare LF; never empty.
    pub value: String,
    /// Rspamd's `order` (or `index`) as sent. `None` (no order given) means append. As in
    /// Rspamd's milter: `>= 0` inserts at that index, `-1` appends, `< -1` counts from the
    /// end.
    pub order: Option<i32>,
}

/// One header occurrence Rspamd asks to remove (`milter.remove_headers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveHeader {
    /// Header field name, already checked to be a valid field name.
    pub name: String,
    /// Which occurrence: `0` all of them, `n > 0` the n-th, `n < 0` counted from the end.
    pub index: i32,
}

/// The `milter` block of the reply (legacy name `rmilter`): the message changes Rspamd's
/// modules ask for, beyond the action itself. Empty when the reply has none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MilterBlock {
    /// Headers to add, in the order Rspamd listed them.
    pub add_headers: Vec<AddHeader>,
    /// Header occurrences to remove, in the order Rspamd listed them.
    pub remove_headers: Vec<RemoveHeader>,
    /// New envelope sender (`change_from`).
    pub change_from: Option<String>,
    /// Envelope recipients to add (`add_rcpt`).
    pub add_rcpt: Vec<String>,
    /// Envelope recipients to delete (`del_rcpt`).
    pub del_rcpt: Vec<String>,
    /// `reject`: `"discard"` or `"quarantine"` switch how a reject is carried out; other
    /// values restore plain rejection. Kept as sent.
    pub reject: Option<String>,
    /// `no_action`: add `X-Rspamd-Action: <action>` and accept instead of acting.
    pub no_action: bool,
    /// `spam_header`, only meant for `add header`: what the spam header says, as Rspamd's
    /// own milter (`milter.c`) reads it.
    pub spam_header: Option<SpamHeader>,
}

/// The milter block's `spam_header`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpamHeader {
    /// A string: the value of the configured spam header (`X-Spam` by default).
    Value(String),
    /// An object: every usable `name: value` pair, each set in place of that header.
    Headers(Vec<(String, String)>),
}

/// A parsed `/checkv2` reply: everything the milter needs to apply Rspamd's verdict and to
/// log and count it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanReply {
    /// `is_skipped`: Rspamd skipped (most) checks, e.g. after a pre-result or GTUBE.
    pub is_skipped: bool,
    /// `score`; 0.0 when absent or not a number.
    pub score: f64,
    /// `required_score` (the reject threshold); 0.0 when absent or not a number.
    pub required_score: f64,
    /// `action`: the recommended action.
    pub action: Action,
    /// `subject`: the full new Subject for `rewrite subject` (normalised like a header
    /// value).
    pub subject: Option<String>,
    /// `messages.smtp_message`: the SMTP reply text Rspamd wants (object form only).
    pub smtp_message: Option<String>,
    /// Every string in `messages` as (name, text), in order; the array form
    /// (`compat_messages`) gives `("", text)` pairs.
    pub messages: Vec<(String, String)>,
    /// `symbols`, in the order Rspamd listed them, capped by [`ReplyLimits::max_symbols`].
    pub symbols: Vec<Symbol>,
    /// `dkim-signature` values (without the `DKIM-Signature:` name), normalised like header
    /// values, in order.
    pub dkim_signatures: Vec<String>,
    /// The `milter` (or legacy `rmilter`) block; `milter` wins if both are present.
    pub milter: MilterBlock,
    /// `message-id` as Rspamd saw it (Rspamd sends `"undef"` when the message has none).
    pub message_id: Option<String>,
    /// `time_real`: Rspamd's own processing time, in seconds.
    pub time_real: Option<f64>,
    /// `passthrough_module`: the module whose pre-result decided the action.
    pub passthrough_module: Option<String>,
    /// `thresholds` (Rspamd 3.5 and later): action name to score, in order.
    pub thresholds: Vec<(String, f64)>,
    /// How many items were dropped because of a [`ReplyLimits`] cap (symbols, headers,
    /// signatures, over-long values). Items dropped for being invalid are not counted.
    pub truncated: u32,
}

/// Parses a `/checkv2` reply body (the JSON part only: with `body_block`, split at
/// `Message-Offset` first).
///
/// Never panics; the work done is bounded by `limits`. See the [module docs](self) for how
/// odd input is treated.
///
/// # Errors
///
/// [`ReplyError::TooLarge`] for a body over `limits.max_bytes`, [`ReplyError::Json`] for
/// anything but one JSON object, [`ReplyError::MissingAction`] for an object without a
/// string `action`. Everything else, however odd, parses.
pub fn parse(body: &[u8], limits: &ReplyLimits) -> Result<ScanReply, ReplyError> {
    if body.len() > limits.max_bytes {
        return Err(ReplyError::TooLarge {
            size: body.len(),
            max: limits.max_bytes,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = serde::Deserializer::deserialize_any(&mut de, Seed(TopPick { limits }))
        .map_err(|e| ReplyError::Json(e.to_string()))?;
    de.end().map_err(|e| ReplyError::Json(e.to_string()))?;
    let raw = raw.ok_or_else(|| ReplyError::Json("top-level value is not an object".into()))?;
    raw.finish()
}

// ---------------------------------------------------------------------------------------
// Header and text cleaning

/// A header field name: one or more printable ASCII characters except ':' (RFC 5322 ftext).
fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// What became of a header value: kept, dropped as empty, or dropped as over-long.
enum Cleaned {
    Kept(String),
    Empty,
    TooLong,
}

/// Removes NULs, turns CRLF into LF and applies the length cap. A run of CRs before an LF
/// goes as a whole (`"\r\r\n"` gives `"\n"`), so no CRLF is left; other CRs are kept.
fn clean_header_value(raw: &str, max_len: usize) -> Cleaned {
    let mut out = String::with_capacity(raw.len().min(max_len.saturating_add(1)));
    let mut pending_cr = 0usize;
    for c in raw.chars().filter(|&c| c != '\0') {
        if c == '\r' {
            pending_cr += 1;
            continue;
        }
        let kept_cr = if c == '\n' { 0 } else { pending_cr };
        pending_cr = 0;
        if out.len() + kept_cr + c.len_utf8() > max_len {
            return Cleaned::TooLong;
        }
        out.extend(std::iter::repeat_n('\r', kept_cr));
        out.push(c);
    }
    if out.len() + pending_cr > max_len {
        return Cleaned::TooLong;
    }
    out.extend(std::iter::repeat_n('\r', pending_cr));
    if out.is_empty() {
        Cleaned::Empty
    } else {
        Cleaned::Kept(out)
    }
}

/// Cleans a header value, counting an over-long one in `truncated`.
fn header_value(raw: &str, max_len: usize, truncated: &mut u32) -> Option<String> {
    match clean_header_value(raw, max_len) {
        Cleaned::Kept(v) => Some(v),
        Cleaned::Empty => None,
        Cleaned::TooLong => {
            *truncated = truncated.saturating_add(1);
            None
        }
    }
}

/// An envelope address for change_from / add_rcpt / del_rcpt: dropped (not repaired) when
/// empty or when it holds NUL, CR or LF, since an altered address could name someone else.
fn envelope_address(raw: String) -> Option<String> {
    if raw.is_empty() || raw.contains(['\0', '\r', '\n']) {
        tracing::debug!("Rspamd reply: dropping unusable envelope address {raw:?}");
        None
    } else {
        Some(raw)
    }
}

// ---------------------------------------------------------------------------------------
// The visitor framework: each field's reader takes what it wants from any JSON value and
// skips the rest without building it.

/// A JSON number as serde_json reports it.
#[derive(Clone, Copy)]
enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl Num {
    fn as_f64(self) -> Option<f64> {
        let f = match self {
            Num::U(u) => u as f64,
            Num::I(i) => i as f64,
            Num::F(f) => f,
        };
        f.is_finite().then_some(f)
    }

    fn as_i32(self) -> Option<i32> {
        match self {
            Num::U(u) => i32::try_from(u).ok(),
            Num::I(i) => i32::try_from(i).ok(),
            Num::F(f) => {
                let in_range = f.is_finite()
                    && f.fract() == 0.0
                    && f >= f64::from(i32::MIN)
                    && f <= f64::from(i32::MAX);
                // The checks above make the cast exact.
                in_range.then_some(f as i32)
            }
        }
    }
}

/// What one field wants from a JSON value. Every kind defaults to "not wanted" (the value
/// is skipped and the field treated as absent).
trait Pick<'de>: Sized {
    type Out;

    fn string(self, _v: &str) -> Option<Self::Out> {
        None
    }
    fn boolean(self, _v: bool) -> Option<Self::Out> {
        None
    }
    fn number(self, _v: Num) -> Option<Self::Out> {
        None
    }
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Self::Out>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Self::Out>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// An object key, borrowed from the reply when it has no escapes (nearly always), so the
/// keys that are only compared (most of them: every symbol's `score`, `description`,
/// `options`...) cost no allocation; `into_owned` where one is kept.
#[derive(Debug)]
struct Key<'de>(std::borrow::Cow<'de, str>);

impl std::ops::Deref for Key<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Key<'_> {
    fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Runs a [`Pick`] over one JSON value.
struct Seed<P>(P);

impl<'de, P: Pick<'de>> DeserializeSeed<'de> for Seed<P> {
    type Value = Option<P::Out>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, P: Pick<'de>> Visitor<'de> for Seed<P> {
    type Value = Option<P::Out>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(self.0.boolean(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.0.number(Num::I(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.0.number(Num::U(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self.0.number(Num::F(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.string(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.map(map)
    }
}

/// Reads `next_value` through `pick`, keeping the previous value when this one is unusable.
fn set<'de, A: MapAccess<'de>, P: Pick<'de>>(
    map: &mut A,
    slot: &mut Option<P::Out>,
    pick: P,
) -> Result<(), A::Error> {
    if let Some(v) = map.next_value_seed(Seed(pick))? {
        *slot = Some(v);
    }
    Ok(())
}

/// A string.
struct StrPick;
impl Pick<'_> for StrPick {
    type Out = String;
    fn string(self, v: &str) -> Option<String> {
        Some(v.to_owned())
    }
}

/// A boolean.
struct BoolPick;
impl Pick<'_> for BoolPick {
    type Out = bool;
    fn boolean(self, v: bool) -> Option<bool> {
        Some(v)
    }
}

/// A finite number.
struct F64Pick;
impl Pick<'_> for F64Pick {
    type Out = f64;
    fn number(self, v: Num) -> Option<f64> {
        v.as_f64()
    }
}

/// An integer that fits an i32 (a float with no fraction counts).
struct I32Pick;
impl Pick<'_> for I32Pick {
    type Out = i32;
    fn number(self, v: Num) -> Option<i32> {
        v.as_i32()
    }
}

/// A string or an array of strings (non-strings in the array skipped), each passed to
/// `keep`. Yields `()` when the value had one of those shapes.
struct StringsPick<F>(F);
impl<'de, F: FnMut(&str)> Pick<'de> for StringsPick<F> {
    type Out = ();
    fn string(mut self, v: &str) -> Option<()> {
        (self.0)(v);
        Some(())
    }
    fn seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Option<()>, A::Error> {
        while let Some(item) = seq.next_element_seed(Seed(StrPick))? {
            if let Some(s) = item {
                (self.0)(&s);
            }
        }
        Ok(Some(()))
    }
}

/// Collects a string or an array of strings into a Vec, each through `filter`.
fn string_list<'de, A: MapAccess<'de>>(
    map: &mut A,
    mut filter: impl FnMut(&str) -> Option<String>,
) -> Result<Option<Vec<String>>, A::Error> {
    let mut out = Vec::new();
    let shaped = map.next_value_seed(Seed(StringsPick(|s: &str| {
        if let Some(v) = filter(s) {
            out.push(v);
        }
    })))?;
    Ok(shaped.map(|()| out))
}

// ---------------------------------------------------------------------------------------
// Top level

/// The top-level keys, as far as they were usable; `finish` applies defaults.
#[derive(Default)]
struct RawReply {
    is_skipped: Option<bool>,
    score: Option<f64>,
    required_score: Option<f64>,
    action: Option<String>,
    subject: Option<(Option<String>, u32)>,
    messages: Option<Vec<(String, String)>>,
    smtp_message: Option<String>,
    symbols: Option<(Vec<Symbol>, u32)>,
    dkim_signatures: Option<(Vec<String>, u32)>,
    milter: Option<(MilterBlock, u32)>,
    rmilter: Option<(MilterBlock, u32)>,
    message_id: Option<String>,
    time_real: Option<f64>,
    passthrough_module: Option<String>,
    thresholds: Option<Vec<(String, f64)>>,
}

impl RawReply {
    fn finish(self) -> Result<ScanReply, ReplyError> {
        let action = Action::from_name(&self.action.ok_or(ReplyError::MissingAction)?);
        let mut truncated = 0u32;
        let subject = take(self.subject, &mut truncated).flatten();
        let symbols = take(self.symbols, &mut truncated).unwrap_or_default();
        let dkim_signatures = take(self.dkim_signatures, &mut truncated).unwrap_or_default();
        let milter = take(self.milter.or(self.rmilter), &mut truncated).unwrap_or_default();
        Ok(ScanReply {
            is_skipped: self.is_skipped.unwrap_or(false),
            score: self.score.unwrap_or(0.0),
            required_score: self.required_score.unwrap_or(0.0),
            action,
            subject,
            smtp_message: self.smtp_message,
            messages: self.messages.unwrap_or_default(),
            symbols,
            dkim_signatures,
            milter,
            message_id: self.message_id,
            time_real: self.time_real,
            passthrough_module: self.passthrough_module,
            thresholds: self.thresholds.unwrap_or_default(),
            truncated,
        })
    }
}

/// Unwraps a field read with its truncation count, adding the count to the total.
fn take<T>(part: Option<(T, u32)>, truncated: &mut u32) -> Option<T> {
    part.map(|(v, t)| {
        *truncated = truncated.saturating_add(t);
        v
    })
}

struct TopPick<'l> {
    limits: &'l ReplyLimits,
}

impl<'de> Pick<'de> for TopPick<'_> {
    type Out = RawReply;

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<RawReply>, A::Error> {
        let limits = self.limits;
        let mut r = RawReply::default();
        while let Some(key) = map.next_key::<Key>()? {
            match &*key {
                "is_skipped" => set(&mut map, &mut r.is_skipped, BoolPick)?,
                "score" => set(&mut map, &mut r.score, F64Pick)?,
                "required_score" => set(&mut map, &mut r.required_score, F64Pick)?,
                "action" => set(&mut map, &mut r.action, StrPick)?,
                "subject" => {
                    if let Some(s) = map.next_value_seed(Seed(StrPick))? {
                        let mut t = 0;
                        r.subject = Some((header_value(&s, limits.max_header_value, &mut t), t));
                    }
                }
                "messages" => {
                    if let Some((all, smtp)) = map.next_value_seed(Seed(MessagesPick))? {
                        r.messages = Some(all);
                        r.smtp_message = smtp;
                    }
                }
                "symbols" => set(&mut map, &mut r.symbols, SymbolsPick { limits })?,
                "dkim-signature" => {
                    let (mut kept, mut t) = (0usize, 0u32);
                    let sigs = string_list(&mut map, |s| {
                        let v = header_value(s, limits.max_header_value, &mut t)?;
                        if kept >= limits.max_add_headers {
                            t = t.saturating_add(1);
                            return None;
                        }
                        kept += 1;
                        Some(v)
                    })?;
                    if let Some(sigs) = sigs {
                        r.dkim_signatures = Some((sigs, t));
                    }
                }
                "milter" => set(&mut map, &mut r.milter, MilterPick { limits })?,
                "rmilter" => set(&mut map, &mut r.rmilter, MilterPick { limits })?,
                "message-id" => set(&mut map, &mut r.message_id, StrPick)?,
                "time_real" => set(&mut map, &mut r.time_real, F64Pick)?,
                "passthrough_module" => set(&mut map, &mut r.passthrough_module, StrPick)?,
                "thresholds" => set(&mut map, &mut r.thresholds, ThresholdsPick)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(r))
    }
}

/// `messages`: an object of strings (yielding `smtp_message` too) or an array of strings.
struct MessagesPick;
impl<'de> Pick<'de> for MessagesPick {
    type Out = (Vec<(String, String)>, Option<String>);

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Self::Out>, A::Error> {
        let (mut all, mut smtp) = (Vec::new(), None);
        while let Some(key) = map.next_key::<Key>()? {
            if let Some(text) = map.next_value_seed(Seed(StrPick))? {
                if &*key == "smtp_message" {
                    smtp = Some(text.clone());
                }
                all.push((key.into_owned(), text));
            }
        }
        Ok(Some((all, smtp)))
    }

    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Self::Out>, A::Error> {
        let mut all = Vec::new();
        while let Some(item) = seq.next_element_seed(Seed(StrPick))? {
            if let Some(text) = item {
                all.push((String::new(), text));
            }
        }
        Ok(Some((all, None)))
    }
}

/// `symbols`: name to `{score, ...}`, capped.
struct SymbolsPick<'l> {
    limits: &'l ReplyLimits,
}
impl<'de> Pick<'de> for SymbolsPick<'_> {
    type Out = (Vec<Symbol>, u32);

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Self::Out>, A::Error> {
        let (mut symbols, mut truncated) = (Vec::new(), 0u32);
        while let Some(name) = map.next_key::<Key>()? {
            if symbols.len() >= self.limits.max_symbols {
                map.next_value::<IgnoredAny>()?;
                truncated = truncated.saturating_add(1);
            } else if let Some(score) = map.next_value_seed(Seed(SymbolScorePick))? {
                symbols.push(Symbol {
                    name: name.into_owned(),
                    score,
                });
            }
        }
        Ok(Some((symbols, truncated)))
    }
}

/// One symbol's object: its `score` (0.0 when missing or not a number).
struct SymbolScorePick;
impl<'de> Pick<'de> for SymbolScorePick {
    type Out = f64;

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<f64>, A::Error> {
        let mut score = None;
        while let Some(key) = map.next_key::<Key>()? {
            if &*key == "score" {
                set(&mut map, &mut score, F64Pick)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some(score.unwrap_or(0.0)))
    }
}

/// `thresholds`: action name to number.
struct ThresholdsPick;
impl<'de> Pick<'de> for ThresholdsPick {
    type Out = Vec<(String, f64)>;

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Self::Out>, A::Error> {
        let mut out = Vec::new();
        while let Some(name) = map.next_key::<Key>()? {
            if let Some(v) = map.next_value_seed(Seed(F64Pick))? {
                out.push((name.into_owned(), v));
            }
        }
        Ok(Some(out))
    }
}

// ---------------------------------------------------------------------------------------
// The milter block

struct MilterPick<'l> {
    limits: &'l ReplyLimits,
}

impl<'de> Pick<'de> for MilterPick<'_> {
    type Out = (MilterBlock, u32);

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Self::Out>, A::Error> {
        let limits = self.limits;
        let mut block = MilterBlock::default();
        // Per-key truncation counts, so a repeated key does not count twice.
        let (mut t_add, mut t_remove, mut t_spam) = (0u32, 0u32, 0u32);
        while let Some(key) = map.next_key::<Key>()? {
            match &*key {
                "add_headers" => {
                    if let Some((v, t)) = map.next_value_seed(Seed(AddHeadersPick { limits }))? {
                        block.add_headers = v;
                        t_add = t;
                    }
                }
                "remove_headers" => {
                    let pick = RemoveHeadersPick { limits };
                    if let Some((v, t)) = map.next_value_seed(Seed(pick))? {
                        block.remove_headers = v;
                        t_remove = t;
                    }
                }
                "change_from" => {
                    if let Some(s) = map.next_value_seed(Seed(StrPick))? {
                        block.change_from = envelope_address(s);
                    }
                }
                "add_rcpt" => {
                    let list = string_list(&mut map, |s| envelope_address(s.to_owned()))?;
                    if let Some(list) = list {
                        block.add_rcpt = list;
                    }
                }
                "del_rcpt" => {
                    let list = string_list(&mut map, |s| envelope_address(s.to_owned()))?;
                    if let Some(list) = list {
                        block.del_rcpt = list;
                    }
                }
                "reject" => set(&mut map, &mut block.reject, StrPick)?,
                "no_action" => {
                    if let Some(b) = map.next_value_seed(Seed(BoolPick))? {
                        block.no_action = b;
                    }
                }
                "spam_header" => {
                    let mut t = 0;
                    let pick = SpamHeaderPick {
                        max_len: limits.max_header_value,
                        truncated: &mut t,
                    };
                    if let Some(pair) = map.next_value_seed(Seed(pick))? {
                        block.spam_header = pair;
                        t_spam = t;
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let truncated = t_add.saturating_add(t_remove).saturating_add(t_spam);
        Ok(Some((block, truncated)))
    }
}

/// `add_headers`: name to `{value, order|index}`, an array of those (bare strings allowed
/// as elements too), or a bare string. Capped in total, values cleaned.
struct AddHeadersPick<'l> {
    limits: &'l ReplyLimits,
}
impl<'de> Pick<'de> for AddHeadersPick<'_> {
    type Out = (Vec<AddHeader>, u32);

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Self::Out>, A::Error> {
        let limits = self.limits;
        let (mut out, mut truncated) = (Vec::new(), 0u32);
        while let Some(name) = map.next_key::<Key>()? {
            if !valid_header_name(&name) {
                tracing::debug!("Rspamd reply: skipping add_headers entry {name:?}");
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let Some(values) = map.next_value_seed(Seed(HeaderValuesPick))? else {
                continue;
            };
            for (raw, order) in values {
                let Some(value) = header_value(&raw, limits.max_header_value, &mut truncated)
                else {
                    continue;
                };
                if out.len() >= limits.max_add_headers {
                    truncated = truncated.saturating_add(1);
                    continue;
                }
                out.push(AddHeader {
                    name: name.to_string(),
                    value,
                    order,
                });
            }
        }
        Ok(Some((out, truncated)))
    }
}

/// One add_headers value: the (raw value, order) pairs it holds.
struct HeaderValuesPick;
impl<'de> Pick<'de> for HeaderValuesPick {
    type Out = Vec<(String, Option<i32>)>;

    fn string(self, v: &str) -> Option<Self::Out> {
        Some(vec![(v.to_owned(), None)])
    }
    fn map<A: MapAccess<'de>>(self, map: A) -> Result<Option<Self::Out>, A::Error> {
        Ok(HeaderObjectPick.map(map)?.map(|one| vec![one]))
    }
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Self::Out>, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element_seed(Seed(HeaderElementPick))? {
            out.extend(item);
        }
        Ok(Some(out))
    }
}

/// An element of an add_headers array: an object or a bare string.
struct HeaderElementPick;
impl<'de> Pick<'de> for HeaderElementPick {
    type Out = (String, Option<i32>);

    fn string(self, v: &str) -> Option<Self::Out> {
        Some((v.to_owned(), None))
    }
    fn map<A: MapAccess<'de>>(self, map: A) -> Result<Option<Self::Out>, A::Error> {
        HeaderObjectPick.map(map)
    }
}

/// `{"value": s, "order": n}` (or `"index"`; `order` wins, as in Rspamd's milter). Without
/// a string `value` the object is skipped.
struct HeaderObjectPick;
impl<'de> Pick<'de> for HeaderObjectPick {
    type Out = (String, Option<i32>);

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Self::Out>, A::Error> {
        let (mut value, mut order, mut index) = (None, None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match &*key {
                "value" => set(&mut map, &mut value, StrPick)?,
                "order" => set(&mut map, &mut order, I32Pick)?,
                "index" => set(&mut map, &mut index, I32Pick)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(value.map(|v| (v, order.or(index))))
    }
}

/// `remove_headers`: name to an integer or an array of integers. Capped in total.
struct RemoveHeadersPick<'l> {
    limits: &'l ReplyLimits,
}
impl<'de> Pick<'de> for RemoveHeadersPick<'_> {
    type Out = (Vec<RemoveHeader>, u32);

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Self::Out>, A::Error> {
        let (mut out, mut truncated) = (Vec::new(), 0u32);
        while let Some(name) = map.next_key::<Key>()? {
            if !valid_header_name(&name) {
                tracing::debug!("Rspamd reply: skipping remove_headers entry {name:?}");
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let Some(indexes) = map.next_value_seed(Seed(IndexesPick))? else {
                continue;
            };
            for index in indexes {
                if out.len() >= self.limits.max_remove_headers {
                    truncated = truncated.saturating_add(1);
                    continue;
                }
                out.push(RemoveHeader {
                    name: name.to_string(),
                    index,
                });
            }
        }
        Ok(Some((out, truncated)))
    }
}

/// An integer or an array of integers (other elements skipped).
struct IndexesPick;
impl<'de> Pick<'de> for IndexesPick {
    type Out = Vec<i32>;

    fn number(self, v: Num) -> Option<Vec<i32>> {
        v.as_i32().map(|i| vec![i])
    }
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Vec<i32>>, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element_seed(Seed(I32Pick))? {
            out.extend(item);
        }
        Ok(Some(out))
    }
}

/// `spam_header`: a string (the configured header's value) or an object (every usable
/// pair, at most [`MAX_SPAM_HEADERS`]). Yields `Some(None)` when the shape was right but
/// nothing was usable.
struct SpamHeaderPick<'t> {
    max_len: usize,
    truncated: &'t mut u32,
}
impl<'de> Pick<'de> for SpamHeaderPick<'_> {
    type Out = Option<SpamHeader>;

    fn string(self, v: &str) -> Option<Self::Out> {
        let SpamHeaderPick { max_len, truncated } = self;
        Some(header_value(v, max_len, truncated).map(SpamHeader::Value))
    }
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Self::Out>, A::Error> {
        let SpamHeaderPick { max_len, truncated } = self;
        let mut pairs = Vec::new();
        while let Some(name) = map.next_key::<Key>()? {
            if pairs.len() >= MAX_SPAM_HEADERS || !valid_header_name(&name) {
                if pairs.len() >= MAX_SPAM_HEADERS {
                    *truncated += 1;
                }
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if let Some(raw) = map.next_value_seed(Seed(StrPick))?
                && let Some(v) = header_value(&raw, max_len, truncated)
            {
                pairs.push((name.into_owned(), v));
            }
        }
        Ok(Some(
            (!pairs.is_empty()).then_some(SpamHeader::Headers(pairs)),
        ))
    }
}
