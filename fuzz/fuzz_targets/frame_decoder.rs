#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| plasma_store::fuzzing::frame_decoder(data));
