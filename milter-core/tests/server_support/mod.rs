//! Shared pieces of the server tests: a log capture, a raw MTA-side client speaking frames
//! from `milter-core`'s own codec, and a running server on loopback.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::proto::OptNeg;
use milter_core::server::{BoundAddr, Builder, Server, ShutdownHandle};
use milter_core::wire::FrameDecoder;
use milter_core::{
    Actions, Command, ConnectInfo, Envelope, ProtocolFlags, Reply, SocketInfo, Verdict,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a global subscriber writing into a buffer the tests read (server tasks run on
/// runtime threads, so a thread-local default would miss them).
pub fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
    });
}

/// Every captured log line.
pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// Waits for a log line containing every needle.
pub async fn wait_for_log(needles: &[&str]) -> String {
    for _ in 0..200 {
        if let Some(l) = logs()
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return l.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no log line with {needles:?}; logs:\n{}", logs());
}

/// A milter that adds `X-Test: <message number>` at end of message.
#[derive(Default)]
pub struct Tagger;

impl Milter for Tagger {
    fn negotiate(&mut self, _offer: &Offer) -> Request {
        Request::new().with_actions(Actions::ADD_HEADERS)
    }

    async fn eom(&mut self, ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        let n = ctx.message_number().to_string();
        if actions.add_header("X-Test", n).is_err() {
            return Verdict::Tempfail;
        }
        Verdict::Continue
    }
}

/// Starts a server for `factory` on 127.0.0.1 with a random port.
pub async fn start<F, M>(
    builder: Builder,
    factory: F,
) -> (SocketAddr, ShutdownHandle, tokio::task::JoinHandle<()>)
where
    F: Fn() -> M + Send + Sync + 'static,
    M: Milter,
{
    init_logs();
    let server: Server = builder
        .listen("inet:127.0.0.1:0")
        .expect("address")
        .handle_signals(false)
        .bind()
        .await
        .expect("bind");
    let addr = match server.local_addrs().first() {
        Some(BoundAddr::Tcp(a)) => *a,
        other => panic!("unexpected address {other:?}"),
    };
    let handle = server.shutdown_handle();
    // Every line the server task logs carries `server{addr=...}`, so a test can tell its
    // own server's lines (e.g. "server stopped") from those of tests running beside it.
    let span = tracing::info_span!("server", addr = %addr);
    let task = tokio::spawn(tracing::Instrument::instrument(
        async move {
            server.serve(factory).await.expect("serve");
        },
        span,
    ));
    (addr, handle, task)
}

/// What Postfix 3.x offers.
pub fn postfix_offer() -> Command {
    Command::OptNeg(OptNeg {
        version: 6,
        actions: Actions::from_bits_truncate(0x1FF),
        protocol: ProtocolFlags::POSTFIX_V6,
    })
}

/// A raw MTA-side connection: writes frames, reads and decodes replies.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(1 << 20),
        }
    }

    /// `127.0.0.1:PORT` of our side, as the server logs it as `peer`.
    pub fn local(&self) -> String {
        self.stream.local_addr().expect("local addr").to_string()
    }

    pub async fn send(&mut self, cmd: &Command) {
        let mut out = BytesMut::new();
        cmd.encode(&mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next reply, or None at EOF.
    pub async fn reply(&mut self) -> Option<Reply> {
        loop {
            if let Some(f) = self
                .decoder
                .decode(&mut self.buf)
                .expect("valid frame from server")
            {
                return Some(Reply::decode(f).expect("valid reply"));
            }
            let n =
                tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("server answered within 10 s")
                    .expect("read");
            if n == 0 {
                assert!(self.buf.is_empty(), "EOF inside a frame");
                return None;
            }
        }
    }

    /// Replies up to and including the first verdict (skipping progress).
    pub async fn until_verdict(&mut self) -> (Vec<Reply>, Verdict) {
        let mut mods = Vec::new();
        loop {
            match self.reply().await.expect("a reply before EOF") {
                Reply::Verdict(v) => return (mods, v),
                other => mods.push(other),
            }
        }
    }

    /// Asserts the server closes the connection (read returns EOF) within 5 s; replies that
    /// arrive first are returned.
    pub async fn expect_eof(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        let r =
            tokio::time::timeout(Duration::from_secs(5), self.stream.read_to_end(&mut rest)).await;
        match r {
            Ok(Ok(_)) => rest,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => rest,
            Ok(Err(e)) => panic!("read error instead of EOF: {e}"),
            Err(_) => panic!("server did not close the connection within 5 s"),
        }
    }

    /// OPTNEG (Postfix's offer) and CONNECT, both answered.
    pub async fn handshake(&mut self) {
        self.send(&postfix_offer()).await;
        match self.reply().await {
            Some(Reply::OptNeg(_)) => {}
            other => panic!("expected the negotiation answer, got {other:?}"),
        }
        self.send(&Command::Connect(ConnectInfo {
            hostname: Bytes::from_static(b"client.example"),
            socket: SocketInfo::Inet {
                addr: "192.0.2.1".parse().expect("ip"),
                port: 4567,
            },
        }))
        .await;
        assert_eq!(self.reply().await, Some(Reply::Verdict(Verdict::Continue)));
    }

    /// One whole message: MAIL, RCPT, DATA, a header, EOH, a body chunk, EOM; returns
    /// EOM's modifications and verdict.
    pub async fn message(&mut self, from: &str) -> (Vec<Reply>, Verdict) {
        let env = |a: &str| Envelope {
            address: Bytes::from(format!("<{a}>")),
            args: vec![],
        };
        let steps = [
            Command::Mail(env(from)),
            Command::Rcpt(env("rcpt@example.org")),
            Command::Data,
            Command::Header {
                name: Bytes::from_static(b"Subject"),
                value: Bytes::from_static(b"hello"),
            },
            Command::EndOfHeaders,
            Command::Body(Bytes::from_static(b"body\r\n")),
        ];
        for c in steps {
            self.send(&c).await;
            let r = self.reply().await;
            assert_eq!(
                r,
                Some(Reply::Verdict(Verdict::Continue)),
                "reply to {}",
                c.name()
            );
        }
        self.send(&Command::EndOfMessage(Bytes::new())).await;
        self.until_verdict().await
    }
}

/// Asserts a well-behaved session on a fresh connection is served: handshake, one message
/// tagged by [`Tagger`], QUIT.
pub async fn assert_served(addr: SocketAddr) {
    let mut c = Raw::connect(addr).await;
    c.handshake().await;
    let (mods, v) = c.message("ok@example.org").await;
    assert_eq!(v, Verdict::Continue);
    assert_eq!(
        mods,
        vec![Reply::Modification(milter_core::Modification::AddHeader {
            name: Bytes::from_static(b"X-Test"),
            value: Bytes::from_static(b"1"),
        })]
    );
    c.send(&Command::Quit).await;
    c.expect_eof().await;
}

/// (VmHWM, VmPeak) of this process in KiB: peak resident and peak virtual size.
pub fn memory_peaks_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    (field("VmHWM:"), field("VmPeak:"))
}
