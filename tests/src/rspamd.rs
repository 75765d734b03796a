//! Real Rspamd 3.4 with a sandboxed `local.d`: normal worker (`/checkv2`),
//! proxy in milter mode, controller.
//!
//! # DNS: loopback only
//!
//! Every instance owns a [`DnsStub`] ([`Rspamd::dns`]) and `local.d/options.inc`
//! has `dns { nameserver = ["127.0.0.1:PORT"]; timeout = 1s; retransmits = 1; }`
//! (rspamd's upstream syntax takes `host:port`; `rspamadm configdump options`
//! shows `nameserver ["127.0.0.1:PORT"]`). fuzzy_check stays disabled: it
//! resolves its servers with getaddrinfo (the machine's resolver) at config
//! load. Measured here (Debian 12, 2 cores, warm cache), `strace -f -e
//! trace=network` over the whole rspamd tree from start through 10 scans of a
//! message from `IP: 198.51.100.7` with an external HELO and From domain:
//!
//! * before, with /etc/resolv.conf: 66 connect/sendto to 10.255.255.53:53.
//!   Each scan makes 18 lookups (8 IP RBLs, PTR, A/AAAA/MX of the HELO and
//!   From domains, SPF and `_dmarc` TXT, ASN TXT). Of 20 scans, 6 took
//!   1.0 s (a lost answer, then the 1 s timeout) and got `*_FAIL` /
//!   `DMARC_DNSFAIL` symbols; the rest 4-14 ms.
//! * after, with the stub: all 65 DNS packets went to 127.0.0.1:PORT and none
//!   anywhere else. The only other sockets were rspamd's own loopback ports
//!   and nscd's unix socket (getpwnam for `-u root`). 30 scans took 3.5-9 ms
//!   each (the first after start ~0.1 s), all with the same result
//!   (`add header`, 7.3, no `*_FAIL`).
//! * What rspamd asks besides the per-scan lookups: the controller resolves
//!   maps.rspamd.com (A/AAAA) to fetch maps over HTTPS. It gets NXDOMAIN
//!   ("cannot resolve maps.rspamd.com"), so no HTTP is attempted, and those
//!   maps use their bundled fallbacks. The RBL "monitored" probes ask for
//!   `1.0.0.127.<zone>` and random names under each RBL/URIBL zone and expect
//!   NXDOMAIN, which is what the stub gives, so no RBL is marked broken.
//!   Clients on 127.0.0.1 skip the IP-based checks.

use crate::dns::DnsStub;
use crate::ports::free_port;
use crate::sys::{self, FileLock, Sandbox, require_binary, require_root, spawn_daemon};
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// Builder for [`Rspamd`].
#[derive(Debug, Clone, Default)]
pub struct RspamdBuilder {
    local_d: Vec<(String, String)>,
}

/// A running rspamd (foreground main process), stopped on drop.
#[derive(Debug)]
pub struct Rspamd {
    child: Option<Child>,
    normal_port: u16,
    proxy_port: u16,
    controller_port: u16,
    log: PathBuf,
    // Dropped after the child is stopped in Drop::drop.
    dns: DnsStub,
    sandbox: Sandbox,
}

/// Result of a `/checkv2` scan.
#[derive(Debug, Clone)]
pub struct ScanResult {
    /// `action` (`no action`, `add header`, `rewrite subject`, `reject`, ...).
    pub action: String,
    /// `score`.
    pub score: f64,
    /// The raw JSON answer.
    pub json: String,
}

/// The rspamd DBDIR (hyperscan/TLD caches) shared by every instance so only
/// the first start of a CI run pays the ~10 s compile: `$STACK_RSPAMD_CACHE`,
/// else `<target>/rspamd-cache` next to the test binary, else
/// `/var/tmp/stack-tests-rspamd-cache`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("STACK_RSPAMD_CACHE") {
        return PathBuf::from(p);
    }
    // <target>/<profile>/deps/<test-binary>
    if let Ok(exe) = std::env::current_exe()
        && let Some(target) = exe.ancestors().nth(3)
        && target.join("CACHEDIR.TAG").exists()
    {
        return target.join("rspamd-cache");
    }
    PathBuf::from("/var/tmp/stack-tests-rspamd-cache")
}

impl Rspamd {
    /// A builder with the stack's local.d (see stack.md).
    pub fn builder() -> RspamdBuilder {
        RspamdBuilder::default()
    }

    /// Normal worker port (`/checkv2`).
    pub fn normal_port(&self) -> u16 {
        self.normal_port
    }

    /// rspamd_proxy port in milter mode.
    pub fn proxy_port(&self) -> u16 {
        self.proxy_port
    }

    /// Controller port (`/ping`, `/stat`, web UI; no password from loopback).
    pub fn controller_port(&self) -> u16 {
        self.controller_port
    }

    /// Postfix milter spec of the proxy: `inet:127.0.0.1:PORT`.
    pub fn milter_spec(&self) -> String {
        format!("inet:127.0.0.1:{}", self.proxy_port)
    }

    /// The loopback DNS stub that is rspamd's only resolver
    /// (`options.dns.nameserver`); add records here before scanning.
    pub fn dns(&self) -> &DnsStub {
        &self.dns
    }

    /// The main process's pid, also the process group of every worker (tests stop the
    /// whole group with SIGSTOP to make Rspamd hang).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// rspamd's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The sandbox directory.
    pub fn sandbox(&self) -> &Path {
        self.sandbox.path()
    }

    /// Scans a raw message through `POST /checkv2` on the normal worker.
    pub fn scan(&self, message: &[u8], headers: &[(&str, &str)]) -> Result<ScanResult> {
        let mut extra = String::new();
        for (k, v) in headers {
            extra.push_str(&format!("{k}: {v}\r\n"));
        }
        let (status, body) = http(
            self.normal_port,
            &format!(
                "POST /checkv2 HTTP/1.0\r\nContent-Length: {}\r\n{extra}\r\n",
                message.len()
            ),
            message,
        )?;
        if status != 200 {
            bail!("rspamd /checkv2 answered HTTP {status}: {body}");
        }
        let action = json_string(&body, "action")
            .with_context(|| format!("no \"action\" in rspamd answer: {body}"))?;
        let score = json_number(&body, "score")
            .with_context(|| format!("no \"score\" in rspamd answer: {body}"))?;
        Ok(ScanResult {
            action,
            score,
            json: body,
        })
    }
}

/// A minimal HTTP/1.0 exchange; returns (status, body).
fn http(port: u16, head: &str, body: &[u8]) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("malformed HTTP answer: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The first top-level-looking `"key": "value"` string in a JSON text.
pub fn json_string(json: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\"");
    let i = json.find(&pat)? + pat.len();
    let rest = json.get(i..)?.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest.get(..end)?.to_string())
}

/// The first `"key": number` in a JSON text.
pub fn json_number(json: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\"");
    let i = json.find(&pat)? + pat.len();
    let rest = json.get(i..)?.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')))
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

impl RspamdBuilder {
    /// Adds or replaces a `local.d/<name>` file.
    ///
    /// A replaced `options.inc` that sets no `nameserver` still gets the
    /// harness's `dns { nameserver = ["127.0.0.1:PORT"]; }` block appended
    /// (UCL merges the two `dns` blocks), so rspamd keeps resolving through
    /// the loopback stub only.
    pub fn local_d(mut self, name: &str, content: &str) -> Self {
        self.local_d.retain(|(n, _)| n != name);
        self.local_d.push((name.to_string(), content.to_string()));
        self
    }

    /// Starts rspamd and waits until the controller answers `/ping` and the
    /// normal and proxy ports accept connections.
    pub fn start(self) -> Result<Rspamd> {
        require_root("rspamd")?;
        require_binary("/usr/bin/rspamd")?;
        if !Path::new("/etc/rspamd/rspamd.conf").exists() {
            bail!("/etc/rspamd/rspamd.conf missing: run tests/stack/install-deps.sh");
        }
        let sb = Sandbox::new("rspamd")?;
        let conf = sb.mkdir("etc/local.d")?;
        let run = sb.mkdir("run")?;
        let logdir = sb.mkdir("log")?;
        let (normal_port, proxy_port, controller_port) = (free_port()?, free_port()?, free_port()?);
        let log = logdir.join("rspamd.log");
        let dns = DnsStub::builder().start()?;
        let mut files: Vec<(String, String)> = vec![
            (
                "worker-normal.inc".into(),
                format!("bind_socket = \"127.0.0.1:{normal_port}\";\ncount = 1;\n"),
            ),
            (
                "worker-controller.inc".into(),
                format!("bind_socket = \"127.0.0.1:{controller_port}\";\n"),
            ),
            (
                "worker-proxy.inc".into(),
                format!(
                    "bind_socket = \"127.0.0.1:{proxy_port}\";\nmilter = yes;\ntimeout = 120s;\n\
                     upstream \"local\" {{\n  default = yes;\n  hosts = \"127.0.0.1:{normal_port}\";\n}}\n"
                ),
            ),
            (
                "logging.inc".into(),
                format!(
                    "type = \"file\";\nfilename = \"{}\";\nlevel = \"info\";\n",
                    log.display()
                ),
            ),
            (
                "options.inc".into(),
                format!(
                    "enable_test_patterns = true;\ndns {{\n  nameserver = [\"{}\"];\n  \
                     timeout = 1s;\n  retransmits = 1;\n}}\n",
                    dns.nameserver()
                ),
            ),
            (
                "milter_headers.conf".into(),
                "extended_spam_headers = true;\nskip_local = false;\nskip_authenticated = false;\n\
                 use = [\"x-spamd-bar\", \"x-spam-level\", \"x-spam-status\", \"authentication-results\"];\n"
                    .into(),
            ),
            ("dkim_signing.conf".into(), "enabled = false;\n".into()),
            ("arc.conf".into(), "enabled = false;\n".into()),
            ("fuzzy_check.conf".into(), "enabled = false;\n".into()),
        ];
        for (n, c) in self.local_d {
            files.retain(|(x, _)| *x != n);
            files.push((n, c));
        }
        for (n, c) in files.iter_mut() {
            if n == "options.inc" && !c.contains("nameserver") {
                c.push_str(&format!(
                    "\ndns {{\n  nameserver = [\"{}\"];\n}}\n",
                    dns.nameserver()
                ));
            }
        }
        for (n, c) in &files {
            std::fs::write(conf.join(n), c)?;
        }
        let cache = cache_dir();
        std::fs::create_dir_all(&cache)
            .with_context(|| format!("creating rspamd cache {}", cache.display()))?;
        // One instance at a time compiles into the shared cache.
        let lock = FileLock::acquire(&cache.join(".start.lock"))?;
        let out_log = logdir.join("rspamd.stdout");
        let child = spawn_daemon(
            Command::new("/usr/bin/rspamd")
                .args([
                    "-f",
                    "-u",
                    "root",
                    "-g",
                    "root",
                    "-c",
                    "/etc/rspamd/rspamd.conf",
                ])
                .arg(format!(
                    "--var=LOCAL_CONFDIR={}",
                    sb.path().join("etc").display()
                ))
                .arg(format!("--var=DBDIR={}", cache.display()))
                .arg(format!("--var=RUNDIR={}", run.display()))
                .arg(format!("--var=LOGDIR={}", logdir.display())),
            &out_log,
        )?;
        let mut r = Rspamd {
            child: Some(child),
            normal_port,
            proxy_port,
            controller_port,
            log,
            dns,
            sandbox: sb,
        };
        sys::wait_until(Duration::from_secs(90), "rspamd /ping", || {
            if let Some(c) = r.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                bail!(
                    "rspamd exited with {st}: {}\n{}",
                    sys::read_lossy(&out_log),
                    sys::read_lossy(&r.log)
                );
            }
            let pong = http(controller_port, "GET /ping HTTP/1.0\r\n\r\n", b"")
                .map(|(s, b)| s == 200 && b.contains("pong"))
                .unwrap_or(false);
            Ok((pong && sys::port_open(normal_port) && sys::port_open(proxy_port)).then_some(()))
        })?;
        drop(lock);
        Ok(r)
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sys::stop_child(&mut c, Duration::from_secs(5));
        }
    }
}
