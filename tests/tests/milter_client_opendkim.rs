//! milter-core's MTA-side client against a real OpenDKIM (signing mode):
//! - the DKIM-Signature it inserts, applied like Postfix, verifies with dkimpy;
//! - every corpus message replays without a protocol error, and the result is the
//!   original byte for byte once the inserted headers are taken out;
//! - load mode over 64 concurrent connections completes without errors.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use milter_core::Modification;
use milter_core::client::replay::{collect_inputs, run_load};
use milter_core::client::{ClientConfig, Envelope, MilterClient, Outcome, Transaction};
use milter_core::session::mta::to_crlf;
use stack_tests::dkim::{DkimKey, dkimpy_verify, opendkim_genkey};
use stack_tests::opendkim::OpenDkim;

type R = anyhow::Result<()>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn corpus_dir() -> PathBuf {
    // <repo>/tests -> <repo>/../shared/corpus/mail-parser
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/mail-parser")
}

fn key(dir: &std::path::Path) -> anyhow::Result<DkimKey> {
    opendkim_genkey("example.test", "mail", 2048, dir)
}

fn submission() -> Envelope {
    Envelope {
        sender: "user@example.test".into(),
        recipients: vec!["friend@remote.test".into()],
        auth_user: Some("user@example.test".into()),
        daemon_name: Some("ORIGINATING".into()),
        helo: "client.example.test".into(),
        ..Envelope::default()
    }
}

const MESSAGE: &[u8] = b"From: User <user@example.test>\r\n\
To: friend@remote.test\r\n\
Subject: milter-core client signing test\r\n\
Date: Thu, 27 Nov 2025 10:00:00 +0000\r\n\
Message-ID: <client-sign-1@example.test>\r\n\
X-Folded: first,\r\n\tsecond\r\n\
\r\n\
Hello,\r\n\
\r\n\
this body is signed by a real OpenDKIM driven by milter-core's client.\r\n";

/// The modified message with every inserted/added header taken out again, as the MTA
/// rendered it: must equal the original bytes.
fn strip_added(out: &Outcome, modified: &[u8]) -> Vec<u8> {
    let mut bytes = modified.to_vec();
    for m in &out.modifications {
        let (name, value) = match m {
            Modification::InsertHeader { name, value, .. }
            | Modification::AddHeader { name, value } => (name, value),
            other => panic!("OpenDKIM in signing mode sent an unexpected {other:?}"),
        };
        let mut field = name.to_vec();
        field.push(b':');
        if !out.leading_space {
            field.push(b' ');
        }
        field.extend_from_slice(&to_crlf(value));
        field.extend_from_slice(b"\r\n");
        let at = bytes
            .windows(field.len())
            .position(|w| w == field.as_slice())
            .unwrap_or_else(|| {
                panic!(
                    "added field {:?} not in the output",
                    String::from_utf8_lossy(&field)
                )
            });
        bytes.drain(at..at + field.len());
    }
    bytes
}

#[test]
fn opendkim_signature_applied_by_the_client_verifies_with_dkimpy() -> R {
    let dir = tempfile::tempdir()?;
    let key = key(dir.path())?;
    let od = OpenDkim::builder().key(&key).start()?;
    let rt = runtime();
    let (plain, hidden) = rt.block_on(async {
        let mut client = MilterClient::connect(&od.milter_spec(), ClientConfig::default()).await?;
        let plain = client.send(&submission(), MESSAGE).await?;
        // A second message on the same connection (ABORT between), this time with the MTA's
        // own Received: on top, hidden from the milter.
        client.quit().await?;
        let config = ClientConfig {
            hidden_received: Some(Bytes::from_static(
                b"Received: from client.example.test (localhost [127.0.0.1])\r\n\tby mx.example.test (Postfix) with ESMTPSA id 4ABCDEF\r\n",
            )),
            ..ClientConfig::default()
        };
        let mut client = MilterClient::connect(&od.milter_spec(), config).await?;
        let first = client.send(&submission(), MESSAGE).await?;
        let hidden = client.send(&submission(), MESSAGE).await?;
        assert_eq!(client.messages(), 2);
        first.assert_accepted().assert_header_added("DKIM-Signature");
        client.quit().await?;
        anyhow::Ok((plain, hidden))
    })?;

    plain
        .assert_accepted()
        .assert_header_added("DKIM-Signature");
    println!(
        "OpenDKIM negotiated leading space: {}; modifications: {:?}",
        plain.leading_space, plain.modifications
    );
    let signed = plain.modified_bytes();
    assert!(
        signed.starts_with(b"DKIM-Signature:"),
        "{}",
        String::from_utf8_lossy(&signed)
    );
    assert_eq!(strip_added(&plain, &signed), MESSAGE);
    let v = dkimpy_verify(&signed, &[key.record()])?;
    assert!(v.all_pass, "dkimpy: {}", v.output);

    // A tampered copy must fail: the verifier really checks.
    let tampered =
        String::from_utf8_lossy(&signed).replace("this body is signed", "this body is forged");
    let v = dkimpy_verify(tampered.as_bytes(), &[key.record()])?;
    assert!(!v.all_pass, "tampered copy verified: {}", v.output);

    // Insert index 0 lands above the hidden Received:, which the signature does not cover.
    hidden
        .assert_accepted()
        .assert_header_added("DKIM-Signature");
    let signed = hidden.modified_bytes();
    let text = String::from_utf8_lossy(&signed);
    let sig = text.find("DKIM-Signature:").expect("signature");
    let rcvd = text
        .find("Received: from client.example.test")
        .expect("received");
    assert!(sig < rcvd, "{text}");
    let v = dkimpy_verify(&signed, &[key.record()])?;
    assert!(v.all_pass, "dkimpy (with Received): {}", v.output);
    Ok(())
}

fn corpus() -> anyhow::Result<Vec<PathBuf>> {
    let dir = corpus_dir();
    let files = collect_inputs(std::slice::from_ref(&dir))?;
    anyhow::ensure!(!files.is_empty(), "no corpus messages in {}", dir.display());
    Ok(files)
}

/// OpenDKIM signing whatever the From domain, with example.test's key.
fn sign_everything(key: &DkimKey) -> anyhow::Result<OpenDkim> {
    let name = key.dns_name();
    OpenDkim::builder()
        .key_table_line(&format!(
            "{name} {}:{}:{}",
            key.domain,
            key.selector,
            key.private_key.display()
        ))
        .signing_table_line(&format!("* {name}"))
        .start()
}

#[test]
fn corpus_replays_through_opendkim_byte_exact_apart_from_the_modifications() -> R {
    let dir = tempfile::tempdir()?;
    let key = key(dir.path())?;
    let od = sign_everything(&key)?;
    let files = corpus()?;
    let rt = runtime();
    let outcomes = rt.block_on(async {
        let mut client = MilterClient::connect(&od.milter_spec(), ClientConfig::default()).await?;
        let mut outcomes = Vec::new();
        for f in &files {
            let bytes = std::fs::read(f)?;
            let out = client
                .send(&submission(), &bytes)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            outcomes.push((f.clone(), bytes, out));
        }
        client.quit().await?;
        anyhow::Ok(outcomes)
    })?;
    let (mut signed, mut verified, mut refused) = (0, 0, 0);
    for (f, original, out) in &outcomes {
        let modified = out.modified_bytes();
        assert_eq!(
            strip_added(out, &modified),
            *original,
            "{}: not byte-exact apart from the modifications",
            f.display()
        );
        if out.added_header("DKIM-Signature").is_some() {
            signed += 1;
            if dkimpy_verify(&modified, &[key.record()])?.all_pass {
                verified += 1;
            }
        }
        if !out.accepted() {
            refused += 1;
            println!("{}: {:?} at {}", f.display(), out.verdict, out.final_stage);
        }
    }
    println!(
        "corpus: {} messages, {signed} signed, {verified} of them verify with dkimpy, {refused} not accepted",
        outcomes.len()
    );
    assert!(signed > 0, "OpenDKIM signed nothing");
    Ok(())
}

#[test]
fn load_mode_64_connections_against_opendkim_has_no_errors() -> R {
    let dir = tempfile::tempdir()?;
    let key = key(dir.path())?;
    let od = sign_everything(&key)?;
    let inputs: Vec<Transaction> = corpus()?
        .iter()
        .map(|f| {
            Ok(Transaction {
                envelope: submission(),
                message: Bytes::from(std::fs::read(f)?),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let count = 1280;
    let rt = runtime();
    let report = rt.block_on(run_load(
        &od.milter_spec(),
        &ClientConfig::default(),
        Arc::new(inputs),
        64,
        count,
    ))?;
    println!("OpenDKIM load, 64 connections: {}", report.summary());
    assert_eq!(report.errors, 0, "errors: {:?}", report.error_samples);
    assert_eq!(report.completed, count);
    assert!(report.modified > 0, "nothing was signed under load");
    Ok(())
}
