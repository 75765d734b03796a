//! A real Sendmail 8.17 as a milter client, for local submissions (`sendmail -bs`).
//!
//! Debian's `sendmail-bin` is downloaded with `apt-get download` (once, into a cache
//! under the temp dir) and unpacked with `dpkg-deb -x`, never installed, so it cannot
//! replace Postfix's `/usr/sbin/sendmail`. Each submission runs the unpacked binary with
//! a hand-written `-C` config in a private mount and UTS namespace (`unshare -m -u`):
//! `/etc/mail`, `/etc/hosts`, `/etc/nsswitch.conf` and `/etc/resolv.conf` are bind-mounted
//! over with the sandbox's own, host lookups are files-only, and the one mailer relays
//! to `[127.0.0.1]:PORT` (a [`crate::sink::Sink`]), so nothing touches the real system or
//! its resolver.
//!
//! The config is written by hand rather than built with `sendmail-cf`'s m4: it needs
//! only a relay mailer and a milter line, and m4 would pull in `sendmail-cf` and
//! `/etc/mail` paths.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::sys::{self, Sandbox};

/// The unpacked binary inside the cache.
const BINARY: &str = "usr/libexec/sendmail/sendmail";

/// The host name Sendmail runs as (its UTS namespace's), also its `j` macro.
pub const HOSTNAME: &str = "sm.sendmail.test";

/// Where `tests/stack/install-deps.sh` unpacks `sendmail-bin`.
const INSTALLED_ROOT: &str = "/var/cache/stack-tests/sendmail-bin";

/// Where `sendmail-bin` is unpacked: `STACK_SENDMAIL_ROOT`, else install-deps.sh's tree
/// when it is there, else a cache under the temp dir that survives runs (a download is
/// slow).
fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("STACK_SENDMAIL_ROOT") {
        return PathBuf::from(p);
    }
    let installed = Path::new(INSTALLED_ROOT);
    if installed.join(BINARY).is_file() {
        return installed.to_path_buf();
    }
    std::env::temp_dir().join("stack-tests-sendmail-bin")
}

/// Returns the unpacked `sendmail` binary, downloading and unpacking `sendmail-bin`
/// first when the cache does not have it.
pub fn binary() -> Result<PathBuf> {
    let root = cache_root();
    let bin = root.join(BINARY);
    if bin.is_file() {
        return Ok(bin);
    }
    sys::require_binary("/usr/bin/apt-get")?;
    sys::require_binary("/usr/bin/dpkg-deb")?;
    let parent = root.parent().context("sendmail cache has no parent")?;
    std::fs::create_dir_all(parent)?;
    // Unpack next to the cache and rename, so a parallel or interrupted run never sees
    // half a tree.
    let work = tempfile::tempdir_in(parent)?;
    let out = sys::run(
        Command::new("/usr/bin/apt-get")
            .args(["download", "sendmail-bin"])
            .current_dir(work.path()),
    )?;
    if !out.status.success() {
        bail!(
            "apt-get download sendmail-bin failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deb = std::fs::read_dir(work.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let tree = work.path().join("root");
    let out = sys::run(
        Command::new("/usr/bin/dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&tree),
    )?;
    if !out.status.success() {
        bail!(
            "dpkg-deb -x {}: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !tree.join(BINARY).is_file() {
        bail!("{} has no {BINARY}", deb.display());
    }
    match std::fs::rename(&tree, &root) {
        Ok(()) => {}
        // Another test unpacked it first.
        Err(_) if bin.is_file() => {}
        Err(e) => return Err(e).context(format!("moving the tree to {}", root.display())),
    }
    Ok(bin)
}

/// One Sendmail configuration: the milter it calls and the sink it relays to.
#[derive(Debug)]
pub struct Sendmail {
    bin: PathBuf,
    sandbox: Sandbox,
}

impl Sendmail {
    /// Writes the sandbox (config, queue, hosts, switch files) for a Sendmail that calls
    /// the milter at `milter` (`inet:PORT@127.0.0.1`, Sendmail's syntax) with
    /// `F=T` (tempfail when it is unreachable) and relays everything to
    /// `127.0.0.1:relay_port`.
    pub fn new(milter: &str, relay_port: u16) -> Result<Sendmail> {
        let bin = binary()?;
        sys::require_binary("/usr/bin/unshare")?;
        let sandbox = Sandbox::new("sendmail")?;
        let d = sandbox.path();
        for sub in ["mqueue", "etc-mail"] {
            std::fs::create_dir_all(d.join(sub))?;
            // Sendmail refuses a queue directory others can write or read.
            std::fs::set_permissions(d.join(sub), std::fs::Permissions::from_mode(0o700))?;
        }
        std::fs::write(
            d.join("hosts"),
            format!("127.0.0.1 localhost\n127.0.1.1 {HOSTNAME} sm\n::1 localhost\n"),
        )?;
        std::fs::write(d.join("service.switch"), "hosts files\naliases files\n")?;
        std::fs::write(
            d.join("nsswitch.conf"),
            "passwd: files\ngroup: files\nhosts: files\n",
        )?;
        // Nothing should ask DNS; should something try, it meets a closed port fast.
        std::fs::write(
            d.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )?;
        std::fs::write(d.join("aliases"), "")?;
        std::fs::write(d.join("sendmail.cf"), config(d, milter, relay_port))?;
        Ok(Sendmail { bin, sandbox })
    }

    /// The sandbox directory (config, queue), kept with `STACK_KEEP_SANDBOX=1`.
    pub fn dir(&self) -> &Path {
        self.sandbox.path()
    }

    /// Submits `message` (CRLF or LF lines) with `sendmail -bs`, speaking SMTP over the
    /// child's stdin/stdout one command at a time (Sendmail rejects input sent before its
    /// greeting). Returns the reply to the final `.`, e.g. `250 2.0.0 ... accepted`.
    pub fn submit_bs(&self, from: &str, to: &str, message: &[u8]) -> Result<String> {
        let d = self.sandbox.path();
        let script = format!(
            "set -e\n\
             hostname {HOSTNAME}\n\
             mount --bind {d}/etc-mail /etc/mail\n\
             mount --bind {d}/hosts /etc/hosts\n\
             mount --bind {d}/nsswitch.conf /etc/nsswitch.conf\n\
             mount --bind {d}/resolv.conf /etc/resolv.conf\n\
             exec {bin} -C {d}/sendmail.cf -bs\n",
            d = d.display(),
            bin = self.bin.display(),
        );
        let mut child = Command::new("/usr/bin/unshare")
            .args(["--mount", "--uts", "--propagation", "private", "sh", "-c"])
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sendmail -bs under unshare")?;
        let result = converse(&mut child, from, to, message);
        let _ = child.stdin.take();
        let status = child.wait()?;
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let reply = result.with_context(|| format!("sendmail -bs ({status}); stderr: {err}"))?;
        Ok(reply)
    }
}

/// The SMTP dialogue with `sendmail -bs`.
fn converse(child: &mut Child, from: &str, to: &str, message: &[u8]) -> Result<String> {
    let mut input = child.stdin.take().context("no stdin")?;
    let mut output = BufReader::new(child.stdout.take().context("no stdout")?);
    let mut transcript = String::new();
    let mut step = |input: &mut ChildStdin,
                    output: &mut BufReader<ChildStdout>,
                    line: Option<&[u8]>,
                    want: char|
     -> Result<String> {
        if let Some(line) = line {
            input.write_all(line)?;
            input.flush()?;
        }
        let reply = read_reply(output)?;
        transcript.push_str(&reply);
        if !reply.starts_with(want) {
            bail!("unexpected reply {reply:?}; transcript:\n{transcript}");
        }
        Ok(reply)
    };
    step(&mut input, &mut output, None, '2')?;
    step(&mut input, &mut output, Some(b"EHLO localhost\r\n"), '2')?;
    step(
        &mut input,
        &mut output,
        Some(format!("MAIL FROM:<{from}>\r\n").as_bytes()),
        '2',
    )?;
    step(
        &mut input,
        &mut output,
        Some(format!("RCPT TO:<{to}>\r\n").as_bytes()),
        '2',
    )?;
    step(&mut input, &mut output, Some(b"DATA\r\n"), '3')?;
    let mut data = Vec::with_capacity(message.len() + 8);
    for line in message.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            data.push(b'.');
        }
        data.extend_from_slice(line);
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    let reply = step(&mut input, &mut output, Some(&data), '2')?;
    step(&mut input, &mut output, Some(b"QUIT\r\n"), '2')?;
    Ok(reply)
}

/// One (possibly multi-line) SMTP reply.
fn read_reply(output: &mut impl BufRead) -> Result<String> {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        if output.read_line(&mut line)? == 0 {
            bail!("sendmail closed its output; so far: {reply:?}");
        }
        let more = line.as_bytes().get(3) == Some(&b'-');
        reply.push_str(&line);
        if !more {
            return Ok(reply);
        }
    }
}

/// A minimal `sendmail.cf` (config version 10): every address goes to the relay through
/// one `[IPC]` mailer; the milter is the only input filter. Local and prog mailers are
/// required by Sendmail and never used.
fn config(d: &Path, milter: &str, relay_port: u16) -> String {
    let d = d.display();
    format!(
        "V10/Berkeley\n\
         Cwlocalhost\n\
         Dj{HOSTNAME}\n\
         O QueueDirectory={d}/mqueue\n\
         O HostsFile={d}/hosts\n\
         O ServiceSwitchFile={d}/service.switch\n\
         O AliasFile={d}/aliases\n\
         O PidFile={d}/sendmail.pid\n\
         O StatusFile={d}/statistics\n\
         O DontProbeInterfaces=true\n\
         O ResolverOptions=-DNSRCH -DEFNAMES\n\
         O DeliveryMode=interactive\n\
         O LogLevel=9\n\
         O InputMailFilters=dkim\n\
         Xdkim, S={milter}, F=T, T=C:10s;S:30s;R:30s;E:60s\n\
         H?D?Date: $a\n\
         H?F?From: $?x$x <$g>$|$g$.\n\
         H?M?Message-Id: <$t.$i@$j>\n\
         Mlocal, P=/bin/false, F=lsDFM, A=false\n\
         Mprog, P=/bin/false, F=lsDFM, A=false\n\
         Mrelay, P=[IPC], F=mDFMuXa, E=\\r\\n, L=990, A=TCP $h {relay_port}\n\
         S3\n\
         R$*\t\t$@ $1\n\
         S0\n\
         R$*\t\t$#relay $@ [127.0.0.1] $: $1\n\
         S1\n\
         S2\n\
         S4\n\
         R$*\t\t$@ $1\n"
    )
}
