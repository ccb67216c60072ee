//! Fuzz target `socket_frames`: see `flowgate_tests::fuzz::socket_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowgate_tests::fuzz::socket_frames(data));
