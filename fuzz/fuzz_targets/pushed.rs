//! An OTLP export or a remote-write request (first byte), converted into points.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_server::fuzzing::pushed(data));
