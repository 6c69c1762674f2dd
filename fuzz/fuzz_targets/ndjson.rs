//! An HTTP NDJSON ingest body: parsed, then validated all or nothing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_server::fuzzing::ndjson(data));
