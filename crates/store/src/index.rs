//! The in-memory series index every store keeps; the commit planner
//! (`plan.rs`) plans against it.
//!
//! The index also keeps when each series was last updated (the `now_ms` of
//! the last commit that merged an increment into it), which is what series
//! expiry ([`SeriesIndex::plan_expiry`]) reads, and each series' open
//! minute (the one not yet folded into its hour and day, `plan.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use strata_model::{Kind, SeriesKey};

use crate::backend::{BucketKey, RestoredSeries};
use crate::plan::CommitPlan;
use crate::{DecodeError, Event, EventKind, MetricInfo, SeriesId, StoreError};

/// Every known series, by key and by metric.
///
/// Readers (query API, selectors) look series up here instead of in the
/// database; a store changes it only after its commit is durable.
#[derive(Debug, Default)]
pub(crate) struct SeriesIndex {
    /// Resolves an increment's key to the id its buckets are stored under
    /// (foldhash, seeded per process: SipHash was a twentieth of the global
    /// tier's commit).
    ids: foldhash::HashMap<Arc<SeriesKey>, SeriesId>,
    /// The same ids by the address of the key `Arc` held in `ids`: an
    /// increment carrying that very `Arc` (a federation stream names each
    /// series once and hands the same `Arc` on, through the shards, to
    /// every commit) is found without hashing its key, which was a tenth
    /// of the global tier's CPU. Sound because `ids` holds each of these
    /// `Arc`s: no other live key can have the address while its entry is
    /// here.
    by_address: foldhash::HashMap<usize, SeriesId>,
    /// Per metric, sorted by name: its kind, fixed at first commit, and its
    /// series for listing and selector matching.
    metrics: BTreeMap<String, MetricEntry>,
    /// The id the next new series gets; ids are never reused.
    next_id: SeriesId,
    /// Per series, what planning asks about it for every increment, in one
    /// place: one lookup where a map for each (and the metric's kind by
    /// name) was a tenth of the global tier's commit.
    series: foldhash::HashMap<SeriesId, SeriesEntry>,
}

#[derive(Debug)]
struct MetricEntry {
    kind: Kind,
    series: Vec<Arc<SeriesKey>>,
}

/// What the index keeps per series beside its key.
#[derive(Clone, Copy, Debug)]
struct SeriesEntry {
    /// Its metric's kind.
    kind: Kind,
    /// The `now_ms` of the last commit that merged into it: the clock series
    /// expiry compares against. [`NONE`] before the first.
    last_seen: i64,
    /// Its open minute: the newest minute bucket, not yet folded into its
    /// hour and day (`plan.rs`). [`NONE`] when every minute is folded.
    open: i64,
}

/// No time: `i64::MIN` is no minute's start (it is not a multiple of a
/// minute) and before any commit.
const NONE: i64 = i64::MIN;

/// `NONE` as `None`.
fn time(ms: i64) -> Option<i64> {
    (ms != NONE).then_some(ms)
}

/// What planning learns of a known series in one lookup.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Known {
    /// Its metric's kind.
    pub(crate) kind: Kind,
    /// Its open minute, if it has one.
    pub(crate) open: Option<i64>,
}

impl SeriesIndex {
    /// An empty index whose first series will get id `next_id`.
    pub(crate) fn new(next_id: SeriesId) -> Self {
        SeriesIndex {
            next_id,
            ..SeriesIndex::default()
        }
    }

    /// The index of what a backend restored: every metric and series, with
    /// their last-update stamps; a series without a stamp (which a store
    /// upgraded from before series expiry has) counts as updated at
    /// `now_ms`. A series whose metric is missing is corruption.
    pub(crate) fn restore(
        metrics: Vec<(String, Kind)>,
        series: Vec<RestoredSeries>,
        next_id: Option<SeriesId>,
        now_ms: i64,
    ) -> Result<Self, StoreError> {
        let mut index = SeriesIndex::new(1);
        for (name, kind) in metrics {
            index.add_metric(&name, kind);
        }
        let mut unstamped = 0u64;
        for s in series {
            let key = Arc::new(s.key);
            if !index.add_series(s.id, Arc::clone(&key)) {
                return Err(StoreError::corrupt(
                    format_args!("series {} ({key})", s.id),
                    DecodeError::Inconsistent("its metric has no recorded kind".to_owned()),
                ));
            }
            if s.last_update_ms.is_none() {
                unstamped += 1;
            }
            // A stamp an older version wrote exactly counts as its minute's
            // end, as the stamps written now do (`plan::durable_stamp`).
            let seen = s.last_update_ms.map_or(now_ms, crate::plan::durable_stamp);
            index.set_seen(s.id, seen);
            index.set_open(s.id, s.open_minute_ms);
        }
        if unstamped > 0 {
            tracing::warn!(
                series = unstamped,
                "series without a last-update stamp count as updated now"
            );
        }
        if let Some(next_id) = next_id {
            index.reserve_ids_below(next_id);
        }
        Ok(index)
    }

    pub(crate) fn id_of(&self, key: &SeriesKey) -> Option<SeriesId> {
        self.ids.get(key).copied()
    }

    /// [`SeriesIndex::id_of`], by address first when `key` is the `Arc` the
    /// index holds.
    pub(crate) fn id_of_arc(&self, key: &Arc<SeriesKey>) -> Option<SeriesId> {
        match self.by_address.get(&address(key)) {
            Some(&id) => Some(id),
            None => self.id_of(key),
        }
    }

    pub(crate) fn kind_of(&self, metric: &str) -> Option<Kind> {
        self.metrics.get(metric).map(|m| m.kind)
    }

    /// Records a metric's kind; a metric keeps the kind it was first given.
    pub(crate) fn add_metric(&mut self, name: &str, kind: Kind) {
        self.metrics
            .entry(name.to_owned())
            .or_insert_with(|| MetricEntry {
                kind,
                series: Vec::new(),
            });
    }

    /// Adds a series of an already recorded metric.
    ///
    /// Returns false (and adds nothing) when the metric has no recorded kind:
    /// the store then treats its tables as inconsistent.
    pub(crate) fn add_series(&mut self, id: SeriesId, key: Arc<SeriesKey>) -> bool {
        let Some(metric) = self.metrics.get_mut(key.metric()) else {
            return false;
        };
        if self.ids.insert(Arc::clone(&key), id).is_none() {
            self.by_address.insert(address(&key), id);
            metric.series.push(key);
            self.series.insert(
                id,
                SeriesEntry {
                    kind: metric.kind,
                    last_seen: NONE,
                    open: NONE,
                },
            );
        }
        self.next_id = self.next_id.max(id.saturating_add(1));
        true
    }

    /// Applies what a committed plan created and the series it updated.
    pub(crate) fn apply(&mut self, plan: &CommitPlan) {
        for (name, kind) in &plan.new_metrics {
            self.add_metric(name, *kind);
        }
        for (id, key) in &plan.new_series {
            self.add_series(*id, Arc::clone(key));
        }
        for &(id, seen_ms) in &plan.seen {
            self.set_seen(id, seen_ms);
        }
        for &(id, open) in &plan.open {
            self.set_open(id, open);
        }
    }

    /// Records the open minute of a known series.
    fn set_open(&mut self, id: SeriesId, open: Option<i64>) {
        if let Some(entry) = self.series.get_mut(&id) {
            entry.open = open.unwrap_or(NONE);
        }
    }

    /// The kind and open minute of `id`, if it is known.
    pub(crate) fn known(&self, id: SeriesId) -> Option<Known> {
        self.series.get(&id).map(|e| Known {
            kind: e.kind,
            open: time(e.open),
        })
    }

    /// The open minute of `id`: its newest minute, not yet folded into its
    /// hour and day.
    pub(crate) fn open_minute(&self, id: SeriesId) -> Option<i64> {
        self.series.get(&id).and_then(|e| time(e.open))
    }

    /// Every series whose open minute starts before `before_ms`, with it,
    /// ascending by id: what minute retention folds before deleting.
    pub(crate) fn opens_before(&self, before_ms: i64) -> Vec<(SeriesId, Arc<SeriesKey>, i64)> {
        let mut opens: Vec<_> = self
            .metrics
            .values()
            .flat_map(|m| &m.series)
            .filter_map(|key| {
                let id = self.id_of_arc(key)?;
                let minute_ms = self.open_minute(id).filter(|&m| m < before_ms)?;
                Some((id, Arc::clone(key), minute_ms))
            })
            .collect();
        opens.sort_unstable_by_key(|(id, _, _)| *id);
        opens
    }

    /// The id the next new series will get.
    pub(crate) fn next_id(&self) -> SeriesId {
        self.next_id
    }

    /// Makes sure no series id below `next_id` is handed out again (ids of
    /// expired series stay retired across restarts).
    pub(crate) fn reserve_ids_below(&mut self, next_id: SeriesId) {
        self.next_id = self.next_id.max(next_id);
    }

    /// When `id` was last updated, if it is known and was.
    pub(crate) fn last_seen(&self, id: SeriesId) -> Option<i64> {
        self.series.get(&id).and_then(|e| time(e.last_seen))
    }

    /// Records when the known series `id` was last updated (never moves it
    /// back).
    pub(crate) fn set_seen(&mut self, id: SeriesId, seen_ms: i64) {
        if let Some(entry) = self.series.get_mut(&id) {
            entry.last_seen = entry.last_seen.max(seen_ms);
        }
    }

    /// Which series expiry removes: every series last updated before
    /// `idle_before(series)` (one never stamped counts as updated at
    /// `i64::MIN`), and the metrics left without a series. Asks
    /// `idle_before` about each series once, metric by metric.
    pub(crate) fn plan_expiry(&self, idle_before: &dyn Fn(&SeriesKey) -> i64) -> Expiry {
        let mut expiry = Expiry::default();
        for (name, metric) in &self.metrics {
            let mut kept = 0;
            for key in &metric.series {
                let Some(id) = self.id_of_arc(key) else {
                    continue;
                };
                if self.last_seen(id).unwrap_or(i64::MIN) < idle_before(key) {
                    expiry.series.push((id, Arc::clone(key)));
                } else {
                    kept += 1;
                }
            }
            if kept == 0 && !metric.series.is_empty() {
                expiry.metrics.push(name.clone());
            }
        }
        expiry.series.sort_unstable_by_key(|(id, _)| *id);
        expiry
    }

    /// Forgets what a committed expiry removed.
    pub(crate) fn apply_expiry(&mut self, expiry: &Expiry) {
        for (id, key) in &expiry.series {
            if let Some((held, _)) = self.ids.remove_entry(key) {
                self.by_address.remove(&address(&held));
            }
            self.series.remove(id);
        }
        let ids = &self.ids;
        for metric in self.metrics.values_mut() {
            metric.series.retain(|key| ids.contains_key(key));
        }
        for name in &expiry.metrics {
            self.metrics.remove(name);
        }
    }

    pub(crate) fn metrics(&self) -> Vec<MetricInfo> {
        self.metrics
            .iter()
            .map(|(name, m)| MetricInfo {
                name: name.clone(),
                kind: m.kind,
                series: m.series.len(),
            })
            .collect()
    }

    pub(crate) fn series_of(&self, metric: &str) -> Vec<Arc<SeriesKey>> {
        self.metrics
            .get(metric)
            .map(|m| m.series.clone())
            .unwrap_or_default()
    }

    pub(crate) fn series_count(&self) -> usize {
        self.ids.len()
    }
}

/// The address of the key an `Arc` points to.
fn address(key: &Arc<SeriesKey>) -> usize {
    Arc::as_ptr(key) as usize
}

/// What one series expiry removes, computed before anything is deleted.
#[derive(Debug, Default)]
pub(crate) struct Expiry {
    /// The idle series, ascending by id.
    pub(crate) series: Vec<(SeriesId, Arc<SeriesKey>)>,
    /// Metrics all of whose series are idle: they are forgotten with them,
    /// so their kind is no longer fixed.
    pub(crate) metrics: Vec<String>,
}

/// A stored bucket state that could not be read, moved aside by a commit so
/// that it stops nothing else.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Quarantined {
    pub(crate) key: BucketKey,
    /// The series' display form, for the event and the log.
    pub(crate) series: String,
    /// Why the bytes did not decode.
    pub(crate) reason: String,
}

/// Why a stored state is unreadable, as its event and log line say it.
pub(crate) fn unreadable_reason(e: &DecodeError) -> String {
    match e {
        // The model's reason alone: the event already says it is a state.
        DecodeError::State(e) => e.to_string(),
        other => other.to_string(),
    }
}

impl Quarantined {
    /// The event appended, in the same transaction, when it is moved aside.
    pub(crate) fn event(&self, ts_ms: i64) -> Event {
        Event::new(
            ts_ms,
            EventKind::StateQuarantined,
            format!(
                "unreadable {} bucket {} of {} moved to quarantine; the bucket starts afresh: {}",
                self.key.resolution, self.key.bucket_ms, self.series, self.reason
            ),
        )
    }

    /// Logs it; called once it is durably in quarantine.
    pub(crate) fn log(&self) {
        tracing::error!(
            series = %self.series,
            resolution = %self.key.resolution,
            bucket_ms = self.key.bucket_ms,
            reason = %self.reason,
            "unreadable stored state moved to quarantine; the bucket starts afresh"
        );
    }
}
