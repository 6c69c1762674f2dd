//! The core of a tier: the aggregator shards, the flush, the commit writer,
//! retention and self-metrics, and what they keep about metrics, sources and
//! the node's own figures.
//!
//! - [`pipeline`]: submit (the flush gate), the flush loop, the threads.
//! - [`shard`]: the aggregator shards and what travels to them.
//! - [`commit`]: the commit writer and the tickets it settles.
//! - [`request_log`]: durable acknowledgements ahead of the flush.
//! - [`event_time`]: the node's own watermark and data late after completeness.
//! - [`retention`]: bucket and event retention, series expiry.
//! - [`self_metrics`]: the node's counters as `strata_*` metrics.
//! - [`registry`]: metric kinds, fixed at first sight.
//! - [`sources`]: downstream sources, watermarks, completeness.
//! - [`stats`]: the node's counters and their Prometheus text exposition.
//! - [`latency`]: lock-free latency histograms (ingest, commit, query).
//! - [`limits`]: what a request, a series or a query may hold; what one
//!   federation message may hold.
//! - [`cardinality`]: how many series and metrics each source may bring.
//! - [`fatal`]: a pipeline thread that panicked stops the node.
//! - [`health`]: the one health status every component reports.

pub mod cardinality;
pub mod commit;
pub mod event_time;
pub mod fatal;
pub mod health;
pub mod latency;
pub mod limits;
pub mod pipeline;
pub mod registry;
pub mod request_log;
pub mod retention;
pub mod self_metrics;
pub mod shard;
pub mod sources;
pub mod stats;
