//! Retention: deletes buckets past their retention per resolution, events
//! past theirs, and expires series not updated within the series TTL. The
//! commit writer runs it at its first commit and then every minute.

use strata_store::Resolution;

use crate::context::Context;
use crate::core::stats::Stats;

/// Retention per step, for the event log and for idle series, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub minute_ms: i64,
    pub hour_ms: i64,
    pub day_ms: i64,
    pub events_ms: i64,
    /// Series not updated for this long expire with their buckets (DESIGN §5).
    pub series_ms: i64,
}

impl Retention {
    /// The configured retentions in milliseconds. Saturates rather than wraps,
    /// so no value, even one validation would refuse, turns into a negative
    /// retention that deletes everything.
    pub fn from_config(storage: &crate::config::StorageConfig) -> Self {
        use strata_model::time::{DAY_MS, HOUR_MS, MINUTE_MS, span_ms};
        Retention {
            minute_ms: span_ms(storage.retention_minutes, MINUTE_MS),
            hour_ms: span_ms(storage.retention_hours, HOUR_MS),
            day_ms: span_ms(storage.retention_days, DAY_MS),
            events_ms: span_ms(storage.event_retention_days, DAY_MS),
            series_ms: span_ms(storage.series_ttl_s, 1_000),
        }
    }

    /// Keeps everything (tests and benchmarks).
    pub fn forever() -> Self {
        let ms = i64::MAX / 4;
        Retention {
            minute_ms: ms,
            hour_ms: ms,
            day_ms: ms,
            events_ms: ms,
            series_ms: ms,
        }
    }
}

/// Deletes buckets and events past their retention, and expires series
/// not updated within the series TTL.
pub(crate) fn apply(ctx: &Context, r: &Retention, now_ms: i64) {
    let store = &ctx.store;
    for (resolution, keep_ms) in [
        (Resolution::Minute, r.minute_ms),
        (Resolution::Hour, r.hour_ms),
        (Resolution::Day, r.day_ms),
    ] {
        let before = resolution.bucket_start(now_ms.saturating_sub(keep_ms));
        match store.delete_before(resolution, before) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(deleted = n, %resolution, before_ms = before, "retention deleted old buckets")
            }
            Err(e) => tracing::warn!(error = %e, %resolution, "retention failed"),
        }
    }
    if let Err(e) = store.delete_events_before(now_ms.saturating_sub(r.events_ms)) {
        tracing::warn!(error = %e, "event retention failed");
    }
    // Series TTL (DESIGN §5).
    let idle_before = now_ms.saturating_sub(r.series_ms);
    match store.expire_series(idle_before) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            expired = n,
            idle_before_ms = idle_before,
            "series not updated within the series TTL expired"
        ),
        Err(e) => tracing::warn!(error = %e, "series expiry failed"),
    }
    Stats::add(&ctx.stats.retention_runs_total, 1);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use strata_model::{Increment, SeriesKey, State};
    use strata_store::{Commit, MemoryStore, Store, StoreOptions};

    #[test]
    fn retention_expires_series_idle_for_longer_than_the_ttl() {
        let retention = Retention {
            series_ms: 3_000,
            ..Retention::forever()
        };
        let store = Arc::new(MemoryStore::new(StoreOptions::default()));
        let ctx = Context::new("t", store.clone());
        let key = |s: &str| Arc::new(SeriesKey::new("req", [("s".into(), s.into())]).unwrap());
        for (series, now_ms) in [("old", 1_000), ("new", 5_000)] {
            store
                .commit(Commit {
                    increments: &[Increment {
                        series: key(series),
                        bucket_ms: 0,
                        state: State::Counter(1),
                    }],
                    progress: &[],
                    spool_watermark_ms: None,
                    now_ms,
                })
                .unwrap();
        }
        // Both updated within the TTL: nothing expires.
        apply(&ctx, &retention, 3_999);
        assert_eq!(store.series_count(), 2);
        apply(&ctx, &retention, 5_999);
        assert_eq!(store.series_of("req"), vec![key("new")]);
    }

    #[test]
    fn configured_retentions_convert_to_ms_without_wrapping() {
        use crate::config::{MAX_RETENTION_S, StorageConfig};
        let largest = StorageConfig {
            retention_minutes: MAX_RETENTION_S / 60,
            retention_hours: MAX_RETENTION_S / 3600,
            retention_days: MAX_RETENTION_S / 86_400,
            event_retention_days: MAX_RETENTION_S / 86_400,
            series_ttl_s: MAX_RETENTION_S,
            ..StorageConfig::default()
        };
        let r = Retention::from_config(&largest);
        for ms in [r.minute_ms, r.hour_ms, r.day_ms, r.events_ms, r.series_ms] {
            assert_eq!(ms, 3_153_600_000_000);
        }
        // Beyond what validation accepts: saturates instead of wrapping negative
        // (`10^16 s * 1000` used to become about -8.4e18 ms).
        let huge = StorageConfig {
            retention_days: 9_999_999_999_999,
            series_ttl_s: 10_000_000_000_000_000,
            ..StorageConfig::default()
        };
        let r = Retention::from_config(&huge);
        assert_eq!((r.day_ms, r.series_ms), (i64::MAX, i64::MAX));
    }

    #[test]
    fn retention_with_the_largest_or_saturated_values_deletes_nothing() {
        use crate::config::{MAX_RETENTION_S, StorageConfig};
        let at = 1_763_800_020_000;
        let ninety_nine_years = 99 * 365 * 86_400_000;
        for (storage, later) in [
            (
                StorageConfig {
                    retention_minutes: MAX_RETENTION_S / 60,
                    retention_hours: MAX_RETENTION_S / 3600,
                    retention_days: MAX_RETENTION_S / 86_400,
                    series_ttl_s: MAX_RETENTION_S,
                    ..StorageConfig::default()
                },
                at + ninety_nine_years,
            ),
            // Beyond the bounds: saturated, kept until the end of time.
            (
                StorageConfig {
                    retention_minutes: u64::MAX,
                    retention_hours: u64::MAX,
                    retention_days: 9_999_999_999_999,
                    event_retention_days: u64::MAX,
                    series_ttl_s: 10_000_000_000_000_000,
                    ..StorageConfig::default()
                },
                strata_model::time::MAX_TS_MS,
            ),
        ] {
            let retention = Retention::from_config(&storage);
            let store = Arc::new(MemoryStore::new(StoreOptions::default()));
            let ctx = Context::new("t", store.clone());
            let stats = ctx.stats.clone();
            let series = Arc::new(SeriesKey::new("req", [("s".into(), "a".into())]).unwrap());
            store
                .commit(Commit {
                    increments: &[Increment {
                        series: series.clone(),
                        bucket_ms: at,
                        state: State::Counter(7),
                    }],
                    progress: &[],
                    spool_watermark_ms: None,
                    now_ms: at,
                })
                .unwrap();
            // A day later, and as late as the retention reaches.
            for now_ms in [at + 86_400_000, later] {
                apply(&ctx, &retention, now_ms);
            }
            assert_eq!(store.series_of("req"), vec![series.clone()], "{storage:?}");
            for resolution in [Resolution::Minute, Resolution::Hour, Resolution::Day] {
                let buckets = store.read_at(&series, resolution, 0, i64::MAX).unwrap();
                assert_eq!(buckets.len(), 1, "{resolution} {storage:?}");
            }
            assert_eq!(stats.retention_runs_total.load(Ordering::Relaxed), 2);
        }
    }
}
