//! `GET /metrics`: the node's counters and gauges in the Prometheus text format.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::ApiState;
use crate::context::now_ms;
use crate::core::stats::{Gauge, render_prometheus};

/// Counters of [`crate::core::stats::Stats`], carrier and spool gauges, the
/// series count and each source's lag.
pub(crate) async fn prometheus(State(node): State<Arc<ApiState>>) -> Response {
    let c = node.pipeline.carrier_stats();
    let spool = node.ctx.store.spool_stats();
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
            value: node.ctx.store.series_count() as f64,
        },
    ]);
    let now = now_ms();
    for s in node.ctx.sources.all() {
        let wm = s.watermark_ms.load(Ordering::Relaxed);
        gauges.push(Gauge {
            name: "source_lag_ms",
            help: "how far a source's watermark is behind now",
            labels: vec![("source", s.id.clone())],
            value: if wm > 0 { (now - wm) as f64 } else { f64::NAN },
        });
    }
    let text = render_prometheus(&node.ctx.node_id, &node.ctx.stats, &gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
