//! Exponential histograms across tiers: two edges ingest `exp_histogram` samples over
//! NDJSON and forward their increments to a global tier, whose merged values are
//! exactly those of every sample recorded into one state — count, sum, min, max and
//! the bucket-derived percentiles alike — although one edge keeps fewer buckets than
//! the other and the global tier merges their increments in whatever order they come.

mod util;

use serde_json::{Value, json};
use strata_model::exp_hist::relative_error;
use strata_model::{Kind, SampleValue, State, StateParams};
use util::*;

const METRIC: &str = "e2e_exp_latency";

/// The bucket bound of edge B, below the default 160 of edge A and the global tier.
const SMALL_BOUND: u32 = 40;

/// Samples of one edge: latencies over several binades, exact zeros and negative
/// values, all multiples of 1/1024 so that every sum of them is exact in any order.
fn values(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let v = match i % 10 {
                0 => 0.0,
                1 => -rng.log_normal(5.0, 1.0),
                _ => rng.log_normal(40.0, 1.2).min(60_000.0),
            };
            (v * 1024.0).round() / 1024.0
        })
        .collect()
}

/// Every sample recorded into one state, as a single node would.
fn recorded(values: &[f64], max_buckets: u32) -> State {
    let params = StateParams {
        exp_histogram_max_buckets: max_buckets,
        ..StateParams::default()
    };
    let mut s = State::empty(Kind::ExpHistogram, &params);
    for &v in values {
        s.record(SampleValue::Number(v), 0, "")
            .unwrap_or_else(|e| panic!("recording {v}: {e}"));
    }
    s
}

/// The query's value object holds exactly `want`'s values, field for field.
fn assert_values(what: &str, got: &Value, want: &State) {
    let fields = want.values(1);
    assert_eq!(
        got.as_object().map(|o| o.len()),
        Some(fields.len()),
        "{what}: {got}"
    );
    for (field, v) in fields {
        assert_eq!(got[field].as_f64(), Some(v), "{what} {field}: {got}");
    }
}

fn ingest(node: &Node, values: &[f64], base: i64) {
    let lines: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            sample(
                METRIC,
                "exp_histogram",
                &[("service", "checkout")],
                base + 1_000 + i as i64 * 7,
                json!(v),
            )
        })
        .collect();
    for chunk in lines.chunks(300) {
        ingest_ok(node, chunk, true);
    }
}

#[test]
fn two_edges_merge_into_the_state_of_every_sample_at_the_global_tier() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(
        NodeConfig::new(dir.path(), "global")
            .downstream("edge-a")
            .downstream("edge-b"),
    );
    let edge_a = Node::start(NodeConfig::new(dir.path(), "edge-a").upstream(&global));
    let edge_b = Node::start(NodeConfig::new(dir.path(), "edge-b").upstream(&global).set(
        "aggregation",
        &format!("exp_histogram_max_buckets = {SMALL_BOUND}"),
    ));

    let base = base_minute_ms();
    let mut rng = Rng::new(0xe8f0_2024);
    let (a, b) = (values(&mut rng, 3000), values(&mut rng, 2200));
    ingest(&edge_a, &a, base);
    ingest(&edge_b, &b, base);
    let all: Vec<f64> = a.iter().chain(&b).copied().collect();

    wait_for("every sample at the global tier", |last| {
        let count = merged_value(&global, METRIC, base).map_or(0.0, |v| f(&v, "count"));
        *last = format!("count {count} of {}", all.len());
        assert!(count <= all.len() as f64, "more samples than sent: {count}");
        (count == all.len() as f64).then_some(())
    });

    // Each edge holds its own samples at its own bound.
    let edge_value = merged_value(&edge_a, METRIC, base).expect("edge-a data");
    assert_values("edge-a", &edge_value, &recorded(&a, 160));
    let edge_value = merged_value(&edge_b, METRIC, base).expect("edge-b data");
    assert_values("edge-b", &edge_value, &recorded(&b, SMALL_BOUND));

    // The global tier: the smaller bound of the two, as if one node had seen it all.
    let expected = recorded(&all, SMALL_BOUND);
    let got = merged_value(&global, METRIC, base).expect("global data");
    assert_values("global", &got, &expected);
    assert_eq!(f(&got, "count"), 5200.0, "{got}");
    assert_eq!(f(&got, "sum"), all.iter().sum::<f64>(), "{got}");
    assert!(f(&got, "p50") < f(&got, "p99"), "{got}");

    // The percentiles are within the bound of the scale the merged state kept.
    let State::ExpHistogram(h) = &expected else {
        panic!("not an exponential histogram: {expected:?}");
    };
    let mut sorted = all.clone();
    sorted.sort_by(f64::total_cmp);
    for (field, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let exact = exact_quantile(&sorted, q);
        let bound = relative_error(h.scale()) * exact.abs() * (1.0 + 1e-9);
        assert!(
            (f(&got, field) - exact).abs() <= bound,
            "{field}: {got} vs exact {exact} at scale {}",
            h.scale()
        );
    }
    // Downscaled on overflow: the samples span more than 40 buckets at the finest scale.
    assert!(h.scale() < 20, "{h:?}");
    assert!(h.positive().counts().len() <= SMALL_BOUND as usize, "{h:?}");

    // The query names the kind.
    let (from, to) = range_of(base);
    let data = query(
        &global,
        &[("q", METRIC), ("from", &from), ("to", &to), ("step", "all")],
    );
    assert_eq!(data["kind"], "exp_histogram", "{data}");
}
