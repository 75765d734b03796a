//! The stand-in for every remote MX host: an SMTP server on a fixed loopback port that
//! accepts everything and writes each message to `{state}/var/sink/` as `<n>.eml` (the
//! bytes as received) plus `<n>.json` (HELO, envelope sender and recipients). Files appear
//! by rename, so a reader never sees half a message. It runs inside the supervisor.

use anyhow::{Context, Result};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

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

fn serve(conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stack_tests::sink::serve_session(conn, "milter-stack sink", |m| {
        match shared.store(&m.helo, &m.mail_from, &m.rcpt_to, &m.data) {
            Ok(name) => {
                shared.log_line(&format!(
                    "from=<{}> to=<{}> size={} -> {name}.eml",
                    m.mail_from,
                    m.rcpt_to.join(">,<"),
                    m.data.len()
                ));
                Ok(format!("stored as {name}"))
            }
            Err(e) => {
                shared.log_line(&format!("cannot store a message: {e:#}"));
                Err(e.to_string())
            }
        }
    })
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
