//! Fuzz target `kernel_record`: see `flowgate_tests::fuzz::kernel_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowgate_tests::fuzz::kernel_record(data));
