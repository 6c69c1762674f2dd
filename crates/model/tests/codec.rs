//! Codec property tests: every kind roundtrips, and no input, however malformed, makes
//! `State::decode` panic.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use strata_model::codec::{FORMAT_VERSION, kind_tag};
use strata_model::{Hist, Kind, SampleValue, State, StateParams};

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(Kind::ALL.to_vec())
}

/// A state of `kind` with random samples; sources may be any Unicode.
fn state() -> impl Strategy<Value = State> {
    (
        kind(),
        1u8..=5,
        prop::sample::select(vec![0.5, 100.0, 500.0]),
        prop::collection::vec((0.0f64..1e6, any::<bool>(), any::<i64>(), ".{0,12}"), 0..20),
    )
        .prop_map(|(kind, histogram_sigfig, apdex_threshold, samples)| {
            let params = StateParams {
                histogram_sigfig,
                apdex_threshold,
                ..StateParams::default()
            };
            let mut s = State::empty(kind, &params);
            for (v, b, ts, source) in samples {
                let value = match kind {
                    Kind::Percent => SampleValue::Flag(b),
                    Kind::Counter => SampleValue::Number(v.floor()),
                    Kind::Sum
                    | Kind::Avg
                    | Kind::Max
                    | Kind::Min
                    | Kind::Latest
                    | Kind::ExpHistogram
                        if b =>
                    {
                        SampleValue::Number(-v)
                    }
                    _ => SampleValue::Number(v),
                };
                s.record(value, ts, &source).unwrap();
            }
            s
        })
}

/// Decoding must never panic; whatever it accepts must behave like a real state.
fn exercise(bytes: &[u8]) {
    if let Ok(s) = State::decode(bytes) {
        let again = State::decode(&s.to_bytes()).expect("re-encoded state decodes");
        assert_eq!(again, s);
        // Exponential histograms have one spelling: the decoder accepts no other.
        if s.kind() == Kind::ExpHistogram {
            assert_eq!(s.to_bytes(), bytes);
        }
        let mut twice = s.clone();
        // A decoded state merges with itself unless a total would overflow (a count over
        // half the cap); a refused merge changes nothing.
        if twice.merge(&s).is_err() {
            assert_eq!(twice, s);
        }
        let _ = s.values(1);
        let _ = s.is_empty();
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/codec.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_kind_roundtrips(s in state()) {
        let bytes = s.to_bytes();
        prop_assert_eq!(bytes[0], FORMAT_VERSION);
        prop_assert_eq!(bytes[1], kind_tag(s.kind()));
        let back = State::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &s);
        // Our own output is canonical.
        prop_assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        exercise(&bytes);
    }

    #[test]
    fn random_payload_after_valid_header_never_panics(
        k in kind(),
        payload in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut bytes = vec![FORMAT_VERSION, kind_tag(k)];
        bytes.extend_from_slice(&payload);
        exercise(&bytes);
    }

    #[test]
    fn mutated_encodings_never_panic(
        s in state(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = s.to_bytes();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        exercise(&bytes);
    }

    #[test]
    fn forged_histogram_headers_never_panic(
        digits in 0u32..8,
        low in prop::sample::select(vec![0u64, 1, 2, 1024]),
        high in prop::sample::select(vec![0u64, 1, 2, 3, 255, 4095, 1 << 20, 1 << 30, u64::MAX]),
        offset in prop::sample::select(vec![0u32, 1]),
        payload in prop::collection::vec(any::<u8>(), 0..96),
        wrong_len in any::<bool>(),
    ) {
        let mut v2 = Vec::new();
        v2.extend_from_slice(&0x1c84_9313u32.to_be_bytes());
        let len = if wrong_len { payload.len() as u32 + 7 } else { payload.len() as u32 };
        v2.extend_from_slice(&len.to_be_bytes());
        v2.extend_from_slice(&offset.to_be_bytes());
        v2.extend_from_slice(&digits.to_be_bytes());
        v2.extend_from_slice(&low.to_be_bytes());
        v2.extend_from_slice(&high.to_be_bytes());
        v2.extend_from_slice(&1.0f64.to_be_bytes());
        v2.extend_from_slice(&payload);
        let _ = Hist::from_v2_bytes(&v2);
        let mut bytes = vec![FORMAT_VERSION, kind_tag(Kind::Histogram)];
        bytes.extend_from_slice(&v2);
        exercise(&bytes);
    }
}
