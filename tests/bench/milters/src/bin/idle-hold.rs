//! `idle-hold`: opens N connections to a milter as an MTA would, negotiates each (OPTNEG,
//! then CONNECT and HELO), holds them all idle for S seconds, then closes them and prints
//! how many were held (still open at the end). The idle-connection case measures the
//! milter's RSS meanwhile.
//!
//! ```text
//! idle-hold --milter inet:127.0.0.1:PORT --connections 1000 --hold 5 [--ready-file F]
//! ```
//!
//! Written on milter-core's sans-IO MTA session rather than `MilterClient`, which opens
//! the SMTP side only together with a first message; here the connection must stop after
//! HELO, the state a real MTA leaves a connection in between SMTP commands.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use milter_core::ConnectInfo;
use milter_core::client::Io;
use milter_core::proto::SocketInfo;
use milter_core::session::mta::{MtaConfig, MtaEvent, MtaSession, Sent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Each read of a reply; the milter answers at once when it is alive.
const REPLY_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(about = "Holds N negotiated idle milter connections open for S seconds")]
struct Args {
    /// The milter: `inet:HOST:PORT` or `unix:PATH`.
    #[arg(long)]
    milter: String,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Seconds to hold them once all are negotiated.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Stop after OPTNEG (no CONNECT/HELO).
    #[arg(long)]
    optneg_only: bool,
    /// Written (with the number held) once every connection is negotiated, so a caller
    /// can measure while they are held.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

struct Held {
    io: Box<dyn Io>,
    session: MtaSession,
}

async fn open(spec: &str) -> anyhow::Result<Box<dyn Io>> {
    if let Some(a) = spec.strip_prefix("inet:") {
        let s = tokio::net::TcpStream::connect(a).await?;
        s.set_nodelay(true)?;
        Ok(Box::new(s))
    } else if let Some(p) = spec.strip_prefix("unix:") {
        Ok(Box::new(tokio::net::UnixStream::connect(p).await?))
    } else {
        bail!("--milter {spec}: expected inet:HOST:PORT or unix:PATH")
    }
}

impl Held {
    async fn flush(&mut self) -> anyhow::Result<()> {
        let out = self.session.output().split();
        self.io.write_all(&out).await?;
        Ok(())
    }

    /// The milter's next event (its answer to what was sent).
    async fn next_event(&mut self) -> anyhow::Result<MtaEvent> {
        loop {
            if let Some(e) = self.session.poll_event()? {
                return Ok(e);
            }
            let buf = self.session.read_buf();
            buf.reserve(512);
            let n = tokio::time::timeout(REPLY_WAIT, self.io.read_buf(buf))
                .await
                .context("no reply")??;
            if n == 0 {
                bail!("closed by the milter");
            }
        }
    }

    /// Waits for the verdict of the command just sent, if one is due.
    async fn answer(&mut self, sent: Sent) -> anyhow::Result<()> {
        self.flush().await?;
        if sent != Sent::AwaitingReply {
            return Ok(());
        }
        match self.next_event().await? {
            MtaEvent::Verdict { .. } => Ok(()),
            other => bail!("unexpected {other:?}"),
        }
    }

    async fn negotiate(spec: &str, optneg_only: bool) -> anyhow::Result<Held> {
        let mut h = Held {
            io: open(spec).await?,
            session: MtaSession::new(MtaConfig::postfix()),
        };
        h.session.negotiate()?;
        h.flush().await?;
        match h.next_event().await? {
            MtaEvent::Negotiated(_) => {}
            other => bail!("unexpected {other:?} at OPTNEG"),
        }
        if optneg_only {
            return Ok(h);
        }
        h.session.set_macro("j", "localhost");
        h.session.set_macro("client_addr", "127.0.0.1");
        let sent = h.session.connect(&ConnectInfo {
            hostname: Bytes::from_static(b"localhost"),
            socket: SocketInfo::Inet {
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 42424,
            },
        })?;
        h.answer(sent).await?;
        let sent = h.session.helo(b"localhost")?;
        h.answer(sent).await?;
        Ok(h)
    }

    /// Still open: a read that would block (nothing to read, no EOF).
    async fn is_open(&mut self) -> bool {
        let mut b = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(1), self.io.read(&mut b)).await {
            Err(_) => true,
            Ok(Ok(n)) => n > 0,
            Ok(Err(_)) => false,
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let mut held = Vec::with_capacity(args.connections);
    let mut failed = 0usize;
    let mut first_error = None;
    for _ in 0..args.connections {
        match Held::negotiate(&args.milter, args.optneg_only).await {
            Ok(h) => held.push(h),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let negotiated = held.len();
    let took = started.elapsed();
    if let Some(f) = &args.ready_file {
        std::fs::write(f, format!("{negotiated}\n"))?;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let mut open = 0usize;
    for h in &mut held {
        if h.is_open().await {
            open += 1;
        }
    }
    drop(held);
    println!(
        "held {open} of {} connections for {} s ({negotiated} negotiated in {:.2} s, {failed} failed)",
        args.connections,
        args.hold,
        took.as_secs_f64()
    );
    if let Some(e) = first_error {
        eprintln!("idle-hold: first error: {e:#}");
    }
    if open == args.connections {
        Ok(())
    } else {
        std::process::exit(1)
    }
}
