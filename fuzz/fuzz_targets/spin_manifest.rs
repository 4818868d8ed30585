#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmbox_fuzz::spin_manifest(data));
