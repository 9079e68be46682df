//! Fuzz target: `wedge::fuzzing::runtime_options`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wedge::fuzzing::runtime_options(data));
