//! `GET /api/v1/status`: what the console's topology page shows, in one
//! answer (docs/OPERATIONS.md, docs/CONSOLE.md):
//!
//! - `node`: this node's id, version, role, series, own watermark and lag;
//! - `upstream`: its link to the upstream tier (`null` on a top tier):
//!   connected, the upstream's id, the seq acknowledged through, the spool,
//!   and the forwarder's health verdict;
//! - `completeness`: the last [`MINUTES`] minutes at this node, oldest
//!   first, each with `complete`, `sources`, `expected_sources` as a query
//!   point has them;
//! - `sources`: every downstream source as `/api/v1/sources` lists it, plus
//!   `expired` (remembered but no longer expected), `middle_tier` (it
//!   merges sources of its own) and `minutes`, whether its watermark has
//!   passed the end of each of those minutes;
//! - `below`: the tiers below the direct sources ([`super::tiers`]);
//! - `event_types`: every event type `/api/v1/events` can filter by.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strata_model::minute_start;
use strata_store::EventKind;

use crate::ApiState;
use crate::api::request_id;
use crate::context::now_ms;
use crate::core::sources::{SourceLive, Watermarks, epoch_fingerprint};

/// How many minutes, the current one included, `completeness` covers.
pub const MINUTES: usize = 10;

const MINUTE_MS: i64 = 60_000;

/// The handler of `GET /api/v1/status`.
pub(crate) async fn status(State(node): State<Arc<ApiState>>) -> Response {
    let now = now_ms();
    let reader = node.clone();
    // Reads self-metrics from the store: off the async runtime.
    let below = request_id::spawn_blocking(move || super::tiers::below(&reader, now))
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the tiers below failed");
            super::tiers::Below::default()
        });
    let data = json!({
        "now_ms": now,
        "node": this_node(&node, now, &below),
        "upstream": upstream(&node),
        "completeness": completeness(&node.pipeline.watermarks(), now),
        "sources": sources(&node, now, &below.middle_tiers),
        "below": below.nodes,
        "event_types": EventKind::ALL.map(EventKind::as_str),
    });
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

/// `ms` ago from `now`, or `null` before the first one.
fn lag(now: i64, ms: i64) -> Value {
    if ms > 0 { json!(now - ms) } else { Value::Null }
}

/// This node: what it is and how far its own data is committed.
fn this_node(node: &ApiState, now: i64, below: &super::tiers::Below) -> Value {
    let own = node.pipeline.watermarks().own_ms;
    let has_sources = !node.ctx.sources.all().is_empty();
    let role = match (node.forwarder.is_some(), has_sources) {
        (false, _) => "top",
        (true, true) => "middle",
        (true, false) => "edge",
    };
    json!({
        "id": node.ctx.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "role": role,
        "series": node.ctx.store.series_count(),
        "watermark_ms": own,
        "lag_ms": lag(now, own),
        "late_after_complete": node.pipeline.late_after_complete(),
        "ingest_samples_total": node.ctx.stats.ingest_samples_total.load(Ordering::Relaxed),
        "self_metrics_window_minutes": below.window_minutes,
    })
}

/// The link to the upstream tier; `null` without `[upstream]`.
fn upstream(node: &ApiState) -> Value {
    let Some(forwarder) = &node.forwarder else {
        return Value::Null;
    };
    let spool = node.ctx.store.spool_stats();
    let (status, detail, connected, upstream_id) = {
        let state = forwarder.lock();
        let (status, detail) = state.check(spool.batches, Instant::now());
        (status, detail, state.connected, state.upstream_id.clone())
    };
    json!({
        "id": (!upstream_id.is_empty()).then_some(upstream_id),
        "connected": connected,
        "acked_seq": acked_seq(spool.batches, spool.first_seq, spool.last_seq),
        "last_seq": spool.last_seq,
        "spool_batches": spool.batches,
        "spool_bytes": spool.bytes,
        "spool_dropped_batches": spool.dropped_batches,
        "status": status.as_str(),
        "detail": detail,
    })
}

/// The seq the upstream has acknowledged everything through: the spool
/// holds the seqs after it (dropped ones aside), or is empty once all are.
fn acked_seq(batches: u64, first_seq: u64, last_seq: u64) -> u64 {
    if batches == 0 {
        last_seq
    } else {
        first_seq.saturating_sub(1)
    }
}

/// Ends of the last [`MINUTES`] minutes, oldest first; the current minute last.
fn minute_starts(now: i64) -> Vec<i64> {
    let current = minute_start(now);
    (0..MINUTES as i64)
        .rev()
        .map(|back| current - back * MINUTE_MS)
        .collect()
}

/// Completeness of each of the last minutes at this node, as a query point
/// of that minute would say it.
fn completeness(watermarks: &Watermarks, now: i64) -> Vec<Value> {
    minute_starts(now)
        .into_iter()
        .map(|start| {
            let c = watermarks.completeness(start + MINUTE_MS);
            json!({
                "ts_ms": start,
                "complete": c.complete,
                "sources": c.sources,
                "expected_sources": c.expected_sources,
            })
        })
        .collect()
}

/// Every downstream source with its progress, whether it still counts for
/// completeness, and which of the last minutes its watermark has passed.
fn sources(node: &ApiState, now: i64, middle_tiers: &BTreeSet<String>) -> Vec<Value> {
    let expected: BTreeSet<String> = node
        .ctx
        .sources
        .expected()
        .into_iter()
        .map(|s| s.id.clone())
        .collect();
    let starts = minute_starts(now);
    node.ctx
        .sources
        .all()
        .into_iter()
        .map(|s| source(&s, now, &starts, &expected, middle_tiers))
        .collect()
}

fn source(
    s: &SourceLive,
    now: i64,
    starts: &[i64],
    expected: &BTreeSet<String>,
    middle_tiers: &BTreeSet<String>,
) -> Value {
    let watermark = s.watermark_ms.load(Ordering::Relaxed);
    let minutes: Vec<bool> = starts
        .iter()
        .map(|start| watermark >= start + MINUTE_MS)
        .collect();
    json!({
        "id": s.id,
        "connected": s.is_connected(),
        "expired": !expected.contains(&s.id),
        "middle_tier": middle_tiers.contains(&s.id),
        "epoch_fingerprint": (s.epoch() != 0).then(|| epoch_fingerprint(s.epoch())),
        "committed_seq": s.committed(),
        "last_seen_ms": s.last_seen_ms.load(Ordering::Relaxed),
        "watermark_ms": watermark,
        "lag_ms": lag(now, watermark),
        "batches": s.batches.load(Ordering::Relaxed),
        "increments": s.increments.load(Ordering::Relaxed),
        "duplicates": s.duplicates.load(Ordering::Relaxed),
        "late_after_complete": s.late_after_complete.load(Ordering::Relaxed),
        "minutes": minutes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_through_the_seq_before_the_oldest_spooled() {
        assert_eq!(acked_seq(0, 0, 0), 0);
        assert_eq!(acked_seq(0, 0, 41), 41);
        assert_eq!(acked_seq(3, 40, 42), 39);
        assert_eq!(acked_seq(1, 1, 1), 0);
    }

    #[test]
    fn minutes_end_with_the_current_one() {
        let current = 1_763_800_020_000;
        let starts = minute_starts(current + 21_000);
        assert_eq!(starts.len(), MINUTES);
        assert_eq!(starts[MINUTES - 1], current);
        assert_eq!(starts[0], current - 9 * MINUTE_MS);
        assert!(starts.windows(2).all(|w| w[1] - w[0] == MINUTE_MS));
    }

    #[test]
    fn completeness_follows_the_watermarks() {
        let current = 1_763_800_020_000;
        let now = current + 21_000;
        let watermarks = Watermarks {
            own_ms: now - 2_000,
            sources: vec![now - 2_000, current - 30_000],
        };
        let c = completeness(&watermarks, now);
        let last = |back: usize| &c[MINUTES - 1 - back];
        assert_eq!(last(0)["complete"], false);
        assert_eq!(last(0)["sources"], 0);
        // The previous minute: one of the two sources has passed its end.
        assert_eq!(last(1)["complete"], false);
        assert_eq!(last(1)["sources"], 1);
        assert_eq!(last(1)["expected_sources"], 2);
        assert_eq!(last(2)["complete"], true);
        assert_eq!(last(2)["sources"], 2);
    }
}
