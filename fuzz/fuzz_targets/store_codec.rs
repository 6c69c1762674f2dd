//! The store's records: series keys, spool batches, events, alarm records (first byte selects).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_store::fuzzing::store_codec(data));
