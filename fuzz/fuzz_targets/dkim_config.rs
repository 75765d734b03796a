//! Arbitrary text through dkim-milter's `Config::parse` (the TOML file, serde and the
//! cross-field checks).
//!
//! Checked: no panic; every error names the file (its text starts with the path, a line is
//! within the text); the path is only used in messages (another path gives the same
//! config, or the same error with the other path); a comment line put in front changes
//! nothing but the error's line, which moves down by one; and a config that parses keeps
//! every rule the validation promises (tables set together, From signed, authserv-id one
//! token, socket owner/group only for unix sockets and single tokens, a valid `user`, an
//! absolute pid file, a poll interval and a DNS timeout above zero, a non-empty
//! `dns-servers` without port 0, at most two selectors per domain), and what the daemon
//! derives from it can be computed.
#![no_main]

#[path = "common/config_checks.rs"]
mod config_checks;

use std::net::IpAddr;

use dkim_milter::config::Config;
use libfuzzer_sys::fuzz_target;
use milter_core::server::Endpoint;

fn check_config(c: &Config) {
    assert_eq!(c.key_table.is_some(), c.signing_table.is_some());
    assert!(
        c.sign_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("from"))
    );
    if let Some(id) = &c.authserv_id {
        assert!(!id.is_empty() && !id.contains(|ch: char| ch.is_whitespace() || ch == ';'));
        assert_eq!(&c.authserv_id(), id);
    }
    let unix = matches!(Endpoint::parse(&c.socket), Ok(Endpoint::Unix(_)));
    for v in [&c.socket_owner, &c.socket_group].into_iter().flatten() {
        assert!(unix, "socket owner/group on {:?}", c.socket);
        assert!(!v.is_empty() && !v.contains(|ch: char| ch.is_whitespace() || ch == ':'));
    }
    if let Some(u) = &c.user {
        assert!(dkim_milter::process::UserSpec::parse(u).is_ok(), "{u:?}");
    }
    if let Some(p) = &c.pid_file {
        assert!(p.is_absolute() && p.file_name().is_some(), "{p:?}");
    }
    assert!(c.reload_poll_seconds >= 1);
    assert!(c.dns_servers.as_ref().is_none_or(|s| !s.is_empty()));
    for s in c.dns_servers.iter().flatten() {
        assert_ne!(s.addr().port(), 0);
    }
    assert!(!c.dns_timeout.get().is_zero());
    assert!(c.domain.values().all(|d| d.selectors.len() <= 2));

    // What the daemon derives from a loaded config.
    let _ = c.socket_mode_bits();
    let _ = c.canonicalization.header.to_mail_auth();
    let _ = c.canonicalization.body.to_mail_auth();
    for ip in [
        "127.0.0.1",
        "::1",
        "::ffff:10.1.2.3",
        "192.0.2.1",
        "2001:db8::1",
    ] {
        let _ = c.is_internal(ip.parse::<IpAddr>().expect("address"));
    }
    for spec in [&c.key_table, &c.signing_table].into_iter().flatten() {
        let _ = dkim_milter::tables::parse_spec(spec);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(c) = config_checks::parse_three_ways(text, Config::parse) {
        check_config(&c);
    }
});
