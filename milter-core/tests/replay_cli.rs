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

use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::server::{BoundAddr, Server, ShutdownHandle};
use milter_core::{Actions, Envelope, Verdict};

const BIN: &str = env!("CARGO_BIN_EXE_milter-replay");

/// Adds `X-Sender-Seen: from <sender>`; refuses at the header stage a message whose
/// Subject is `reject me`. Counts the messages that reached end of message.
struct Tagger {
    sender: String,
    eoms: Arc<AtomicUsize>,
}

impl Milter for Tagger {
    fn negotiate(&mut self, _offer: &Offer) -> Request {
        Request::new().with_actions(Actions::ADD_HEADERS)
    }

    async fn mail(&mut self, _ctx: &Context<'_>, from: &Envelope) -> Verdict {
        self.sender = from.address_str();
        Verdict::Continue
    }

    async fn header(&mut self, _ctx: &Context<'_>, name: &[u8], value: &[u8]) -> Verdict {
        if name.eq_ignore_ascii_case(b"subject") && value == b"reject me" {
            return Verdict::reply(550, "5.7.1", "go away");
        }
        Verdict::Continue
    }

    async fn eom(&mut self, _ctx: &Context<'_>, a: &mut EomActions) -> Verdict {
        self.eoms.fetch_add(1, Ordering::SeqCst);
        match a.add_header("X-Sender-Seen", format!("from <{}>", self.sender)) {
            Ok(()) => Verdict::Continue,
            Err(_) => Verdict::Tempfail,
        }
    }
}

struct Running {
    spec: String,
    eoms: Arc<AtomicUsize>,
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
    tokio::spawn(server.serve(move || Tagger {
        sender: String::new(),
        eoms: counter.clone(),
    }));
    Running {
        spec: format!("inet:{addr}"),
        eoms,
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
    for part in [
        " msg/s, ",
        " p50 ",
        " p90 ",
        " p99 ",
        ", 0 errors, 50 accepted, 50 modified",
    ] {
        assert!(line.contains(part), "{part:?} missing in {line}");
    }
    assert_eq!(milter.eoms.load(Ordering::SeqCst), 50);
}

#[tokio::test]
async fn bad_arguments_exit_2_with_usage() {
    for (args, reason) in [
        (vec!["--bogus"], "unknown option --bogus"),
        (vec!["--milter", "inet:127.0.0.1:1"], "no input files"),
        (
            vec!["--milter", "inet:127.0.0.1:1", "--count", "many", "x.eml"],
            "--count needs a number",
        ),
        (vec!["--milter"], "--milter needs a value"),
        (vec!["x.eml"], "--milter is required"),
    ] {
        let o = replay(args.iter().map(|s| s.to_string()).collect()).await;
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("milter-replay: {reason}\n")),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("usage: milter-replay --milter SPEC"),
            "{args:?}: {err}"
        );
    }
}
