//! Fuzz target: `wedge::fuzzing::start_stdin`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wedge::fuzzing::start_stdin(data));
