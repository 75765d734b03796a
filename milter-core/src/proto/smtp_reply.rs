//! SMTP reply texts for `SMFIR_REPLYCODE`, validated the way Postfix (2026) checks them.

use std::fmt;

/// Most lines libmilter sends in one reply.
pub const MAX_LINES: usize = 32;
/// Longest line text libmilter accepts.
pub const MAX_LINE_LEN: usize = 980;

/// Why a reply code or text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SmtpReplyError {
    /// The code is not 4xx or 5xx (a milter can only refuse).
    #[error("reply code {0} is not a 4xx or 5xx code")]
    BadCode(u16),
    /// The enhanced status code is not `class.subject.detail`.
    #[error("enhanced status code {0:?} is not of the form 4.x.y or 5.x.y")]
    BadEnhancedCode(String),
    /// The enhanced code's class differs from the reply code's.
    #[error("enhanced status code {enhanced} does not match reply code {code}")]
    ClassMismatch {
        /// The reply code.
        code: u16,
        /// The enhanced code.
        enhanced: String,
    },
    /// More than [`MAX_LINES`] lines.
    #[error("reply has more than {MAX_LINES} lines")]
    TooManyLines,
    /// A line longer than [`MAX_LINE_LEN`].
    #[error("reply line longer than {MAX_LINE_LEN} characters")]
    LineTooLong,
    /// A control character (CR, LF inside a line, NUL, ...) in the text.
    #[error("reply text contains a control character")]
    ControlCharacter,
    /// The wire form does not parse.
    #[error("malformed reply text: {0}")]
    Syntax(&'static str),
}

/// A validated SMTP reply: a 4xx/5xx code, an optional enhanced status code and text lines.
///
/// It is itself the verdict: the MTA rejects (5xx) or tempfails (4xx) with this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    code: u16,
    enhanced: Option<String>,
    lines: Vec<String>,
}

impl SmtpReply {
    /// A reply whose `text` may span several lines, separated by `\n` (or `\r\n`).
    pub fn new(code: u16, enhanced: Option<&str>, text: &str) -> Result<SmtpReply, SmtpReplyError> {
        let lines = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
            .collect();
        SmtpReply::with_lines(code, enhanced, lines)
    }

    /// A reply from explicit lines.
    pub fn with_lines(
        code: u16,
        enhanced: Option<&str>,
        lines: Vec<String>,
    ) -> Result<SmtpReply, SmtpReplyError> {
        if !(400..=599).contains(&code) {
            return Err(SmtpReplyError::BadCode(code));
        }
        if let Some(e) = enhanced {
            check_enhanced(code, e)?;
        }
        if lines.len() > MAX_LINES {
            return Err(SmtpReplyError::TooManyLines);
        }
        for l in &lines {
            if l.chars().count() > MAX_LINE_LEN {
                return Err(SmtpReplyError::LineTooLong);
            }
            if l.chars().any(|c| c.is_control() && c != '\t') {
                return Err(SmtpReplyError::ControlCharacter);
            }
        }
        let lines = if lines.is_empty() {
            vec![String::new()]
        } else {
            lines
        };
        Ok(SmtpReply {
            code,
            enhanced: enhanced.map(str::to_owned),
            lines,
        })
    }

    /// The three-digit code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if any.
    pub fn enhanced(&self) -> Option<&str> {
        self.enhanced.as_deref()
    }

    /// The text lines, without codes.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Whether this is a permanent (5xx) refusal.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The `SMFIR_REPLYCODE` text: lines joined by CRLF, `ddd-` on all but the last, and `%`
    /// doubled (Sendmail treats the text as a format string; Postfix undoubles it).
    pub fn to_wire(&self) -> String {
        let mut out = String::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push_str("\r\n");
            }
            out.push_str(&self.code.to_string());
            out.push(if i == last { ' ' } else { '-' });
            if let Some(e) = &self.enhanced {
                out.push_str(e);
                if !line.is_empty() {
                    out.push(' ');
                }
            }
            out.push_str(&line.replace('%', "%%"));
        }
        out
    }

    /// Parses and validates the text of a `SMFIR_REPLYCODE` frame (without its NUL).
    pub fn parse(wire: &[u8]) -> Result<SmtpReply, SmtpReplyError> {
        let text = std::str::from_utf8(wire).map_err(|_| SmtpReplyError::Syntax("not UTF-8"))?;
        let raw: Vec<&str> = text.split("\r\n").collect();
        let mut code = None;
        let mut enhanced: Option<Option<String>> = None;
        let mut lines = Vec::with_capacity(raw.len().min(MAX_LINES));
        if raw.len() > MAX_LINES {
            return Err(SmtpReplyError::TooManyLines);
        }
        let last = raw.len() - 1;
        for (i, line) in raw.iter().enumerate() {
            let digits = line
                .get(..3)
                .ok_or(SmtpReplyError::Syntax("line shorter than a code"))?;
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SmtpReplyError::Syntax("line does not start with a code"));
            }
            let c: u16 = digits
                .parse()
                .map_err(|_| SmtpReplyError::Syntax("bad code"))?;
            if *code.get_or_insert(c) != c {
                return Err(SmtpReplyError::Syntax("lines carry different codes"));
            }
            let rest = line.get(3..).unwrap_or("");
            let rest = match (rest.chars().next(), i == last) {
                (Some('-'), false) | (Some(' '), true) => rest.get(1..).unwrap_or(""),
                (None, true) => "",
                _ => return Err(SmtpReplyError::Syntax("bad continuation marker")),
            };
            let (enh, body) = split_enhanced(rest);
            match &enhanced {
                None => enhanced = Some(enh.map(str::to_owned)),
                Some(prev) if prev.as_deref() == enh => {}
                Some(_) => {
                    return Err(SmtpReplyError::Syntax(
                        "lines carry different enhanced codes",
                    ));
                }
            }
            lines.push(body.replace("%%", "%"));
        }
        let code = code.ok_or(SmtpReplyError::Syntax("empty reply"))?;
        SmtpReply::with_lines(code, enhanced.flatten().as_deref(), lines)
    }
}

impl fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_wire().replace("%%", "%"))
    }
}

fn split_enhanced(rest: &str) -> (Option<&str>, &str) {
    let (first, body) = match rest.split_once(' ') {
        Some((a, b)) => (a, b),
        None => (rest, ""),
    };
    let parts: Vec<&str> = first.split('.').collect();
    let looks = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if looks {
        (Some(first), body)
    } else {
        (None, rest)
    }
}

fn check_enhanced(code: u16, e: &str) -> Result<(), SmtpReplyError> {
    let parts: Vec<&str> = e.split('.').collect();
    let ok = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        && matches!(parts.first(), Some(&"4") | Some(&"5"));
    if !ok {
        return Err(SmtpReplyError::BadEnhancedCode(e.to_owned()));
    }
    let class = if code >= 500 { "5" } else { "4" };
    if parts.first() != Some(&class) {
        return Err(SmtpReplyError::ClassMismatch {
            code,
            enhanced: e.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line() {
        let r = SmtpReply::new(550, Some("5.7.1"), "go away").unwrap();
        assert_eq!(r.to_wire(), "550 5.7.1 go away");
        assert_eq!(SmtpReply::parse(r.to_wire().as_bytes()).unwrap(), r);
    }

    #[test]
    fn multi_line_and_percent() {
        let r = SmtpReply::new(451, Some("4.7.1"), "try later\n100% busy").unwrap();
        assert_eq!(r.to_wire(), "451-4.7.1 try later\r\n451 4.7.1 100%% busy");
        assert_eq!(SmtpReply::parse(r.to_wire().as_bytes()).unwrap(), r);
    }

    #[test]
    fn refusals() {
        assert_eq!(
            SmtpReply::new(250, None, "ok"),
            Err(SmtpReplyError::BadCode(250))
        );
        assert!(matches!(
            SmtpReply::new(550, Some("4.7.1"), "x"),
            Err(SmtpReplyError::ClassMismatch { .. })
        ));
        assert!(matches!(
            SmtpReply::new(550, Some("5.7"), "x"),
            Err(SmtpReplyError::BadEnhancedCode(_))
        ));
        assert_eq!(
            SmtpReply::new(550, None, "a\0b"),
            Err(SmtpReplyError::ControlCharacter)
        );
        assert_eq!(
            SmtpReply::new(550, None, &"x".repeat(981)),
            Err(SmtpReplyError::LineTooLong)
        );
        assert_eq!(
            SmtpReply::new(550, None, &"x\n".repeat(32)),
            Err(SmtpReplyError::TooManyLines)
        );
        assert!(SmtpReply::parse(b"550-a\r\n551 b").is_err());
        assert!(SmtpReply::parse(b"550 a\r\n550 b").is_err());
        assert!(SmtpReply::parse(b"5x0 a").is_err());
        assert!(SmtpReply::parse(b"550 a\n550 b").is_err());
    }

    #[test]
    fn without_enhanced_code() {
        let r = SmtpReply::parse(b"554 no thanks").unwrap();
        assert_eq!(r.enhanced(), None);
        assert_eq!(r.lines(), ["no thanks"]);
    }
}
