//! Entry points for cargo-fuzz (feature `fuzzing`). Each takes arbitrary bytes and panics
//! only when an invariant of the library breaks; malformed input must come back as errors.

use bytes::BytesMut;

use crate::negotiate::Request;
use crate::proto::command::Command;
use crate::proto::flags::{Actions, ProtocolFlags};
use crate::proto::reply::{Modification, Reply, Verdict};
use crate::session::{Event, MilterSession, SessionConfig};
use crate::wire::{Frame, FrameDecoder};

/// Decodes `data` as a stream of frames under a small cap; every frame that decodes as a
/// command or reply must re-encode to itself.
pub fn frame_decoder(data: &[u8]) {
    let cap = 1 + usize::from(data.first().copied().unwrap_or(0)) * 64;
    let decoder = FrameDecoder::new(cap);
    let mut buf = BytesMut::from(data.get(1..).unwrap_or_default());
    loop {
        let frame = match decoder.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                let _ = decoder.decode_eof(&mut buf);
                return;
            }
            Err(_) => return,
        };
        assert!(frame.payload.len() <= cap, "frame over the cap");
        if let Ok(cmd) = Command::decode(frame.clone()) {
            let mut wire = BytesMut::new();
            cmd.encode(&mut wire);
            let again = one_frame(&mut wire);
            assert_eq!(Command::decode(again).ok(), Some(cmd), "command round trip");
        }
        if let Ok(reply) = Reply::decode(frame) {
            let mut wire = BytesMut::new();
            reply.encode(&mut wire);
            let again = one_frame(&mut wire);
            assert_eq!(Reply::decode(again).ok(), Some(reply), "reply round trip");
        }
    }
}

fn one_frame(wire: &mut BytesMut) -> Frame {
    let frame = FrameDecoder::new(usize::MAX).decode(wire);
    match frame {
        Ok(Some(f)) if wire.is_empty() => f,
        other => panic!("encoder wrote a bad frame: {other:?}"),
    }
}

/// A tiny deterministic generator for the handler's choices.
struct Choices(u64);

impl Choices {
    fn next(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }
}

/// Feeds `data` to a [`MilterSession`] as the MTA's byte stream, answering like a handler
/// that mostly says Continue. The first 8 bytes steer the handler (optional protocol
/// flags, actions, input chunk size, choice seed). Checks that every reply the session
/// queues is a frame the MTA would accept, under the send cap, and that a due reply can
/// always be given.
pub fn milter_session(data: &[u8]) {
    let Some((ctl, stream)) = data.split_first_chunk::<8>() else {
        return;
    };
    let optional =
        ProtocolFlags::from_bits_truncate(u32::from_be_bytes([ctl[0], ctl[1], ctl[2], ctl[3]]));
    let action_mask = Actions::from_bits_truncate(u32::from(ctl[4]) | u32::from(ctl[5] & 1) << 8);
    let chunk = usize::from(ctl[6] % 64) + 1;
    let mut choices = Choices(u64::from(ctl[7]) | 0x9e37_79b9_7f4a_7c00);
    let config = SessionConfig {
        max_frame: 128 * 1024,
        max_send: 64 + usize::from(ctl[7]),
        macro_limit: 512,
    };
    let mut s = MilterSession::new(config);
    for piece in stream.chunks(chunk) {
        s.read_buf().extend_from_slice(piece);
        loop {
            let event = match s.poll_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    // Errors are sticky.
                    assert_eq!(s.poll_event(), Err(e));
                    return;
                }
            };
            answer(&mut s, &event, optional, action_mask, &mut choices);
            check_output(&mut s, config.max_send);
            if s.is_closed() {
                assert!(!s.reply_due());
            }
        }
    }
    let _ = s.eof();
}

fn answer(
    s: &mut MilterSession,
    event: &Event,
    optional: ProtocolFlags,
    action_mask: Actions,
    choices: &mut Choices,
) {
    if let Event::Negotiate(offer) = event {
        let request = Request::new()
            .with_actions(offer.actions & action_mask)
            .with_optional_protocol(optional);
        if s.negotiate(&request).is_ok() {
            assert!(!s.reply_due());
        }
        return;
    }
    if matches!(event, Event::EndOfMessage(_)) {
        for _ in 0..choices.next() % 4 {
            let m = match choices.next() % 5 {
                0 => Modification::AddHeader {
                    name: "X-Fuzz".into(),
                    value: " 1".into(),
                },
                1 => Modification::ReplaceBody(vec![b'x'; usize::from(choices.next()) * 3].into()),
                2 => Modification::delete_header("Subject", 1),
                3 => Modification::Quarantine {
                    reason: "fuzz".into(),
                },
                _ => {
                    let _ = s.progress();
                    continue;
                }
            };
            let _ = s.modify(m);
        }
    }
    let verdict = match choices.next() % 8 {
        0 => Verdict::Reject,
        1 => Verdict::Skip,
        2 => Verdict::Discard,
        3 => Verdict::Accept,
        _ => Verdict::Continue,
    };
    let due = s.reply_due();
    if s.reply(verdict).is_err() && due {
        s.reply(Verdict::Continue)
            .expect("Continue is always a valid answer to a due reply");
    }
    assert!(!s.reply_due(), "answered");
}

fn check_output(s: &mut MilterSession, max_send: usize) {
    let mut out = std::mem::take(s.output());
    let decoder = FrameDecoder::new(usize::MAX);
    loop {
        match decoder.decode(&mut out) {
            Ok(Some(frame)) => {
                let code = frame.code;
                assert!(
                    code == b'O' || frame.payload.len() <= max_send,
                    "reply over the send cap"
                );
                if let Err(e) = Reply::decode(frame) {
                    panic!("session queued a reply the MTA refuses: {e}");
                }
            }
            Ok(None) => break,
            Err(e) => panic!("session queued a bad frame: {e}"),
        }
    }
    assert!(out.is_empty(), "partial frame queued");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_accept_garbage_and_real_sessions() {
        frame_decoder(&[]);
        frame_decoder(&[0, 0, 0, 0, 0]);
        frame_decoder(&[255, 0, 0, 0, 5, b'H', b'x', 0, 0, 0]);
        milter_session(&[1, 2, 3]);
        let mut data = vec![0, 0x10, 0, 0xff, 0xff, 1, 63, 7];
        let golden = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/postfix37-submission-starttls-sasl.bin"
        );
        data.extend(std::fs::read(golden).expect("golden recording"));
        milter_session(&data);
    }
}
