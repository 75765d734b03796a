//! Real OpenDKIM as a milter on `inet:PORT@127.0.0.1`.

use crate::dkim::DkimKey;
use crate::ports::free_port;
use crate::sys::{self, Sandbox, require_binary, require_root, spawn_daemon};
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// Builder for [`OpenDkim`].
#[derive(Debug, Clone)]
pub struct OpenDkimBuilder {
    mode: String,
    key_table: Vec<String>,
    signing_table: Vec<String>,
    extra: Vec<String>,
}

/// A running `opendkim -f`, stopped on drop.
#[derive(Debug)]
pub struct OpenDkim {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
    sandbox: Sandbox,
}

impl OpenDkim {
    /// A builder: mode `s`, `Canonicalization relaxed/simple`,
    /// `OversignHeaders From`, internal hosts 127.0.0.1/::1/localhost.
    pub fn builder() -> OpenDkimBuilder {
        OpenDkimBuilder {
            mode: "s".into(),
            key_table: Vec::new(),
            signing_table: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Milter port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Postfix milter spec: `inet:127.0.0.1:PORT`.
    pub fn milter_spec(&self) -> String {
        format!("inet:127.0.0.1:{}", self.port)
    }

    /// The generated opendkim.conf.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The sandbox directory.
    pub fn sandbox(&self) -> &Path {
        self.sandbox.path()
    }
}

impl OpenDkimBuilder {
    /// `Mode` (`s`, `v` or `sv`).
    pub fn mode(mut self, mode: &str) -> Self {
        self.mode = mode.to_string();
        self
    }

    /// Signs mail from `*@key.domain` with `key` (KeyTable + SigningTable lines).
    pub fn key(self, key: &DkimKey) -> Self {
        let name = key.dns_name();
        self.key_table_line(&format!(
            "{name} {}:{}:{}",
            key.domain,
            key.selector,
            key.private_key.display()
        ))
        .signing_table_line(&format!("*@{} {name}", key.domain))
    }

    /// A raw KeyTable line (`name domain:selector:/path/key`).
    pub fn key_table_line(mut self, line: &str) -> Self {
        self.key_table.push(line.to_string());
        self
    }

    /// A raw SigningTable line (regex form: `*@domain keyname`).
    pub fn signing_table_line(mut self, line: &str) -> Self {
        self.signing_table.push(line.to_string());
        self
    }

    /// An extra opendkim.conf line (later lines win).
    pub fn config_line(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }

    /// Writes the config, checks it (`opendkim -n`), starts the daemon and
    /// waits for its port.
    pub fn start(self) -> Result<OpenDkim> {
        require_root("OpenDKIM")?;
        require_binary("/usr/sbin/opendkim")?;
        let sb = Sandbox::new("opendkim")?;
        let etc = sb.mkdir("etc")?;
        let logdir = sb.mkdir("log")?;
        let port = free_port()?;
        let kt = etc.join("KeyTable");
        let st = etc.join("SigningTable");
        let th = etc.join("TrustedHosts");
        std::fs::write(&kt, lines(&self.key_table))?;
        std::fs::write(&st, lines(&self.signing_table))?;
        std::fs::write(&th, "127.0.0.1\n::1\nlocalhost\n")?;
        let mut conf = format!(
            "Syslog no\nMode {mode}\nCanonicalization relaxed/simple\nOversignHeaders From\n\
             KeyTable file:{kt}\nSigningTable refile:{st}\nInternalHosts refile:{th}\n\
             ExternalIgnoreList refile:{th}\nSocket inet:{port}@127.0.0.1\n\
             PidFile {pid}\nRequireSafeKeys false\n",
            mode = self.mode,
            kt = kt.display(),
            st = st.display(),
            th = th.display(),
            pid = sb.path().join("opendkim.pid").display(),
        );
        if self.key_table.is_empty() {
            conf = conf
                .lines()
                .filter(|l| !l.starts_with("KeyTable") && !l.starts_with("SigningTable"))
                .map(|l| format!("{l}\n"))
                .collect();
        }
        conf.push_str(&lines(&self.extra));
        let config = etc.join("opendkim.conf");
        std::fs::write(&config, conf)?;
        let check = sys::run(
            Command::new("/usr/sbin/opendkim")
                .arg("-n")
                .arg("-x")
                .arg(&config),
        )?;
        if !check.status.success() {
            bail!(
                "opendkim -n rejected {}: {}{}",
                config.display(),
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let out_log = logdir.join("opendkim.stdout");
        let child = spawn_daemon(
            Command::new("/usr/sbin/opendkim")
                .arg("-f")
                .arg("-x")
                .arg(&config),
            &out_log,
        )?;
        let mut od = OpenDkim {
            child: Some(child),
            port,
            config,
            sandbox: sb,
        };
        sys::wait_until(Duration::from_secs(20), "OpenDKIM's milter port", || {
            if let Some(c) = od.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                bail!("opendkim exited with {st}: {}", sys::read_lossy(&out_log));
            }
            Ok(sys::port_open(port).then_some(()))
        })?;
        Ok(od)
    }
}

fn lines(v: &[String]) -> String {
    v.iter().map(|l| format!("{l}\n")).collect()
}

impl Drop for OpenDkim {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // OpenDKIM takes 1-5 s to exit on SIGTERM; do not wait for that.
            sys::stop_child(&mut c, Duration::from_millis(300));
        }
    }
}
