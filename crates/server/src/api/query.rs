//! Range queries over merged state (DESIGN §6, §8).
//!
//! A query selects the series of one metric with a PromQL vector selector,
//! reads their minute buckets, merges them per output group (`group_by`) and
//! per step, and only then derives values: a p99 over 15 minutes and three
//! clouds is computed from one merged histogram, never from other p99s.
//!
//! A query is bounded ([`QueryLimits`], `limits.max_query_series` and
//! `limits.max_query_points`): the series a selector matches are counted
//! before any bucket is read, and merging stops at the point limit, so a
//! query that would exceed either is answered 422 naming the limit before it
//! holds its result.

use std::collections::BTreeMap;

use promql_parser::label::Matcher;
use promql_parser::parser::{self, Expr};
use serde_json::{Map, Value, json};
use strata_model::{MINUTE_MS, State, Step};
use strata_store::{Resolution, Store};

use crate::context::now_ms;
use crate::core::retention::Retention;

use crate::core::sources::Watermarks;
use crate::status::{Class, Classify};

/// A query that cannot be answered as asked (400 / `INVALID_ARGUMENT`,
/// [`crate::status`]).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct QueryError(pub String);

impl Classify for QueryError {
    fn class(&self) -> Class {
        Class::Invalid
    }
}

/// How much one query may select and answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryLimits {
    /// Most series the selector may match (`limits.max_query_series`).
    pub max_series: usize,
    /// Most points the answer may hold, all series together (`limits.max_query_points`).
    pub max_points: usize,
}

impl QueryLimits {
    /// No bound: what alarm rules, which the operator wrote, evaluate with.
    pub const NONE: QueryLimits = QueryLimits {
        max_series: usize::MAX,
        max_points: usize::MAX,
    };
}

/// Why a bounded query ([`execute_limited`]) was not answered.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QueryFailed {
    /// Not answerable as asked (400).
    #[error("{0}")]
    Invalid(#[from] QueryError),
    /// Over `limits.max_query_series` or `limits.max_query_points` (422); the
    /// message names the limit.
    #[error("{0}")]
    OverLimit(String),
    /// The store could not be read (500): the node's fault, not the query's.
    #[error("store: {0}")]
    Store(String),
}

impl Classify for QueryFailed {
    fn class(&self) -> Class {
        match self {
            QueryFailed::Invalid(e) => e.class(),
            QueryFailed::OverLimit(_) => Class::OverLimit,
            QueryFailed::Store(_) => Class::Internal,
        }
    }
}

/// A parsed vector selector.
#[derive(Debug)]
pub struct Selector {
    pub metric: String,
    /// Label matchers other than the metric name.
    pub matchers: Vec<Matcher>,
}

/// Parses `metric{label="value",...}` (`=`, `!=`, `=~`, `!~`).
pub fn parse_selector(q: &str) -> Result<Selector, QueryError> {
    check_selector_shape(q)?;
    let expr = parser::parse(q).map_err(|e| QueryError(format!("bad selector {q:?}: {e}")))?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(QueryError(format!(
            "{q:?} is not a vector selector: only metric{{label=\"value\"}} is supported"
        )));
    };
    if vs.offset.is_some() || vs.at.is_some() {
        return Err(QueryError(
            "offset and @ modifiers are not supported; use from and to".into(),
        ));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(QueryError("`or` in selectors is not supported".into()));
    }
    let mut metric = vs.name.clone();
    let mut matchers = Vec::new();
    for m in vs.matchers.matchers {
        if m.name == "__name__" {
            match (&m.op, &metric) {
                (promql_parser::label::MatchOp::Equal, None) => metric = Some(m.value.clone()),
                _ => {
                    return Err(QueryError(
                        "__name__ may only be matched once with =".into(),
                    ));
                }
            }
        } else {
            matchers.push(m);
        }
    }
    let metric = metric.ok_or_else(|| QueryError("the selector must name a metric".into()))?;
    Ok(Selector { metric, matchers })
}

/// Refuses, before the PromQL parser reads it, what is not shaped as
/// `metric{...}`: outside the braces only one name, before them, and white
/// space; inside them no comment. Ranges, subqueries and modifiers, which a
/// selector refuses anyway, carry durations the parser panics on when out of
/// range (`x[1e300]`, `x offset 1e30`).
fn check_selector_shape(q: &str) -> Result<(), QueryError> {
    let not_a_selector = || {
        QueryError(format!(
            "{q:?} is not a vector selector: only metric{{label=\"value\"}} is supported"
        ))
    };
    let modifier =
        || QueryError("offset and @ modifiers are not supported; use from and to".into());
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // Where the scan is: before the name, after it, in the braces, after them.
    let (mut named, mut braces, mut closed) = (false, false, false);
    let mut quote: Option<char> = None;
    let mut chars = q.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if let Some(open) = quote {
            if c == '\\' && open != '`' {
                chars.next();
            } else if c == open {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' if braces => quote = Some(c),
            '#' if braces => return Err(not_a_selector()),
            '}' if braces => (braces, closed) = (false, true),
            _ if braces => {}
            c if c.is_whitespace() => {}
            '{' if !closed => braces = true,
            c if (c.is_ascii_alphabetic() || c == '_' || c == ':') && !named && !closed => {
                named = true;
                while chars.next_if(|&(_, c)| is_name(c)).is_some() {}
            }
            '@' => return Err(modifier()),
            c if is_name(c) => {
                let word: String = q[at..].chars().take_while(|&c| is_name(c)).collect();
                let offset = word.eq_ignore_ascii_case("offset");
                return Err(if offset { modifier() } else { not_a_selector() });
            }
            _ => return Err(not_a_selector()),
        }
    }
    Ok(())
}

/// Parses a time: epoch milliseconds, `now`, or `-<n><s|m|h|d>` relative to
/// now. Refuses a time outside years 1 to 9999
/// ([`strata_model::time::MIN_TS_MS`]`..=`[`strata_model::time::MAX_TS_MS`]),
/// so that rounding it out to whole buckets cannot overflow.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, QueryError> {
    use strata_model::time::{MAX_TS_MS, MIN_TS_MS, in_range};
    let bad = || {
        QueryError(format!(
            "bad time {s:?}: use epoch milliseconds, now, or -15m / -2h / -1d / -30s"
        ))
    };
    let out_of_range = || {
        QueryError(format!(
            "time {s:?} is outside the accepted range {MIN_TS_MS}..={MAX_TS_MS} ms (years 1 to 9999)"
        ))
    };
    let ms = if s == "now" {
        Some(now_ms)
    } else if let Ok(ms) = s.parse::<i64>() {
        Some(ms)
    } else if s.parse::<i128>().is_ok() {
        None // an integer, beyond even i64
    } else {
        let rel = s.strip_prefix('-').ok_or_else(bad)?;
        // The unit is the last character, which may be multi-byte in bad input.
        let unit = rel.chars().next_back().ok_or_else(bad)?;
        let num = &rel[..rel.len() - unit.len_utf8()];
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let unit_ms: i64 = match unit {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(bad()),
        };
        num.parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_ms))
            .and_then(|offset| now_ms.checked_sub(offset))
    };
    ms.filter(|&ms| in_range(ms)).ok_or_else(out_of_range)
}

/// [`parse_time`] of a request parameter; the error names the parameter.
pub fn parse_time_param(param: &str, value: &str, now_ms: i64) -> Result<i64, QueryError> {
    parse_time(value, now_ms).map_err(|e| QueryError(format!("parameter {param}: {}", e.0)))
}

/// A query as the API receives it.
#[derive(Debug, Clone)]
pub struct Query {
    pub selector: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub step: Step,
    /// `None`: one result per series; `Some([])`: everything merged; `Some(labels)`: per distinct values.
    pub group_by: Option<Vec<String>>,
}

const MAX_RANGE_MS: i64 = 400 * 86_400_000;

/// Answers a query with the JSON `data` object of DESIGN §8, without bounds
/// ([`execute_limited`] is what the API runs).
pub fn execute(
    store: &dyn Store,
    watermarks: &Watermarks,
    retention: &Retention,
    q: &Query,
) -> Result<Value, QueryError> {
    execute_limited(store, watermarks, retention, q, QueryLimits::NONE).map_err(|e| match e {
        QueryFailed::Invalid(e) => e,
        other => QueryError(other.to_string()),
    })
}

/// Answers a query with the JSON `data` object of DESIGN §8, refusing one
/// over `limits` before it holds its result.
pub fn execute_limited(
    store: &dyn Store,
    watermarks: &Watermarks,
    retention: &Retention,
    q: &Query,
    limits: QueryLimits,
) -> Result<Value, QueryFailed> {
    let sel = parse_selector(&q.selector)?;
    for (name, ms) in [("from", q.from_ms), ("to", q.to_ms)] {
        if !strata_model::time::in_range(ms) {
            return Err(QueryError(format!(
                "{name} ({ms}) is outside the accepted range {}..={} ms (years 1 to 9999)",
                strata_model::time::MIN_TS_MS,
                strata_model::time::MAX_TS_MS
            ))
            .into());
        }
    }
    if q.to_ms <= q.from_ms {
        return Err(QueryError(format!(
            "from ({}) must be before to ({})",
            q.from_ms, q.to_ms
        ))
        .into());
    }
    if q.to_ms - q.from_ms > MAX_RANGE_MS {
        return Err(QueryError("the range is longer than 400 days".into()).into());
    }
    let resolution = resolution_for(q, retention, now_ms());
    // Whole buckets: from rounds down, to rounds up (the current one is included).
    let from = resolution.bucket_start(q.from_ms);
    let to = resolution.bucket_start(q.to_ms - 1) + resolution.width_ms();
    let kind = store.metric_kind(&sel.metric);
    let groups = merged_groups_limited(
        store,
        &sel,
        q.group_by.as_deref(),
        Span {
            resolution,
            step: q.step,
            from,
            to,
        },
        limits,
    )?;
    let series: Vec<Value> = groups
        .into_iter()
        .map(|(labels, points)| {
            let labels: Map<String, Value> = labels
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let points: Vec<Value> = points
                .into_iter()
                .map(|(at, state)| {
                    let end = match q.step {
                        Step::All => to,
                        Step::Minute => at + MINUTE_MS,
                        step => step.bucket_start(at) + step_len(step),
                    }
                    .min(to);
                    let minutes = ((end - at) / MINUTE_MS).max(1) as u64;
                    let c = watermarks.completeness(end);
                    json!({
                        "ts_ms": at,
                        "complete": c.complete,
                        "sources": c.sources,
                        "expected_sources": c.expected_sources,
                        "value": values_json(&state, minutes),
                    })
                })
                .collect();
            json!({ "labels": labels, "points": points })
        })
        .collect();
    Ok(json!({
        "metric": sel.metric,
        "kind": kind.map(|k| k.as_str()),
        "step": q.step.as_str(),
        "from_ms": from,
        "to_ms": to,
        "series": series,
    }))
}

/// Merged states per output group, then per point start.
pub type Groups = BTreeMap<Vec<(String, String)>, BTreeMap<i64, State>>;

/// Reads the buckets at `resolution` in `from..to` of every series matching
/// `sel` and merges them per output group and per `step` point: the states
/// a query (and an alarm rule) derives values from.
///
/// `group_by`: `None`, one group per series (its labels); `Some([])`, one
/// group for everything; `Some(names)`, one per distinct values of those
/// labels (a series without one of them has it left out of its key). Points
/// start at `step` boundaries (not before `from`); `Step::All` has a single
/// point at `from`. Groups without a bucket in range are absent.
pub fn merged_groups(
    store: &dyn Store,
    sel: &Selector,
    group_by: Option<&[String]>,
    resolution: Resolution,
    step: Step,
    from: i64,
    to: i64,
) -> Result<Groups, QueryError> {
    let span = Span {
        resolution,
        step,
        from,
        to,
    };
    merged_groups_limited(store, sel, group_by, span, QueryLimits::NONE).map_err(|e| match e {
        QueryFailed::Invalid(e) => e,
        other => QueryError(other.to_string()),
    })
}

/// What a query reads: the stored resolution, the step of its points and
/// the whole buckets of its range.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub resolution: Resolution,
    pub step: Step,
    pub from: i64,
    pub to: i64,
}

/// [`merged_groups`] within `limits`: the matching series are counted before
/// any bucket is read, and merging stops at the point limit.
pub fn merged_groups_limited(
    store: &dyn Store,
    sel: &Selector,
    group_by: Option<&[String]>,
    span: Span,
    limits: QueryLimits,
) -> Result<Groups, QueryFailed> {
    let Span {
        resolution,
        step,
        from,
        to,
    } = span;
    // Like Prometheus's points-per-series bound: a range of more steps than
    // the whole answer may hold is refused before a bucket is read.
    if step != Step::All {
        let len = step_len(step);
        let steps = (to - from).saturating_add(len - 1) / len;
        if usize::try_from(steps).unwrap_or(usize::MAX) > limits.max_points {
            return Err(QueryFailed::OverLimit(format!(
                "the range holds up to {steps} points per series, over limits.max_query_points ({}): shorten the range or use a coarser step",
                limits.max_points
            )));
        }
    }
    let mut selected = store.series_of(&sel.metric);
    selected.retain(|series| {
        sel.matchers
            .iter()
            .all(|m| m.is_match(series.label(&m.name).unwrap_or("")))
    });
    if selected.len() > limits.max_series {
        return Err(QueryFailed::OverLimit(format!(
            "the selector matches {} series, over limits.max_query_series ({}): narrow it with label matchers",
            selected.len(),
            limits.max_series
        )));
    }
    let mut groups = Groups::new();
    let mut points_held = 0usize;
    for series in selected {
        let key: Vec<(String, String)> = match group_by {
            None => series.label_pairs(),
            Some(names) => names
                .iter()
                .filter_map(|n| series.label(n).map(|v| (n.clone(), v.to_string())))
                .collect(),
        };
        let buckets = store
            .read_at(&series, resolution, from, to)
            .map_err(|e| QueryFailed::Store(e.to_string()))?;
        if buckets.is_empty() {
            continue;
        }
        let points = groups.entry(key).or_default();
        let before = points.len();
        for (bucket_ms, state) in buckets {
            let at = match step {
                Step::All => from,
                step => step.bucket_start(bucket_ms).max(from),
            };
            match points.get_mut(&at) {
                Some(acc) => acc.merge(&state).map_err(|e| {
                    QueryError(format!("cannot merge {series} into its group: {e}"))
                })?,
                None => {
                    points.insert(at, state);
                }
            }
        }
        points_held += points.len() - before;
        if points_held > limits.max_points {
            return Err(QueryFailed::OverLimit(format!(
                "the answer would hold more than {} points, over limits.max_query_points: shorten the range, use a coarser step or group_by",
                limits.max_points
            )));
        }
    }
    Ok(groups)
}

/// The stored resolution a query reads: its step's own, and for `all` the
/// finest one whose retention still covers the start of the range.
fn resolution_for(q: &Query, retention: &Retention, now_ms: i64) -> Resolution {
    match q.step {
        Step::Minute => Resolution::Minute,
        Step::Hour => Resolution::Hour,
        Step::Day => Resolution::Day,
        Step::All if q.from_ms >= now_ms.saturating_sub(retention.minute_ms) => Resolution::Minute,
        Step::All if q.from_ms >= now_ms.saturating_sub(retention.hour_ms) => Resolution::Hour,
        Step::All => Resolution::Day,
    }
}

fn step_len(step: Step) -> i64 {
    match step {
        Step::Minute => MINUTE_MS,
        Step::Hour => 60 * MINUTE_MS,
        Step::Day => 1440 * MINUTE_MS,
        Step::All => i64::MAX,
    }
}

/// Derived values; whole numbers print as integers, undefined ones as null.
pub fn values_json(state: &State, minutes: u64) -> Value {
    let mut out = Map::new();
    for (name, v) in state.values(minutes) {
        let value = if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
            Value::from(v as i64)
        } else {
            Value::from(v)
        };
        out.insert(name.to_string(), value);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use strata_model::{Increment, SampleValue, SeriesKey, StateParams};
    use strata_store::{Commit, MemoryStore, StoreOptions};

    fn series(cloud: &str, service: &str) -> Arc<SeriesKey> {
        Arc::new(
            SeriesKey::new(
                "lat",
                [
                    ("cloud".to_string(), cloud.to_string()),
                    ("service".to_string(), service.to_string()),
                ],
            )
            .unwrap(),
        )
    }

    fn hist(values: &[f64]) -> State {
        let mut s = State::empty(strata_model::Kind::Histogram, &StateParams::default());
        for v in values {
            s.record(SampleValue::Number(*v), 0, "t").unwrap();
        }
        s
    }

    fn store_with_data() -> MemoryStore {
        let store = MemoryStore::new(StoreOptions::default());
        let incs = vec![
            Increment {
                series: series("aws", "checkout"),
                bucket_ms: 0,
                state: hist(&[1.0, 2.0]),
            },
            Increment {
                series: series("aws", "checkout"),
                bucket_ms: 60_000,
                state: hist(&[3.0]),
            },
            Increment {
                series: series("gcp", "checkout"),
                bucket_ms: 0,
                state: hist(&[100.0]),
            },
            Increment {
                series: series("gcp", "search"),
                bucket_ms: 0,
                state: hist(&[7.0]),
            },
        ];
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

    fn run(q: &str, step: Step, group_by: Option<Vec<&str>>) -> Value {
        let store = store_with_data();
        let wm = Watermarks {
            own_ms: 60_000,
            sources: vec![],
        };
        execute(
            &store,
            &wm,
            &Retention::forever(),
            &Query {
                selector: q.into(),
                from_ms: 0,
                to_ms: 120_000,
                step,
                group_by: group_by.map(|g| g.into_iter().map(String::from).collect()),
            },
        )
        .unwrap()
    }

    #[test]
    fn one_result_per_series_without_group_by() {
        let v = run("lat", Step::Minute, None);
        assert_eq!(v["series"].as_array().unwrap().len(), 3);
        assert_eq!(v["kind"], "histogram");
        let aws = &v["series"][0];
        assert_eq!(aws["labels"]["cloud"], "aws");
        assert_eq!(aws["points"].as_array().unwrap().len(), 2);
        assert_eq!(aws["points"][0]["value"]["count"], 2);
        assert_eq!(aws["points"][0]["complete"], true);
        assert_eq!(aws["points"][1]["complete"], false);
    }

    #[test]
    fn group_by_merges_histograms_before_percentiles() {
        let v = run("lat{service=\"checkout\"}", Step::All, Some(vec![]));
        let s = v["series"].as_array().unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0]["labels"], json!({}));
        let value = &s[0]["points"][0]["value"];
        assert_eq!(value["count"], 4);
        let max = value["max"].as_f64().unwrap();
        assert!((max - 100.0).abs() <= 1.0, "{max}");
        let v = run("lat", Step::Minute, Some(vec!["service"]));
        let s = v["series"].as_array().unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0]["labels"]["service"], "checkout");
        assert_eq!(s[0]["points"][0]["value"]["count"], 3);
        assert_eq!(s[1]["points"][0]["value"]["count"], 1);
    }

    #[test]
    fn matchers_filter_series() {
        assert_eq!(
            run("lat{cloud!=\"aws\"}", Step::All, None)["series"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            run("lat{service=~\"check.*\"}", Step::All, None)["series"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            run("lat{service!~\"check.*\"}", Step::All, None)["series"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            run("lat{region=\"\"}", Step::All, None)["series"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            run("{__name__=\"lat\"}", Step::All, None)["series"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            run("nothing", Step::All, None)["series"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn step_all_reads_the_finest_resolution_still_kept() {
        let r = Retention {
            minute_ms: 1_000,
            hour_ms: 10_000,
            day_ms: 100_000,
            ..Retention::forever()
        };
        let q = |from_ms, step| Query {
            selector: "x".into(),
            from_ms,
            to_ms: 50_000,
            step,
            group_by: None,
        };
        assert_eq!(
            resolution_for(&q(49_500, Step::All), &r, 50_000),
            Resolution::Minute
        );
        assert_eq!(
            resolution_for(&q(45_000, Step::All), &r, 50_000),
            Resolution::Hour
        );
        assert_eq!(
            resolution_for(&q(0, Step::All), &r, 50_000),
            Resolution::Day
        );
        assert_eq!(
            resolution_for(&q(0, Step::Minute), &r, 50_000),
            Resolution::Minute
        );
        assert_eq!(
            resolution_for(&q(49_999, Step::Day), &r, 50_000),
            Resolution::Day
        );
    }

    #[test]
    fn hour_steps_read_hour_rollups() {
        let v = run("lat", Step::Hour, Some(vec!["cloud"]));
        let s = v["series"].as_array().unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0]["points"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(s[0]["points"][0]["ts_ms"], 0);
        assert_eq!(s[0]["points"][0]["value"]["count"], 3);
    }

    #[test]
    fn durations_the_promql_parser_panics_on_are_refused_before_it() {
        for q in [
            "5./144[00039723134440001293337]s",
            "x[1e300]",
            "x[Inf]",
            "x[5m:1e30]",
            "x offset 1e30",
            "x OFFSET -Inf",
            "{a=\"}\"} offset 99999999999999999999",
            "x{a=\"b\" # \"\n}[1e300]",
            "x @ 1e300",
        ] {
            let err = parse_selector(q).unwrap_err().0;
            assert!(
                err.contains("not a vector selector") || err.contains("offset and @"),
                "{q:?}: {err}"
            );
        }
        assert!(
            parse_selector("x offset 5m")
                .unwrap_err()
                .0
                .contains("offset and @")
        );
        // Selectors keep parsing: names with colons and digits, braces with any
        // quoted content, white space, a metric named like a keyword.
        for (q, metric, matchers) in [
            ("job:req_5m", "job:req_5m", 0),
            (" lat { a = \"}[1e300]\" , b!~'x\\'y' } ", "lat", 2),
            ("{__name__=\"lat\",c=`[`}", "lat", 1),
            ("offset{a=\"b\"}", "offset", 1),
        ] {
            let sel = parse_selector(q).unwrap_or_else(|e| panic!("{q:?}: {e}"));
            assert_eq!(
                (sel.metric.as_str(), sel.matchers.len()),
                (metric, matchers),
                "{q:?}"
            );
        }
    }

    #[test]
    fn bad_selectors_and_times_are_named() {
        assert!(
            parse_selector("rate(x[5m])")
                .unwrap_err()
                .0
                .contains("vector selector")
        );
        assert!(parse_selector("{a=\"b\"}").is_err());
        assert!(parse_selector("x offset 5m").is_err());
        assert_eq!(parse_time("-15m", 1_000_000).unwrap(), 100_000);
        assert_eq!(parse_time("now", 5).unwrap(), 5);
        assert_eq!(parse_time("1234", 5).unwrap(), 1234);
        assert!(parse_time("-15x", 5).is_err());
        assert!(parse_time("yesterday", 5).is_err());
    }

    #[test]
    fn multi_byte_and_malformed_relative_times_are_errors_not_panics() {
        for s in [
            "-1é", "-1€", "-é", "-", "", "-€1m", "-1m€", "--5m", "-+5m", "-5 m", "- 5m", "-1.5h",
        ] {
            let err = parse_time(s, 1_000_000).unwrap_err().0;
            assert!(err.contains("bad time"), "{s:?}: {err}");
        }
        let err = parse_time_param("since", "-1é", 0).unwrap_err().0;
        assert!(
            err.starts_with("parameter since: bad time \"-1é\""),
            "{err}"
        );
    }

    #[test]
    fn times_beyond_year_9999_or_before_year_1_are_refused() {
        use strata_model::time::{MAX_TS_MS, MIN_TS_MS};
        let now = 1_763_800_000_000;
        for s in [
            "9223372036854775807",
            "-9223372036854775808",
            "99999999999999999999999",
            "253402300800000",
            "-62135596800001",
            "-9223372036854775807d",
            "-99999999999999999999d",
            "-106752000d",
        ] {
            let err = parse_time(s, now).unwrap_err().0;
            assert!(err.contains("outside the accepted range"), "{s}: {err}");
        }
        assert_eq!(parse_time(&MAX_TS_MS.to_string(), now), Ok(MAX_TS_MS));
        assert_eq!(parse_time(&MIN_TS_MS.to_string(), now), Ok(MIN_TS_MS));
        assert_eq!(parse_time("-1000d", now), Ok(now - 1000 * 86_400_000));
        let err = parse_time_param("to", "9223372036854775807", now)
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("parameter to: time \"9223372036854775807\" is outside"),
            "{err}"
        );
    }

    #[test]
    fn execute_refuses_times_outside_the_accepted_range() {
        let store = strata_store::MemoryStore::new(strata_store::StoreOptions::default());
        let watermarks = Watermarks {
            own_ms: 0,
            sources: vec![],
        };
        let q = Query {
            selector: "x".into(),
            from_ms: 0,
            to_ms: i64::MAX,
            step: Step::Minute,
            group_by: None,
        };
        let err = execute(&store, &watermarks, &Retention::forever(), &q)
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("to (9223372036854775807) is outside"),
            "{err}"
        );
    }
}
