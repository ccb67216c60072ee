//! Fuzz target `topology`: see `flowgate_tests::fuzz::topology`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowgate_tests::fuzz::topology(data));
