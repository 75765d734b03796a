//! The MTA client against the crate's own server driver, through the `testing` pair:
//! both sides of the protocol agree on negotiation (NR_*, NO_*, SKIP, leading space,
//! macro lists), refusals, modifications and several messages per connection.
#![cfg(feature = "testing")]

use std::sync::{Arc, Mutex};

use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::testing::{Transcript, pair};
use milter_core::{Actions, Bytes, Envelope, ProtocolFlags, Stage, Verdict};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn tx() -> Transcript {
    Transcript::new()
        .from("alice@example.test")
        .to("bob@example.test")
        .header("From", "Alice <alice@example.test>")
        .header("Subject", "hello")
}

/// Records what it saw; refuses one sender; signs-like edits at EOM.
#[derive(Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<String>>>,
    leading_space: bool,
}

impl Milter for Recorder {
    fn negotiate(&mut self, _offer: &Offer) -> Request {
        let mut r = Request::new()
            .with_actions(Actions::ADD_HEADERS | Actions::CHANGE_HEADERS | Actions::CHANGE_BODY)
            .with_optional_protocol(ProtocolFlags::NR_HEADER | ProtocolFlags::SKIP)
            .with_macros(Stage::MailFrom, ["{auth_authen}", "{mail_addr}"]);
        if self.leading_space {
            r = r.with_protocol(ProtocolFlags::HEADER_LEADING_SPACE);
        }
        r
    }
    async fn mail(&mut self, ctx: &Context<'_>, from: &Envelope) -> Verdict {
        self.seen.lock().unwrap().push(format!(
            "mail {} auth={:?}",
            from.address_str(),
            ctx.macro_str("auth_authen")
        ));
        if from.address_str() == "spammer@example.net" {
            Verdict::reply(550, "5.7.1", "go away")
        } else {
            Verdict::Continue
        }
    }
    async fn header(&mut self, _ctx: &Context<'_>, name: Bytes, value: Bytes) -> Verdict {
        self.seen.lock().unwrap().push(format!(
            "header {}:{}",
            String::from_utf8_lossy(&name),
            String::from_utf8_lossy(&value)
        ));
        Verdict::Continue
    }
    async fn body(&mut self, _ctx: &Context<'_>, chunk: Bytes) -> Verdict {
        self.seen
            .lock()
            .unwrap()
            .push(format!("body {}", chunk.len()));
        Verdict::Skip
    }
    async fn eom(&mut self, _ctx: &Context<'_>, actions: &mut EomActions) -> Verdict {
        let sp = if self.leading_space { " " } else { "" };
        actions
            .insert_header(0, "X-Top", format!("{sp}first\n\tfolded"))
            .unwrap();
        actions
            .change_header("subject", 1, format!("{sp}changed"))
            .unwrap();
        Verdict::Continue
    }
}

#[test]
fn modifications_round_trip_through_server_and_client() {
    rt().block_on(async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let mut p = pair(move || Recorder {
            seen: s2.clone(),
            leading_space: false,
        })
        .await
        .unwrap();
        let body: Vec<u8> = b"line\n".repeat(20_000); // 120000 bytes with CRLF: 2 chunks
        let t = tx().auth("alice").body(&body).build();
        let out = p.send(&t).await.unwrap();
        out.assert_accepted()
            .assert_header_added("X-Top")
            .assert_header_changed("Subject");
        assert!(out.body_skipped, "the milter asked to SKIP");
        let m = out.modified_bytes();
        let text = String::from_utf8_lossy(&m);
        // A changed header is written with the name as the milter spelled it (Postfix).
        assert!(
            text.starts_with("X-Top: first\r\n\tfolded\r\nFrom: Alice <alice@example.test>\r\nsubject: changed\r\n\r\nline\n"),
            "{}",
            &text[..120]
        );
        p.finish().await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0], "mail alice@example.test auth=Some(\"alice\")");
        // Without leading space the milter sees values without the space after the colon.
        assert_eq!(seen[1], "header From:Alice <alice@example.test>");
        // SKIP after the first body chunk: only one BODY reached the handler.
        assert_eq!(seen.iter().filter(|s| s.starts_with("body")).count(), 1);
    });
}

#[test]
fn leading_space_is_kept_both_ways_when_negotiated() {
    rt().block_on(async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let mut p = pair(move || Recorder {
            seen: s2.clone(),
            leading_space: true,
        })
        .await
        .unwrap();
        let out = p.send(&tx().body("hi\r\n").build()).await.unwrap();
        assert!(out.leading_space);
        let m = out.modified_bytes();
        assert!(
            m.starts_with(b"X-Top: first\r\n\tfolded\r\nFrom: Alice"),
            "{}",
            String::from_utf8_lossy(&m)
        );
        p.finish().await.unwrap();
        assert_eq!(
            seen.lock().unwrap()[1],
            "header From: Alice <alice@example.test>"
        );
    });
}

#[test]
fn a_refusal_ends_only_that_message_and_the_connection_carries_on() {
    rt().block_on(async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let mut p = pair(move || Recorder {
            seen: s2.clone(),
            leading_space: false,
        })
        .await
        .unwrap();
        let bad = p
            .send(&tx().from("spammer@example.net").build())
            .await
            .unwrap();
        bad.assert_reply("550 5.7.1 go away");
        assert_eq!(bad.final_stage, "MAIL");
        assert!(bad.rejected());
        bad.assert_unmodified();
        let good = p.send(&tx().body("ok\r\n").build()).await.unwrap();
        good.assert_accepted();
        let again = p.send(&tx().body("ok\r\n").build()).await.unwrap();
        again.assert_accepted();
        assert_eq!(p.client().unwrap().messages(), 3);
        p.finish().await.unwrap();
    });
}

struct Default_;
impl Milter for Default_ {}

#[test]
fn a_milter_that_asks_for_nothing_accepts_unchanged() {
    rt().block_on(async {
        let mut p = pair(|| Default_).await.unwrap();
        let raw = b"Subject: x\nOdd: lf only\r\n\r\nbody\n".to_vec();
        let out = p
            .send(&Transcript::new().raw_message(raw.clone()).build())
            .await
            .unwrap();
        out.assert_accepted()
            .assert_verdict(&Verdict::Continue)
            .assert_unmodified();
        assert_eq!(out.modified_bytes(), raw);
        p.finish().await.unwrap();
    });
}
