//! The commit planner: turns a flush's increments into bucket writes, and
//! folds open minutes into their hour and day rollups.
//!
//! # Open minutes
//! Each series has at most one **open minute**: its newest minute bucket,
//! not yet merged into its hour and day buckets. Every other minute of the
//! series is **folded**: its hour and day buckets hold it. A commit merges an
//! increment
//! - for the open minute, into that minute only (the common case: a series
//!   updated at every flush touches one stored state per flush, not three);
//! - for a minute with no bucket yet, newer than the open one, into that new
//!   minute, which becomes the open one once the previous open minute is
//!   folded (merged into its hour and day, in the same transaction);
//! - for any other minute (late data), into the minute, its hour and its day
//!   together, or into none of them, as the minute is already folded.
//!
//! So an hour (day) bucket plus its series' open minute, when that minute
//! falls in it, is the merge of every increment committed into its minutes.
//! Reads of hours and days add the open minute ([`crate::BackedStore`]);
//! minute retention folds an open minute before deleting it.
//!
//! Folding merges a whole minute into its rollups; a rollup that refuses it
//! (a histogram precision or apdex threshold that changed within the hour)
//! keeps its state, the minute stays readable at minute resolution, and the
//! refusal is recorded as a [`EventKind::RollupRefused`] event.
//!
//! Planning is done in three steps, with backend loads between them:
//! [`lookup`] names the minute buckets of known series; [`classify`] decides,
//! from which of them exist, what each increment does and which further
//! states (hours, days, minutes to fold) must be loaded; [`plan_commit`]
//! merges, in increment order, into the states loaded.

use std::sync::Arc;

use strata_model::{Increment, Kind, ModelError, SeriesKey, State, minute_start};

use crate::backend::{BucketKey, Buckets, Stored};
use crate::index::{Quarantined, SeriesIndex, unreadable_reason};
use crate::{Event, EventKind, Resolution, SeriesId};

/// Granularity of the last-update stamps made durable ([`durable_stamp`]).
pub(crate) const DURABLE_STAMP_MS: i64 = 60_000;

/// The last-update stamp the store makes durable for a series last updated
/// at `ms`: `ms` rounded up to a whole minute. It is written when it moves —
/// once a minute per series updated all along, instead of at every commit
/// (writing every touched series' stamp was a tenth of a durable global's
/// CPU) — and is never earlier than the last update, so a store reopened
/// after a restart or a crash expires a series up to a minute late, never
/// early. The index held in memory keeps the exact stamp.
pub(crate) fn durable_stamp(ms: i64) -> i64 {
    match ms.rem_euclid(DURABLE_STAMP_MS) {
        0 => ms,
        r => ms.saturating_add(DURABLE_STAMP_MS - r),
    }
}

/// What one commit (or one fold before minute retention) will write,
/// computed before anything is written.
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
    /// The stamps of [`CommitPlan::seen`] the store makes durable: those
    /// whose [`durable_stamp`] moves, with it.
    pub(crate) seen_durable: Vec<(SeriesId, i64)>,
    /// Series whose open minute changes: `Some` the new one, `None` none
    /// (every minute folded).
    pub(crate) open: Vec<(SeriesId, Option<i64>)>,
    /// Stored buckets this commit found unreadable: the store moves their
    /// bytes aside and the increments start them afresh.
    pub(crate) quarantined: Vec<Quarantined>,
    /// Minutes a rollup refused while folding.
    pub(crate) refused: Vec<RollupRefused>,
    /// How many open minutes this plan folds (an absent one included).
    pub(crate) folds: usize,
}

impl CommitPlan {
    /// How many buckets this commit writes, over every resolution.
    pub(crate) fn bucket_count(&self) -> usize {
        self.buckets.iter().map(Buckets::len).sum()
    }

    /// Whether it changes what a read of hours or days combines: it folds a
    /// minute (moving it from the open minute into its rollups) or writes a
    /// rollup bucket (a late increment).
    pub(crate) fn changes_rollups(&self) -> bool {
        self.folds > 0 || self.buckets[1..].iter().any(|b| !b.is_empty())
    }

    /// The events this plan appends with its transaction: quarantined
    /// states and refused folds.
    pub(crate) fn events(&self, now_ms: i64) -> Vec<Event> {
        let quarantined = self.quarantined.iter().map(|q| q.event(now_ms));
        let refused = self.refused.iter().map(|r| r.event(now_ms));
        quarantined.chain(refused).collect()
    }

    /// Logs what it recorded; called once it is durable.
    pub(crate) fn log(&self) {
        self.quarantined.iter().for_each(Quarantined::log);
        self.refused.iter().for_each(RollupRefused::log);
    }
}

/// A minute a rollup refused to merge while folding it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RollupRefused {
    /// The series' display form.
    pub(crate) series: String,
    pub(crate) minute_ms: i64,
    /// The rollup that refused: hour or day.
    pub(crate) resolution: Resolution,
    pub(crate) reason: ModelError,
}

impl RollupRefused {
    fn event(&self, ts_ms: i64) -> Event {
        Event::new(
            ts_ms,
            EventKind::RollupRefused,
            format!(
                "minute {} of {} left out of its {} rollup (kept at minute resolution): {}",
                self.minute_ms, self.series, self.resolution, self.reason
            ),
        )
    }

    fn log(&self) {
        tracing::warn!(
            series = %self.series,
            minute_ms = self.minute_ms,
            resolution = %self.resolution,
            reason = %self.reason,
            "minute left out of its rollup (kept at minute resolution)"
        );
    }
}

/// What [`lookup`] found for a commit.
#[derive(Debug)]
pub(crate) struct Lookup {
    /// Per increment, its series' id if the series is known.
    ids: Vec<Option<SeriesId>>,
    /// The minute buckets of known series to load: sorted, no duplicates.
    pub(crate) keys: Vec<BucketKey>,
    /// Per increment of a known series, where its minute bucket is in
    /// `keys` ([`NOT_LOOKED_UP`] for the others): what lets the common
    /// increment, into its series' open minute, find its state without a
    /// search.
    at: Vec<u32>,
}

/// [`Lookup::at`] of an increment of a series new in its commit.
const NOT_LOOKED_UP: u32 = u32::MAX;

/// The first step of planning a commit of `increments`: the id of each
/// one's series if it is known, and the minute buckets of known series they
/// go into, for the backend to load.
pub(crate) fn lookup(index: &SeriesIndex, increments: &[Increment]) -> Lookup {
    let ids: Vec<Option<SeriesId>> = increments
        .iter()
        .map(|inc| index.id_of_arc(&inc.series))
        .collect();
    // Sorted with the increment each came from, then deduplicated: one sort
    // gives both the keys and each increment's place among them.
    let mut wanted: Vec<(BucketKey, u32)> = increments
        .iter()
        .zip(&ids)
        .enumerate()
        .filter_map(|(i, (inc, id))| {
            let id = (*id)?;
            // A commit holds far fewer than 2^32 increments (a flush's).
            Some((key(Resolution::Minute, id, inc.bucket_ms), i as u32))
        })
        .collect();
    wanted.sort_unstable();
    let mut keys: Vec<BucketKey> = Vec::with_capacity(wanted.len());
    let mut at = vec![NOT_LOOKED_UP; increments.len()];
    for (key, i) in wanted {
        if keys.last() != Some(&key) {
            keys.push(key);
        }
        at[i as usize] = (keys.len() - 1) as u32;
    }
    Lookup { ids, keys, at }
}

/// The bucket of `series` at `resolution` that holds `ts_ms`.
fn key(resolution: Resolution, series: SeriesId, ts_ms: i64) -> BucketKey {
    BucketKey {
        resolution,
        series,
        bucket_ms: resolution.bucket_start(ts_ms),
    }
}

/// The minute, hour and day buckets of `series` that hold `minute_ms`.
fn keys_of(series: SeriesId, minute_ms: i64) -> [BucketKey; 3] {
    Resolution::ALL.map(|r| key(r, series, minute_ms))
}

/// What planning does with one increment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Refused before any bucket is looked at: its metric has this kind.
    KindMismatch(Kind),
    /// Into its series' open minute, only: the state at `at` in
    /// [`Loaded`] when the minute was looked up ([`NOT_LOOKED_UP`] when the
    /// series is new in this commit).
    Open { id: SeriesId, at: u32 },
    /// Into a new minute, which becomes its series' open minute once the
    /// previous open minute (if any) is folded; `at` as for `Open`.
    Opens {
        id: SeriesId,
        fold: Option<i64>,
        at: u32,
    },
    /// Into a folded minute: its minute, hour and day, or none of them.
    Late(SeriesId),
}

/// The second step: what each increment does, and what else to load.
#[derive(Debug)]
pub(crate) struct Classified {
    /// Per increment.
    actions: Vec<Action>,
    new_metrics: Vec<(String, Kind)>,
    new_series: Vec<(SeriesId, Arc<SeriesKey>)>,
    /// Series whose open minute this commit changes, with the new one.
    opened: Vec<(SeriesId, i64)>,
    /// The minute buckets [`lookup`] named, with what the backend holds.
    minutes: Vec<(BucketKey, Stored)>,
    /// Further buckets of known series to load: sorted, no duplicates,
    /// none of `minutes`.
    to_load: Vec<BucketKey>,
    /// Buckets of series new in this commit: nothing stored.
    fresh: Vec<BucketKey>,
}

impl Classified {
    /// The further buckets the backend must load for [`plan_commit`].
    pub(crate) fn to_load(&self) -> &[BucketKey] {
        &self.to_load
    }
}

/// The second step of planning: decides what each increment does, from the
/// minute states the backend loaded for [`Lookup::keys`] (in that order),
/// and names the further states to load. Kind checks are made here: an
/// increment whose kind differs from its metric's is refused; the first
/// increment of a new metric fixes its kind, the first of a new series
/// gives it the next id (a first increment never fails to merge: its
/// buckets are new).
pub(crate) fn classify(
    index: &SeriesIndex,
    increments: &[Increment],
    lookup: Lookup,
    minutes: Vec<Stored>,
) -> Classified {
    debug_assert_eq!(lookup.keys.len(), minutes.len());
    let exists = |id: SeriesId, minute_ms: i64| {
        let k = key(Resolution::Minute, id, minute_ms);
        lookup
            .keys
            .binary_search(&k)
            .is_ok_and(|i| !matches!(minutes[i], Stored::Absent))
    };
    let mut actions = Vec::with_capacity(increments.len());
    let mut new_metrics = Vec::new();
    let mut new_series = Vec::new();
    // foldhash: these are hashed once or twice per increment.
    let mut new_ids: foldhash::HashMap<Arc<SeriesKey>, SeriesId> = Default::default();
    let mut new_kinds: foldhash::HashMap<&str, Kind> = Default::default();
    let mut next_id = index.next_id();
    let mut open: foldhash::HashMap<SeriesId, i64> = Default::default();
    let mut created: foldhash::HashSet<(SeriesId, i64)> = Default::default();
    let mut to_load = Vec::new();
    let mut fresh = Vec::new();

    for ((inc, known), &at) in increments.iter().zip(&lookup.ids).zip(&lookup.at) {
        let kind = inc.state.kind();
        // A known series' kind and open minute come in one lookup; only a
        // new series' metric is looked up by name.
        let known_series = known.and_then(|id| index.known(id));
        let recorded = match known_series {
            Some(k) => Some(k.kind),
            None => {
                let metric = inc.series.metric();
                index
                    .kind_of(metric)
                    .or_else(|| new_kinds.get(metric).copied())
            }
        };
        match recorded {
            Some(recorded) if recorded != kind => {
                actions.push(Action::KindMismatch(recorded));
                continue;
            }
            Some(_) => {}
            None => {
                let metric = inc.series.metric();
                new_kinds.insert(metric, kind);
                new_metrics.push((metric.to_owned(), kind));
            }
        }
        let id = match known {
            Some(id) => *id,
            None => *new_ids.entry(Arc::clone(&inc.series)).or_insert_with(|| {
                let id = next_id;
                next_id += 1;
                new_series.push((id, Arc::clone(&inc.series)));
                id
            }),
        };
        // Buckets of a known series are loaded, a new series' are fresh.
        let needs = if known.is_some() {
            &mut to_load
        } else {
            &mut fresh
        };
        let minute = minute_start(inc.bucket_ms);
        let current = open
            .get(&id)
            .copied()
            .or_else(|| known_series.and_then(|k| k.open));
        // Whether the minute has a bucket is asked only off the open minute
        // (the common case skips the lookups).
        let present = || created.contains(&(id, minute)) || (known.is_some() && exists(id, minute));
        let action = if current == Some(minute) {
            Action::Open { id, at }
        } else if current.is_some_and(|o| minute < o) || present() {
            needs.extend(&keys_of(id, minute)[1..]);
            Action::Late(id)
        } else {
            if let Some(p) = current {
                needs.extend(keys_of(id, p));
            }
            open.insert(id, minute);
            Action::Opens {
                id,
                fold: current,
                at,
            }
        };
        if known.is_none() {
            fresh.push(key(Resolution::Minute, id, minute));
        }
        // An open minute needs no record: once another minute opens, any
        // later increment for it is older than that one, so late anyway.
        if !matches!(action, Action::Open { .. }) {
            created.insert((id, minute));
        }
        actions.push(action);
    }

    to_load.sort_unstable();
    to_load.dedup();
    // The looked-up keys are minutes: an hour or a day is not among them.
    to_load.retain(|k| k.resolution != Resolution::Minute || lookup.keys.binary_search(k).is_err());
    fresh.sort_unstable();
    fresh.dedup();
    let mut opened: Vec<_> = open.into_iter().collect();
    opened.sort_unstable();
    Classified {
        actions,
        new_metrics,
        new_series,
        opened,
        minutes: lookup.keys.into_iter().zip(minutes).collect(),
        to_load,
        fresh,
    }
}

/// The stored states a plan starts from, merged into in place.
///
/// The states are kept in a vector beside their keys, in two sorted runs:
/// the minutes [`lookup`] named, at the positions it gave each increment
/// (so an increment into its series' open minute, the common case, goes
/// straight to its state), then every other bucket the plan needs, found by
/// bisection. The merged ones are handed to the write per resolution: a
/// commit of tens of thousands of increments neither hashes nor inserts
/// each state into a map (a hash map of them cost a fifth of the global
/// tier's CPU; ordered maps filled in increment order, another tenth), and
/// the bisections it made for every increment were a tenth.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// How many of `keys` are the minutes [`lookup`] named: the first run.
    looked_up: usize,
    keys: Vec<BucketKey>,
    /// `stored[i]` is the state of `keys[i]`: as loaded, merged into, or
    /// `Absent` (also once found unreadable).
    stored: Vec<Stored>,
    /// `changed[i]`: `stored[i]` was merged into (or started) and is written.
    changed: Vec<bool>,
}

impl Loaded {
    /// The states of the minutes [`lookup`] named (`looked_up`: its keys, in
    /// its order, so that [`Lookup::at`] gives an increment's position here),
    /// then of `rest` (other keys, in any order). No key twice.
    pub(crate) fn new(
        looked_up: Vec<(BucketKey, Stored)>,
        rest: impl IntoIterator<Item = (BucketKey, Stored)>,
    ) -> Self {
        let mut rest: Vec<_> = rest.into_iter().collect();
        // Sorted runs (the rest, fresh): a stable sort merges them.
        rest.sort_by_key(|(k, _)| *k);
        let looked_up_len = looked_up.len();
        let (keys, stored): (Vec<_>, Vec<_>) = looked_up.into_iter().chain(rest).unzip();
        let changed = vec![false; keys.len()];
        Loaded {
            looked_up: looked_up_len,
            keys,
            stored,
            changed,
        }
    }

    /// Where `key` is, if it was loaded.
    fn find(&self, key: &BucketKey) -> Option<usize> {
        let (named, rest) = self.keys.split_at(self.looked_up);
        // The named run holds minutes only: an hour or a day is not searched there.
        if key.resolution == Resolution::Minute
            && let Ok(i) = named.binary_search(key)
        {
            return Some(i);
        }
        rest.binary_search(key).ok().map(|i| self.looked_up + i)
    }

    /// Positions of `keys`, every one of which must have been loaded
    /// ([`Loaded::readable`] each).
    fn positions<const N: usize>(
        &mut self,
        keys: [BucketKey; N],
        series: &SeriesKey,
        quarantined: &mut Vec<Quarantined>,
    ) -> Result<[usize; N], ModelError> {
        let mut at = [0; N];
        for (slot, key) in at.iter_mut().zip(keys) {
            let Some(i) = self.find(&key) else {
                // Not loaded: classification names every bucket it needs.
                return Err(ModelError::Decode(format!("bucket {key:?} was not loaded")));
            };
            self.readable(i, series, quarantined);
            *slot = i;
        }
        Ok(at)
    }

    /// Makes the state at `i` one that merges: a state found unreadable is
    /// recorded for quarantine (once: it is then absent) and starts afresh.
    fn readable(&mut self, i: usize, series: &SeriesKey, quarantined: &mut Vec<Quarantined>) {
        if let Stored::Unreadable(e) = &self.stored[i] {
            quarantined.push(Quarantined {
                key: self.keys[i],
                series: series.to_string(),
                reason: unreadable_reason(e),
            });
            self.stored[i] = Stored::Absent;
        }
    }

    /// Merges `incoming` into the minute `key`: at `at` when [`lookup`]
    /// named it there, else found by bisection ([`NOT_LOOKED_UP`]: a series
    /// new in this commit).
    fn merge_minute(
        &mut self,
        at: u32,
        key: [BucketKey; 1],
        series: &SeriesKey,
        incoming: &State,
        quarantined: &mut Vec<Quarantined>,
    ) -> Result<(), ModelError> {
        if at == NOT_LOOKED_UP {
            return self.merge(key, series, incoming, quarantined);
        }
        let at = at as usize;
        debug_assert_eq!(self.keys[at], key[0]);
        self.readable(at, series, quarantined);
        self.merge_at([at], incoming)
    }

    /// Merges `incoming` into the buckets `keys` ([`Loaded::merge_at`]).
    fn merge<const N: usize>(
        &mut self,
        keys: [BucketKey; N],
        series: &SeriesKey,
        incoming: &State,
        quarantined: &mut Vec<Quarantined>,
    ) -> Result<(), ModelError> {
        let at = self.positions(keys, series, quarantined)?;
        self.merge_at(at, incoming)
    }

    /// Merges `incoming` into the states at `at` (made readable), or into
    /// none of them: on the first refusal (in the order given) returns it
    /// with every state unchanged. An absent state starts as a copy of
    /// `incoming`.
    ///
    /// Every present state is checked first with [`State::check_merge`] (the
    /// same checks `merge` makes), then merged in place: no state is copied,
    /// which matters for histograms of several kilobytes.
    fn merge_at<const N: usize>(
        &mut self,
        at: [usize; N],
        incoming: &State,
    ) -> Result<(), ModelError> {
        for &i in &at {
            if let Stored::State(state) = &self.stored[i] {
                state.check_merge(incoming)?;
            }
        }
        for i in at {
            match &mut self.stored[i] {
                Stored::State(state) => state.merge(incoming)?,
                slot => *slot = Stored::State(incoming.clone()),
            }
            self.changed[i] = true;
        }
        Ok(())
    }

    /// Folds minute `minute_ms` of `id` into its hour and day: each rollup
    /// merges it, or refuses it and is left as it was (recorded in
    /// `refused`). An absent (or unreadable) minute has nothing to fold.
    fn fold(&mut self, id: SeriesId, series: &SeriesKey, minute_ms: i64, plan: &mut CommitPlan) {
        plan.folds += 1;
        let at = match self.positions(keys_of(id, minute_ms), series, &mut plan.quarantined) {
            Ok(at) => at,
            Err(e) => {
                // Not loaded: cannot happen; the minute stays unfolded.
                tracing::error!(series = %series, minute_ms, error = %e, "minute not folded");
                return;
            }
        };
        let Ok([minute, hour, day]) = self.stored.get_disjoint_mut(at) else {
            return;
        };
        let Stored::State(minute) = minute else {
            return;
        };
        for (resolution, rollup, i) in [
            (Resolution::Hour, hour, at[1]),
            (Resolution::Day, day, at[2]),
        ] {
            let merged = match rollup {
                Stored::State(state) => {
                    state.check_merge(minute).and_then(|()| state.merge(minute))
                }
                slot => {
                    *slot = Stored::State(minute.clone());
                    Ok(())
                }
            };
            match merged {
                Ok(()) => self.changed[i] = true,
                Err(reason) => plan.refused.push(RollupRefused {
                    series: series.to_string(),
                    minute_ms,
                    resolution,
                    reason,
                }),
            }
        }
    }

    /// The changed states, per resolution.
    fn into_buckets(self) -> [Buckets; 3] {
        let mut counts = [0; 3];
        for (key, _) in self.keys.iter().zip(&self.changed).filter(|(_, c)| **c) {
            counts[key.resolution.index()] += 1;
        }
        let mut out: [Vec<((SeriesId, i64), State)>; 3] = counts.map(Vec::with_capacity);
        let entries = self.keys.into_iter().zip(self.stored).zip(self.changed);
        for ((key, stored), changed) in entries {
            if let (true, Stored::State(state)) = (changed, stored) {
                out[key.resolution.index()].push(((key.series, key.bucket_ms), state));
            }
        }
        // Sorted runs (the minutes looked up, then the others): `collect`
        // merges them and builds each map in bulk.
        out.map(|states| states.into_iter().collect())
    }
}

/// The last step of planning a commit: merges `increments` as
/// [`classify`] decided, into the states the backend loaded
/// (`minutes` for [`Lookup::keys`], `rest` for [`Classified::to_load`]).
/// A bucket found unreadable is reported once in [`CommitPlan::quarantined`]
/// and treated as absent, so one corrupt state never stops the commit of
/// everything else.
///
/// An increment is skipped and reported once in [`CommitPlan::errors`] when
/// its kind differs from its metric's, or when a bucket it goes into
/// refuses its state (different histogram precision, apdex threshold): a
/// late increment goes into its minute, hour and day or into none of them.
/// Several increments for one bucket merge in order. Every series an
/// increment merged into is stamped with `now_ms` in [`CommitPlan::seen`],
/// and in [`CommitPlan::seen_durable`] when its [`durable_stamp`] moves.
pub(crate) fn plan_commit(
    index: &SeriesIndex,
    increments: &[Increment],
    now_ms: i64,
    classified: Classified,
    rest: Vec<Stored>,
) -> CommitPlan {
    let Classified {
        actions,
        new_metrics,
        new_series,
        opened,
        minutes,
        to_load,
        fresh,
    } = classified;
    let absent = fresh.into_iter().map(|k| (k, Stored::Absent));
    let mut loaded = Loaded::new(minutes, to_load.into_iter().zip(rest).chain(absent));
    let mut plan = CommitPlan {
        new_metrics,
        new_series,
        open: opened.into_iter().map(|(id, m)| (id, Some(m))).collect(),
        ..CommitPlan::default()
    };
    let mut touched: Vec<SeriesId> = Vec::with_capacity(increments.len());
    for (i, (inc, action)) in increments.iter().zip(actions).enumerate() {
        let q = &mut plan.quarantined;
        let minute = |id| [key(Resolution::Minute, id, inc.bucket_ms)];
        let merged = match action {
            Action::KindMismatch(expected) => Err(ModelError::KindMismatch {
                expected,
                found: inc.state.kind(),
            }),
            Action::Open { id, at } => loaded
                .merge_minute(at, minute(id), &inc.series, &inc.state, q)
                .map(|()| id),
            Action::Late(id) => {
                let keys = keys_of(id, minute_start(inc.bucket_ms));
                loaded.merge(keys, &inc.series, &inc.state, q).map(|()| id)
            }
            Action::Opens { id, fold, at } => {
                if let Some(p) = fold {
                    loaded.fold(id, &inc.series, p, &mut plan);
                }
                let q = &mut plan.quarantined;
                loaded
                    .merge_minute(at, minute(id), &inc.series, &inc.state, q)
                    .map(|()| id)
            }
        };
        match merged {
            Ok(id) => {
                plan.merged.push(i);
                touched.push(id);
            }
            Err(e) => plan.errors.push((inc.series.to_string(), e)),
        }
    }
    touched.sort_unstable();
    touched.dedup();
    plan.seen = Vec::with_capacity(touched.len());
    for id in touched {
        let before = index.last_seen(id);
        let at = before.map_or(now_ms, |at| at.max(now_ms));
        plan.seen.push((id, at));
        if before.is_none_or(|b| durable_stamp(at) > durable_stamp(b)) {
            plan.seen_durable.push((id, durable_stamp(at)));
        }
    }
    plan.buckets = loaded.into_buckets();
    plan
}

/// The buckets [`plan_fold`] needs: the minute, hour and day of every open
/// minute before `before_ms`.
pub(crate) fn fold_keys(opens: &[(SeriesId, Arc<SeriesKey>, i64)]) -> Vec<BucketKey> {
    let mut keys: Vec<_> = opens
        .iter()
        .flat_map(|&(id, _, m)| keys_of(id, m))
        .collect();
    keys.sort_unstable();
    keys
}

/// Folds the open minutes `opens` (from [`SeriesIndex::opens_before`]) into
/// their hours and days, leaving their series with no open minute: what
/// minute retention does before it deletes them. `stored` holds the states
/// of [`fold_keys`], in its order.
pub(crate) fn plan_fold(
    opens: &[(SeriesId, Arc<SeriesKey>, i64)],
    keys: Vec<BucketKey>,
    stored: Vec<Stored>,
) -> CommitPlan {
    let mut loaded = Loaded::new(Vec::new(), keys.into_iter().zip(stored));
    let mut plan = CommitPlan::default();
    for (id, series, minute_ms) in opens {
        loaded.fold(*id, series, *minute_ms, &mut plan);
        plan.open.push((*id, None));
    }
    plan.buckets = loaded.into_buckets();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_stamps_round_up_to_a_minute_without_overflow() {
        let m = DURABLE_STAMP_MS;
        for (ms, want) in [
            (0, 0),
            (1, m),
            (m - 1, m),
            (m, m),
            (m + 1, 2 * m),
            (-1, 0),
            (-m, -m),
            (-m - 1, -m),
            (i64::MAX, i64::MAX),
            (i64::MIN, -9_223_372_036_854_720_000),
        ] {
            assert_eq!(durable_stamp(ms), want, "{ms}");
            assert!(durable_stamp(ms) >= ms);
        }
    }
}
