//! Per-message streaming signer fed the way a milter sees the message.
//!
//! Header fields arrive one at a time (name, value with `SMFIP_HDR_LEADSPC` semantics:
//! the value keeps its leading space; folds are bare LF or CRLF), then body chunks.
//! Only the header block is buffered (inside mail-auth's stream); the body is hashed
//! as it arrives, so memory does not grow with the body. The result is a header value
//! ready for `SMFIR_INSHEADER` at index 0: leading space, folded with `"\n\t"`.

use mail_auth::dkim::DkimSigner;
use mail_auth::dkim::streaming::DkimSigningStream;
use mail_auth::headers::HeaderWriter;
use mail_auth::signer::Ready;
use self_cell::self_cell;

use crate::config::Config;
use crate::keys::KeyKind;
use crate::keystore::{SharedKey, SignKey};

/// Signing failed; the caller decides tempfail vs accept.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// mail-auth refused (e.g. none of the signed headers present).
    #[error("signing with d={domain} s={selector} failed: {error}")]
    Dkim {
        /// d=
        domain: String,
        /// s=
        selector: String,
        /// mail-auth's error
        error: String,
    },
    /// API misuse (header after body).
    #[error("header field after the body started")]
    HeaderAfterBody,
}

/// Signing options taken from the config.
#[derive(Debug, Clone)]
pub struct SignOptions {
    /// Headers signed when present (`sign-headers`).
    pub sign: Vec<String>,
    /// Headers listed once more than present (`oversign-headers`), so none can be added.
    pub oversign: Vec<String>,
    /// `c=` header.
    pub header_canon: mail_auth::dkim::Canonicalization,
    /// `c=` body.
    pub body_canon: mail_auth::dkim::Canonicalization,
    /// `x=` lifetime.
    pub ttl: Option<std::time::Duration>,
}

impl SignOptions {
    /// From the config.
    pub fn from_config(cfg: &Config) -> SignOptions {
        SignOptions {
            sign: cfg.sign_headers.clone(),
            oversign: cfg.oversign_headers.clone(),
            header_canon: cfg.canonicalization.header.to_mail_auth(),
            body_canon: cfg.canonicalization.body.to_mail_auth(),
            ttl: cfg.signature_ttl.map(std::time::Duration::from_secs),
        }
    }
}

impl SignOptions {
    /// The names to pass to the signer for a message with these header names: each
    /// `sign` header that is present, then each `oversign` header once more.
    ///
    /// Absent `sign` headers are left out, as OpenDKIM does: listing them would seal the
    /// message against headers a mailing list adds (`List-Id`, ...), which is what
    /// `oversign-headers` is for when an operator wants it.
    pub fn header_list(&self, present: &[&str]) -> Vec<String> {
        let mut list: Vec<String> = self
            .sign
            .iter()
            .filter(|h| present.iter().any(|p| p.eq_ignore_ascii_case(h)))
            .cloned()
            .collect();
        list.extend(self.oversign.iter().cloned());
        list
    }
}

struct Owner {
    signer: DkimSigner<SharedKey, Ready>,
}

type Stream<'a> = Option<DkimSigningStream<'a, SharedKey>>;

self_cell!(
    struct SignStream {
        owner: Box<Owner>,
        #[not_covariant]
        dependent: Stream,
    }
);

/// One produced signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeader {
    /// `DKIM-Signature`.
    pub name: &'static str,
    /// Value for INSHEADER with LEADSPC: `" v=1; a=…\n\t…"`.
    pub value: String,
    /// d=
    pub domain: String,
    /// s=
    pub selector: String,
    /// a=
    pub algorithm: &'static str,
}

struct Active {
    key: SignKey,
    stream: SignStream,
}

/// Signs one message with one or more keys.
pub struct MessageSigner {
    active: Vec<Active>,
    in_body: bool,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for MessageSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageSigner")
            .field(
                "keys",
                &self.active.iter().map(|a| &a.key).collect::<Vec<_>>(),
            )
            .field("in_body", &self.in_body)
            .finish()
    }
}

impl MessageSigner {
    /// Starts signing with `keys` (RSA and Ed25519 may both be present) a message whose
    /// header names are `present` (the header block is complete before signing starts).
    pub fn new(keys: &[SignKey], opts: &SignOptions, present: &[&str]) -> MessageSigner {
        let header_list = opts.header_list(present);
        let active = keys
            .iter()
            .map(|k| {
                let mut signer = DkimSigner::from_key(k.key.clone())
                    .domain(k.domain.clone())
                    .selector(k.selector.clone())
                    .headers(header_list.iter().cloned())
                    .header_canonicalization(opts.header_canon)
                    .body_canonicalization(opts.body_canon);
                if let Some(ttl) = opts.ttl {
                    signer = signer.expiration(ttl);
                }
                if let Some(i) = &k.identity {
                    signer = signer.identity(i.clone());
                }
                let stream = SignStream::new(Box::new(Owner { signer }), |o| {
                    Some(o.signer.sign_streaming())
                });
                Active {
                    key: k.clone(),
                    stream,
                }
            })
            .collect();
        MessageSigner {
            active,
            in_body: false,
            scratch: Vec::new(),
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        for a in &mut self.active {
            a.stream.with_dependent_mut(|_, s| {
                if let Some(s) = s {
                    s.write(bytes);
                }
            });
        }
    }

    /// One header field as the milter gives it: `value` keeps its leading space
    /// (HDR_LEADSPC); continuation lines may be separated by LF or CRLF.
    pub fn header(&mut self, name: &str, value: &[u8]) -> Result<(), SignError> {
        if self.in_body {
            return Err(SignError::HeaderAfterBody);
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.extend_from_slice(name.as_bytes());
        buf.push(b':');
        push_crlf_normalized(&mut buf, value);
        buf.extend_from_slice(b"\r\n");
        self.feed(&buf);
        self.scratch = buf;
        Ok(())
    }

    /// A body chunk (CRLF line ends, as milter BODY frames carry).
    pub fn body(&mut self, chunk: &[u8]) {
        if !self.in_body {
            self.in_body = true;
            self.feed(b"\r\n");
        }
        if !chunk.is_empty() {
            self.feed(chunk);
        }
    }

    /// Finishes all signatures, in key order (RSA first when both).
    pub fn finish(mut self) -> Result<Vec<SignedHeader>, SignError> {
        if !self.in_body {
            self.body(b"");
        }
        let mut out = Vec::with_capacity(self.active.len());
        for mut a in self.active {
            let err = |error: String| SignError::Dkim {
                domain: a.key.domain.clone(),
                selector: a.key.selector.clone(),
                error,
            };
            let sig = a
                .stream
                .with_dependent_mut(|_, s| s.take().map(|s| s.finish()))
                .ok_or_else(|| err("signature already finished".into()))?
                .map_err(|e| err(e.to_string()))?;
            out.push(SignedHeader {
                name: "DKIM-Signature",
                value: milter_value(&sig.to_header()),
                domain: a.key.domain.clone(),
                selector: a.key.selector.clone(),
                algorithm: a.key.kind.algorithm_name(),
            });
        }
        out.sort_by_key(|h| h.algorithm != KeyKind::Rsa.algorithm_name());
        Ok(out)
    }
}

/// Appends `value` with every bare LF turned into CRLF (milter header folds are bare LF).
pub(crate) fn push_crlf_normalized(buf: &mut Vec<u8>, value: &[u8]) {
    let mut prev = 0u8;
    for &b in value {
        if b == b'\n' && prev != b'\r' {
            buf.push(b'\r');
        }
        buf.push(b);
        prev = b;
    }
}

/// `"DKIM-Signature: v=1; …\r\n\t…\r\n"` → `" v=1; …\n\t…"`.
pub fn milter_value(header: &str) -> String {
    let v = header.split_once(':').map_or(header, |(_, v)| v);
    v.trim_end_matches(['\r', '\n']).replace("\r\n", "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyKind, parse_private_key};
    use crate::keystore::SharedKey;
    use crate::verify::{Caches, Verifier};
    use std::sync::Arc;

    fn key(pem: &[u8], sel: &str) -> (SignKey, String) {
        let k = parse_private_key(pem).unwrap();
        let rec = k.dns_record();
        (
            SignKey {
                domain: "example.com".into(),
                selector: sel.into(),
                kind: k.kind,
                bits: k.bits,
                identity: None,
                path: "/k".into(),
                public: crate::keystore::PublicKey::of(&k),
                key: SharedKey(Arc::new(k.key)),
            },
            rec,
        )
    }

    /// Feeds a message the milter way and returns the signed message (CRLF).
    fn sign_milter_style(keys: &[SignKey], cfg: &Config) -> (Vec<SignedHeader>, Vec<u8>) {
        let headers: &[(&str, &[u8])] = &[
            ("From", b" Joe <joe@example.com>"),
            ("To", b" a@example.org"),
            ("Subject", b" folded\n\tsubject line"),
            ("Date", b" Fri, 28 Nov 2026 10:00:00 +0000"),
            ("Message-ID", b" <1@example.com>"),
        ];
        let body: [&[u8]; 2] = [b"Hello  world \r\n\r\nline", b" two\r\n\r\n\r\n"];
        let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
        let mut s = MessageSigner::new(keys, &SignOptions::from_config(cfg), &names);
        let mut raw = Vec::new();
        for (n, v) in headers {
            s.header(n, v).unwrap();
        }
        for c in body {
            s.body(c);
        }
        let sigs = s.finish().unwrap();
        for sig in &sigs {
            raw.extend_from_slice(b"DKIM-Signature:");
            raw.extend_from_slice(sig.value.replace('\n', "\r\n").as_bytes());
            raw.extend_from_slice(b"\r\n");
        }
        for (n, v) in headers {
            raw.extend_from_slice(n.as_bytes());
            raw.push(b':');
            raw.extend_from_slice(String::from_utf8_lossy(v).replace('\n', "\r\n").as_bytes());
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        for c in body {
            raw.extend_from_slice(c);
        }
        (sigs, raw)
    }

    #[tokio::test]
    async fn rsa_and_ed25519_sign_and_verify() {
        let rsa = crate::keys::tests::rsa_pem(2048, true);
        let ed = crate::keys::tests::openssl(&["genpkey", "-algorithm", "ED25519"]);
        let (k1, r1) = key(&ed, "ed");
        let (k2, r2) = key(&rsa, "rsa");
        let cfg = Config::default();
        let (sigs, raw) = sign_milter_style(&[k1, k2], &cfg);
        assert_eq!(sigs.len(), 2);
        assert_eq!(sigs[0].algorithm, "rsa-sha256");
        assert_eq!(sigs[1].algorithm, "ed25519-sha256");
        for s in &sigs {
            assert!(s.value.starts_with(" v=1; a="), "{}", s.value);
            assert!(!s.value.contains('\r') && !s.value.ends_with('\n'));
            assert!(s.value.contains("\n\t"));
            assert!(s.value.contains("c=relaxed/relaxed"));
            assert!(!s.value.contains(" l="));
            // From is oversigned: listed once more than present.
            let h = s
                .value
                .split("h=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap();
            let froms = h
                .split(':')
                .filter(|x| x.trim().eq_ignore_ascii_case("from"))
                .count();
            assert_eq!(froms, 2, "{h}");
            // Only present headers are signed (plus the oversigned From).
            let mut names: Vec<String> = h
                .split(':')
                .map(|x| x.trim().to_ascii_lowercase())
                .collect();
            names.sort();
            names.dedup();
            assert_eq!(
                names,
                ["date", "from", "message-id", "subject", "to"],
                "{h}"
            );
        }
        let v = Verifier::with_authenticator(
            mail_auth::MessageAuthenticator::new_system_conf().unwrap(),
            Caches::new(16),
        );
        v.caches().insert_dkim_key(
            "ed._domainkey.example.com",
            &r1,
            std::time::Duration::from_secs(60),
        );
        v.caches().insert_dkim_key(
            "rsa._domainkey.example.com",
            &r2,
            std::time::Duration::from_secs(60),
        );
        let rep = v.verify(&raw, "mx.test").await;
        assert_eq!(rep.results.len(), 2, "{rep:?}");
        assert!(rep.results.iter().all(|r| r.result == "pass"), "{rep:?}");
        assert!(
            rep.auth_results.starts_with(" mx.test;\n\tdkim=pass"),
            "{}",
            rep.auth_results
        );

        // Tampered body fails.
        let mut bad = raw.clone();
        let n = bad.len();
        bad[n - 8] = b'X';
        let rep = v.verify(&bad, "mx.test").await;
        assert!(rep.results.iter().all(|r| r.result != "pass"), "{rep:?}");
        let _ = KeyKind::Rsa;
    }

    #[tokio::test]
    async fn ttl_sets_x_and_legacy_1024_verifies() {
        let (k, r) = key(&crate::keys::tests::rsa_pem(1024, false), "old");
        let cfg = Config {
            signature_ttl: Some(3600),
            ..Config::default()
        };
        let (sigs, raw) = sign_milter_style(&[k], &cfg);
        assert!(sigs[0].value.contains("x="), "{}", sigs[0].value);
        let v = Verifier::with_authenticator(
            mail_auth::MessageAuthenticator::new_system_conf().unwrap(),
            Caches::new(16),
        );
        v.caches().insert_dkim_key(
            "old._domainkey.example.com",
            &r,
            std::time::Duration::from_secs(60),
        );
        let rep = v.verify(&raw, "mx.test").await;
        assert_eq!(rep.results[0].result, "pass", "{rep:?}");
    }

    #[test]
    fn header_after_body_is_refused_and_value_format() {
        let (k, _) = key(
            &crate::keys::tests::openssl(&["genpkey", "-algorithm", "ED25519"]),
            "s",
        );
        let mut s = MessageSigner::new(
            &[k],
            &SignOptions::from_config(&Config::default()),
            &["From"],
        );
        s.header("From", b" a@example.com").unwrap();
        s.body(b"x\r\n");
        assert!(matches!(
            s.header("To", b" b@example.com"),
            Err(SignError::HeaderAfterBody)
        ));
        assert_eq!(
            milter_value("DKIM-Signature: v=1; a=x;\r\n\tb=abc\r\n"),
            " v=1; a=x;\n\tb=abc"
        );
        let mut buf = Vec::new();
        push_crlf_normalized(&mut buf, b"a\nb\r\nc");
        assert_eq!(buf, b"a\r\nb\r\nc");
    }
}
