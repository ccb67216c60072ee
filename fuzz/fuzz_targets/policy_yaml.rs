//! Fuzz target `policy_yaml`: see `flowgate_tests::fuzz::policy_yaml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowgate_tests::fuzz::policy_yaml(data));
