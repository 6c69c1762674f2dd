//! Lock-free latency histograms for `/metrics`: fixed buckets in seconds,
//! rendered as Prometheus classic histograms (`_bucket{le=…}`, `_sum`,
//! `_count`).
//!
//! An observation is two relaxed atomic adds (its bucket and the sum): no
//! lock, no allocation. Buckets are kept per bucket, not cumulative, and
//! [`LatencyHistogram::snapshot`] accumulates them, so the `+Inf` bucket and
//! the count are the same number by construction even while observations
//! land during a read. The sum is read separately and may trail the buckets
//! by the observations in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of the buckets, in seconds (`le`), ascending; `+Inf` follows.
pub const BUCKET_BOUNDS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets including the last, unbounded one.
const SLOTS: usize = BUCKET_BOUNDS_S.len() + 1;

/// A histogram of durations with the fixed [`BUCKET_BOUNDS_S`].
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last slot is above the
    /// highest bound.
    buckets: [AtomicU64; SLOTS],
    /// Sum of every observation, in nanoseconds: an integer so that adding
    /// it is one atomic instruction (584 years before it wraps).
    sum_ns: AtomicU64,
}

/// What a histogram held at one read.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts: `cumulative[i]` observations were at most
    /// `BUCKET_BOUNDS_S[i]`; the last entry is every observation (`+Inf`).
    pub cumulative: [u64; SLOTS],
    /// Sum of the observations, in seconds.
    pub sum_s: f64,
}

impl HistogramSnapshot {
    /// Number of observations (the `+Inf` bucket).
    pub fn count(&self) -> u64 {
        self.cumulative[SLOTS - 1]
    }
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        // `le` is inclusive: the first bound at or above the value.
        let slot = BUCKET_BOUNDS_S.partition_point(|bound| *bound < seconds);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A guard that records the time from now until it is dropped, so every
    /// return path of a handler is counted.
    pub fn start_timer(&self) -> Timer<'_> {
        Timer {
            histogram: self,
            started: Instant::now(),
        }
    }

    /// The cumulative buckets and the sum.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0u64; SLOTS];
        let mut total = 0u64;
        for (out, bucket) in cumulative.iter_mut().zip(&self.buckets) {
            total = total.saturating_add(bucket.load(Ordering::Relaxed));
            *out = total;
        }
        HistogramSnapshot {
            cumulative,
            sum_s: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Records the time since [`LatencyHistogram::start_timer`] when dropped.
#[must_use = "the duration is recorded when the timer is dropped"]
pub struct Timer<'a> {
    histogram: &'a LatencyHistogram,
    started: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed());
    }
}

/// The node's latency histograms, rendered on `/metrics`.
#[derive(Debug, Default)]
pub struct Latencies {
    /// `POST /api/v1/ingest`, from the request's arrival at the handler to
    /// its answer (with `?wait=commit`, the commit included).
    pub ingest_http: LatencyHistogram,
    /// Native gRPC `Ingest/Push`, likewise.
    pub ingest_grpc: LatencyHistogram,
    /// One store commit transaction of the commit writer (each attempt).
    pub flush_commit: LatencyHistogram,
    /// One write of the request log (every record waiting, one transaction).
    pub request_log_commit: LatencyHistogram,
    /// `GET /api/v1/query`, parsing to answer.
    pub query: LatencyHistogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(500)); // exactly 0.0005: le="0.0005"
        h.observe(Duration::from_micros(501)); // le="0.001"
        h.observe(Duration::from_millis(7)); // le="0.01"
        h.observe(Duration::from_secs(60)); // only +Inf
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[1], 2);
        assert_eq!(s.cumulative[3], 2, "0.005 holds nothing new");
        assert_eq!(s.cumulative[4], 3);
        assert_eq!(s.cumulative[SLOTS - 2], 3, "60 s is above the last bound");
        assert_eq!(s.count(), 4);
        assert!((s.sum_s - 60.008_001).abs() < 1e-9, "{}", s.sum_s);
    }

    #[test]
    fn a_timer_records_once_when_dropped() {
        let h = LatencyHistogram::default();
        {
            let _timer = h.start_timer();
            assert_eq!(h.snapshot().count(), 0);
        }
        assert_eq!(h.snapshot().count(), 1);
    }

    #[test]
    fn bounds_ascend() {
        assert!(BUCKET_BOUNDS_S.windows(2).all(|w| w[0] < w[1]));
    }
}
