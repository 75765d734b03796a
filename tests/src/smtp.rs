//! A tiny plain-text SMTP client for sessions swaks cannot script (several
//! messages per connection, RSET, exact ESMTP parameters).

use crate::swaks::{SmtpReply, parse_reply_line};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An open SMTP connection.
#[derive(Debug)]
pub struct SmtpClient {
    rd: BufReader<TcpStream>,
    wr: TcpStream,
    /// Every line sent (`C: `) and received (`S: `), for failure messages.
    pub transcript: String,
}

impl SmtpClient {
    /// Connects to 127.0.0.1:`port` and reads the greeting.
    pub fn connect(port: u16) -> Result<(SmtpClient, SmtpReply)> {
        let s = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut c = SmtpClient {
            rd: BufReader::new(s.try_clone()?),
            wr: s,
            transcript: String::new(),
        };
        let greeting = c.read_reply()?;
        Ok((c, greeting))
    }

    /// Reads one (possibly multi-line) reply; returns its last line.
    pub fn read_reply(&mut self) -> Result<SmtpReply> {
        loop {
            let mut line = String::new();
            if self.rd.read_line(&mut line)? == 0 {
                bail!("connection closed; transcript:\n{}", self.transcript);
            }
            self.transcript.push_str("S: ");
            self.transcript.push_str(&line);
            if line.as_bytes().get(3) == Some(&b'-') {
                continue;
            }
            return parse_reply_line(line.trim_end())
                .with_context(|| format!("malformed reply {line:?}"));
        }
    }

    /// Sends one command line and reads the reply.
    pub fn cmd(&mut self, line: &str) -> Result<SmtpReply> {
        self.transcript.push_str(&format!("C: {line}\n"));
        self.wr.write_all(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// Sends `cmd` and fails unless the reply code is `want`.
    pub fn expect(&mut self, line: &str, want: u16) -> Result<SmtpReply> {
        let r = self.cmd(line)?;
        if r.code != want {
            bail!(
                "{line:?} got {} {}, expected {want}; transcript:\n{}",
                r.code,
                r.text,
                self.transcript
            );
        }
        Ok(r)
    }

    /// Sends DATA, the dot-stuffed message (lines normalised to CRLF) and the
    /// final dot; returns the end-of-data reply.
    pub fn data(&mut self, message: &[u8]) -> Result<SmtpReply> {
        self.expect("DATA", 354)?;
        let mut out = Vec::with_capacity(message.len() + 1024);
        for line in message.split_inclusive(|&b| b == b'\n') {
            let body = line
                .strip_suffix(b"\n")
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .unwrap_or(line);
            if body.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.transcript
            .push_str(&format!("C: <{} bytes of message>\n", message.len()));
        self.wr.write_all(&out)?;
        self.read_reply()
    }
}
