//! `tracing` to stderr (container logs and systemd's stdout capture take it from there),
//! to syslog with a facility (`mail` by default, where mail hosts' syslog and log
//! rotation expect milters), or natively to the journal. `RUST_LOG` overrides the
//! configured filter.
//!
//! Syslog goes through the C library's `syslog(3)` (the `syslog-tracing` crate), not a
//! socket of our own: it formats as every syslogd expects, speaks to `/dev/log`, and
//! reconnects when the syslog daemon restarts. Severities follow that crate: ERROR → err,
//! WARN → warning, INFO → notice, DEBUG → info, TRACE → debug. The journal uses
//! `tracing-journald`, whose default mapping is the same.

use std::ffi::CString;

use serde::Deserialize;

/// Where log lines go (`log-target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// Standard error (default).
    #[default]
    Stderr,
    /// `syslog(3)` on `/dev/log`, with `syslog-facility`.
    Syslog,
    /// The systemd journal's native protocol (structured fields, priority per level).
    Journald,
}

/// The syslog facility (`syslog-facility`), also set as the journal's
/// `SYSLOG_FACILITY`. OpenDKIM's default is `mail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFacility {
    /// `LOG_MAIL` (default).
    #[default]
    Mail,
    /// `LOG_DAEMON`.
    Daemon,
    /// `LOG_USER`.
    User,
    /// `LOG_LOCAL0`.
    Local0,
    /// `LOG_LOCAL1`.
    Local1,
    /// `LOG_LOCAL2`.
    Local2,
    /// `LOG_LOCAL3`.
    Local3,
    /// `LOG_LOCAL4`.
    Local4,
    /// `LOG_LOCAL5`.
    Local5,
    /// `LOG_LOCAL6`.
    Local6,
    /// `LOG_LOCAL7`.
    Local7,
}

impl SyslogFacility {
    /// The facility code (RFC 5424 §6.2.1: mail = 2); PRI is `code * 8 + severity`.
    pub fn code(self) -> u8 {
        match self {
            SyslogFacility::User => 1,
            SyslogFacility::Mail => 2,
            SyslogFacility::Daemon => 3,
            SyslogFacility::Local0 => 16,
            SyslogFacility::Local1 => 17,
            SyslogFacility::Local2 => 18,
            SyslogFacility::Local3 => 19,
            SyslogFacility::Local4 => 20,
            SyslogFacility::Local5 => 21,
            SyslogFacility::Local6 => 22,
            SyslogFacility::Local7 => 23,
        }
    }

    fn syslog(self) -> syslog_tracing::Facility {
        use syslog_tracing::Facility as F;
        match self {
            SyslogFacility::User => F::User,
            SyslogFacility::Mail => F::Mail,
            SyslogFacility::Daemon => F::Daemon,
            SyslogFacility::Local0 => F::Local0,
            SyslogFacility::Local1 => F::Local1,
            SyslogFacility::Local2 => F::Local2,
            SyslogFacility::Local3 => F::Local3,
            SyslogFacility::Local4 => F::Local4,
            SyslogFacility::Local5 => F::Local5,
            SyslogFacility::Local6 => F::Local6,
            SyslogFacility::Local7 => F::Local7,
        }
    }
}

/// The chosen target could not be opened; logging went to stderr instead.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// No journal socket (`/run/systemd/journal/socket`), e.g. not under systemd.
    #[error("log-target = \"journald\": the journal is not reachable ({0}); logging to stderr")]
    Journald(std::io::Error),
    /// `syslog(3)` was opened already in this process.
    #[error("log-target = \"syslog\": syslog is already open in this process; logging to stderr")]
    SyslogTaken,
}

/// Installs the subscriber once; later calls are no-ops. `ident` names the program in
/// syslog and the journal (`SYSLOG_IDENTIFIER`). An invalid `level` falls back to `info`
/// rather than silencing the daemon. When `target` cannot be opened the daemon still
/// logs, to stderr, and the error says so (log it once the subscriber is in place).
pub fn init(
    level: &str,
    target: LogTarget,
    facility: SyslogFacility,
    ident: &str,
) -> Result<(), LogError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let stderr = || {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
    };
    match target {
        LogTarget::Stderr => {
            stderr();
            Ok(())
        }
        LogTarget::Syslog => {
            // An ident with a NUL cannot be passed to openlog(3); the name is ours, so
            // dropping the bytes loses nothing.
            let ident = CString::new(ident.replace('\0', "")).unwrap_or_default();
            let Some(writer) = syslog_tracing::Syslog::new(
                ident,
                syslog_tracing::Options::LOG_PID,
                facility.syslog(),
            ) else {
                stderr();
                return Err(LogError::SyslogTaken);
            };
            // syslogd stamps time and host; the level is the priority's severity.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(writer)
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .try_init();
            Ok(())
        }
        LogTarget::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_syslog_identifier(ident.to_string())
                    .with_custom_fields([("SYSLOG_FACILITY", facility.code().to_string())]);
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init();
                Ok(())
            }
            Err(e) => {
                stderr();
                Err(LogError::Journald(e))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(rename_all = "kebab-case")]
    struct C {
        log_target: LogTarget,
        syslog_facility: SyslogFacility,
    }

    #[test]
    fn names_and_codes() {
        let c: C = toml::from_str("log-target = \"syslog\"\nsyslog-facility = \"local3\"").unwrap();
        assert_eq!(c.log_target, LogTarget::Syslog);
        assert_eq!(c.syslog_facility.code(), 19);
        let c: C = toml::from_str("log-target = \"journald\"\nsyslog-facility = \"mail\"").unwrap();
        assert_eq!(c.log_target, LogTarget::Journald);
        assert_eq!(c.syslog_facility.code(), 2);
        assert!(toml::from_str::<C>("log-target = \"file\"\nsyslog-facility = \"mail\"").is_err());
        assert!(
            toml::from_str::<C>("log-target = \"syslog\"\nsyslog-facility = \"kern\"").is_err()
        );
        assert_eq!(SyslogFacility::default(), SyslogFacility::Mail);
        assert_eq!(LogTarget::default(), LogTarget::Stderr);
    }
}
