//! The exponential histogram beyond the generic laws of `merge_laws.rs`:
//!
//! - the monoid laws for arbitrary finite floats (subnormal to 1e304, both signs, zeros),
//!   for states of *different* scales, bucket bounds and zero thresholds, where every
//!   merge may downscale on overflow: counts, buckets, scale, min and max are equal
//!   exactly in any order; only the float sum gets the compensated-summation tolerance;
//! - merge = record-all: any partition of a set of samples, recorded apart and merged in
//!   any order, gives the state of recording them all into one;
//! - index mapping at bucket boundaries of positive scales;
//! - quantile accuracy against exact nearest-rank quantiles, at scale 20 and after
//!   downscaling: within `sqrt(base) - 1` of the exact sample;
//! - the encoding: round trips, canonical, and forged bytes refused whole.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use strata_model::codec::kind_tag;
use strata_model::exp_hist::{
    self, Buckets, ExpHistParts, MAX_SCALE, lower_bound, map_to_index, relative_error,
};
use strata_model::{ExpHist, Kind, State, Sum};

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/exp_histogram.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// Finite floats of both signs from subnormals to 1e304, and zeros.
fn any_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-1e6f64..1e6, -1060i32..990).prop_map(|(m, e)| m * 2f64.powi(e)),
        -1e3f64..1e3,
        Just(0.0),
        Just(-0.0),
    ]
}

fn values() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(any_value(), 0..60)
}

/// Scale, bucket bound and zero threshold of a state.
fn layout() -> impl Strategy<Value = (i32, u32, f64)> {
    (
        prop::sample::select(vec![20, 12, 3, 1, 0, -1, -10]),
        prop::sample::select(vec![2u32, 3, 5, 16, 160, 16_384]),
        prop::sample::select(vec![0.0, 0.0, 1e-3, 1.0, 1e6]),
    )
}

fn record_all(scale: i32, max_buckets: u32, values: &[f64]) -> ExpHist {
    let mut h = ExpHist::new(scale, max_buckets).unwrap();
    for &v in values {
        h.record(v).unwrap();
    }
    h
}

fn parts(h: &ExpHist) -> ExpHistParts {
    ExpHistParts {
        scale: h.scale(),
        max_buckets: h.max_buckets(),
        zero_threshold: h.zero_threshold(),
        zero_count: h.zero_count(),
        positive: h.positive().clone(),
        negative: h.negative().clone(),
        count: h.count(),
        sum: h.sum(),
        min: if h.is_empty() { f64::INFINITY } else { h.min() },
        max: if h.is_empty() {
            f64::NEG_INFINITY
        } else {
            h.max()
        },
    }
}

/// A state recorded with `layout`, then given its zero threshold (as an ingested
/// OpenTelemetry or Prometheus histogram would have).
fn state((scale, max_buckets, zero_threshold): (i32, u32, f64), values: &[f64]) -> ExpHist {
    let h = record_all(scale, max_buckets, values);
    ExpHist::from_parts(ExpHistParts {
        zero_threshold,
        ..parts(&h)
    })
    .unwrap()
}

fn merged(a: &ExpHist, b: &ExpHist) -> ExpHist {
    let mut out = a.clone();
    out.merge(b).unwrap();
    out
}

/// Everything but the sum, exactly; the sum within `1e-9` of the magnitude involved.
fn assert_same(got: &ExpHist, want: &ExpHist, magnitude: f64) -> Result<(), TestCaseError> {
    let exact = |h: &ExpHist| {
        let mut p = parts(h);
        p.sum = Sum::default();
        (p, h.min().to_bits(), h.max().to_bits())
    };
    prop_assert_eq!(exact(got), exact(want));
    let tolerance = 1e-9 * magnitude.max(f64::MIN_POSITIVE);
    let (g, w) = (got.sum().value(), want.sum().value());
    prop_assert!((g - w).abs() <= tolerance, "sum {} vs {}", g, w);
    prop_assert!(got.validate().is_ok());
    Ok(())
}

fn magnitude(parts: &[&[f64]]) -> f64 {
    parts.iter().flat_map(|p| p.iter()).map(|x| x.abs()).sum()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn laws_hold_across_scales_bounds_and_thresholds(
        la in layout(), lb in layout(), lc in layout(),
        a in values(), b in values(), c in values(),
    ) {
        let (sa, sb, sc) = (state(la, &a), state(lb, &b), state(lc, &c));
        let m = magnitude(&[&a, &b, &c]);
        assert_same(&merged(&sa, &sb), &merged(&sb, &sa), m)?;
        assert_same(&merged(&merged(&sa, &sb), &sc), &merged(&sa, &merged(&sb, &sc)), m)?;
        assert_same(&merged(&merged(&sa, &sc), &sb), &merged(&sa, &merged(&sb, &sc)), m)?;
        // The identity of a layout leaves every state of at most that scale and at least
        // that bound unchanged.
        let identity = ExpHist::new(MAX_SCALE, exp_hist::MAX_MAX_BUCKETS).unwrap();
        prop_assert_eq!(&merged(&identity, &sa), &sa);
        prop_assert_eq!(&merged(&sa, &identity), &sa);
    }

    #[test]
    fn merging_any_partition_equals_recording_everything(
        (scale, max_buckets, _) in layout(),
        xs in prop::collection::vec(any_value(), 0..120),
        owner in prop::collection::vec(0usize..4, 120),
        reverse in any::<bool>(),
    ) {
        let whole = record_all(scale, max_buckets, &xs);
        let mut groups = vec![Vec::new(); 4];
        for (x, o) in xs.iter().zip(&owner) {
            groups[*o].push(*x);
        }
        let mut states: Vec<ExpHist> =
            groups.iter().map(|g| record_all(scale, max_buckets, g)).collect();
        if reverse {
            states.reverse();
        }
        let mut total = ExpHist::new(scale, max_buckets).unwrap();
        for s in &states {
            total.merge(s).unwrap();
        }
        assert_same(&total, &whole, magnitude(&[&xs]))?;
        // Tree-shaped merging: (0 + 1) + (2 + 3).
        let tree = merged(&merged(&states[0], &states[1]), &merged(&states[2], &states[3]));
        assert_same(&tree, &whole, magnitude(&[&xs]))?;
    }

    #[test]
    fn records_and_merges_keep_the_bound(
        (scale, max_buckets, _) in layout(),
        xs in values(),
    ) {
        let h = record_all(scale, max_buckets, &xs);
        prop_assert!(h.positive().counts().len() <= max_buckets as usize);
        prop_assert!(h.negative().counts().len() <= max_buckets as usize);
        prop_assert!(h.scale() <= scale);
        prop_assert!(h.validate().is_ok());
        prop_assert_eq!(h.count(), xs.len() as u64);
    }

    #[test]
    fn positive_scale_boundaries(
        scale in prop::sample::select(vec![1, 3, 8, 20]),
        index in -1_000_000i32..1_000_000,
    ) {
        let index = index >> (MAX_SCALE - scale).min(10);
        let bound = lower_bound(index, scale);
        // Relative bucket width at scale 20 is 6.6e-7: 1e-9 is well inside a bucket.
        prop_assert_eq!(map_to_index(bound * (1.0 + 1e-9), scale), index);
        prop_assert_eq!(map_to_index(bound * (1.0 - 1e-9), scale), index - 1);
        prop_assert_eq!(map_to_index(-bound * (1.0 + 1e-9), scale), index);
    }

    #[test]
    fn quantiles_at_scale_20_are_within_its_bound(
        base in 1e-3f64..1e6,
        offsets in prop::collection::vec((0.0f64..0.01, any::<bool>()), 1..300),
    ) {
        // Within 1% of `base` (or of -base) each side spans under 16384 buckets at scale 20.
        let xs: Vec<f64> = offsets
            .iter()
            .map(|&(o, neg)| if neg { -base * (1.0 + o) } else { base * (1.0 + o) })
            .collect();
        let h = record_all(20, exp_hist::MAX_MAX_BUCKETS, &xs);
        prop_assert_eq!(h.scale(), 20);
        check_quantiles(&h, &xs)?;
    }

    #[test]
    fn quantiles_after_downscaling_are_within_the_bound_of_the_final_scale(
        xs in prop::collection::vec(
            prop_oneof![(-1e6f64..1e6, -30i32..30).prop_map(|(m, e)| m * 2f64.powi(e)), Just(0.0)],
            1..300,
        ),
        max_buckets in prop::sample::select(vec![2u32, 8, 160]),
    ) {
        let h = record_all(20, max_buckets, &xs);
        check_quantiles(&h, &xs)?;
        // Merged from halves: the same state, the same quantiles.
        let (a, b) = xs.split_at(xs.len() / 2);
        let parts = merged(&record_all(20, max_buckets, a), &record_all(20, max_buckets, b));
        prop_assert_eq!(parts.quantile(0.99), h.quantile(0.99));
        prop_assert_eq!(parts.quantile(0.5), h.quantile(0.5));
    }

    #[test]
    fn encodings_roundtrip_canonically(la in layout(), xs in values()) {
        let h = state(la, &xs);
        let s = State::ExpHistogram(Box::new(h.clone()));
        let bytes = s.to_bytes();
        prop_assert_eq!(bytes[1], kind_tag(Kind::ExpHistogram));
        prop_assert!(bytes.len() <= 2 + ExpHist::MAX_PAYLOAD_LEN);
        let back = State::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(back.to_bytes(), bytes);
        prop_assert_eq!(ExpHist::from_payload(&h.to_payload()).unwrap(), h);
    }

    #[test]
    fn mutated_encodings_are_refused_or_canonical(
        la in layout(),
        xs in values(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = State::ExpHistogram(Box::new(state(la, &xs))).to_bytes();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        if let Ok(s) = State::decode(&bytes) {
            prop_assert!(s.validate().is_ok());
            prop_assert_eq!(s.to_bytes(), bytes);
            let mut twice = s.clone();
            if twice.merge(&s).is_ok() {
                prop_assert!(twice.validate().is_ok());
            }
            let _ = s.values(1);
        }
    }
}

/// Every derived quantile against the exact nearest-rank quantile of `xs`.
fn check_quantiles(h: &ExpHist, xs: &[f64]) -> Result<(), TestCaseError> {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let bound = relative_error(h.scale()) * (1.0 + 1e-6);
    for q in [0.0, 0.1, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0] {
        let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
        let exact = sorted[rank - 1];
        let got = h.quantile(q);
        prop_assert!(
            (got - exact).abs() <= bound * exact.abs(),
            "q {}: {} vs exact {} at scale {} (bound {})",
            q,
            got,
            exact,
            h.scale(),
            bound
        );
    }
    Ok(())
}

/// A fixed pseudo-random stream, for measurements that should not vary between runs.
fn xorshift(seed: u64) -> impl Iterator<Item = f64> {
    let mut x = seed;
    std::iter::from_fn(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Some((x >> 11) as f64 / (1u64 << 53) as f64)
    })
}

/// The largest relative quantile error over many quantiles of `xs`, as a fraction of the
/// bound of the final scale.
fn worst_error(h: &ExpHist, xs: &[f64]) -> (f64, f64) {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut worst = 0f64;
    for k in 0..=1000 {
        let q = f64::from(k) / 1000.0;
        let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
        let exact = sorted[rank - 1];
        worst = worst.max((h.quantile(q) - exact).abs() / exact.abs());
    }
    (worst, relative_error(h.scale()))
}

#[test]
fn measured_quantile_error_of_latencies() {
    // Log-uniform latencies from 0.1 ms to 10 s: 17 binades.
    let xs: Vec<f64> = xorshift(0x2545_f491_4f6c_dd1d)
        .take(100_000)
        .map(|u| 0.1 * 1e5f64.powf(u))
        .collect();
    let h = record_all(20, 160, &xs);
    let (worst, bound) = worst_error(&h, &xs);
    eprintln!(
        "default bound: scale {}, worst quantile error {worst:.3e}, bound {bound:.3e}",
        h.scale()
    );
    assert_eq!(h.scale(), 3);
    assert!(worst <= bound * (1.0 + 1e-9), "{worst} > {bound}");

    // A narrow band at the finest scale.
    let xs: Vec<f64> = xorshift(7).take(100_000).map(|u| 250.0 + u).collect();
    let h = record_all(20, exp_hist::MAX_MAX_BUCKETS, &xs);
    let (worst, bound) = worst_error(&h, &xs);
    eprintln!(
        "scale {}: worst quantile error {worst:.3e}, bound {bound:.3e}",
        h.scale()
    );
    assert_eq!(h.scale(), 20);
    assert!(worst <= bound * (1.0 + 1e-6), "{worst} > {bound}");
}

#[test]
fn forged_states_are_refused_whole() {
    let good = record_all(3, 160, &[1.0, 2.0, -3.0, 0.0]);
    let bytes = State::ExpHistogram(Box::new(good.clone())).to_bytes();
    let forge = |at: usize, expected: u8, value: u8| {
        let mut forged = bytes.clone();
        assert_eq!(forged[at], expected, "layout of {bytes:?}");
        forged[at] = value;
        State::decode(&forged).unwrap_err().to_string()
    };
    // Version, tag, then the scale (zig-zag 6 = 3): 42 is scale 21.
    let err = forge(2, 6, 42);
    assert!(err.contains("scale"), "{err}");
    // The bound (160, two varint bytes) down to 1.
    let err = forge(3, 0xa0, 0x01);
    assert!(
        err.contains("not minimal") || err.contains("max_buckets"),
        "{err}"
    );
    // A count the buckets do not add up to: after the zero threshold and zero count.
    let err = forge(2 + 1 + 2 + 8 + 1, 4, 5);
    assert!(err.contains("count 5"), "{err}");
    // Every truncation, and any trailing byte.
    for len in 0..bytes.len() {
        assert!(State::decode(&bytes[..len]).is_err(), "truncated to {len}");
    }
    let mut longer = bytes.clone();
    longer.push(1);
    assert!(State::decode(&longer).is_err());
    // Fields that do not agree, built directly.
    for bad in [
        ExpHistParts {
            min: 5.0,
            ..parts(&good)
        },
        ExpHistParts {
            positive: Buckets::new(0, vec![1, 1, 1]),
            ..parts(&good)
        },
        ExpHistParts {
            sum: Sum {
                sum: f64::INFINITY,
                compensation: 0.0,
            },
            ..parts(&good)
        },
    ] {
        assert!(ExpHist::from_parts(bad).is_err());
    }
}
