//! Query parameters (q, from, to, step, group_by, one per line) and the query they make.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_server::fuzzing::query(data));
