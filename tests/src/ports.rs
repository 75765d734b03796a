//! Free loopback port allocation.

use anyhow::{Context, Result};
use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Picks a free TCP port on 127.0.0.1 by binding port 0.
///
/// A port is never handed out twice by one process, so concurrent tests in
/// one test binary cannot be given the same port before a daemon binds it.
pub fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .context("binding 127.0.0.1:0 to find a free port")?
            .local_addr()?
            .port();
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("could not find an unused free port after 100 tries")
}

/// Picks `n` distinct free ports.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut out = [0u16; N];
    for p in out.iter_mut() {
        *p = free_port()?;
    }
    Ok(out)
}
