//! One message through the milter, without the protocol: headers, end of headers
//! (the decision), body, end of message (the modifications and the one log line).
//!
//! The milter glue only translates events into these calls and [`EomOutcome`] into
//! milter modifications, so all behaviour is testable here without a socket.
//!
//! Authentication-Results fields that claim our authserv-id are removed on every path
//! (signed, verified, neither, header block too large): they are spotted as the headers
//! stream past, never fed to the signer or verifier, and deleted at end of message.

use std::net::IpAddr;
use std::sync::Arc;

use crate::address::from_address;
use crate::config::OnKeyError;
use crate::decision::{Action, Decision, Origin, Reason, decide};
use crate::reload::State;
use crate::sign::MessageSigner;
use crate::verify::{ForgedArTracker, MAX_FORGED_AR, MessageVerifier, Verifier};

/// Header bytes buffered before the decision (the MTA bounds each field; this bounds
/// their sum).
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Connection and envelope facts from the MTA's macros.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Client IP (`None` for local submission).
    pub client_addr: Option<IpAddr>,
    /// Socket family unknown: the MTA named no client at all (Sendmail `-bs`).
    pub unknown_family: bool,
    /// `{daemon_name}`.
    pub daemon_name: Option<String>,
    /// `j`: the MTA's own host name (Postfix's `myhostname`), the authserv-id when none
    /// is configured.
    pub mta_hostname: Option<String>,
    /// `{auth_type}`.
    pub auth_type: Option<String>,
    /// `{auth_authen}`.
    pub auth_authen: Option<String>,
    /// Queue id `i`, for the log line.
    pub queue_id: Option<String>,
}

enum Work {
    Collecting,
    Signing(MessageSigner),
    Verifying(MessageVerifier),
    /// The header block was larger than [`MAX_HEADER_BYTES`]: neither.
    TooBig,
    Nothing,
}

/// What to tell the MTA at end of message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EomOutcome {
    /// INSHEADER at index 0, in this order (each goes on top of the previous).
    pub insert_top: Vec<(&'static str, String)>,
    /// CHGHEADER deletes: (name, 1-based occurrence), highest first.
    pub delete: Vec<(&'static str, u32)>,
    /// Answer 4xx with this text instead of continuing.
    pub tempfail: Option<String>,
    /// Answer 5xx with this text (`"5.7.1 …"`) instead of continuing.
    pub reject: Option<String>,
    /// The one log line for this message.
    pub log: String,
    /// What happened, in bounded kinds, for the metrics.
    pub tally: Tally,
}

/// What happened to one message, as the metrics count it: bounded kinds, never free
/// text or domains (a hostile sender must not grow the label sets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// `a=` of each signature added.
    pub signed: Vec<&'static str>,
    /// Why no signature was added (`None` when signed).
    pub not_signed: Option<NotSigned>,
    /// Verification result of each signature; one `none` for a message without any.
    pub verified: Vec<&'static str>,
}

/// Why a message was not signed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSigned {
    /// Not from one of ours (verified instead).
    External,
    /// Ours, but no usable From address.
    NoFromAddress,
    /// Ours, but no key for the From domain.
    NoKey,
    /// Ours, but the domain's key is broken.
    KeyError,
    /// The SASL login is not in the From domain.
    SaslDomainMismatch,
    /// The mode excludes signing.
    ModeDisabled,
    /// The header block was larger than [`MAX_HEADER_BYTES`].
    HeadersTooLarge,
    /// Signing itself failed.
    SigningFailed,
}

impl NotSigned {
    /// Every kind, in label order.
    pub const ALL: [NotSigned; 8] = [
        NotSigned::External,
        NotSigned::NoFromAddress,
        NotSigned::NoKey,
        NotSigned::KeyError,
        NotSigned::SaslDomainMismatch,
        NotSigned::ModeDisabled,
        NotSigned::HeadersTooLarge,
        NotSigned::SigningFailed,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            NotSigned::External => "external",
            NotSigned::NoFromAddress => "no_from_address",
            NotSigned::NoKey => "no_key",
            NotSigned::KeyError => "key_error",
            NotSigned::SaslDomainMismatch => "sasl_domain_mismatch",
            NotSigned::ModeDisabled => "mode_disabled",
            NotSigned::HeadersTooLarge => "headers_too_large",
            NotSigned::SigningFailed => "signing_failed",
        }
    }

    /// The kind of a decision's reason. `Ours` (a signing decision) cannot be a reason
    /// not to sign; it maps to `SigningFailed`, the only way it ends unsigned.
    pub fn of(reason: &Reason) -> NotSigned {
        match reason {
            Reason::External => NotSigned::External,
            Reason::NoFromAddress => NotSigned::NoFromAddress,
            Reason::NoKey | Reason::EmptyDomainDir { .. } => NotSigned::NoKey,
            Reason::KeyError { .. } => NotSigned::KeyError,
            Reason::SaslDomainMismatch { .. } => NotSigned::SaslDomainMismatch,
            Reason::ModeDisabled(_) => NotSigned::ModeDisabled,
            Reason::Ours(_) => NotSigned::SigningFailed,
        }
    }
}

/// One message.
pub struct Transaction {
    state: Arc<State>,
    facts: Facts,
    authserv_id: String,
    leadspc: bool,
    headers: Vec<(String, Vec<u8>)>,
    header_bytes: usize,
    too_big: bool,
    from: Option<String>,
    forged: ForgedArTracker,
    work: Work,
    decision: Option<Decision>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("facts", &self.facts)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Transaction {
    /// Starts a message under `state`. `leadspc`: HDR_LEADSPC was negotiated, so
    /// header values keep their leading space (and ours must carry one).
    pub fn new(state: Arc<State>, facts: Facts, leadspc: bool) -> Transaction {
        let authserv_id = authserv_id(&state, facts.mta_hostname.as_deref());
        Transaction {
            state,
            facts,
            authserv_id,
            leadspc,
            headers: Vec::new(),
            header_bytes: 0,
            too_big: false,
            from: None,
            forged: ForgedArTracker::default(),
            work: Work::Collecting,
            decision: None,
        }
    }

    /// Updates facts that arrive later (e.g. `i` at EOH, auth macros at MAIL).
    pub fn facts_mut(&mut self) -> &mut Facts {
        &mut self.facts
    }

    /// The authserv-id this message is judged by (see [`authserv_id`]).
    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// One header field, as the milter HEADER event gives it.
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut v = Vec::with_capacity(value.len() + 1);
        if !self.leadspc {
            // The MTA stripped one space; put it back so c=simple sees the real bytes in
            // the common case.
            v.push(b' ');
        }
        v.extend_from_slice(value);
        let text = String::from_utf8_lossy(&v);
        if self.forged.observe(&name, &text, &self.authserv_id) {
            // Deleted at end of message: neither signed nor verified over.
            return;
        }
        if self.from.is_none() && name.eq_ignore_ascii_case("From") {
            self.from = from_address(&text);
        }
        self.header_bytes = self.header_bytes.saturating_add(name.len() + v.len() + 3);
        if self.header_bytes > MAX_HEADER_BYTES {
            self.too_big = true;
            self.headers = Vec::new();
            return;
        }
        self.headers.push((name, v));
    }

    /// End of headers: decide, then feed the buffered headers to the signer or verifier.
    pub fn end_of_headers(&mut self) {
        if !matches!(self.work, Work::Collecting) {
            return;
        }
        let st = self.state.clone();
        let origin = Origin {
            auth_type: self.facts.auth_type.as_deref(),
            auth_authen: self.facts.auth_authen.as_deref(),
            daemon_name: self.facts.daemon_name.as_deref(),
            client_addr: self.facts.client_addr,
            unknown_family: self.facts.unknown_family,
            from_address: self.from.as_deref(),
        };
        let decision = decide(&st.config, &origin, |f| st.keys.lookup(f));
        self.work = if self.too_big {
            Work::TooBig
        } else {
            match &decision.action {
                Action::Sign(keys) => {
                    let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
                    let mut s = MessageSigner::new(keys, &st.sign_options, &names);
                    for (n, v) in &self.headers {
                        // Headers before the body cannot fail.
                        let _ = s.header(n, v);
                    }
                    Work::Signing(s)
                }
                Action::Verify => {
                    let headers = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
                    Work::Verifying(MessageVerifier::new(headers, st.config.max_signatures))
                }
                Action::Neither | Action::KeyError => Work::Nothing,
            }
        };
        self.headers = Vec::new();
        self.decision = Some(decision);
    }

    /// True if body chunks are still wanted (the glue may answer SKIP otherwise).
    pub fn wants_body(&self) -> bool {
        matches!(
            self.work,
            Work::Signing(_) | Work::Verifying(_) | Work::Collecting
        )
    }

    /// A body chunk.
    pub fn body(&mut self, chunk: &[u8]) {
        self.end_of_headers();
        match &mut self.work {
            Work::Signing(s) => s.body(chunk),
            Work::Verifying(b) => b.body(chunk),
            _ => {}
        }
    }

    fn tag(&self) -> String {
        let q = self.facts.queue_id.as_deref().unwrap_or("-");
        let from = self.from.as_deref().unwrap_or("-");
        format!("{q}: from={from}")
    }

    /// `; client=ADDR daemon=NAME`, the end of every message's log line (`unknown` when
    /// the MTA named no address, as for some local submissions; `-` without a name).
    fn connection(&self) -> String {
        let client = self
            .facts
            .client_addr
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let daemon = self.facts.daemon_name.as_deref().unwrap_or("-");
        format!("; client={client} daemon={daemon}")
    }

    /// End of message: signatures or A-R, forged A-R deletions, and the log line.
    pub async fn end_of_message(mut self, verifier: Option<&Verifier>) -> EomOutcome {
        self.end_of_headers();
        let tag = self.tag();
        let st = self.state.clone();
        let reason = self
            .decision
            .as_ref()
            .map(|d| d.reason.clone())
            .unwrap_or(Reason::NoFromAddress);
        let mut out = EomOutcome::default();
        let strip = |v: String| {
            if self.leadspc {
                v
            } else {
                v.trim_start().to_string()
            }
        };
        if self.forged.overflowed() {
            out.log = format!(
                "{tag}: rejected: more than {MAX_FORGED_AR} Authentication-Results claiming \
                 authserv-id {}{}",
                self.authserv_id,
                self.connection()
            );
            out.reject = Some("5.7.1 too many Authentication-Results header fields".into());
            return out;
        }
        out.delete = self
            .forged
            .forged_indexes()
            .into_iter()
            .map(|idx| ("Authentication-Results", idx))
            .collect();
        match std::mem::replace(&mut self.work, Work::Nothing) {
            Work::TooBig => {
                out.log = format!(
                    "{tag}: not signed or verified: header block larger than {MAX_HEADER_BYTES} bytes"
                );
                out.tally.not_signed = Some(NotSigned::HeadersTooLarge);
            }
            Work::Signing(s) => match s.finish() {
                Ok(sigs) => {
                    let parts: Vec<String> = sigs
                        .iter()
                        .map(|s| format!("d={} s={} a={}", s.domain, s.selector, s.algorithm))
                        .collect();
                    // Inserted at 0 one after the other: insert in reverse so the
                    // first signature ends up on top.
                    out.tally.signed = sigs.iter().map(|s| s.algorithm).collect();
                    for s in sigs.into_iter().rev() {
                        out.insert_top.push((s.name, strip(s.value)));
                    }
                    out.log = format!("{tag}: signed {} ({reason})", parts.join(", "));
                }
                Err(e) => {
                    out.log = format!("{tag}: not signed: {e}");
                    out.tally.not_signed = Some(NotSigned::SigningFailed);
                    if st.config.on_key_error == OnKeyError::Tempfail {
                        out.tempfail = Some("4.7.0 DKIM signing failed, try again later".into());
                        out.log.push_str("; tempfail");
                    } else {
                        out.log.push_str("; accepted unsigned");
                    }
                }
            },
            Work::Verifying(b) => {
                let authserv = self.authserv_id.clone();
                let report = match verifier {
                    Some(v) => Some(v.verify_streamed(b.finish(), &authserv).await),
                    None => None,
                };
                out.tally.not_signed = Some(NotSigned::of(&reason));
                if let Some(r) = &report {
                    // Signatures not evaluated (over max-signatures) are not counted.
                    let evaluated: Vec<&'static str> = r
                        .results
                        .iter()
                        .map(|s| s.result)
                        .filter(|r| *r != "policy")
                        .collect();
                    out.tally.verified = if evaluated.is_empty() {
                        vec!["none"]
                    } else {
                        evaluated
                    };
                }
                match report {
                    Some(r) => {
                        out.insert_top
                            .push(("Authentication-Results", strip(r.auth_results.clone())));
                        out.log =
                            format!("{tag}: not signed ({reason}); verified: {}", r.summary());
                    }
                    None => {
                        out.log = format!("{tag}: not signed ({reason}); not verified: no resolver")
                    }
                }
            }
            _ => {
                let key_error = matches!(
                    self.decision.as_ref().map(|d| &d.action),
                    Some(Action::KeyError)
                );
                out.log = format!("{tag}: not signed: {reason}");
                out.tally.not_signed = Some(NotSigned::of(&reason));
                if key_error {
                    if st.config.on_key_error == OnKeyError::Tempfail {
                        out.tempfail =
                            Some("4.7.0 DKIM key for the sender domain is unusable".into());
                        out.log.push_str("; tempfail (on-key-error)");
                    } else {
                        out.log.push_str("; accepted unsigned (on-key-error)");
                    }
                }
            }
        }
        if !out.delete.is_empty() {
            out.log.push_str(&format!(
                "; removed {} forged Authentication-Results",
                out.delete.len()
            ));
        }
        out.log.push_str(&self.connection());
        out
    }
}

/// The authserv-id a message is judged by: `authserv-id` when configured, else the MTA's
/// `j` macro (its own name, which its other A-R writers and OpenDMARC use too) when it is
/// one token, else this host's name ([`State::authserv_id`]).
pub fn authserv_id(state: &State, mta_hostname: Option<&str>) -> String {
    if let Some(id) = &state.config.authserv_id {
        return id.clone();
    }
    match mta_hostname.map(str::trim) {
        Some(j) if is_authserv_token(j) => j.to_string(),
        _ => state.authserv_id.clone(),
    }
}

/// True if `s` can stand as an authserv-id: one short token without spaces, `;`,
/// comments or quotes.
fn is_authserv_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b'(' | b')' | b'"' | b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::verify::Caches;
    use std::path::Path;

    fn state(keys: &Path, f: impl FnOnce(&mut Config)) -> Arc<State> {
        let mut c = Config {
            keys_dir: keys.to_path_buf(),
            authserv_id: Some("mx.test".into()),
            ..Config::default()
        };
        f(&mut c);
        Arc::new(State::from_config(c, None).unwrap())
    }

    fn feed(t: &mut Transaction, headers: &[(&str, &str)], body: &[u8]) {
        for (n, v) in headers {
            t.header(n.as_bytes(), v.as_bytes());
        }
        t.end_of_headers();
        t.body(body);
    }

    /// Rebuilds the message the MTA would deliver (LEADSPC values, LF folds).
    fn assemble(top: &[(&'static str, String)], headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        for (n, v) in top.iter().rev() {
            m.extend_from_slice(format!("{n}:{}\r\n", v.replace('\n', "\r\n")).as_bytes());
        }
        for (n, v) in headers {
            m.extend_from_slice(format!("{n}:{}\r\n", v.replace('\n', "\r\n")).as_bytes());
        }
        m.extend_from_slice(b"\r\n");
        m.extend_from_slice(body);
        m
    }

    #[tokio::test]
    async fn sign_then_verify_round_trip_and_forged_ar() {
        let t = tempfile::tempdir().unwrap();
        let rec = crate::keys::tests::opendkim_genkey(t.path(), "example.com", "sel");
        let st = state(t.path(), |_| {});
        let headers = [
            ("From", " Joe <joe@example.com>"),
            ("To", " you@example.org"),
            ("Subject", " hi\n\tthere"),
        ];
        let body = b"Hello\r\n";
        let mut tx = Transaction::new(
            st.clone(),
            Facts {
                auth_type: Some("PLAIN".into()),
                client_addr: Some("198.51.100.7".parse().unwrap()),
                queue_id: Some("ABC123".into()),
                ..Facts::default()
            },
            true,
        );
        feed(&mut tx, &headers, body);
        let out = tx.end_of_message(None).await;
        assert_eq!(out.tempfail, None);
        assert_eq!(out.insert_top.len(), 1);
        assert_eq!(
            out.tally,
            Tally {
                signed: vec!["rsa-sha256"],
                ..Tally::default()
            }
        );
        assert!(out.log.starts_with("ABC123: from=joe@example.com: signed d=example.com s=sel a=rsa-sha256 (authenticated sender)"), "{}", out.log);

        // Inbound from a stranger: verified, and an A-R claiming our id is removed.
        let mut signed_headers: Vec<(String, String)> = out
            .insert_top
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        signed_headers.insert(
            0,
            (
                "Authentication-Results".into(),
                " mx.test; dkim=pass (forged)".into(),
            ),
        );
        signed_headers.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        let hs: Vec<(&str, &str)> = signed_headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let v = Verifier::with_authenticator(
            mail_auth::MessageAuthenticator::new_system_conf().unwrap(),
            Caches::new(8),
        );
        v.caches().insert_dkim_key(
            "sel._domainkey.example.com",
            &rec,
            std::time::Duration::from_secs(60),
        );
        let mut rx = Transaction::new(
            st.clone(),
            Facts {
                client_addr: Some("203.0.113.9".parse().unwrap()),
                ..Facts::default()
            },
            true,
        );
        feed(&mut rx, &hs, body);
        let out = rx.end_of_message(Some(&v)).await;
        assert_eq!(out.delete, vec![("Authentication-Results", 1)]);
        assert_eq!(
            out.tally,
            Tally {
                signed: vec![],
                not_signed: Some(NotSigned::External),
                verified: vec!["pass"],
            }
        );
        assert_eq!(out.insert_top.len(), 1);
        assert!(
            out.insert_top[0]
                .1
                .starts_with(" mx.test;\n\tdkim=pass header.d=example.com header.s=sel"),
            "{:?}",
            out.insert_top
        );
        assert!(
            out.log.contains("verified: d=example.com s=sel pass"),
            "{}",
            out.log
        );
        assert!(out.log.contains("removed 1 forged"), "{}", out.log);
    }

    fn verifier(name: &str, rec: &str) -> Verifier {
        let v = Verifier::with_authenticator(
            mail_auth::MessageAuthenticator::new_system_conf().unwrap(),
            Caches::new(8),
        );
        v.caches()
            .insert_dkim_key(name, rec, std::time::Duration::from_secs(60));
        v
    }

    /// Signs a message twice (two signatures on top); returns the raw message and record.
    async fn twice_signed(dir: &Path) -> (Vec<u8>, String) {
        let rec = crate::keys::tests::opendkim_genkey(dir, "example.com", "sel");
        let st = state(dir, |_| {});
        let headers = [("From", " Joe <joe@example.com>"), ("Subject", " hi")];
        let mut top: Vec<(&'static str, String)> = Vec::new();
        for _ in 0..2 {
            let mut tx = Transaction::new(
                st.clone(),
                Facts {
                    auth_type: Some("PLAIN".into()),
                    ..Facts::default()
                },
                true,
            );
            let mut hs: Vec<(&str, &str)> =
                top.iter().rev().map(|(n, v)| (*n, v.as_str())).collect();
            hs.extend(headers);
            feed(&mut tx, &hs, b"Hello\r\n");
            let out = tx.end_of_message(None).await;
            top.extend(out.insert_top);
        }
        (assemble(&top, &headers, b"Hello\r\n"), rec)
    }

    #[tokio::test]
    async fn minimum_key_bits_and_max_signatures() {
        let t = tempfile::tempdir().unwrap();
        let (raw, rec) = twice_signed(t.path()).await;
        let name = "sel._domainkey.example.com";
        let rep = verifier(name, &rec).verify(&raw, "mx.test").await;
        let got: Vec<&str> = rep.results.iter().map(|r| r.result).collect();
        assert_eq!(got, ["pass", "pass"], "{rep:?}");

        // A 2048-bit key under minimum-key-bits 4096 fails.
        let rep = verifier(name, &rec)
            .with_minimum_key_bits(4096)
            .verify(&raw, "mx.test")
            .await;
        assert_eq!(rep.results[0].result, "fail", "{rep:?}");
        assert!(
            rep.results[0]
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("2048 bits is shorter than minimum-key-bits 4096")),
            "{rep:?}"
        );

        // max-signatures 1: the second is not evaluated, and the A-R says so.
        let (head, body) = raw.split_at(raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4);
        let msg = mail_auth::AuthenticatedMessage::parse(head).unwrap();
        let hs: Vec<(String, Vec<u8>)> = msg
            .headers()
            .iter()
            .map(|(n, v)| {
                let v = v.strip_suffix(b"\r\n").unwrap_or(v);
                (String::from_utf8_lossy(n).into_owned(), v.to_vec())
            })
            .collect();
        let mut mv = MessageVerifier::new(hs.iter().map(|(n, v)| (n.as_str(), v.as_slice())), 1);
        mv.body(body);
        let rep = verifier(name, &rec)
            .verify_streamed(mv.finish(), "mx.test")
            .await;
        let got: Vec<&str> = rep.results.iter().map(|r| r.result).collect();
        assert_eq!(got, ["pass", "policy"], "{rep:?}");
        assert!(
            rep.auth_results.ends_with(
                ";\n\tdkim=policy (not evaluated: over max-signatures 1) header.d=example.com header.s=sel"
            ),
            "{}",
            rep.auth_results
        );
    }

    #[tokio::test]
    async fn forged_ar_removed_from_mail_we_sign_and_never_signed_over() {
        let t = tempfile::tempdir().unwrap();
        let rec = crate::keys::tests::opendkim_genkey(t.path(), "example.com", "sel");
        // Even when A-R is in sign-headers, the forged one is not signed over, so the
        // signature survives its deletion.
        let st = state(t.path(), |c| {
            c.sign_headers.push("Authentication-Results".into())
        });
        let forged = (
            "Authentication-Results",
            " mx.test; dkim=pass header.d=bank.test",
        );
        let genuine = ("Authentication-Results", " other.test; spf=pass");
        let headers = [
            forged,
            ("From", " Joe <joe@example.com>"),
            genuine,
            ("To", " you@example.org"),
            forged,
            ("Subject", " hi"),
        ];
        let mut tx = Transaction::new(
            st.clone(),
            Facts {
                auth_type: Some("PLAIN".into()),
                client_addr: Some("198.51.100.7".parse().unwrap()),
                daemon_name: Some("ORIGINATING".into()),
                queue_id: Some("Q1".into()),
                ..Facts::default()
            },
            true,
        );
        feed(&mut tx, &headers, b"Hello\r\n");
        let out = tx.end_of_message(None).await;
        assert_eq!(out.tally.signed, vec!["rsa-sha256"]);
        assert_eq!(
            out.delete,
            vec![("Authentication-Results", 3), ("Authentication-Results", 1)]
        );
        assert!(
            out.log
                .starts_with("Q1: from=joe@example.com: signed d=example.com s=sel"),
            "{}",
            out.log
        );
        assert!(
            out.log.ends_with(
                "; removed 2 forged Authentication-Results; client=198.51.100.7 daemon=ORIGINATING"
            ),
            "{}",
            out.log
        );
        // As delivered: the forged ones deleted, our signature on top. It verifies.
        let kept: Vec<(&str, &str)> = headers.iter().copied().filter(|h| *h != forged).collect();
        let raw = assemble(&out.insert_top, &kept, b"Hello\r\n");
        let rep = verifier("sel._domainkey.example.com", &rec)
            .verify(&raw, "mx.test")
            .await;
        assert_eq!(rep.results.len(), 1, "{rep:?}");
        assert_eq!(rep.results[0].result, "pass", "{rep:?}");
    }

    #[tokio::test]
    async fn forged_ar_removed_when_the_header_block_is_too_large() {
        let t = tempfile::tempdir().unwrap();
        crate::keys::tests::opendkim_genkey(t.path(), "example.com", "sel");
        let st = state(t.path(), |_| {});
        let filler = format!(" {}", "x".repeat(998));
        let mut tx = Transaction::new(
            st,
            Facts {
                client_addr: Some("203.0.113.9".parse().unwrap()),
                daemon_name: Some("smtpd".into()),
                ..Facts::default()
            },
            true,
        );
        tx.header(b"Authentication-Results", b" mx.test; dkim=pass");
        tx.header(b"From", b" a@remote.example");
        for _ in 0..(MAX_HEADER_BYTES / 1000 + 50) {
            tx.header(b"X-Filler", filler.as_bytes());
        }
        // Past the limit: nothing is buffered any more, the A-R are still counted.
        tx.header(b"Authentication-Results", b" other.test; spf=pass");
        tx.header(b"Authentication-Results", b" MX.TEST; dkim=pass");
        tx.end_of_headers();
        tx.body(b"x\r\n");
        let out = tx.end_of_message(None).await;
        assert_eq!(out.tally.not_signed, Some(NotSigned::HeadersTooLarge));
        assert_eq!(
            out.delete,
            vec![("Authentication-Results", 3), ("Authentication-Results", 1)]
        );
        assert!(out.insert_top.is_empty() && out.tempfail.is_none());
        assert!(
            out.log.contains("header block larger than")
                && out.log.contains("removed 2 forged Authentication-Results")
                && out.log.ends_with("client=203.0.113.9 daemon=smtpd"),
            "{}",
            out.log
        );
    }

    #[tokio::test]
    async fn authserv_id_is_configured_else_the_mta_name_else_the_host_name() {
        let t = tempfile::tempdir().unwrap();
        let configured = state(t.path(), |_| {});
        let unset = state(t.path(), |c| c.authserv_id = None);
        let facts = |j: Option<&str>| Facts {
            mta_hostname: j.map(str::to_string),
            client_addr: Some("203.0.113.9".parse().unwrap()),
            ..Facts::default()
        };
        let id = |st: &Arc<State>, j| {
            Transaction::new(st.clone(), facts(j), true)
                .authserv_id()
                .to_string()
        };
        assert_eq!(id(&configured, Some("mx.j.test")), "mx.test");
        assert_eq!(id(&unset, Some("mx.j.test")), "mx.j.test");
        assert_eq!(id(&unset, None), crate::config::hostname());
        assert_eq!(id(&unset, Some("two words")), crate::config::hostname());
        assert_eq!(id(&unset, Some("a;b")), crate::config::hostname());

        // The MTA's name is what forged A-R are judged by, and what ours carries.
        let v = verifier("unused._domainkey.example.com", "v=DKIM1; p=");
        let mut tx = Transaction::new(unset.clone(), facts(Some("mx.j.test")), true);
        feed(
            &mut tx,
            &[
                ("Authentication-Results", " mx.j.test; dkim=pass"),
                ("Authentication-Results", " mx.test; dkim=pass"),
                ("From", " a@remote.example"),
            ],
            b"x\r\n",
        );
        let out = tx.end_of_message(Some(&v)).await;
        assert_eq!(out.delete, vec![("Authentication-Results", 1)]);
        assert!(
            out.insert_top[0].1.starts_with(" mx.j.test;"),
            "{:?}",
            out.insert_top
        );
    }

    #[tokio::test]
    async fn a_flood_of_forged_ar_is_rejected() {
        let t = tempfile::tempdir().unwrap();
        let st = state(t.path(), |_| {});
        let mut tx = Transaction::new(st, Facts::default(), true);
        for _ in 0..=MAX_FORGED_AR {
            tx.header(b"Authentication-Results", b" mx.test; dkim=pass");
        }
        feed(&mut tx, &[("From", " a@remote.example")], b"x\r\n");
        let out = tx.end_of_message(None).await;
        assert!(
            out.reject
                .as_deref()
                .is_some_and(|r| r.starts_with("5.7.1 "))
        );
        assert!(out.delete.is_empty() && out.insert_top.is_empty());
        assert!(
            out.log
                .contains("rejected: more than 10000 Authentication-Results")
                && out.log.ends_with("client=unknown daemon=-"),
            "{}",
            out.log
        );
    }

    #[tokio::test]
    async fn empty_domain_dir_passes_unsigned_unless_a_key_error() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("empty.example")).unwrap();
        for (rule, tempfail) in [
            (crate::config::EmptyDomainDir::Unsigned, false),
            (crate::config::EmptyDomainDir::KeyError, true),
        ] {
            let st = state(t.path(), |c| {
                c.empty_domain_dir = rule;
                c.mode = crate::config::Mode::Sign;
            });
            let mut tx = Transaction::new(
                st,
                Facts {
                    client_addr: Some("127.0.0.1".parse().unwrap()),
                    ..Facts::default()
                },
                true,
            );
            feed(&mut tx, &[("From", " a@empty.example")], b"x\r\n");
            let out = tx.end_of_message(None).await;
            assert_eq!(out.tempfail.is_some(), tempfail, "{}", out.log);
            assert!(out.log.contains("no *.private key files"), "{}", out.log);
        }
    }

    #[tokio::test]
    async fn key_error_tempfail_or_accept() {
        let t = tempfile::tempdir().unwrap();
        crate::keys::tests::opendkim_genkey(t.path(), "example.com", "sel");
        std::fs::write(t.path().join("example.com/sel.private"), "broken").unwrap();
        for (policy, tempfail) in [(OnKeyError::Tempfail, true), (OnKeyError::Accept, false)] {
            let st = state(t.path(), |c| c.on_key_error = policy);
            let mut tx = Transaction::new(
                st,
                Facts {
                    client_addr: Some("127.0.0.1".parse().unwrap()),
                    ..Facts::default()
                },
                true,
            );
            feed(&mut tx, &[("From", " a@example.com")], b"x\r\n");
            let out = tx.end_of_message(None).await;
            assert_eq!(out.tempfail.is_some(), tempfail, "{}", out.log);
            assert!(out.insert_top.is_empty());
            assert!(out.log.contains("key error for example.com"), "{}", out.log);
            assert_eq!(out.tally.not_signed, Some(NotSigned::KeyError));
            assert!(out.tally.signed.is_empty() && out.tally.verified.is_empty());
        }
    }

    #[tokio::test]
    async fn stranger_claiming_our_domain_is_not_signed() {
        let t = tempfile::tempdir().unwrap();
        crate::keys::tests::opendkim_genkey(t.path(), "example.com", "sel");
        let st = state(t.path(), |c| c.mode = crate::config::Mode::Sign);
        let mut tx = Transaction::new(
            st,
            Facts {
                client_addr: Some("203.0.113.9".parse().unwrap()),
                ..Facts::default()
            },
            true,
        );
        feed(&mut tx, &[("From", " ceo@example.com")], b"x\r\n");
        assert!(!tx.wants_body());
        let out = tx.end_of_message(None).await;
        assert!(out.insert_top.is_empty() && out.tempfail.is_none());
        assert!(
            out.log.contains("not signed: external client"),
            "{}",
            out.log
        );
        assert_eq!(out.tally.not_signed, Some(NotSigned::External));
        assert!(out.tally.verified.is_empty(), "mode sign: not verified");
    }

    #[tokio::test]
    async fn without_leadspc_values_get_space_and_output_has_none() {
        let t = tempfile::tempdir().unwrap();
        crate::keys::tests::opendkim_genkey(t.path(), "example.com", "sel");
        let st = state(t.path(), |_| {});
        let mut tx = Transaction::new(
            st,
            Facts {
                client_addr: Some("::1".parse().unwrap()),
                ..Facts::default()
            },
            false,
        );
        feed(&mut tx, &[("From", "a@example.com")], b"x\r\n");
        let out = tx.end_of_message(None).await;
        assert!(
            out.insert_top[0].1.starts_with("v=1;"),
            "{:?}",
            out.insert_top
        );
    }
}
