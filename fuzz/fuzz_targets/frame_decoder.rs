//! Arbitrary bytes through FrameDecoder, Command::decode and Reply::decode.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    milter_core::fuzzing::frame_decoder(data);
});
