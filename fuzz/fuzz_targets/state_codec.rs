//! Stored state (State::decode) and HdrHistogram V2 bytes (Hist::from_v2_bytes).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_model::fuzzing::state_codec(data));
