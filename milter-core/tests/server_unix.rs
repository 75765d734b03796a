//! Unix-domain sockets: mode and owner, stale-file removal, refusing a socket in use or a
//! path that is not a socket, and cleanup at shutdown.

mod server_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use milter_core::server::{Server, UnixSocketOptions};
use milter_core::wire::FrameDecoder;
use milter_core::{Error, Reply};
use server_support::{Tagger, init_logs, postfix_offer, wait_for_log};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Negotiates over the unix socket and returns the server's answer.
async fn negotiate_over(path: &Path) -> Reply {
    let mut s = tokio::net::UnixStream::connect(path)
        .await
        .expect("connect");
    let mut out = BytesMut::new();
    postfix_offer().encode(&mut out);
    s.write_all(&out).await.expect("write");
    let mut buf = BytesMut::new();
    let d = FrameDecoder::new(1 << 16);
    loop {
        if let Some(f) = d.decode(&mut buf).expect("frame") {
            return Reply::decode(f).expect("reply");
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "EOF before the negotiation answer");
    }
}

fn opts(mode: Option<u32>, owner: Option<&str>, group: Option<&str>) -> UnixSocketOptions {
    UnixSocketOptions {
        mode,
        owner: owner.map(str::to_owned),
        group: group.map(str::to_owned),
        remove_stale: true,
    }
}

#[tokio::test]
async fn mode_owner_group_applied_and_file_removed_at_shutdown() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.sock");
    let server = Server::builder()
        .listen(&format!("unix:{}", path.display()))
        .expect("spec")
        .unix_socket(opts(Some(0o660), Some("65534"), Some("root")))
        .handle_signals(false)
        .bind()
        .await
        .expect("bind");
    let meta = std::fs::metadata(&path).expect("socket exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), 65534);
    assert_eq!(meta.gid(), 0);
    // The socket was prepared in a private staging directory and moved into place;
    // nothing else is left beside it.
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("m.sock")]);
    let handle = server.shutdown_handle();
    let task = tokio::spawn(server.serve(|| Tagger));
    assert!(matches!(negotiate_over(&path).await, Reply::OptNeg(_)));
    handle.shutdown();
    task.await.expect("join").expect("serve");
    assert!(!path.exists(), "socket file removed at shutdown");
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stale.sock");
    // A crashed predecessor: the file stays, nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind std"));
    assert!(path.exists());
    let server = Server::builder()
        .listen(&format!("local:{}", path.display()))
        .expect("spec")
        .handle_signals(false)
        .bind()
        .await
        .expect("stale socket replaced");
    wait_for_log(&["removed stale socket file", "stale.sock"]).await;
    let handle = server.shutdown_handle();
    let task = tokio::spawn(server.serve(|| Tagger));
    assert!(matches!(negotiate_over(&path).await, Reply::OptNeg(_)));
    handle.shutdown();
    task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn socket_in_use_is_refused_and_left_alone() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("busy.sock");
    let other = std::os::unix::net::UnixListener::bind(&path).expect("bind std");
    let err = Server::builder()
        .listen(&format!("unix:{}", path.display()))
        .expect("spec")
        .handle_signals(false)
        .bind()
        .await
        .expect_err("must refuse");
    let text = err.to_string();
    assert!(matches!(err, Error::Address { .. }), "{text}");
    assert!(text.contains("already in use by another process"), "{text}");
    assert!(text.contains("busy.sock"), "{text}");
    // The other process still owns a working socket.
    other.set_nonblocking(true).expect("nonblocking");
    let _client = std::os::unix::net::UnixStream::connect(&path).expect("still listening");
    assert!(other.accept().is_ok());
}

#[tokio::test]
async fn path_that_is_not_a_socket_is_never_removed() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data.txt");
    std::fs::write(&path, "precious").expect("write");
    let err = Server::builder()
        .listen(&format!("unix:{}", path.display()))
        .expect("spec")
        .handle_signals(false)
        .bind()
        .await
        .expect_err("must refuse");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "precious");
}

#[tokio::test]
async fn unknown_owner_is_refused_at_bind() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.sock");
    let err = Server::builder()
        .listen(&format!("unix:{}", path.display()))
        .expect("spec")
        .unix_socket(opts(None, Some("no-such-user-here"), None))
        .handle_signals(false)
        .bind()
        .await
        .expect_err("must refuse");
    assert!(err.to_string().contains("unknown socket owner"), "{err}");
}

#[test]
fn bad_listen_address_is_refused_with_the_reason() {
    let err = Server::builder()
        .listen("inet:127.0.0.1:http")
        .expect_err("bad port");
    assert!(
        err.to_string().contains("\"http\" is not a number"),
        "{err}"
    );
}
