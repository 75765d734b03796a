//! The mail-stack binary's parts: the layout of the state directory, the configuration it
//! generates, the accounts' flat files, the daemons' processes, the sink, the supervisor,
//! the operations and the flow checks.

pub mod accounts;
pub mod checks;
pub mod clients;
pub mod config;
pub mod layout;
pub mod ops;
pub mod procs;
pub mod sink;
pub mod stack;
pub mod usage;

use std::path::PathBuf;

/// The two milter binaries the stack runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// dkim-milter (also used for `keygen`).
    pub dkim_milter: PathBuf,
    /// spam-milter.
    pub spam_milter: PathBuf,
}

impl Binaries {
    /// The binaries next to this one (cargo puts every workspace binary in one directory).
    pub fn beside_self() -> Binaries {
        let dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
            .unwrap_or_default();
        Binaries {
            dkim_milter: dir.join("dkim-milter"),
            spam_milter: dir.join("spam-milter"),
        }
    }
}
