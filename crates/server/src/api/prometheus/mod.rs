//! A Prometheus-compatible HTTP API under `/prometheus` (docs/PROMQL.md), so
//! that Grafana's Prometheus data source, `promtool` and other Prometheus
//! clients read merged state: `http://host:port/prometheus` is the data
//! source URL.
//!
//! - [`guard`]: parses expressions, refusing what the parser would panic on;
//! - [`select`]: selectors over the store, suffixed component names;
//! - [`eval`]: the evaluator over minute buckets;
//! - [`ops`]: aggregations, operators, histogram and label functions;
//! - [`value`]: values and their JSON form;
//! - [`params`]: request parameters (times, durations, `match[]`).
//!
//! Every query answer carries strata's completeness: evaluation times whose
//! minute not every source has reported yet are named in `warnings`, and
//! left out with `complete_only=true`.

mod eval;
mod guard;
mod ops;
mod params;
mod select;
mod value;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value as Json, json};
use strata_model::MINUTE_MS;
use strata_store::Store;

use self::eval::Engine;
use self::params::Params;
use self::value::{EvalError, Labels, RangeSeries, Sample, Val, Value, float_str, labels_json};
use crate::ApiState;
use crate::api::query::QueryLimits;
use crate::api::request_id;
use crate::context::now_ms;
use crate::core::sources::Watermarks;

/// Most evaluation steps of one range query, as in Prometheus.
const MAX_STEPS: i64 = 11_000;

/// The routes under `/prometheus`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/prometheus/api/v1/query", get(query).post(query))
        .route(
            "/prometheus/api/v1/query_range",
            get(query_range).post(query_range),
        )
        .route("/prometheus/api/v1/series", get(series).post(series))
        .route("/prometheus/api/v1/labels", get(labels).post(labels))
        .route("/prometheus/api/v1/label/{name}/values", get(label_values))
        .route("/prometheus/api/v1/metadata", get(metadata))
        .route("/prometheus/api/v1/status/buildinfo", get(buildinfo))
        .route(
            "/prometheus/api/v1/format_query",
            get(format_query).post(format_query),
        )
}

/// A Prometheus error answer.
fn error_answer(e: &EvalError) -> Response {
    let status = match e {
        EvalError::BadData(_) => StatusCode::BAD_REQUEST,
        EvalError::Execution(_) => StatusCode::UNPROCESSABLE_ENTITY,
        EvalError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = json!({"status": "error", "errorType": e.error_type(), "error": e.to_string()});
    (status, axum::Json(body)).into_response()
}

/// The answer to a query: its data and warnings, or its error.
fn reply(result: Result<(Json, Vec<String>), EvalError>) -> Response {
    match result {
        Ok((data, warnings)) => success(data, warnings),
        Err(e) => error_answer(&e),
    }
}

/// A Prometheus success answer, with `warnings` when there are any.
fn success(data: Json, warnings: Vec<String>) -> Response {
    let mut body = json!({"status": "success", "data": data});
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    axum::Json(body).into_response()
}

/// Runs `work` on the blocking pool with the node's store and limits.
async fn blocking<T: Send + 'static>(
    node: &ApiState,
    work: impl FnOnce(&dyn Store, QueryLimits, Watermarks) -> Result<T, EvalError> + Send + 'static,
) -> Result<T, EvalError> {
    let store = node.ctx.store.clone();
    let watermarks = node.pipeline.watermarks();
    let limits = QueryLimits {
        max_series: node.ingestor.limits.max_query_series,
        max_points: node.ingestor.limits.max_query_points,
    };
    request_id::spawn_blocking(move || work(&*store, limits, watermarks))
        .await
        .map_err(|e| EvalError::Internal(format!("the query failed: {e}")))?
}

/// Whether the minute an evaluation at `t` reads up to is complete.
fn complete_at(watermarks: &Watermarks, t: i64) -> bool {
    let end = t.div_euclid(MINUTE_MS) * MINUTE_MS + if t % MINUTE_MS == 0 { 0 } else { MINUTE_MS };
    watermarks.completeness(end).complete
}

/// The warning naming the incomplete evaluation times.
fn incomplete_warning(incomplete: &[i64], total: usize, left_out: bool) -> Option<String> {
    let first = incomplete.first()?;
    let what = if left_out { "left out" } else { "included" };
    Some(format!(
        "strata: {} of {total} evaluation times (from {}) read minutes not every source has reported yet; {what} (complete_only=true leaves them out)",
        incomplete.len(),
        value::float_str(*first as f64 / 1000.0)
    ))
}

async fn query(
    State(node): State<Arc<ApiState>>,
    raw: RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _timer = node.ctx.stats.latency.query.start_timer();
    let run = async {
        let p = Params::new(raw.0.as_deref(), &headers, &body)?;
        let q = p.required("query")?.to_string();
        let t = match p.get("time") {
            Some(s) => params::parse_time("time", s)?,
            None => now_ms(),
        };
        let complete_only = p.flag("complete_only")?;
        let expr = guard::parse(&q)?;
        blocking(&node, move |store, limits, watermarks| {
            let complete = complete_at(&watermarks, t);
            let incomplete: &[i64] = if complete { &[] } else { &[t] };
            let warnings: Vec<String> = incomplete_warning(incomplete, 1, complete_only)
                .into_iter()
                .collect();
            if complete_only && !complete {
                return Ok((json!({"resultType": "vector", "result": []}), warnings));
            }
            Ok((evaluate_instant(store, limits, &expr, t)?, warnings))
        })
        .await
    };
    reply(run.await)
}

pub use self::value::EvalError as PromqlError;

/// The `data` of an instant query of `q` at `t` over `store`, as
/// `/prometheus/api/v1/query` answers it (completeness aside): what the
/// fuzz target drives.
pub fn instant_data(
    store: &dyn Store,
    q: &str,
    t: i64,
    limits: QueryLimits,
) -> Result<Json, EvalError> {
    evaluate_instant(store, limits, &guard::parse(q)?, t)
}

/// The `data` of `expr` evaluated at `t`.
fn evaluate_instant(
    store: &dyn Store,
    limits: QueryLimits,
    expr: &promql_parser::parser::Expr,
    t: i64,
) -> Result<Json, EvalError> {
    let value = Engine::new(store, limits, t, t).eval(expr, t)?;
    instant_json(t, value)
}

/// An instant query's `data`.
fn instant_json(t: i64, value: Value) -> Result<Json, EvalError> {
    Ok(match value {
        Value::Scalar(v) => {
            json!({"resultType": "scalar", "result": [value::time_json(t), float_str(v)]})
        }
        Value::Str(s) => json!({"resultType": "string", "result": [value::time_json(t), s]}),
        Value::Vector(v) => {
            let result = v
                .iter()
                .map(|s| sample_json(t, s))
                .collect::<Result<Vec<_>, _>>()?;
            json!({"resultType": "vector", "result": result})
        }
        Value::Matrix(m) => json!({"resultType": "matrix", "result": matrix_json(&m)?}),
    })
}

fn sample_json(t: i64, s: &Sample) -> Result<Json, EvalError> {
    let key = if value::point_key(&s.val) {
        "histogram"
    } else {
        "value"
    };
    Ok(json!({"metric": labels_json(&s.labels), key: value::point_json(t, &s.val)?}))
}

/// Range-vector series: floats under `values`, histograms under `histograms`.
fn matrix_json(m: &[RangeSeries]) -> Result<Vec<Json>, EvalError> {
    m.iter()
        .map(|series| {
            let mut out = json!({"metric": labels_json(&series.labels)});
            let (mut floats, mut hists) = (Vec::new(), Vec::new());
            for (t, val) in &series.points {
                let point = value::point_json(*t, val)?;
                if value::point_key(val) {
                    hists.push(point);
                } else {
                    floats.push(point);
                }
            }
            if !floats.is_empty() {
                out["values"] = json!(floats);
            }
            if !hists.is_empty() {
                out["histograms"] = json!(hists);
            }
            Ok(out)
        })
        .collect()
}

/// A range query's parameters.
struct Range {
    start: i64,
    end: i64,
    step: i64,
    complete_only: bool,
}

fn range_params(p: &Params) -> Result<Range, EvalError> {
    let start = params::parse_time("start", p.required("start")?)?;
    let end = params::parse_time("end", p.required("end")?)?;
    let step = params::parse_step(p.required("step")?)?;
    if end < start {
        return Err(EvalError::BadData(
            "end timestamp must not be before start time".into(),
        ));
    }
    if (end - start) / step >= MAX_STEPS {
        return Err(EvalError::BadData(format!(
            "exceeded maximum resolution of {MAX_STEPS} points per timeseries. Try decreasing the query resolution (?step=XX)"
        )));
    }
    Ok(Range {
        start,
        end,
        step,
        complete_only: p.flag("complete_only")?,
    })
}

async fn query_range(
    State(node): State<Arc<ApiState>>,
    raw: RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _timer = node.ctx.stats.latency.query.start_timer();
    let run = async {
        let p = Params::new(raw.0.as_deref(), &headers, &body)?;
        let q = p.required("query")?.to_string();
        let r = range_params(&p)?;
        let expr = guard::parse(&q)?;
        blocking(&node, move |store, limits, watermarks| {
            evaluate_range(store, limits, &watermarks, &expr, &r)
        })
        .await
    };
    reply(run.await)
}

/// Evaluates `expr` at every step of `r` into a matrix.
fn evaluate_range(
    store: &dyn Store,
    limits: QueryLimits,
    watermarks: &Watermarks,
    expr: &promql_parser::parser::Expr,
    r: &Range,
) -> Result<(Json, Vec<String>), EvalError> {
    let mut engine = Engine::new(store, limits, r.start, r.end);
    let mut series: BTreeMap<Labels, Vec<(i64, Val)>> = BTreeMap::new();
    let (mut incomplete, mut steps, mut points) = (Vec::new(), 0usize, 0usize);
    let mut t = r.start;
    while t <= r.end {
        steps += 1;
        let complete = complete_at(watermarks, t);
        if !complete {
            incomplete.push(t);
        }
        if complete || !r.complete_only {
            let at_t = match engine.eval(expr, t)? {
                Value::Scalar(v) => vec![Sample {
                    labels: Labels::new(),
                    val: Val::Float(v),
                }],
                Value::Vector(v) => v,
                other => {
                    return Err(EvalError::BadData(format!(
                        "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                        other.type_name()
                    )));
                }
            };
            points += at_t.len();
            if points > limits.max_points {
                return Err(EvalError::Execution(format!(
                    "the answer would hold more than {} points, over limits.max_query_points: shorten the range or use a longer step",
                    limits.max_points
                )));
            }
            for s in at_t {
                series.entry(s.labels).or_default().push((t, s.val));
            }
        }
        t += r.step;
    }
    let matrix: Vec<RangeSeries> = series
        .into_iter()
        .map(|(labels, points)| RangeSeries { labels, points })
        .collect();
    let warnings = incomplete_warning(&incomplete, steps, r.complete_only)
        .into_iter()
        .collect();
    Ok((
        json!({"resultType": "matrix", "result": matrix_json(&matrix)?}),
        warnings,
    ))
}

/// The label sets the `match[]` selectors select (all series without any).
fn matched_series(
    store: &dyn Store,
    p: &Params,
    limits: QueryLimits,
    required: bool,
) -> Result<BTreeSet<Labels>, EvalError> {
    let matches = p.all("match[]");
    if matches.is_empty() {
        if required {
            return Err(EvalError::BadData("no match[] parameter provided".into()));
        }
        let mut all = BTreeSet::new();
        for m in store.metrics() {
            for key in store.series_of(&m.name) {
                let mut labels: Labels = key.label_pairs().into_iter().collect();
                labels.insert(value::NAME.into(), m.name.clone());
                all.insert(labels);
            }
        }
        return Ok(all);
    }
    let mut out = BTreeSet::new();
    for m in matches {
        let promql_parser::parser::Expr::VectorSelector(vs) = guard::parse(m)? else {
            return Err(EvalError::BadData(format!(
                "match[] {m:?} is not a series selector"
            )));
        };
        out.extend(
            select::select(store, &vs, limits)?
                .into_iter()
                .map(|s| s.labels),
        );
    }
    Ok(out)
}

/// `limit` (0 or absent: none): truncates `items` and says so in a warning.
fn limited<T>(p: &Params, mut items: Vec<T>) -> Result<(Vec<T>, Vec<String>), EvalError> {
    let limit = p.limit()?;
    let mut warnings = Vec::new();
    if limit > 0 && items.len() > limit {
        items.truncate(limit);
        warnings.push(format!("results truncated due to limit ({limit})"));
    }
    Ok((items, warnings))
}

/// Answers a listing (series, label names, label values): `work` over the
/// request's parameters, truncated to `limit`.
async fn listing<T: serde::Serialize + Send + 'static>(
    node: &ApiState,
    params: Result<Params, EvalError>,
    work: impl FnOnce(&dyn Store, QueryLimits, &Params) -> Result<Vec<T>, EvalError> + Send + 'static,
) -> Response {
    let run = async {
        let p = params?;
        p.check_times()?;
        blocking(node, move |store, limits, _| {
            limited(&p, work(store, limits, &p)?)
        })
        .await
    };
    reply(run.await.map(|(data, warnings)| (json!(data), warnings)))
}

async fn series(
    State(node): State<Arc<ApiState>>,
    raw: RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = Params::new(raw.0.as_deref(), &headers, &body);
    listing(&node, params, |store, limits, p| {
        let all = matched_series(store, p, limits, true)?;
        Ok(all.iter().map(labels_json).collect::<Vec<Json>>())
    })
    .await
}

async fn labels(
    State(node): State<Arc<ApiState>>,
    raw: RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = Params::new(raw.0.as_deref(), &headers, &body);
    listing(&node, params, |store, limits, p| {
        let names: BTreeSet<String> = matched_series(store, p, limits, false)?
            .into_iter()
            .flat_map(|l| l.into_keys())
            .collect();
        Ok(names.into_iter().collect())
    })
    .await
}

async fn label_values(
    State(node): State<Arc<ApiState>>,
    Path(name): Path<String>,
    raw: RawQuery,
    headers: HeaderMap,
) -> Response {
    let params = Params::new(raw.0.as_deref(), &headers, &[]);
    listing(&node, params, move |store, limits, p| {
        let values: BTreeSet<String> = if name == value::NAME && p.all("match[]").is_empty() {
            store.metrics().into_iter().map(|m| m.name).collect()
        } else {
            matched_series(store, p, limits, false)?
                .into_iter()
                .filter_map(|mut l| l.remove(&name))
                .collect()
        };
        Ok(values.into_iter().collect())
    })
    .await
}

/// The Prometheus metric type a strata kind reads as.
fn prometheus_type(kind: strata_model::Kind) -> &'static str {
    use strata_model::Kind::*;
    match kind {
        Counter | Sum => "counter",
        Histogram | ExpHistogram => "histogram",
        Latest | Max | Min | Avg | Percent | Apdex => "gauge",
    }
}

async fn metadata(State(node): State<Arc<ApiState>>, raw: RawQuery) -> Response {
    let run = async {
        let p = Params::new(raw.0.as_deref(), &HeaderMap::new(), &[])?;
        let only = p.get("metric").map(String::from);
        let limit = p.limit()?;
        blocking(&node, move |store, _, _| {
            let mut out = serde_json::Map::new();
            for m in store.metrics() {
                if only.as_ref().is_some_and(|o| *o != m.name) {
                    continue;
                }
                if limit > 0 && out.len() >= limit {
                    break;
                }
                let help = format!("strata {} metric ({} series)", m.kind.as_str(), m.series);
                out.insert(
                    m.name,
                    json!([{"type": prometheus_type(m.kind), "help": help, "unit": ""}]),
                );
            }
            Ok(Json::Object(out))
        })
        .await
    };
    match run.await {
        Ok(data) => success(data, Vec::new()),
        Err(e) => error_answer(&e),
    }
}

async fn buildinfo() -> Response {
    success(
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "revision": "",
            "branch": "",
            "buildUser": "",
            "buildDate": "",
            "goVersion": "",
            "application": "strata",
        }),
        Vec::new(),
    )
}

async fn format_query(raw: RawQuery, headers: HeaderMap, body: Bytes) -> Response {
    let formatted = Params::new(raw.0.as_deref(), &headers, &body)
        .and_then(|p| guard::parse(p.required("query")?))
        .map(|expr| expr.prettify());
    match formatted {
        Ok(s) => success(json!(s), Vec::new()),
        Err(e) => error_answer(&e),
    }
}
