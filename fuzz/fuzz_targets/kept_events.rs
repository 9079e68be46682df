//! Fuzz target: `wedge::fuzzing::kept_events`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wedge::fuzzing::kept_events(data));
