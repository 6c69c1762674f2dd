//! Self-metrics: the node's own counters as ordinary `strata_*` metrics,
//! recorded at every flush so they are stored and forwarded like any other.

use std::sync::Arc;

use strata_model::{Kind, SampleValue, SeriesKey};

use crate::core::shard::SampleItem;
use crate::core::stats::Stats;

/// Turns the growth of this node's [`Stats`] counters into ordinary
/// `strata_*{node="<id>"}` counter samples, so they are stored and forwarded
/// upward like any metric (DESIGN §6).
pub(crate) struct SelfMetrics {
    series: Vec<Arc<SeriesKey>>,
    last: Vec<u64>,
}

/// Prefix of the metrics a node records about itself.
pub const SELF_PREFIX: &str = "strata_";

impl SelfMetrics {
    pub(crate) fn new(node_id: &str) -> Self {
        let names = Stats::default().snapshot();
        let series = names
            .iter()
            .filter_map(|(name, _)| {
                SeriesKey::new(
                    format!("{SELF_PREFIX}{name}"),
                    [("node".to_string(), node_id.to_string())],
                )
                .ok()
            })
            .map(Arc::new)
            .collect();
        SelfMetrics {
            series,
            last: vec![0; names.len()],
        }
    }

    pub(crate) fn samples(&mut self, stats: &Stats, now: i64) -> Vec<SampleItem> {
        let mut out = Vec::new();
        for ((series, last), (_, value)) in self
            .series
            .iter()
            .zip(self.last.iter_mut())
            .zip(stats.snapshot())
        {
            if value > *last {
                out.push(SampleItem {
                    series: series.clone(),
                    kind: Kind::Counter,
                    bucket_ms: strata_model::minute_start(now),
                    ts_ms: now,
                    value: SampleValue::Number((value - *last) as f64),
                    apdex_threshold: 0.0,
                });
                *last = value;
            }
        }
        out
    }
}

/// Names of the self-metrics, to register as counters before any input runs.
pub fn self_metric_names() -> Vec<String> {
    Stats::default()
        .snapshot()
        .into_iter()
        .map(|(n, _)| format!("{SELF_PREFIX}{n}"))
        .collect()
}
