//! Hostile milter peers for the reliability tests (issue #12): raw sockets that speak
//! bytes, not the protocol, against a running daemon; and the daemon's resident memory.
//!
//! The frames are written by hand on purpose: a hostile peer must be able to send what no
//! well-behaved encoder would (a 4 GiB length, a frame cut short, garbage). Each attack
//! returns an error when the daemon does not end the connection in the stated time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `inet:HOST:PORT` (as the daemons' `socket`) as a socket address.
pub fn inet_addr(spec: &str) -> Result<SocketAddr> {
    spec.strip_prefix("inet:")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("not an inet:HOST:PORT spec: {spec}"))
}

/// `VmRSS` of `pid` in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS line")
}

/// Samples a process's RSS on a thread until [`RssSampler::stop`].
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u64>>>,
}

impl RssSampler {
    /// Starts sampling `pid` every `every`.
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut v = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(k) = rss_kib(pid) {
                    v.push(k);
                }
                std::thread::sleep(every);
            }
            if let Ok(k) = rss_kib(pid) {
                v.push(k);
            }
            v
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns the samples (KiB), oldest first.
    pub fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// Flatness of an RSS series: the largest sample of the last third against the largest
/// of the middle third, as a ratio (1.0 = no growth). The first third is warm-up (the
/// allocator's arenas and the connection pools grow with concurrency, then plateau); a
/// leak keeps growing, so its last-third peak pulls away from the middle third's.
pub fn growth(samples: &[u64]) -> f64 {
    let third = (samples.len() / 3).max(1);
    let middle = samples
        .iter()
        .skip(third)
        .take(third)
        .max()
        .copied()
        .unwrap_or(1)
        .max(1);
    let last = samples.iter().rev().take(third).max().copied().unwrap_or(0);
    last as f64 / middle as f64
}

/// One milter frame: 4-byte big-endian length of command + payload, command, payload.
pub fn frame(cmd: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    f.push(cmd);
    f.extend_from_slice(payload);
    f
}

/// The MTA's OPTNEG: version 6, all actions, no protocol steps offered for skipping (so
/// every command is answered).
pub fn optneg() -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&6u32.to_be_bytes());
    p.extend_from_slice(&0x1ffu32.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes());
    frame(b'O', &p)
}

/// CONNECT from `localhost [127.0.0.1]:4242`.
pub fn connect_cmd() -> Vec<u8> {
    frame(b'C', b"localhost\0\x34\x10\x92127.0.0.1\0")
}

/// Reads one frame (payload capped at 1 MiB); `None` at end of stream.
pub async fn read_frame(s: &mut TcpStream) -> Result<Option<(u8, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > 1 << 20 {
        bail!("daemon sent a frame of {n} bytes");
    }
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    let cmd = buf.remove(0);
    Ok(Some((cmd, buf)))
}

/// Connects, negotiates and sends CONNECT; returns the stream once both are answered.
pub async fn negotiated(addr: SocketAddr) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(&optneg()).await?;
    match read_frame(&mut s).await? {
        Some((b'O', _)) => {}
        other => bail!("no OPTNEG reply: {other:?}"),
    }
    s.write_all(&connect_cmd()).await?;
    match read_frame(&mut s).await? {
        Some((b'c', _)) => Ok(s),
        other => bail!("CONNECT not continued: {other:?}"),
    }
}

/// Waits until the daemon ends the connection (end of stream or reset), discarding what
/// it sends; the time it took. An error if it is still open after `limit`.
pub async fn wait_closed(s: &mut TcpStream, limit: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    let mut sink = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((t0 + limit).into(), s.read(&mut sink)).await {
            Err(_) => bail!("connection still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(t0.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Slowloris: sends a frame announcing `payload` bytes of OPTNEG, then one payload byte
/// every `every`, never completing it. Returns how long the daemon kept the connection;
/// an error if it is still open after `limit`.
pub async fn drip(addr: SocketAddr, every: Duration, limit: Duration) -> Result<Duration> {
    let s = TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = s.into_split();
    let t0 = Instant::now();
    // 1000 payload bytes: at one a second it would take 16 minutes to complete.
    wr.write_all(&1001u32.to_be_bytes()).await?;
    wr.write_all(b"O").await?;
    let writer = async {
        loop {
            tokio::time::sleep(every).await;
            if wr.write_all(b"\0").await.is_err() {
                return;
            }
        }
    };
    let reader = async {
        let mut b = [0u8; 64];
        loop {
            match rd.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = reader => Ok(t0.elapsed()),
        _ = writer => Ok(t0.elapsed()),
        _ = tokio::time::sleep(limit) => bail!("slow peer still connected after {limit:?}"),
    }
}

/// Opens `n` connections (`parallel` at a time) and drops each at once: a third without
/// a byte, a third after half an OPTNEG, a third with a reset (SO_LINGER 0) after a whole
/// OPTNEG. Returns how many connects succeeded.
pub async fn open_and_drop(addr: SocketAddr, n: usize, parallel: usize) -> Result<usize> {
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let _permit = permit;
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return false;
            };
            match i % 3 {
                0 => {}
                1 => {
                    let _ = s.write_all(&optneg()[..8]).await;
                }
                _ => {
                    let _ = s.write_all(&optneg()).await;
                    let _ = s.set_zero_linger();
                }
            }
            true
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        ok += usize::from(r.unwrap_or(false));
    }
    Ok(ok)
}

/// A frame header claiming 4 GiB (`0xFFFFFFFF`), after a negotiation when `negotiate`.
/// The daemon must close without replying; the time it took.
pub async fn huge_frame(addr: SocketAddr, negotiate: bool) -> Result<Duration> {
    let mut s = if negotiate {
        negotiated(addr).await?
    } else {
        TcpStream::connect(addr).await?
    };
    s.write_all(&[0xff, 0xff, 0xff, 0xff, b'B']).await?;
    // Then keep feeding bytes, as a peer that means it would.
    let _ = s.write_all(&[b'x'; 64 * 1024]).await;
    let t0 = Instant::now();
    let mut b = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
        Err(_) => bail!("4 GiB frame: connection still open after 10 s"),
        Ok(Ok(0)) | Ok(Err(_)) => Ok(t0.elapsed()),
        Ok(Ok(n)) => bail!("4 GiB frame answered with {n} bytes: {:?}", &b[..n]),
    }
}

/// Garbage after negotiation: an unknown command, then an HTTP request. Returns the time
/// until the daemon closed.
pub async fn garbage(addr: SocketAddr) -> Result<Duration> {
    let mut s = negotiated(addr).await?;
    s.write_all(&frame(b'~', b"not a milter command")).await?;
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02\x03")
        .await;
    wait_closed(&mut s, Duration::from_secs(10)).await
}

/// A peer that never reads its replies: after CONNECT it sends MAIL/RCPT/ABORT cycles for
/// `run` (each answered twice) and reads nothing. Returns the bytes it managed to write:
/// the daemon must stop reading once its replies back up (bounded memory), not buffer
/// them without limit.
pub async fn never_reads(addr: SocketAddr, run: Duration) -> Result<usize> {
    let mut s = negotiated(addr).await?;
    let mut cycle = Vec::new();
    cycle.extend(frame(b'M', b"<a@example.test>\0"));
    cycle.extend(frame(b'R', b"<b@example.test>\0"));
    cycle.extend(frame(b'A', b""));
    let batch: Vec<u8> = cycle.repeat(256);
    let end = Instant::now() + run;
    let mut sent = 0;
    while Instant::now() < end {
        match tokio::time::timeout_at(end.into(), s.write_all(&batch)).await {
            Ok(Ok(())) => sent += batch.len(),
            Ok(Err(e)) => bail!("daemon closed a peer that only stopped reading: {e}"),
            Err(_) => break,
        }
    }
    Ok(sent)
}

/// What [`run_battery`] measured.
#[derive(Debug, Clone)]
pub struct Battery {
    /// How long the one-byte-a-second peer was kept (the negotiation deadline).
    pub drip_held: Duration,
    /// Wall time of the whole battery.
    pub elapsed: Duration,
}

/// The whole hostile battery at once against the daemon at `addr`, as a hostile network
/// would send it, checking each attack's expected end (see tests/RELIABILITY.md):
/// one byte a second (closed at the 30 s negotiation deadline, 25..40 s); 3,000
/// connections opened and dropped, 100 at a time (every connect accepted); a 4 GiB frame
/// before and after negotiation and garbage after it (closed in under 2 s); 20 peers that
/// never read their replies for 5 s, after those (each under 32 MiB written: the daemon
/// stops reading).
/// Both daemons' reliability tests call it while their well-behaved client runs.
pub async fn run_battery(addr: SocketAddr) -> Result<Battery> {
    let t0 = Instant::now();
    let (slow, dropped, huge0, huge1, junk) = tokio::join!(
        drip(addr, Duration::from_secs(1), Duration::from_secs(50)),
        open_and_drop(addr, 3000, 100),
        huge_frame(addr, false),
        huge_frame(addr, true),
        garbage(addr),
    );
    // Started once the timed attacks are done (they would skew their "under 2 s" on
    // two shared cores), while the well-behaved client keeps going.
    let unread: Vec<_> = (0..20)
        .map(|_| tokio::spawn(never_reads(addr, Duration::from_secs(5))))
        .collect();
    let drip_held = slow.context("one byte a second")?;
    if drip_held < Duration::from_secs(25) || drip_held >= Duration::from_secs(40) {
        bail!("slow peer held {drip_held:?}, want the 30 s negotiation deadline");
    }
    let accepted = dropped.context("open and drop")?;
    if accepted != 3000 {
        bail!("{accepted} of 3000 connects accepted");
    }
    for (what, r) in [
        ("4 GiB first", huge0),
        ("4 GiB negotiated", huge1),
        ("garbage", junk),
    ] {
        let t = r.with_context(|| what.to_string())?;
        if t >= Duration::from_secs(2) {
            bail!("{what}: closed after {t:?}");
        }
    }
    for h in unread {
        let sent = h.await.context("never-reading peer task")??;
        // Loopback socket buffers hold a few MiB; a daemon that kept reading (buffering
        // its replies without limit) would take gigabytes in 5 s.
        if sent >= 32 << 20 {
            bail!("a never-reading peer wrote {sent} bytes");
        }
    }
    Ok(Battery {
        drip_held,
        elapsed: t0.elapsed(),
    })
}
