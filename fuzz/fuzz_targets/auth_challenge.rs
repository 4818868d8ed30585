#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmbox_fuzz::auth_challenge(data));
