//! Property tests of the monoid laws every kind's add-function must obey:
//!
//! - identity: `merge(empty, s) == s == merge(s, empty)`
//! - commutativity: `merge(a, b) == merge(b, a)`
//! - associativity: `merge(merge(a, b), c) == merge(a, merge(b, c))`
//! - homomorphism: `merge(state(a), state(b)) == state(a ++ b)`, where `state(xs)` records
//!   the samples `xs` into the empty state: merging increments gives what one node seeing
//!   every raw sample would have.
//!
//! Float kinds use dyadic samples (multiples of 1/8 in a bounded range), whose sums are
//! exact, so equality is exact; `approx_*` tests cover arbitrary finite floats for sum and
//! avg with a relative tolerance. Exponential histograms get samples over forty binades,
//! and bucket bounds down to 2, so most cases go through downscaling on overflow;
//! `tests/exp_histogram.rs` covers arbitrary floats and mixed parameters.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use strata_model::{Kind, ModelError, SampleValue, State, StateParams};

/// One raw sample with the context `latest` needs.
#[derive(Debug, Clone)]
struct Sample {
    value: SampleValue,
    ts_ms: i64,
    source: String,
}

fn record_all(kind: Kind, params: &StateParams, samples: &[Sample]) -> State {
    let mut s = State::empty(kind, params);
    for x in samples {
        s.record(x.value, x.ts_ms, &x.source).unwrap();
    }
    s
}

fn merged(a: &State, b: &State) -> State {
    let mut out = a.clone();
    out.merge(b).unwrap();
    out
}

/// Multiples of 1/8 in [-1000, 1000]: every partial sum of a few hundred is exact.
fn dyadic() -> impl Strategy<Value = f64> {
    (-8000i32..=8000).prop_map(|i| f64::from(i) / 8.0)
}

/// Non-negative multiples of 1/8 up to 2500 (spans all apdex classes for T in 1..=500).
fn dyadic_latency() -> impl Strategy<Value = f64> {
    (0i32..=20_000).prop_map(|i| f64::from(i) / 8.0)
}

fn number(values: impl Strategy<Value = f64>) -> impl Strategy<Value = Sample> {
    values.prop_map(|v| Sample {
        value: SampleValue::Number(v),
        ts_ms: 0,
        source: String::new(),
    })
}

fn sample(kind: Kind) -> BoxedStrategy<Sample> {
    match kind {
        Kind::Counter => number((0u32..=1_000_000).prop_map(f64::from)).boxed(),
        Kind::Sum | Kind::Avg | Kind::Max | Kind::Min => number(dyadic()).boxed(),
        // Few timestamps and sources so that ties on (ts, source) are common.
        Kind::Latest => (dyadic(), 0i64..4, prop::sample::select(vec!["a", "b", "c"]))
            .prop_map(|(v, ts_ms, source)| Sample {
                value: SampleValue::Number(v),
                ts_ms,
                source: source.to_owned(),
            })
            .boxed(),
        Kind::Percent => any::<bool>()
            .prop_map(|b| Sample {
                value: SampleValue::Flag(b),
                ts_ms: 0,
                source: String::new(),
            })
            .boxed(),
        Kind::Apdex => number(dyadic_latency()).boxed(),
        // Any recordable value with 3 decimals up to 10^7, plus exact small values.
        Kind::Histogram => number(prop_oneof![
            (0u64..=10_000_000_000).prop_map(|u| u as f64 / 1000.0),
            dyadic_latency(),
        ])
        .boxed(),
        Kind::ExpHistogram => number(prop_oneof![dyadic(), wide_dyadic(), Just(0.0)]).boxed(),
    }
}

/// `±m * 2^e` with `m < 2^10`, `e` in -10..=20: forty binades, all partial sums of a few
/// hundred exact (multiples of 2^-10 below 2^37).
fn wide_dyadic() -> impl Strategy<Value = f64> {
    (-1023i32..=1023, -10i32..=20).prop_map(|(m, e)| f64::from(m) * 2f64.powi(e))
}

fn samples(kind: Kind) -> impl Strategy<Value = Vec<Sample>> {
    prop::collection::vec(sample(kind), 0..40)
}

fn params(kind: Kind) -> BoxedStrategy<StateParams> {
    match kind {
        Kind::Histogram => (1u8..=3)
            .prop_map(|histogram_sigfig| StateParams {
                histogram_sigfig,
                ..StateParams::default()
            })
            .boxed(),
        Kind::Apdex => prop::sample::select(vec![0.5, 100.0, 500.0])
            .prop_map(|apdex_threshold| StateParams {
                apdex_threshold,
                ..StateParams::default()
            })
            .boxed(),
        Kind::ExpHistogram => (
            prop::sample::select(vec![2u32, 3, 8, 160]),
            prop::sample::select(vec![20, 3, 0, -10]),
        )
            .prop_map(
                |(exp_histogram_max_buckets, exp_histogram_scale)| StateParams {
                    exp_histogram_max_buckets,
                    exp_histogram_scale,
                    ..StateParams::default()
                },
            )
            .boxed(),
        _ => Just(StateParams::default()).boxed(),
    }
}

/// Failing cases are kept in `tests/proptest-regressions/` (proptest cannot locate a source
/// root for integration tests on its own) and replayed first on every run.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/merge_laws.txt",
        ))),
        ..ProptestConfig::default()
    }
}

macro_rules! merge_laws {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            proptest! {
                #![proptest_config(config())]

                #[test]
                fn identity(p in params($kind), xs in samples($kind)) {
                    let s = record_all($kind, &p, &xs);
                    let empty = State::empty($kind, &p);
                    prop_assert_eq!(&merged(&empty, &s), &s);
                    prop_assert_eq!(&merged(&s, &empty), &s);
                    if xs.is_empty() {
                        prop_assert!(s.is_empty());
                    }
                }

                #[test]
                fn commutativity(p in params($kind), a in samples($kind), b in samples($kind)) {
                    let (sa, sb) = (record_all($kind, &p, &a), record_all($kind, &p, &b));
                    prop_assert_eq!(merged(&sa, &sb), merged(&sb, &sa));
                }

                #[test]
                fn associativity(
                    p in params($kind),
                    a in samples($kind),
                    b in samples($kind),
                    c in samples($kind),
                ) {
                    let sa = record_all($kind, &p, &a);
                    let sb = record_all($kind, &p, &b);
                    let sc = record_all($kind, &p, &c);
                    prop_assert_eq!(merged(&merged(&sa, &sb), &sc), merged(&sa, &merged(&sb, &sc)));
                }

                #[test]
                fn homomorphism(p in params($kind), a in samples($kind), b in samples($kind)) {
                    let all: Vec<Sample> = a.iter().chain(&b).cloned().collect();
                    let whole = record_all($kind, &p, &all);
                    let parts = merged(&record_all($kind, &p, &a), &record_all($kind, &p, &b));
                    prop_assert_eq!(&parts, &whole);
                    prop_assert_eq!(
                        format!("{:?}", parts.values(1)),
                        format!("{:?}", whole.values(1))
                    );
                }

                #[test]
                fn any_split_of_a_stream_merges_to_the_whole(
                    p in params($kind),
                    xs in samples($kind),
                    cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
                ) {
                    // Split the stream at arbitrary points (as flushes do), merge the
                    // increments in reverse order, compare with one node seeing it all.
                    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(xs.len() + 1)).collect();
                    points.push(0);
                    points.push(xs.len());
                    points.sort_unstable();
                    let mut total = State::empty($kind, &p);
                    for w in points.windows(2).rev() {
                        total.merge(&record_all($kind, &p, &xs[w[0]..w[1]])).unwrap();
                    }
                    prop_assert_eq!(total, record_all($kind, &p, &xs));
                }
            }
        }
    };
}

merge_laws!(counter, Kind::Counter);
merge_laws!(sum, Kind::Sum);
merge_laws!(avg, Kind::Avg);
merge_laws!(max, Kind::Max);
merge_laws!(min, Kind::Min);
merge_laws!(latest, Kind::Latest);
merge_laws!(percent, Kind::Percent);
merge_laws!(apdex, Kind::Apdex);
merge_laws!(histogram, Kind::Histogram);
merge_laws!(exp_histogram, Kind::ExpHistogram);

/// Arbitrary finite floats over many magnitudes (bounded so sums cannot overflow).
fn any_finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1e12f64..1e12,
        -1.0f64..1.0,
        (-1e6f64..1e6, -30i32..30).prop_map(|(m, e)| m * 2f64.powi(e)),
    ]
}

fn float_samples() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(any_finite(), 0..60)
}

fn float_state(kind: Kind, xs: &[f64]) -> State {
    let mut s = State::empty(kind, &StateParams::default());
    for &x in xs {
        s.record(SampleValue::Number(x), 0, "").unwrap();
    }
    s
}

/// `|got - want| <= 1e-9 * scale`, where `scale` is the sum of magnitudes of every sample
/// involved: the honest reference for a sum that may cancel to near zero.
fn assert_close(got: &State, want: &State, scale: f64) -> Result<(), TestCaseError> {
    let (g, w) = (got.values(1), want.values(1));
    for ((name, gv), (_, wv)) in g.iter().zip(&w) {
        let tol = 1e-9 * scale.max(wv.abs()).max(f64::MIN_POSITIVE);
        let ok = (gv.is_nan() && wv.is_nan()) || (gv - wv).abs() <= tol;
        prop_assert!(ok, "{}: {} vs {} (tolerance {})", name, gv, wv, tol);
    }
    Ok(())
}

fn magnitude(parts: &[&[f64]]) -> f64 {
    parts.iter().flat_map(|p| p.iter()).map(|x| x.abs()).sum()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn approx_sum_and_avg_laws(a in float_samples(), b in float_samples(), c in float_samples()) {
        for kind in [Kind::Sum, Kind::Avg] {
            let (sa, sb, sc) = (float_state(kind, &a), float_state(kind, &b), float_state(kind, &c));
            let scale = magnitude(&[&a, &b, &c]);
            let all: Vec<f64> = a.iter().chain(&b).copied().collect();

            assert_close(&merged(&sa, &sb), &float_state(kind, &all), scale)?;
            assert_close(&merged(&sa, &sb), &merged(&sb, &sa), scale)?;
            assert_close(&merged(&merged(&sa, &sb), &sc), &merged(&sa, &merged(&sb, &sc)), scale)?;
            prop_assert_eq!(&merged(&State::empty(kind, &StateParams::default()), &sa), &sa);
            prop_assert_eq!(&merged(&sa, &State::empty(kind, &StateParams::default())), &sa);
        }
    }

    #[test]
    fn approx_sum_matches_exact_reference(a in float_samples(), b in float_samples()) {
        let all: Vec<f64> = a.iter().chain(&b).copied().collect();
        let exact = exact_sum(&all);
        let tol = 1e-9 * magnitude(&[&all]).max(f64::MIN_POSITIVE);
        let whole = float_state(Kind::Sum, &all).values(1)[0].1;
        let parts = merged(&float_state(Kind::Sum, &a), &float_state(Kind::Sum, &b)).values(1)[0].1;
        prop_assert!((whole - exact).abs() <= tol, "{} vs {}", whole, exact);
        prop_assert!((parts - exact).abs() <= tol, "{} vs {}", parts, exact);
    }

    #[test]
    fn mismatched_merges_fail_and_leave_state_unchanged(
        ka in prop::sample::select(Kind::ALL.to_vec()),
        kb in prop::sample::select(Kind::ALL.to_vec()),
        seed_a in any::<u64>(),
        seed_b in any::<u64>(),
    ) {
        // Precision and threshold differ too whenever the kinds match; exponential
        // histograms of any scale and bound merge.
        let pa = StateParams { histogram_sigfig: 2, apdex_threshold: 100.0, ..StateParams::default() };
        let pb = StateParams {
            histogram_sigfig: 3,
            apdex_threshold: 250.0,
            exp_histogram_max_buckets: 4,
            exp_histogram_scale: 0,
        };
        let a = seeded_state(ka, &pa, seed_a);
        let b = seeded_state(kb, &pb, seed_b);
        let mut target = a.clone();
        let checked = a.check_merge(&b);
        let result = target.merge(&b);
        // check_merge answers exactly what merge does, without changing anything.
        prop_assert_eq!(&checked, &result);
        let expected_err = if ka != kb {
            Some(ModelError::KindMismatch { expected: ka, found: kb })
        } else if ka == Kind::Histogram {
            Some(ModelError::PrecisionMismatch { expected: 2, found: 3 })
        } else if ka == Kind::Apdex {
            Some(ModelError::ApdexThresholdMismatch { expected: 100.0, found: 250.0 })
        } else {
            None
        };
        match expected_err {
            Some(err) => {
                prop_assert_eq!(result, Err(err));
                prop_assert_eq!(target, a);
            }
            None => prop_assert!(result.is_ok()),
        }
    }
}

/// A small non-empty state of `kind` derived from `seed`.
fn seeded_state(kind: Kind, params: &StateParams, seed: u64) -> State {
    let mut s = State::empty(kind, params);
    let mut x = seed | 1;
    for _ in 0..(seed % 5 + 1) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let value = match kind {
            Kind::Percent => SampleValue::Flag(x & 1 == 1),
            Kind::Counter => SampleValue::Number((x % 10_000) as f64),
            _ => SampleValue::Number((x % 10_000) as f64 / 8.0),
        };
        s.record(value, (x % 7) as i64, "s").unwrap();
    }
    s
}

/// Shewchuk's exact summation (as in Python's `math.fsum`): keeps non-overlapping partials
/// whose sum is the exact sum, rounded once at the end.
fn exact_sum(xs: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    for &x0 in xs {
        let mut x = x0;
        let mut kept = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        partials.truncate(kept);
        partials.push(x);
    }
    partials.iter().rev().sum()
}

/// Finite floats biased towards the edges where totals overflow.
fn edge_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![f64::MAX, -f64::MAX, 1e308, -1e308, 8.9e307, -8.9e307]),
        any_finite(),
        dyadic(),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Whatever is recorded and merged, in any order: each step either keeps a state
    /// that [`State::validate`] accepts (and that survives its encoding), or is refused
    /// and changes nothing. So no stored or forwarded state is ever NaN or infinite.
    #[test]
    fn records_and_merges_never_make_an_invalid_state(
        kind in prop::sample::select(vec![Kind::Sum, Kind::Avg, Kind::Max, Kind::Min, Kind::Latest, Kind::ExpHistogram]),
        steps in prop::collection::vec((any::<bool>(), prop::collection::vec(edge_float(), 1..4)), 1..12),
    ) {
        let params = StateParams::default();
        let mut s = State::empty(kind, &params);
        for (merge, xs) in steps {
            let before = s.clone();
            let result = if merge {
                let mut other = State::empty(kind, &params);
                for x in &xs {
                    // A refused record leaves `other` as it was: checked just below.
                    let _ = other.record(SampleValue::Number(*x), 0, "b");
                }
                prop_assert!(other.validate().is_ok(), "{other:?}");
                s.merge(&other).map_err(|e| e.to_string())
            } else {
                s.record(SampleValue::Number(xs[0]), 0, "a").map_err(|e| e.to_string())
            };
            match result {
                Ok(()) => {
                    prop_assert!(s.validate().is_ok(), "{s:?}");
                    prop_assert_eq!(State::decode(&s.to_bytes()).unwrap(), s.clone());
                }
                Err(e) => {
                    prop_assert!(e.contains("overflow"), "{}", e);
                    prop_assert_eq!(&s, &before);
                }
            }
        }
    }
}
