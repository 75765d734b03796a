//! The stand-in for every remote MX host: an SMTP server on a fixed loopback port that
//! accepts everything and writes each message to `{state}/var/sink/` as `<n>.eml` (the
//! bytes as received) plus `<n>.json` (HELO, envelope sender and recipients). Files appear
//! by rename, so a reader never sees half a message. It runs inside the supervisor.

use anyhow::{Context, Result};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A running sink; stops accepting on drop.
pub struct Sink {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    dir: PathBuf,
    log: PathBuf,
    seq: AtomicU64,
}

impl Sink {
    /// Listens on 127.0.0.1:`port` and stores messages under `dir`, logging to `log`.
    pub fn start(port: u16, dir: &Path, log: &Path) -> Result<Sink> {
        std::fs::create_dir_all(dir)?;
        let listener = TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("sink: binding 127.0.0.1:{port}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            log: log.to_path_buf(),
            seq: AtomicU64::new(0),
        });
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sink".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let s = shared.clone();
                        std::thread::spawn(move || {
                            if let Err(e) = serve(conn, &s) {
                                s.log_line(&format!("session error: {e}"));
                            }
                        });
                    }
                }
            })?;
        Ok(Sink {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn log_line(&self, text: &str) {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(f, "{} {text}", unix_now());
        }
    }

    fn store(&self, helo: &str, from: &str, rcpts: &[String], data: &[u8]) -> Result<String> {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let name = format!(
            "{}.{:03}-{}-{n}",
            now.as_secs(),
            now.subsec_millis(),
            std::process::id()
        );
        let json = format!(
            "{{\"helo\": {}, \"mail_from\": {}, \"rcpt_to\": [{}]}}\n",
            json_str(helo),
            json_str(from),
            rcpts
                .iter()
                .map(|r| json_str(r))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (ext, bytes) in [("json", json.as_bytes()), ("eml", data)] {
            let tmp = self.dir.join(format!(".{name}.{ext}.tmp"));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, self.dir.join(format!("{name}.{ext}")))?;
        }
        Ok(name)
    }
}

fn unix_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn path_arg(rest: &str) -> String {
    let rest = rest.trim_start();
    match (rest.find('<'), rest.find('>')) {
        (Some(a), Some(b)) if a < b => rest[a + 1..b].to_string(),
        _ => rest.split_whitespace().next().unwrap_or("").to_string(),
    }
}

fn serve(conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut out = conn.try_clone()?;
    let mut rd = BufReader::new(conn);
    out.write_all(b"220 sink.test ESMTP milter-stack sink\r\n")?;
    let (mut helo, mut from, mut rcpts) = (String::new(), None::<String>, Vec::<String>::new());
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
            let sender = from.take().unwrap_or_default();
            let to = std::mem::take(&mut rcpts);
            match shared.store(&helo, &sender, &to, &data) {
                Ok(name) => {
                    shared.log_line(&format!(
                        "from=<{sender}> to=<{}> size={} -> {name}.eml",
                        to.join(">,<"),
                        data.len()
                    ));
                    out.write_all(format!("250 2.0.0 Ok: stored as {name}\r\n").as_bytes())?;
                }
                Err(e) => {
                    shared.log_line(&format!("cannot store a message: {e:#}"));
                    out.write_all(b"451 4.3.0 sink cannot store the message\r\n")?;
                }
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

/// A message the sink stored.
pub struct Stored {
    /// The `.eml` path.
    pub path: PathBuf,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Every stored message, oldest first.
pub fn stored(dir: &Path) -> Result<Vec<Stored>> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        if let Ok(data) = std::fs::read(&path) {
            out.push(Stored { path, data });
        }
    }
    Ok(out)
}
