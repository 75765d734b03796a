//! Serving on a listener handed in (the API behind socket activation): TCP and unix,
//! a connection made while no server runs waits in the backlog and is served by the next
//! one, the unix socket file is left in place, and descriptors that are not listening
//! stream sockets are refused.

mod server_support;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use milter_core::Error;
use milter_core::server::{BoundAddr, Inherited, Server};
use server_support::{Raw, Tagger, assert_served, init_logs};

/// Serves `listener` (a duplicate; the caller keeps its own) until the handle is used.
async fn serve_on(
    listener: Inherited,
) -> (
    Vec<BoundAddr>,
    milter_core::server::ShutdownHandle,
    tokio::task::JoinHandle<()>,
) {
    init_logs();
    let server = Server::builder()
        .listener(listener)
        .handle_signals(false)
        .bind()
        .await
        .expect("bind");
    let addrs = server.local_addrs();
    let handle = server.shutdown_handle();
    let task = tokio::spawn(async move { server.serve(|| Tagger).await.expect("serve") });
    (addrs, handle, task)
}

#[tokio::test]
async fn tcp_listener_handed_in_outlives_a_restart_without_refusing() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = held.local_addr().expect("addr");

    let (addrs, first, task) = serve_on(held.try_clone().expect("dup").into()).await;
    assert_eq!(addrs, vec![BoundAddr::Tcp(addr)]);
    assert_served(addr).await;
    first.shutdown();
    task.await.expect("join");

    // No server runs now; the held socket still listens, so the MTA's connect succeeds
    // and its negotiation waits in the backlog ...
    let waiting = tokio::spawn(async move {
        let mut c = Raw::connect(addr).await;
        c.handshake().await;
        let (_, v) = c.message("during-restart@example.org").await;
        v
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "answered with no server running");

    // ... until the next server on the same socket answers it.
    let (_, second, task) = serve_on(held.try_clone().expect("dup").into()).await;
    let v = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served by the second server")
        .expect("join");
    assert_eq!(v, milter_core::Verdict::Continue);
    assert_served(addr).await;
    second.shutdown();
    task.await.expect("join");
}

#[tokio::test]
async fn unix_listener_handed_in_keeps_its_socket_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("inherited.sock");
    let held = std::os::unix::net::UnixListener::bind(&path).expect("bind");

    let (addrs, handle, task) = serve_on(held.try_clone().expect("dup").into()).await;
    assert_eq!(addrs, vec![BoundAddr::Unix(path.clone())]);
    let s = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    negotiate_blocking(s).await;
    handle.shutdown();
    task.await.expect("join");
    assert!(
        path.exists(),
        "the socket file is its owner's, not removed at shutdown"
    );

    // The next server takes over the same file.
    let (_, handle, task) = serve_on(held.into()).await;
    let s = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    negotiate_blocking(s).await;
    handle.shutdown();
    task.await.expect("join");
}

/// Sends Postfix's offer over a blocking unix stream, expects the negotiation answer,
/// and closes the connection.
async fn negotiate_blocking(mut s: std::os::unix::net::UnixStream) {
    use std::io::{Read, Write};
    tokio::task::spawn_blocking(move || {
        let mut out = bytes::BytesMut::new();
        server_support::postfix_offer().encode(&mut out);
        s.write_all(&out).expect("write");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut head = [0u8; 5];
        s.read_exact(&mut head).expect("answer");
        assert_eq!(head[4], b'O', "negotiation answer");
    })
    .await
    .expect("join");
}

#[tokio::test]
async fn listen_fd_takes_listeners_and_refuses_anything_else() {
    init_logs();
    // A listening TCP socket as a bare descriptor is served.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let server = Server::builder()
        .listen_fd(OwnedFd::from(l))
        .expect("a listening socket")
        .handle_signals(false)
        .bind()
        .await
        .expect("bind");
    let handle = server.shutdown_handle();
    let task = tokio::spawn(async move { server.serve(|| Tagger).await.expect("serve") });
    assert_served(addr).await;
    handle.shutdown();
    task.await.expect("join");

    // A connected (not listening) socket, and a file, are refused with the reason.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let connected =
        std::net::TcpStream::connect(peer.local_addr().expect("addr")).expect("connect");
    let refused = |fd: OwnedFd| match Inherited::from_fd(fd) {
        Err(Error::Address { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(refused(OwnedFd::from(connected)).contains("not listening"));
    let file = std::fs::File::open("/dev/null").expect("open");
    assert!(refused(OwnedFd::from(file)).contains("not a socket"));
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    assert!(refused(OwnedFd::from(udp)).contains("not a stream socket"));
}

#[tokio::test]
async fn no_listen_address_nor_listener_is_an_error() {
    match Server::builder().bind().await {
        Err(Error::Address { reason, .. }) => assert!(reason.contains("no listen address")),
        other => panic!("expected an address error, got {other:?}"),
    }
}
