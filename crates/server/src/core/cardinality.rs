//! Cardinality protection: how many distinct series and metrics each source
//! may bring (`limits.max_series_per_source`, `limits.max_metrics_per_source`).
//!
//! A source is a declared downstream at a receiving tier, or, for what
//! applications send a node directly (NDJSON, native gRPC), the node itself:
//! one budget for all its direct ingest. A request that would take a source
//! beyond either limit with a *new* series or metric is refused whole, naming
//! the limit; requests with only series the source already has keep flowing.
//! A federation batch that would is merged without its new series
//! ([`Cardinality::retain_known`]): a batch is a whole region's flush, and
//! its existing series must keep flowing too.
//!
//! Each source keeps two hash maps, 64-bit hashes of its series and metrics
//! (keyed per process, so that nobody can forge collisions) to the minute each
//! was last seen: about 20 bytes per series, bounded by the limit. They count
//! what the node has seen since it started (the store keeps merged state, not
//! which source brought a series), so after a restart a source may bring up to
//! its limit of series anew. An entry not seen for the longest series TTL of
//! the node (`storage.series_ttl_s`, `[[expiry]]` rules) is forgotten when the
//! source is at its limit, as its series has expired from the store by then;
//! so a source whose series churn is not stopped for good.
//!
//! The check is one lookup per distinct series of a request (a touch of its
//! last-seen minute), under the source's own lock; never one per sample.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use foldhash::fast::RandomState as FastState;
use foldhash::quality::RandomState;
use parking_lot::Mutex;
use strata_model::{MINUTE_MS, SeriesKey};

use crate::core::limits::abbreviated;

/// A refused request or batch: which source, which limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "source {source_id:?} is at {key} ({limit}): {new} new {what} refused (the first: {example}); its existing series are still accepted"
)]
pub struct CardinalityError {
    pub source_id: String,
    /// `limits.max_series_per_source` or `limits.max_metrics_per_source`.
    pub key: &'static str,
    pub limit: usize,
    /// How many new series (or metrics) the refused request brought.
    pub new: usize,
    /// `series` or `metrics`.
    pub what: &'static str,
    /// The first new one, abbreviated.
    pub example: String,
    /// The first refusal of this source in its minute: log it and record an
    /// event (later ones in the same minute are only counted).
    pub report: bool,
}

/// What an admitted request added, so that it can be taken back when the
/// request is refused for another reason after the check.
#[derive(Debug, Default)]
pub struct Admitted {
    source: Option<usize>,
    series: Vec<u64>,
    metrics: Vec<u64>,
}

/// Every source's series and metrics.
pub struct Cardinality {
    max_series: usize,
    max_metrics: usize,
    /// Entries not seen for this many minutes may be forgotten.
    idle_minutes: u32,
    /// Keyed per process: series hashes cannot be forged to collide.
    hasher: RandomState,
    /// Fixed at start: this node and its declared downstreams.
    index: HashMap<String, usize>,
    sources: Vec<SourceSets>,
}

/// One source's budget.
struct SourceSets {
    id: String,
    sets: Mutex<Sets>,
    /// Requests or batches refused, on `/metrics`.
    refusals: AtomicU64,
    /// The minute of the last reported refusal: one report a minute.
    reported_minute: AtomicI64,
}

/// Hash → minute last seen.
#[derive(Default)]
struct Sets {
    series: HashMap<u64, u32, FastState>,
    metrics: HashMap<u64, u32, FastState>,
    /// The last minute idle entries were forgotten in: at most once a minute.
    swept_minute: u32,
}

impl Cardinality {
    /// Budgets for `sources` (this node's id first, then its downstreams).
    pub fn new<'a>(
        sources: impl IntoIterator<Item = &'a str>,
        max_series: usize,
        max_metrics: usize,
        idle_s: u64,
    ) -> Cardinality {
        let mut index = HashMap::new();
        let mut list = Vec::new();
        for id in sources {
            if index.contains_key(id) {
                continue;
            }
            index.insert(id.to_string(), list.len());
            list.push(SourceSets {
                id: id.to_string(),
                sets: Mutex::new(Sets::default()),
                refusals: AtomicU64::new(0),
                reported_minute: AtomicI64::new(i64::MIN),
            });
        }
        Cardinality {
            max_series,
            max_metrics,
            idle_minutes: u32::try_from(idle_s.div_ceil(60)).unwrap_or(u32::MAX),
            hasher: RandomState::default(),
            index,
            sources: list,
        }
    }

    /// The budgets of a node: its own direct ingest (under its id) and each
    /// declared downstream, with `[limits]`; entries idle for the longest
    /// series TTL of the node are forgotten.
    pub fn for_config(config: &crate::config::Config) -> Cardinality {
        let longest_ttl_s = config
            .expiry
            .iter()
            .filter_map(|r| r.series_ttl_s)
            .fold(config.storage.series_ttl_s, u64::max);
        let sources = std::iter::once(config.node.id.as_str())
            .chain(config.downstream.iter().map(|d| d.id.as_str()));
        Cardinality::new(
            sources,
            config.limits.max_series_per_source,
            config.limits.max_metrics_per_source,
            longest_ttl_s,
        )
    }

    /// Admits the distinct `series` of one request or batch from `source`:
    /// all of them, or, when the new ones would take the source beyond a
    /// limit, none (and the error names the limit). An unknown source has no
    /// budget to check.
    pub fn admit<'a>(
        &self,
        source: &str,
        series: impl IntoIterator<Item = &'a SeriesKey>,
        now_ms: i64,
    ) -> Result<Admitted, CardinalityError> {
        let Some(&at) = self.index.get(source) else {
            return Ok(Admitted::default());
        };
        let s = &self.sources[at];
        let minute = u32::try_from(now_ms.max(0) / MINUTE_MS).unwrap_or(u32::MAX);
        let mut sets = s.sets.lock();
        let mut new = Admitted {
            source: Some(at),
            ..Admitted::default()
        };
        let mut new_series_seen = HashSet::<u64, FastState>::default();
        // The first new series and the first series of a new metric, which a
        // refusal names.
        let (mut first_series, mut first_metric) = (None, None);
        for key in series {
            let metric = self.hasher.hash_one(key.metric());
            let metric_is_new = match sets.metrics.get_mut(&metric) {
                Some(seen) => {
                    *seen = minute;
                    false
                }
                None => !new.metrics.contains(&metric),
            };
            if metric_is_new {
                new.metrics.push(metric);
                first_metric.get_or_insert(key);
            }
            let h = self.hasher.hash_one(key);
            match sets.series.get_mut(&h) {
                Some(seen) => *seen = minute,
                None if new_series_seen.insert(h) => {
                    new.series.push(h);
                    first_series.get_or_insert(key);
                }
                None => {}
            }
        }
        if new.series.is_empty() {
            return Ok(Admitted::default());
        }
        if let Some(over) = self.over(&mut sets, &new, minute) {
            drop(sets);
            let example = match over.what {
                "metrics" => first_metric.map(|k| abbreviated(k.metric())),
                _ => first_series.map(|k| abbreviated(&k.to_string())),
            };
            return Err(refused(s, over, example.unwrap_or_default(), minute));
        }
        for &h in &new.series {
            sets.series.insert(h, minute);
        }
        for &h in &new.metrics {
            sets.metrics.insert(h, minute);
        }
        Ok(new)
    }

    /// Which limit the new entries would exceed, if any, after forgetting
    /// idle entries once this minute.
    fn over(&self, sets: &mut Sets, new: &Admitted, minute: u32) -> Option<Over> {
        let exceeds = |sets: &Sets| {
            if sets.metrics.len() + new.metrics.len() > self.max_metrics {
                Some(Over {
                    key: "limits.max_metrics_per_source",
                    limit: self.max_metrics,
                    new: new.metrics.len(),
                    what: "metrics",
                })
            } else if sets.series.len() + new.series.len() > self.max_series {
                Some(Over {
                    key: "limits.max_series_per_source",
                    limit: self.max_series,
                    new: new.series.len(),
                    what: "series",
                })
            } else {
                None
            }
        };
        exceeds(sets)?;
        if sets.swept_minute != minute {
            sets.swept_minute = minute;
            let oldest = minute.saturating_sub(self.idle_minutes);
            sets.series.retain(|_, seen| *seen >= oldest);
            sets.metrics.retain(|_, seen| *seen >= oldest);
        }
        exceeds(sets)
    }

    /// Keeps the increments of series `source` already has (touching their
    /// last-seen minute) and drops those of series it does not: what a
    /// federation batch refused by [`Cardinality::admit`] still merges, so a
    /// region over its budget keeps its existing series flowing. Returns how
    /// many increments were dropped.
    pub fn retain_known(
        &self,
        source: &str,
        increments: &mut Vec<strata_model::Increment>,
        now_ms: i64,
    ) -> usize {
        let Some(&at) = self.index.get(source) else {
            return 0;
        };
        let minute = u32::try_from(now_ms.max(0) / MINUTE_MS).unwrap_or(u32::MAX);
        let mut sets = self.sources[at].sets.lock();
        let before = increments.len();
        increments.retain(
            |inc| match sets.series.get_mut(&self.hasher.hash_one(&*inc.series)) {
                Some(seen) => {
                    *seen = minute;
                    true
                }
                None => false,
            },
        );
        before - increments.len()
    }

    /// Takes back what [`Cardinality::admit`] added for a request refused
    /// after it.
    pub fn release(&self, admitted: Admitted) {
        let Some(at) = admitted.source else {
            return;
        };
        let mut sets = self.sources[at].sets.lock();
        for h in admitted.series {
            sets.series.remove(&h);
        }
        for h in admitted.metrics {
            sets.metrics.remove(&h);
        }
    }

    /// Per source, in the order given at start: `(id, series counted,
    /// refusals)`, for `/metrics`.
    pub fn figures(&self) -> Vec<(&str, u64, u64)> {
        self.sources
            .iter()
            .map(|s| {
                let series = s.sets.lock().series.len() as u64;
                (s.id.as_str(), series, s.refusals.load(Ordering::Relaxed))
            })
            .collect()
    }
}

/// The limit a request would exceed.
struct Over {
    key: &'static str,
    limit: usize,
    /// New series (or metrics) the request brings.
    new: usize,
    what: &'static str,
}

/// Counts a refusal of `s` and builds its error; only the first of the
/// source's minute is to be reported.
fn refused(s: &SourceSets, over: Over, example: String, minute: u32) -> CardinalityError {
    s.refusals.fetch_add(1, Ordering::Relaxed);
    let minute = i64::from(minute);
    let report = s.reported_minute.swap(minute, Ordering::Relaxed) != minute;
    CardinalityError {
        source_id: s.id.clone(),
        key: over.key,
        limit: over.limit,
        new: over.new,
        what: over.what,
        example,
        report,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(metric: &str, i: usize) -> SeriesKey {
        SeriesKey::new(metric, [("i".to_string(), i.to_string())]).expect("valid series")
    }

    fn keys(metric: &str, range: std::ops::Range<usize>) -> Vec<SeriesKey> {
        range.map(|i| key(metric, i)).collect()
    }

    const NOW: i64 = 1_763_800_000_000;

    #[test]
    fn new_series_beyond_the_limit_are_refused_whole_and_existing_ones_flow() {
        let c = Cardinality::new(["edge", "local"], 10, 10, 3600);
        assert!(c.admit("edge", &keys("m", 0..8), NOW).is_ok());
        // 8 known + 3 new > 10: refused whole, nothing of it counted.
        let err = c.admit("edge", &keys("m", 5..11), NOW).unwrap_err();
        assert_eq!(err.key, "limits.max_series_per_source");
        assert_eq!((err.limit, err.new, err.what), (10, 3, "series"));
        assert!(err.report);
        assert!(err.to_string().contains("m{i=\"8\"}"), "{err}");
        assert!(
            err.to_string()
                .contains("at limits.max_series_per_source (10)"),
            "{err}"
        );
        assert_eq!(c.figures()[0], ("edge", 8, 1));
        // Existing series keep flowing; two more new ones fit.
        assert!(c.admit("edge", &keys("m", 0..8), NOW).is_ok());
        assert!(c.admit("edge", &keys("m", 0..10), NOW).is_ok());
        // A second refusal in the same minute is counted, not reported.
        let err = c.admit("edge", &keys("m", 10..11), NOW).unwrap_err();
        assert!(!err.report);
        assert_eq!(c.figures()[0], ("edge", 10, 2));
        // Each source has its own budget; an unknown source none to check.
        assert!(c.admit("local", &keys("m", 0..10), NOW).is_ok());
        assert!(c.admit("nobody", &keys("m", 0..100), NOW).is_ok());
    }

    #[test]
    fn repeated_series_in_one_request_count_once() {
        let c = Cardinality::new(["a"], 2, 2, 3600);
        let mut batch = keys("m", 0..2);
        batch.extend(keys("m", 0..2));
        assert!(c.admit("a", &batch, NOW).is_ok());
        assert_eq!(c.figures()[0].1, 2);
    }

    #[test]
    fn new_metrics_beyond_their_limit_are_refused() {
        let c = Cardinality::new(["a"], 100, 2, 3600);
        assert!(c.admit("a", &[key("m1", 0), key("m2", 0)], NOW).is_ok());
        let err = c.admit("a", &[key("m3", 0)], NOW).unwrap_err();
        assert_eq!(err.key, "limits.max_metrics_per_source");
        assert_eq!(err.what, "metrics");
        assert!(err.to_string().contains("the first: m3"), "{err}");
        // New series of known metrics are fine.
        assert!(c.admit("a", &keys("m1", 1..50), NOW).is_ok());
    }

    #[test]
    fn a_released_admission_frees_its_room() {
        let c = Cardinality::new(["a"], 3, 3, 3600);
        let admitted = c.admit("a", &keys("m", 0..3), NOW).expect("fits");
        assert!(c.admit("a", &keys("m", 3..4), NOW).is_err());
        c.release(admitted);
        assert_eq!(c.figures()[0].1, 0);
        assert!(c.admit("a", &keys("m", 3..6), NOW).is_ok());
    }

    #[test]
    fn idle_series_are_forgotten_once_the_source_is_at_its_limit() {
        let c = Cardinality::new(["a"], 3, 3, 120);
        assert!(c.admit("a", &keys("m", 0..3), NOW).is_ok());
        // One minute later, still within the TTL: refused.
        assert!(c.admit("a", &keys("m", 3..4), NOW + 60_000).is_err());
        // Series 2 stays busy; 0 and 1 go idle past the TTL (2 minutes).
        assert!(c.admit("a", &keys("m", 2..3), NOW + 120_000).is_ok());
        assert!(c.admit("a", &keys("m", 3..5), NOW + 4 * 60_000).is_ok());
        assert_eq!(c.figures()[0].1, 3);
    }
}
