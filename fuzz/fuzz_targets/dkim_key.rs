//! Arbitrary bytes through dkim-milter's key loading: `keys::parse_private_key` (what
//! `load_key_file` and KeyTable inline keys do with a key's bytes: PEM PKCS#1/PKCS#8,
//! base64 DER, a base64 raw Ed25519 seed) and `keys::parse_txt_file` (the `{selector}.txt`
//! record next to a key).
//!
//! Checked: no panic; a refused key is a format error or too small (below 1024 bits);
//! a loaded key is consistent: Ed25519 has 256 bits and a 32-byte public key, RSA has at
//! least 1024 bits, a legacy signer exactly below 2048, an SPKI and a PKCS#1 public key;
//! its DNS record parses back (`parse_txt_file`) to its own `k=` and `p=`; and a
//! signature it makes verifies (aws-lc) against the public key it would publish, so the
//! record and the signer agree.
#![no_main]

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey};
use dkim_milter::keys::{
    AnyKey, KeyError, KeyKind, MIN_RSA_BITS, is_rsa_public, parse_private_key, parse_txt_file,
};
use libfuzzer_sys::fuzz_target;
use mail_auth::crypto::SigningKey;

const MESSAGE: &[u8] = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=fuzz; b=";

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(rec) = parse_txt_file(text)
    {
        assert_eq!(rec.k, rec.k.to_ascii_lowercase());
        assert!(!rec.k.contains(char::is_whitespace));
    }

    let key = match parse_private_key(data) {
        Ok(k) => k,
        Err(KeyError::Format(_)) => return,
        Err(KeyError::TooSmall(bits)) => {
            assert!(bits < MIN_RSA_BITS);
            return;
        }
        Err(e) => panic!("parsing bytes gave {e:?}"),
    };
    match key.kind {
        KeyKind::Ed25519 => {
            assert!(matches!(key.key, AnyKey::Ed25519(_)));
            assert_eq!(key.bits, 256);
            assert_eq!(key.public_key.len(), 32);
            assert!(key.public_key_pkcs1.is_none());
        }
        KeyKind::Rsa => {
            assert!(key.bits >= MIN_RSA_BITS);
            assert_eq!(key.is_legacy(), key.bits < 2048);
            assert!(matches!(key.key, AnyKey::Rsa(_) | AnyKey::LegacyRsa(_)));
            assert!(is_rsa_public(&key.public_key), "SPKI does not parse");
            let pkcs1 = key.public_key_pkcs1.as_deref().expect("PKCS#1 public key");
            assert!(is_rsa_public(pkcs1));
            assert!(key.matches_public(pkcs1));
        }
    }
    assert!(key.matches_public(&key.public_key));

    // The record we would tell the admin to publish names this key.
    let record = key.dns_record();
    let rec = parse_txt_file(&record).expect("own DNS record parses");
    assert_eq!(rec.k, key.kind.k());
    assert!(key.matches_public(&rec.p));

    // And verifies what the key signs (aws-lc verifies RSA up to 8192 bits).
    let sig = key.key.sign(MESSAGE).expect("a loaded key signs");
    if key.bits > 8192 {
        return;
    }
    let checked = match &key.key {
        AnyKey::Ed25519(_) => {
            assert_eq!(sig.len(), 64);
            let hash = digest::digest(&digest::SHA256, MESSAGE);
            UnparsedPublicKey::new(&signature::ED25519, &key.public_key).verify(hash.as_ref(), &sig)
        }
        AnyKey::Rsa(_) | AnyKey::LegacyRsa(_) => {
            assert_eq!(sig.len(), key.bits.div_ceil(8));
            let params = if key.is_legacy() {
                &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY
            } else {
                &signature::RSA_PKCS1_2048_8192_SHA256
            };
            let pkcs1 = key.public_key_pkcs1.as_deref().expect("PKCS#1 public key");
            UnparsedPublicKey::new(params, pkcs1).verify(MESSAGE, &sig)
        }
    };
    assert!(
        checked.is_ok(),
        "{:?} key: signature does not verify against its published key",
        key.kind
    );
});
