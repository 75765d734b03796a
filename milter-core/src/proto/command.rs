//! Commands the MTA sends (`SMFIC_*`), decoded from and encoded to frames.

use std::net::{IpAddr, Ipv6Addr};

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Code, ProtocolError};
use crate::proto::flags::{Actions, ProtocolFlags};
use crate::proto::reader::Reader;
use crate::proto::rules::{self, put_cstr};
use crate::wire::{Frame, encode_frame};

/// Command codes (`SMFIC_*`).
pub mod code {
    /// Option negotiation.
    pub const OPTNEG: u8 = b'O';
    /// Macro definitions.
    pub const MACRO: u8 = b'D';
    /// SMTP connection.
    pub const CONNECT: u8 = b'C';
    /// HELO/EHLO.
    pub const HELO: u8 = b'H';
    /// MAIL FROM.
    pub const MAIL: u8 = b'M';
    /// RCPT TO.
    pub const RCPT: u8 = b'R';
    /// DATA.
    pub const DATA: u8 = b'T';
    /// One header field.
    pub const HEADER: u8 = b'L';
    /// End of headers.
    pub const EOH: u8 = b'N';
    /// A body chunk.
    pub const BODY: u8 = b'B';
    /// End of message.
    pub const EOB: u8 = b'E';
    /// Abort the current message.
    pub const ABORT: u8 = b'A';
    /// Close the connection.
    pub const QUIT: u8 = b'Q';
    /// End this SMTP connection but keep the milter connection for another.
    pub const QUIT_NC: u8 = b'K';
    /// An SMTP command the MTA did not recognise.
    pub const UNKNOWN: u8 = b'U';
}

/// The MTA's option-negotiation offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptNeg {
    /// Protocol version (Postfix and Sendmail speak 6).
    pub version: u32,
    /// Actions the MTA can perform.
    pub actions: Actions,
    /// Protocol steps and options the MTA understands.
    pub protocol: ProtocolFlags,
}

/// Where the SMTP client connected from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketInfo {
    /// Family `U`: not known (e.g. mail submitted locally).
    Unknown,
    /// Family `L`: a unix-domain socket.
    Unix {
        /// The socket path as the MTA sent it.
        path: Bytes,
    },
    /// Family `4` or `6`: an IP address and port.
    Inet {
        /// The client's address.
        addr: IpAddr,
        /// The client's port.
        port: u16,
    },
    /// An address kept as the MTA sent it because it could not be typed: family `4` or `6`
    /// whose text does not parse as an address (an IPv6 address with a `%scope` zone such
    /// as `fe80::1%eth0`, garbage), or a family this library does not know.
    ///
    /// Postfix and Sendmail let such a client through, so the milter does too: the
    /// connection goes on and the handler decides (see [`SocketInfo::ip`], which
    /// understands the scoped form). `family` is never `U` or `L` (those always parse).
    Unparsed {
        /// The family byte as sent (`b'4'`, `b'6'`, or an unknown one).
        family: u8,
        /// The port as sent (0 when an unknown family carried fewer than two bytes).
        port: u16,
        /// The address text without its NUL terminator, e.g. `fe80::1%eth0`. For an
        /// unknown family: whatever followed the port, one trailing NUL removed.
        raw: Bytes,
    },
}

impl SocketInfo {
    /// The client's IP address, when there is one: the address of [`SocketInfo::Inet`],
    /// or of an [`SocketInfo::Unparsed`] family-`6` text that is an IPv6 address with a
    /// `%scope` zone (the zone is dropped). `None` for anything else.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            SocketInfo::Inet { addr, .. } => Some(*addr),
            SocketInfo::Unparsed {
                family: b'6', raw, ..
            } => {
                let s = std::str::from_utf8(raw).ok()?;
                let s = strip_ipv6_prefix(s)?;
                let (addr, zone) = s.split_once('%')?;
                if zone.is_empty() {
                    return None;
                }
                addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
            }
            _ => None,
        }
    }
}

/// The CONNECT command's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    /// The client's host name; Postfix sends `[addr]` when it has none.
    pub hostname: Bytes,
    /// The client's address.
    pub socket: SocketInfo,
}

/// A MAIL or RCPT command's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The address, with its angle brackets as the client sent it.
    pub address: Bytes,
    /// ESMTP parameters, one per string (`SIZE=123`, `BODY=8BITMIME`, ...).
    pub args: Vec<Bytes>,
}

impl Envelope {
    /// The address without surrounding angle brackets, lossily decoded.
    pub fn address_str(&self) -> String {
        let a = self.address.as_ref();
        let a = a.strip_prefix(b"<").unwrap_or(a);
        let a = a.strip_suffix(b">").unwrap_or(a);
        String::from_utf8_lossy(a).into_owned()
    }
}

/// A command from the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `O`: the MTA's offer.
    OptNeg(OptNeg),
    /// `D`: macros for the command whose code is `for_command`. Never answered.
    Macros {
        /// The code of the command these macros belong to.
        for_command: u8,
        /// Name/value pairs, names as sent (`i`, `{auth_type}`, ...).
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// `C`: the SMTP client connected.
    Connect(ConnectInfo),
    /// `H`: HELO or EHLO with its argument.
    Helo(Bytes),
    /// `M`: MAIL FROM.
    Mail(Envelope),
    /// `R`: RCPT TO.
    Rcpt(Envelope),
    /// `T`: DATA (protocol 4 and later).
    Data,
    /// `L`: one header field; folded lines are separated by `\n`.
    Header {
        /// Field name.
        name: Bytes,
        /// Field value; one leading space is removed unless `HEADER_LEADING_SPACE` was negotiated.
        value: Bytes,
    },
    /// `N`: end of headers.
    EndOfHeaders,
    /// `B`: a body chunk, CRLF line endings, at most 65535 bytes from Postfix.
    Body(Bytes),
    /// `E`: end of message; the payload, usually empty, is a last body chunk.
    EndOfMessage(Bytes),
    /// `A`: forget the current message; the connection stays.
    Abort,
    /// `Q`: the MTA is done with this connection.
    Quit,
    /// `K`: end of this SMTP connection, but a new one follows on the same milter connection.
    QuitNoClose,
    /// `U`: an SMTP command the MTA did not recognise.
    Unknown(Bytes),
}

impl Command {
    /// The command's wire code.
    pub fn code(&self) -> u8 {
        match self {
            Command::OptNeg(_) => code::OPTNEG,
            Command::Macros { .. } => code::MACRO,
            Command::Connect(_) => code::CONNECT,
            Command::Helo(_) => code::HELO,
            Command::Mail(_) => code::MAIL,
            Command::Rcpt(_) => code::RCPT,
            Command::Data => code::DATA,
            Command::Header { .. } => code::HEADER,
            Command::EndOfHeaders => code::EOH,
            Command::Body(_) => code::BODY,
            Command::EndOfMessage(_) => code::EOB,
            Command::Abort => code::ABORT,
            Command::Quit => code::QUIT,
            Command::QuitNoClose => code::QUIT_NC,
            Command::Unknown(_) => code::UNKNOWN,
        }
    }

    /// A human name for the command, for logs and errors.
    pub fn name(&self) -> &'static str {
        command_name(self.code())
    }

    /// Parses a frame from the MTA.
    pub fn decode(frame: Frame) -> Result<Command, ProtocolError> {
        let mut r = Reader::new(frame.code, frame.payload);
        let cmd = match frame.code {
            code::OPTNEG => {
                let version = r.u32("negotiation shorter than 12 bytes")?;
                let actions =
                    Actions::from_bits_retain(r.u32("negotiation shorter than 12 bytes")?);
                let protocol =
                    ProtocolFlags::from_bits_retain(r.u32("negotiation shorter than 12 bytes")?);
                // Extra bytes after the three words are tolerated, as libmilter does.
                let _ = r.rest();
                Command::OptNeg(OptNeg {
                    version,
                    actions,
                    protocol,
                })
            }
            code::MACRO => {
                let for_command = r.u8("macro frame without a command code")?;
                let mut items = r.argv("macro list not NUL-terminated")?.into_iter();
                let mut pairs = Vec::new();
                while let Some(name) = items.next() {
                    // An odd count pairs the last name with an empty value.
                    let value = items.next().unwrap_or_default();
                    pairs.push((name, value));
                }
                Command::Macros { for_command, pairs }
            }
            code::CONNECT => Command::Connect(decode_connect(&mut r)?),
            code::HELO => {
                let helo = r.cstr("HELO argument not NUL-terminated")?;
                Command::Helo(helo)
            }
            code::MAIL | code::RCPT => {
                let mut argv = r.argv("envelope argument not NUL-terminated")?.into_iter();
                let address = argv
                    .next()
                    .ok_or_else(|| r.malformed("envelope without an address"))?;
                let env = Envelope {
                    address,
                    args: argv.collect(),
                };
                if frame.code == code::MAIL {
                    Command::Mail(env)
                } else {
                    Command::Rcpt(env)
                }
            }
            code::DATA => Command::Data,
            code::HEADER => {
                let name = r.cstr("header name not NUL-terminated")?;
                let value = r.cstr("header value not NUL-terminated")?;
                r.finish("data after the header value")?;
                Command::Header { name, value }
            }
            code::EOH => Command::EndOfHeaders,
            code::BODY => Command::Body(r.rest()),
            code::EOB => Command::EndOfMessage(r.rest()),
            code::ABORT => Command::Abort,
            code::QUIT => Command::Quit,
            code::QUIT_NC => Command::QuitNoClose,
            code::UNKNOWN => {
                // libmilter passes the data as a string; tolerate a missing NUL.
                let mut line = r.rest();
                if line.last() == Some(&0) {
                    line.truncate(line.len() - 1);
                }
                Command::Unknown(line)
            }
            other => return Err(ProtocolError::UnknownCommand(Code(other))),
        };
        Ok(cmd)
    }

    /// Appends the command as one frame to `out`.
    ///
    /// Fields are written as given: a NUL inside a field would split it on the wire, so
    /// callers building commands from untrusted data should reject NULs first.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut p = BytesMut::new();
        match self {
            Command::OptNeg(o) => {
                p.put_u32(o.version);
                p.put_u32(o.actions.bits());
                p.put_u32(o.protocol.bits());
            }
            Command::Macros { for_command, pairs } => {
                p.put_u8(*for_command);
                for (n, v) in pairs {
                    put_cstr(&mut p, n);
                    put_cstr(&mut p, v);
                }
            }
            Command::Connect(info) => {
                put_cstr(&mut p, &info.hostname);
                match &info.socket {
                    SocketInfo::Unknown => p.put_u8(b'U'),
                    SocketInfo::Unix { path } => {
                        p.put_u8(b'L');
                        p.put_u16(0);
                        put_cstr(&mut p, path);
                    }
                    SocketInfo::Inet { addr, port } => {
                        p.put_u8(if addr.is_ipv4() { b'4' } else { b'6' });
                        p.put_u16(*port);
                        put_cstr(&mut p, addr.to_string().as_bytes());
                    }
                    SocketInfo::Unparsed { family, port, raw } => {
                        p.put_u8(*family);
                        p.put_u16(*port);
                        put_cstr(&mut p, raw);
                    }
                }
            }
            Command::Helo(h) => put_cstr(&mut p, h),
            Command::Mail(e) | Command::Rcpt(e) => {
                put_cstr(&mut p, &e.address);
                for a in &e.args {
                    put_cstr(&mut p, a);
                }
            }
            Command::Header { name, value } => {
                put_cstr(&mut p, name);
                put_cstr(&mut p, value);
            }
            Command::Body(b) | Command::EndOfMessage(b) => p.put_slice(b),
            Command::Unknown(line) => put_cstr(&mut p, line),
            Command::Data
            | Command::EndOfHeaders
            | Command::Abort
            | Command::Quit
            | Command::QuitNoClose => {}
        }
        encode_frame(self.code(), &p, out);
    }
}

/// A human name for a command code.
pub fn command_name(c: u8) -> &'static str {
    rules::command(c).map_or("unknown command", |r| r.name)
}

fn decode_connect(r: &mut Reader) -> Result<ConnectInfo, ProtocolError> {
    let hostname = r.cstr("CONNECT host name not NUL-terminated")?;
    let family = r.u8("CONNECT without an address family")?;
    let socket = match family {
        b'U' => SocketInfo::Unknown,
        b'L' => {
            let _port = r.u16("CONNECT without a port")?;
            SocketInfo::Unix {
                path: r.cstr("CONNECT socket path not NUL-terminated")?,
            }
        }
        b'4' | b'6' => {
            let port = r.u16("CONNECT without a port")?;
            let text = r.cstr("CONNECT address not NUL-terminated")?;
            match parse_ip(&text) {
                Some(addr) => SocketInfo::Inet { addr, port },
                None => {
                    // Postfix and Sendmail let such clients through; so does the milter.
                    tracing::debug!(
                        family = %(family as char),
                        address = %String::from_utf8_lossy(&text),
                        "CONNECT address does not parse; kept unparsed"
                    );
                    SocketInfo::Unparsed {
                        family,
                        port,
                        raw: text,
                    }
                }
            }
        }
        other => {
            // A family nobody defined: keep whatever follows, shaped like the others
            // (port, then text), as far as it goes.
            let mut rest = r.rest();
            let port = if rest.len() >= 2 {
                let p = rest.split_to(2);
                u16::from_be_bytes([p[0], p[1]])
            } else {
                0
            };
            if rest.last() == Some(&0) {
                rest.truncate(rest.len() - 1);
            }
            tracing::debug!(
                family = other,
                "unknown CONNECT address family; kept unparsed"
            );
            SocketInfo::Unparsed {
                family: other,
                port,
                raw: rest,
            }
        }
    };
    Ok(ConnectInfo { hostname, socket })
}

/// Removes Sendmail's `IPv6:` prefix (any case); `None` if nothing is left.
fn strip_ipv6_prefix(s: &str) -> Option<&str> {
    match s.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("ipv6:") => s.get(5..),
        _ => Some(s),
    }
}

/// Parses an address as Postfix (bare) or Sendmail (`IPv6:` prefix) writes it.
fn parse_ip(text: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(text).ok()?;
    let s = strip_ipv6_prefix(s)?;
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<Ipv6Addr>().ok().map(IpAddr::V6))
}
