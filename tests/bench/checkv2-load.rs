//! Floor client for the spam bridge case of tests/bench/spam.sh: POSTs messages straight to an
//! Rspamd normal worker's /checkv2, as a milter bridge would, and prints a summary line in
//! milter-replay's format. std only, so `rustc -O` builds it without cargo:
//!
//! ```text
//! rustc -O --edition 2021 -o checkv2-load tests/bench/checkv2-load.rs
//! checkv2-load --port P --concurrency C --count N [--header 'K: V']... FILE...
//! ```
//!
//! C threads, one HTTP/1.1 keep-alive connection each (re-opened when Rspamd closes it), take
//! message i = 0, 1, 2, ... in turn from a shared counter and cycle through FILEs, as
//! milter-replay's load mode does. Latency runs from writing the request to the last byte of the
//! answer. The line ends with the client's own CPU per request (utime + stime from /proc/self/stat)
//! and the `action` counts, so a run that stops scanning cannot pass unnoticed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Conn {
    r: BufReader<TcpStream>,
}

fn connect(port: u16) -> std::io::Result<Conn> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    Ok(Conn { r: BufReader::with_capacity(64 * 1024, s) })
}

/// One exchange; returns (status, keep-alive, body).
fn exchange(c: &mut Conn, req: &[u8]) -> std::io::Result<(u16, bool, Vec<u8>)> {
    c.r.get_mut().write_all(req)?;
    let mut line = String::new();
    c.r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
    }
    let http11 = line.starts_with("HTTP/1.1");
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut len, mut keep) = (None, http11);
    loop {
        line.clear();
        c.r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            if k == "content-length" {
                len = v.parse::<usize>().ok();
            } else if k == "connection" {
                keep = v == "keep-alive";
            }
        }
    }
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            c.r.read_exact(&mut body)?;
        }
        None => {
            c.r.read_to_end(&mut body)?;
            keep = false;
        }
    }
    Ok((status, keep, body))
}

fn action(body: &[u8]) -> String {
    let t = String::from_utf8_lossy(body);
    let Some(i) = t.find("\"action\"") else { return "?".into() };
    let rest = t[i + 8..].trim_start().trim_start_matches(':').trim_start();
    rest.strip_prefix('"').and_then(|r| r.split('"').next()).unwrap_or("?").to_string()
}

fn cpu_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s.rsplit_once(')').map(|x| x.1).unwrap_or("").split_whitespace().collect();
    // fields after ")": state is [0], utime is field 14 overall -> [11], stime [12]
    f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0u64) + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut port, mut conc, mut count) = (0u16, 1usize, 0usize);
    let (mut headers, mut files) = (String::new(), Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|v| v.parse().ok()).expect("--port N"),
            "--concurrency" => conc = args.next().and_then(|v| v.parse().ok()).expect("--concurrency N"),
            "--count" => count = args.next().and_then(|v| v.parse().ok()).expect("--count N"),
            "--header" => {
                headers.push_str(&args.next().expect("--header 'K: V'"));
                headers.push_str("\r\n");
            }
            _ => files.push(a),
        }
    }
    assert!(port != 0 && count > 0 && !files.is_empty(), "usage: checkv2-load --port P --concurrency C --count N [--header 'K: V']... FILE...");
    let reqs: Arc<Vec<Vec<u8>>> = Arc::new(
        files
            .iter()
            .map(|f| {
                let body = std::fs::read(f).unwrap_or_else(|e| panic!("{f}: {e}"));
                let mut r = format!(
                    "POST /checkv2 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\nContent-Length: {}\r\n{headers}\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(&body);
                r
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let out = Arc::new(Mutex::new((Vec::<Duration>::with_capacity(count), 0usize, BTreeMap::<String, usize>::new(), 0usize)));
    let (cpu0, t0) = (cpu_ticks(), Instant::now());
    let threads: Vec<_> = (0..conc)
        .map(|_| {
            let (reqs, next, out) = (reqs.clone(), next.clone(), out.clone());
            std::thread::spawn(move || {
                let mut conn: Option<Conn> = None;
                let (mut lat, mut errs, mut acts, mut conns) = (Vec::new(), 0, BTreeMap::new(), 0);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let req = &reqs[i % reqs.len()];
                    let start = Instant::now();
                    if conn.is_none() {
                        conns += 1;
                        conn = connect(port).ok();
                    }
                    let res = match conn.as_mut() {
                        Some(c) => exchange(c, req),
                        None => Err(std::io::Error::other("connect failed")),
                    };
                    match res {
                        Ok((200, keep, body)) => {
                            lat.push(start.elapsed());
                            *acts.entry(action(&body)).or_insert(0) += 1;
                            if !keep {
                                conn = None;
                            }
                        }
                        Ok((s, _, body)) => {
                            errs += 1;
                            eprintln!("checkv2-load: HTTP {s}: {}", String::from_utf8_lossy(&body));
                            conn = None;
                        }
                        Err(e) => {
                            errs += 1;
                            eprintln!("checkv2-load: {e}");
                            conn = None;
                        }
                    }
                }
                let mut o = out.lock().unwrap();
                o.0.extend(lat);
                o.1 += errs;
                for (k, v) in acts {
                    *o.2.entry(k).or_insert(0) += v;
                }
                o.3 += conns;
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_ticks() - cpu0;
    let mut o = out.lock().unwrap();
    o.0.sort();
    let n = o.0.len();
    let pct = |p: f64| {
        if n == 0 {
            return 0.0;
        }
        let k = ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1;
        o.0[k].as_secs_f64() * 1e3
    };
    let hz = 100.0; // CLK_TCK on Linux
    let acts: Vec<String> = o.2.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "{n} messages in {elapsed:.2} s over connections: {:.1} msg/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, {} errors, {n} accepted, {n} modified; connections {}, client cpu {:.0} us/msg, actions {}",
        n as f64 / elapsed,
        pct(50.0),
        pct(90.0),
        pct(99.0),
        o.1,
        o.3,
        cpu as f64 * 1e6 / hz / n.max(1) as f64,
        acts.join(",")
    );
}
