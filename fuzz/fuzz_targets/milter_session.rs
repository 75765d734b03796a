//! Arbitrary MTA byte streams through MilterSession, answered mostly with Continue.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    milter_core::fuzzing::milter_session(data);
});
