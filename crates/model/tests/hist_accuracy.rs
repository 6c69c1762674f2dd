//! Histogram percentiles stay within the HDR error bound of the exact percentiles of the
//! raw samples, at every precision, however the samples were split and merged.
//!
//! The exact quantile is defined as HdrHistogram defines it: the smallest sample `v` such
//! that at least `max(1, ceil(q * n))` samples are `<= v`. The bound is
//! `v * 10^-sigfig` (bucket width) plus `0.001` (the recording unit).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use strata_model::Hist;

fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let k = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[k - 1]
}

fn bound(sigfig: u8, v: f64) -> f64 {
    v.abs() * 10f64.powi(-i32::from(sigfig)) + 0.001 + 1e-12 * v.abs()
}

/// Latency-like values: uniform with 3 decimals, or spread log-uniformly over 1µs..10^9.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        20 => (0u64..=1_000_000_000).prop_map(|u| u as f64 / 1000.0),
        20 => (-3.0f64..9.0).prop_map(|e| 10f64.powf(e)),
        1 => Just(0.0),
        1 => Just(Hist::MAX_VALUE),
    ]
}

fn hist_of(sigfig: u8, xs: &[f64]) -> Hist {
    let mut h = Hist::new(sigfig).unwrap();
    for &x in xs {
        h.record(x).unwrap();
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/hist_accuracy.txt",
        ))),
        ..ProptestConfig::default()
    })]

    // 5 digits is covered by `five_digits_within_error_bound`: its dense counts array
    // (2^17 counters per power of two) makes hundreds of random cases slow in debug builds.
    #[test]
    fn quantiles_within_error_bound(
        sigfig in 1u8..=4,
        xs in prop::collection::vec(value(), 1..300),
        split in any::<prop::sample::Index>(),
        extra_q in 0.0f64..=1.0,
    ) {
        // Record in two parts and merge, as two tiers would.
        let cut = split.index(xs.len() + 1);
        let mut h = hist_of(sigfig, &xs[..cut]);
        h.merge(&hist_of(sigfig, &xs[cut..])).unwrap();

        let mut sorted = xs.clone();
        sorted.sort_by(f64::total_cmp);
        prop_assert_eq!(h.count(), xs.len() as u64);

        for q in [0.0, 0.001, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0, extra_q] {
            let want = exact_quantile(&sorted, q);
            let got = h.quantile(q);
            prop_assert!(
                (got - want).abs() <= bound(sigfig, want),
                "sigfig {} q {}: got {} want {}", sigfig, q, got, want
            );
        }
        let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
        prop_assert!((h.min() - lo).abs() <= bound(sigfig, lo), "min {} vs {}", h.min(), lo);
        prop_assert!((h.max() - hi).abs() <= bound(sigfig, hi), "max {} vs {}", h.max(), hi);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        prop_assert!((h.mean() - mean).abs() <= bound(sigfig, mean), "mean {} vs {}", h.mean(), mean);
    }

    #[test]
    fn error_does_not_grow_with_tiers(
        xs in prop::collection::vec(value(), 1..200),
        groups in prop::collection::vec(0usize..8, 1..200),
    ) {
        // Scatter samples over 8 "regions", merge regions pairwise up a 3-level tree, and
        // compare with one histogram of every sample: identical, not merely close.
        let mut regions: Vec<Hist> = (0..8).map(|_| Hist::new(2).unwrap()).collect();
        for (i, &x) in xs.iter().enumerate() {
            regions[groups[i % groups.len()]].record(x).unwrap();
        }
        while regions.len() > 1 {
            regions = regions
                .chunks(2)
                .map(|pair| {
                    let mut h = pair[0].clone();
                    h.merge(&pair[1]).unwrap();
                    h
                })
                .collect();
        }
        let direct = hist_of(2, &xs);
        prop_assert_eq!(&regions[0], &direct);
        for q in [0.5, 0.9, 0.99, 0.999] {
            prop_assert_eq!(regions[0].quantile(q), direct.quantile(q));
        }
    }
}

#[test]
fn five_digits_within_error_bound() {
    // Deterministic log-spread values from 0.001 to ~10^9 (xorshift), split across 3 merges.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let xs: Vec<f64> = (0..2000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let e = (x % 12_000) as f64 / 1000.0 - 3.0;
            (10f64.powf(e) * 1000.0).round() / 1000.0
        })
        .collect();
    let mut h = hist_of(5, &xs[..700]);
    h.merge(&hist_of(5, &xs[700..1500])).unwrap();
    h.merge(&hist_of(5, &xs[1500..])).unwrap();
    let mut sorted = xs.clone();
    sorted.sort_by(f64::total_cmp);
    let qs = (0..=100)
        .map(|i| f64::from(i) / 100.0)
        .chain([0.001, 0.999, 0.9999]);
    for q in qs {
        let (got, want) = (h.quantile(q), exact_quantile(&sorted, q));
        assert!(
            (got - want).abs() <= bound(5, want),
            "q {q}: got {got} want {want}"
        );
    }
}
