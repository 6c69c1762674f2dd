//! `/health` and `/health/{component}`: each component's checks, timed, with
//! the worst of them as the component's status.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::ApiState;
use crate::api::json::error;
use crate::context::now_ms;
use crate::core::health::Health;

/// One check of a component.
struct Check {
    name: &'static str,
    status: Health,
    detail: String,
    duration_us: u128,
}

/// Every component with its checks, in the order `/health` lists them.
fn components(node: &ApiState) -> Vec<(&'static str, Vec<Check>)> {
    vec![
        (
            "aggregator",
            vec![timed("queue_depth", || queue_depth(node))],
        ),
        (
            "store",
            vec![
                timed("last_commit", || last_commit(node)),
                timed("errors", || commit_errors(node)),
                timed("quarantine", || quarantine(node)),
            ],
        ),
        ("forwarder", vec![timed("upstream", || upstream(node))]),
        (
            "federation_receiver",
            vec![timed("sources", || downstream_sources(node))],
        ),
        (
            "alarms",
            vec![
                timed("rules", || node.alarms.rules_check()),
                timed("notifications", || node.alarms.notifications_check()),
            ],
        ),
    ]
}

/// Runs one check and records how long it took.
fn timed(name: &'static str, check: impl FnOnce() -> (Health, String)) -> Check {
    let start = Instant::now();
    let (status, detail) = check();
    Check {
        name,
        status,
        detail,
        duration_us: start.elapsed().as_micros(),
    }
}

/// Degraded when the shard queues are more than 80% full.
fn queue_depth(node: &ApiState) -> (Health, String) {
    let c = node.pipeline.carrier_stats();
    let status = if c.depth * 10 > c.capacity * 8 {
        Health::Degraded
    } else {
        Health::Ok
    };
    let detail = format!(
        "{} of {} queued, {} producer waits, {} dropped",
        c.depth, c.capacity, c.waits, c.dropped
    );
    (status, detail)
}

/// KO when nothing was committed for ten flush intervals (at least 10 s).
fn last_commit(node: &ApiState) -> (Health, String) {
    let flush_ms = node.pipeline.settings().flush_interval.as_millis() as i64;
    let last = node.pipeline.last_commit_ms();
    let age = now_ms() - last;
    if last == 0 {
        (Health::Degraded, "no commit yet".into())
    } else if age > 10 * flush_ms.max(1000) {
        (Health::Ko, format!("last commit {age} ms ago"))
    } else {
        (Health::Ok, format!("last commit {age} ms ago"))
    }
}

/// KO once a commit failed for good; Degraded after failed attempts.
fn commit_errors(node: &ApiState) -> (Health, String) {
    let n = node.ctx.stats.store_errors_total.load(Ordering::Relaxed);
    if node.pipeline.has_failed() {
        (
            Health::Ko,
            format!(
                "{n} failed commits; a flush was lost and committing stopped: restart the node"
            ),
        )
    } else if n > 0 {
        (Health::Degraded, format!("{n} failed commit attempts"))
    } else {
        (Health::Ok, "no failed commits".into())
    }
}

/// Degraded while the store holds unreadable states it moved aside.
fn quarantine(node: &ApiState) -> (Health, String) {
    match node.ctx.store.quarantined() {
        0 => (Health::Ok, "no unreadable stored states".into()),
        n => (
            Health::Degraded,
            format!(
                "{n} unreadable stored states moved to quarantine; their buckets started afresh (see events of type state_quarantined)"
            ),
        ),
    }
}

/// The forwarder's own verdict on its link, with the spool's size.
fn upstream(node: &ApiState) -> (Health, String) {
    match &node.forwarder {
        None => (Health::Deactivated, "no [upstream] configured".into()),
        Some(f) => {
            let spooled = node.ctx.store.spool_stats().batches;
            f.lock().check(spooled, Instant::now())
        }
    }
}

/// Degraded while a declared downstream source is not connected.
fn downstream_sources(node: &ApiState) -> (Health, String) {
    let expected = node.ctx.sources.expected();
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
}

fn worst(checks: &[Check]) -> Health {
    checks.iter().map(|c| c.status).max().unwrap_or(Health::Ok)
}

pub(crate) async fn health(State(node): State<Arc<ApiState>>) -> Response {
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
        axum::Json(
            json!({"status": overall.as_str(), "node": node.ctx.node_id, "components": map}),
        ),
    )
        .into_response()
}

pub(crate) async fn health_component(
    State(node): State<Arc<ApiState>>,
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
