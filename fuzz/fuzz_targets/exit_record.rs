//! Fuzz target: `wedge::fuzzing::exit_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wedge::fuzzing::exit_record(data));
