//! What one message brings: the connection's and the envelope's facts, the header names
//! in order (for the removals and insertions at end of message), and the message itself,
//! rebuilt for Rspamd up to a size cap.
//!
//! Memory is bounded per message by `max-message-size` (the buffer stops growing there and
//! the message is marked oversize) and by [`MAX_TRACKED_HEADERS`] header names.

use std::net::IpAddr;

use bytes::{Bytes, BytesMut};

/// Header names remembered per message; past this, the message is refused as hostile
/// (Postfix's own limits keep real mail far below it).
pub const MAX_TRACKED_HEADERS: usize = 20_000;

/// Facts of the SMTP session, from CONNECT, HELO and the connect macros.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    /// The client's IP address (none for local submissions or unix sockets).
    pub client_addr: Option<IpAddr>,
    /// The client's host name as the MTA verified it; `None` when unknown.
    pub client_name: Option<String>,
    /// The HELO/EHLO argument.
    pub helo: Option<String>,
    /// `{daemon_name}`: the master.cf service (`-o milter_macro_daemon_name=...`).
    pub daemon_name: Option<String>,
    /// `j`: the MTA's host name.
    pub mta_host: Option<String>,
    /// `{tls_version}` and `{cipher}` when the session is encrypted.
    pub tls_version: Option<String>,
    /// `{cipher}`.
    pub tls_cipher: Option<String>,
}

impl Connection {
    /// A client host name worth telling Rspamd: not Postfix's `unknown` or `[addr]`.
    pub fn set_client_name(&mut self, raw: &str) {
        let n = raw.trim();
        self.client_name =
            (!n.is_empty() && !n.eq_ignore_ascii_case("unknown") && !n.starts_with('['))
                .then(|| n.to_string());
    }
}

/// The envelope of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// MAIL FROM as sent, with its angle brackets (`<>` for bounces).
    pub from: String,
    /// RCPT TO addresses as sent, in order.
    pub rcpts: Vec<String>,
    /// `{auth_authen}`: the SASL login, when the client authenticated.
    pub auth_user: Option<String>,
    /// `i`: the queue id (known from MAIL, DATA or end of message, depending on the MTA).
    pub queue_id: Option<String>,
}

impl Envelope {
    /// The sender without brackets.
    pub fn sender(&self) -> &str {
        strip_brackets(&self.from)
    }

    /// The recipients without brackets.
    pub fn recipients(&self) -> impl Iterator<Item = &str> {
        self.rcpts.iter().map(|r| strip_brackets(r))
    }
}

/// `<a@b>` -> `a@b`.
pub fn strip_brackets(a: &str) -> &str {
    let a = a.trim();
    let a = a.strip_prefix('<').unwrap_or(a);
    a.strip_suffix('>').unwrap_or(a)
}

/// The message as it arrives: header names in order and the bytes for Rspamd.
#[derive(Debug)]
pub struct Collector {
    max: usize,
    buf: BytesMut,
    size: usize,
    headers: Vec<Box<str>>,
    too_many_headers: bool,
    subject: Option<String>,
    in_body: bool,
}

impl Collector {
    /// An empty message, kept up to `max` bytes.
    pub fn new(max: usize) -> Collector {
        Collector {
            max,
            buf: BytesMut::new(),
            size: 0,
            headers: Vec::new(),
            too_many_headers: false,
            subject: None,
            in_body: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len());
        if self.size <= self.max {
            self.buf.extend_from_slice(bytes);
        } else if !self.buf.is_empty() {
            // Over the cap: free what was kept; only the size is counted from now on.
            self.buf = BytesMut::new();
        }
    }

    /// One header; `value` as milter-core hands it (folds separated by `\n`, the single
    /// space after the colon removed by the MTA).
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        let name_s = String::from_utf8_lossy(name);
        if self.headers.len() < MAX_TRACKED_HEADERS {
            self.headers.push(name_s.as_ref().into());
        } else {
            self.too_many_headers = true;
        }
        if self.subject.is_none() && name_s.eq_ignore_ascii_case("subject") {
            self.subject = Some(String::from_utf8_lossy(value).into_owned());
        }
        self.push(name);
        self.push(b": ");
        // Rspamd gets the message as it would be stored: folds as CRLF.
        let mut start = 0;
        for (i, b) in value.iter().enumerate() {
            if *b == b'\n' && (i == 0 || value[i - 1] != b'\r') {
                self.push(&value[start..i]);
                self.push(b"\r\n");
                start = i + 1;
            }
        }
        self.push(&value[start..]);
        self.push(b"\r\n");
    }

    /// End of headers.
    pub fn end_of_headers(&mut self) {
        if !self.in_body {
            self.push(b"\r\n");
            self.in_body = true;
        }
    }

    /// A body chunk (CRLF line ends, as the MTA sends them).
    pub fn body(&mut self, chunk: &[u8]) {
        self.end_of_headers();
        self.push(chunk);
    }

    /// The whole size seen, kept or not.
    pub fn size(&self) -> usize {
        self.size
    }

    /// True once the message outgrew the cap.
    pub fn oversize(&self) -> bool {
        self.size > self.max
    }

    /// True when more headers came than are tracked.
    pub fn too_many_headers(&self) -> bool {
        self.too_many_headers
    }

    /// Header names in order.
    pub fn header_names(&self) -> &[Box<str>] {
        &self.headers
    }

    /// The first Subject's value.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The rebuilt message (empty when oversize).
    pub fn take_message(&mut self) -> Bytes {
        self.end_of_headers();
        std::mem::take(&mut self.buf).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_the_message_with_crlf_folds() {
        let mut c = Collector::new(1024);
        c.header(b"Subject", b"hello\n\tworld");
        c.header(b"From", b"a@b");
        c.body(b"line\r\n");
        assert_eq!(c.subject(), Some("hello\n\tworld"));
        assert_eq!(c.header_names().len(), 2);
        let m = c.take_message();
        assert_eq!(
            &m[..],
            b"Subject: hello\r\n\tworld\r\nFrom: a@b\r\n\r\nline\r\n"
        );
    }

    #[test]
    fn stops_keeping_bytes_over_the_cap_but_counts_them() {
        let mut c = Collector::new(10);
        c.header(b"Subject", b"a long enough subject");
        c.body(&[b'x'; 100]);
        assert!(c.oversize());
        assert!(c.size() > 100);
        assert!(c.take_message().is_empty());
        assert_eq!(c.header_names().len(), 1);
    }

    #[test]
    fn client_names_that_say_nothing_are_dropped() {
        let mut k = Connection::default();
        for n in ["unknown", "[192.0.2.1]", " "] {
            k.set_client_name(n);
            assert_eq!(k.client_name, None, "{n}");
        }
        k.set_client_name("mail.example.net");
        assert_eq!(k.client_name.as_deref(), Some("mail.example.net"));
        assert_eq!(strip_brackets("<a@b>"), "a@b");
        assert_eq!(strip_brackets("<>"), "");
    }
}
