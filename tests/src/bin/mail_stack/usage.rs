//! What `up` prints: where everything is and commands to paste into another shell.

use super::accounts::{self, DEFAULT_MAILBOXES};
use super::layout::*;
use std::time::Duration;

/// The command users run (the script when this binary sits in the repository's target dir).
pub fn run_command(l: &Layout) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("stack/run-stack.sh");
    let cmd = if script.exists() {
        script.display().to_string()
    } else {
        "mail-stack".to_string()
    };
    if l.root() == std::path::Path::new(DEFAULT_STATE_DIR) {
        cmd
    } else {
        format!("{STATE_ENV}={} {cmd}", l.root().display())
    }
}

/// The banner printed once the stack is up.
pub fn print(l: &Layout, startup: Duration, dns_port: u16, detached: bool) {
    let s = l.root().display();
    let run = run_command(l);
    let domains = accounts::domains(l).unwrap_or_default().join(" ");
    let boxes = accounts::mailboxes(l).unwrap_or_default();
    let logins: Vec<String> = boxes
        .iter()
        .map(|b| match DEFAULT_MAILBOXES.iter().find(|(a, _)| a == b) {
            Some((_, p)) => format!("{b} / {p}"),
            None => b.clone(),
        })
        .collect();
    let aliases: Vec<String> = accounts::aliases(l)
        .unwrap_or_default()
        .iter()
        .map(|(f, t)| format!("{f} -> {t}"))
        .collect();
    let stop = if detached {
        format!("{run} down")
    } else {
        format!("Ctrl-C here, or {run} down")
    };
    println!(
        "\
mail stack up in {secs:.1} s; state directory {s}; stop it with: {stop}

  127.0.0.1:{MX_PORT}  Postfix, MX role (port 25): spam-milter + Rspamd, then the Maildirs
  127.0.0.1:{SUBMISSION_PORT}  Postfix, submission (587): STARTTLS + AUTH via Dovecot; spam-milter, dkim-milter
  127.0.0.1:{IMAPS_PORT}  Dovecot IMAPS        127.0.0.1:{POP3S_PORT}  Dovecot POP3S
  127.0.0.1:{SPAM_MILTER_PORT}  spam-milter          http://127.0.0.1:{SPAM_METRICS_PORT}/metrics
  127.0.0.1:{DKIM_MILTER_PORT}  dkim-milter          http://127.0.0.1:{DKIM_METRICS_PORT}/metrics
  127.0.0.1:{RSPAMD_NORMAL_PORT}  Rspamd normal worker http://127.0.0.1:{RSPAMD_CONTROLLER_PORT}/  Rspamd controller + web UI (loopback only)
  127.0.0.1:{SINK_PORT}  sink: every remote MX; what it got is in {s}/var/sink/
  127.0.0.1:{dns_port} DNS stub: the only resolver of Rspamd and dkim-milter (DKIM keys published)

  domains:    {domains}
  logins:     {logins}
  aliases:    {aliases}
  Maildirs:   {s}/var/mail/vdomains/DOMAIN/USER/{{new,cur}}
  DKIM keys:  {s}/etc/dkim/keys/DOMAIN/{SELECTOR}.private (+ .txt, the record to publish)
  flat files: {s}/etc/postfix/{{vdomains,vmailbox,virtual}}  {s}/etc/dovecot/users
  logs:       {s}/log/{{postfix,dovecot,rspamd,spam-milter,dkim-milter,sink}}.log

Try it from another shell:
  # outbound: SASL login, scored by Rspamd, DKIM-signed, delivered to the sink
  swaks --server 127.0.0.1:{SUBMISSION_PORT} --tls --auth PLAIN --auth-user user@example.test --auth-password userpass --from user@example.test --to friend@remote.test
  ls -t {s}/var/sink/ | head -2; grep policy= {s}/log/spam-milter.log | tail -1
  # the same without AUTH is refused
  swaks --server 127.0.0.1:{SUBMISSION_PORT} --tls --from user@example.test --to friend@remote.test
  # inbound: Rspamd's headers, then the Maildir (alias@example.test lands there too)
  swaks --server 127.0.0.1:{MX_PORT} --from alice@remote.test --to user@example.test
  ls {s}/var/mail/vdomains/example.test/user/new/
  # a domain we do not host (550), and GTUBE (554 5.7.1 Gtube pattern)
  swaks --server 127.0.0.1:{MX_PORT} --from alice@remote.test --to bob@not-ours.test
  swaks --server 127.0.0.1:{MX_PORT} --from alice@remote.test --to user@example.test --body 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X'
  # read it over IMAPS and POP3S
  /usr/bin/python3 -c \"import imaplib,ssl; m=imaplib.IMAP4_SSL('127.0.0.1',{IMAPS_PORT},ssl_context=ssl._create_unverified_context()); m.login('user@example.test','userpass'); print(m.select('INBOX'))\"
  openssl s_client -quiet -connect 127.0.0.1:{POP3S_PORT}   # then: USER user@example.test, PASS userpass, LIST, QUIT
  # operations (atomic file updates; new keys sign without a restart)
  {run} add-domain new.test
  {run} add-mailbox bob@new.test bobpass
  {run} add-alias info@new.test bob@new.test
  {run} status
  {run} --check      # every flow, on this running stack
",
        secs = startup.as_secs_f64(),
        logins = logins.join(", "),
        aliases = aliases.join(", "),
    );
}
