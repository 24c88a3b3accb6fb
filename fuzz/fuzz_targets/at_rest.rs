//! See `checks::at_rest` (`fuzz/checks.rs`): the same check replays the seeds and corpus in
//! `.ci/run`.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::at_rest(data));
