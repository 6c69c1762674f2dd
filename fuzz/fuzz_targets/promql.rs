//! A PromQL expression (and an evaluation time offset) evaluated by the Prometheus-compatible API.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_server::fuzzing::promql(data));
