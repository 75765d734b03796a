//! Real OpenDKIM as a milter on `inet:PORT@127.0.0.1`.
//!
//! # DNS
//!
//! Signing (`Mode s`, the default and the only mode the tests use) does no
//! DNS at all: strace of a signing run shows OpenDKIM (Debian's build links
//! libunbound) reading /etc/resolv.conf at start but opening no network
//! socket. Verifying (`Mode v`/`sv`) looks keys up, and *without* resolver
//! settings Debian's OpenDKIM lets libunbound recurse from the root servers
//! (measured with `opendkim -t`: UDP to 198.41.0.4:53, 192.5.5.241:53, ...),
//! i.e. off loopback. So every instance owns a [`DnsStub`] ([`OpenDkim::dns`];
//! add key records there) and its config has `Nameservers 127.0.0.1@PORT`:
//! the option takes addresses only (`127.0.0.1:PORT` -> "can't configure DKIM
//! library: failed to set nameserver list"), but Debian's OpenDKIM hands them
//! to unbound's `ub_ctx_set_fwd`, which reads `@PORT`. Measured with
//! `opendkim -t` and the generated config in `Mode v`: the one TXT query went
//! to the stub and nowhere else, `dkim=pass`.
//!
//! Limits, measured: unbound answers `*.test` (and the other RFC 6761 names)
//! itself, so a verify-mode key under `.test` gives "key not found in DNS"
//! without any query: publish verify-mode keys under e.g. `*.example`, or use
//! [`crate::dkim::opendkim_test_verify`] (TestDNSData, no DNS). An unbound
//! file via `ResolverConfiguration` (`local-zone: "test." nodefault` plus a
//! forward-zone) lifts that, but OpenDKIM parses it per message and unbound's
//! flex parser is not thread-safe: the 64-connection load test killed
//! OpenDKIM with "fatal flex scanner internal error--end of buffer missed".

use crate::dkim::DkimKey;
use crate::dns::DnsStub;
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
    // Dropped after the child is stopped in Drop::drop.
    dns: DnsStub,
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

    /// The loopback DNS stub that is OpenDKIM's only resolver (see the
    /// module docs); add `selector._domainkey.domain` TXT records here for
    /// verify modes.
    pub fn dns(&self) -> &DnsStub {
        &self.dns
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
        let dns = DnsStub::builder().start()?;
        let mut conf = format!(
            "Syslog no\nMode {mode}\nCanonicalization relaxed/simple\nOversignHeaders From\n\
             KeyTable file:{kt}\nSigningTable refile:{st}\nInternalHosts refile:{th}\n\
             ExternalIgnoreList refile:{th}\nSocket inet:{port}@127.0.0.1\n\
             PidFile {pid}\nRequireSafeKeys false\nNameservers 127.0.0.1@{dns_port}\n",
            mode = self.mode,
            kt = kt.display(),
            st = st.display(),
            th = th.display(),
            pid = sb.path().join("opendkim.pid").display(),
            dns_port = dns.port(),
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
            dns,
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
