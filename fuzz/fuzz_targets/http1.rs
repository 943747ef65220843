#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| signalr_relay_core::fuzzing::http1(data));
