//! What stops a node from the inside: a panic in a pipeline thread.
//!
//! The aggregator shards, the flush thread and the commit writer each catch
//! their own panic and report it here. The node cannot go on without any of
//! them (a dead shard refuses its series, a dead commit writer leaves every
//! ack and `wait=commit` hanging), so [`crate::RunningTier::stopped_by`]
//! resolves and `strata run` shuts the rest of the node down in order and
//! exits non-zero, instead of serving half-alive. From the report on, new
//! requests are refused as from a stopping node.
//! What was committed stays; what was not is resent by the sources, as after
//! a crash.
//!
//! Fault injection, for the end-to-end tests only: debug builds read
//! `STRATA_FAULT_INJECT=panic:<shard|flush|commit>`, and that thread then
//! panics when it handles data of the metric [`fault::METRIC`]. Release
//! builds compile the hook out (docs/OPERATIONS.md).

use std::sync::Arc;

use tokio::sync::watch;

/// The first fatal failure of a node, shared by the threads that report it
/// and the runner that waits for it.
#[derive(Clone, Debug)]
pub struct Fatal(Arc<watch::Sender<Option<String>>>);

impl Default for Fatal {
    fn default() -> Self {
        Fatal(Arc::new(watch::channel(None).0))
    }
}

impl Fatal {
    /// Records `what` went wrong, unless something already did: the first
    /// failure is the one reported.
    pub fn report(&self, what: String) {
        self.0.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(what);
            true
        });
    }

    /// Whether a failure was reported.
    pub fn is_set(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// The failure, if one was reported.
    pub fn get(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Resolves with the first failure reported (never, if none is).
    pub async fn wait(&self) -> String {
        let mut rx = self.0.subscribe();
        let what = rx
            .wait_for(Option::is_some)
            .await
            .map(|what| what.clone().unwrap_or_default());
        match what {
            Ok(what) => what,
            // The sender lives in `self`: unreachable, but never resolve falsely.
            Err(_) => std::future::pending().await,
        }
    }

    /// A hook for [`strata_carrier::Carrier::start_with_panic_hook`].
    pub fn carrier_hook(&self) -> strata_carrier::PanicHook {
        let fatal = self.clone();
        Arc::new(move |p: &strata_carrier::ConsumerPanic| {
            fatal.report(format!(
                "the {} thread {} panicked: {}",
                p.carrier, p.partition, p.message
            ));
        })
    }
}

/// The text of a panic payload.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

/// Fault injection for the end-to-end tests (see the module docs).
pub mod fault {
    /// The metric whose data makes an armed thread panic.
    pub const METRIC: &str = "fault_injection_panic";

    /// The environment variable that arms a thread (debug builds only).
    pub const ENV: &str = "STRATA_FAULT_INJECT";

    /// Whether the thread named `point` (`shard`, `flush`, `commit`) is armed.
    #[cfg(debug_assertions)]
    fn armed(point: &str) -> bool {
        static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        ARMED
            .get_or_init(|| std::env::var(ENV).ok())
            .as_deref()
            .and_then(|v| v.strip_prefix("panic:"))
            == Some(point)
    }

    #[cfg(not(debug_assertions))]
    fn armed(_point: &str) -> bool {
        false
    }

    /// Panics if `point` is armed and `metrics` include [`METRIC`].
    pub fn check<'a>(point: &str, mut metrics: impl Iterator<Item = &'a str>) {
        if armed(point) && metrics.any(|m| m == METRIC) {
            panic!("fault injection ({ENV}=panic:{point}): {METRIC} reached the {point} thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_failure_is_the_one_reported() {
        let fatal = Fatal::default();
        assert_eq!(fatal.get(), None);
        let waiter = tokio::spawn({
            let fatal = fatal.clone();
            async move { fatal.wait().await }
        });
        fatal.report("first".into());
        fatal.report("second".into());
        assert_eq!(waiter.await.ok(), Some("first".to_string()));
        assert_eq!(fatal.get().as_deref(), Some("first"));
    }
}
