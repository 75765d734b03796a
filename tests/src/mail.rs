//! Reading delivered messages and sending one over SMTP, as the end-to-end tests of every
//! milter do.

use anyhow::{Context, Result};

use crate::smtp::SmtpClient;
use crate::swaks::SmtpReply;

/// `(name, value)` of every header of a message (CRLF or LF), in order; a folded value's
/// continuation lines are appended as they are (with their leading whitespace).
pub fn headers(msg: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(msg).replace("\r\n", "\n");
    let head = text.split("\n\n").next().unwrap_or("");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push_str(line);
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.to_string(), v.trim().to_string()));
        }
    }
    out
}

/// Values of the headers called `name` (case-insensitive), in order.
pub fn header_values(msg: &[u8], name: &str) -> Vec<String> {
    headers(msg)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// One message over plain SMTP to 127.0.0.1:`port` (EHLO client.remote.test); the
/// end-of-data reply, or the first refusal.
pub fn smtp_send(port: u16, from: &str, to: &str, msg: &[u8]) -> Result<SmtpReply> {
    let (mut c, _) = SmtpClient::connect(port).context("connect")?;
    c.expect("EHLO client.remote.test", 250)?;
    c.expect(&format!("MAIL FROM:<{from}>"), 250)?;
    c.expect(&format!("RCPT TO:<{to}>"), 250)?;
    let r = c.data(msg)?;
    let _ = c.cmd("QUIT");
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_and_unfold() {
        let m = b"Subject: a\r\n\tb\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody: no\r\n";
        assert_eq!(
            headers(m),
            [
                ("Subject".to_string(), "a\tb".to_string()),
                ("X-A".to_string(), "1".to_string()),
                ("x-a".to_string(), "2".to_string())
            ]
        );
        assert_eq!(header_values(m, "x-A"), ["1", "2"]);
        assert!(header_values(m, "body").is_empty());
    }
}
