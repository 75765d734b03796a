//! An SMTP sink acting as the "remote MX": accepts every message and keeps it
//! (raw bytes plus envelope) for the test to inspect.

use anyhow::{Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One message received by the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkMessage {
    /// EHLO/HELO argument.
    pub helo: String,
    /// Reverse path, without angle brackets (empty for `<>`).
    pub mail_from: String,
    /// Forward paths, without angle brackets.
    pub rcpt_to: Vec<String>,
    /// The message exactly as transferred, dot-unstuffed, CRLF line endings.
    pub data: Vec<u8>,
}

impl SinkMessage {
    /// The message as lossy UTF-8 (for header assertions).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

type Shared = Arc<(Mutex<Vec<SinkMessage>>, Condvar)>;

/// A running sink on 127.0.0.1; stops accepting on drop.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
    shared: Shared,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Starts a sink on a free loopback port.
    pub fn start() -> Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared: Shared = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (shared.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("sink-{}", addr.port()))
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let s3 = s2.clone();
                        std::thread::spawn(move || {
                            let _ = serve(conn, &s3);
                        });
                    }
                }
            })?;
        Ok(Sink {
            addr,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Messages received so far.
    pub fn messages(&self) -> Vec<SinkMessage> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` messages arrived; returns all of them.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<SinkMessage>> {
        let (lock, cv) = &*self.shared;
        let end = Instant::now() + timeout;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        while guard.len() < n {
            let now = Instant::now();
            if now >= end {
                bail!(
                    "sink on port {} received {} message(s), expected {n} within {timeout:?}",
                    self.addr.port(),
                    guard.len()
                );
            }
            guard = cv
                .wait_timeout(guard, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(guard.clone())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn path_arg(rest: &str) -> String {
    let rest = rest.trim_start();
    match (rest.find('<'), rest.find('>')) {
        (Some(a), Some(b)) if a < b => rest[a + 1..b].to_string(),
        _ => rest.split_whitespace().next().unwrap_or("").to_string(),
    }
}

fn serve(conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    serve_session(conn, "sink", |msg| {
        let (lock, cv) = &**shared;
        let n = {
            let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
            g.push(msg);
            g.len()
        };
        cv.notify_all();
        Ok(format!("queued as SINK{n}"))
    })
}

/// Serves one SMTP session as a remote MX would (EHLO/HELO, MAIL, RCPT, DATA with dot
/// unstuffing, RSET, NOOP, QUIT), handing each message to `deliver`. `deliver` returns the
/// text after `250 2.0.0 Ok: `, or an error that is answered `451 4.3.0`. Shared by the
/// tests' in-memory [`Sink`] and the main job's sink, which writes files.
pub fn serve_session<F>(conn: TcpStream, name: &str, mut deliver: F) -> std::io::Result<()>
where
    F: FnMut(SinkMessage) -> Result<String, String>,
{
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut out = conn.try_clone()?;
    let mut rd = BufReader::new(conn);
    out.write_all(format!("220 sink.test ESMTP {name}\r\n").as_bytes())?;
    let (mut helo, mut from, mut rcpts) = (String::new(), None::<String>, Vec::new());
    let mut line = Vec::new();
    loop {
        line.clear();
        if rd.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            helo = text.get(5..).unwrap_or("").trim().to_string();
            b"250-sink.test\r\n250-8BITMIME\r\n250-SIZE 209715200\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            helo = text.get(5..).unwrap_or("").trim().to_string();
            b"250 sink.test\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = Some(path_arg(&text[10..]));
            rcpts.clear();
            b"250 2.1.0 Ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            if from.is_none() {
                b"503 5.5.1 need MAIL\r\n"
            } else {
                rcpts.push(path_arg(&text[8..]));
                b"250 2.1.5 Ok\r\n"
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                out.write_all(b"503 5.5.1 need RCPT\r\n")?;
                continue;
            }
            out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
            let mut data = Vec::new();
            loop {
                line.clear();
                if rd.read_until(b'\n', &mut line)? == 0 {
                    return Ok(());
                }
                if line == b".\r\n" || line == b".\n" {
                    break;
                }
                let body = if line.first() == Some(&b'.') {
                    &line[1..]
                } else {
                    &line[..]
                };
                data.extend_from_slice(body);
            }
            let msg = SinkMessage {
                helo: helo.clone(),
                mail_from: from.take().unwrap_or_default(),
                rcpt_to: std::mem::take(&mut rcpts),
                data,
            };
            match deliver(msg) {
                Ok(text) => out.write_all(format!("250 2.0.0 Ok: {text}\r\n").as_bytes())?,
                Err(_) => out.write_all(b"451 4.3.0 sink cannot store the message\r\n")?,
            }
            continue;
        } else if upper == "RSET" {
            from = None;
            rcpts.clear();
            b"250 2.0.0 Ok\r\n"
        } else if upper == "NOOP" {
            b"250 2.0.0 Ok\r\n"
        } else if upper == "QUIT" {
            out.write_all(b"221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else {
            b"502 5.5.2 command not implemented\r\n"
        };
        out.write_all(reply)?;
    }
}
