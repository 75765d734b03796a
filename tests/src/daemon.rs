//! A daemon of ours (dkim-milter, spam-milter, an example milter) run as a child process for
//! an end-to-end test: its output goes to a log file the test reads, it is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running child process whose stdout and stderr go to one log file.
#[derive(Debug)]
pub struct DaemonProcess {
    child: Option<Child>,
    log: PathBuf,
    name: String,
}

impl DaemonProcess {
    /// Spawns `cmd` (stdin closed, `RUST_LOG` removed so the config's level applies) with
    /// its output appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<DaemonProcess> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = cmd
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(DaemonProcess {
            child: Some(child),
            log: log.to_path_buf(),
            name: name.to_string(),
        })
    }

    /// Waits until the log contains `needle` (e.g. the daemon's "listening on" line); an
    /// exit or the timeout is an error carrying the log.
    pub fn wait_ready(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                bail!("{} exited with {st}:\n{}", self.name, self.log());
            }
            if Instant::now() >= end {
                bail!(
                    "{} did not start in {timeout:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits for the process to exit by itself; its exit code (`None`: killed by a
    /// signal). Past the timeout it is killed and that is an error carrying the log.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(mut c) = self.child.take() else {
            bail!("{} is not running", self.name);
        };
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Ok(st.code());
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                bail!("{} did not exit in {timeout:?}:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit (killed after that); true if it
    /// exited 0 in time.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        crate::sys::signal(c.id() as i32, libc::SIGTERM);
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `sig` to the process (nothing once it was terminated).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            crate::sys::signal(c.id() as i32, sig);
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        crate::sys::read_lossy(&self.log)
    }

    /// Waits until the log has at least `n` lines containing `needle`; returns them all.
    pub fn wait_lines(&self, needle: &str, n: usize, timeout: Duration) -> Result<Vec<String>> {
        let end = Instant::now() + timeout;
        loop {
            let lines: Vec<String> = self
                .log()
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_string)
                .collect();
            if lines.len() >= n {
                return Ok(lines);
            }
            if Instant::now() >= end {
                bail!("no {n} log line(s) with {needle:?} in:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
