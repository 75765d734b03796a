//! Every message of the project's own corpus (`tests/corpus/`) and of every directory named
//! in `MILTER_EXTRA_CORPUS` (CI adds `../shared/corpus/mail-parser`: RFC samples, legacy
//! mailer output, malformed messages), as [`stack_tests::corpus`] finds them, through the
//! example milters' binaries, driven by milter-core's client over one connection each.
//!
//! Proves: no message makes the client or the milter break the protocol; the header block
//! and body as sent to the milter are exact (the body rewrite is computed by the milter
//! from what it received); and the applied output is byte-exact apart from the
//! modification, odd line endings and malformed header blocks included.

mod support;
use support::start;

use bytes::Bytes;
use milter_core::client::{ClientConfig, Envelope, MilterClient};
use milter_core::{Modification, Verdict};
use stack_tests::corpus;

/// (label, bytes) of every corpus message: the project's own first, then the extra ones.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let messages = corpus::messages().unwrap_or_else(|e| panic!("corpus: {e:#}"));
    let project = messages
        .iter()
        .filter(|(p, _)| corpus::is_project(p))
        .count();
    assert!(
        project >= corpus::PROJECT_MESSAGES,
        "corpus {} has only {project} messages",
        corpus::project_dir().display()
    );
    eprintln!(
        "corpus: {} messages ({project} in tests/corpus, {} extra)",
        messages.len(),
        messages.len() - project
    );
    messages
        .into_iter()
        .map(|(p, bytes)| (corpus::label(&p), bytes))
        .collect()
}

/// Where the header block ends and where the body starts, by the MTA's rules (written here
/// independently of the client): fields are `name:` lines (name: printable, no space or
/// colon) with their continuation lines; the first empty line is the separator; any other
/// line ends the header block and is the body's first line.
fn split(raw: &[u8]) -> (usize, usize) {
    let mut pos = 0;
    let mut in_field = false;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let start = pos;
        pos += line.len();
        if line == b"\n" || line == b"\r\n" {
            return (start, pos);
        }
        if in_field && matches!(line.first(), Some(b' ' | b'\t')) {
            continue;
        }
        let is_field = line.iter().position(|&b| b == b':').is_some_and(|colon| {
            let name = line[..colon].trim_ascii_end();
            !name.is_empty() && name.iter().all(|&b| b.is_ascii_graphic())
        });
        if !is_field {
            return (start, start);
        }
        in_field = true;
    }
    (raw.len(), raw.len())
}

/// Every line ending made CRLF (a lone LF becomes CRLF; a lone CR stays), as the MTA
/// hands a body to a milter.
fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut prev = 0u8;
    for &b in data {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut rest = hay;
    while !rest.is_empty() {
        if rest.starts_with(from) {
            out.extend_from_slice(to);
            rest = &rest[from.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

fn envelope(n: usize) -> Envelope {
    Envelope {
        sender: format!("sender{n}@example.org"),
        recipients: vec!["user@example.test".into()],
        ..Envelope::default()
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn add_header_on_every_corpus_message_changes_nothing_else() {
    let (name, value) = ("X-Replay-Corpus", "added by the add-header example");
    let milter = start(
        env!("CARGO_BIN_EXE_add-header"),
        &["--name", name, "--value", value],
    );
    let mut client = MilterClient::connect(
        &format!("unix:{}", milter.socket.display()),
        ClientConfig::default(),
    )
    .await
    .expect("negotiate");
    let added = format!("{name}: {value}\r\n");
    let corpus = corpus();
    for (n, (file, raw)) in corpus.iter().enumerate() {
        let outcome = client
            .send(&envelope(n), raw)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(outcome.verdict, Verdict::Continue, "{file}");
        assert_eq!(outcome.final_stage, "EOM", "{file}");
        assert_eq!(
            outcome.modifications,
            vec![Modification::AddHeader {
                name: Bytes::from_static(name.as_bytes()),
                value: Bytes::from_static(value.as_bytes()),
            }],
            "{file}"
        );
        let (head_end, _) = split(raw);
        let mut want = raw[..head_end].to_vec();
        want.extend_from_slice(added.as_bytes());
        want.extend_from_slice(&raw[head_end..]);
        let got = outcome.modified_bytes();
        assert!(
            got == want,
            "{file}: output differs\n--- want\n{}\n--- got\n{}",
            show(&want),
            show(&got)
        );
    }
    assert_eq!(client.messages(), corpus.len() as u64);
    client.quit().await.expect("quit");
}

#[tokio::test]
async fn body_rules_rewrite_on_every_corpus_message_is_exact() {
    let (from, to) = ("the", "[THE]");
    let milter = start(
        env!("CARGO_BIN_EXE_body-rules"),
        &["--replace", &format!("{from}={to}")],
    );
    let mut client = MilterClient::connect(
        &format!("unix:{}", milter.socket.display()),
        ClientConfig::default(),
    )
    .await
    .expect("negotiate");
    let (mut rewritten, mut unchanged) = (0, 0);
    for (n, (file, raw)) in corpus().iter().enumerate() {
        let outcome = client
            .send(&envelope(n), raw)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(outcome.verdict, Verdict::Continue, "{file}");
        let (head_end, body_start) = split(raw);
        let sent_body = crlf(&raw[body_start..]);
        let got = outcome.modified_bytes();
        if !sent_body.windows(from.len()).any(|w| w == from.as_bytes()) {
            assert!(outcome.modifications.is_empty(), "{file}");
            assert!(got == *raw, "{file}: unmodified output differs");
            unchanged += 1;
            continue;
        }
        let new_body = replace(&sent_body, from.as_bytes(), to.as_bytes());
        let replaced: Vec<u8> = outcome
            .modifications
            .iter()
            .map(|m| match m {
                Modification::ReplaceBody(chunk) => chunk.to_vec(),
                other => panic!("{file}: unexpected {other:?}"),
            })
            .collect::<Vec<_>>()
            .concat();
        assert!(
            replaced == new_body,
            "{file}: the milter's new body is not the rewrite of what it was sent"
        );
        // Header block and separator byte for byte; a message without a separator gets one.
        let mut want = raw[..body_start].to_vec();
        if head_end == body_start {
            want.extend_from_slice(b"\r\n");
        }
        want.extend_from_slice(&new_body);
        assert!(
            got == want,
            "{file}: output differs\n--- want\n{}\n--- got\n{}",
            show(&want),
            show(&got)
        );
        rewritten += 1;
    }
    assert!(
        rewritten > 0 && unchanged > 0,
        "{rewritten} rewritten, {unchanged} unchanged"
    );
    client.quit().await.expect("quit");
}
