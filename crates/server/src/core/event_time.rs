//! This node's own event-time progress: how far its watermark may claim
//! what applications send it directly, and which data came in after the
//! minute it belongs to was already complete (DESIGN §3).
//!
//! Applications send a minute's samples up to some time after it ended
//! (batching, retries, a slow network). The watermark therefore trails the
//! newest event time accepted in each flush interval by
//! `aggregation.watermark_delay_ms` — and, in an interval with nothing
//! accepted, the wall clock by the same delay — so `complete` is only
//! claimed once the stragglers of a minute had that long to arrive. It never
//! trails the wall clock by more than `allowed_lateness_s`: anything older
//! is refused anyway, so a source that only backfills old data cannot hold
//! completeness back for ever.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;
use strata_model::MINUTE_MS;

/// No event accepted since the last flush.
const NONE: i64 = i64::MIN;

/// Distinct late minutes held for the alarm evaluator; more are dropped
/// (lateness bounds them: `allowed_lateness_s` / 60 + 1 at most in use).
const MAX_LATE_MINUTES: usize = 1024;

/// Event-time progress of what applications sent this node directly.
#[derive(Debug)]
pub struct EventClock {
    delay_ms: i64,
    allowed_lateness_ms: i64,
    /// Newest event time accepted since the last flush, or [`NONE`].
    newest_since_flush_ms: AtomicI64,
    /// Samples sent directly that came in for a minute already complete here.
    pub late_after_complete: AtomicU64,
}

impl EventClock {
    pub fn new(delay_ms: i64, allowed_lateness_ms: i64) -> EventClock {
        EventClock {
            delay_ms,
            allowed_lateness_ms,
            newest_since_flush_ms: AtomicI64::new(NONE),
            late_after_complete: AtomicU64::new(0),
        }
    }

    /// Notes a request's newest event time (called before its samples are
    /// enqueued, under the flush gate).
    pub fn accepted(&self, newest_event_ms: i64) {
        self.newest_since_flush_ms
            .fetch_max(newest_event_ms, Ordering::AcqRel);
    }

    /// The watermark a flush at `flushed_at_ms` may claim for this node's
    /// own data, and the start of the next interval. Called by the flush,
    /// once per interval, under the flush gate.
    pub fn flush(&self, flushed_at_ms: i64) -> i64 {
        let newest = self.newest_since_flush_ms.swap(NONE, Ordering::AcqRel);
        let base = if newest == NONE {
            flushed_at_ms
        } else {
            newest.min(flushed_at_ms)
        };
        base.saturating_sub(self.delay_ms)
            .max(flushed_at_ms.saturating_sub(self.allowed_lateness_ms))
    }
}

/// Minutes that received data after they were complete, waiting for the
/// alarm evaluator to look at them again once that data is committed.
#[derive(Debug, Default)]
pub struct LateMinutes {
    minutes: Mutex<BTreeSet<i64>>,
}

impl LateMinutes {
    pub fn add(&self, minutes: impl IntoIterator<Item = i64>) {
        let mut set = self.minutes.lock();
        for m in minutes {
            if set.len() >= MAX_LATE_MINUTES {
                tracing::warn!(
                    minute_ms = m,
                    "too many late minutes waiting for re-evaluation; dropped"
                );
                break;
            }
            set.insert(m);
        }
    }

    /// Takes every minute noted so far, oldest first.
    pub fn take(&self) -> Vec<i64> {
        std::mem::take(&mut *self.minutes.lock())
            .into_iter()
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.minutes.lock().is_empty()
    }
}

/// The minutes among `buckets` already complete when everything before
/// `complete_through_ms` is in, with how many items fell in them.
pub fn late_buckets(
    buckets: impl Iterator<Item = i64>,
    complete_through_ms: i64,
) -> (u64, BTreeSet<i64>) {
    let mut count = 0;
    let mut minutes = BTreeSet::new();
    for bucket in buckets {
        if bucket + MINUTE_MS <= complete_through_ms {
            count += 1;
            minutes.insert(bucket);
        }
    }
    (count, minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_trails_the_newest_event_then_the_clock_when_idle() {
        let c = EventClock::new(2_000, 600_000);
        // Idle: the wall clock, less the delay.
        assert_eq!(c.flush(100_000), 98_000);
        // Events half a second behind: the watermark trails them.
        c.accepted(100_500);
        c.accepted(100_200);
        assert_eq!(c.flush(101_000), 98_500);
        // Nothing since: back to the clock.
        assert_eq!(c.flush(102_000), 100_000);
        // An event ahead of the clock claims no more than the clock.
        c.accepted(500_000);
        assert_eq!(c.flush(103_000), 101_000);
    }

    #[test]
    fn a_backfilling_source_holds_the_watermark_back_no_further_than_the_lateness() {
        let c = EventClock::new(2_000, 600_000);
        c.accepted(1_000);
        assert_eq!(c.flush(10_000_000), 10_000_000 - 600_000);
    }

    #[test]
    fn without_a_delay_an_idle_node_claims_its_flush() {
        let c = EventClock::new(0, 600_000);
        assert_eq!(c.flush(5_000), 5_000);
    }

    #[test]
    fn late_buckets_are_those_ending_by_the_complete_horizon() {
        let (n, minutes) =
            late_buckets([0, 0, MINUTE_MS, 2 * MINUTE_MS].into_iter(), 2 * MINUTE_MS);
        assert_eq!(n, 3);
        assert_eq!(minutes.into_iter().collect::<Vec<_>>(), vec![0, MINUTE_MS]);
    }

    #[test]
    fn late_minutes_are_taken_once_oldest_first() {
        let l = LateMinutes::default();
        l.add([3 * MINUTE_MS, MINUTE_MS, 3 * MINUTE_MS]);
        assert!(!l.is_empty());
        assert_eq!(l.take(), vec![MINUTE_MS, 3 * MINUTE_MS]);
        assert!(l.take().is_empty());
    }
}
