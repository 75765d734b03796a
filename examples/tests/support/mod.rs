//! Starting the example binaries for the integration tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running example binary on a unix socket in its own temporary directory; killed
/// (SIGKILL) on drop.
pub struct Running {
    child: Child,
    /// The milter socket.
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bin --socket unix:<tmp>/milter.sock ARGS` and waits until it accepts.
pub fn start(bin: &str, args: &[&str]) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("milter.sock");
    let child = Command::new(bin)
        .arg("--socket")
        .arg(format!("unix:{}", socket.display()))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn example");
    let mut running = Running {
        child,
        socket,
        _dir: dir,
    };
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(&running.socket).is_ok() {
            return running;
        }
        if let Ok(Some(status)) = running.child.try_wait() {
            panic!("{bin} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{bin} did not listen on {}", running.socket.display());
}
