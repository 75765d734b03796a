//! Streaming DKIM body hashes (RFC 6376 §3.4.3–3.4.5, §3.7), fed with the milter's body
//! chunks so verification needs no copy of the body.
//!
//! Written here because mail-auth 0.15.1 keeps its incremental `BodyHasher` crate-private.
//! The canonicalization state machine follows mail-auth's `CanonicalState` (Apache-2.0 OR
//! MIT) byte for byte, so a body hashes exactly as mail-auth's whole-message verifier
//! hashed it (bare CR dropped, bare LF read as a line end). `l=` counts canonicalized
//! bytes, as RFC 6376 §3.5 says (mail-auth's signer counts raw bytes).

use aws_lc_rs::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY, SHA256};
use mail_auth::crypto::Algorithm;
use mail_auth::dkim::Canonicalization;

/// The digest of a DKIM algorithm's body hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyDigest {
    /// `rsa-sha1`.
    Sha1,
    /// `rsa-sha256`, `ed25519-sha256`.
    Sha256,
}

impl From<Algorithm> for BodyDigest {
    fn from(a: Algorithm) -> Self {
        match a {
            Algorithm::RsaSha1 => BodyDigest::Sha1,
            _ => BodyDigest::Sha256,
        }
    }
}

/// What one body hash is computed with: `c=` body part, digest, `l=` (0: whole body).
pub type BodyHashKey = (Canonicalization, BodyDigest, u64);

/// One running body hash.
pub struct BodyHasher {
    key: BodyHashKey,
    ctx: Context,
    written: u64,
    state: State,
}

impl std::fmt::Debug for BodyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyHasher")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Sink that hashes and stops at `l=` canonicalized bytes.
struct Sink<'a> {
    ctx: &'a mut Context,
    written: &'a mut u64,
    limit: u64,
}

impl Sink<'_> {
    fn write(&mut self, buf: &[u8]) {
        let take = if self.limit == 0 {
            buf.len()
        } else {
            let left = self.limit.saturating_sub(*self.written);
            usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()))
        };
        if let Some(part) = buf.get(..take)
            && !part.is_empty()
        {
            self.ctx.update(part);
            *self.written += part.len() as u64;
        }
    }

    fn crlfs(&mut self, n: usize) {
        for _ in 0..n {
            self.write(b"\r\n");
        }
    }
}

#[derive(Debug, Default)]
struct State {
    crlf_seq: usize,
    last_ch: u8,
    non_empty: bool,
}

impl BodyHasher {
    /// A hasher for `key`.
    pub fn new(key: BodyHashKey) -> BodyHasher {
        let alg = match key.1 {
            BodyDigest::Sha1 => &SHA1_FOR_LEGACY_USE_ONLY,
            BodyDigest::Sha256 => &SHA256,
        };
        BodyHasher {
            key,
            ctx: Context::new(alg),
            written: 0,
            state: State::default(),
        }
    }

    /// What this hasher computes.
    pub fn key(&self) -> BodyHashKey {
        self.key
    }

    /// True once `l=` bytes are hashed: further input cannot change the digest.
    fn full(&self) -> bool {
        self.key.2 != 0 && self.written >= self.key.2
    }

    /// Feeds a body chunk (any split).
    pub fn write(&mut self, chunk: &[u8]) {
        if self.full() {
            return;
        }
        let mut sink = Sink {
            ctx: &mut self.ctx,
            written: &mut self.written,
            limit: self.key.2,
        };
        match self.key.0 {
            Canonicalization::Simple => write_simple(&mut self.state, chunk, &mut sink),
            Canonicalization::Relaxed => write_relaxed(&mut self.state, chunk, &mut sink),
        }
    }

    /// The digest (`bh=` decoded).
    pub fn finish(mut self) -> Vec<u8> {
        let mut sink = Sink {
            ctx: &mut self.ctx,
            written: &mut self.written,
            limit: self.key.2,
        };
        // Trailing empty lines are dropped; a non-empty body ends in one CRLF. Simple
        // canonicalization turns an empty body into one CRLF.
        if self.key.0 == Canonicalization::Simple || self.state.non_empty {
            sink.write(b"\r\n");
        }
        self.ctx.finish().as_ref().to_vec()
    }
}

/// End of the run that can be copied as is (lines ended by CRLF followed by text).
fn simple_run_end(chunk: &[u8]) -> usize {
    let mut offset = 0;
    while let Some(pos) = chunk[offset..]
        .iter()
        .position(|&c| c == b'\r' || c == b'\n')
    {
        let start = offset + pos;
        match &chunk[start..] {
            [b'\r', b'\n', next, ..] if *next != b'\r' && *next != b'\n' => offset = start + 2,
            _ => return start,
        }
    }
    chunk.len()
}

fn write_simple(st: &mut State, chunk: &[u8], sink: &mut Sink<'_>) {
    let mut rest = chunk;
    while !rest.is_empty() {
        let (run, tail) = rest.split_at(simple_run_end(rest));
        if !run.is_empty() {
            sink.crlfs(std::mem::take(&mut st.crlf_seq));
            sink.write(run);
            st.non_empty = true;
        }
        let mut consumed = 0;
        for &ch in tail {
            match ch {
                b'\n' => st.crlf_seq += 1,
                b'\r' => {}
                _ => break,
            }
            consumed += 1;
        }
        rest = &tail[consumed..];
    }
}

/// End of the run without whitespace runs or line ends to rewrite.
fn relaxed_run_end(chunk: &[u8]) -> usize {
    let mut offset = 0;
    while let Some(pos) = chunk[offset..].iter().position(|&c| c <= b' ') {
        let start = offset + pos;
        match &chunk[start..] {
            [b' ', next, ..] if start != 0 && *next > b' ' => offset = start + 2,
            [b'\r', b'\n', next, ..] if start != 0 && *next > b' ' => offset = start + 2,
            [b'\t' | b'\n' | b'\r' | b' ', ..] => return start,
            _ => offset = start + 1,
        }
    }
    chunk.len()
}

fn write_relaxed(st: &mut State, chunk: &[u8], sink: &mut Sink<'_>) {
    let mut rest = chunk;
    while !rest.is_empty() {
        let (run, tail) = rest.split_at(relaxed_run_end(rest));
        if let Some(&last) = run.last() {
            sink.crlfs(std::mem::take(&mut st.crlf_seq));
            if st.last_ch == b' ' || st.last_ch == b'\t' {
                sink.write(b" ");
            }
            sink.write(run);
            st.non_empty = true;
            st.last_ch = last;
        }
        let mut consumed = 0;
        for &ch in tail {
            match ch {
                b'\n' => st.crlf_seq += 1,
                b' ' | b'\t' | b'\r' => {}
                _ => break,
            }
            consumed += 1;
            st.last_ch = ch;
        }
        rest = &tail[consumed..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::testing::write_canonical_body;

    /// mail-auth's whole-body canonical form, cut at `l` canonicalized bytes, hashed.
    fn reference(c: Canonicalization, d: BodyDigest, body: &[u8], l: u64) -> Vec<u8> {
        let mut canon = Vec::new();
        write_canonical_body(c, body, 0, &mut canon);
        if l != 0 {
            canon.truncate(l.min(canon.len() as u64) as usize);
        }
        let alg = match d {
            BodyDigest::Sha1 => &SHA1_FOR_LEGACY_USE_ONLY,
            BodyDigest::Sha256 => &SHA256,
        };
        aws_lc_rs::digest::digest(alg, &canon).as_ref().to_vec()
    }

    const BODIES: &[&[u8]] = &[
        b"",
        b"\r\n",
        b"\r\n\r\n\r\n",
        b"Hello\r\n",
        b"Hello",
        b"Hello\r\n\r\n\r\n",
        b"  lead  and   trail \t \r\n\tx\t\ty  \r\n \r\n\r\n",
        b"a \r\n b\r\n\r\nc\r\n",
        b"bare\nlf\nlines\n\n",
        b"bare\rcr\r\n",
        b"caf\xc3\xa9 8-bit \xff\r\n",
        b"x\r\n \r\n\t\r\n",
    ];

    #[test]
    fn streamed_hash_equals_mail_auth_whole_body_for_every_split() {
        let mut long = Vec::new();
        for i in 0..400 {
            long.extend_from_slice(format!("line {i}  with \t spaces \r\n").as_bytes());
            if i % 7 == 0 {
                long.extend_from_slice(b"\r\n \r\n");
            }
        }
        let mut bodies: Vec<&[u8]> = BODIES.to_vec();
        bodies.push(&long);
        for c in [Canonicalization::Simple, Canonicalization::Relaxed] {
            for d in [BodyDigest::Sha256, BodyDigest::Sha1] {
                for body in &bodies {
                    let full = reference(c, d, body, 0);
                    for l in [0u64, 1, 3, 7, 20, 5000] {
                        let want = reference(c, d, body, l);
                        for chunk in [1usize, 2, 3, 5, 64, 65536] {
                            let mut h = BodyHasher::new((c, d, l));
                            for part in body.chunks(chunk) {
                                h.write(part);
                            }
                            let got = h.finish();
                            assert_eq!(got, want, "{c:?} {d:?} l={l} chunk={chunk} {body:?}");
                        }
                    }
                    // Cross-check the whole-body digest with mail-auth's own function.
                    if d == BodyDigest::Sha256 {
                        let ma = mail_auth::testing::whole_body_digest(c, body, 0);
                        assert_eq!(full, ma, "{c:?} {body:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn length_limit_counts_canonical_bytes() {
        // Relaxed: "a b\r\n" is 5 canonical bytes of "a   b  \r\nmore\r\n".
        let mut h = BodyHasher::new((Canonicalization::Relaxed, BodyDigest::Sha256, 5));
        h.write(b"a   b  \r\nmore\r\n");
        let want = aws_lc_rs::digest::digest(&SHA256, b"a b\r\n");
        assert_eq!(h.finish(), want.as_ref());
    }
}
