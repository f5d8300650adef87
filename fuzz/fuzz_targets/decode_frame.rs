//! Fuzz target: y-protocols frame decoding, as every WebSocket frame meets it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_sync::harness::decode(data));
