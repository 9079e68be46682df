//! Fuzz target: `wedge::fuzzing::handover_state`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wedge::fuzzing::handover_state(data));
