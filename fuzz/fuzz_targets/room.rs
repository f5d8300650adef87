//! Fuzz target: a live document fed frames from a writer and a reader.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_sync::harness::room(data));
