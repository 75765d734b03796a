//! milter-core's client applies header modifications the way a real Postfix 3.7 does:
//! a milter (milter-core's server) sends fixed CHGHEADER/INSHEADER/ADDHEADER sequences to a
//! real Postfix, and the header block Postfix delivers must equal what
//! `client::Message::apply_all` makes of the same message and sequence, given Postfix's
//! own `Received:` as the hidden header (the milter never sees it, INSHEADER counts it).
//! This checks the hand-written expectations of `milter-core/tests/mta_apply.rs` against
//! the MTA they describe.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use milter_core::client::Message;
use milter_core::handler::{Context, EomActions, Milter};
use milter_core::negotiate::{Offer, Request};
use milter_core::server::{BoundAddr, Server};
use milter_core::{Actions, Modification, Verdict};
use stack_tests::mail::smtp_send;
use stack_tests::postfix::Postfix;

const T: Duration = Duration::from_secs(60);

fn change(index: u32, name: &str, value: &str) -> Modification {
    Modification::ChangeHeader {
        index,
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn insert(index: u32, name: &str, value: &str) -> Modification {
    Modification::InsertHeader {
        index,
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn add(name: &str, value: &str) -> Modification {
    Modification::AddHeader {
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

/// The sequences, by `X-Case:`; each covers a rule `mta_apply.rs` states.
fn cases() -> Vec<(&'static str, Vec<Modification>)> {
    vec![
        // Index 0 lands above Postfix's Received:; later indexes count it and the new
        // header; CHGHEADER of a Received: the milter never saw appends.
        (
            "hidden-received",
            vec![
                insert(0, "X-Top", "top"),
                insert(3, "X-Three", "three"),
                change(1, "Received", "changed"),
            ],
        ),
        // Occurrences counted per name, case-insensitively, from 1; an empty value deletes;
        // past the last occurrence appends.
        (
            "occurrences",
            vec![
                change(2, "X-A", "second changed"),
                change(1, "X-A", ""),
                change(9, "X-A", "appended"),
                change(1, "X-Missing", ""),
            ],
        ),
        // ADDHEADER appends (an LF fold in the value), INSHEADER past the end appends.
        (
            "append",
            vec![
                add("X-Long", "a;\n\tb"),
                change(1, "Subject", "new subject"),
                insert(100, "X-End", "end"),
            ],
        ),
        // CHGHEADER index 0 is taken as 1; INSHEADER 1 goes right below the Received:.
        (
            "index-zero",
            vec![change(0, "Subject", "zero"), insert(1, "X-One", "one")],
        ),
    ]
}

fn message(case: &str) -> Vec<u8> {
    format!(
        "X-Case: {case}\r\nSubject: apply {case}\r\nX-A: 1\r\nx-a: 2\r\nFrom: a@remote.test\r\n\
         To: other@example.test\r\nDate: Fri, 28 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <apply-{case}@remote.test>\r\nX-A: 3\r\n  folded\r\n\r\nbody\r\n"
    )
    .into_bytes()
}

/// Sends the sequence of the message's `X-Case:` at end of message.
struct Sequencer {
    cases: Arc<HashMap<String, Vec<Modification>>>,
    case: String,
}

impl Milter for Sequencer {
    fn negotiate(&mut self, _offer: &Offer) -> Request {
        Request::new().with_actions(Actions::ADD_HEADERS | Actions::CHANGE_HEADERS)
    }

    async fn header(&mut self, _ctx: &Context<'_>, name: Bytes, value: Bytes) -> Verdict {
        if name.eq_ignore_ascii_case(b"x-case") {
            self.case = String::from_utf8_lossy(&value).trim().to_string();
        }
        Verdict::Continue
    }

    async fn eom(&mut self, _ctx: &Context<'_>, a: &mut EomActions) -> Verdict {
        let Some(mods) = self.cases.get(&self.case) else {
            return Verdict::Tempfail;
        };
        for m in mods {
            let r = match m.clone() {
                Modification::AddHeader { name, value } => a.add_header(name, value),
                Modification::InsertHeader { index, name, value } => {
                    a.insert_header(index, name, value)
                }
                Modification::ChangeHeader { index, name, value } if value.is_empty() => {
                    a.delete_header(name, index)
                }
                Modification::ChangeHeader { index, name, value } => {
                    a.change_header(name, index, value)
                }
                _ => return Verdict::Tempfail,
            };
            if r.is_err() {
                return Verdict::Tempfail;
            }
        }
        Verdict::Continue
    }
}

/// The header fields of `msg` (LF line endings), each with its continuation lines.
fn fields(msg: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(msg).replace("\r\n", "\n");
    let head = text.split("\n\n").next().unwrap_or_default().to_string();
    let mut out: Vec<String> = Vec::new();
    for line in head.lines() {
        match out.last_mut() {
            Some(f) if line.starts_with([' ', '\t']) => {
                f.push('\n');
                f.push_str(line);
            }
            _ => out.push(line.to_string()),
        }
    }
    out
}

#[test]
fn postfix_applies_header_modifications_like_the_client() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cases = cases();
    let by_case: Arc<HashMap<String, Vec<Modification>>> = Arc::new(
        cases
            .iter()
            .map(|(c, m)| (c.to_string(), m.clone()))
            .collect(),
    );
    let server = rt.block_on(
        Server::builder()
            .listen("inet:127.0.0.1:0")?
            .handle_signals(false)
            .bind(),
    )?;
    let Some(BoundAddr::Tcp(addr)) = server.local_addrs().first().cloned() else {
        anyhow::bail!("no TCP address");
    };
    let shutdown = server.shutdown_handle();
    let task = rt.spawn(server.serve(move || Sequencer {
        cases: by_case.clone(),
        case: String::new(),
    }));
    let pf = Postfix::builder()
        .mx_milters(&format!("inet:{addr}"))
        .start()?;
    for (case, _) in &cases {
        let r = smtp_send(
            pf.mx_port(),
            "a@remote.test",
            "other@example.test",
            &message(case),
        )?;
        anyhow::ensure!(r.code == 250, "{case}: {r:?}");
    }
    let delivered = pf
        .maildir("example.test", "other")
        .wait_for(cases.len(), T)?;
    for (case, mods) in &cases {
        let got = delivered
            .iter()
            .map(|m| fields(m))
            .find(|f| f.iter().any(|l| *l == format!("X-Case: {case}")))
            .unwrap_or_else(|| panic!("{case} not delivered"));
        // What local(8) puts on top at delivery, after the milter.
        let got: Vec<String> = got
            .into_iter()
            .skip_while(|f| {
                ["Return-Path:", "X-Original-To:", "Delivered-To:"]
                    .iter()
                    .any(|p| f.starts_with(p))
            })
            .collect();
        // Postfix's own Received: (from the SMTP client's EHLO name), hidden from the milter.
        let received = got
            .iter()
            .find(|f| f.starts_with("Received: from client.remote.test"))
            .unwrap_or_else(|| panic!("{case}: no Received: from Postfix in {got:#?}"));
        let hidden = format!("{}\r\n", received.replace('\n', "\r\n"));
        let mut m = Message::parse(&message(case)).with_hidden_header(hidden.as_bytes());
        // Postfix does not ask for SMFIP_HDR_LEADSPC here: no leading space.
        m.apply_all(mods, false);
        let want = fields(&m.to_bytes());
        assert_eq!(
            got, want,
            "{case}: Postfix (left) and the client's apply (right) differ"
        );
    }
    shutdown.shutdown();
    rt.block_on(task)??;
    Ok(())
}
