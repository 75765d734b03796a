//! Running swaks and reading its transcript.

use crate::sys::{self, require_binary};
use anyhow::Result;
use std::process::{Command, ExitStatus};

/// An SMTP reply: code and text of its last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    /// Three-digit code.
    pub code: u16,
    /// Text after the code (enhanced status code included), last line only.
    pub text: String,
}

/// Parses one reply line like `250 2.0.0 Ok` or `250-PIPELINING`.
pub fn parse_reply_line(line: &str) -> Option<SmtpReply> {
    let code = line.get(..3)?.parse().ok()?;
    let rest = line.get(3..)?;
    let text = rest.strip_prefix([' ', '-']).unwrap_or(rest);
    Some(SmtpReply {
        code,
        text: text.trim_end().to_string(),
    })
}

/// The result of a swaks run.
#[derive(Debug)]
pub struct SwaksRun {
    /// swaks' exit status (0 = whole transaction accepted).
    pub status: ExitStatus,
    /// stdout + stderr: the full transcript.
    pub transcript: String,
}

impl SwaksRun {
    /// Final lines of every server reply, in order (`<-`, `<~`, `<**`, `<~*`).
    pub fn replies(&self) -> Vec<SmtpReply> {
        self.transcript
            .lines()
            .filter_map(|l| {
                let rest = ["<**", "<~*", "<-", "<~"]
                    .iter()
                    .find_map(|p| l.trim_start().strip_prefix(p))?
                    .trim_start();
                // Only a reply's last line has a space after the code.
                (rest.as_bytes().get(3) != Some(&b'-')).then_some(rest)
            })
            .filter_map(parse_reply_line)
            .collect()
    }

    /// The last server reply before QUIT's 221 (the one that decided the
    /// transaction: the end-of-data reply, or the error that ended it).
    pub fn final_reply(&self) -> Option<SmtpReply> {
        let mut r = self.replies();
        while r.len() > 1 && r.last().is_some_and(|x| x.code == 221) {
            r.pop();
        }
        r.pop()
    }
}

/// The EHLO name [`swaks`] sends unless the caller passes its own `--ehlo`.
pub const DEFAULT_EHLO: &str = "client.remote.test";

/// True if `args` already set the HELO/EHLO/LHLO name (`--ehlo X`, `--helo=X`, `-h X`, ...).
fn sets_helo(args: &[&str]) -> bool {
    args.iter().any(|a| {
        let opt = a.split_once('=').map_or(*a, |(o, _)| o);
        matches!(
            opt,
            "--ehlo" | "--helo" | "--lhlo" | "-h" | "-ehlo" | "-helo" | "-lhlo"
        )
    })
}

/// Runs `/usr/bin/swaks ARGS` (a non-zero exit is not an error: inspect
/// `status`/`final_reply`).
///
/// Adds `--ehlo client.remote.test` ([`DEFAULT_EHLO`]) unless `args` name their own:
/// swaks' default HELO is this machine's name, which differs between machines. (swaks
/// 20201014 still calls `gethostbyname(hostname)` once at start for its default
/// `--from`/Message-Id; `/etc/hosts` normally answers that.)
pub fn swaks(args: &[&str]) -> Result<SwaksRun> {
    require_binary("/usr/bin/swaks")?;
    let mut cmd = Command::new("/usr/bin/swaks");
    if !sets_helo(args) {
        cmd.args(["--ehlo", DEFAULT_EHLO]);
    }
    let out = sys::run(cmd.args(args))?;
    Ok(SwaksRun {
        status: out.status,
        transcript: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// Sends one message the way a mail client submits it: STARTTLS, then AUTH PLAIN as
/// `user`/`password` on `127.0.0.1:port`, then the envelope. `extra` holds further swaks
/// arguments (`--header`, `--body`, `--ehlo`, ...).
pub fn submit(
    port: u16,
    (user, password): (&str, &str),
    from: &str,
    to: &str,
    extra: &[&str],
) -> Result<SwaksRun> {
    let server = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--server",
        &server,
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        user,
        "--auth-password",
        password,
        "--from",
        from,
        "--to",
        to,
    ];
    args.extend_from_slice(extra);
    swaks(&args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_helo_is_recognised() {
        assert!(!sets_helo(&[
            "--server",
            "127.0.0.1:25",
            "--from",
            "a@b.test"
        ]));
        assert!(sets_helo(&["--server", "x", "--ehlo", "laptop.test"]));
        assert!(sets_helo(&["--helo=laptop.test"]));
        assert!(sets_helo(&["-h", "laptop.test"]));
        // A value that looks like the option is not the option.
        assert!(!sets_helo(&["--header", "X-Note: --ehlo"]));
    }
}
