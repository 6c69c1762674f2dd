//! HTTP API (DESIGN §8): NDJSON ingest, queries, sources, alarms, events,
//! health, /metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query as QueryParams, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use strata_model::Step;

use crate::Node;
use crate::forwarder::ForwarderHealth;
use crate::ingest::{IngestError, parse_ndjson};
use crate::pipeline::now_ms;
use crate::query::{self, QueryError};
use crate::stats::{Gauge, render_prometheus};

pub fn router(node: Arc<Node>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/api/v1/ingest", post(ingest))
        .route("/api/v1/query", get(query))
        .route("/api/v1/metrics", get(metrics_list))
        .route("/api/v1/sources", get(sources))
        .route("/api/v1/events", get(events))
        .route("/api/v1/alarms", get(alarms))
        .route("/api/v1/quarantine", delete(clear_quarantine))
        .route("/health", get(health))
        .route("/health/{component}", get(health_component))
        .route("/metrics", get(prometheus))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(node)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"status": "error", "error": message.into()})),
    )
        .into_response()
}

fn retry_after(status: StatusCode, message: &str) -> Response {
    let mut r = (
        status,
        axum::Json(json!({"status": "error", "error": message})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn ingest(
    State(node): State<Arc<Node>>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            node.ingestor.count_rejected();
            return error(rejection.status(), rejection.body_text());
        }
    };
    let wait_commit = match params.get("wait").map(String::as_str) {
        None => false,
        Some("commit") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("wait={other:?}: only wait=commit is known"),
            );
        }
    };
    let ingestor = &node.ingestor;
    let prepared = parse_ndjson(&body).and_then(|samples| ingestor.prepare(samples));
    let items = match prepared {
        Ok(items) => items,
        Err(e) => {
            ingestor.count_rejected();
            return ingest_error(e);
        }
    };
    match ingestor.submit(items, wait_commit).await {
        Ok(n) => (StatusCode::OK, axum::Json(json!({"accepted": n}))).into_response(),
        Err(e) => ingest_error(e),
    }
}

fn ingest_error(e: IngestError) -> Response {
    match &e {
        IngestError::Invalid { message, line } => {
            let mut body = json!({"status": "error", "error": e.to_string()});
            if let Some(line) = line {
                body["line"] = json!(line);
                body["reason"] = json!(message);
            }
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        }
        IngestError::Busy => retry_after(StatusCode::TOO_MANY_REQUESTS, &e.to_string()),
        IngestError::Stopping => retry_after(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        IngestError::CommitFailed(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn query(
    State(node): State<Arc<Node>>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let parsed = (|| -> Result<query::Query, QueryError> {
        let now = now_ms();
        let selector = params
            .get("q")
            .ok_or_else(|| QueryError("missing parameter q".into()))?
            .clone();
        let time = |param: &str, default: &str| {
            let value = params.get(param).map_or(default, String::as_str);
            query::parse_time_param(param, value, now)
        };
        let from_ms = time("from", "-15m")?;
        let to_ms = time("to", "now")?;
        let step: Step = params
            .get("step")
            .map_or(Ok(Step::Minute), |s| s.parse())
            .map_err(|e: strata_model::ModelError| QueryError(e.to_string()))?;
        let group_by = params.get("group_by").map(|g| {
            g.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        });
        Ok(query::Query {
            selector,
            from_ms,
            to_ms,
            step,
            group_by,
        })
    })();
    let q = match parsed {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.0),
    };
    let store = node.pipeline.store.clone();
    let watermarks = node.pipeline.watermarks();
    let retention = node.pipeline.settings().retention;
    let result =
        tokio::task::spawn_blocking(move || query::execute(&*store, &watermarks, &retention, &q))
            .await;
    match result {
        Ok(Ok(data)) => axum::Json(json!({"status": "success", "data": data})).into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.0),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query failed: {e}"),
        ),
    }
}

async fn metrics_list(State(node): State<Arc<Node>>) -> Response {
    let store = node.pipeline.store.clone();
    let metrics = tokio::task::spawn_blocking(move || store.metrics())
        .await
        .unwrap_or_default();
    let data: Vec<Value> = metrics
        .into_iter()
        .map(|m| json!({"name": m.name, "kind": m.kind.as_str(), "series": m.series}))
        .collect();
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

async fn sources(State(node): State<Arc<Node>>) -> Response {
    let now = now_ms();
    let data: Vec<Value> = node
        .pipeline
        .sources
        .all()
        .into_iter()
        .map(|s| {
            let watermark = s.watermark_ms.load(Ordering::Relaxed);
            json!({
                "id": s.id,
                "connected": s.is_connected(),
                "epoch_fingerprint": (s.epoch() != 0).then(|| crate::sources::epoch_fingerprint(s.epoch())),
                "committed_seq": s.committed(),
                "last_seen_ms": s.last_seen_ms.load(Ordering::Relaxed),
                "watermark_ms": watermark,
                "lag_ms": if watermark > 0 { Some(now - watermark) } else { None },
                "batches": s.batches.load(Ordering::Relaxed),
                "increments": s.increments.load(Ordering::Relaxed),
                "duplicates": s.duplicates.load(Ordering::Relaxed),
            })
        })
        .collect();
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

/// `GET /api/v1/events?since=-1h&limit=100`: the event log, newest first.
async fn events(
    State(node): State<Arc<Node>>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let since = params.get("since").map_or("-1d", String::as_str);
    let since = match query::parse_time_param("since", since, now_ms()) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.0),
    };
    let limit = match limit_param(&params) {
        Ok(n) => n,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let store = node.pipeline.store.clone();
    match tokio::task::spawn_blocking(move || store.events(since, limit)).await {
        Ok(Ok(list)) => {
            let data: Vec<Value> = list
                .into_iter()
                .map(|e| json!({"ts_ms": e.ts_ms, "kind": e.kind, "message": e.message}))
                .collect();
            axum::Json(json!({"status": "success", "data": data})).into_response()
        }
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading events: {e}"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading events: {e}"),
        ),
    }
}

/// `?limit=`: 1 to 10 000, default 100.
fn limit_param(params: &HashMap<String, String>) -> Result<usize, &'static str> {
    match params.get("limit").map(|l| l.parse::<usize>()) {
        None => Ok(100),
        Some(Ok(n)) if (1..=10_000).contains(&n) => Ok(n),
        Some(_) => Err("limit must be a number from 1 to 10000"),
    }
}

/// `GET /api/v1/alarms?limit=100`: firing alarm instances and the alarm
/// history, newest first.
async fn alarms(
    State(node): State<Arc<Node>>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let limit = match limit_param(&params) {
        Ok(n) => n,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let alarms = node.alarms.clone();
    match tokio::task::spawn_blocking(move || alarms.api_data(limit)).await {
        Ok(Ok(data)) => axum::Json(json!({"status": "success", "data": data})).into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading alarms: {e}"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading alarms: {e}"),
        ),
    }
}

/// `DELETE /api/v1/quarantine`: deletes the unreadable stored states the
/// store moved aside (after an operator looked at them), which clears the
/// `quarantine` health check.
async fn clear_quarantine(State(node): State<Arc<Node>>) -> Response {
    let store = node.pipeline.store.clone();
    let cleared = tokio::task::spawn_blocking(move || store.clear_quarantine())
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match cleared {
        Ok(deleted) => {
            axum::Json(json!({"status": "success", "data": {"deleted": deleted}})).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("clearing the quarantine: {e}"),
        ),
    }
}

/// Status of one component, worst of its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Health {
    Ok,
    Deactivated,
    Degraded,
    Ko,
}

impl Health {
    fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "OK",
            Health::Deactivated => "Deactivated",
            Health::Degraded => "Degraded",
            Health::Ko => "KO",
        }
    }
}

struct Check {
    name: &'static str,
    status: Health,
    detail: String,
    duration_us: u128,
}

fn components(node: &Node) -> Vec<(&'static str, Vec<Check>)> {
    let mut out = Vec::new();
    let timed = |name: &'static str, f: &dyn Fn() -> (Health, String)| {
        let start = Instant::now();
        let (status, detail) = f();
        Check {
            name,
            status,
            detail,
            duration_us: start.elapsed().as_micros(),
        }
    };
    let p = &node.pipeline;
    out.push((
        "aggregator",
        vec![timed("queue_depth", &|| {
            let c = p.carrier_stats();
            let status = if c.depth * 10 > c.capacity * 8 {
                Health::Degraded
            } else {
                Health::Ok
            };
            (
                status,
                format!(
                    "{} of {} queued, {} producer waits, {} dropped",
                    c.depth, c.capacity, c.waits, c.dropped
                ),
            )
        })],
    ));
    let flush_ms = p.settings().flush_interval.as_millis() as i64;
    out.push((
        "store",
        vec![
            timed("last_commit", &|| {
                let own = p.watermarks().own_ms;
                let age = now_ms() - own;
                if own == 0 {
                    (Health::Degraded, "no commit yet".into())
                } else if age > 10 * flush_ms.max(1000) {
                    (Health::Ko, format!("last commit {age} ms ago"))
                } else {
                    (Health::Ok, format!("last commit {age} ms ago"))
                }
            }),
            timed("errors", &|| {
                let n = p.stats.store_errors_total.load(Ordering::Relaxed);
                if p.has_failed() {
                    (Health::Ko, format!("{n} failed commits; a flush was lost and committing stopped: restart the node"))
                } else if n > 0 {
                    (Health::Degraded, format!("{n} failed commit attempts"))
                } else {
                    (Health::Ok, "no failed commits".into())
                }
            }),
            timed("quarantine", &|| match p.store.quarantined() {
                0 => (Health::Ok, "no unreadable stored states".into()),
                n => (
                    Health::Degraded,
                    format!(
                        "{n} unreadable stored states moved to quarantine; their buckets started afresh (see events of type state_quarantined)"
                    ),
                ),
            }),
        ],
    ));
    out.push((
        "forwarder",
        vec![timed("upstream", &|| match &node.forwarder {
            None => (Health::Deactivated, "no [upstream] configured".into()),
            Some(f) => {
                let spooled = p.store.spool_stats().batches;
                let (status, detail) = f.lock().check(spooled, Instant::now());
                let status = match status {
                    ForwarderHealth::Ok => Health::Ok,
                    ForwarderHealth::Degraded => Health::Degraded,
                    ForwarderHealth::Ko => Health::Ko,
                };
                (status, detail)
            }
        })],
    ));
    out.push((
        "federation_receiver",
        vec![timed("sources", &|| {
            let expected = p.sources.expected();
            if expected.is_empty() {
                return (Health::Deactivated, "no [[downstream]] declared".into());
            }
            let missing: Vec<_> = expected
                .iter()
                .filter(|s| !s.is_connected())
                .map(|s| s.id.clone())
                .collect();
            if missing.is_empty() {
                (Health::Ok, format!("{} sources connected", expected.len()))
            } else {
                (
                    Health::Degraded,
                    format!("not connected: {}", missing.join(", ")),
                )
            }
        })],
    ));
    let alarm_health = |(status, detail): (crate::alarms::AlarmHealth, String)| {
        let status = match status {
            crate::alarms::AlarmHealth::Ok => Health::Ok,
            crate::alarms::AlarmHealth::Deactivated => Health::Deactivated,
            crate::alarms::AlarmHealth::Degraded => Health::Degraded,
        };
        (status, detail)
    };
    out.push((
        "alarms",
        vec![
            timed("rules", &|| alarm_health(node.alarms.rules_check())),
            timed("notifications", &|| {
                alarm_health(node.alarms.notifications_check())
            }),
        ],
    ));
    out
}

fn worst(checks: &[Check]) -> Health {
    checks.iter().map(|c| c.status).max().unwrap_or(Health::Ok)
}

async fn health(State(node): State<Arc<Node>>) -> Response {
    let comps = components(&node);
    let overall = comps
        .iter()
        .map(|(_, c)| worst(c))
        .filter(|h| *h != Health::Deactivated)
        .max()
        .unwrap_or(Health::Ok);
    let map: serde_json::Map<String, Value> = comps
        .iter()
        .map(|(name, c)| (name.to_string(), json!(worst(c).as_str())))
        .collect();
    let code = if overall == Health::Ko {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        axum::Json(json!({"status": overall.as_str(), "node": node.id, "components": map})),
    )
        .into_response()
}

async fn health_component(
    State(node): State<Arc<Node>>,
    Path(component): Path<String>,
) -> Response {
    let comps = components(&node);
    let Some((name, checks)) = comps.iter().find(|(n, _)| *n == component) else {
        let known: Vec<_> = comps.iter().map(|(n, _)| *n).collect();
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "unknown component {component:?}; known: {}",
                known.join(", ")
            ),
        );
    };
    let status = worst(checks).as_str();
    let checks: Vec<Value> = checks
        .iter()
        .map(|c| json!({"name": c.name, "status": c.status.as_str(), "detail": c.detail, "duration_us": c.duration_us as u64}))
        .collect();
    axum::Json(json!({"component": name, "status": status, "checks": checks})).into_response()
}

async fn prometheus(State(node): State<Arc<Node>>) -> Response {
    let c = node.pipeline.carrier_stats();
    let spool = node.pipeline.store.spool_stats();
    let mut gauges: Vec<Gauge> = [
        ("queue_depth", "items queued in a carrier", c.depth),
        ("queue_capacity", "capacity of a carrier", c.capacity),
        ("queue_waits", "producer waits on a full carrier", c.waits),
        (
            "queue_dropped",
            "items dropped by a drop_if_full carrier",
            c.dropped,
        ),
    ]
    .into_iter()
    .map(|(name, help, value)| Gauge {
        name,
        help,
        labels: vec![("carrier", "shard".into())],
        value: value as f64,
    })
    .collect();
    gauges.extend([
        Gauge {
            name: "spool_batches",
            help: "batches waiting for an upstream ack",
            labels: vec![],
            value: spool.batches as f64,
        },
        Gauge {
            name: "spool_bytes",
            help: "bytes of spooled batches",
            labels: vec![],
            value: spool.bytes as f64,
        },
        Gauge {
            name: "series",
            help: "series in the store",
            labels: vec![],
            value: node.pipeline.store.series_count() as f64,
        },
    ]);
    let now = now_ms();
    for s in node.pipeline.sources.all() {
        let wm = s.watermark_ms.load(Ordering::Relaxed);
        gauges.push(Gauge {
            name: "source_lag_ms",
            help: "how far a source's watermark is behind now",
            labels: vec![("source", s.id.clone())],
            value: if wm > 0 { (now - wm) as f64 } else { f64::NAN },
        });
    }
    let text = render_prometheus(&node.id, &node.pipeline.stats, &gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_to_100_and_refuses_out_of_range() {
        let params = |v: &str| HashMap::from([("limit".to_string(), v.to_string())]);
        assert_eq!(limit_param(&HashMap::new()), Ok(100));
        assert_eq!(limit_param(&params("7")), Ok(7));
        assert_eq!(limit_param(&params("10000")), Ok(10_000));
        for bad in ["0", "10001", "-1", "many"] {
            assert!(limit_param(&params(bad)).is_err(), "{bad}");
        }
    }
}
