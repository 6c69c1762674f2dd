//! HTTP API (DESIGN §8): NDJSON ingest, queries, sources, alarms, events,
//! health, /metrics.
//!
//! Error answers take their status and `Retry-After` from the error's class
//! ([`crate::status`], through [`crate::api::json`]); only axum's own
//! refusals of a body keep axum's status.
//!
//! Every answer carries its request's `x-request-id`, every JSON error a
//! `request_id` field, and blocking work runs in the request's span
//! ([`crate::api::request_id`], the router's outermost layer). Inside it,
//! [`crate::api::auth`] refuses requests without the token their route
//! needs, before a handler or a body is touched.
//!
//! Ingest bodies are read by [`crate::api::body`] (size and time limits,
//! gzip and zstd); queries run within `limits.max_query_series` and
//! `limits.max_query_points`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Query as QueryParams, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use strata_model::Step;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ApiState;
use crate::api::auth::{HttpAuth, RefusalLog};
use crate::api::json::{answer, error, error_of, refusal};
use crate::api::query::{self, QueryError, QueryLimits};
use crate::api::{body, events, health, metrics, request_id};
use crate::config::HttpConfig;
use crate::context::now_ms;
use crate::core::retention::Retention;
use crate::inputs::samples::{IngestError, parse_ndjson};
use crate::status::{Class, Classify};

/// Binds `http.listen` and serves [`router`] until `stop` is cancelled (then
/// lets in-flight requests finish): over TLS with `tls`, with the connection
/// bound and timeouts of `[http]` ([`crate::net::http`]).
pub async fn serve(
    config: &HttpConfig,
    tls: Option<Arc<crate::net::tls::ServerTls>>,
    node: Arc<ApiState>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let app = router(node, stop.clone());
    serve_app(&config.listen, "http", config, tls, app, stop).await
}

/// Binds `listen` and serves `app` there, with the connection bound and
/// timeouts of `[http]` (the OTLP/HTTP listener shares them); `name` names
/// the listener in logs and figures.
pub async fn serve_app(
    listen: &str,
    name: &'static str,
    config: &HttpConfig,
    tls: Option<Arc<crate::net::tls::ServerTls>>,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let settings = crate::net::ListenerSettings {
        name,
        max_connections: config.max_connections,
        handshake_timeout: std::time::Duration::from_millis(config.handshake_timeout_ms),
        tls,
    };
    let header_read_timeout = std::time::Duration::from_millis(config.header_read_timeout_ms);
    let task = tokio::spawn(crate::net::http::serve(
        listener,
        app,
        settings,
        header_read_timeout,
        stop,
    ));
    Ok((addr, task))
}

/// The routes of `otlp.http_listen`: OTLP/HTTP alone, behind the same
/// authentication and request ids as the API.
pub fn otlp_router(node: Arc<ApiState>) -> Router {
    let routes = Router::new().route(
        crate::inputs::otlp::HTTP_PATH,
        post(crate::inputs::otlp::http_export),
    );
    guarded(routes, node)
}

/// `routes` behind the body limit, authentication and request ids, with
/// the node as their state.
fn guarded(routes: Router<Arc<ApiState>>, node: Arc<ApiState>) -> Router {
    let auth = Arc::new(HttpAuth {
        tokens: node.ingestor.tokens.clone(),
        stats: node.ctx.stats.clone(),
        log: RefusalLog::default(),
    });
    let max_body_bytes = node.ingestor.limits.max_body_bytes;
    routes
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            auth,
            crate::api::auth::http,
        ))
        .with_state(node)
        // Outermost: every answer, the fallback's included, carries its id.
        .layer(axum::middleware::from_fn(request_id::http))
}

/// The API's routes, behind authentication and request ids. `stopping` is
/// cancelled when the node stops accepting: `/ready` then answers 503.
pub fn router(node: Arc<ApiState>, stopping: CancellationToken) -> Router {
    let ready_node = node.clone();
    let routes = Router::new()
        .route("/api/v1/ingest", post(ingest))
        .route(
            crate::inputs::otlp::HTTP_PATH,
            post(crate::inputs::otlp::http_export),
        )
        .route(
            crate::inputs::remote_write::HTTP_PATH,
            post(crate::inputs::remote_write::http_write),
        )
        .route("/api/v1/query", get(query))
        .route("/api/v1/metrics", get(metrics_list))
        .route("/api/v1/sources", get(sources))
        .route("/api/v1/events", get(events::list))
        .route("/api/v1/alarms", get(alarms))
        .route("/api/v1/quarantine", delete(clear_quarantine))
        .route("/health", get(health::health))
        .route("/health/{component}", get(health::health_component))
        .route("/metrics", get(metrics::prometheus))
        .route(
            "/ready",
            get(move || std::future::ready(ready(&ready_node, &stopping))),
        )
        .merge(crate::api::console::routes())
        .merge(crate::api::prometheus::routes());
    guarded(routes, node)
}

/// `GET /ready`: 200 while the node serves, 503 once it stops accepting (or
/// a pipeline thread failed), so that a load balancer stops sending to it.
fn ready(node: &ApiState, stopping: &CancellationToken) -> Response {
    if stopping.is_cancelled() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping");
    }
    if let Some(what) = node.ctx.fatal.get() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the node is failing: {what}"),
        );
    }
    axum::Json(json!({"status": "success", "data": {"ready": true}})).into_response()
}

async fn ingest(
    State(node): State<Arc<ApiState>>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let _timer = node.ctx.stats.latency.ingest_http.start_timer();
    let body = match body::read(body, &headers, &node.ingestor.limits).await {
        Ok(body) => body,
        Err(e) => {
            node.ingestor.count_rejected();
            if matches!(e, body::BodyError::TooLarge { .. }) {
                crate::core::stats::Stats::add(&node.ctx.stats.limit_refusals_total, 1);
            }
            let mut answer = error_of(&e);
            if e.closes_connection() {
                // The rest of the body is never read: do not reuse the connection.
                answer
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return answer;
        }
    };
    // Bounded before parsing: every line becomes a parsed sample. The
    // newlines bound the lines (a quick count); only a body over the limit
    // by that bound has its blank lines told apart.
    let bound = body.iter().filter(|&&b| b == b'\n').count() + 1;
    let lines = if bound <= node.ingestor.limits.max_lines_per_request {
        bound
    } else {
        body.split(|&b| b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty())
            .count()
    };
    if let Err(e) = node.ingestor.check_lines(lines, "lines") {
        node.ingestor.count_rejected();
        return ingest_error(e);
    }
    let wait_commit = match params.get("wait").map(String::as_str) {
        None => false,
        Some("commit") => true,
        Some(other) => {
            return refusal(
                Class::Invalid,
                format!("wait={other:?}: only wait=commit is known"),
            );
        }
    };
    let ingestor = &node.ingestor;
    let validated = parse_ndjson(&body).and_then(|samples| ingestor.validate(samples));
    let items = match validated {
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

/// The answer to a refused ingest request; an invalid line is also named
/// in `line` and `reason` (docs/OPERATIONS.md).
fn ingest_error(e: IngestError) -> Response {
    let mut body = json!({"status": "error", "error": e.to_string()});
    if let IngestError::Invalid {
        message,
        line: Some(line),
    } = &e
    {
        body["line"] = json!(line);
        body["reason"] = json!(message);
    }
    answer(e.class(), body)
}

async fn query(
    State(node): State<Arc<ApiState>>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let _timer = node.ctx.stats.latency.query.start_timer();
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
        Err(e) => return error_of(&e),
    };
    let store = node.ctx.store.clone();
    let watermarks = node.pipeline.watermarks();
    let retention = node.pipeline.settings().retention.clone();
    let limits = QueryLimits {
        max_series: node.ingestor.limits.max_query_series,
        max_points: node.ingestor.limits.max_query_points,
    };
    let result = request_id::spawn_blocking(move || {
        query::execute_limited(&*store, &watermarks, &retention, &q, limits)
    })
    .await;
    match result {
        Ok(Ok(data)) => axum::Json(json!({"status": "success", "data": data})).into_response(),
        Ok(Err(e)) => {
            if matches!(e, query::QueryFailed::OverLimit(_)) {
                crate::core::stats::Stats::add(&node.ctx.stats.limit_refusals_total, 1);
            }
            error_of(&e)
        }
        Err(e) => refusal(Class::Internal, format!("query failed: {e}")),
    }
}

async fn metrics_list(State(node): State<Arc<ApiState>>) -> Response {
    let store = node.ctx.store.clone();
    let metrics = request_id::spawn_blocking(move || store.metrics())
        .await
        .unwrap_or_default();
    let retention = &node.pipeline.settings().retention;
    let data: Vec<Value> = metrics
        .into_iter()
        .map(|m| {
            let mut v = json!({"name": m.name, "kind": m.kind.as_str(), "series": m.series});
            add_expiry(&mut v, retention, &m.name);
            v
        })
        .collect();
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

/// A metric's series TTL, as `/api/v1/metrics` shows it: `series_ttl_s` of
/// its series no label-scoped rule takes, `series_ttl_from` the key it comes
/// from, and `expiry_rules`, the label-scoped rules that take some of its
/// series first, in the order they apply.
fn add_expiry(v: &mut Value, retention: &Retention, metric: &str) {
    let expiry = retention.metric_expiry(metric);
    v["series_ttl_s"] = json!(expiry.series_ttl_s);
    v["series_ttl_from"] = json!(
        expiry
            .rule
            .map_or_else(|| "storage.series_ttl_s".to_owned(), |r| r.key())
    );
    v["expiry_rules"] = expiry
        .by_labels
        .iter()
        .map(|r| json!({"rule": r.key(), "labels": r.labels, "series_ttl_s": r.ttl_s}))
        .collect();
}

async fn sources(State(node): State<Arc<ApiState>>) -> Response {
    let now = now_ms();
    let data: Vec<Value> = node
        .ctx
        .sources
        .all()
        .into_iter()
        .map(|s| {
            let watermark = s.watermark_ms.load(Ordering::Relaxed);
            json!({
                "id": s.id,
                "connected": s.is_connected(),
                "epoch_fingerprint": (s.epoch() != 0).then(|| crate::core::sources::epoch_fingerprint(s.epoch())),
                "committed_seq": s.committed(),
                "last_seen_ms": s.last_seen_ms.load(Ordering::Relaxed),
                "watermark_ms": watermark,
                "lag_ms": if watermark > 0 { Some(now - watermark) } else { None },
                "batches": s.batches.load(Ordering::Relaxed),
                "increments": s.increments.load(Ordering::Relaxed),
                "duplicates": s.duplicates.load(Ordering::Relaxed),
                "late_after_complete": s.late_after_complete.load(Ordering::Relaxed),
            })
        })
        .collect();
    // What applications send this node directly, beside its sources.
    let own_watermark = node.pipeline.watermarks().own_ms;
    let local = json!({
        "id": node.ctx.node_id,
        "watermark_ms": own_watermark,
        "lag_ms": if own_watermark > 0 { Some(now - own_watermark) } else { None },
        "late_after_complete": node.pipeline.late_after_complete(),
    });
    axum::Json(json!({"status": "success", "data": data, "local": local})).into_response()
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
    State(node): State<Arc<ApiState>>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let limit = match limit_param(&params) {
        Ok(n) => n,
        Err(message) => return refusal(Class::Invalid, message),
    };
    let alarms = node.alarms.clone();
    match request_id::spawn_blocking(move || crate::api::alarms::data(&alarms, limit)).await {
        Ok(Ok(data)) => axum::Json(json!({"status": "success", "data": data})).into_response(),
        Ok(Err(e)) => refusal(Class::Internal, format!("reading alarms: {e}")),
        Err(e) => refusal(Class::Internal, format!("reading alarms: {e}")),
    }
}

/// `DELETE /api/v1/quarantine`: deletes the unreadable stored states the
/// store moved aside (after an operator looked at them), which clears the
/// `quarantine` health check.
async fn clear_quarantine(State(node): State<Arc<ApiState>>) -> Response {
    let store = node.ctx.store.clone();
    let cleared = request_id::spawn_blocking(move || store.clear_quarantine())
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match cleared {
        Ok(deleted) => {
            axum::Json(json!({"status": "success", "data": {"deleted": deleted}})).into_response()
        }
        Err(e) => refusal(Class::Internal, format!("clearing the quarantine: {e}")),
    }
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
