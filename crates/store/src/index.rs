//! The in-memory series index every store keeps, and the commit planner that
//! turns a flush's increments into bucket writes against it.
//!
//! Planning is above the backends so that every backend gives one behaviour:
//! the same kind checks, the same merge order, the same series ids, the same
//! minute, hour and day rollups. A backend only loads the stored states the
//! plan starts from ([`SeriesIndex::lookup`] names them) and writes
//! the result.
//!
//! The index also keeps when each series was last updated (the `now_ms` of
//! the last commit that merged an increment into it), which is what series
//! expiry ([`SeriesIndex::plan_expiry`]) reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use strata_model::{Increment, Kind, ModelError, SeriesKey, State};

use crate::backend::{BucketKey, Buckets, RestoredSeries, Stored};
use crate::{DecodeError, Event, EventKind, MetricInfo, Resolution, SeriesId, StoreError};

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
    /// Per metric, sorted by name: its kind, fixed at first commit, and its
    /// series for listing and selector matching.
    metrics: BTreeMap<String, MetricEntry>,
    /// The id the next new series gets; ids are never reused.
    next_id: SeriesId,
    /// Per series, the `now_ms` of the last commit that merged into it: the
    /// clock series expiry compares against.
    last_seen: foldhash::HashMap<SeriesId, i64>,
}

#[derive(Debug)]
struct MetricEntry {
    kind: Kind,
    series: Vec<Arc<SeriesKey>>,
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
            index.set_seen(s.id, s.last_update_ms.unwrap_or(now_ms));
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
            metric.series.push(key);
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

    /// When `id` was last updated, if it is known.
    pub(crate) fn last_seen(&self, id: SeriesId) -> Option<i64> {
        self.last_seen.get(&id).copied()
    }

    /// Records when `id` was last updated (never moves it back).
    pub(crate) fn set_seen(&mut self, id: SeriesId, seen_ms: i64) {
        let at = self.last_seen.entry(id).or_insert(seen_ms);
        *at = (*at).max(seen_ms);
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
                let Some(&id) = self.ids.get(key) else {
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
            self.ids.remove(key);
            self.last_seen.remove(id);
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

    /// What planning a commit of `increments` starts from: the id of each
    /// one's series if it is known, and the stored buckets they may merge
    /// into (each known series' minute, hour and day bucket; sorted, without
    /// duplicates) for the backend to load.
    pub(crate) fn lookup(&self, increments: &[Increment]) -> Lookup {
        let ids: Vec<Option<SeriesId>> = increments
            .iter()
            .map(|inc| self.id_of(&inc.series))
            .collect();
        let mut keys = Vec::with_capacity(3 * ids.iter().flatten().count());
        for (inc, id) in increments.iter().zip(&ids) {
            if let Some(series) = *id {
                keys.extend(Resolution::ALL.map(|resolution| BucketKey {
                    resolution,
                    series,
                    bucket_ms: resolution.bucket_start(inc.bucket_ms),
                }));
            }
        }
        keys.sort_unstable();
        keys.dedup();
        Lookup { ids, keys }
    }
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

/// What one commit will write, computed before anything is written.
#[derive(Debug, Default)]
pub(crate) struct CommitPlan {
    /// Metrics seen for the first time, with the kind they are fixed to.
    pub(crate) new_metrics: Vec<(String, Kind)>,
    /// Series seen for the first time, with the ids assigned to them.
    pub(crate) new_series: Vec<(SeriesId, Arc<SeriesKey>)>,
    /// The merged state of every bucket this commit touches, per resolution
    /// (indexed by [`Resolution::index`]), to be written back whole.
    pub(crate) buckets: [Buckets; 3],
    /// Indexes (into the commit's increments) of those that merged, in order:
    /// exactly these go to the outgoing spool.
    pub(crate) merged: Vec<usize>,
    /// Increments that could not be merged, with the series they were for.
    pub(crate) errors: Vec<(String, ModelError)>,
    /// Every series an increment merged into, ascending by id, with its new
    /// last-update time (the commit's `now_ms`, never earlier than before).
    pub(crate) seen: Vec<(SeriesId, i64)>,
    /// Stored buckets this commit found unreadable: the store moves their
    /// bytes aside and the increments start them afresh.
    pub(crate) quarantined: Vec<Quarantined>,
}

impl CommitPlan {
    /// How many buckets this commit writes, over every resolution.
    pub(crate) fn bucket_count(&self) -> usize {
        self.buckets.iter().map(BTreeMap::len).sum()
    }
}

/// What [`SeriesIndex::lookup`] found for a commit.
#[derive(Debug)]
pub(crate) struct Lookup {
    /// Per increment, its series' id if the series is known.
    ids: Vec<Option<SeriesId>>,
    /// The stored buckets to load: sorted, without duplicates.
    pub(crate) keys: Vec<BucketKey>,
}

/// What a commit is planned from: the [`Lookup`], and the stored states of
/// its buckets as the backend loaded them, merged into in place.
///
/// The states are kept in a vector beside the sorted keys and found by
/// bisection, and the merged ones are handed to the write in key order: a
/// commit of tens of thousands of increments neither hashes nor inserts
/// each state into a map (a hash map of them cost a fifth of the global
/// tier's CPU; ordered maps filled in increment order, another tenth).
#[derive(Debug)]
pub(crate) struct Loaded {
    lookup: Lookup,
    /// `stored[i]` is the state of `lookup.keys[i]`: as loaded, merged
    /// into, or `Absent` (also once found unreadable).
    stored: Vec<Stored>,
    /// `changed[i]`: `stored[i]` was merged into (or started) and is written.
    changed: Vec<bool>,
}

impl Loaded {
    /// `stored` holds the states of `lookup.keys`, in the same order.
    pub(crate) fn new(lookup: Lookup, stored: Vec<Stored>) -> Self {
        debug_assert_eq!(lookup.keys.len(), stored.len());
        let changed = vec![false; stored.len()];
        Loaded {
            lookup,
            stored,
            changed,
        }
    }

    /// Position of `key` (one [`SeriesIndex::lookup`] named).
    fn position(&self, key: &BucketKey) -> Option<usize> {
        self.lookup.keys.binary_search(key).ok()
    }

    /// The changed states, per resolution, in key order.
    fn into_buckets(self) -> [Vec<((SeriesId, i64), State)>; 3] {
        let mut counts = [0; 3];
        for (key, changed) in self.lookup.keys.iter().zip(&self.changed) {
            counts[key.resolution.index()] += usize::from(*changed);
        }
        let mut out = counts.map(Vec::with_capacity);
        let entries = self.lookup.keys.into_iter().zip(self.stored);
        for ((key, stored), changed) in entries.zip(self.changed) {
            if let (true, Stored::State(state)) = (changed, stored) {
                out[key.resolution.index()].push(((key.series, key.bucket_ms), state));
            }
        }
        out
    }
}

/// Merges `increments` into the current bucket states of every
/// [`Resolution`]; `loaded` holds the stored state of every bucket
/// [`SeriesIndex::lookup`] names, and is merged into in place. A bucket
/// found unreadable is reported once in [`CommitPlan::quarantined`] and
/// treated as absent, so one corrupt state never stops the commit of
/// everything else.
///
/// Each increment goes into its minute, hour and day bucket, or into none of
/// them: an increment whose kind differs from its metric's kind, or whose
/// state one of those buckets refuses (different histogram precision, apdex
/// threshold), is skipped and reported once in [`CommitPlan::errors`] (the
/// minute's refusal first), so the three resolutions never disagree. A
/// skipped increment creates no series, no metric and no bucket, and does
/// not count as an update of its series. Several increments for one bucket
/// merge in order. Every series an increment merged into is stamped with
/// `now_ms` in [`CommitPlan::seen`].
pub(crate) fn plan_commit(
    index: &SeriesIndex,
    increments: &[Increment],
    now_ms: i64,
    mut loaded: Loaded,
) -> CommitPlan {
    let mut plan = CommitPlan::default();
    let mut touched: BTreeSet<SeriesId> = BTreeSet::new();
    let mut new_ids: HashMap<Arc<SeriesKey>, SeriesId> = HashMap::new();
    let mut new_kinds: HashMap<&str, Kind> = HashMap::new();
    // Buckets of series new in this commit: nothing stored to start from.
    let mut fresh: [Buckets; 3] = Default::default();
    let mut next_id = index.next_id;

    for (i, inc) in increments.iter().enumerate() {
        let kind = inc.state.kind();
        let metric = inc.series.metric();
        let recorded = index
            .kind_of(metric)
            .or_else(|| new_kinds.get(metric).copied());
        if let Some(recorded) = recorded
            && recorded != kind
        {
            plan.errors.push((
                inc.series.to_string(),
                ModelError::KindMismatch {
                    expected: recorded,
                    found: kind,
                },
            ));
            continue;
        }

        let stored = loaded.lookup.ids[i];
        let known = stored.or_else(|| new_ids.get(&*inc.series).copied());
        let id = known.unwrap_or(next_id);
        let merged = match stored {
            // Only series known before this commit have stored buckets.
            Some(_) => merge_stored(&mut plan, &mut loaded, id, inc),
            None => merge_fresh(&mut fresh, id, inc),
        };
        if let Err(e) = merged {
            plan.errors.push((inc.series.to_string(), e));
            continue;
        }

        plan.merged.push(i);
        touched.insert(id);
        if recorded.is_none() {
            new_kinds.insert(metric, kind);
            plan.new_metrics.push((metric.to_owned(), kind));
        }
        if known.is_none() {
            new_ids.insert(Arc::clone(&inc.series), id);
            plan.new_series.push((id, Arc::clone(&inc.series)));
            next_id += 1;
        }
    }
    plan.seen = touched
        .into_iter()
        .map(|id| (id, index.last_seen(id).map_or(now_ms, |at| at.max(now_ms))))
        .collect();
    // New series have ids above every stored one: their buckets sort last.
    for ((map, known), fresh) in plan
        .buckets
        .iter_mut()
        .zip(loaded.into_buckets())
        .zip(fresh)
    {
        *map = known.into_iter().chain(fresh).collect();
    }
    plan
}

/// Merges `inc` into the minute, hour and day bucket of `id`, a series with
/// stored buckets (every one of them is in `loaded`), or into none of them.
/// A bucket found unreadable is recorded for quarantine (once: it is then
/// absent) and started afresh.
fn merge_stored(
    plan: &mut CommitPlan,
    loaded: &mut Loaded,
    id: SeriesId,
    inc: &Increment,
) -> Result<(), ModelError> {
    let mut at = [0; 3];
    for r in Resolution::ALL {
        let key = bucket_key(r, (id, r.bucket_start(inc.bucket_ms)));
        let Some(i) = loaded.position(&key) else {
            // Not looked up: cannot happen for a known series.
            return Err(ModelError::Decode(format!("bucket {key:?} was not loaded")));
        };
        if let Stored::Unreadable(e) = &loaded.stored[i] {
            plan.quarantined.push(Quarantined {
                key,
                series: inc.series.to_string(),
                reason: unreadable_reason(e),
            });
            loaded.stored[i] = Stored::Absent;
        }
        at[r.index()] = i;
    }
    let Ok(slots) = loaded.stored.get_disjoint_mut(at) else {
        return Err(ModelError::Decode("bucket positions overlap".to_owned()));
    };
    merge_all(
        slots.map(|s| match s {
            Stored::State(state) => Some(state),
            _ => None,
        }),
        &inc.state,
    )?;
    for i in at {
        if let Stored::Absent = loaded.stored[i] {
            loaded.stored[i] = Stored::State(inc.state.clone());
        }
        loaded.changed[i] = true;
    }
    Ok(())
}

/// Merges `inc` into the buckets of `id`, a series new in this commit, or
/// into none of them.
fn merge_fresh(fresh: &mut [Buckets; 3], id: SeriesId, inc: &Increment) -> Result<(), ModelError> {
    let keys = Resolution::ALL.map(|r| (id, r.bucket_start(inc.bucket_ms)));
    let [minutes, hours, days] = fresh;
    let slots = [
        minutes.get_mut(&keys[0]),
        hours.get_mut(&keys[1]),
        days.get_mut(&keys[2]),
    ];
    merge_all(slots, &inc.state)?;
    for (map, key) in fresh.iter_mut().zip(keys) {
        map.entry(key).or_insert_with(|| inc.state.clone());
    }
    Ok(())
}

/// The [`BucketKey`] of a plan's `(series, bucket)` at `resolution`.
fn bucket_key(resolution: Resolution, (series, bucket_ms): (SeriesId, i64)) -> BucketKey {
    BucketKey {
        resolution,
        series,
        bucket_ms,
    }
}

/// Merges `incoming` into every present slot, or into none: on the first
/// refusal (in slot order) returns it with every slot unchanged.
///
/// Every slot is checked first with [`State::check_merge`] (the same checks
/// `merge` makes), then merged in place: no state is copied, which matters for
/// histograms of several kilobytes.
fn merge_all<const N: usize>(
    mut slots: [Option<&mut State>; N],
    incoming: &State,
) -> Result<(), ModelError> {
    for state in slots.iter().flatten() {
        state.check_merge(incoming)?;
    }
    for state in slots.iter_mut().flatten() {
        state.merge(incoming)?;
    }
    Ok(())
}
