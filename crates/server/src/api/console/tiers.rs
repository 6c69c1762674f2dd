//! The tiers below this node's direct sources, as far as this node knows
//! them: every node forwards its own counters as `strata_*{node="<id>"}`
//! metrics ([`crate::core::self_metrics`]), and a middle tier forwards those
//! of its sources with its own increments, so they reach every tier above.
//!
//! A node that labels self-metrics here, yet is neither this node nor one
//! of its direct sources, is further down. Self-metrics name the node, not
//! the path they took, so which direct source it sits behind is inferred:
//! a direct source that merged batches of its own sources in the window is
//! a middle tier, and when exactly one direct source is, every node further
//! down sits behind it; otherwise `via` lists every candidate (or none).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use strata_model::{Step, minute_start};

use crate::ApiState;
use crate::api::query::{self, Query, QueryLimits};
use crate::core::self_metrics::SELF_PREFIX;

/// Minutes of self-metrics the figures of a node below add up.
pub const WINDOW_MINUTES: i64 = 5;

/// A node that forwarded no self-metrics for this many minutes is not listed.
pub const SEEN_MINUTES: i64 = 15;

const MINUTE_MS: i64 = 60_000;

/// What the status page says about the tiers below.
#[derive(Debug, Default)]
pub struct Below {
    /// One object per node below the direct sources, sorted by id.
    pub nodes: Vec<Value>,
    /// Direct sources that merged batches of their own sources in the window.
    pub middle_tiers: BTreeSet<String>,
    /// [`WINDOW_MINUTES`], for the page to say what the figures cover.
    pub window_minutes: i64,
}

/// The figures of one node in its self-metrics.
#[derive(Debug, Default, Clone, PartialEq)]
struct Figures {
    /// Start of the newest minute it recorded a flush in.
    last_seen_ms: i64,
    samples: u64,
    batches_forwarded: u64,
    batches_received: u64,
    duplicates: u64,
}

/// Reads the self-metrics of the last minutes and sorts their nodes into
/// this node's middle-tier sources and the nodes further down. Blocks on the
/// store: call it from a blocking thread.
pub fn below(node: &ApiState, now: i64) -> Below {
    let figures = read_figures(node, now);
    let direct: BTreeSet<String> = node
        .ctx
        .sources
        .all()
        .into_iter()
        .map(|s| s.id.clone())
        .collect();
    sort(&node.ctx.node_id, &direct, figures)
}

/// The nodes of `figures` other than `this` and its `direct` sources, each
/// with the middle tiers among `direct` it may sit behind.
fn sort(this: &str, direct: &BTreeSet<String>, figures: BTreeMap<String, Figures>) -> Below {
    let middle_tiers: BTreeSet<String> = figures
        .iter()
        .filter(|(id, f)| direct.contains(*id) && f.batches_received > 0)
        .map(|(id, _)| id.clone())
        .collect();
    let nodes = figures
        .into_iter()
        .filter(|(id, _)| id != this && !direct.contains(id))
        .map(|(id, f)| {
            json!({
                "id": id,
                "via": middle_tiers,
                "middle_tier": f.batches_received > 0,
                "last_seen_ms": f.last_seen_ms,
                "samples": f.samples,
                "batches_forwarded": f.batches_forwarded,
                "batches_received": f.batches_received,
                "duplicates": f.duplicates,
            })
        })
        .collect();
    Below {
        nodes,
        middle_tiers,
        window_minutes: WINDOW_MINUTES,
    }
}

/// Where a counter's total goes in [`Figures`].
type FigureOf = fn(&mut Figures) -> &mut u64;

/// Per node: when it last flushed (within [`SEEN_MINUTES`]) and its counters
/// over the last [`WINDOW_MINUTES`].
fn read_figures(node: &ApiState, now: i64) -> BTreeMap<String, Figures> {
    let current = minute_start(now);
    let to = current + MINUTE_MS;
    let mut figures: BTreeMap<String, Figures> = BTreeMap::new();
    for (id, minutes) in per_node(
        node,
        "flushes_total",
        to - SEEN_MINUTES * MINUTE_MS,
        to,
        Step::Minute,
    ) {
        let newest = minutes.iter().map(|(ts, _)| *ts).max().unwrap_or(0);
        figures.entry(id).or_default().last_seen_ms = newest;
    }
    let from = to - WINDOW_MINUTES * MINUTE_MS;
    let fields: [(&str, FigureOf); 4] = [
        ("ingest_samples_total", |f| &mut f.samples),
        ("forward_batches_acked_total", |f| &mut f.batches_forwarded),
        ("federation_batches_total", |f| &mut f.batches_received),
        ("federation_duplicates_total", |f| &mut f.duplicates),
    ];
    for (counter, field) in fields {
        for (id, points) in per_node(node, counter, from, to, Step::All) {
            // Only nodes seen flushing are listed.
            if let Some(f) = figures.get_mut(&id) {
                *field(f) = points.iter().map(|(_, n)| n).sum();
            }
        }
    }
    figures
}

/// The counter `strata_<counter>` merged per `node` label over `from..to`:
/// each node's points as `(minute, count)`. Empty when the query fails
/// (logged): the page then shows less, never an error.
fn per_node(
    node: &ApiState,
    counter: &str,
    from_ms: i64,
    to_ms: i64,
    step: Step,
) -> Vec<(String, Vec<(i64, u64)>)> {
    let q = Query {
        selector: format!("{SELF_PREFIX}{counter}"),
        from_ms,
        to_ms,
        step,
        group_by: Some(vec!["node".to_string()]),
    };
    let limits = QueryLimits {
        max_series: node.ingestor.limits.max_query_series,
        max_points: node.ingestor.limits.max_query_points,
    };
    let settings = node.pipeline.settings();
    let data = match query::execute_limited(
        &*node.ctx.store,
        &node.pipeline.watermarks(),
        &settings.retention,
        &q,
        limits,
    ) {
        Ok(data) => data,
        Err(e) => {
            tracing::debug!(metric = %q.selector, error = %e, "self-metrics of the tiers below not read");
            return Vec::new();
        }
    };
    counts_by_node(&data)
}

/// `(node, [(ts_ms, count)])` of a query answer grouped by `node`.
fn counts_by_node(data: &Value) -> Vec<(String, Vec<(i64, u64)>)> {
    let Some(series) = data["series"].as_array() else {
        return Vec::new();
    };
    series
        .iter()
        .filter_map(|s| {
            let id = s["labels"]["node"].as_str()?.to_string();
            let points = s["points"]
                .as_array()?
                .iter()
                .filter_map(|p| Some((p["ts_ms"].as_i64()?, p["value"]["count"].as_u64()?)))
                .collect();
            Some((id, points))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(received: u64) -> Figures {
        Figures {
            last_seen_ms: 60_000,
            samples: 10,
            batches_forwarded: 3,
            batches_received: received,
            duplicates: 0,
        }
    }

    #[test]
    fn nodes_below_sit_behind_the_one_middle_tier() {
        let direct: BTreeSet<String> = ["aws".to_string(), "eu".to_string()].into();
        let all = BTreeMap::from([
            ("global".to_string(), figures(9)),
            ("aws".to_string(), figures(0)),
            ("eu".to_string(), figures(4)),
            ("eu-edge-1".to_string(), figures(0)),
        ]);
        let below = sort("global", &direct, all);
        assert_eq!(below.middle_tiers, BTreeSet::from(["eu".to_string()]));
        assert_eq!(below.nodes.len(), 1);
        assert_eq!(below.nodes[0]["id"], "eu-edge-1");
        assert_eq!(below.nodes[0]["via"], json!(["eu"]));
        assert_eq!(below.nodes[0]["middle_tier"], false);
        assert_eq!(below.nodes[0]["samples"], 10);
    }

    #[test]
    fn with_several_middle_tiers_every_one_is_a_candidate() {
        let direct: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let all = BTreeMap::from([
            ("a".to_string(), figures(1)),
            ("b".to_string(), figures(2)),
            ("c".to_string(), figures(5)),
        ]);
        let below = sort("top", &direct, all);
        assert_eq!(below.nodes[0]["via"], json!(["a", "b"]));
        assert_eq!(below.nodes[0]["middle_tier"], true);
        let none = sort("top", &BTreeSet::new(), BTreeMap::new());
        assert!(none.nodes.is_empty() && none.middle_tiers.is_empty());
    }

    #[test]
    fn counts_are_read_per_node() {
        let data = json!({"series": [
            {"labels": {"node": "x"}, "points": [
                {"ts_ms": 0, "value": {"count": 2, "rate_per_min": 2.0}},
                {"ts_ms": 60000, "value": {"count": 3, "rate_per_min": 3.0}}]},
            {"labels": {}, "points": []}]});
        assert_eq!(
            counts_by_node(&data),
            vec![("x".to_string(), vec![(0, 2), (60_000, 3)])]
        );
        assert!(counts_by_node(&json!({})).is_empty());
    }
}
