//! `log-target = "syslog"`: the real daemon logs through `syslog(3)` to a `/dev/log` of the
//! test's own (a private mount namespace), with the mail facility, and the per-message
//! decision line arrives there (a message submitted through a real Sendmail `-bs`).

mod support;

use std::process::Command;

use stack_tests::daemon::DaemonProcess;
use stack_tests::dns::DnsStub;
use stack_tests::sendmail::Sendmail;
use stack_tests::sink::Sink;
use stack_tests::syslog::SyslogListener;
use support::*;

/// The daemon under the listener's namespace, with `extra` config lines.
fn start(
    syslog: &SyslogListener,
    dir: &std::path::Path,
    keys: &std::path::Path,
    dns: &DnsStub,
    extra: &str,
) -> (DaemonProcess, u16) {
    let port = stack_tests::ports::free_port().unwrap();
    let config = dir.join("dkim.toml");
    std::fs::write(
        &config,
        format!(
            "socket = \"inet:127.0.0.1:{port}\"\ndns-servers = [\"{ns}\"]\nkeys-dir = {keys:?}\n\
             authserv-id = \"{AUTHSERV}\"\nallow-root = true\n{extra}\n",
            ns = dns.nameserver(),
            keys = keys.display().to_string(),
        ),
    )
    .unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_dkim-milter"));
    let mut cmd: Command = syslog.command(bin, &["--config", config.to_str().unwrap()]);
    let proc = DaemonProcess::spawn("dkim-milter", &mut cmd, &dir.join("stderr.log")).unwrap();
    (proc, port)
}

#[test]
fn syslog_target_sends_mail_facility_lines_with_the_decision() {
    let syslog = SyslogListener::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    genkey(keys.path(), "example.com", "sys2026", 2048);
    let dns = DnsStub::builder().start().unwrap();
    let (proc, port) = start(
        &syslog,
        dir.path(),
        keys.path(),
        &dns,
        "log-target = \"syslog\"\nsyslog-facility = \"mail\"",
    );
    let ready = syslog
        .wait_for("dkim-milter listening on", T)
        .unwrap_or_else(|e| panic!("{e:#}\nstderr: {}", proc.log()));
    let sink = Sink::start().unwrap();
    let sm = Sendmail::new(&format!("inet:{port}@127.0.0.1"), sink.port()).unwrap();
    let msg = message("www-data@example.com", "friend@remote.test", "via syslog");
    sm.submit_bs("www-data@example.com", "friend@remote.test", &msg)
        .unwrap_or_else(|e| panic!("{e:#}"));
    sink.wait_for(1, T).unwrap();
    let decision = syslog
        .wait_for("from=www-data@example.com: signed", T)
        .unwrap_or_else(|e| panic!("{e:#}"));
    for line in ready.iter().chain(&decision) {
        // <PRI> = mail (2) * 8 + notice (5: tracing's INFO, as syslog-tracing maps it);
        // ident and pid from openlog(LOG_PID).
        assert_eq!(line.pri, Some(2 * 8 + 5), "{}", line.raw);
        assert!(line.raw.contains(" dkim-milter["), "{}", line.raw);
    }
    assert!(
        decision[0]
            .raw
            .contains("local submission (no client address)"),
        "{}",
        decision[0].raw
    );
    // Nothing of it went to stderr.
    assert!(!proc.log().contains("listening on"), "{}", proc.log());
}

#[test]
fn syslog_facility_is_configurable_and_warnings_keep_their_severity() {
    let syslog = SyslogListener::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    // A domain directory without keys: a warning at start.
    std::fs::create_dir_all(keys.path().join("empty.example")).unwrap();
    let dns = DnsStub::builder().start().unwrap();
    let (proc, _port) = start(
        &syslog,
        dir.path(),
        keys.path(),
        &dns,
        "log-target = \"syslog\"\nsyslog-facility = \"local3\"",
    );
    let ready = syslog
        .wait_for("dkim-milter listening on", T)
        .unwrap_or_else(|e| panic!("{e:#}\nstderr: {}", proc.log()));
    assert_eq!(ready[0].facility(), Some(19), "{}", ready[0].raw);
    assert_eq!(ready[0].severity(), Some(5), "{}", ready[0].raw);
    let warn = syslog
        .wait_for("empty.example", T)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(warn[0].facility(), Some(19), "{}", warn[0].raw);
    assert_eq!(warn[0].severity(), Some(4), "{}", warn[0].raw);
}

#[test]
fn journald_target_sends_native_fields_with_the_mail_facility() {
    let journal = SyslogListener::start_journald().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    genkey(keys.path(), "example.com", "jd2026", 2048);
    let dns = DnsStub::builder().start().unwrap();
    let (proc, port) = start(
        &journal,
        dir.path(),
        keys.path(),
        &dns,
        "log-target = \"journald\"",
    );
    let ready = journal
        .wait_for("dkim-milter listening on", T)
        .unwrap_or_else(|e| panic!("{e:#}\nstderr: {}", proc.log()));
    let sink = Sink::start().unwrap();
    let sm = Sendmail::new(&format!("inet:{port}@127.0.0.1"), sink.port()).unwrap();
    let msg = message("www-data@example.com", "friend@remote.test", "via journal");
    sm.submit_bs("www-data@example.com", "friend@remote.test", &msg)
        .unwrap_or_else(|e| panic!("{e:#}"));
    sink.wait_for(1, T).unwrap();
    let decision = journal
        .wait_for("from=www-data@example.com: signed", T)
        .unwrap_or_else(|e| panic!("{e:#}"));
    for line in ready.iter().chain(&decision) {
        let f = |k| line.journal_field(k);
        assert_eq!(f("SYSLOG_FACILITY").as_deref(), Some("2"), "{}", line.raw);
        assert_eq!(
            f("SYSLOG_IDENTIFIER").as_deref(),
            Some("dkim-milter"),
            "{}",
            line.raw
        );
        // tracing-journald, like syslog-tracing, maps INFO to notice (5).
        assert_eq!(f("PRIORITY").as_deref(), Some("5"), "{}", line.raw);
    }
    let message = decision[0].journal_field("MESSAGE").unwrap_or_default();
    assert!(
        message.contains("local submission (no client address)"),
        "{message}"
    );
    assert!(!proc.log().contains("listening on"), "{}", proc.log());
}
