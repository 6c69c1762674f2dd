//! Federation SourceMessages: one message, or a length-delimited stream of them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_server::fuzzing::federation(data));
