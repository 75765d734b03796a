//! The recording milter (`tests/stack/tools/record_milter.py`): captures the
//! raw frames an MTA sends, per connection.

use crate::ports::free_port;
use crate::sys::{self, require_binary, spawn_daemon};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// A running recorder, stopped on drop.
#[derive(Debug)]
pub struct MilterRecorder {
    child: Option<Child>,
    port: u16,
    out: PathBuf,
}

impl MilterRecorder {
    /// Starts the recorder on a free port, appending frames to `out` (and
    /// `out.conn<N>`, summary in `out.log`).
    pub fn start(out: &Path) -> Result<MilterRecorder> {
        require_binary(crate::PYTHON)?;
        let script = crate::stack_file("tools/record_milter.py");
        let port = free_port()?;
        let stdout = out.with_extension("stdout");
        let child = spawn_daemon(
            Command::new(crate::PYTHON)
                .arg(&script)
                .arg("--port")
                .arg(port.to_string())
                .arg("--out")
                .arg(out),
            &stdout,
        )?;
        let mut r = MilterRecorder {
            child: Some(child),
            port,
            out: out.to_path_buf(),
        };
        sys::wait_until(Duration::from_secs(10), "the milter recorder", || {
            if let Some(c) = r.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                bail!(
                    "record_milter.py exited with {st}: {}",
                    sys::read_lossy(&stdout)
                );
            }
            Ok(sys::read_lossy(&stdout).contains("listening").then_some(()))
        })?;
        Ok(r)
    }

    /// Postfix milter spec: `inet:127.0.0.1:PORT`.
    pub fn milter_spec(&self) -> String {
        format!("inet:127.0.0.1:{}", self.port)
    }

    /// The summary log: one `conn N: <cmd> <len>` line per frame.
    pub fn summary(&self) -> String {
        sys::read_lossy(&self.log_path())
    }

    fn log_path(&self) -> PathBuf {
        let mut p = self.out.clone().into_os_string();
        p.push(".log");
        PathBuf::from(p)
    }

    /// Command letters received on connection `n`, in order.
    pub fn commands(&self, n: usize) -> Vec<String> {
        let prefix = format!("conn {n}: ");
        self.summary()
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter(|l| *l != "closed")
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Waits until connection `n` is closed.
    pub fn wait_closed(&self, n: usize, timeout: Duration) -> Result<()> {
        sys::wait_for_line(&self.log_path(), &format!("conn {n}: closed"), timeout)
            .with_context(|| format!("recorder summary:\n{}", self.summary()))
            .map(|_| ())
    }

    /// Numbers of the connections that carried a MAIL FROM (`M`) frame.
    pub fn mail_connections(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .summary()
            .lines()
            .filter(|l| l.contains(": M "))
            .filter_map(|l| l.strip_prefix("conn ")?.split(':').next()?.parse().ok())
            .collect();
        v.dedup();
        v
    }

    /// The raw bytes of connection `n`.
    pub fn connection_bytes(&self, n: usize) -> Result<Vec<u8>> {
        let mut p = self.out.clone().into_os_string();
        p.push(format!(".conn{n}"));
        std::fs::read(&p).with_context(|| format!("reading {p:?}"))
    }
}

impl Drop for MilterRecorder {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sys::stop_child(&mut c, Duration::from_secs(2));
        }
    }
}
