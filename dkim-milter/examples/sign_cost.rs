//! The CPU floor of signing one message, in process, without the milter protocol: the
//! anchor the daemon's CPU per message is compared with (tests/bench/PROFILE-dkim.md).
//!
//! ```text
//! cargo run --release --ignore-rust-version -p dkim-milter --example sign_cost -- \
//!     KEYS_DIR MESSAGE.eml [ROUNDS]
//! ```
//!
//! `KEYS_DIR` is a keys-dir (`{domain}/{selector}.private`) with a key for the message's
//! From domain. It prints, per operation, the median over `ROUNDS` (default 5) rounds of
//! 1,000 iterations each, in CPU time of the thread:
//! - `rsa-sign`: one signature through the daemon's key type (mail-auth on aws-lc), over
//!   a header block of the size a DKIM signature covers;
//! - `transaction`: one message through [`Transaction`] as the milter glue drives it
//!   (header events, end of headers with the decision, one body chunk, end of message),
//!   which is all of the daemon's work except the protocol and the sockets.

use std::path::PathBuf;
use std::sync::Arc;

use dkim_milter::config::{Canon, Canonicalization, Config};
use dkim_milter::reload::State;
use dkim_milter::transaction::{Facts, Transaction};
use mail_auth::crypto::SigningKey;

const ITERATIONS: u32 = 1000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: sign_cost KEYS_DIR MESSAGE.eml [ROUNDS]");
        std::process::exit(2);
    }
    let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(5);
    let raw = std::fs::read(&args[1]).expect("message");
    let (headers, body) = split(&raw);
    let config = Config {
        keys_dir: PathBuf::from(&args[0]),
        canonicalization: Canonicalization {
            header: Canon::Relaxed,
            body: Canon::Simple,
        },
        oversign_headers: vec!["From".into()],
        key_permissions: dkim_milter::config::KeyPermissions::Ignore,
        ..Config::default()
    };
    let state = Arc::new(State::from_config(config, None).expect("keys"));
    let keys = match state.keys.lookup("alice@example.test") {
        dkim_milter::keystore::Lookup::Sign(k) => k,
        _ => panic!("no key for example.test in the keys-dir"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");

    // About what a relaxed header block of ~10 signed fields plus the DKIM-Signature is.
    let block = vec![b'a'; 700];
    let rsa = median_us(rounds, || {
        let sig = keys[0].key.sign(block.as_slice()).expect("sign");
        std::hint::black_box(sig);
    });
    let tx = median_us(rounds, || {
        let mut t = Transaction::new(
            state.clone(),
            Facts {
                client_addr: Some("127.0.0.1".parse().expect("ip")),
                queue_id: Some("4ZQk1x0abcz9sWq".into()),
                ..Facts::default()
            },
            true,
        );
        for (n, v) in &headers {
            t.header(n, v);
        }
        t.end_of_headers();
        t.body(&body);
        let out = rt.block_on(t.end_of_message(None));
        assert_eq!(out.insert_top.len(), 1, "{}", out.log);
        std::hint::black_box(out);
    });
    println!("rsa-sign     {rsa:8.1} us");
    println!("transaction  {tx:8.1} us  ({:.2}x rsa-sign)", tx / rsa);
}

/// This thread's CPU time in microseconds: CPU, not wall time, as `openssl speed`
/// counts, so the figures hold on a shared, busy machine.
fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// Median over `rounds` of the mean CPU microseconds per call of `f`.
fn median_us(rounds: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut per: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = thread_cpu_us();
            for _ in 0..ITERATIONS {
                f();
            }
            (thread_cpu_us() - t) / f64::from(ITERATIONS)
        })
        .collect();
    per.sort_by(f64::total_cmp);
    per[per.len() / 2]
}

/// One header field: name, value.
type Field = (Vec<u8>, Vec<u8>);

/// Header fields as milter HEADER events carry them (value with its leading space, folds
/// as bare LF) and the body with CRLF line ends, as BODY frames carry it.
fn split(raw: &[u8]) -> (Vec<Field>, Vec<u8>) {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut fields: Vec<Field> = Vec::new();
    for line in head.split('\n') {
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push(b'\n');
                v.extend_from_slice(line.as_bytes());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            fields.push((n.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
    }
    (fields, body.replace('\n', "\r\n").into_bytes())
}
