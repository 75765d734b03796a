//! `dkim-milter keygen`: writes the opendkim-genkey layout so panels and the key store
//! need no OpenDKIM tools: `{keys-dir}/{domain}/` (0700), `{selector}.private`
//! (PKCS#8 PEM, 0600) and `{selector}.txt` (the zone stub opendkim-genkey writes).
//! Never overwrites an existing key or record.
//!
//! With an owner (the daemon's `user`, when run as root) the domain dir becomes 0750 and
//! both files are chowned to that user and group, so the daemon can still read the key
//! after it drops root (see [`crate::process`]); without, files belong to the caller.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::keys::{self, KeyKind};

/// Key type to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    /// RSA with this many bits (2048, 3072, 4096 or 8192).
    Rsa(usize),
    /// Ed25519 (publish it next to an RSA key: many receivers only check RSA).
    Ed25519,
}

/// Key generation failed; nothing was overwritten.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// Bad domain/selector/bits from the user.
    #[error("{0}")]
    Usage(String),
    /// The key or record file already exists.
    #[error("{0} already exists; refusing to overwrite (pick another --selector)")]
    Exists(PathBuf),
    /// File system error.
    #[error("{path}: {error}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        error: std::io::Error,
    },
    /// Crypto library failure.
    #[error("key generation failed: {0}")]
    Crypto(String),
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The private key file.
    pub private_path: PathBuf,
    /// The `.txt` zone stub.
    pub txt_path: PathBuf,
    /// The TXT record value (`v=DKIM1; …; p=…`).
    pub record: String,
    /// The `.txt` file content.
    pub zone_text: String,
}

fn valid_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// opendkim-genkey's `.txt` format: `sel._domainkey IN TXT ( "…" "…" ) ; ----- DKIM key …`.
pub fn zone_text(domain: &str, selector: &str, kind: KeyKind, public_b64: &str) -> String {
    let head = match kind {
        KeyKind::Rsa => "v=DKIM1; h=sha256; k=rsa; ",
        KeyKind::Ed25519 => "v=DKIM1; k=ed25519; ",
    };
    let p = format!("p={public_b64}");
    let mut chunks = Vec::new();
    let mut rest = p.as_str();
    while !rest.is_empty() {
        let (a, b) = rest.split_at(rest.len().min(250));
        chunks.push(a);
        rest = b;
    }
    let mut s = format!("{selector}._domainkey\tIN\tTXT\t( \"{head}\"");
    for c in chunks {
        s.push_str(&format!("\n\t  \"{c}\""));
    }
    s.push_str(&format!(" )  ; ----- DKIM key {selector} for {domain}\n"));
    s
}

fn pem(label: &str, der: &[u8]) -> String {
    let b = B64.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

fn write_new(path: &Path, mode: u32, data: &[u8]) -> Result<(), KeygenError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|error| {
            if error.kind() == std::io::ErrorKind::AlreadyExists {
                KeygenError::Exists(path.to_path_buf())
            } else {
                KeygenError::Io {
                    path: path.to_path_buf(),
                    error,
                }
            }
        })?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|error| KeygenError::Io {
            path: path.to_path_buf(),
            error,
        })
}

/// Generates a key for `domain`/`selector` under `keys_dir`, owned by the caller.
pub fn generate(
    keys_dir: &Path,
    domain: &str,
    selector: &str,
    algo: Algo,
) -> Result<Generated, KeygenError> {
    generate_for(keys_dir, domain, selector, algo, None)
}

fn chown(path: &Path, owner: &crate::process::Target) -> Result<(), KeygenError> {
    std::os::unix::fs::chown(path, Some(owner.uid.as_raw()), Some(owner.gid.as_raw())).map_err(
        |error| KeygenError::Io {
            path: path.to_path_buf(),
            error,
        },
    )
}

/// Like [`generate`]; with `owner`, the domain dir (0750) and both files belong to it.
pub fn generate_for(
    keys_dir: &Path,
    domain: &str,
    selector: &str,
    algo: Algo,
    owner: Option<&crate::process::Target>,
) -> Result<Generated, KeygenError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !valid_label_name(&domain) || !domain.contains('.') {
        return Err(KeygenError::Usage(format!(
            "--domain {domain:?} is not a valid domain name"
        )));
    }
    if !valid_label_name(selector) {
        return Err(KeygenError::Usage(format!(
            "--selector {selector:?} is not a valid selector (letters, digits, '-', '_', '.')"
        )));
    }
    let pkcs8 = match algo {
        Algo::Rsa(bits) => {
            let size = match bits {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                4096 => KeySize::Rsa4096,
                8192 => KeySize::Rsa8192,
                _ => {
                    return Err(KeygenError::Usage(format!(
                        "--bits {bits}: choose 2048, 3072, 4096 or 8192 (1024 is too weak to create)"
                    )));
                }
            };
            let kp = KeyPair::generate(size).map_err(|e| KeygenError::Crypto(e.to_string()))?;
            let der: Pkcs8V1Der<'static> = kp
                .as_der()
                .map_err(|e| KeygenError::Crypto(e.to_string()))?;
            der.as_ref().to_vec()
        }
        Algo::Ed25519 => {
            // aws-lc emits PKCS#8 v2 (RFC 5958, with the public key), which OpenSSL and
            // so OpenDKIM do not read; write the v1 form (RFC 8410) with the same seed.
            let v2 = mail_auth::crypto::Ed25519Key::generate_pkcs8()
                .map_err(|e| KeygenError::Crypto(e.to_string()))?;
            let seed = v2
                .windows(4)
                .position(|w| w == [0x04, 0x22, 0x04, 0x20])
                .and_then(|i| v2.get(i + 4..i + 36))
                .ok_or_else(|| KeygenError::Crypto("unexpected Ed25519 PKCS#8 layout".into()))?;
            let mut v1 = keys::ED25519_PKCS8_V1_PREFIX.to_vec();
            v1.extend_from_slice(seed);
            v1
        }
    };
    let pem_text = pem("PRIVATE KEY", &pkcs8);
    // Round-trip through our own loader: what we write is what the store will read.
    let parsed = keys::parse_private_key(pem_text.as_bytes())
        .map_err(|e| KeygenError::Crypto(e.to_string()))?;
    let public_b64 = B64.encode(&parsed.public_key);
    let zone = zone_text(&domain, selector, parsed.kind, &public_b64);

    let dir = keys_dir.join(&domain);
    DirBuilder::new()
        .recursive(true)
        .mode(if owner.is_some() { 0o750 } else { 0o700 })
        .create(&dir)
        .map_err(|error| KeygenError::Io {
            path: dir.clone(),
            error,
        })?;
    if let Some(o) = owner {
        chown(&dir, o)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o750))
            .map_err(|error| KeygenError::Io {
                path: dir.clone(),
                error,
            })?;
    }
    let private_path = dir.join(format!("{selector}.private"));
    let txt_path = dir.join(format!("{selector}.txt"));
    for p in [&private_path, &txt_path] {
        if p.exists() {
            return Err(KeygenError::Exists(p.clone()));
        }
    }
    write_new(&private_path, 0o600, pem_text.as_bytes())?;
    let rest = write_new(&txt_path, 0o644, zone.as_bytes()).and_then(|()| match owner {
        Some(o) => chown(&private_path, o).and_then(|()| chown(&txt_path, o)),
        None => Ok(()),
    });
    if let Err(e) = rest {
        // Do not leave a key without its record (or unreadable for the daemon) behind.
        let _ = std::fs::remove_file(&private_path);
        let _ = std::fs::remove_file(&txt_path);
        return Err(e);
    }
    Ok(Generated {
        private_path,
        txt_path,
        record: parsed.dns_record(),
        zone_text: zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyPermissions;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn rsa_layout_modes_record_and_no_overwrite() {
        let t = tempfile::tempdir().unwrap();
        let g = generate(t.path(), "Example.COM", "s1", Algo::Rsa(2048)).unwrap();
        let dir = t.path().join("example.com");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(&g.private_path)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let pemtext = std::fs::read_to_string(&g.private_path).unwrap();
        assert!(pemtext.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(
            g.zone_text.starts_with(
                "s1._domainkey\tIN\tTXT\t( \"v=DKIM1; h=sha256; k=rsa; \"\n\t  \"p=MII"
            )
        );
        assert!(
            g.zone_text
                .ends_with(" )  ; ----- DKIM key s1 for example.com\n")
        );
        // Our loader reads it back, with a matching record, and the permission check passes.
        let (k, warn) = keys::load_key_file(&g.private_path, KeyPermissions::Refuse).unwrap();
        assert_eq!(warn, None);
        assert_eq!(k.bits, 2048);
        let rec = keys::check_txt(&k, &g.txt_path).unwrap().unwrap();
        assert_eq!(rec.record, g.record);
        // OpenSSL reads the key too.
        let st = std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-in"])
            .arg(&g.private_path)
            .status()
            .unwrap();
        assert!(st.success());
        let before = std::fs::read(&g.private_path).unwrap();
        let e = generate(t.path(), "example.com", "s1", Algo::Ed25519).unwrap_err();
        assert!(matches!(e, KeygenError::Exists(_)), "{e}");
        assert_eq!(std::fs::read(&g.private_path).unwrap(), before);
    }

    /// As root with the daemon's user: that user owns dir and files, and can read the
    /// key (checked by reading it as that user with `setpriv`).
    #[test]
    fn owner_gets_dir_and_files() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let target = crate::process::UserSpec::parse("nobody")
            .unwrap()
            .resolve()
            .unwrap();
        let g = generate_for(t.path(), "example.com", "s1", Algo::Ed25519, Some(&target)).unwrap();
        let dir = std::fs::metadata(t.path().join("example.com")).unwrap();
        assert_eq!(dir.mode() & 0o777, 0o750);
        assert_eq!(
            (dir.uid(), dir.gid()),
            (target.uid.as_raw(), target.gid.as_raw())
        );
        let key = std::fs::metadata(&g.private_path).unwrap();
        assert_eq!(key.mode() & 0o777, 0o600);
        assert_eq!(
            (key.uid(), key.gid()),
            (target.uid.as_raw(), target.gid.as_raw())
        );
        let txt = std::fs::metadata(&g.txt_path).unwrap();
        assert_eq!(txt.uid(), target.uid.as_raw());
        let o = std::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"])
            .arg(&g.private_path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.stdout, std::fs::read(&g.private_path).unwrap());
        // Without an owner the caller (root) keeps them, and nobody cannot read the key.
        let g = generate(t.path(), "other.com", "s1", Algo::Ed25519).unwrap();
        let o = std::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"])
            .arg(&g.private_path)
            .output()
            .unwrap();
        assert!(!o.status.success());
    }

    #[test]
    fn ed25519_and_usage_errors() {
        let t = tempfile::tempdir().unwrap();
        let g = generate(t.path(), "example.com", "ed", Algo::Ed25519).unwrap();
        assert!(g.record.starts_with("v=DKIM1; k=ed25519; p="));
        let st = std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-in"])
            .arg(&g.private_path)
            .status()
            .unwrap();
        assert!(st.success(), "openssl cannot read our Ed25519 PKCS#8");
        for (d, s, a) in [
            ("example.com", "s", Algo::Rsa(1024)),
            ("nodot", "s", Algo::Ed25519),
            ("example.com", "../x", Algo::Ed25519),
            ("exa/mple.com", "s", Algo::Ed25519),
        ] {
            assert!(matches!(
                generate(t.path(), d, s, a),
                Err(KeygenError::Usage(_))
            ));
        }
    }
}
