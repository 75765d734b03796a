//! Each example binary, started with its CLI flags on a unix socket, driven through whole
//! milter sessions by an independent MTA-side peer (indymilter-test, GPL, test-only).

mod support;
use support::{Running, start};

use std::process::Command;
use std::time::Duration;

use indymilter_test::{Actions, ProtoOpts, Status, TestConnection, TestError};

/// Each event with its "do not send" and "do not wait for a reply" bits.
const EVENTS: [(&str, ProtoOpts, ProtoOpts); 9] = [
    ("connect", ProtoOpts::NO_CONNECT, ProtoOpts::NOREPLY_CONNECT),
    ("helo", ProtoOpts::NO_HELO, ProtoOpts::NOREPLY_HELO),
    ("mail", ProtoOpts::NO_MAIL, ProtoOpts::NOREPLY_MAIL),
    ("rcpt", ProtoOpts::NO_RCPT, ProtoOpts::NOREPLY_RCPT),
    ("data", ProtoOpts::NO_DATA, ProtoOpts::NOREPLY_DATA),
    ("header", ProtoOpts::NO_HEADER, ProtoOpts::NOREPLY_HEADER),
    ("eoh", ProtoOpts::NO_EOH, ProtoOpts::NOREPLY_EOH),
    ("body", ProtoOpts::NO_BODY, ProtoOpts::NOREPLY_BODY),
    ("unknown", ProtoOpts::NO_UNKNOWN, ProtoOpts::NOREPLY_UNKNOWN),
];

/// Negotiates with the example (the client offers every option), checks that exactly
/// the events outside `wanted` were negotiated away, not sent (`NO_*`) and not waited
/// for (`NR_*`), and that the client then refuses to send each of them: the example
/// cannot receive them.
async fn open(r: &Running, wanted: &[&str]) -> TestConnection {
    let mut c = TestConnection::configure()
        .read_timeout(Duration::from_secs(10))
        .write_timeout(Duration::from_secs(10))
        .open_unix(&r.socket)
        .await
        .expect("negotiate");
    let opts = c.negotiated_opts();
    for (name, no, no_reply) in EVENTS {
        let away = !wanted.contains(&name);
        assert_eq!(opts.contains(no), away, "{name}: {opts:?}");
        assert_eq!(opts.contains(no_reply), away, "{name}: {opts:?}");
        if !away {
            continue;
        }
        let sent = match name {
            "connect" => c.connect("client.example", [192, 0, 2, 1]).await,
            "helo" => c.helo("client.example").await,
            "mail" => c.mail(["<a@example.org>"]).await,
            "rcpt" => c.rcpt(["<b@example.org>"]).await,
            "data" => c.data().await,
            "header" => c.header("Subject", "hi").await,
            "eoh" => c.eoh().await,
            "body" => c.body("text\r\n").await,
            _ => c.unknown("VRFY x").await,
        };
        assert!(
            matches!(sent, Err(TestError::MilterUsage)),
            "{name} negotiated away but sent: {sent:?}"
        );
    }
    c
}

fn msg(s: &Status) -> String {
    match s {
        Status::Reject { message: Some(m) } | Status::Tempfail { message: Some(m) } => {
            m.to_string_lossy().into_owned()
        }
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn add_header_adds_the_configured_header_to_each_message() {
    let r = start(
        env!("CARGO_BIN_EXE_add-header"),
        &["--name", "X-Scanned-By", "--value", "example milter"],
    );
    // It implements end of message only: nothing else is sent.
    let mut c = open(&r, &[]).await;
    assert_eq!(c.negotiated_actions(), Actions::ADD_HEADER);
    for _ in 0..2 {
        let (actions, status) = c.eom().await.expect("eom");
        assert_eq!(status, Status::Continue);
        assert!(
            actions.has_add_header("X-Scanned-By", "example milter"),
            "{actions:?}"
        );
    }
    c.close().await.expect("close");
}

#[tokio::test]
async fn add_header_refuses_an_invalid_header_name_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_add-header"))
        .args([
            "--socket",
            "inet:127.0.0.1:0",
            "--name",
            "Bad Name",
            "--value",
            "x",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("header name"), "{err}");
}

#[tokio::test]
async fn reject_sender_refuses_sender_and_recipient_with_the_multiline_reply() {
    let r = start(
        env!("CARGO_BIN_EXE_reject-sender"),
        &[
            "--sender",
            "spam@bad.example",
            "--sender",
            "@worse.example",
            "--recipient",
            "gone@example.org",
            "--code",
            "550",
            "--status",
            "5.7.1",
            "--text",
            "Not accepted here\\nSee the policy page",
        ],
    );
    let want = "550-5.7.1 Not accepted here\r\n550 5.7.1 See the policy page";
    // MAIL and RCPT only.
    let mut c = open(&r, &["mail", "rcpt"]).await;
    let s = c.mail(["<SPAM@bad.example>"]).await.expect("mail");
    assert_eq!(msg(&s), want);
    c.abort().await.expect("abort");
    let s = c
        .mail(["<anyone@worse.example>", "SIZE=100"])
        .await
        .expect("mail");
    assert_eq!(msg(&s), want);
    c.abort().await.expect("abort");
    // A good sender passes; a listed recipient is refused alone, the others pass.
    assert_eq!(
        c.mail(["<ok@example.org>"]).await.expect("mail"),
        Status::Continue
    );
    assert_eq!(
        msg(&c.rcpt(["<gone@example.org>"]).await.expect("rcpt")),
        want
    );
    assert_eq!(
        c.rcpt(["<here@example.org>"]).await.expect("rcpt"),
        Status::Continue
    );
    let (actions, status) = c.eom().await.expect("eom");
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty());
    c.close().await.expect("close");
}

#[tokio::test]
async fn reject_sender_refuses_a_bad_reply_code_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_reject-sender"))
        .args(["--socket", "inet:127.0.0.1:0", "--code", "250"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("250"));
}

#[tokio::test]
async fn body_rules_rewrites_or_quarantines() {
    let r = start(
        env!("CARGO_BIN_EXE_body-rules"),
        &["--replace", "colour=color", "--quarantine-word", "casino"],
    );
    // Body chunks only.
    let mut c = open(&r, &["body"]).await;
    assert_eq!(
        c.negotiated_actions(),
        Actions::REPLACE_BODY | Actions::QUARANTINE
    );
    // Rewrite: the body arrives in two chunks, the word split across them.
    c.body("my favourite col").await.expect("body");
    c.body("our is blue\r\nthe colour!\r\n")
        .await
        .expect("body");
    let (actions, status) = c.eom().await.expect("eom");
    assert_eq!(status, Status::Continue);
    assert!(
        actions.has_replaced_body(&b"my favourite color is blue\r\nthe color!\r\n"[..]),
        "{actions:?}"
    );
    // Quarantine.
    c.body("visit our casino\r\n").await.expect("body");
    let (actions, status) = c.eom().await.expect("eom");
    assert_eq!(status, Status::Continue);
    assert!(
        actions.has_quarantine("body contains \"casino\""),
        "{actions:?}"
    );
    // An aborted message leaves nothing behind for the next one.
    c.body("colour casino").await.expect("body");
    c.abort().await.expect("abort");
    c.body("plain\r\n").await.expect("body");
    let (actions, status) = c.eom().await.expect("eom");
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty(), "{actions:?}");
    c.close().await.expect("close");
}
