//! The ~20-line doc example (`examples/reject_sender.rs`) runs as a real process and
//! refuses exactly the configured sender.

mod server_support;

use std::process::{Child, Command};
use std::time::Duration;

use bytes::Bytes;
use milter_core::{Envelope, Reply, SmtpReply, Verdict};
use server_support::Raw;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cargo test` builds the package's examples into `target/<profile>/examples/`.
fn example_path() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    profile_dir.join("examples").join("reject_sender")
}

#[tokio::test]
async fn doc_example_rejects_the_configured_sender() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _child = Kill(
        Command::new(example_path())
            .args([format!("inet:{addr}"), "bad@example.net".into()])
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}; plain `cargo test` builds the examples, `--test` alone does not",
                    example_path().display()
                )
            }),
    );
    let mut ready = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "example did not listen on {addr}");
    let mut c = Raw::connect(addr.parse().expect("addr")).await;
    c.handshake().await;
    let mail = |a: &'static str| {
        milter_core::Command::Mail(Envelope {
            address: Bytes::from_static(a.as_bytes()),
            args: vec![],
        })
    };
    c.send(&mail("<BAD@example.net>")).await;
    let want = SmtpReply::new(550, Some("5.7.1"), "Sender refused").expect("reply");
    assert_eq!(c.reply().await, Some(Reply::Verdict(Verdict::Reply(want))));
    c.send(&mail("<good@example.net>")).await;
    assert_eq!(c.reply().await, Some(Reply::Verdict(Verdict::Continue)));
}
