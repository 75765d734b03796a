//! Records what a real Postfix 3.7 sends a milter (the golden frames under
//! `milter-core/tests/golden/`). Always checks the recorded command sequence and
//! compares the fresh frames with the golden files (what varies between runs masked, see
//! [`comparable`]); with `STACK_WRITE_GOLDEN=1` it (re)writes the golden files instead.

use stack_tests::postfix::Postfix;
use stack_tests::recorder::MilterRecorder;
use stack_tests::smtp::SmtpClient;
use stack_tests::swaks::submit;
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Message 1: folded headers, 8-bit text, a body over 65535 bytes (two SMFIC_BODY chunks).
/// Message 2: a header whose value is over 70 KiB (folded into ~1000-byte lines).
/// milter-core's `mta_golden` test replays the same files.
const MESSAGE_ONE: &[u8] =
    include_bytes!("../../milter-core/tests/golden/postfix37-mx-message-1.eml");
const MESSAGE_TWO: &[u8] =
    include_bytes!("../../milter-core/tests/golden/postfix37-mx-message-2.eml");

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../milter-core/tests/golden")
}

fn save(name: &str, bytes: &[u8], summary: &str) -> anyhow::Result<()> {
    if writing() {
        let dir = golden_dir();
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{name}.bin")), bytes)?;
        std::fs::write(dir.join(format!("{name}.commands.txt")), summary)?;
        eprintln!("wrote {}/{name}.bin ({} bytes)", dir.display(), bytes.len());
    }
    Ok(())
}

fn conn_summary(rec: &MilterRecorder, n: usize) -> String {
    let prefix = format!("conn {n}: ");
    rec.summary()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn postfix37_milter_sessions_are_recorded() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    // The harness's readiness probes open milter sessions too (no MAIL);
    // the recorder keeps one file per connection and the session with MAIL
    // is the one saved.
    let mx_rec_out = work.path().join("mx.bin");
    let sub_rec_out = work.path().join("submission.bin");
    let pickup_rec_out = work.path().join("pickup.bin");
    let mx_rec = MilterRecorder::start(&mx_rec_out)?;
    let sub_rec = MilterRecorder::start(&sub_rec_out)?;
    let pickup_rec = MilterRecorder::start(&pickup_rec_out)?;
    let pf = Postfix::builder()
        .mx_milters(&mx_rec.milter_spec())
        .submission(&sub_rec.milter_spec())
        .non_smtpd_milters(&pickup_rec.milter_spec())
        .start()?;

    // Session 1 (MX): two messages separated by RSET.
    let (mut c, greeting) = SmtpClient::connect(pf.mx_port())?;
    assert_eq!(greeting.code, 220);
    c.expect("EHLO client.remote.test", 250)?;
    let m1 = MESSAGE_ONE;
    c.expect(
        &format!(
            "MAIL FROM:<alice@remote.test> SIZE={} BODY=8BITMIME",
            m1.len()
        ),
        250,
    )?;
    c.expect("RCPT TO:<user@example.test>", 250)?;
    c.expect(
        "RCPT TO:<other@example.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;other@example.test",
        250,
    )?;
    let r = c.data(m1)?;
    assert_eq!(r.code, 250, "{}", c.transcript);
    c.expect("RSET", 250)?;
    let m2 = MESSAGE_TWO;
    c.expect(
        &format!(
            "MAIL FROM:<bob@remote.test> SIZE={} BODY=8BITMIME",
            m2.len()
        ),
        250,
    )?;
    c.expect("RCPT TO:<user@example.test>", 250)?;
    let r = c.data(m2)?;
    assert_eq!(r.code, 250, "{}", c.transcript);
    c.expect("QUIT", 221)?;
    pf.maildir("example.test", "user").wait_for(2, T)?;
    pf.maildir("example.test", "other").wait_for(1, T)?;

    // Session 2 (submission): STARTTLS + AUTH PLAIN via swaks.
    let run = submit(
        pf.submission_port(),
        ("user@example.test", "userpass"),
        "user@example.test",
        "friend@remote.test",
        &[
            "--ehlo",
            "laptop.example.test",
            "--header",
            "Subject: golden frames, submission",
            "--header",
            "Message-Id: <golden-3@example.test>",
        ],
    )?;
    assert_eq!(
        run.final_reply().map(|r| r.code),
        Some(250),
        "{}",
        run.transcript
    );
    pf.sink().wait_for(1, T)?;

    // Session 3 (sendmail -> pickup -> cleanup: non_smtpd_milters).
    pf.sendmail(
        &["-f", "user@example.test", "-i", "other@example.test"],
        b"From: user@example.test\nTo: other@example.test\nSubject: golden frames, sendmail\nMessage-ID: <golden-4@example.test>\n\nvia pickup\n",
    )?;
    pf.maildir("example.test", "other").wait_for(2, T)?;
    pf.wait_queue_empty(T)?;

    // Check and save each recorded session.
    for (rec, name, expect) in [
        (
            &mx_rec,
            "postfix37-mx-two-messages-rset",
            // connect, helo, msg 1 (2 rcpts, 2 body chunks), abort, (RSET: nothing), msg 2,
            // abort, abort at QUIT, quit: what Postfix 3.7 really sends.
            vec![
                "O", "C", "H", "M", "R", "R", "T", "N", "B", "B", "E", "A", "M", "R", "T", "N",
                "B", "E", "A", "A", "Q",
            ],
        ),
        (
            &sub_rec,
            "postfix37-submission-starttls-sasl",
            // STARTTLS: abort, then HELO again with the TLS macros.
            vec![
                "O", "C", "H", "A", "H", "M", "R", "T", "N", "B", "E", "A", "A", "Q",
            ],
        ),
        (
            &pickup_rec,
            "postfix37-sendmail-pickup",
            vec!["O", "C", "H", "M", "R", "T", "N", "B", "E", "Q"],
        ),
    ] {
        let conns = rec.mail_connections();
        assert_eq!(
            conns.len(),
            1,
            "{name}: one mail session expected:\n{}",
            rec.summary()
        );
        let n = conns[0];
        rec.wait_closed(n, T)?;
        // Macro (D) and header (L) frames vary in number; compare the rest.
        let got: Vec<String> = rec
            .commands(n)
            .into_iter()
            .filter(|c| c != "D" && c != "L")
            .collect();
        assert_eq!(
            got,
            expect,
            "{name}: recorded command sequence:\n{}",
            rec.summary()
        );
        let fresh = rec.connection_bytes(n)?;
        if !writing() {
            let recorded = std::fs::read(golden_dir().join(format!("{name}.bin")))?;
            let (want, got) = (comparable(&recorded)?, comparable(&fresh)?);
            if let Some(diff) = first_difference(&got, &want) {
                panic!(
                    "{name}: fresh frames differ from the golden file ({} fresh, {} recorded; \
                     rerun with STACK_WRITE_GOLDEN=1 if Postfix really changed):\n{diff}",
                    got.len(),
                    want.len()
                );
            }
        }
        save(name, &fresh, &conn_summary(rec, n))?;
    }
    Ok(())
}

/// The first frame where `got` and `want` differ, both shown (cut to 300 characters).
fn first_difference(got: &[String], want: &[String]) -> Option<String> {
    let cut = |s: Option<&String>| -> String {
        s.map_or("(none)".into(), |s| s.chars().take(300).collect())
    };
    (0..got.len().max(want.len()))
        .find(|&i| got.get(i) != want.get(i))
        .map(|i| {
            format!(
                "frame {i}:\n  fresh:    {}\n  recorded: {}",
                cut(got.get(i)),
                cut(want.get(i))
            )
        })
}

fn writing() -> bool {
    std::env::var("STACK_WRITE_GOLDEN").is_ok_and(|v| v == "1")
}

/// Header fields whose value differs between runs (dates, queue ids, the TLS session).
const VARYING_HEADERS: &[&str] = &["date", "received", "message-id"];

/// Each frame of a recorded byte stream as text, with what differs between two runs of
/// the same session masked: macro values (queue ids, ports, TLS details), the client's
/// hostname and port in CONNECT and the values of [`VARYING_HEADERS`]. Everything else (the frames in
/// order, the negotiation offer, macro names, header names and values, envelope
/// addresses and arguments, body chunks byte for byte) must match the golden file.
fn comparable(stream: &[u8]) -> anyhow::Result<Vec<String>> {
    use milter_core::wire::FrameDecoder;
    let decoder = FrameDecoder::new(1 << 20);
    let mut buf = bytes::BytesMut::from(stream);
    let mut out = Vec::new();
    let show = |b: &[u8]| format!("{:?}", String::from_utf8_lossy(b));
    while let Some(f) = decoder.decode_eof(&mut buf)? {
        let p = &f.payload[..];
        let fields: Vec<&[u8]> = p.split(|&b| b == 0).collect();
        let line = match f.code {
            b'D' => {
                // Command code, then name/value pairs: keep the names.
                let (cmd, pairs) = p.split_first().unwrap_or((&0, &[]));
                let names: Vec<String> = pairs
                    .split(|&b| b == 0)
                    .step_by(2)
                    .filter(|n| !n.is_empty())
                    .map(show)
                    .collect();
                format!("D {} {}", *cmd as char, names.join(" "))
            }
            b'C' => {
                // hostname NUL, family, port (2 bytes), address NUL. The hostname is what
                // the machine's reverse lookup gave (`localhost` when recorded, `[127.0.0.1]`
                // with the hermetic DNS), the port the client's: both masked.
                let host = fields.first().copied().unwrap_or_default();
                let rest = p.get(host.len() + 1..).unwrap_or_default();
                let family = rest.first().copied().unwrap_or(0) as char;
                let addr = rest.get(3..).unwrap_or_default();
                format!("C (host) {family} port {}", show(addr))
            }
            b'L' => {
                let name = fields.first().copied().unwrap_or_default();
                let varying = VARYING_HEADERS
                    .iter()
                    .any(|v| name.eq_ignore_ascii_case(v.as_bytes()));
                let value = if varying {
                    "(varies)".to_string()
                } else {
                    show(fields.get(1).copied().unwrap_or_default())
                };
                format!("L {} {value}", show(name))
            }
            code => format!("{} {}", code as char, show(p)),
        };
        out.push(line);
    }
    anyhow::ensure!(buf.is_empty(), "{} trailing bytes", buf.len());
    Ok(out)
}
