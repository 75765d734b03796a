//! A tiny authoritative DNS stub on 127.0.0.1, so the daemons under test
//! resolve through loopback only (no packet leaves the machine) and every
//! lookup is answered at once and the same way on every run.
//!
//! It answers every well-formed query immediately: records from its table
//! (filled by the test with [`DnsStubBuilder`] or the `add_*` methods), NODATA
//! for a known name without records of the asked type, NXDOMAIN for every
//! other name. It listens on one random free port for both UDP and TCP
//! (TCP for truncated answers), serves on background threads and stops when
//! dropped. Every query is logged ([`DnsStub::queries`]) so a test can show
//! that a daemon really asked it.
//!
//! The DNS wire handling is written by hand on purpose: a stub that parses one
//! question and writes a few record types is ~300 lines and is the test
//! harness's own job; a resolver crate (hickory-proto) would add a dozen
//! crates to build on a 2-core CI machine for far more than is needed.
//! Parsing is defensive: a malformed packet is counted and ignored (UDP) or
//! ends the connection (TCP); nothing in here panics on input.
//!
//! ```no_run
//! use stack_tests::dns::DnsStub;
//! use std::net::Ipv4Addr;
//!
//! let dns = DnsStub::builder()
//!     .txt("mail._domainkey.example.test", "v=DKIM1; k=rsa; p=MIIB...")
//!     .a("mx.example.test", Ipv4Addr::LOCALHOST)
//!     .start()?;
//! println!("point the daemon at {}", dns.nameserver()); // "127.0.0.1:PORT"
//! dns.add_txt("example.test", "v=spf1 -all")?;
//! assert_eq!(dns.query_count(), 0);
//! # Ok::<(), anyhow::Error>(())
//! ```

use crate::ports::free_port;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// TTL of every answer (nothing under test caches for long anyway).
const TTL: u32 = 60;
/// At most this many queries are kept in the log; the counter goes on.
const LOG_CAP: usize = 10_000;
/// Largest UDP answer we send when the query has an EDNS OPT record.
const MAX_EDNS_PAYLOAD: usize = 4096;

const TYPE_A: u16 = 1;
const TYPE_PTR: u16 = 12;
const TYPE_MX: u16 = 15;
const TYPE_TXT: u16 = 16;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;

const RCODE_FORMERR: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_NOTIMP: u16 = 4;
const RCODE_REFUSED: u16 = 5;

/// One resource record the stub serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// Text; values longer than 255 bytes are sent as several
    /// character-strings (as DKIM keys are published).
    Txt(String),
    /// Mail exchanger.
    Mx {
        /// Preference (lower wins).
        preference: u16,
        /// Exchange host name.
        exchange: String,
    },
    /// Reverse pointer (use [`DnsStubBuilder::ptr`] to get the name right).
    Ptr(String),
}

impl Record {
    fn rtype(&self) -> u16 {
        match self {
            Record::A(_) => TYPE_A,
            Record::Aaaa(_) => TYPE_AAAA,
            Record::Txt(_) => TYPE_TXT,
            Record::Mx { .. } => TYPE_MX,
            Record::Ptr(_) => TYPE_PTR,
        }
    }

    /// RDATA bytes; `None` if a contained name cannot be encoded.
    fn rdata(&self) -> Option<Vec<u8>> {
        Some(match self {
            Record::A(ip) => ip.octets().to_vec(),
            Record::Aaaa(ip) => ip.octets().to_vec(),
            Record::Txt(value) => {
                let bytes = value.as_bytes();
                let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 255 + 1);
                if bytes.is_empty() {
                    out.push(0);
                }
                for chunk in bytes.chunks(255) {
                    out.push(chunk.len() as u8);
                    out.extend_from_slice(chunk);
                }
                out
            }
            Record::Mx {
                preference,
                exchange,
            } => {
                let mut out = preference.to_be_bytes().to_vec();
                out.extend(encode_name(exchange)?);
                out
            }
            Record::Ptr(name) => encode_name(name)?,
        })
    }

    fn validate(&self) -> Result<()> {
        match self.rdata() {
            Some(rd) if rd.len() <= u16::MAX as usize => Ok(()),
            Some(_) => bail!("DNS record too large: {self:?}"),
            None => bail!("DNS record has an invalid host name: {self:?}"),
        }
    }
}

/// A query the stub received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    /// The name asked for, lower-case, without the trailing dot (bytes that
    /// are not letters, digits, `-`, `_` or `*` are written `\DDD`).
    pub name: String,
    /// QTYPE (1 = A, 16 = TXT, ...; see [`DnsQuery::type_name`]).
    pub qtype: u16,
    /// Whether it came over TCP.
    pub tcp: bool,
}

impl DnsQuery {
    /// `A`, `TXT`, `MX`, ... or `TYPE<n>`.
    pub fn type_name(&self) -> String {
        match self.qtype {
            TYPE_A => "A".into(),
            2 => "NS".into(),
            5 => "CNAME".into(),
            6 => "SOA".into(),
            TYPE_PTR => "PTR".into(),
            TYPE_MX => "MX".into(),
            TYPE_TXT => "TXT".into(),
            TYPE_AAAA => "AAAA".into(),
            33 => "SRV".into(),
            TYPE_ANY => "ANY".into(),
            n => format!("TYPE{n}"),
        }
    }
}

/// Builder for [`DnsStub`].
#[derive(Debug, Clone, Default)]
pub struct DnsStubBuilder {
    records: Vec<(String, Record)>,
}

impl DnsStubBuilder {
    /// Adds any record.
    pub fn record(mut self, name: &str, record: Record) -> Self {
        self.records.push((name.to_string(), record));
        self
    }

    /// Adds a TXT record (split into 255-byte character-strings as needed).
    pub fn txt(self, name: &str, value: &str) -> Self {
        self.record(name, Record::Txt(value.to_string()))
    }

    /// Adds an A record.
    pub fn a(self, name: &str, ip: Ipv4Addr) -> Self {
        self.record(name, Record::A(ip))
    }

    /// Adds an AAAA record.
    pub fn aaaa(self, name: &str, ip: Ipv6Addr) -> Self {
        self.record(name, Record::Aaaa(ip))
    }

    /// Adds an MX record.
    pub fn mx(self, name: &str, preference: u16, exchange: &str) -> Self {
        self.record(
            name,
            Record::Mx {
                preference,
                exchange: exchange.to_string(),
            },
        )
    }

    /// Adds a PTR record for `ip` (the `in-addr.arpa` / `ip6.arpa` name is
    /// derived).
    pub fn ptr(self, ip: IpAddr, target: &str) -> Self {
        self.record(&reverse_name(ip), Record::Ptr(target.to_string()))
    }

    /// Binds 127.0.0.1:PORT (UDP and TCP, same free port) and starts serving.
    pub fn start(self) -> Result<DnsStub> {
        let shared = Arc::new(Shared::default());
        for (name, rec) in self.records {
            shared.insert(&name, rec)?;
        }
        let (udp, tcp) = bind_pair()?;
        let port = udp.local_addr()?.port();
        udp.set_read_timeout(Some(Duration::from_millis(250)))?;
        let udp_thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("dns-stub-udp-{port}"))
                .spawn(move || serve_udp(&udp, &shared))
                .context("spawning the DNS stub's UDP thread")?
        };
        let tcp_thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("dns-stub-tcp-{port}"))
                .spawn(move || serve_tcp(&tcp, &shared))
                .context("spawning the DNS stub's TCP thread")?
        };
        Ok(DnsStub {
            port,
            shared,
            threads: vec![udp_thread, tcp_thread],
        })
    }
}

/// A running DNS stub on 127.0.0.1 (UDP + TCP), stopped on drop.
#[derive(Debug)]
pub struct DnsStub {
    port: u16,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsStub {
    /// A builder with an empty table (every name is NXDOMAIN).
    pub fn builder() -> DnsStubBuilder {
        DnsStubBuilder::default()
    }

    /// The port (UDP and TCP) on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT` as a socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `"127.0.0.1:PORT"`, the form Rspamd's `dns.nameserver` takes.
    pub fn nameserver(&self) -> String {
        self.addr().to_string()
    }

    /// Adds any record while running (seen by the next query).
    pub fn add(&self, name: &str, record: Record) -> Result<()> {
        self.shared.insert(name, record)
    }

    /// Adds a TXT record while running.
    pub fn add_txt(&self, name: &str, value: &str) -> Result<()> {
        self.add(name, Record::Txt(value.to_string()))
    }

    /// Adds an A record while running.
    pub fn add_a(&self, name: &str, ip: Ipv4Addr) -> Result<()> {
        self.add(name, Record::A(ip))
    }

    /// Adds an AAAA record while running.
    pub fn add_aaaa(&self, name: &str, ip: Ipv6Addr) -> Result<()> {
        self.add(name, Record::Aaaa(ip))
    }

    /// Adds an MX record while running.
    pub fn add_mx(&self, name: &str, preference: u16, exchange: &str) -> Result<()> {
        self.add(
            name,
            Record::Mx {
                preference,
                exchange: exchange.to_string(),
            },
        )
    }

    /// Adds a PTR record for `ip` while running.
    pub fn add_ptr(&self, ip: IpAddr, target: &str) -> Result<()> {
        self.add(&reverse_name(ip), Record::Ptr(target.to_string()))
    }

    /// Removes every record of `name` (it becomes NXDOMAIN again).
    pub fn remove(&self, name: &str) {
        lock(&self.shared.zone).remove(&normalize(name));
    }

    /// Number of well-formed queries answered so far.
    pub fn query_count(&self) -> u64 {
        self.shared.queries.load(Ordering::Relaxed)
    }

    /// Number of packets / TCP messages ignored as malformed.
    pub fn malformed_count(&self) -> u64 {
        self.shared.malformed.load(Ordering::Relaxed)
    }

    /// The queries received so far, oldest first (the first 10 000).
    pub fn queries(&self) -> Vec<DnsQuery> {
        lock(&self.shared.log).clone()
    }

    /// The queries for `name` (any case, trailing dot optional).
    pub fn queries_for(&self, name: &str) -> Vec<DnsQuery> {
        let name = normalize(name);
        lock(&self.shared.log)
            .iter()
            .filter(|q| q.name == name)
            .cloned()
            .collect()
    }
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake both threads now rather than at their next poll timeout.
        if let Ok(s) = UdpSocket::bind("127.0.0.1:0") {
            let _ = s.send_to(&[0], self.addr());
        }
        let _ = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// Normalised name -> records.
    zone: Mutex<HashMap<String, Vec<Record>>>,
    log: Mutex<Vec<DnsQuery>>,
    queries: AtomicU64,
    malformed: AtomicU64,
}

impl Shared {
    fn insert(&self, name: &str, record: Record) -> Result<()> {
        if encode_name(name).is_none() {
            bail!("invalid DNS name {name:?}");
        }
        record.validate()?;
        lock(&self.zone)
            .entry(normalize(name))
            .or_default()
            .push(record);
        Ok(())
    }

    /// Answers one DNS message; `None` means "ignore it".
    fn answer(&self, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
        match parse_query(packet) {
            Parsed::Query(q) => {
                self.queries.fetch_add(1, Ordering::Relaxed);
                {
                    let mut log = lock(&self.log);
                    if log.len() < LOG_CAP {
                        log.push(DnsQuery {
                            name: q.name.clone(),
                            qtype: q.qtype,
                            tcp,
                        });
                    }
                }
                let zone = lock(&self.zone);
                Some(build_answer(packet, &q, &zone, tcp))
            }
            Parsed::Error { id, flags, rcode } => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                Some(header_only(id, flags, rcode))
            }
            Parsed::Ignore => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Binds UDP and TCP on the same free port of 127.0.0.1. The port comes
/// from [`free_port`], so no daemon of this test process is handed it too.
fn bind_pair() -> Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let port = free_port()?;
        match (
            UdpSocket::bind(("127.0.0.1", port)),
            TcpListener::bind(("127.0.0.1", port)),
        ) {
            (Ok(u), Ok(t)) => return Ok((u, t)),
            (Err(e), _) | (_, Err(e)) => last = Some(e),
        }
    }
    bail!("could not bind a DNS stub port on 127.0.0.1 (UDP + TCP): {last:?}")
}

fn serve_udp(sock: &UdpSocket, shared: &Shared) {
    let mut buf = vec![0u8; 65_535];
    while !shared.stop.load(Ordering::SeqCst) {
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Some(reply) = buf.get(..n).and_then(|p| shared.answer(p, false)) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_tcp(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !shared.stop.load(Ordering::SeqCst) {
        pfd.revents = 0;
        // SAFETY: `pfd` is a valid pollfd for the listener, which outlives the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 250) };
        if ready <= 0 || shared.stop.load(Ordering::SeqCst) {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        let shared = shared.clone();
        // Connections are short (the daemon asks one question); a detached
        // thread per connection ends on EOF, error or a 5 s idle timeout.
        let _ = std::thread::Builder::new()
            .name("dns-stub-tcp-conn".into())
            .spawn(move || serve_tcp_conn(stream, &shared));
    }
}

fn serve_tcp_conn(mut stream: TcpStream, shared: &Shared) {
    if stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(5))))
        .is_err()
    {
        return;
    }
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).is_err() || shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        if stream.read_exact(&mut msg).is_err() {
            return;
        }
        let Some(reply) = shared.answer(&msg, true) else {
            return;
        };
        let Ok(rlen) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = rlen.to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

/// A parsed question.
#[derive(Debug)]
struct Query {
    id: u16,
    flags: u16,
    name: String,
    /// End of the question section in the packet (QNAME + QTYPE + QCLASS).
    question_end: usize,
    qtype: u16,
    qclass: u16,
    /// UDP payload size from an EDNS OPT record, if any.
    edns_payload: Option<u16>,
}

#[derive(Debug)]
enum Parsed {
    Query(Query),
    /// Answer with a bare header carrying this rcode.
    Error {
        id: u16,
        flags: u16,
        rcode: u16,
    },
    /// Not a query at all (too short, or a response): drop it silently.
    Ignore,
}

fn be16(p: &[u8], at: usize) -> Option<u16> {
    let b = p.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn parse_query(p: &[u8]) -> Parsed {
    let (Some(id), Some(flags)) = (be16(p, 0), be16(p, 2)) else {
        return Parsed::Ignore;
    };
    if p.len() < 12 || flags & 0x8000 != 0 {
        return Parsed::Ignore;
    }
    let err = |rcode| Parsed::Error { id, flags, rcode };
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 {
        return err(RCODE_NOTIMP);
    }
    let counts: Option<Vec<u16>> = (4..12).step_by(2).map(|at| be16(p, at)).collect();
    let Some(&[qd, an, ns, ar]) = counts.as_deref() else {
        return Parsed::Ignore;
    };
    if qd != 1 {
        return err(RCODE_FORMERR);
    }
    let Some((name, mut at)) = read_question_name(p, 12) else {
        return err(RCODE_FORMERR);
    };
    let (Some(qtype), Some(qclass)) = (be16(p, at), be16(p, at + 2)) else {
        return err(RCODE_FORMERR);
    };
    at += 4;
    let question_end = at;
    // EDNS: look for an OPT record among the other sections; a broken tail
    // only means "no EDNS".
    let mut edns_payload = None;
    for _ in 0..(an as u32 + ns as u32 + ar as u32) {
        let Some(next) = skip_name(p, at) else { break };
        let (Some(rtype), Some(class), Some(rdlen)) =
            (be16(p, next), be16(p, next + 2), be16(p, next + 8))
        else {
            break;
        };
        if rtype == TYPE_OPT {
            edns_payload = Some(class);
        }
        at = next + 10 + rdlen as usize;
        if at > p.len() {
            break;
        }
    }
    Parsed::Query(Query {
        id,
        flags,
        name,
        question_end,
        qtype,
        qclass,
        edns_payload,
    })
}

/// Reads an uncompressed QNAME at `at`: (normalised name, offset after it).
fn read_question_name(p: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut wire_len = 0usize;
    loop {
        let len = *p.get(at)? as usize;
        at += 1;
        wire_len += 1 + len;
        if len == 0 {
            break;
        }
        // Compression pointers (0xC0) and the reserved label types have no
        // place in the single question of a query.
        if len > 63 || wire_len > 255 {
            return None;
        }
        let label = p.get(at..at + len)?;
        at += len;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            match b {
                b'A'..=b'Z' => name.push(b.to_ascii_lowercase() as char),
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'*' => name.push(b as char),
                _ => name.push_str(&format!("\\{b:03}")),
            }
        }
    }
    Some((name, at))
}

/// Offset after a (possibly compressed) name at `at`.
fn skip_name(p: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *p.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => {
                p.get(at + 1)?;
                return Some(at + 2);
            }
            l if l > 63 => return None,
            l => at += 1 + l as usize,
        }
    }
}

fn header_only(id: u16, qflags: u16, rcode: u16) -> Vec<u8> {
    let flags = 0x8000 | (qflags & 0x7900) | 0x0080 | rcode;
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

fn build_answer(
    packet: &[u8],
    q: &Query,
    zone: &HashMap<String, Vec<Record>>,
    tcp: bool,
) -> Vec<u8> {
    let question = packet.get(12..q.question_end).unwrap_or_default();
    let mut rcode = 0;
    let mut answers: Vec<Vec<u8>> = Vec::new();
    if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
        rcode = RCODE_REFUSED;
    } else if let Some(records) = zone.get(&q.name) {
        for r in records {
            if q.qtype != r.rtype() && q.qtype != TYPE_ANY {
                continue;
            }
            let Some(rdata) = r.rdata() else { continue };
            let Ok(rdlen) = u16::try_from(rdata.len()) else {
                continue;
            };
            let mut rr = Vec::with_capacity(12 + rdata.len());
            rr.extend_from_slice(&[0xc0, 0x0c]); // pointer to the question's name
            rr.extend_from_slice(&r.rtype().to_be_bytes());
            rr.extend_from_slice(&CLASS_IN.to_be_bytes());
            rr.extend_from_slice(&TTL.to_be_bytes());
            rr.extend_from_slice(&rdlen.to_be_bytes());
            rr.extend_from_slice(&rdata);
            answers.push(rr);
        }
    } else {
        // An empty non-terminal (a name with records below it) is NODATA.
        let suffix = format!(".{}", q.name);
        if q.name.is_empty() || !zone.keys().any(|k| k.ends_with(&suffix)) {
            rcode = RCODE_NXDOMAIN;
        }
    }
    let limit = if tcp {
        u16::MAX as usize
    } else {
        match q.edns_payload {
            Some(n) => (n as usize).clamp(512, MAX_EDNS_PAYLOAD),
            None => 512,
        }
    };
    let opt: &[u8] = match q.edns_payload {
        // Root name, type OPT, our payload size, no extended rcode/flags, no data.
        Some(_) => &[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0],
        None => &[],
    };
    let size = 12 + question.len() + answers.iter().map(Vec::len).sum::<usize>() + opt.len();
    let truncated = size > limit;
    if truncated {
        answers.clear();
    }
    let mut flags = 0x8000 | (q.flags & 0x7900) | 0x0400 | 0x0080 | rcode;
    if truncated {
        flags |= 0x0200;
    }
    let mut out = Vec::with_capacity(size.min(limit));
    out.extend_from_slice(&q.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&u16::from(!opt.is_empty()).to_be_bytes());
    out.extend_from_slice(question);
    for rr in &answers {
        out.extend_from_slice(rr);
    }
    out.extend_from_slice(opt);
    out
}

/// Lower-case, no trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Wire form of a dotted name; `None` if a label is empty or too long.
fn encode_name(name: &str) -> Option<Vec<u8>> {
    let name = name.trim_end_matches('.');
    let mut out = Vec::with_capacity(name.len() + 2);
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    (out.len() <= 255).then_some(out)
}

/// `4.3.2.1.in-addr.arpa` / nibble `ip6.arpa` name of an address.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query packet: id 0x1234, RD, one question, optional EDNS OPT.
    fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut p = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(edns.is_some()),
        ];
        p.extend(encode_name(name).unwrap());
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&CLASS_IN.to_be_bytes());
        if let Some(size) = edns {
            p.extend_from_slice(&[0, 0, 41]);
            p.extend_from_slice(&size.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        p
    }

    fn ask(stub: &DnsStub, packet: &[u8]) -> Vec<u8> {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(packet, stub.addr()).unwrap();
        let mut buf = [0u8; 4096];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    fn rcode(reply: &[u8]) -> u16 {
        be16(reply, 2).unwrap() & 0xf
    }

    /// The character-strings of the first answer's TXT RDATA.
    fn txt_strings(reply: &[u8], question_end: usize) -> Vec<Vec<u8>> {
        // name pointer (2) type (2) class (2) ttl (4) rdlen (2)
        let rdlen = be16(reply, question_end + 10).unwrap() as usize;
        let mut rd = &reply[question_end + 12..question_end + 12 + rdlen];
        let mut out = Vec::new();
        while let Some((&l, rest)) = rd.split_first() {
            out.push(rest[..l as usize].to_vec());
            rd = &rest[l as usize..];
        }
        out
    }

    #[test]
    fn answers_table_nodata_and_nxdomain() {
        let long = "p=".to_string() + &"A".repeat(400);
        let stub = DnsStub::builder()
            .txt("Sel._domainkey.Example.TEST.", &long)
            .a("mx.example.test", Ipv4Addr::new(127, 0, 0, 2))
            .start()
            .unwrap();

        let q = query("sel._domainkey.example.test", TYPE_TXT, Some(1232));
        let r = ask(&stub, &q);
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(rcode(&r), 0);
        assert_eq!(be16(&r, 6), Some(1), "one answer");
        let qend = 12 + encode_name("sel._domainkey.example.test").unwrap().len() + 4;
        let strings = txt_strings(&r, qend);
        assert_eq!(strings.len(), 2);
        assert_eq!(strings[0].len(), 255);
        assert_eq!(strings.concat(), long.as_bytes());

        let r = ask(&stub, &query("MX.example.test", TYPE_A, None));
        assert_eq!(rcode(&r), 0);
        assert_eq!(&r[r.len() - 4..], &[127, 0, 0, 2]);

        // Known name, other type: NODATA; empty non-terminal: NODATA.
        let r = ask(&stub, &query("mx.example.test", TYPE_TXT, None));
        assert_eq!((rcode(&r), be16(&r, 6)), (0, Some(0)));
        let r = ask(&stub, &query("_domainkey.example.test", TYPE_TXT, None));
        assert_eq!((rcode(&r), be16(&r, 6)), (0, Some(0)));

        let r = ask(&stub, &query("unknown.example.test", TYPE_A, None));
        assert_eq!(rcode(&r), RCODE_NXDOMAIN);

        stub.add_txt("late.example.test", "v=spf1 -all").unwrap();
        let r = ask(&stub, &query("late.example.test", TYPE_TXT, None));
        assert_eq!(be16(&r, 6), Some(1));

        assert_eq!(stub.query_count(), 6);
        assert_eq!(stub.queries_for("MX.EXAMPLE.TEST.").len(), 2);
        assert_eq!(stub.queries()[0].type_name(), "TXT");
    }

    #[test]
    fn truncates_large_udp_answers_and_serves_them_over_tcp() {
        let big = "x".repeat(1500);
        let stub = DnsStub::builder().txt("big.test", &big).start().unwrap();
        let q = query("big.test", TYPE_TXT, None);
        let r = ask(&stub, &q);
        assert_ne!(be16(&r, 2).unwrap() & 0x0200, 0, "TC set");
        assert_eq!(be16(&r, 6), Some(0));

        let mut s = TcpStream::connect(stub.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut r).unwrap();
        assert_eq!(be16(&r, 6), Some(1));
        let qend = 12 + encode_name("big.test").unwrap().len() + 4;
        assert_eq!(txt_strings(&r, qend).concat(), big.as_bytes());
        assert!(stub.queries()[1].tcp);
    }

    #[test]
    fn malformed_packets_are_ignored_and_the_stub_keeps_answering() {
        let stub = DnsStub::builder().start().unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let good = query("x.test", TYPE_A, None);
        let mut junk: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xff],
            vec![0; 11],
            // A response (QR set).
            [&[0x12, 0x34, 0x81, 0x80][..], &good[4..]].concat(),
            // A label running past the end, a compression loop, a bad label type.
            [&good[..12], &[63, b'a', b'b']].concat(),
            [&good[..12], &[0xc0, 0x0c, 0, 1, 0, 1]].concat(),
            [&good[..12], &[0x80, 0, 0, 1, 0, 1]].concat(),
            // qdcount 0 and 2, a NOTIFY opcode, a truncated OPT.
            [&good[..5], &[0], &good[6..]].concat(),
            [&good[..5], &[2], &good[6..]].concat(),
            [&[0x12, 0x34, 0x20, 0x00], &good[4..]].concat(),
            [&good[..11], &[5], &good[12..], &[0, 0, 41]].concat(),
        ];
        // Every truncation of a valid EDNS query.
        let edns = query("y.test", TYPE_TXT, Some(4096));
        junk.extend((0..edns.len()).map(|n| edns[..n].to_vec()));
        for j in &junk {
            s.send_to(j, stub.addr()).unwrap();
        }
        // A TCP client sending garbage and a short frame.
        if let Ok(mut t) = TcpStream::connect(stub.addr()) {
            let _ = t.write_all(&[0, 40, 1, 2, 3]);
        }
        let r = ask(&stub, &good);
        assert_eq!(rcode(&r), RCODE_NXDOMAIN);
        assert!(stub.malformed_count() > 5);
    }

    #[test]
    fn invalid_names_are_refused_at_insert() {
        let long_label = "a".repeat(64);
        assert!(
            DnsStub::builder()
                .a(&long_label, Ipv4Addr::LOCALHOST)
                .start()
                .is_err()
        );
        let stub = DnsStub::builder().start().unwrap();
        assert!(stub.add_txt("a..b", "x").is_err());
        assert!(stub.add_mx("ok.test", 10, &long_label).is_err());
        assert_eq!(
            reverse_name("198.51.100.7".parse().unwrap()),
            "7.100.51.198.in-addr.arpa"
        );
        assert!(reverse_name("::1".parse().unwrap()).starts_with("1.0.0.0."));
    }
}
