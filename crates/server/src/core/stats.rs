//! The node's own pipeline figures (DESIGN §6).
//!
//! Plain atomic counters, bumped on the data path with relaxed ordering. The
//! flush loop turns their growth since the previous flush into ordinary
//! `strata_*` counter samples of this node (so they are stored and forwarded
//! upward like any metric), and `/metrics` renders their totals in the
//! Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $field:ident ),* $(,)?) => {
        /// Monotonic pipeline counters of one node.
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[$doc])* pub $field: AtomicU64, )*
        }

        impl Stats {
            /// `(name, value)` of every counter, names without the `strata_` prefix.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($field), self.$field.load(Ordering::Relaxed)), )*]
            }
        }
    };
}

counters! {
    /// Samples accepted by the ingest APIs.
    ingest_samples_total,
    /// Ingest requests accepted.
    ingest_requests_total,
    /// Ingest requests rejected as invalid (nothing of them merged).
    ingest_rejected_requests_total,
    /// Ingest requests refused because the node was busy (429/503, RESOURCE_EXHAUSTED).
    ingest_busy_total,
    /// Samples rejected for being older than the allowed lateness (part of rejected requests).
    late_samples_total,
    /// Samples rejected for being further ahead of the node's clock than `aggregation.max_future_s`.
    future_samples_total,
    /// Federation batches merged from downstream sources.
    federation_batches_total,
    /// Increments merged from downstream sources.
    federation_increments_total,
    /// Batches received again after being committed: acknowledged, not merged.
    federation_duplicates_total,
    /// Increments from downstream this node could not merge (kind, precision or apdex threshold conflicts).
    federation_refused_increments_total,
    /// Malformed federation batches rejected whole.
    federation_rejected_batches_total,
    /// Federation streams refused (bad token, unknown id, id already connected).
    federation_refused_streams_total,
    /// Federation streams ended for a message over `grpc.max_message_bytes` or a
    /// batch in parts over `grpc.max_batch_bytes`.
    federation_oversized_messages_total,
    /// Federation batches refused for their seq (out of order, a gap not
    /// accounted for by dropped batches, a seq beyond any source's reach): the
    /// stream ends, nothing of the batch is merged.
    federation_refused_seqs_total,
    /// Flushes committed to the store.
    flushes_total,
    /// Increments committed to the store.
    committed_increments_total,
    /// Samples and increments the aggregator or the store could not merge: kind,
    /// precision or apdex threshold conflicts, and results a state cannot hold (a float
    /// total past ±f64::MAX, a count past u64::MAX). Each is refused alone.
    merge_errors_total,
    /// Batches sent upstream (including resends).
    forward_batches_sent_total,
    /// Batches acknowledged by the upstream.
    forward_batches_acked_total,
    /// Batches the upstream rejected as malformed.
    forward_batches_rejected_total,
    /// Batches sent in several parts because they were larger than one message.
    forward_batches_split_total,
    /// Increments left out of a forwarded batch because even alone they did not fit
    /// in one message of the upstream's limit (each also logged, and an event).
    forward_oversized_increments_total,
    /// Spooled batches dropped because the spool reached its cap.
    spool_dropped_batches_total,
    /// Upstream connections established.
    forward_connects_total,
    /// Store commits that failed.
    store_errors_total,
    /// Stored states found unreadable and moved to quarantine (each also an event).
    quarantined_states_total,
    /// Retention passes (bucket, event and series TTL deletion): at the first commit, then every minute.
    retention_runs_total,
    /// Alarm instances that started firing.
    alarms_fired_total,
    /// Firing alarm instances that resolved.
    alarms_resolved_total,
    /// Webhook notifications delivered (answered 2xx).
    alarm_notifications_sent_total,
    /// Webhook delivery attempts that failed (each is retried with backoff).
    alarm_notifications_failed_total,
    /// Queued notifications dropped because the outbox reached its cap.
    alarm_notifications_dropped_total,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A gauge read at render time.
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// Renders counters and gauges in the Prometheus text exposition format.
pub fn render_prometheus(node: &str, stats: &Stats, gauges: &[Gauge]) -> String {
    let mut out = String::with_capacity(4096);
    for (name, value) in stats.snapshot() {
        let _ = writeln!(out, "# TYPE strata_{name} counter");
        let _ = writeln!(out, "strata_{name}{{node=\"{}\"}} {value}", escape(node));
    }
    let mut last = "";
    for g in gauges {
        if g.name != last {
            let _ = writeln!(out, "# HELP strata_{} {}", g.name, g.help);
            let _ = writeln!(out, "# TYPE strata_{} gauge", g.name);
            last = g.name;
        }
        let _ = write!(out, "strata_{}{{node=\"{}\"", g.name, escape(node));
        for (k, v) in &g.labels {
            let _ = write!(out, ",{k}=\"{}\"", escape(v));
        }
        let _ = writeln!(out, "}} {}", g.value);
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let stats = Stats::default();
        Stats::add(&stats.ingest_samples_total, 5);
        let text = render_prometheus(
            "eu",
            &stats,
            &[Gauge {
                name: "queue_depth",
                help: "items queued",
                labels: vec![("carrier", "ingest".into())],
                value: 3.0,
            }],
        );
        assert!(
            text.contains("strata_ingest_samples_total{node=\"eu\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("strata_queue_depth{node=\"eu\",carrier=\"ingest\"} 3\n"),
            "{text}"
        );
    }
}
