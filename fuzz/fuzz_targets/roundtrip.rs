#![no_main]

libfuzzer_sys::fuzz_target!(|m: plasma_fuzz::AnyMessage| plasma_store::fuzzing::roundtrip(&m.0));
