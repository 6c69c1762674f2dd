//! The in-memory series index both stores keep, and the commit planner that
//! turns a flush's increments into bucket writes against it.
//!
//! Planning is shared so both stores give one behaviour: the same kind checks,
//! the same merge order, the same series ids. Only where a bucket's current
//! state comes from (a map or a redb table) differs, and that is the `load`
//! closure handed to [`plan_commit`].

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use strata_model::{Increment, Kind, ModelError, SeriesKey, State, minute_start};

use crate::{MetricInfo, SeriesId, StoreError};

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

    /// Applies what a committed plan created.
    pub(crate) fn apply(&mut self, plan: &CommitPlan) {
        for (name, kind) in &plan.new_metrics {
            self.add_metric(name, *kind);
        }
        for (id, key) in &plan.new_series {
            self.add_series(*id, Arc::clone(key));
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

/// What one commit will write, computed before anything is written.
#[derive(Debug, Default)]
pub(crate) struct CommitPlan {
    /// Metrics seen for the first time, with the kind they are fixed to.
    pub(crate) new_metrics: Vec<(String, Kind)>,
    /// Series seen for the first time, with the ids assigned to them.
    pub(crate) new_series: Vec<(SeriesId, Arc<SeriesKey>)>,
    /// The merged state of every bucket this commit touches, to be written
    /// back whole.
    pub(crate) buckets: BTreeMap<(SeriesId, i64), State>,
    /// Indexes (into the commit's increments) of those that merged, in order:
    /// exactly these go to the outgoing spool.
    pub(crate) merged: Vec<usize>,
    /// Increments that could not be merged, with the series they were for.
    pub(crate) errors: Vec<(String, ModelError)>,
}

/// Merges `increments` into the current bucket states, which `load` reads
/// from the store for buckets not yet touched by this commit.
///
/// An increment whose kind differs from its metric's kind, or whose state
/// refuses to merge (different histogram precision, apdex threshold), is
/// skipped and reported in [`CommitPlan::errors`]; a skipped increment creates
/// no series and no metric. Several increments for one bucket merge in order.
pub(crate) fn plan_commit(
    index: &SeriesIndex,
    increments: &[Increment],
    mut load: impl FnMut(SeriesId, i64) -> Result<Option<State>, StoreError>,
) -> Result<CommitPlan, StoreError> {
    let mut plan = CommitPlan::default();
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

        let bucket_ms = minute_start(inc.bucket_ms);
        let known = index
            .id_of(&inc.series)
            .or_else(|| new_ids.get(&*inc.series).copied());
        let id = known.unwrap_or(next_id);
        match plan.buckets.entry((id, bucket_ms)) {
            Entry::Occupied(mut slot) => {
                if let Err(e) = merge_into(slot.get_mut(), &inc.state) {
                    plan.errors.push((inc.series.to_string(), e));
                    continue;
                }
            }
            Entry::Vacant(slot) => {
                let stored = match known {
                    Some(id) => load(id, bucket_ms)?,
                    None => None,
                };
                match stored {
                    Some(mut state) => {
                        if let Err(e) = merge_into(&mut state, &inc.state) {
                            plan.errors.push((inc.series.to_string(), e));
                            continue;
                        }
                        slot.insert(state);
                    }
                    None => {
                        slot.insert(inc.state.clone());
                    }
                }
            }
        }

        plan.merged.push(i);
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
    Ok(plan)
}

/// Merges `incoming` into `state`. The model guarantees a refused merge
/// leaves `state` unchanged, so a skipped increment costs nothing.
fn merge_into(state: &mut State, incoming: &State) -> Result<(), ModelError> {
    state.merge(incoming)
}
