//! Interoperability, the other direction: a milter written with an independent library
//! (indymilter, GPL, dev-dependency only) driven by milter-core's MTA-side client.
//!
//! Proves that our client negotiates modifications and macros with a foreign milter, sends
//! every SMTP stage in a form that milter parses (connect, HELO, MAIL, RCPT, headers with
//! folds, body, end of message, ABORT between messages, QUIT), decodes its header
//! modifications and its custom multi-line SMTP reply, and applies the modifications to
//! the message bytes as Postfix would.

use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use indymilter::{
    Actions as IActions, Callbacks, Config, ContextActions, MacroStage, SetErrorReply,
    SocketInfo as ISocketInfo, Status,
};
use milter_core::client::{ClientConfig, Envelope, MilterClient};
use milter_core::{Actions, Modification, SmtpReply, Stage, Verdict};

/// What the indymilter milter saw, in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// Per-message state kept by the indymilter milter.
#[derive(Default)]
struct Msg {
    sender_macro: String,
    subject: Option<String>,
}

fn text(c: &CString) -> String {
    c.to_string_lossy().into_owned()
}

fn log(seen: &Seen, line: String) {
    seen.lock().expect("lock").push(line);
}

/// An indymilter milter: asks for header add/change and the `{mail_addr}` macro; at end of
/// message adds `X-Indy: seen <{mail_addr}>` and tags the Subject, unless the subject says
/// "reject me": then a custom two-line 550 reply.
fn indy_callbacks(seen: &Seen) -> Callbacks<Msg> {
    let s = seen.clone();
    let (s1, s2, s3, s4, s5, s6, s7, s8, s9) = (
        seen.clone(),
        seen.clone(),
        seen.clone(),
        seen.clone(),
        seen.clone(),
        seen.clone(),
        seen.clone(),
        seen.clone(),
        seen.clone(),
    );
    Callbacks::new()
        .on_negotiate(move |cx, actions, _opts| {
            log(&s, format!("negotiate offered {actions:?}"));
            cx.requested_actions =
                IActions::ADD_HEADER | IActions::CHANGE_HEADER | IActions::REQUEST_MACROS;
            cx.requested_macros.insert(
                MacroStage::Mail,
                CString::new("{mail_addr} {client_addr}").expect("no NUL"),
            );
            Box::pin(async { Status::Continue })
        })
        .on_connect(move |_cx, host, socket| {
            let addr = match socket {
                ISocketInfo::Inet(a) => a.to_string(),
                other => format!("{other:?}"),
            };
            log(&s1, format!("connect {} {addr}", text(&host)));
            Box::pin(async { Status::Continue })
        })
        .on_helo(move |_cx, helo| {
            log(&s2, format!("helo {}", text(&helo)));
            Box::pin(async { Status::Continue })
        })
        .on_mail(move |cx, args| {
            let macro_value = cx
                .macros
                .get(c"{mail_addr}")
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default();
            let client_addr = cx
                .macros
                .get(c"{client_addr}")
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default();
            let args: Vec<String> = args.iter().map(text).collect();
            log(
                &s3,
                format!("mail {args:?} mail_addr={macro_value} client_addr={client_addr}"),
            );
            cx.data = Some(Msg {
                sender_macro: macro_value,
                subject: None,
            });
            Box::pin(async { Status::Continue })
        })
        .on_rcpt(move |_cx, args| {
            let args: Vec<String> = args.iter().map(text).collect();
            log(&s4, format!("rcpt {args:?}"));
            Box::pin(async { Status::Continue })
        })
        .on_header(move |cx, name, value| {
            log(&s5, format!("header {}={:?}", text(&name), text(&value)));
            if name.as_bytes().eq_ignore_ascii_case(b"subject")
                && let Some(m) = cx.data.as_mut()
            {
                m.subject = Some(text(&value));
            }
            Box::pin(async { Status::Continue })
        })
        .on_eoh(move |_cx| {
            log(&s6, "eoh".into());
            Box::pin(async { Status::Continue })
        })
        .on_body(move |_cx, chunk| {
            log(
                &s7,
                format!("body {:?}", String::from_utf8_lossy(&chunk).into_owned()),
            );
            Box::pin(async { Status::Continue })
        })
        .on_eom(move |cx| {
            let seen = s8.clone();
            Box::pin(async move {
                let msg = cx.data.take().unwrap_or_default();
                let subject = msg.subject.unwrap_or_default();
                log(&seen, format!("eom subject={subject:?}"));
                if subject == "reject me" {
                    if cx
                        .reply
                        .set_error_reply("550", Some("5.7.1"), ["Policy says no", "Second line"])
                        .is_err()
                    {
                        return Status::Tempfail;
                    }
                    return Status::Reject;
                }
                let value = format!("seen <{}>", msg.sender_macro);
                if cx.actions.add_header("X-Indy", value).await.is_err()
                    || cx
                        .actions
                        .change_header("Subject", 1, Some(format!("[indy] {subject}")))
                        .await
                        .is_err()
                {
                    return Status::Tempfail;
                }
                Status::Continue
            })
        })
        .on_abort(move |_cx| {
            log(&s9, "abort".into());
            Box::pin(async { Status::Continue })
        })
}

const MESSAGE_1: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: bob@example.net\r\n\
Subject: hello there\r\n\
X-Folded: first\r\n\tsecond\r\n\
\r\n\
Body line 1\r\n\
.line 2 starts with a dot\r\n";

const MESSAGE_2: &[u8] = b"From: Mallory <mallory@example.org>\r\n\
Subject: reject me\r\n\
\r\n\
spam\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_drives_an_indymilter_milter_through_two_messages() {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let milter = tokio::spawn(indymilter::run(
        listener,
        indy_callbacks(&seen),
        Config {
            connection_timeout: Duration::from_secs(30),
            ..Config::default()
        },
        stopped,
    ));

    let mut client = MilterClient::connect(&format!("inet:{addr}"), ClientConfig::default())
        .await
        .expect("negotiation with indymilter");
    let options = client.session().options().expect("negotiated").clone();
    assert_eq!(options.version, 6);
    assert_eq!(
        options.actions,
        Actions::ADD_HEADERS | Actions::CHANGE_HEADERS | Actions::SET_MACROS
    );
    let mail_list = options
        .macros
        .iter()
        .find(|m| m.stage == Stage::MailFrom)
        .map(|m| m.names.clone());
    assert_eq!(
        mail_list,
        Some(vec!["{mail_addr}".to_owned(), "{client_addr}".to_owned()])
    );

    let envelope = Envelope {
        client_addr: Some([192, 0, 2, 7].into()),
        client_port: 2525,
        client_name: Some("client.example".into()),
        helo: "client.example".into(),
        sender: "alice@example.org".into(),
        sender_args: vec!["SIZE=123".into()],
        recipients: vec!["bob@example.net".into(), "<carol@example.net>".into()],
        ..Envelope::default()
    };

    // Message 1: accepted with a header added and the Subject changed.
    let one = client.send(&envelope, MESSAGE_1).await.expect("message 1");
    assert_eq!(one.verdict, Verdict::Continue);
    assert_eq!(one.final_stage, "EOM");
    assert_eq!(
        one.modifications,
        vec![
            Modification::AddHeader {
                name: Bytes::from_static(b"X-Indy"),
                value: Bytes::from_static(b"seen <alice@example.org>"),
            },
            Modification::ChangeHeader {
                index: 1,
                name: Bytes::from_static(b"Subject"),
                value: Bytes::from_static(b"[indy] hello there"),
            },
        ]
    );
    assert!(one.rejected_recipients.is_empty());
    let want: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: bob@example.net\r\n\
Subject: [indy] hello there\r\n\
X-Folded: first\r\n\tsecond\r\n\
X-Indy: seen <alice@example.org>\r\n\
\r\n\
Body line 1\r\n\
.line 2 starts with a dot\r\n";
    assert_eq!(
        String::from_utf8_lossy(&one.modified_bytes()),
        String::from_utf8_lossy(want)
    );

    // Message 2 on the same connection (ABORT first): refused with the custom reply.
    let mallory = Envelope {
        sender: "<mallory@example.org>".into(),
        sender_args: Vec::new(),
        recipients: vec!["bob@example.net".into()],
        ..envelope.clone()
    };
    let two = client.send(&mallory, MESSAGE_2).await.expect("message 2");
    assert_eq!(
        two.verdict,
        Verdict::Reply(
            SmtpReply::new(550, Some("5.7.1"), "Policy says no\nSecond line").expect("reply")
        )
    );
    assert_eq!(two.final_stage, "EOM");
    assert!(two.rejected());
    assert_eq!(
        two.reply_text().as_deref(),
        Some("550 5.7.1 Policy says no\n550 5.7.1 Second line")
    );
    assert!(two.modifications.is_empty(), "{:?}", two.modifications);
    assert_eq!(two.modified_bytes(), MESSAGE_2);
    client.quit().await.expect("quit");

    // What the foreign milter parsed out of our frames.
    let want = vec![
        format!("negotiate offered {:?}", IActions::all()),
        "connect client.example 192.0.2.7:2525".to_owned(),
        "helo client.example".to_owned(),
        r#"mail ["<alice@example.org>", "SIZE=123"] mail_addr=alice@example.org client_addr=192.0.2.7"#.to_owned(),
        r#"rcpt ["<bob@example.net>"]"#.to_owned(),
        r#"rcpt ["<carol@example.net>"]"#.to_owned(),
        r#"header From="Alice <alice@example.org>""#.to_owned(),
        r#"header To="bob@example.net""#.to_owned(),
        r#"header Subject="hello there""#.to_owned(),
        "header X-Folded=\"first\\n\\tsecond\"".to_owned(),
        "eoh".to_owned(),
        "body \"Body line 1\\r\\n.line 2 starts with a dot\\r\\n\"".to_owned(),
        r#"eom subject="hello there""#.to_owned(),
        // Our ABORT between the messages reaches it after end of message, where (like
        // libmilter) it has no message to abort, so no callback.
        r#"mail ["<mallory@example.org>"] mail_addr=mallory@example.org client_addr=192.0.2.7"#.to_owned(),
        r#"rcpt ["<bob@example.net>"]"#.to_owned(),
        r#"header From="Mallory <mallory@example.org>""#.to_owned(),
        r#"header Subject="reject me""#.to_owned(),
        "eoh".to_owned(),
        "body \"spam\\r\\n\"".to_owned(),
        r#"eom subject="reject me""#.to_owned(),
    ];
    assert_eq!(*seen.lock().expect("lock"), want);

    let _ = stop.send(());
    milter.await.expect("join").expect("indymilter ran cleanly");
}
