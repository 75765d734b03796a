//! A hostile or broken MTA on one connection: the server closes that connection, logs
//! why, allocates nothing large, and keeps serving others.

mod server_support;

use bytes::Bytes;
use milter_core::server::Server;
use milter_core::{Command, Envelope, Reply, Verdict};
use server_support::{Raw, Tagger, assert_served, memory_peaks_kib, start, wait_for_log};

/// Sends `bytes` (after the handshake if `handshake`), expects the server to close the
/// connection, a log line naming this peer and `reason`, and a good client to be served.
async fn hostile(handshake: bool, bytes: &[u8], half_close: bool, reason: &str) {
    let (addr, shutdown, task) = start(Server::builder(), || Tagger).await;
    let mut c = Raw::connect(addr).await;
    let peer = c.local();
    if handshake {
        c.handshake().await;
    }
    c.send_raw(bytes).await;
    if half_close {
        c.stream.shutdown().await.expect("half close");
    }
    let rest = c.expect_eof().await;
    assert!(rest.is_empty(), "no reply to a broken stream, got {rest:?}");
    let line = wait_for_log(&[&format!("peer={peer}"), "connection closed", reason]).await;
    assert!(line.contains("WARN"), "logged as a warning: {line}");
    assert_served(addr).await;
    shutdown.shutdown();
    task.await.expect("server task");
}

use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_frame() {
    hostile(false, &[0, 0, 0, 0], false, "frame with length 0").await;
}

/// Memory peaks are per process, and the other tests of this binary run in parallel threads
/// (each with its own runtime and allocator arenas), so the measurement runs in a child
/// process of this test binary that runs this test alone.
#[test]
fn huge_length_is_refused_before_allocation() {
    const CHILD: &str = "MILTER_HOSTILE_MEMORY_CHILD";
    if std::env::var_os(CHILD).is_some() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(huge_length_measured());
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "huge_length_is_refused_before_allocation",
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child test");
    assert!(
        out.status.success(),
        "child failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child ran no test:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

async fn huge_length_measured() {
    let (hwm_before, peak_before) = memory_peaks_kib();
    hostile(
        false,
        &[0xff, 0xff, 0xff, 0xff, b'O', 0, 0, 0],
        false,
        "frame of 4294967295 bytes exceeds the limit of 1048576 bytes",
    )
    .await;
    let (hwm_after, peak_after) = memory_peaks_kib();
    // A 4 GiB buffer would show in the peak virtual size even if never touched.
    assert!(
        peak_after.saturating_sub(peak_before) < 512 * 1024,
        "virtual peak grew from {peak_before} to {peak_after} KiB"
    );
    assert!(
        hwm_after.saturating_sub(hwm_before) < 64 * 1024,
        "resident peak grew from {hwm_before} to {hwm_after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_close() {
    // Announces 16 bytes, sends 3, then closes its write side.
    hostile(
        false,
        &[0, 0, 0, 16, b'O', 0, 0],
        true,
        "connection closed inside a frame",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_command_code() {
    hostile(true, &[0, 0, 0, 1, b'Z'], false, "unknown command 'Z'").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_out_of_order() {
    // RCPT right after CONNECT, with no MAIL.
    let mut rcpt = bytes::BytesMut::new();
    Command::Rcpt(Envelope {
        address: Bytes::from_static(b"<x@example.org>"),
        args: vec![],
    })
    .encode(&mut rcpt);
    hostile(true, &rcpt, false, "command 'R' not allowed before MAIL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_worthy_command_before_negotiation() {
    let mut helo = bytes::BytesMut::new();
    Command::Helo(Bytes::from_static(b"mx.example")).encode(&mut helo);
    hostile(
        false,
        &helo,
        false,
        "command 'H' not allowed before negotiation",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_a_good_message_still_closes_only_that_connection() {
    let (addr, shutdown, task) = start(Server::builder(), || Tagger).await;
    let mut bad = Raw::connect(addr).await;
    let peer = bad.local();
    bad.handshake().await;
    let (_, v) = bad.message("a@example.org").await;
    assert_eq!(v, Verdict::Continue);
    // A second, concurrent good connection is unaffected by what follows on the first.
    let mut good = Raw::connect(addr).await;
    good.handshake().await;
    bad.send_raw(&[0, 0, 0, 2, b'M', 0xff]).await;
    bad.expect_eof().await;
    wait_for_log(&[&format!("peer={peer}"), "malformed 'M' frame"]).await;
    let (mods, v) = good.message("b@example.org").await;
    assert_eq!(v, Verdict::Continue);
    assert!(matches!(mods.as_slice(), [Reply::Modification(_)]));
    good.send(&Command::Quit).await;
    good.expect_eof().await;
    shutdown.shutdown();
    task.await.expect("server task");
}

/// A milter frame written by hand (length, command, payload).
fn raw_frame(cmd: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    f.push(cmd);
    f.extend_from_slice(payload);
    f
}

fn short_waits() -> milter_core::server::Timeouts {
    milter_core::server::Timeouts {
        negotiation: std::time::Duration::from_secs(1),
        command: std::time::Duration::from_secs(1),
        content: std::time::Duration::from_secs(1),
        idle: std::time::Duration::from_secs(1),
        ..milter_core::server::Timeouts::libmilter()
    }
}

/// Regression (issue #12): the negotiation wait was per read, so a peer sending one byte
/// at a time (each inside the wait) kept its slot for ever. It is one deadline from accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_dribbling_its_negotiation_is_closed_at_the_deadline() {
    use tokio::io::AsyncReadExt;
    let (addr, shutdown, task) = start(Server::builder().timeouts(short_waits()), || Tagger).await;
    let mut c = Raw::connect(addr).await;
    let t0 = std::time::Instant::now();
    c.send_raw(&[0, 0, 0, 100, b'O']).await;
    let mut b = [0u8; 16];
    let closed = loop {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "still open after 5 s"
        );
        if c.stream.write_all(b"\0").await.is_err() {
            break t0.elapsed();
        }
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), c.stream.read(&mut b)).await
        {
            break t0.elapsed();
        }
    };
    assert!(
        closed >= std::time::Duration::from_millis(900)
            && closed < std::time::Duration::from_secs(3),
        "closed after {closed:?}"
    );
    assert_served(addr).await;
    shutdown.shutdown();
    task.await.expect("server task");
}

/// Regression (issue #12): replies were written without a time limit, so a peer that
/// sent commands and never read the answers held its slot for ever once the socket
/// buffer was full. The write is bounded by the phase's wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_its_replies_is_closed_after_the_wait() {
    let (addr, shutdown, task) = start(Server::builder().timeouts(short_waits()), || Tagger).await;
    let mut c = Raw::connect(addr).await;
    // No protocol steps offered for skipping: every command below is answered.
    let mut neg = 6u32.to_be_bytes().to_vec();
    neg.extend_from_slice(&0x1ffu32.to_be_bytes());
    neg.extend_from_slice(&0u32.to_be_bytes());
    c.send_raw(&raw_frame(b'O', &neg)).await;
    assert!(matches!(c.reply().await, Some(Reply::OptNeg(_))));
    c.send_raw(&raw_frame(b'C', b"h\0\x34\x10\x92127.0.0.1\0"))
        .await;
    let mut cycle = raw_frame(b'M', b"<a@x.test>\0");
    cycle.extend(raw_frame(b'R', b"<b@x.test>\0"));
    cycle.extend(raw_frame(b'A', b""));
    let batch = cycle.repeat(512);
    let t0 = std::time::Instant::now();
    let mut sent = 0usize;
    let cut = loop {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "still open after 20 s ({sent} bytes sent)"
        );
        match tokio::time::timeout(
            std::time::Duration::from_secs(1),
            c.stream.write_all(&batch),
        )
        .await
        {
            Ok(Ok(())) => sent += batch.len(),
            Ok(Err(_)) => break t0.elapsed(),
            // Blocked: the server stopped reading (its replies are backed up). Keep trying.
            Err(_) => {}
        }
    };
    assert!(sent < 64 << 20, "the server kept reading: {sent} bytes");
    eprintln!("never-reading peer cut after {cut:?}, {sent} bytes sent");
    wait_for_log(&["connection closed", "did not read our replies"]).await;
    assert_served(addr).await;
    shutdown.shutdown();
    task.await.expect("server task");
}
