//! The evaluator against strata's native query on the same data: every
//! supported construct gives exactly the native answer's number.

use std::sync::Arc;

use serde_json::Value as Json;
use strata_model::{Increment, Kind, SampleValue, SeriesKey, State, StateParams, Step};
use strata_store::{Commit, MemoryStore, Store, StoreOptions};

use super::eval::Engine;
use super::guard;
use super::value::{EvalError, Val, Value};
use crate::api::query::{self, QueryLimits};
use crate::core::retention::Retention;
use crate::core::sources::Watermarks;

const M: i64 = 60_000;
/// Evaluation time: the end of minute 10.
const T: i64 = 10 * M;

fn key(metric: &str, labels: &[(&str, &str)]) -> Arc<SeriesKey> {
    Arc::new(
        SeriesKey::new(
            metric,
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap(),
    )
}

fn state(kind: Kind, values: &[f64], ts: i64) -> State {
    let mut s = State::empty(kind, &StateParams::default());
    for v in values {
        let sample = if kind == Kind::Percent {
            SampleValue::Flag(*v > 0.0)
        } else {
            SampleValue::Number(*v)
        };
        s.record(sample, ts, "t").unwrap();
    }
    s
}

/// Ten minutes of a counter, histograms, a latest gauge and a percent in
/// two regions and two services.
fn store() -> MemoryStore {
    let store = MemoryStore::new(StoreOptions::default());
    let mut incs = Vec::new();
    let mut add =
        |metric: &str, labels: &[(&str, &str)], kind: Kind, minute: i64, values: Vec<f64>| {
            incs.push(Increment {
                series: key(metric, labels),
                bucket_ms: minute * M,
                state: state(kind, &values, minute * M + 30_000),
            });
        };
    for minute in 0..10 {
        for (r, region) in ["r0", "r1"].into_iter().enumerate() {
            for (s, service) in ["checkout", "search"].into_iter().enumerate() {
                let labels = [("region", region), ("service", service)];
                let n = (minute + 1) * (r as i64 + 2) + s as i64;
                add("req", &labels, Kind::Counter, minute, vec![n as f64]);
                let lat: Vec<f64> = (0..n)
                    .map(|i| (10 + i * 7 + r as i64 * 50) as f64)
                    .collect();
                add("lat", &labels, Kind::Histogram, minute, lat.clone());
                add("elat", &labels, Kind::ExpHistogram, minute, lat);
                add(
                    "ok",
                    &labels,
                    Kind::Percent,
                    minute,
                    vec![1.0, 0.0, (minute % 2) as f64],
                );
            }
            add(
                "temp",
                &[("region", region)],
                Kind::Latest,
                minute,
                vec![20.0 + minute as f64 + r as f64],
            );
        }
    }
    store
        .commit(Commit {
            increments: &incs,
            progress: &[],
            cursors: &[],
            spool_watermark_ms: None,
            now_ms: 0,
        })
        .unwrap();
    store
}

fn eval(store: &MemoryStore, q: &str, t: i64) -> Result<Value, EvalError> {
    let expr = guard::parse(q)?;
    Engine::new(store, QueryLimits::NONE, t, t).eval(&expr, t)
}

/// `(labels, number)` of a vector answer, sorted by labels.
fn numbers(store: &MemoryStore, q: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let Value::Vector(v) = eval(store, q, T).unwrap_or_else(|e| panic!("{q}: {e}")) else {
        panic!("{q}: not a vector");
    };
    let mut out: Vec<(Vec<(String, String)>, f64)> = v
        .into_iter()
        .map(|s| (s.labels.into_iter().collect(), s.val.number().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The native query's `field` per group over minutes `from..T`.
fn native(
    store: &MemoryStore,
    selector: &str,
    group_by: &[&str],
    from: i64,
    field: &str,
) -> Vec<f64> {
    let data = query::execute(
        store,
        &Watermarks {
            own_ms: T,
            sources: vec![],
        },
        &Retention::forever(),
        &query::Query {
            selector: selector.into(),
            from_ms: from,
            to_ms: T,
            step: Step::All,
            group_by: Some(group_by.iter().map(|s| s.to_string()).collect()),
        },
    )
    .unwrap();
    data["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["points"][0]["value"][field].as_f64().unwrap())
        .collect()
}

fn values(v: Vec<(Vec<(String, String)>, f64)>) -> Vec<f64> {
    v.into_iter().map(|(_, x)| x).collect()
}

#[test]
fn scalars_and_literals() {
    let s = store();
    assert!(matches!(eval(&s, "1+1", T), Ok(Value::Scalar(v)) if v == 2.0));
    assert!(matches!(eval(&s, "2^10 - 24 / 2", T), Ok(Value::Scalar(v)) if v == 1012.0));
    assert!(matches!(eval(&s, "\"x\"", T), Ok(Value::Str(v)) if v == "x"));
    assert!(matches!(eval(&s, "time()", T), Ok(Value::Scalar(v)) if v == 600.0));
}

#[test]
fn increase_and_rate_merge_the_minutes_of_the_range() {
    let s = store();
    let native_counts = native(&s, "req", &["region", "service"], T - 5 * M, "count");
    assert_eq!(values(numbers(&s, "increase(req[5m])")), native_counts);
    let rates: Vec<f64> = native_counts.iter().map(|c| c / 300.0).collect();
    assert_eq!(values(numbers(&s, "rate(req[5m])")), rates);
    let by_service = native(&s, "req", &["service"], T - 5 * M, "count");
    assert_eq!(
        values(numbers(&s, "sum by (service) (increase(req[5m]))")),
        by_service
    );
    assert_eq!(
        values(numbers(&s, "sum without (region) (increase(req[5m]))")),
        by_service
    );
    // A bare counter is its last minute; not minute-aligned, the minute filling.
    assert_eq!(
        values(numbers(&s, "sum(req)")),
        native(&s, "req", &[], T - M, "count")
    );
    let Value::Vector(v) = eval(&s, "sum(increase(req[1m]))", T - 30_000).unwrap() else {
        panic!()
    };
    assert_eq!(
        v[0].val.number().unwrap(),
        native(&s, "req", &[], T - M, "count")[0]
    );
}

#[test]
fn histogram_quantiles_are_those_of_the_merged_state() {
    let s = store();
    for (metric, field, phi) in [
        ("lat", "p99", 0.99),
        ("lat", "p50", 0.5),
        ("elat", "p99", 0.99),
    ] {
        let q = format!("histogram_quantile({phi}, sum by (service) (rate({metric}[5m])))");
        assert_eq!(
            values(numbers(&s, &q)),
            native(&s, metric, &["service"], T - 5 * M, field),
            "{q}"
        );
        let q = format!("histogram_quantile({phi}, sum(increase({metric}[10m])))");
        assert_eq!(
            values(numbers(&s, &q)),
            native(&s, metric, &[], 0, field),
            "{q}"
        );
    }
    let counts = native(&s, "elat", &[], T - 5 * M, "count");
    assert_eq!(
        values(numbers(&s, "histogram_count(sum(increase(elat[5m])))")),
        counts
    );
    assert_eq!(values(numbers(&s, "sum(increase(elat_count[5m]))")), counts);
    let sums = native(&s, "elat", &[], T - 5 * M, "sum");
    assert_eq!(
        values(numbers(&s, "histogram_sum(sum(increase(elat[5m])))")),
        sums
    );
    let means = native(&s, "elat", &[], T - 5 * M, "mean");
    assert_eq!(
        values(numbers(&s, "histogram_avg(sum(increase(elat[5m])))")),
        means
    );
    assert_eq!(
        values(numbers(
            &s,
            "histogram_count(rate(elat{service=\"search\",region=\"r0\"}[5m]))"
        ))
        .len(),
        1
    );
}

#[test]
fn kinds_read_as_their_value_and_aggregate_by_merging() {
    let s = store();
    // percent: sum and avg merge (the ratio of everything), never average ratios.
    let merged = native(&s, "ok", &[], T - M, "percent");
    assert_eq!(values(numbers(&s, "sum(ok)")), merged);
    assert_eq!(values(numbers(&s, "avg(ok)")), merged);
    assert_eq!(
        values(numbers(&s, "sum(ok_matched)")),
        native(&s, "ok", &[], T - M, "matched")
    );
    // latest: the newest value in the lookback, numbers aggregate as numbers.
    assert_eq!(values(numbers(&s, "temp")), vec![29.0, 30.0]);
    assert_eq!(values(numbers(&s, "sum(temp)")), vec![59.0]);
    assert_eq!(values(numbers(&s, "max(temp)")), vec![30.0]);
    assert_eq!(values(numbers(&s, "avg(temp)")), vec![29.5]);
    assert_eq!(values(numbers(&s, "count(req)")), vec![4.0]);
    // Selectors: all four matchers and __name__.
    assert_eq!(
        numbers(&s, "req{region!=\"r0\",service=~\"che.*\"}").len(),
        1
    );
    assert_eq!(
        numbers(&s, "{__name__=\"req\",service!~\"che.*\"}").len(),
        2
    );
    assert_eq!(numbers(&s, "{__name__=~\"te.*\"}").len(), 2);
}

#[test]
fn operators_topk_label_replace_and_absent() {
    let s = store();
    let inc = values(numbers(&s, "increase(req[5m])"));
    assert_eq!(
        values(numbers(&s, "increase(req[5m]) * 2")),
        inc.iter().map(|x| x * 2.0).collect::<Vec<_>>()
    );
    assert_eq!(
        values(numbers(&s, "100 - increase(req[5m])")),
        inc.iter().map(|x| 100.0 - x).collect::<Vec<_>>()
    );
    let top = numbers(&s, "topk(1, increase(req[5m]))");
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].1, inc.iter().cloned().fold(f64::MIN, f64::max));
    let bottom = numbers(&s, "bottomk(1, increase(req[5m]))");
    assert_eq!(bottom[0].1, inc.iter().cloned().fold(f64::MAX, f64::min));
    assert_eq!(
        numbers(&s, "increase(req[5m]) > 40").len(),
        inc.iter().filter(|x| **x > 40.0).count()
    );
    assert_eq!(
        values(numbers(&s, "increase(req[5m]) > bool 40"))
            .iter()
            .sum::<f64>(),
        inc.iter().filter(|x| **x > 40.0).count() as f64
    );
    let ratio = numbers(
        &s,
        "sum by (service) (increase(req[5m])) / on (service) sum by (service) (increase(req[10m]))",
    );
    let (five, ten) = (
        native(&s, "req", &["service"], T - 5 * M, "count"),
        native(&s, "req", &["service"], 0, "count"),
    );
    assert_eq!(values(ratio), vec![five[0] / ten[0], five[1] / ten[1]]);
    let renamed = numbers(
        &s,
        "label_replace(sum by (region) (req), \"cloud\", \"c-$1\", \"region\", \"r(.*)\")",
    );
    assert_eq!(
        renamed[0].0,
        vec![
            ("cloud".into(), "c-0".into()),
            ("region".into(), "r0".into())
        ]
    );
    assert_eq!(numbers(&s, "absent(req)").len(), 0);
    assert_eq!(
        numbers(&s, "absent(nope{job=\"x\"})"),
        vec![(vec![("job".into(), "x".into())], 1.0)]
    );
}

#[test]
fn unsupported_constructs_are_named_never_a_wrong_number() {
    let s = store();
    for (q, says) in [
        ("stddev(req)", "stddev"),
        ("quantile(0.5, req)", "quantile"),
        ("rate(temp[5m])", "latest"),
        ("max(lat)", "histogram"),
        ("lat * 2", "histogram"),
        ("deriv(req[5m])", "not supported"),
        ("sum_over_time(req[5m])", "not supported"),
        ("rate(req[5m:1m])", "subqueries"),
        ("req and req", "set operator"),
        ("req * on (service) group_left req", "group_left"),
        ("histogram_quantile(0.9, req)", "histograms"),
        ("req + ignoring (region) req", "one-to-one"),
    ] {
        match eval(&s, q, T) {
            Err(EvalError::Execution(e)) => assert!(e.contains(says), "{q}: {e}"),
            other => panic!("{q}: {other:?}"),
        }
    }
    assert!(matches!(eval(&s, "sum(", T), Err(EvalError::BadData(_))));
    assert!(matches!(
        eval(&s, "x[1e300]", T),
        Err(EvalError::BadData(_))
    ));
}

#[test]
fn limits_bound_what_a_query_reads() {
    let s = store();
    let expr = guard::parse("req").unwrap();
    let tight = QueryLimits {
        max_series: 3,
        max_points: 1_000,
    };
    let err = Engine::new(&s, tight, T, T).eval(&expr, T).unwrap_err();
    assert!(err.to_string().contains("max_query_series"), "{err}");
    let tight = QueryLimits {
        max_series: 100,
        max_points: 10,
    };
    let err = Engine::new(&s, tight, T, T)
        .eval(&guard::parse("increase(req[10m])").unwrap(), T)
        .unwrap_err();
    assert!(err.to_string().contains("max_query_points"), "{err}");
}

#[test]
fn histograms_are_answered_in_prometheus_native_form() {
    let s = store();
    let Value::Vector(v) = eval(&s, "sum(increase(elat[5m]))", T).unwrap() else {
        panic!()
    };
    assert!(matches!(v[0].val, Val::State { .. }));
    let j: Json = super::value::point_json(T, &v[0].val).unwrap();
    let count = native(&s, "elat", &[], T - 5 * M, "count")[0];
    assert_eq!(j[1]["count"], Json::String(format!("{count}")));
    let total: f64 = j[1]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[3].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, count);
}
