//! Framing: a 4-byte big-endian length (command byte included), one code byte, a payload.
//!
//! The decoder checks the announced length against its cap before it reserves anything, so a
//! hostile `0xFFFFFFFF` prefix costs four bytes, not four gigabytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;

/// Largest BODY chunk an MTA sends and the largest payload libmilter accepts by default.
pub const MAX_CHUNK: usize = 65535;

/// Default receive cap, in payload bytes. Postfix HEADER frames can exceed 64 KiB
/// (`header_size_limit` is 102400 by default), so 64 KiB would drop real mail.
pub const DEFAULT_RECV_MAX: usize = 1024 * 1024;

/// Default send cap, in payload bytes: what Sendmail and libmilter-based peers accept.
pub const DEFAULT_SEND_MAX: usize = MAX_CHUNK;

const LEN_BYTES: usize = 4;

/// One frame: a code and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command or reply code.
    pub code: u8,
    /// The data after the code.
    pub payload: Bytes,
}

impl Frame {
    /// A frame from a code and payload.
    pub fn new(code: u8, payload: impl Into<Bytes>) -> Frame {
        Frame {
            code,
            payload: payload.into(),
        }
    }

    /// The frame's size on the wire.
    pub fn wire_len(&self) -> usize {
        LEN_BYTES + 1 + self.payload.len()
    }

    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        encode_frame(self.code, &self.payload, out);
    }
}

/// Appends one frame to `out`.
///
/// The caller bounds `payload` (the send cap); a payload over `u32::MAX - 1` bytes cannot be
/// represented and is truncated to the representable size, which never happens under any cap.
pub fn encode_frame(code: u8, payload: &[u8], out: &mut BytesMut) {
    let max = (u32::MAX - 1) as usize;
    let payload = payload.get(..max.min(payload.len())).unwrap_or(payload);
    let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
    out.reserve(LEN_BYTES + 1 + payload.len());
    out.put_u32(len);
    out.put_u8(code);
    out.put_slice(payload);
}

/// Incremental frame decoder with a payload cap.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_payload: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_RECV_MAX)
    }
}

impl FrameDecoder {
    /// A decoder refusing payloads over `max_payload` bytes.
    pub fn new(max_payload: usize) -> FrameDecoder {
        FrameDecoder { max_payload }
    }

    /// The payload cap.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Takes the next whole frame off the front of `buf`.
    ///
    /// `Ok(None)` means more bytes are needed; the buffer is then reserved for the frame in
    /// progress (never beyond the cap). An error means the stream is corrupt: close it.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        let Some(prefix) = buf.get(..LEN_BYTES) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; LEN_BYTES];
        len_bytes.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len_bytes);
        if len == 0 {
            return Err(ProtocolError::EmptyFrame);
        }
        let payload_len = (len - 1) as usize;
        if payload_len > self.max_payload {
            return Err(ProtocolError::FrameTooLarge {
                len: u64::from(len),
                max: self.max_payload,
            });
        }
        let need = LEN_BYTES + 1 + payload_len;
        if buf.len() < need {
            buf.reserve(need - buf.len());
            return Ok(None);
        }
        buf.advance(LEN_BYTES);
        let code = buf.get_u8();
        let payload = buf.split_to(payload_len).freeze();
        Ok(Some(Frame { code, payload }))
    }

    /// Like [`decode`](Self::decode), for when the stream has ended: leftover bytes are an
    /// error rather than a wait.
    pub fn decode_eof(&self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => {
                let need = match buf.get(..LEN_BYTES) {
                    Some(p) => {
                        let mut l = [0u8; LEN_BYTES];
                        l.copy_from_slice(p);
                        LEN_BYTES + u32::from_be_bytes(l) as usize
                    }
                    None => LEN_BYTES,
                };
                Err(ProtocolError::Truncated {
                    have: buf.len(),
                    need,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8], max: usize) -> Result<Vec<Frame>, ProtocolError> {
        let d = FrameDecoder::new(max);
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = d.decode(&mut buf)? {
            frames.push(f);
        }
        Ok(frames)
    }

    #[test]
    fn round_trip() {
        let mut out = BytesMut::new();
        encode_frame(b'H', b"mx.example\0", &mut out);
        encode_frame(b'N', b"", &mut out);
        assert_eq!(&out[..5], &[0, 0, 0, 12, b'H']);
        let frames = decode_all(&out, 100).unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::new(b'H', &b"mx.example\0"[..]),
                Frame::new(b'N', Bytes::new())
            ]
        );
    }

    #[test]
    fn byte_at_a_time() {
        let mut wire = BytesMut::new();
        encode_frame(b'B', &[7u8; 300], &mut wire);
        let d = FrameDecoder::new(1000);
        let mut buf = BytesMut::new();
        let mut got = None;
        for (i, b) in wire.iter().enumerate() {
            buf.put_u8(*b);
            let r = d.decode(&mut buf).unwrap();
            if i + 1 < wire.len() {
                assert!(r.is_none());
            } else {
                got = r;
            }
        }
        assert_eq!(got.unwrap().payload.len(), 300);
    }

    #[test]
    fn zero_length_is_an_error() {
        assert_eq!(
            decode_all(&[0, 0, 0, 0], 10),
            Err(ProtocolError::EmptyFrame)
        );
    }

    #[test]
    fn huge_length_refused_before_allocation() {
        let d = FrameDecoder::new(DEFAULT_RECV_MAX);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, b'B'][..]);
        let cap_before = buf.capacity();
        let err = d.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge {
                len: 0xffff_ffff,
                ..
            }
        ));
        assert_eq!(buf.capacity(), cap_before);
    }

    #[test]
    fn cap_is_on_payload() {
        let mut wire = BytesMut::new();
        encode_frame(b'B', &[0u8; 10], &mut wire);
        assert!(decode_all(&wire, 10).is_ok());
        assert!(matches!(
            decode_all(&wire, 9),
            Err(ProtocolError::FrameTooLarge { len: 11, max: 9 })
        ));
    }

    #[test]
    fn truncated_at_eof() {
        let d = FrameDecoder::new(100);
        let mut buf = BytesMut::from(&[0, 0, 0, 5, b'H', b'a'][..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert_eq!(
            d.decode_eof(&mut buf),
            Err(ProtocolError::Truncated { have: 6, need: 9 })
        );
        let mut partial_prefix = BytesMut::from(&[0, 0][..]);
        assert!(matches!(
            d.decode_eof(&mut partial_prefix),
            Err(ProtocolError::Truncated { have: 2, .. })
        ));
        assert_eq!(d.decode_eof(&mut BytesMut::new()), Ok(None));
    }
}
