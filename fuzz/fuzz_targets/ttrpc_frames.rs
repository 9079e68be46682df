//! Fuzz target: `wedge::fuzzing::ttrpc_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wedge::fuzzing::ttrpc_frames(data));
