//! HTTP API (DESIGN §8): NDJSON ingest, queries, sources, alarms, events,
//! health, /metrics.
//!
//! Error answers take their status and `Retry-After` from the error's class
//! ([`crate::status`], through [`crate::api::json`]); only axum's own
//! refusals of a body keep axum's status.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use strata_model::Step;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ApiState;
use crate::api::json::{answer, error, error_of, refusal};
use crate::api::query::{self, QueryError};
use crate::api::{health, metrics};
use crate::config::HttpConfig;
use crate::context::now_ms;
use crate::inputs::samples::{IngestError, parse_ndjson};
use crate::status::{Class, Classify};

/// Binds `http.listen` and serves [`router`] until `stop` is cancelled (then
/// lets in-flight requests finish).
pub async fn serve(
    config: &HttpConfig,
    node: Arc<ApiState>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let addr = listener.local_addr()?;
    let app = router(node, config.max_body_bytes);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok((addr, task))
}

pub fn router(node: Arc<ApiState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/api/v1/ingest", post(ingest))
        .route("/api/v1/query", get(query))
        .route("/api/v1/metrics", get(metrics_list))
        .route("/api/v1/sources", get(sources))
        .route("/api/v1/events", get(events))
        .route("/api/v1/alarms", get(alarms))
        .route("/api/v1/quarantine", delete(clear_quarantine))
        .route("/health", get(health::health))
        .route("/health/{component}", get(health::health_component))
        .route("/metrics", get(metrics::prometheus))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(node)
}

async fn ingest(
    State(node): State<Arc<ApiState>>,
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
    let retention = node.pipeline.settings().retention;
    let result =
        tokio::task::spawn_blocking(move || query::execute(&*store, &watermarks, &retention, &q))
            .await;
    match result {
        Ok(Ok(data)) => axum::Json(json!({"status": "success", "data": data})).into_response(),
        Ok(Err(e)) => error_of(&e),
        Err(e) => refusal(Class::Internal, format!("query failed: {e}")),
    }
}

async fn metrics_list(State(node): State<Arc<ApiState>>) -> Response {
    let store = node.ctx.store.clone();
    let metrics = tokio::task::spawn_blocking(move || store.metrics())
        .await
        .unwrap_or_default();
    let data: Vec<Value> = metrics
        .into_iter()
        .map(|m| json!({"name": m.name, "kind": m.kind.as_str(), "series": m.series}))
        .collect();
    axum::Json(json!({"status": "success", "data": data})).into_response()
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
            })
        })
        .collect();
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

/// `GET /api/v1/events?since=-1h&limit=100`: the event log, newest first.
async fn events(
    State(node): State<Arc<ApiState>>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let since = params.get("since").map_or("-1d", String::as_str);
    let since = match query::parse_time_param("since", since, now_ms()) {
        Ok(t) => t,
        Err(e) => return error_of(&e),
    };
    let limit = match limit_param(&params) {
        Ok(n) => n,
        Err(message) => return refusal(Class::Invalid, message),
    };
    let store = node.ctx.store.clone();
    match tokio::task::spawn_blocking(move || store.events(since, limit)).await {
        Ok(Ok(list)) => {
            let data: Vec<Value> = list
                .into_iter()
                .map(|e| json!({"ts_ms": e.ts_ms, "kind": e.kind.as_str(), "message": e.message}))
                .collect();
            axum::Json(json!({"status": "success", "data": data})).into_response()
        }
        Ok(Err(e)) => refusal(Class::Internal, format!("reading events: {e}")),
        Err(e) => refusal(Class::Internal, format!("reading events: {e}")),
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
    State(node): State<Arc<ApiState>>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let limit = match limit_param(&params) {
        Ok(n) => n,
        Err(message) => return refusal(Class::Invalid, message),
    };
    let alarms = node.alarms.clone();
    match tokio::task::spawn_blocking(move || crate::api::alarms::data(&alarms, limit)).await {
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
    let cleared = tokio::task::spawn_blocking(move || store.clear_quarantine())
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
