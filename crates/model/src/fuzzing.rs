//! Fuzz entry points for the decoders of this crate; not part of the API.
//!
//! The fuzz targets under `fuzz/` and the stable smoke test call these with arbitrary
//! bytes. A function returns quietly whatever the input, and panics only when a property
//! of the decoder is broken:
//!
//! - decoding never panics and refuses garbage with an error;
//! - whatever decodes is a valid state ([`State::validate`]) whose memory stays within
//!   the bound its precision allows ([`Hist::max_v2_len`]);
//! - what decodes round-trips: re-encoding and decoding gives the same state, and the
//!   re-encoding is canonical (byte for byte the input for fixed-size kinds; stable
//!   under a second round for histograms, whose payloads have several spellings);
//! - a decoded state keeps working: its values derive, it merges with itself.

use crate::hist::Hist;
use crate::kind::Kind;
use crate::state::{SampleValue, State};

/// Runs `bytes` through both decoders of stored and forwarded state:
/// [`State::decode`] (the store's codec) and [`Hist::from_v2_bytes`] (the
/// HdrHistogram V2 payload a federation batch carries).
pub fn state_codec(bytes: &[u8]) {
    if let Ok(state) = State::decode(bytes) {
        check_state(&state, bytes);
    }
    if let Ok(hist) = Hist::from_v2_bytes(bytes) {
        check_hist(&hist, bytes);
    }
}

/// The properties of a decoded state.
fn check_state(state: &State, input: &[u8]) {
    if let Err(e) = state.validate() {
        panic!("decoded state is invalid: {e}: {state:?}");
    }
    let encoded = state.to_bytes();
    let again = State::decode(&encoded)
        .unwrap_or_else(|e| panic!("re-encoded state does not decode: {e}: {state:?}"));
    assert_eq!(&again, state, "state changed through encode and decode");
    match state {
        State::Histogram(h) => check_hist(h, input.get(2..).unwrap_or_default()),
        // Fixed-size kinds have one spelling: the input itself.
        State::Counter(_)
        | State::Sum(_)
        | State::Avg(_)
        | State::Max(_)
        | State::Min(_)
        | State::Latest(_)
        | State::Percent { .. }
        | State::Apdex(_) => assert_eq!(encoded, input, "re-encoding differs from the input"),
        // Variable-length payloads may have several spellings; the re-encoding is one.
        _ => assert_eq!(again.to_bytes(), encoded, "re-encoding is not canonical"),
    }
    let _ = state.values(1);
    let mut doubled = state.clone();
    if doubled.merge(state).is_ok()
        && let Err(e) = doubled.validate()
    {
        panic!("state merged with itself is invalid: {e}: {doubled:?}");
    }
}

/// The properties of a decoded histogram.
fn check_hist(hist: &Hist, input: &[u8]) {
    let bound = 8 * Hist::max_v2_len(hist.sigfig());
    assert!(
        hist.heap_bytes() <= bound,
        "decoding {} bytes allocated {} bytes, more than the {bound} of any {}-digit histogram",
        input.len(),
        hist.heap_bytes(),
        hist.sigfig()
    );
    let encoded = hist.to_v2_bytes();
    assert!(encoded.len() <= Hist::max_v2_len(hist.sigfig()));
    let again = Hist::from_v2_bytes(&encoded)
        .unwrap_or_else(|e| panic!("re-encoded histogram does not decode: {e}: {hist:?}"));
    assert_eq!(&again, hist, "histogram changed through encode and decode");
    assert_eq!(again.to_v2_bytes(), encoded, "re-encoding is not canonical");
    if !hist.is_empty() {
        let (min, max) = (hist.min(), hist.max());
        assert!(min <= max, "min {min} above max {max}");
        for q in [0.0, 0.5, 0.99, 1.0] {
            let v = hist.quantile(q);
            assert!(
                (min..=max).contains(&v),
                "quantile {q} = {v} outside {min}..={max}"
            );
        }
        assert!(hist.mean().is_finite());
    }
    let mut doubled = hist.clone();
    if doubled.merge(hist).is_ok() {
        assert_eq!(doubled.count(), 2 * hist.count());
    }
    // A decoded histogram keeps recording like one built here (within its window:
    // growing a 5-digit window to the top costs megabytes, and is tested elsewhere).
    let mut more = State::Histogram(Box::new(hist.clone()));
    if hist.count() < i64::MAX as u64 {
        let value = if hist.is_empty() { 1.0 } else { hist.min() };
        let recorded = more.record(SampleValue::Number(value.min(Hist::MAX_VALUE)), 0, "");
        assert!(recorded.is_ok(), "{recorded:?}");
        assert_eq!(more.kind(), Kind::Histogram);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateParams;

    #[test]
    fn valid_encodings_pass_and_garbage_is_refused_quietly() {
        let params = StateParams::default();
        for kind in Kind::ALL {
            let mut state = State::empty(kind, &params);
            let value = match kind {
                Kind::Percent => SampleValue::Flag(true),
                _ => SampleValue::Number(3.0),
            };
            state.record(value, 5, "edge").unwrap();
            let bytes = state.to_bytes();
            state_codec(&bytes);
            for len in 0..bytes.len() {
                state_codec(&bytes[..len]);
            }
        }
        state_codec(&[]);
        state_codec(&[0xff; 64]);
    }
}
