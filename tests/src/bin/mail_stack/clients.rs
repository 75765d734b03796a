//! Mail clients for the checks: IMAPS and POP3S retrieval and an IMAP IDLE session, in
//! Debian's python3 (imaplib, poplib, ssl; the stack's certificate is self-signed).

use super::layout::{IMAPS_PORT, POP3S_PORT};
use anyhow::{Context, Result, bail};
use stack_tests::{PYTHON, sys};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

const TLS: &str = "import ssl\nctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n";

fn python(script: &str, args: &[&str]) -> Result<String> {
    let out = sys::run(
        Command::new(PYTHON)
            .arg("-c")
            .arg(format!("{TLS}{script}"))
            .args(args),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "client failed ({}): {}{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout.trim().to_string())
}

/// Logs in over IMAPS and searches INBOX for `subject`; returns "N message(s), B bytes".
pub fn imap_find(user: &str, pass: &str, subject: &str) -> Result<String> {
    const SCRIPT: &str = r#"
import imaplib, sys
port, user, pw, subj = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
m = imaplib.IMAP4_SSL('127.0.0.1', port, ssl_context=ctx)
m.login(user, pw)
typ, data = m.select('INBOX', readonly=True)
typ, data = m.search(None, 'SUBJECT', '"%s"' % subj)
nums = data[0].split()
size = 0
for n in nums:
    typ, msg = m.fetch(n, '(RFC822)')
    if subj.encode() not in msg[0][1]:
        sys.exit('message %s lacks the subject' % n.decode())
    size += len(msg[0][1])
m.logout()
if not nums:
    sys.exit('SEARCH SUBJECT found nothing')
print('LOGIN, SELECT INBOX, SEARCH SUBJECT: %d message(s), FETCH RFC822: %d bytes' % (len(nums), size))
"#;
    python(SCRIPT, &[&IMAPS_PORT.to_string(), user, pass, subject])
}

/// Logs in over POP3S and finds the message with `subject` among the headers (TOP n 0).
pub fn pop3_find(user: &str, pass: &str, subject: &str) -> Result<String> {
    const SCRIPT: &str = r#"
import poplib, sys
port, user, pw, subj = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
p = poplib.POP3_SSL('127.0.0.1', port, context=ctx)
p.user(user); p.pass_(pw)
count, size = p.stat()
for i in range(count, 0, -1):
    resp, lines, octets = p.top(i, 0)
    if any(subj.encode() in l for l in lines):
        print('message %d of %d (TOP %d 0: %d header lines)' % (i, count, i, len(lines)))
        p.quit(); sys.exit(0)
p.quit()
sys.exit('no message with that subject among %d' % count)
"#;
    python(SCRIPT, &[&POP3S_PORT.to_string(), user, pass, subject])
}

/// An IMAP session in IDLE on INBOX: it prints `IDLING <exists>` once the server said
/// "+ idling", then `EXISTS <n>` as soon as an untagged EXISTS raises the count.
pub struct IdleClient {
    child: Option<Child>,
    lines: BufReader<ChildStdout>,
    /// The INBOX message count when IDLE started.
    pub exists: u64,
}

const IDLE_SCRIPT: &str = r#"
import socket, sys
port, user, pw, wait = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', port), timeout=30))
f = s.makefile('rwb', buffering=0)
def line():
    l = f.readline()
    if not l:
        sys.exit('server closed the connection')
    return l.decode('utf-8', 'replace').rstrip('\r\n')
def cmd(tag, text):
    f.write(('%s %s\r\n' % (tag, text)).encode())
    untagged = []
    while True:
        l = line()
        if l.startswith(tag + ' '):
            if not l.startswith(tag + ' OK'):
                sys.exit('%s: %s' % (text.split()[0], l))
            return untagged
        untagged.append(l)
line()
cmd('a', 'LOGIN "%s" "%s"' % (user, pw))
exists = 0
for l in cmd('b', 'SELECT INBOX'):
    if l.startswith('* ') and l.endswith(' EXISTS'):
        exists = int(l.split()[1])
f.write(b'c IDLE\r\n')
while not line().startswith('+'):
    pass
print('IDLING', exists, flush=True)
s.settimeout(wait)
while True:
    l = line()
    if l.startswith('* ') and l.endswith(' EXISTS') and int(l.split()[1]) > exists:
        print('EXISTS', l.split()[1], flush=True)
        break
f.write(b'DONE\r\n')
while not line().startswith('c '):
    pass
cmd('d', 'LOGOUT')
"#;

impl IdleClient {
    /// Logs in, selects INBOX and enters IDLE; returns once the server confirmed IDLE.
    pub fn start(user: &str, pass: &str, wait_secs: u32) -> Result<IdleClient> {
        let mut child = Command::new(PYTHON)
            .arg("-c")
            .arg(format!("{TLS}{IDLE_SCRIPT}"))
            .args([&IMAPS_PORT.to_string(), user, pass, &wait_secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the IDLE client")?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut first = String::new();
        lines.read_line(&mut first)?;
        let Some(exists) = first
            .strip_prefix("IDLING ")
            .and_then(|n| n.trim().parse().ok())
        else {
            let out = child.wait_with_output()?;
            bail!(
                "IDLE client did not reach IDLE: {first}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Ok(IdleClient {
            child: Some(child),
            lines,
            exists,
        })
    }

    /// Blocks until the server announces new mail; returns the new EXISTS count.
    pub fn wait_exists(mut self) -> Result<u64> {
        let mut l = String::new();
        self.lines.read_line(&mut l)?;
        let out = self
            .child
            .take()
            .context("IDLE client gone")?
            .wait_with_output()?;
        match l
            .strip_prefix("EXISTS ")
            .and_then(|n| n.trim().parse().ok())
        {
            Some(n) if out.status.success() => Ok(n),
            _ => bail!(
                "no EXISTS from the server ({}): {l}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

impl Drop for IdleClient {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
