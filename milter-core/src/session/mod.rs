//! Sans-IO protocol sessions: the state machines that keep both sides of a milter
//! connection in step. They own no sockets and no clocks; adapters feed them bytes and
//! write out what they queue.

pub mod milter;
pub mod mta;
mod order;

pub use milter::{Event, MilterSession, SessionConfig};
