//! One write per batch: end of message's modifications and verdict leave in a single
//! write, observed by counting the writes on the connection's stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context as TaskContext, Poll};

use bytes::{Bytes, BytesMut};
use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::proto::OptNeg;
use milter_core::server::{ConnectionConfig, serve_connection};
use milter_core::wire::FrameDecoder;
use milter_core::{
    Actions, Command, ConnectInfo, Envelope, Modification, ProtocolFlags, Reply, SocketInfo,
    Verdict,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// Records the size of every successful write.
struct CountingIo {
    inner: DuplexStream,
    writes: Arc<Mutex<Vec<usize>>>,
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.writes.lock().expect("lock").push(*n);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Makes many modifications at once, including a body larger than one frame.
struct Busy;

const NEW_BODY_LEN: usize = 150_000;

impl Milter for Busy {
    fn negotiate(&mut self, _offer: &Offer) -> Request {
        Request::new().with_actions(
            Actions::ADD_HEADERS
                | Actions::CHANGE_HEADERS
                | Actions::CHANGE_BODY
                | Actions::QUARANTINE,
        )
    }

    async fn eom(&mut self, _ctx: &Context<'_>, a: &mut EomActions) -> Verdict {
        let ok = a.add_header("X-One", "1").is_ok()
            && a.insert_header(0, "X-Top", "t").is_ok()
            && a.change_header("Subject", 1, "changed").is_ok()
            && a.delete_header("X-Old", 1).is_ok()
            && a.quarantine("looks odd").is_ok()
            && a.replace_body(&vec![b'x'; NEW_BODY_LEN]).is_ok();
        if ok {
            Verdict::Accept
        } else {
            Verdict::Tempfail
        }
    }
}

#[tokio::test]
async fn eom_modifications_and_verdict_leave_in_one_write() {
    let (client, server) = tokio::io::duplex(4 << 20);
    let writes = Arc::new(Mutex::new(Vec::new()));
    let io = CountingIo {
        inner: server,
        writes: writes.clone(),
    };
    let conn =
        tokio::spawn(
            async move { serve_connection(io, &|| Busy, &ConnectionConfig::default()).await },
        );
    let mut client = client;
    let mut buf = BytesMut::new();
    let decoder = FrameDecoder::new(1 << 20);

    async fn send(c: &mut DuplexStream, cmd: Command) {
        let mut out = BytesMut::new();
        cmd.encode(&mut out);
        c.write_all(&out).await.expect("write");
    }
    async fn replies_until_verdict(
        c: &mut DuplexStream,
        buf: &mut BytesMut,
        d: &FrameDecoder,
    ) -> Vec<Reply> {
        let mut got = Vec::new();
        loop {
            while let Some(f) = d.decode(buf).expect("frame") {
                let r = Reply::decode(f).expect("reply");
                let done = matches!(r, Reply::Verdict(_) | Reply::OptNeg(_));
                got.push(r);
                if done {
                    return got;
                }
            }
            assert!(c.read_buf(buf).await.expect("read") > 0, "EOF");
        }
    }

    send(
        &mut client,
        Command::OptNeg(OptNeg {
            version: 6,
            actions: Actions::from_bits_truncate(0x1FF),
            protocol: ProtocolFlags::POSTFIX_V6,
        }),
    )
    .await;
    replies_until_verdict(&mut client, &mut buf, &decoder).await;
    let env = |a: &'static [u8]| Envelope {
        address: Bytes::from_static(a),
        args: vec![],
    };
    for cmd in [
        Command::Connect(ConnectInfo {
            hostname: Bytes::from_static(b"[192.0.2.1]"),
            socket: SocketInfo::Unknown,
        }),
        Command::Mail(env(b"<a@example.org>")),
        Command::Rcpt(env(b"<b@example.org>")),
        Command::Header {
            name: Bytes::from_static(b"Subject"),
            value: Bytes::from_static(b"hi"),
        },
        Command::EndOfHeaders,
        Command::Body(Bytes::from_static(b"hello\r\n")),
    ] {
        send(&mut client, cmd).await;
        let r = replies_until_verdict(&mut client, &mut buf, &decoder).await;
        assert_eq!(r, vec![Reply::Verdict(Verdict::Continue)]);
    }
    let before = writes.lock().expect("lock").len();
    send(&mut client, Command::EndOfMessage(Bytes::new())).await;
    let replies = replies_until_verdict(&mut client, &mut buf, &decoder).await;
    let after: Vec<usize> = writes.lock().expect("lock")[before..].to_vec();

    // 5 header/quarantine frames + 3 body chunks (65535-byte send cap) + the verdict.
    let body: usize = replies
        .iter()
        .filter_map(|r| match r {
            Reply::Modification(Modification::ReplaceBody(b)) => Some(b.len()),
            _ => None,
        })
        .sum();
    assert_eq!(body, NEW_BODY_LEN);
    assert_eq!(
        replies.len(),
        9,
        "{:?}",
        replies.iter().map(Reply::code).collect::<Vec<_>>()
    );
    assert_eq!(replies.last(), Some(&Reply::Verdict(Verdict::Accept)));
    let wire_len: usize = replies
        .iter()
        .map(|r| {
            let mut b = BytesMut::new();
            r.encode(&mut b);
            b.len()
        })
        .sum();
    assert_eq!(
        after,
        vec![wire_len],
        "one write carrying every frame of the batch"
    );

    send(&mut client, Command::Quit).await;
    conn.await.expect("join").expect("clean close");
}
