//! The query API's parameters, and a query executed over a small store; a
//! PromQL expression evaluated by the Prometheus-compatible API over the same
//! store.

use std::sync::{Arc, OnceLock};

use promql_parser::label::{MatchOp, Matcher};
use strata_model::time::in_range;
use strata_model::{Increment, Kind, SampleValue, SeriesKey, State, StateParams, Step};
use strata_store::{Commit, MemoryStore, Store, StoreOptions};

use crate::api::query::{Query, execute, parse_selector, parse_time, parse_time_param};
use crate::core::retention::Retention;
use crate::core::sources::Watermarks;

/// The clock the relative times are read against.
const NOW_MS: i64 = 1_763_800_000_000;

/// Reads `input` as the lines `q`, `from`, `to`, `step` and `group_by` of a query
/// request and checks: times parse only into the accepted range and round-trip as
/// epoch milliseconds; a step parses only from its own name; a selector that parses
/// prints back to one that parses the same; and the query runs to an answer or a
/// clear error over a store holding a few series.
pub fn query(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let mut fields = text.splitn(5, '\n');
    let mut next = || fields.next().unwrap_or_default();
    let (q, from, to, step, group_by) = (next(), next(), next(), next(), next());
    let from_ms = check_time("from", from);
    let to_ms = check_time("to", to);
    let step = match step.parse::<Step>() {
        Ok(parsed) => {
            assert_eq!(parsed.as_str(), step);
            parsed
        }
        Err(_) => Step::Minute,
    };
    check_selector(q);
    let group_by = (!group_by.is_empty()).then(|| {
        group_by
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    });
    let query = Query {
        selector: q.to_string(),
        from_ms: from_ms.unwrap_or(NOW_MS - 15 * 60_000),
        to_ms: to_ms.unwrap_or(NOW_MS),
        step,
        group_by,
    };
    check_execute(&query);
}

/// Reads `input` as a PromQL expression (first line) and an evaluation time
/// offset in minutes (second line) and evaluates it over the same store: an
/// answer in Prometheus' JSON form or a clear error, never a panic, within
/// small limits.
pub fn promql(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let mut lines = text.splitn(2, '\n');
    let q = lines.next().unwrap_or_default();
    let minutes: i64 = lines
        .next()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(0);
    let t = NOW_MS + minutes.clamp(-30, 30) * 60_000;
    let limits = crate::api::query::QueryLimits {
        max_series: 50,
        max_points: 10_000,
    };
    match crate::api::prometheus::instant_data(store(), q, t, limits) {
        Ok(data) => {
            let kind = data["resultType"].as_str().unwrap_or_default();
            assert!(
                ["scalar", "string", "vector", "matrix"].contains(&kind),
                "{q:?}: {data}"
            );
        }
        Err(e) => assert!(
            !e.to_string().is_empty(),
            "{q:?}: an error without a message"
        ),
    }
}

/// A time parses into the accepted range, and back from its epoch milliseconds.
fn check_time(param: &str, value: &str) -> Option<i64> {
    match parse_time_param(param, value, NOW_MS) {
        Ok(ms) => {
            assert!(
                in_range(ms),
                "{param}={value:?} parsed to {ms}, out of range"
            );
            assert_eq!(parse_time(&ms.to_string(), 0), Ok(ms), "{ms} as text");
            Some(ms)
        }
        Err(e) => {
            let prefix = format!("parameter {param}: ");
            assert!(e.0.starts_with(&prefix), "{e}");
            None
        }
    }
}

/// A selector that parses prints back (metric as a `__name__` matcher) to one that
/// parses the same.
fn check_selector(q: &str) {
    let Ok(sel) = parse_selector(q) else {
        return;
    };
    let mut parts = vec![Matcher::new(MatchOp::Equal, "__name__", &sel.metric).to_string()];
    parts.extend(sel.matchers.iter().map(|m| m.to_string()));
    let printed = format!("{{{}}}", parts.join(","));
    let again = parse_selector(&printed)
        .unwrap_or_else(|e| panic!("{q:?} printed as {printed:?} does not parse: {e}"));
    assert_eq!(again.metric, sel.metric, "{q:?} printed as {printed:?}");
    assert_eq!(again.matchers, sel.matchers, "{q:?} printed as {printed:?}");
}

/// Runs the query: an answer whose points lie in the range asked, or an error.
fn check_execute(query: &Query) {
    let watermarks = Watermarks {
        own_ms: NOW_MS,
        sources: Vec::new(),
    };
    let Ok(data) = execute(store(), &watermarks, &Retention::forever(), query) else {
        return;
    };
    let (from, to) = (data["from_ms"].as_i64(), data["to_ms"].as_i64());
    let (Some(from), Some(to)) = (from, to) else {
        panic!("answer without its range: {data}");
    };
    assert!(from <= query.from_ms && query.to_ms <= to, "{data}");
    let series = data["series"].as_array().cloned().unwrap_or_default();
    for s in &series {
        for p in s["points"].as_array().into_iter().flatten() {
            let at = p["ts_ms"].as_i64().unwrap_or(i64::MIN);
            assert!(
                (from..to).contains(&at),
                "point at {at} outside {from}..{to}"
            );
        }
    }
}

/// A store holding two metrics over three clouds, in the minutes around [`NOW_MS`].
fn store() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let store = MemoryStore::new(StoreOptions::default());
        let params = StateParams::default();
        let mut increments = Vec::new();
        for (i, cloud) in ["aws", "gcp", "azure"].into_iter().enumerate() {
            for (metric, kind) in [("lat", Kind::Histogram), ("req", Kind::Counter)] {
                let labels = [("cloud", cloud), ("service", "checkout")];
                let key = SeriesKey::new(metric, labels.map(|(k, v)| (k.into(), v.into())));
                let Ok(key) = key else { continue };
                let series = Arc::new(key);
                for minute in 0..20 {
                    let mut state = State::empty(kind, &params);
                    let value = SampleValue::Number((i + minute) as f64);
                    if state.record(value, 0, cloud).is_err() {
                        continue;
                    }
                    increments.push(Increment {
                        series: series.clone(),
                        bucket_ms: strata_model::minute_start(NOW_MS) - minute as i64 * 60_000,
                        state,
                    });
                }
            }
        }
        let commit = Commit {
            increments: &increments,
            progress: &[],
            cursors: &[],
            spool_watermark_ms: None,
            now_ms: NOW_MS,
        };
        if let Err(e) = store.commit(commit) {
            panic!("the query store does not take its data: {e}");
        }
        store
    })
}
