//! The in-memory series index both stores keep, and the commit planner that
//! turns a flush's increments into bucket writes against it.
//!
//! Planning is shared so both stores give one behaviour: the same kind checks,
//! the same merge order, the same series ids, the same minute, hour and day
//! rollups. Only where a bucket's current state comes from (a map or a redb
//! table) differs, and that is the `load` closure handed to [`plan_commit`].
//!
//! The index also keeps when each series was last updated (the `now_ms` of
//! the last commit that merged an increment into it), which is what series
//! expiry ([`SeriesIndex::plan_expiry`]) reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use strata_model::{Increment, Kind, ModelError, SeriesKey, State};

use crate::{Event, MetricInfo, Resolution, SeriesId, StoreError};

/// Every known series, by key and by metric.
///
/// Readers (query API, selectors) look series up here instead of in the
/// database; a store changes it only after its commit is durable.
#[derive(Debug, Default)]
pub(crate) struct SeriesIndex {
    /// Resolves an increment's key to the id its buckets are stored under.
    ids: HashMap<Arc<SeriesKey>, SeriesId>,
    /// Per metric, sorted by name: its kind, fixed at first commit, and its
    /// series for listing and selector matching.
    metrics: BTreeMap<String, MetricEntry>,
    /// The id the next new series gets; ids are never reused.
    next_id: SeriesId,
    /// Per series, the `now_ms` of the last commit that merged into it: the
    /// clock series expiry compares against.
    last_seen: HashMap<SeriesId, i64>,
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

    /// Which series expiry at `idle_before_ms` removes: every series last
    /// updated before it (one never stamped counts as updated at
    /// `i64::MIN`), and the metrics left without a series.
    pub(crate) fn plan_expiry(&self, idle_before_ms: i64) -> Expiry {
        let mut expiry = Expiry::default();
        for (name, metric) in &self.metrics {
            let mut kept = 0;
            for key in &metric.series {
                let Some(&id) = self.ids.get(key) else {
                    continue;
                };
                if self.last_seen(id).unwrap_or(i64::MIN) < idle_before_ms {
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

    /// Ids of every series, for table-wide sweeps such as retention.
    pub(crate) fn ids(&self) -> Vec<SeriesId> {
        let mut ids: Vec<SeriesId> = self.ids.values().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// Bucket states of one resolution, by (series id, bucket start).
pub(crate) type Buckets = BTreeMap<(SeriesId, i64), State>;

/// What one series expiry removes, computed before anything is deleted.
#[derive(Debug, Default)]
pub(crate) struct Expiry {
    /// The idle series, ascending by id.
    pub(crate) series: Vec<(SeriesId, Arc<SeriesKey>)>,
    /// Metrics all of whose series are idle: they are forgotten with them,
    /// so their kind is no longer fixed.
    pub(crate) metrics: Vec<String>,
}

/// What a store holds for one bucket, as [`plan_commit`]'s `load` finds it.
#[derive(Debug)]
pub(crate) enum Stored {
    /// No state yet.
    Absent,
    /// The decoded state.
    State(State),
    /// Bytes that do not decode (a corrupt page, or a state an older version
    /// wrote that no longer validates), with why.
    Unreadable(String),
}

/// A stored bucket state that could not be read, moved aside by a commit so
/// that it stops nothing else.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Quarantined {
    pub(crate) resolution: Resolution,
    pub(crate) id: SeriesId,
    pub(crate) bucket: i64,
    /// The series' display form, for the event and the log.
    pub(crate) series: String,
    /// Why the bytes did not decode.
    pub(crate) reason: String,
}

impl Quarantined {
    /// The event a commit appends for it.
    pub(crate) fn event(&self, ts_ms: i64) -> Event {
        Event::new(
            ts_ms,
            Event::STATE_QUARANTINED,
            format!(
                "unreadable {} bucket {} of {} moved to quarantine; the bucket starts afresh: {}",
                self.resolution, self.bucket, self.series, self.reason
            ),
        )
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
    /// The buckets of one resolution this commit writes.
    pub(crate) fn buckets(&self, resolution: Resolution) -> &Buckets {
        &self.buckets[resolution.index()]
    }

    /// How many buckets this commit writes, over every resolution.
    pub(crate) fn bucket_count(&self) -> usize {
        self.buckets.iter().map(BTreeMap::len).sum()
    }
}

/// Merges `increments` into the current bucket states of every
/// [`Resolution`]; `load` reads from the store the state of a bucket not yet
/// touched by this commit. A bucket `load` finds unreadable is reported once
/// in [`CommitPlan::quarantined`] and treated as absent, so one corrupt state
/// never stops the commit of everything else.
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
    mut load: impl FnMut(Resolution, SeriesId, i64) -> Result<Stored, StoreError>,
) -> Result<CommitPlan, StoreError> {
    let mut plan = CommitPlan::default();
    let mut touched: BTreeSet<SeriesId> = BTreeSet::new();
    let mut new_ids: HashMap<Arc<SeriesKey>, SeriesId> = HashMap::new();
    let mut new_kinds: HashMap<&str, Kind> = HashMap::new();
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

        let stored = index.id_of(&inc.series);
        let known = stored.or_else(|| new_ids.get(&*inc.series).copied());
        let id = known.unwrap_or(next_id);
        let keys = Resolution::ALL.map(|r| (id, r.bucket_start(inc.bucket_ms)));

        // Bring the stored state of every bucket not yet in the plan in, so
        // the merges below see all three. Only series known before this
        // commit have stored buckets.
        let mut loaded = [false; 3];
        if stored.is_some() {
            for r in Resolution::ALL {
                let (map, key) = (&mut plan.buckets[r.index()], keys[r.index()]);
                if map.contains_key(&key) {
                    continue;
                }
                match load(r, key.0, key.1)? {
                    Stored::Absent => {}
                    Stored::State(state) => {
                        map.insert(key, state);
                        loaded[r.index()] = true;
                    }
                    Stored::Unreadable(reason) => {
                        let seen = plan
                            .quarantined
                            .iter()
                            .any(|q| (q.resolution, q.id, q.bucket) == (r, key.0, key.1));
                        if !seen {
                            plan.quarantined.push(Quarantined {
                                resolution: r,
                                id: key.0,
                                bucket: key.1,
                                series: inc.series.to_string(),
                                reason,
                            });
                        }
                    }
                }
            }
        }

        let [minutes, hours, days] = &mut plan.buckets;
        let slots = [
            minutes.get_mut(&keys[0]),
            hours.get_mut(&keys[1]),
            days.get_mut(&keys[2]),
        ];
        if let Err(e) = merge_all(slots, &inc.state) {
            // Take back what was loaded only for this increment: it is
            // unchanged and need not be written.
            for (map, (key, loaded)) in plan.buckets.iter_mut().zip(keys.iter().zip(loaded)) {
                if loaded {
                    map.remove(key);
                }
            }
            plan.errors.push((inc.series.to_string(), e));
            continue;
        }
        for (map, key) in plan.buckets.iter_mut().zip(keys) {
            map.entry(key).or_insert_with(|| inc.state.clone());
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
    Ok(plan)
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
