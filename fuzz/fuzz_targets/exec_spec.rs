//! Fuzz target: `wedge::fuzzing::exec_spec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wedge::fuzzing::exec_spec(data));
