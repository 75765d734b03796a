//! Self-signed TLS certificates for a sandbox (openssl CLI).

use crate::sys::{require_binary, run_checked};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its unencrypted private key (PEM files).
#[derive(Debug, Clone)]
pub struct TlsCert {
    /// Certificate path.
    pub cert: PathBuf,
    /// Private key path.
    pub key: PathBuf,
}

/// Generates a self-signed EC P-256 certificate for `mx.example.test` and
/// 127.0.0.1 into `dir` (`cert.pem`, `key.pem`).
pub fn self_signed(dir: &Path) -> Result<TlsCert> {
    require_binary("/usr/bin/openssl")?;
    std::fs::create_dir_all(dir)?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    run_checked(
        Command::new("/usr/bin/openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "30", "-subj", "/CN=mx.example.test"])
            .args(["-addext", "subjectAltName=DNS:mx.example.test,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )?;
    Ok(TlsCert { cert, key })
}
