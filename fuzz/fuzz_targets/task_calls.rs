//! Fuzz target: `wedge::fuzzing::task_calls`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wedge::fuzzing::task_calls(data));
