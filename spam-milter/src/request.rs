//! The `/checkv2` request headers for one message: the envelope and session facts Rspamd
//! needs to score as if it had seen the SMTP session itself (rspamd.md §1.2, §2.3).
//!
//! Rspamd never sees the MTA's own `Received:` header (milters are not shown it), so it
//! builds one from `IP`, `Hostname`, `Helo`, `MTA-Name`, `TLS-Cipher` and `User`: all of
//! them are sent when known. `Flags: milter` makes Rspamd fold the header values it
//! returns with a bare LF, as milter header values want.

use crate::message::{Connection, Envelope};
use crate::policy::Policy;

/// Values must be one header line: control characters would break the HTTP request (and
/// a client could smuggle headers through HELO), so they become spaces.
fn clean(v: &str) -> String {
    v.trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Request headers in the order they are sent; `Rcpt` repeats, one per recipient.
pub fn headers(
    conn: &Connection,
    env: &Envelope,
    policy: &Policy,
    mta_name: &str,
) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = Vec::with_capacity(12 + env.rcpts.len());
    let mut put = |k: &str, v: &str| {
        let v = clean(v);
        if !v.is_empty() {
            h.push((k.to_string(), v));
        }
    };
    put(
        "From",
        if env.from.trim().is_empty() {
            "<>"
        } else {
            &env.from
        },
    );
    for r in &env.rcpts {
        put("Rcpt", r);
    }
    if let Some(ip) = conn.client_addr {
        put("IP", &ip.to_string());
    }
    if let Some(n) = &conn.client_name {
        put("Hostname", n);
    }
    if let Some(helo) = &conn.helo {
        put("Helo", helo);
    }
    if let Some(q) = &env.queue_id {
        put("Queue-Id", q);
        put("Log-Tag", q);
    }
    if let Some(u) = &env.auth_user {
        put("User", u);
    }
    put("MTA-Name", mta_name);
    put("MTA-Tag", policy.direction.as_str());
    if let Some(c) = &conn.tls_cipher {
        put("TLS-Cipher", c);
    }
    if let Some(v) = &conn.tls_version {
        put("TLS-Version", v);
    }
    if let Some(id) = &policy.settings_id {
        put("Settings-ID", id);
    }
    if let Some(s) = &policy.settings {
        // Validated as a JSON object at load; one line on the wire.
        put("Settings", &s.replace(['\r', '\n'], " "));
    }
    put("Flags", "milter");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn every_known_fact_is_sent_and_rcpt_repeats() {
        let cfg = Config::parse(
            "[outbound]\nsettings-id = \"out\"\nsettings = '''{\"a\":\n1}'''\n",
            Path::new("t"),
        )
        .unwrap();
        let conn = Connection {
            client_addr: Some("192.0.2.7".parse().unwrap()),
            client_name: Some("mail.example.net".into()),
            helo: Some("mail.example.net\r\nX-Evil: 1".into()),
            daemon_name: Some("ORIGINATING".into()),
            mta_host: Some("mx.example.com".into()),
            tls_version: Some("TLSv1.3".into()),
            tls_cipher: Some("TLS_AES_256_GCM_SHA384".into()),
        };
        let env = Envelope {
            from: "<u@example.com>".into(),
            rcpts: vec!["<a@x.org>".into(), "<b@y.org>".into()],
            auth_user: Some("u@example.com".into()),
            queue_id: Some("4ABC123".into()),
        };
        let p = crate::policy::resolve(&cfg, &conn, &env);
        let h = headers(&conn, &env, &p, "mx.example.com");
        let get = |k: &str| -> Vec<&str> {
            h.iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("From"), ["<u@example.com>"]);
        assert_eq!(get("Rcpt"), ["<a@x.org>", "<b@y.org>"]);
        assert_eq!(get("IP"), ["192.0.2.7"]);
        assert_eq!(get("Helo"), ["mail.example.net  X-Evil: 1"]);
        assert_eq!(get("Queue-Id"), ["4ABC123"]);
        assert_eq!(get("User"), ["u@example.com"]);
        assert_eq!(get("MTA-Name"), ["mx.example.com"]);
        assert_eq!(get("MTA-Tag"), ["outbound"]);
        assert_eq!(get("Settings-ID"), ["out"]);
        assert_eq!(get("Settings"), ["{\"a\": 1}"]);
        assert_eq!(get("Flags"), ["milter"]);
        assert!(h.iter().all(|(_, v)| !v.contains(['\r', '\n'])));
    }

    #[test]
    fn a_bounce_is_sent_as_the_null_sender_and_unknowns_are_left_out() {
        let cfg = Config::default();
        let conn = Connection::default();
        let env = Envelope {
            from: String::new(),
            rcpts: vec!["<a@x.org>".into()],
            ..Envelope::default()
        };
        let p = crate::policy::resolve(&cfg, &conn, &env);
        let h = headers(&conn, &env, &p, "mx");
        assert_eq!(h[0], ("From".to_string(), "<>".to_string()));
        assert!(
            !h.iter()
                .any(|(k, _)| k == "IP" || k == "User" || k == "Hostname")
        );
    }
}
