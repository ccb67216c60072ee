//! Fuzz target `verdict_line`: see `flowgate_tests::fuzz::verdict_line`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowgate_tests::fuzz::verdict_line(data));
