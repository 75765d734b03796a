//! The `milter-replay` binary, run as a process against milters started by the test:
//! replay of a directory with an envelope sidecar and `--out`, a milter that breaks the
//! protocol, load mode, and bad arguments.
//!
//! Needs the `cli` feature (the binary's `required-features`); `cargo test --workspace`
//! enables it (see the `[[test]]` entry in `Cargo.toml`).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::Duration;

use milter_core::client::replay::LoadReport;
use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::server::{BoundAddr, Server, ShutdownHandle};
use milter_core::{Actions, Bytes, Envelope, Verdict};

const BIN: &str = env!("CARGO_BIN_EXE_milter-replay");

/// Adds `X-Sender-Seen: from <sender>`; refuses at the header stage a message whose
/// Subject is `reject me`. Counts the messages that reached end of message, and the
/// connections open at once (one `Tagger` per connection).
struct Tagger {
    sender: String,
    eoms: Arc<AtomicUsize>,
    conns: Arc<Conns>,
}

/// Connections open now, the most that were open at once, and all there were.
#[derive(Default)]
struct Conns {
    open: AtomicUsize,
    most: AtomicUsize,
    total: AtomicUsize,
}

impl Drop for Tagger {
    fn drop(&mut self) {
        self.conns.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Milter for Tagger {
    fn negotiate(&mut self, _offer: &Offer) -> Request {
        Request::new().with_actions(Actions::ADD_HEADERS)
    }

    async fn mail(&mut self, _ctx: &Context<'_>, from: &Envelope) -> Verdict {
        self.sender = from.address_str();
        Verdict::Continue
    }

    async fn header(&mut self, _ctx: &Context<'_>, name: Bytes, value: Bytes) -> Verdict {
        if name.eq_ignore_ascii_case(b"subject") && &value[..] == b"reject me" {
            return Verdict::reply(550, "5.7.1", "go away");
        }
        Verdict::Continue
    }

    async fn eom(&mut self, _ctx: &Context<'_>, a: &mut EomActions) -> Verdict {
        self.eoms.fetch_add(1, Ordering::SeqCst);
        // Long enough that messages of concurrent connections overlap.
        tokio::time::sleep(EOM_DELAY).await;
        match a.add_header("X-Sender-Seen", format!("from <{}>", self.sender)) {
            Ok(()) => Verdict::Continue,
            Err(_) => Verdict::Tempfail,
        }
    }
}

const EOM_DELAY: Duration = Duration::from_millis(20);

struct Running {
    spec: String,
    eoms: Arc<AtomicUsize>,
    conns: Arc<Conns>,
    shutdown: ShutdownHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

async fn start_milter() -> Running {
    let server = Server::builder()
        .listen("inet:127.0.0.1:0")
        .expect("spec")
        .handle_signals(false)
        .bind()
        .await
        .expect("bind");
    let Some(BoundAddr::Tcp(addr)) = server.local_addrs().first().cloned() else {
        panic!("no tcp address");
    };
    let eoms = Arc::new(AtomicUsize::new(0));
    let shutdown = server.shutdown_handle();
    let counter = eoms.clone();
    let conns = Arc::new(Conns::default());
    let open = conns.clone();
    tokio::spawn(server.serve(move || {
        let now = open.open.fetch_add(1, Ordering::SeqCst) + 1;
        open.most.fetch_max(now, Ordering::SeqCst);
        open.total.fetch_add(1, Ordering::SeqCst);
        Tagger {
            sender: String::new(),
            eoms: counter.clone(),
            conns: open.clone(),
        }
    }));
    Running {
        spec: format!("inet:{addr}"),
        eoms,
        conns,
        shutdown,
    }
}

/// Runs the binary off the async threads (the milter runs on them).
async fn replay(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).args(args).output().expect("run"))
        .await
        .expect("join")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write input");
}

const A: &[u8] = b"From: a@example.org\r\nSubject: first\r\n\r\nbody a\r\n";
const B: &[u8] = b"From: b@example.org\nSubject: second\n\nbody b, bare LF\n";
const C: &[u8] = b"From: c@example.org\r\nSubject: reject me\r\n\r\nbody c\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_a_directory_with_a_sidecar_and_writes_the_modified_messages() {
    let milter = start_milter().await;
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    write(input.path(), "a.eml", A);
    write(input.path(), "b.eml", B);
    write(input.path(), "c.eml", C);
    write(input.path(), "notes.txt", b"not a message");
    write(
        input.path(),
        "b.eml.json",
        br#"{"sender": "bob@sidecar.test", "recipients": ["x@example.test"], "helo": "mx.sidecar.test"}"#,
    );
    let out_dir = out.path().join("modified");
    let o = replay(vec![
        "--milter".into(),
        milter.spec.clone(),
        "--out".into(),
        out_dir.display().to_string(),
        input.path().display().to_string(),
    ])
    .await;
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{}", text(&o.stderr));
    let d = input.path().display();
    let want = format!(
        "{d}/a.eml: accept at EOM\n  add header X-Sender-Seen:from <>\n\
         {d}/b.eml: accept at EOM\n  add header X-Sender-Seen:from <bob@sidecar.test>\n\
         {d}/c.eml: reject with reply (550 5.7.1 go away) at HEADER\n"
    );
    assert_eq!(stdout, want);
    assert_eq!(milter.eoms.load(Ordering::SeqCst), 2);

    // The modified messages: the original bytes with the header at the end of the block.
    let read = |name: &str| std::fs::read(out_dir.join(name)).expect("output written");
    assert_eq!(
        text(&read("a.eml")),
        "From: a@example.org\r\nSubject: first\r\nX-Sender-Seen: from <>\r\n\r\nbody a\r\n"
    );
    assert_eq!(
        text(&read("b.eml")),
        "From: b@example.org\nSubject: second\nX-Sender-Seen: from <bob@sidecar.test>\r\n\nbody b, bare LF\n"
    );
    assert!(!out_dir.join("notes.txt").exists());
    assert!(
        !out_dir.join("c.eml").exists(),
        "a refused message is not written"
    );
}

/// A fake milter on loopback: reads the OPTNEG, then answers with `answer`; when
/// `valid_optneg_first` is set, first a valid negotiation, then `answer` to the next command.
fn broken_milter(answer: &'static [u8], valid_optneg_first: bool) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut optneg = [0u8; 17];
        if s.read_exact(&mut optneg).is_err() {
            return;
        }
        if valid_optneg_first {
            // Version 6, no actions, no protocol flags.
            let reply = [0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0];
            if s.write_all(&reply).is_err() {
                return;
            }
            // The macros and CONNECT arrive in one write; answer after reading some.
            let mut buf = [0u8; 512];
            if s.read(&mut buf).is_err() {
                return;
            }
        }
        let _ = s.write_all(answer);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    format!("inet:{addr}")
}

async fn replay_one(spec: String) -> Output {
    let input = tempfile::tempdir().expect("tempdir");
    write(input.path(), "a.eml", A);
    let path = input.path().join("a.eml").display().to_string();
    let o = replay(vec!["--milter".into(), spec, path]).await;
    drop(input);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_milter_that_breaks_the_protocol_fails_the_run_with_a_clear_message() {
    // Garbage instead of a negotiation answer: a frame with an unknown reply code.
    let o = replay_one(broken_milter(b"\x00\x00\x00\x01Z", false)).await;
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("a.eml"), "{err}");
    assert!(err.contains("protocol error: unknown reply 'Z'"), "{err}");
    assert_eq!(text(&o.stdout), "");

    // A valid negotiation, then a header modification in answer to CONNECT.
    let add_header = b"\x00\x00\x00\x05hX\x00y\x00";
    let o = replay_one(broken_milter(add_header, true)).await;
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("a.eml"), "{err}");
    assert!(
        err.contains("protocol error: reply 'h' not allowed before end of message"),
        "{err}"
    );
    assert_eq!(text(&o.stdout), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_mode_reports_rate_and_percentiles() {
    let milter = start_milter().await;
    let input = tempfile::tempdir().expect("tempdir");
    write(input.path(), "a.eml", A);
    write(input.path(), "b.eml", B);
    let o = replay(vec![
        "--milter".into(),
        milter.spec.clone(),
        "--concurrency".into(),
        "8".into(),
        "--count".into(),
        "50".into(),
        input.path().display().to_string(),
    ])
    .await;
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{}", text(&o.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let line = lines[0];
    assert!(line.starts_with("concurrency 8: 50 messages in "), "{line}");
    assert!(
        line.ends_with(", 0 errors, 50 accepted, 50 modified"),
        "{line}"
    );
    // The figures are figures, and agree with each other.
    let secs = figure(line, "messages in ", " s");
    let rate = figure(line, "over connections: ", " msg/s");
    let p50 = figure(line, "p50 ", " ms");
    let p90 = figure(line, "p90 ", " ms");
    let p99 = figure(line, "p99 ", " ms");
    assert!(
        (rate * secs - 50.0).abs() <= 0.05 * 50.0 + rate * 0.005,
        "{rate} msg/s over {secs} s is not 50 messages: {line}"
    );
    let floor = EOM_DELAY.as_secs_f64() * 1e3;
    assert!(
        floor <= p50 && p50 <= p90 && p90 <= p99,
        "percentiles out of order or below the milter's {floor} ms: {line}"
    );
    // Eight at once, not one after another: the milter saw eight connections open
    // together, and the run took well under the sequential 50 x 20 ms.
    assert_eq!(milter.conns.most.load(Ordering::SeqCst), 8, "{line}");
    assert!(secs < 50.0 * EOM_DELAY.as_secs_f64() / 2.0, "{line}");
    assert_eq!(milter.eoms.load(Ordering::SeqCst), 50);
    // Long sessions: one connection per sender, and no connect-to-answer figures.
    assert_eq!(milter.conns.total.load(Ordering::SeqCst), 8, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_per_message_opens_one_connection_for_each_message() {
    let milter = start_milter().await;
    let input = tempfile::tempdir().expect("tempdir");
    write(input.path(), "a.eml", A);
    write(input.path(), "b.eml", B);
    let o = replay(vec![
        "--milter".into(),
        milter.spec.clone(),
        "--concurrency".into(),
        "4".into(),
        "--count".into(),
        "20".into(),
        "--connection-per-message".into(),
        input.path().display().to_string(),
    ])
    .await;
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{}", text(&o.stderr));
    let line = stdout.trim_end();
    assert!(line.starts_with("concurrency 4: 20 messages in "), "{line}");
    assert!(
        line.contains(
            ", 0 errors, 20 accepted, 20 modified, 20 connections, connect to answer p50 "
        ),
        "{line}"
    );
    // The server saw a connection per message. (Not checked: at most four open at once;
    // the server drops a closed connection's handler a little after the client moved on.)
    assert_eq!(milter.conns.total.load(Ordering::SeqCst), 20, "{line}");
    assert_eq!(milter.eoms.load(Ordering::SeqCst), 20);
    // MAIL..answer excludes the setup that connect-to-answer includes.
    let p50 = figure(line, "p50 ", " ms");
    let connect_p50 = figure(line, "connect to answer p50 ", " ms");
    let floor = EOM_DELAY.as_secs_f64() * 1e3;
    assert!(floor <= p50 && p50 <= connect_p50, "{line}");

    // Replay mode too: three messages, three connections (one more for the refused one).
    let before = milter.conns.total.load(Ordering::SeqCst);
    write(input.path(), "c.eml", C);
    let o = replay(vec![
        "--milter".into(),
        milter.spec.clone(),
        "--connection-per-message".into(),
        input.path().display().to_string(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout)
            .lines()
            .filter(|l| l.contains(".eml: "))
            .count(),
        3
    );
    assert_eq!(milter.conns.total.load(Ordering::SeqCst) - before, 3);
}

/// The number between `before` and the next `after` in `line`.
fn figure(line: &str, before: &str, after: &str) -> f64 {
    let start = line.find(before).map(|i| i + before.len());
    let value = start.and_then(|s| line[s..].find(after).map(|e| &line[s..s + e]));
    value
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number between {before:?} and {after:?} in {line}"))
}

fn report(latencies_ms: &[u64]) -> LoadReport {
    LoadReport {
        completed: latencies_ms.len(),
        errors: 0,
        error_samples: Vec::new(),
        accepted: 0,
        modified: 0,
        elapsed: Duration::from_secs(1),
        latencies: latencies_ms
            .iter()
            .map(|&m| Duration::from_millis(m))
            .collect(),
        connections: 1,
        connect_latencies: Vec::new(),
    }
}

/// Nearest rank: the smallest latency with at least p % of them at or below it.
#[test]
fn percentile_is_the_nearest_rank() {
    let ms = Duration::from_millis;
    let hundred: Vec<u64> = (1..=100).collect();
    let r = report(&hundred);
    for (p, want) in [
        (0.0, 1),
        (1.0, 1),
        (50.0, 50),
        (90.0, 90),
        (99.0, 99),
        (99.5, 100),
        (100.0, 100),
    ] {
        assert_eq!(r.percentile(p), ms(want), "p{p}");
    }
    let r = report(&[10, 20, 30]);
    for (p, want) in [
        (0.0, 10),
        (33.0, 10),
        (34.0, 20),
        (50.0, 20),
        (66.7, 30),
        (90.0, 30),
        (100.0, 30),
    ] {
        assert_eq!(r.percentile(p), ms(want), "p{p} of three");
    }
    assert_eq!(report(&[7]).percentile(50.0), ms(7));
    assert_eq!(report(&[]).percentile(50.0), Duration::ZERO);
    let line = report(&hundred).summary();
    assert!(
        line.contains("100.0 msg/s, p50 50.00 ms, p90 90.00 ms, p99 99.00 ms"),
        "{line}"
    );
}

#[tokio::test]
async fn bad_arguments_exit_2_with_usage() {
    // clap's own messages: checked so that a change of parser does not go unnoticed.
    for (args, reason) in [
        (vec!["--bogus"], "unexpected argument '--bogus' found"),
        (
            vec!["--milter", "inet:127.0.0.1:1"],
            "the following required arguments were not provided:\n  <FILE_OR_DIR>...",
        ),
        (
            vec!["--milter", "inet:127.0.0.1:1", "--count", "many", "x.eml"],
            "invalid value 'many' for '--count <M>'",
        ),
        (
            vec!["--milter"],
            "a value is required for '--milter <SPEC>'",
        ),
        (
            vec!["x.eml"],
            "the following required arguments were not provided:\n  --milter <SPEC>",
        ),
    ] {
        let o = replay(args.iter().map(|s| s.to_string()).collect()).await;
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&format!("error: {reason}")), "{args:?}: {err}");
        assert!(
            err.contains("For more information, try '--help'."),
            "{args:?}: {err}"
        );
    }
    let o = replay(vec!["--help".into()]).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).contains("--connection-per-message"));
}
