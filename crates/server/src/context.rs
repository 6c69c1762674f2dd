//! What every part of a running tier is handed at start: built once by
//! [`crate::start_with`], shared by the inputs, the core, the outputs and the
//! API instead of being reached through the pipeline.

use std::sync::Arc;

use strata_store::{Event, EventKind, Store};

use crate::core::fatal::Fatal;
use crate::core::sources::Sources;
use crate::core::stats::Stats;

/// The shared parts of one node.
pub struct Context {
    /// This node's id: labels its self-metrics, names it to its upstream and
    /// in `/health`.
    pub node_id: String,
    /// Committed state, source progress, the spool, the event log and the
    /// alarm tables: what every reader and the commit writer share.
    pub store: Arc<dyn Store>,
    /// The node's own counters, bumped by every part and rendered on
    /// `/metrics` and as `strata_*` self-metrics.
    pub stats: Arc<Stats>,
    /// Downstream sources: their committed progress, watermarks and liveness,
    /// which decide completeness.
    pub sources: Arc<Sources>,
    /// Set by the first pipeline thread that panics; [`crate::run`] then stops
    /// the node.
    pub fatal: Fatal,
}

impl Context {
    /// A context for `node_id` over `store`, with fresh counters and no
    /// declared sources (tests and benchmarks).
    pub fn new(node_id: &str, store: Arc<dyn Store>) -> Context {
        Context {
            node_id: node_id.to_owned(),
            sources: Arc::new(Sources::new(Vec::new(), store.sources(), i64::MAX)),
            store,
            stats: Arc::new(Stats::default()),
            fatal: Fatal::default(),
        }
    }

    /// Appends a notable event to the store's event log; off the async
    /// runtime when called from it, so a handler never waits for a write.
    pub fn event(&self, kind: EventKind, message: String) {
        let store = self.store.clone();
        let event = Event::new(now_ms(), kind, message);
        let append = move || {
            if let Err(e) = store.append_events(std::slice::from_ref(&event)) {
                tracing::warn!(error = %e, kind = event.kind.as_str(), "event not recorded");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(append);
            }
            Err(_) => append(),
        }
    }
}

/// A source of "now", in milliseconds since the Unix epoch: the wall clock,
/// or a clock a test controls.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock as a [`Clock`].
pub fn system_clock() -> Clock {
    Arc::new(now_ms)
}

/// Milliseconds since the Unix epoch, by the wall clock (0 before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
