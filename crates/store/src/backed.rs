//! [`BackedStore`]: the one implementation of [`Store`], over any
//! [`Backend`].
//!
//! Everything a store does beyond storing lives here, once: the in-memory
//! series index and the commit planner (`index.rs`), the spool ledger and
//! its cap (`spool.rs`), the cached source progress, quarantine of
//! unreadable states, the events the store appends about itself, and the
//! writer exclusion the backends rely on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use strata_model::{Kind, SeriesKey, State};

use crate::backend::{Backend, BucketKey, Retention, SpoolWrite, Stored, Transaction};
use crate::codec::{decode_spool_batch, encode_spool_batch};
use crate::index::{Quarantined, SeriesIndex, unreadable_reason};
use crate::plan::{self, CommitPlan};
use crate::spool::SpoolLedger;
use crate::{
    AlarmRecord, AlarmState, AlarmUpdate, Commit, CommitOutcome, Event, EventCutoffs, EventQuery,
    MetricInfo, OutboxEntry, Resolution, SourceProgress, SpoolBatch, SpoolStats, Store, StoreError,
    StoreOptions, wall_clock_ms,
};

/// A [`Store`] over the backend `B`: what the server codes against, whatever
/// keeps the data ([`crate::RedbStore`] is `BackedStore<Redb>`).
///
/// Writers (commit, ack, retention, alarms) are serialized; readers run
/// alongside them, on committed data only.
pub struct BackedStore<B> {
    pub(crate) backend: B,
    /// The backend's, read once: the same until its data is lost.
    epoch: u64,
    opts: StoreOptions,
    /// Held by a writer from its planning until its in-memory effects (new
    /// series, progress, spool ledger) are published, so the next writer
    /// plans against an index holding every committed series and never
    /// assigns one key two ids. Readers never take it.
    writer: Mutex<()>,
    /// Every series and metric kind, restored on open: listing metrics and
    /// matching selectors never reach the backend.
    index: RwLock<SeriesIndex>,
    /// Committed progress of every source, restored on open.
    sources: RwLock<BTreeMap<String, SourceProgress>>,
    /// The spool's batches and counters as of the last write.
    spool: Mutex<SpoolLedger>,
    /// States in quarantine, restored on open; changed only by writers,
    /// once their transaction committed.
    quarantined: AtomicU64,
    /// Held shared by reads of hours and days (which add their series' open
    /// minute, from the index, to the rollups, from the backend, in two
    /// reads), exclusively by a writer that folds a minute or writes a
    /// rollup, from its write until the index has it: a read never adds a
    /// minute its rollup already holds, nor sees part of a commit's rollup
    /// writes. A commit that only merges open minutes or opens new ones
    /// (most of them) does not take it; minute reads never do.
    rollups: RwLock<()>,
}

impl<B: std::fmt::Debug> std::fmt::Debug for BackedStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackedStore")
            .field("backend", &self.backend)
            .field("epoch", &self.epoch)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> BackedStore<B> {
    /// The store over `backend`, with series, metric kinds, source progress,
    /// the spool ledger and the quarantine count restored from it.
    pub fn restore(backend: B, opts: StoreOptions) -> Result<Self, StoreError> {
        let restored = backend.restore()?;
        let index = SeriesIndex::restore(
            restored.metrics,
            restored.series,
            restored.series_next_id,
            wall_clock_ms(),
        )?;
        let spool = SpoolLedger::restore(restored.spool, restored.spool_counters)?;
        if restored.quarantined > 0 {
            tracing::warn!(
                quarantined = restored.quarantined,
                "store holds unreadable states moved to quarantine (see events of kind state_quarantined)"
            );
        }
        let sources = restored
            .sources
            .into_iter()
            .map(|p| (p.source_id.clone(), p))
            .collect();
        Ok(BackedStore {
            backend,
            epoch: restored.epoch,
            opts,
            writer: Mutex::new(()),
            index: RwLock::new(index),
            sources: RwLock::new(sources),
            spool: Mutex::new(spool),
            quarantined: AtomicU64::new(restored.quarantined),
            rollups: RwLock::new(()),
        })
    }

    /// The store over a backend that holds nothing yet, of identity `epoch`.
    pub(crate) fn empty(backend: B, epoch: u64, opts: StoreOptions) -> Self {
        BackedStore {
            backend,
            epoch,
            opts,
            writer: Mutex::new(()),
            index: RwLock::new(SeriesIndex::new(1)),
            sources: RwLock::new(BTreeMap::new()),
            spool: Mutex::new(SpoolLedger::default()),
            quarantined: AtomicU64::new(0),
            rollups: RwLock::new(()),
        }
    }

    /// The backend this store keeps its data in.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Moves the unreadable buckets a read met to quarantine, in a
    /// transaction of their own, with their events. A bucket a commit has
    /// rewritten since the read (it is readable now) is left alone.
    fn quarantine_now(&self, found: &[Quarantined]) -> Result<(), StoreError> {
        let writing = self.writer.lock();
        let keys: Vec<_> = found.iter().map(|q| q.key).collect();
        let now = self.backend.load_buckets(&keys)?;
        let still: Vec<&Quarantined> = found
            .iter()
            .zip(now)
            .filter(|(_, stored)| matches!(stored, Stored::Unreadable(_)))
            .map(|(q, _)| q)
            .collect();
        if still.is_empty() {
            return Ok(());
        }
        let now_ms = wall_clock_ms();
        let keys: Vec<_> = still.iter().map(|q| q.key).collect();
        let events: Vec<Event> = still.iter().map(|q| q.event(now_ms)).collect();
        self.backend.write(Transaction {
            quarantine: &keys,
            events: &events,
            ..Transaction::default()
        })?;
        self.quarantined
            .fetch_add(still.len() as u64, Ordering::Relaxed);
        drop(writing);
        still.iter().for_each(|q| q.log());
        Ok(())
    }

    /// Folds every open minute before `before_ms` into its hour and day, in
    /// a transaction of its own, leaving those series with no open minute:
    /// minute retention calls it, under the writer exclusion, before
    /// deleting the minutes.
    pub(crate) fn fold_open_before(&self, before_ms: i64) -> Result<(), StoreError> {
        let opens = self.index.read().opens_before(before_ms);
        if opens.is_empty() {
            return Ok(());
        }
        let keys = plan::fold_keys(&opens);
        let stored = self.backend.load_buckets(&keys)?;
        let mut plan = plan::plan_fold(&opens, keys, stored);
        let events = plan.events(wall_clock_ms());
        self.write_plan(&mut plan, &events, Transaction::default())?;
        plan.log();
        tracing::debug!(
            series = opens.len(),
            "open minutes folded before minute retention"
        );
        Ok(())
    }

    /// Writes `plan`, its `events` and the rest of `txn` in one
    /// transaction, then publishes what readers see of the plan: the
    /// quarantine count and the index, the open minutes under the rollup
    /// exclusion. Called under the writer exclusion.
    fn write_plan(
        &self,
        plan: &mut CommitPlan,
        events: &[Event],
        txn: Transaction<'_>,
    ) -> Result<(), StoreError> {
        let quarantine: Vec<_> = plan.quarantined.iter().map(|q| q.key).collect();
        let rollups = plan.changes_rollups().then(|| self.rollups.write());
        let buckets = std::mem::take(&mut plan.buckets);
        self.backend.write(Transaction {
            quarantine: &quarantine,
            new_metrics: &plan.new_metrics,
            new_series: &plan.new_series,
            last_updates: &plan.seen_durable,
            open_minutes: &plan.open,
            buckets,
            events,
            ..txn
        })?;
        // Durable: now let readers see it.
        self.quarantined
            .fetch_add(plan.quarantined.len() as u64, Ordering::Relaxed);
        self.index.write().apply(plan);
        drop(rollups);
        Ok(())
    }

    /// A write of its own (under the writer exclusion) that changes nothing
    /// held in memory.
    fn write_alone(&self, txn: Transaction<'_>) -> Result<Vec<u64>, StoreError> {
        let _writing = self.writer.lock();
        self.backend.write(txn)
    }
}

/// Adds the open minute `minute` (its key and stored state) to the rollup
/// bucket `rollup` among the `stored` rollups of a read (sorted by start):
/// merged into it, or as the bucket when the rollup has none yet (or an
/// unreadable one, kept at the end for quarantine). An unreadable minute is
/// kept for quarantine; a minute the rollup refuses is left out (folding
/// will record the refusal).
#[allow(clippy::type_complexity)]
fn add_open_minute(
    stored: &mut Vec<(BucketKey, Result<State, crate::DecodeError>)>,
    rollup: BucketKey,
    minute: BucketKey,
    state: Result<State, crate::DecodeError>,
) {
    let Ok(state) = state else {
        stored.push((minute, state));
        return;
    };
    match stored.binary_search_by_key(&rollup.bucket_ms, |(k, _)| k.bucket_ms) {
        Ok(i) => match &mut stored[i].1 {
            Ok(bucket) => {
                if bucket.check_merge(&state).is_ok() {
                    // Checked: cannot fail.
                    let _ = bucket.merge(&state);
                }
            }
            // The rollup goes to quarantine and starts afresh: the open
            // minute is all it holds.
            Err(_) => {
                let unreadable = std::mem::replace(&mut stored[i].1, Ok(state));
                stored.push((rollup, unreadable));
            }
        },
        Err(i) => stored.insert(i, (rollup, Ok(state))),
    }
}

impl<B: Backend> Store for BackedStore<B> {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn commit(&self, commit: Commit<'_>) -> Result<CommitOutcome, StoreError> {
        if commit.increments.is_empty()
            && commit.progress.is_empty()
            && commit.cursors.is_empty()
            && commit.spool_watermark_ms.is_none()
        {
            // Nothing to make durable: skip the transaction (and its fsync).
            return Ok(CommitOutcome::default());
        }
        let writing = self.writer.lock();
        let mut plan = {
            let index = self.index.read();
            let lookup = plan::lookup(&index, commit.increments);
            let minutes = self.backend.load_buckets(&lookup.keys)?;
            let classified = plan::classify(&index, commit.increments, lookup, minutes);
            let rest = self.backend.load_buckets(classified.to_load())?;
            plan::plan_commit(&index, commit.increments, commit.now_ms, classified, rest)
        };

        let mut spool_bytes = Vec::new();
        let append = commit.spool_watermark_ms.map(|watermark_ms| {
            let ledger = self.spool.lock();
            let seq = ledger.next_seq();
            let merged: Vec<_> = plan.merged.iter().map(|&i| &commit.increments[i]).collect();
            encode_spool_batch(seq, watermark_ms, commit.now_ms, &merged, &mut spool_bytes);
            ledger.plan_append(spool_bytes.len() as u64, self.opts.spool_max_bytes)
        });
        let dropped = append.and_then(|a| a.dropped);
        let mut events = plan.events(commit.now_ms);
        events.extend(dropped.map(|d| d.event(commit.now_ms)));
        let bucket_count = plan.bucket_count();
        self.write_plan(
            &mut plan,
            &events,
            Transaction {
                progress: commit.progress,
                cursors: commit.cursors,
                spool: append.map(|a| SpoolWrite {
                    append: Some((a.seq, spool_bytes.as_slice())),
                    delete_through: a.dropped.map(|d| d.last_seq),
                    counters: a.counters,
                }),
                ..Transaction::default()
            },
        )?;
        if !commit.progress.is_empty() {
            let mut sources = self.sources.write();
            for p in commit.progress {
                sources.insert(p.source_id.clone(), p.clone());
            }
        }
        if let Some(append) = &append {
            self.spool.lock().apply_append(append);
        }
        drop(writing);

        plan.log();
        if let Some(dropped) = dropped {
            dropped.log();
        }
        tracing::debug!(
            increments = commit.increments.len(),
            buckets = bucket_count,
            new_series = plan.new_series.len(),
            opened = plan.open.len(),
            cursors = commit.cursors.len(),
            merge_errors = plan.errors.len(),
            spool_seq = append.map(|a| a.seq),
            "store commit"
        );
        Ok(CommitOutcome {
            spool_seq: append.map(|a| a.seq),
            spool_dropped: dropped.map_or(0, |d| d.dropped),
            merge_errors: plan.errors,
            quarantined: plan.quarantined.len() as u64,
        })
    }

    fn metrics(&self) -> Vec<MetricInfo> {
        self.index.read().metrics()
    }

    fn metric_kind(&self, name: &str) -> Option<Kind> {
        self.index.read().kind_of(name)
    }

    fn series_of(&self, metric: &str) -> Vec<Arc<SeriesKey>> {
        self.index.read().series_of(metric)
    }

    fn series_count(&self) -> usize {
        self.index.read().series_count()
    }

    fn read_at(
        &self,
        series: &SeriesKey,
        resolution: Resolution,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, State)>, StoreError> {
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        let rollups = (resolution != Resolution::Minute).then(|| self.rollups.read());
        let (id, open) = {
            let index = self.index.read();
            let Some(id) = index.id_of(series) else {
                return Ok(Vec::new());
            };
            (id, index.open_minute(id))
        };
        let key = |resolution, bucket_ms| BucketKey {
            resolution,
            series: id,
            bucket_ms,
        };
        let mut stored: Vec<_> = self
            .backend
            .read_buckets(resolution, id, from_ms..to_ms)?
            .into_iter()
            .map(|(bucket_ms, state)| (key(resolution, bucket_ms), state))
            .collect();
        if let Some(minute_ms) = open.filter(|_| rollups.is_some()) {
            let bucket_ms = resolution.bucket_start(minute_ms);
            if (from_ms..to_ms).contains(&bucket_ms) {
                let minute = minute_ms..minute_ms.saturating_add(1);
                for (m, state) in self.backend.read_buckets(Resolution::Minute, id, minute)? {
                    add_open_minute(
                        &mut stored,
                        key(resolution, bucket_ms),
                        key(Resolution::Minute, m),
                        state,
                    );
                }
            }
        }
        drop(rollups);
        let mut out = Vec::with_capacity(stored.len());
        let mut unreadable = Vec::new();
        for (key, state) in stored {
            match state {
                Ok(state) => out.push((key.bucket_ms, state)),
                // Skipped: one bad state must not fail every query of its metric.
                Err(e) => unreadable.push(Quarantined {
                    key,
                    series: series.to_string(),
                    reason: unreadable_reason(&e),
                }),
            }
        }
        if !unreadable.is_empty()
            && let Err(e) = self.quarantine_now(&unreadable)
        {
            tracing::warn!(error = %e, %resolution, "unreadable states not moved to quarantine");
        }
        Ok(out)
    }

    fn sources(&self) -> Vec<SourceProgress> {
        self.sources.read().values().cloned().collect()
    }

    fn source(&self, id: &str) -> Option<SourceProgress> {
        self.sources.read().get(id).cloned()
    }

    fn cursors(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.backend.read_cursors(prefix)
    }

    fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    fn clear_quarantine(&self) -> Result<u64, StoreError> {
        let writing = self.writer.lock();
        let deleted = self.backend.clear_quarantine()?;
        self.quarantined.store(0, Ordering::Relaxed);
        drop(writing);
        if deleted > 0 {
            tracing::info!(deleted, "quarantined states deleted");
        }
        Ok(deleted)
    }

    fn spool_read(
        &self,
        after_seq: u64,
        max_batches: usize,
    ) -> Result<Vec<SpoolBatch>, StoreError> {
        self.backend
            .spool_read(after_seq, max_batches)?
            .into_iter()
            .map(|(seq, bytes)| {
                decode_spool_batch(&bytes)
                    .map_err(|e| StoreError::corrupt(format_args!("spool: batch {seq}"), e))
            })
            .collect()
    }

    fn spool_ack(&self, upto_seq: u64) -> Result<(), StoreError> {
        let _writing = self.writer.lock();
        let Some(ack) = self.spool.lock().plan_ack(upto_seq) else {
            return Ok(());
        };
        // Lost at a crash, the batches are sent again and acknowledged
        // again without being merged again: no sync of its own.
        self.backend.write(Transaction {
            spool: Some(SpoolWrite {
                append: None,
                delete_through: Some(ack.through),
                counters: ack.counters,
            }),
            lazy: true,
            ..Transaction::default()
        })?;
        self.spool.lock().apply_ack(&ack);
        Ok(())
    }

    fn spool_stats(&self) -> SpoolStats {
        self.spool.lock().stats()
    }

    fn delete_before(&self, resolution: Resolution, before_ms: i64) -> Result<u64, StoreError> {
        let _writing = self.writer.lock();
        if resolution == Resolution::Minute {
            self.fold_open_before(before_ms)?;
        }
        self.backend
            .delete_before(Retention::Buckets(resolution), before_ms)
    }

    fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.write_alone(Transaction {
            events,
            ..Transaction::default()
        })?;
        Ok(())
    }

    fn query_events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        if query.limit == 0 || query.to_ms.is_some_and(|to| to <= query.from_ms) {
            return Ok(Vec::new());
        }
        self.backend.events(query)
    }

    fn delete_events(&self, cutoffs: &EventCutoffs) -> Result<u64, StoreError> {
        let _writing = self.writer.lock();
        self.backend.delete_events(cutoffs)
    }

    fn expire_series_with(
        &self,
        idle_before: &dyn Fn(&SeriesKey) -> i64,
    ) -> Result<u64, StoreError> {
        let _writing = self.writer.lock();
        let (expiry, next_id) = {
            let index = self.index.read();
            (index.plan_expiry(idle_before), index.next_id())
        };
        if expiry.series.is_empty() {
            return Ok(0);
        }
        let ids: Vec<_> = expiry.series.iter().map(|(id, _)| *id).collect();
        self.backend.remove_series(&ids, &expiry.metrics, next_id)?;
        self.index.write().apply_expiry(&expiry);
        tracing::debug!(
            series = expiry.series.len(),
            metrics = expiry.metrics.len(),
            "series expired"
        );
        Ok(expiry.series.len() as u64)
    }

    fn update_alarms(&self, update: AlarmUpdate<'_>) -> Result<Vec<u64>, StoreError> {
        if update.is_empty() {
            return Ok(Vec::new());
        }
        self.write_alone(Transaction {
            alarm_states: update.states,
            alarm_clear: update.clear,
            alarm_history: update.history,
            notifications: update.notifications,
            events: update.events,
            ..Transaction::default()
        })
    }

    fn alarm_states(&self) -> Result<Vec<AlarmState>, StoreError> {
        let mut states = self.backend.alarm_states()?;
        states.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(states)
    }

    fn alarm_history(&self, limit: usize) -> Result<Vec<AlarmRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.backend.alarm_history(limit)
    }

    fn delete_alarm_history_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        let _writing = self.writer.lock();
        self.backend
            .delete_before(Retention::AlarmHistory, before_ms)
    }

    fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.backend.outbox(limit)
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        self.backend.outbox_len()
    }

    fn outbox_retry(
        &self,
        id: u64,
        attempts: u32,
        next_attempt_ms: i64,
        last_error: &str,
    ) -> Result<bool, StoreError> {
        let _writing = self.writer.lock();
        self.backend
            .outbox_retry(id, attempts, next_attempt_ms, last_error)
    }

    fn outbox_delete(&self, id: u64) -> Result<bool, StoreError> {
        let _writing = self.writer.lock();
        self.backend.outbox_delete(id)
    }
}
