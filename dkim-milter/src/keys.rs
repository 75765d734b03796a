//! Private key parsing (PEM PKCS#1/PKCS#8, base64 DER, raw Ed25519 seed), the
//! legacy-RSA signer, DNS record (`{selector}.txt`) checks and permission checks.
//!
//! aws-lc (mail-auth's backend) refuses RSA keys under 2048 bits, but hosting panels
//! still carry 1024-bit keys; those sign through [`LegacyRsaKey`] (`rsa` 0.10,
//! constant-time) with a warning instead of breaking the domain.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mail_auth::crypto::{Algorithm, Ed25519Key, HashContext, HashImpl, RsaKey, Sha256, SigningKey};
use mail_auth::headers::Writable;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};

use crate::config::KeyPermissions;

/// Smallest RSA key accepted for signing (RFC 8301 §3.2).
pub const MIN_RSA_BITS: usize = 1024;
/// Below this, aws-lc refuses the key and [`LegacyRsaKey`] signs instead.
pub const AWS_LC_MIN_RSA_BITS: usize = 2048;

/// Why a key cannot be used; the file path is added by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Unreadable file.
    #[error("cannot read key: {0}")]
    Io(String),
    /// Not a key we understand.
    #[error("not a usable private key: {0}")]
    Format(String),
    /// RSA key below [`MIN_RSA_BITS`].
    #[error("RSA key of {0} bits is too small (minimum {MIN_RSA_BITS})")]
    TooSmall(usize),
    /// Permissions let others read or change the key.
    #[error("key data is not secure: {0}")]
    Unsafe(String),
    /// `{selector}.txt` publishes a different public key.
    #[error("DNS record {txt} does not match the private key (published key differs)")]
    RecordMismatch {
        /// The `.txt` file.
        txt: String,
    },
}

/// Key algorithm, for `a=` and the one-RSA-one-Ed25519 rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyKind {
    /// `rsa-sha256`.
    Rsa,
    /// `ed25519-sha256`.
    Ed25519,
}

impl KeyKind {
    /// The `a=` value.
    pub fn algorithm_name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "rsa-sha256",
            KeyKind::Ed25519 => "ed25519-sha256",
        }
    }
    /// The `k=` value.
    pub fn k(self) -> &'static str {
        match self {
            KeyKind::Rsa => "rsa",
            KeyKind::Ed25519 => "ed25519",
        }
    }
}

/// An RSA key of 1024..2047 bits, signed with `rsa` 0.10 (blinded, constant time).
pub struct LegacyRsaKey {
    inner: rsa::PrivateKey,
}

impl SigningKey for LegacyRsaKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        let mut hasher = <Sha256 as HashImpl>::hasher();
        input.write(&mut hasher);
        let digest = hasher.complete();
        self.inner
            .pkcs1v15_sign_prehash::<rsa::sha2::Sha256>(digest.as_ref())
            .map_err(|e| {
                mail_auth::Error::Crypto(mail_auth::crypto::CryptoError::Library(e.to_string()))
            })
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::RsaSha256
    }
}

/// Any signing key we load.
pub enum AnyKey {
    /// RSA 2048+ through aws-lc.
    Rsa(RsaKey<Sha256>),
    /// RSA 1024..2047 through `rsa` 0.10.
    LegacyRsa(Box<LegacyRsaKey>),
    /// Ed25519 through aws-lc.
    Ed25519(Ed25519Key),
}

impl SigningKey for AnyKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        match self {
            AnyKey::Rsa(k) => k.sign(input),
            AnyKey::LegacyRsa(k) => k.sign(input),
            AnyKey::Ed25519(k) => k.sign(input),
        }
    }

    fn algorithm(&self) -> Algorithm {
        match self {
            AnyKey::Ed25519(_) => Algorithm::Ed25519Sha256,
            _ => Algorithm::RsaSha256,
        }
    }
}

/// A parsed private key plus what we need to describe and check it.
pub struct ParsedKey {
    /// The signer.
    pub key: AnyKey,
    /// RSA or Ed25519.
    pub kind: KeyKind,
    /// RSA modulus size; 256 for Ed25519.
    pub bits: usize,
    /// The `p=` value this key needs in DNS (SPKI DER for RSA, raw 32 bytes for Ed25519).
    pub public_key: Vec<u8>,
    /// For RSA: PKCS#1 RSAPublicKey DER, which some hand-made records publish instead of SPKI.
    pub public_key_pkcs1: Option<Vec<u8>>,
}

impl std::fmt::Debug for ParsedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedKey")
            .field("kind", &self.kind)
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

impl ParsedKey {
    /// True for RSA keys under 2048 bits (signing works; log a warning).
    pub fn is_legacy(&self) -> bool {
        matches!(self.key, AnyKey::LegacyRsa(_))
    }

    /// The DNS TXT record value for this key (`v=DKIM1; k=…; p=…`).
    pub fn dns_record(&self) -> String {
        match self.kind {
            KeyKind::Rsa => format!(
                "v=DKIM1; h=sha256; k=rsa; p={}",
                B64.encode(&self.public_key)
            ),
            KeyKind::Ed25519 => format!("v=DKIM1; k=ed25519; p={}", B64.encode(&self.public_key)),
        }
    }

    /// True if the `p=` bytes of a published record belong to this key.
    pub fn matches_public(&self, p: &[u8]) -> bool {
        p == self.public_key.as_slice() || self.public_key_pkcs1.as_deref() == Some(p)
    }
}

/// PKCS#8 v1 (RFC 8410) header in front of a raw 32-byte Ed25519 seed.
pub const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn fmt_err(e: impl std::fmt::Display) -> KeyError {
    KeyError::Format(e.to_string())
}

/// Parses key data: PEM (`BEGIN RSA PRIVATE KEY` / `BEGIN PRIVATE KEY`), base64 DER
/// (KeyTable inline keys), or a base64 raw Ed25519 seed (dkimpy / OpenDKIM format).
pub fn parse_private_key(data: &[u8]) -> Result<ParsedKey, KeyError> {
    let text = std::str::from_utf8(data).unwrap_or("");
    if text.contains("-----BEGIN") {
        let der = PrivateKeyDer::from_pem_slice(data).map_err(|e| {
            KeyError::Format(format!("PEM: {e:?} (expected RSA or Ed25519 private key)"))
        })?;
        return parse_der(der);
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return Err(KeyError::Format("empty key data".into()));
    }
    let raw = B64
        .decode(compact.as_bytes())
        .map_err(|_| KeyError::Format("neither PEM nor base64 key data".into()))?;
    match raw.len() {
        32 => ed25519_from_seed(&raw),
        // libsodium-style seed || public key.
        64 => ed25519_from_seed(raw.get(..32).unwrap_or_default()),
        _ => {
            let pkcs8 = parse_der(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(raw.clone())));
            match pkcs8 {
                Ok(k) => Ok(k),
                Err(_) => parse_der(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(raw))),
            }
        }
    }
}

fn ed25519_from_seed(seed: &[u8]) -> Result<ParsedKey, KeyError> {
    let mut der = ED25519_PKCS8_V1_PREFIX.to_vec();
    der.extend_from_slice(seed);
    ed25519_from_pkcs8(&der)
}

fn ed25519_from_pkcs8(der: &[u8]) -> Result<ParsedKey, KeyError> {
    let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(der).map_err(fmt_err)?;
    let public_key = key.public_key();
    Ok(ParsedKey {
        key: AnyKey::Ed25519(key),
        kind: KeyKind::Ed25519,
        bits: 256,
        public_key,
        public_key_pkcs1: None,
    })
}

fn parse_der(der: PrivateKeyDer<'_>) -> Result<ParsedKey, KeyError> {
    let rsa_key = match &der {
        PrivateKeyDer::Pkcs1(d) => {
            rsa::PrivateKey::from_pkcs1_der(d.secret_pkcs1_der()).map_err(fmt_err)?
        }
        PrivateKeyDer::Pkcs8(d) => match rsa::PrivateKey::from_pkcs8_der(d.secret_pkcs8_der()) {
            Ok(k) => k,
            Err(rsa_err) => {
                return ed25519_from_pkcs8(d.secret_pkcs8_der()).map_err(|_| {
                    KeyError::Format(format!("PKCS#8 key is neither RSA ({rsa_err}) nor Ed25519"))
                });
            }
        },
        _ => {
            return Err(KeyError::Format(
                "unsupported key type (EC/SEC1); use RSA or Ed25519".into(),
            ));
        }
    };
    let bits = rsa_key.n().bit_width() as usize;
    if bits < MIN_RSA_BITS {
        return Err(KeyError::TooSmall(bits));
    }
    let public = rsa_key.to_public_key();
    let public_key = public
        .to_public_key_der()
        .map_err(fmt_err)?
        .as_bytes()
        .to_vec();
    let public_key_pkcs1 = public.to_pkcs1_der().ok().map(|d| d.as_bytes().to_vec());
    let key = if bits >= AWS_LC_MIN_RSA_BITS {
        AnyKey::Rsa(RsaKey::<Sha256>::from_key_der(der).map_err(fmt_err)?)
    } else {
        AnyKey::LegacyRsa(Box::new(LegacyRsaKey { inner: rsa_key }))
    };
    Ok(ParsedKey {
        key,
        kind: KeyKind::Rsa,
        bits,
        public_key,
        public_key_pkcs1,
    })
}

/// A DKIM key record as found in an opendkim-genkey `.txt` zone stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtRecord {
    /// The record text (quoted strings concatenated).
    pub record: String,
    /// `k=` (default `rsa`).
    pub k: String,
    /// Decoded `p=` (empty when revoked).
    pub p: Vec<u8>,
}

/// Parses `{selector}.txt`: either opendkim-genkey's zone stub with quoted strings
/// or a bare record `v=DKIM1; k=rsa; p=...`.
pub fn parse_txt_file(text: &str) -> Result<TxtRecord, String> {
    let mut record = String::new();
    if text.contains('"') {
        let mut in_q = false;
        for c in text.chars() {
            match (c, in_q) {
                ('"', _) => in_q = !in_q,
                (c, true) => record.push(c),
                _ => {}
            }
        }
    } else {
        record = text.trim().to_string();
    }
    let mut k = "rsa".to_string();
    let mut p = None;
    for tag in record.split(';') {
        let Some((name, value)) = tag.split_once('=') else {
            continue;
        };
        let value: String = value.chars().filter(|c| !c.is_whitespace()).collect();
        match name.trim() {
            "k" => k = value.to_ascii_lowercase(),
            "p" => {
                p = Some(
                    B64.decode(value.as_bytes())
                        .map_err(|_| "p= is not valid base64".to_string())?,
                )
            }
            _ => {}
        }
    }
    let p = p.ok_or_else(|| "no p= tag".to_string())?;
    Ok(TxtRecord { record, k, p })
}

/// Checks `{selector}.txt` next to the key (if any) against the private key.
/// `Ok(None)`: no `.txt`; `Ok(Some(record))`: matches.
pub fn check_txt(key: &ParsedKey, txt_path: &Path) -> Result<Option<TxtRecord>, KeyError> {
    let text = match std::fs::read_to_string(txt_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KeyError::Io(format!("{}: {e}", txt_path.display()))),
    };
    let rec = parse_txt_file(&text)
        .map_err(|e| KeyError::Format(format!("{}: {e}", txt_path.display())))?;
    if rec.k != key.kind.k() || !key.matches_public(&rec.p) {
        return Err(KeyError::RecordMismatch {
            txt: txt_path.display().to_string(),
        });
    }
    Ok(Some(rec))
}

/// Checks a key file's permissions the way OpenDKIM's RequireSafeKeys does (the file only).
/// Returns a warning text for tolerable findings.
pub fn check_permissions(path: &Path, policy: KeyPermissions) -> Result<Option<String>, KeyError> {
    if policy == KeyPermissions::Ignore {
        return Ok(None);
    }
    let meta = std::fs::metadata(path).map_err(|e| KeyError::Io(e.to_string()))?;
    let mode = meta.mode() & 0o777;
    let finding = if mode & 0o007 != 0 {
        Some((
            true,
            format!("mode {mode:04o}: readable or writable by everyone; run chmod 600"),
        ))
    } else if mode & 0o020 != 0 {
        Some((
            true,
            format!("mode {mode:04o}: group-writable; run chmod 600 (or 640)"),
        ))
    } else if mode & 0o040 != 0 {
        Some((
            false,
            format!("mode {mode:04o}: group-readable; fine only if the group is the milter's"),
        ))
    } else {
        None
    };
    match finding {
        Some((true, msg)) if policy == KeyPermissions::Refuse => Err(KeyError::Unsafe(msg)),
        Some((_, msg)) => Ok(Some(msg)),
        None => Ok(None),
    }
}

/// Reads and parses a key file with the permission check.
pub fn load_key_file(
    path: &Path,
    policy: KeyPermissions,
) -> Result<(ParsedKey, Option<String>), KeyError> {
    let warning = check_permissions(path, policy)?;
    let data = std::fs::read(path).map_err(|e| KeyError::Io(e.to_string()))?;
    Ok((parse_private_key(&data)?, warning))
}

/// Public key bytes of a `p=` value, whichever DER form: true if RSA SPKI/PKCS#1 parse.
pub fn is_rsa_public(p: &[u8]) -> bool {
    rsa::PublicKey::from_public_key_der(p).is_ok() || rsa::PublicKey::from_pkcs1_der(p).is_ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Runs openssl to make a key file in a test dir; returns its PEM.
    /// Runs `opendkim-genkey` into `{dir}/{domain}/{sel}.private` and returns the TXT record.
    pub(crate) fn opendkim_genkey(dir: &std::path::Path, domain: &str, sel: &str) -> String {
        let d = dir.join(domain);
        std::fs::create_dir_all(&d).unwrap();
        assert!(
            std::process::Command::new("opendkim-genkey")
                .args(["-D", d.to_str().unwrap(), "-d", domain, "-s", sel])
                .status()
                .unwrap()
                .success()
        );
        let txt = std::fs::read_to_string(d.join(format!("{sel}.txt"))).unwrap();
        parse_txt_file(&txt).unwrap().record
    }

    pub(crate) fn openssl(args: &[&str]) -> Vec<u8> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub(crate) fn rsa_pem(bits: u32, pkcs1: bool) -> Vec<u8> {
        let pkcs8 = openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            &format!("rsa_keygen_bits:{bits}"),
        ]);
        if !pkcs1 {
            return pkcs8;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        std::fs::write(&p, &pkcs8).unwrap();
        openssl(&["rsa", "-in", p.to_str().unwrap(), "-traditional"])
    }

    #[test]
    fn rsa_pkcs1_and_pkcs8_2048() {
        for pkcs1 in [true, false] {
            let pem = rsa_pem(2048, pkcs1);
            assert_eq!(
                String::from_utf8_lossy(&pem).contains("BEGIN RSA PRIVATE KEY"),
                pkcs1
            );
            let k = parse_private_key(&pem).unwrap();
            assert_eq!(k.kind, KeyKind::Rsa);
            assert_eq!(k.bits, 2048);
            assert!(!k.is_legacy());
            assert!(matches!(k.key, AnyKey::Rsa(_)));
            assert!(is_rsa_public(&k.public_key));
        }
    }

    #[test]
    fn rsa_1024_is_legacy_and_512_refused() {
        let k = parse_private_key(&rsa_pem(1024, false)).unwrap();
        assert!(k.is_legacy());
        assert_eq!(k.bits, 1024);
        let e = parse_private_key(&rsa_pem(512, true)).unwrap_err();
        assert_eq!(e, KeyError::TooSmall(512));
    }

    #[test]
    fn ed25519_pem_and_raw_seed() {
        let pem = openssl(&["genpkey", "-algorithm", "ED25519"]);
        let k = parse_private_key(&pem).unwrap();
        assert_eq!(k.kind, KeyKind::Ed25519);
        assert_eq!(k.public_key.len(), 32);
        // The same key as a raw base64 seed: last 32 bytes of the v1 PKCS#8 DER.
        let der = PrivateKeyDer::from_pem_slice(&pem).unwrap();
        let PrivateKeyDer::Pkcs8(d) = der else {
            panic!()
        };
        let seed = &d.secret_pkcs8_der()[16..48];
        let k2 = parse_private_key(B64.encode(seed).as_bytes()).unwrap();
        assert_eq!(k2.public_key, k.public_key);
    }

    #[test]
    fn base64_der_inline_key() {
        let pem = rsa_pem(2048, true);
        let der = PrivateKeyDer::from_pem_slice(&pem).unwrap();
        let PrivateKeyDer::Pkcs1(d) = der else {
            panic!()
        };
        let k = parse_private_key(B64.encode(d.secret_pkcs1_der()).as_bytes()).unwrap();
        assert_eq!(k.bits, 2048);
    }

    #[test]
    fn garbage_is_a_format_error() {
        assert!(matches!(parse_private_key(b""), Err(KeyError::Format(_))));
        assert!(matches!(
            parse_private_key(b"not a key!"),
            Err(KeyError::Format(_))
        ));
        assert!(matches!(
            parse_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(KeyError::Format(_))
        ));
        let ec = openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ]);
        assert!(matches!(parse_private_key(&ec), Err(KeyError::Format(_))));
    }

    #[test]
    fn opendkim_genkey_txt_matches_and_mismatch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        for sel in ["a", "b"] {
            let st = std::process::Command::new("opendkim-genkey")
                .args([
                    "-D",
                    dir.path().to_str().unwrap(),
                    "-d",
                    "example.com",
                    "-s",
                    sel,
                ])
                .status()
                .unwrap();
            assert!(st.success());
        }
        let (ka, _) = load_key_file(&dir.path().join("a.private"), KeyPermissions::Refuse).unwrap();
        let rec = check_txt(&ka, &dir.path().join("a.txt")).unwrap().unwrap();
        assert!(rec.record.starts_with("v=DKIM1; h=sha256; k=rsa; p=MII"));
        assert_eq!(ka.dns_record(), rec.record);
        let e = check_txt(&ka, &dir.path().join("b.txt")).unwrap_err();
        assert!(matches!(e, KeyError::RecordMismatch { .. }));
        assert_eq!(check_txt(&ka, &dir.path().join("none.txt")).unwrap(), None);
    }

    #[test]
    fn permissions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.private");
        std::fs::write(&p, rsa_pem(2048, false)).unwrap();
        let set = |m| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        set(0o600);
        assert_eq!(check_permissions(&p, KeyPermissions::Refuse).unwrap(), None);
        set(0o640);
        assert!(
            check_permissions(&p, KeyPermissions::Refuse)
                .unwrap()
                .unwrap()
                .contains("group-readable")
        );
        set(0o644);
        let e = check_permissions(&p, KeyPermissions::Refuse).unwrap_err();
        assert!(
            e.to_string().contains("not secure") && e.to_string().contains("0644"),
            "{e}"
        );
        assert!(
            check_permissions(&p, KeyPermissions::Warn)
                .unwrap()
                .is_some()
        );
        assert_eq!(check_permissions(&p, KeyPermissions::Ignore).unwrap(), None);
        assert!(load_key_file(&p, KeyPermissions::Refuse).is_err());
    }

    #[test]
    fn txt_parse_forms() {
        let r =
            parse_txt_file("v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
                .unwrap();
        assert_eq!(r.k, "ed25519");
        assert_eq!(r.p.len(), 32);
        assert!(parse_txt_file("v=DKIM1; k=rsa").is_err());
        assert!(parse_txt_file("v=DKIM1; p=!!!").is_err());
    }
}
