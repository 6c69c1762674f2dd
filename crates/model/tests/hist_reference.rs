//! The windowed [`Hist`] against the dense reference, the `hdrhistogram` crate: for the same
//! samples (recorded directly or split and merged), every derived value is the same, the
//! V2 bytes are identical, and each side reads the other's bytes.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use strata_model::Hist;

/// A sample value and how many times it is recorded.
fn sample() -> impl Strategy<Value = (f64, u64)> {
    let value = prop_oneof![
        // latencies of 5..400 ms with 3 decimals
        20 => (5_000u64..=400_000).prop_map(|u| u as f64 / 1000.0),
        10 => (-3.0f64..12.0).prop_map(|e| 10f64.powf(e).min(Hist::MAX_VALUE)),
        4 => (0u64..64).prop_map(|u| u as f64 / 1000.0),
        1 => Just(0.0),
        1 => Just(Hist::MAX_VALUE),
    ];
    let count = prop_oneof![
        20 => Just(1u64),
        4 => 0u64..1000,
        1 => 0u64..(1 << 40),
    ];
    (value, count)
}

fn units(v: f64) -> u64 {
    (v * Hist::SCALE).round() as u64
}

fn ours(sigfig: u8, xs: &[(f64, u64)]) -> Hist {
    let mut h = Hist::new(sigfig).unwrap();
    for &(v, n) in xs {
        h.record_n(v, n).unwrap();
    }
    h
}

fn dense(sigfig: u8, xs: &[(f64, u64)]) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(sigfig).unwrap();
    for &(v, n) in xs {
        if n > 0 {
            h.record_n(units(v), n).unwrap();
        }
    }
    h
}

fn v2(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    V2Serializer::new().serialize(h, &mut out).unwrap();
    out
}

/// Every derived value of `s` equals the reference's (as the dense `Hist` reported them).
fn assert_same_values(s: &Hist, d: &Histogram<u64>, extra_q: f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(s.count(), d.len());
    prop_assert_eq!(s.is_empty(), d.is_empty());
    if d.is_empty() {
        prop_assert!(s.min().is_nan() && s.max().is_nan() && s.mean().is_nan());
        prop_assert!(s.quantile(0.5).is_nan());
        return Ok(());
    }
    prop_assert_eq!(s.min(), d.min() as f64 / Hist::SCALE);
    prop_assert_eq!(s.max(), d.max() as f64 / Hist::SCALE);
    let want_mean = d.mean() / Hist::SCALE;
    prop_assert!(
        (s.mean() - want_mean).abs() <= 1e-9 * want_mean.abs(),
        "mean {} vs {}",
        s.mean(),
        want_mean
    );
    let qs = [
        0.0, 0.001, 0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.0, extra_q,
    ];
    // Where `q × total` rounds past the total (totals beyond 2^53), the
    // reference finds no bucket and answers 0; ours answers the largest
    // sample, as it does below that.
    let reference = |q: f64| {
        let target = (q.clamp(0.0, 1.0) * d.len() as f64).ceil() as u64;
        if target > d.len() {
            s.max()
        } else {
            d.value_at_quantile(q) as f64 / Hist::SCALE
        }
    };
    for q in qs {
        prop_assert_eq!(s.quantile(q), reference(q), "q {}", q);
    }
    // Out-of-range quantiles clamp as before.
    prop_assert_eq!(s.quantile(-1.0), reference(0.0));
    prop_assert_eq!(s.quantile(2.0), reference(1.0));
    Ok(())
}

/// Bytes identical to the reference serializer's, and readable both ways.
fn assert_same_bytes(s: &Hist, d: &Histogram<u64>) -> Result<(), TestCaseError> {
    let ours = s.to_v2_bytes();
    let theirs = v2(d);
    prop_assert_eq!(&ours, &theirs);
    // We read their bytes into an equal histogram that writes the same bytes.
    let back = Hist::from_v2_bytes(&theirs).unwrap();
    prop_assert_eq!(&back, s);
    prop_assert_eq!(back.to_v2_bytes(), theirs);
    // They read ours.
    let read: Histogram<u64> = Deserializer::new().deserialize(&mut &ours[..]).unwrap();
    prop_assert_eq!(read.len(), s.count());
    prop_assert_eq!(&read, d);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/hist_reference.txt",
        ))),
        ..ProptestConfig::default()
    })]

    // 5 digits is in `five_digits_match_the_reference` (its dense reference is slow in
    // debug builds).
    #[test]
    fn recorded_values_and_bytes_match_the_reference(
        sigfig in 1u8..=4,
        xs in prop::collection::vec(sample(), 0..300),
        extra_q in 0.0f64..=1.0,
    ) {
        let (s, d) = (ours(sigfig, &xs), dense(sigfig, &xs));
        assert_same_values(&s, &d, extra_q)?;
        assert_same_bytes(&s, &d)?;
    }

    #[test]
    fn merged_values_and_bytes_match_the_reference(
        sigfig in 1u8..=4,
        parts in prop::collection::vec(prop::collection::vec(sample(), 0..80), 1..5),
        through_bytes in any::<bool>(),
        extra_q in 0.0f64..=1.0,
    ) {
        // Merge the parts in order on both sides; optionally each part travels as bytes
        // first, as increments between tiers do.
        let mut s = Hist::new(sigfig).unwrap();
        let mut d = Histogram::<u64>::new(sigfig).unwrap();
        for part in &parts {
            let mut sp = ours(sigfig, part);
            let mut dp = dense(sigfig, part);
            if through_bytes {
                sp = Hist::from_v2_bytes(&sp.to_v2_bytes()).unwrap();
                dp = Deserializer::new().deserialize(&mut &v2(&dp)[..]).unwrap();
                dp.auto(true);
            }
            s.merge(&sp).unwrap();
            d.add(&dp).unwrap();
        }
        assert_same_values(&s, &d, extra_q)?;
        assert_same_bytes(&s, &d)?;
        // Recording after merging keeps matching (the range keeps growing the same way).
        s.record(Hist::MAX_VALUE).unwrap();
        d.record(units(Hist::MAX_VALUE)).unwrap();
        assert_same_values(&s, &d, extra_q)?;
        assert_same_bytes(&s, &d)?;
    }
}

#[test]
fn five_digits_match_the_reference() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let xs: Vec<(f64, u64)> = (0..3000)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let e = (x % 12_000) as f64 / 1000.0 - 3.0;
            ((10f64.powf(e) * 1000.0).round() / 1000.0, 1 + (i % 3))
        })
        .collect();
    let (mut s, mut d) = (ours(5, &xs[..1000]), dense(5, &xs[..1000]));
    s.merge(&ours(5, &xs[1000..])).unwrap();
    d.add(dense(5, &xs[1000..])).unwrap();
    assert_same_values(&s, &d, 0.123).unwrap();
    assert_same_bytes(&s, &d).unwrap();
}

#[test]
fn empty_and_zero_only_match_the_reference() {
    for sigfig in 1..=5 {
        for xs in [vec![], vec![(0.0, 1)], vec![(0.0, 3), (0.0005, 2)]] {
            let (s, d) = (ours(sigfig, &xs), dense(sigfig, &xs));
            assert_same_values(&s, &d, 0.5).unwrap();
            assert_same_bytes(&s, &d).unwrap();
        }
    }
}

#[test]
fn huge_counts_match_the_reference() {
    // Counts that widen the count column through every width, up to the cap.
    let xs = [
        (1.0, 200),
        (1.0, 100),
        (2.0, 70_000),
        (3.0, 5_000_000_000),
        (4.0, (i64::MAX as u64) - 5_000_070_300 - 7),
    ];
    let (s, d) = (ours(2, &xs), dense(2, &xs));
    assert_same_values(&s, &d, 0.7).unwrap();
    assert_same_bytes(&s, &d).unwrap();
}
