//! [`MemoryStore`]: the store's behaviour without durability.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use strata_model::{Kind, SeriesKey, State};

use crate::codec::{decode_spool_batch, encode_spool_batch};
use crate::index::{Buckets, SeriesIndex, Stored, plan_commit};
use crate::spool::enforce_spool_cap;
use crate::{
    AlarmKey, AlarmRecord, AlarmState, AlarmUpdate, Commit, CommitOutcome, Event, MetricInfo,
    OutboxEntry, Resolution, SourceProgress, SpoolBatch, SpoolStats, Store, StoreError,
    StoreOptions, new_epoch,
};

/// A [`Store`] kept entirely in memory: for tests and for nodes that accept
/// losing their state (and starting a new epoch) on every restart.
///
/// Behaves exactly like [`crate::RedbStore`], including spool byte accounting:
/// batches are kept encoded, so the cap drops the same batches.
pub struct MemoryStore {
    /// New per instance: a restarted node has lost everything, and its
    /// upstream must learn that its seqs start over.
    epoch: u64,
    opts: StoreOptions,
    /// One lock for everything: a commit is a few map operations, so readers
    /// wait microseconds, and they never see half a commit.
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    index: SeriesIndex,
    /// Per resolution, indexed by [`Resolution::index`].
    buckets: [Buckets; 3],
    sources: BTreeMap<String, SourceProgress>,
    /// seq → encoded batch, as the durable store keeps them.
    spool: BTreeMap<u64, Vec<u8>>,
    spool_stats: SpoolStats,
    /// (ts_ms, id) → event; ids increase per store so equal timestamps never
    /// collide.
    events: BTreeMap<(i64, u64), Event>,
    /// Last event id assigned.
    last_event_id: u64,
    alarm_states: BTreeMap<AlarmKey, AlarmState>,
    /// (ts_ms, id) → record, like the event log.
    alarm_history: BTreeMap<(i64, u64), AlarmRecord>,
    last_history_id: u64,
    /// id → entry; ids are never reused.
    outbox: BTreeMap<u64, OutboxEntry>,
    last_outbox_id: u64,
}

impl Inner {
    fn push_event(&mut self, event: Event) {
        self.last_event_id += 1;
        self.events.insert((event.ts_ms, self.last_event_id), event);
    }
}

impl MemoryStore {
    pub fn new(opts: StoreOptions) -> Self {
        MemoryStore {
            epoch: new_epoch(),
            opts,
            inner: RwLock::new(Inner {
                index: SeriesIndex::new(1),
                ..Inner::default()
            }),
        }
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("epoch", &self.epoch)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Store for MemoryStore {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn commit(&self, commit: Commit<'_>) -> Result<CommitOutcome, StoreError> {
        let mut guard = self.inner.write();
        let inner = &mut *guard;
        let buckets = &inner.buckets;
        let plan = plan_commit(
            &inner.index,
            commit.increments,
            commit.now_ms,
            |r, id, bucket| {
                // States held as values are never unreadable.
                Ok(buckets[r.index()]
                    .get(&(id, bucket))
                    .cloned()
                    .map_or(Stored::Absent, Stored::State))
            },
        )?;

        let mut outcome = CommitOutcome::default();
        let mut dropped = None;
        if let Some(watermark_ms) = commit.spool_watermark_ms {
            let mut stats = inner.spool_stats.clone();
            let seq = stats.last_seq + 1;
            let merged: Vec<_> = plan.merged.iter().map(|&i| &commit.increments[i]).collect();
            let mut bytes = Vec::new();
            encode_spool_batch(seq, watermark_ms, commit.now_ms, &merged, &mut bytes);
            stats.last_seq = seq;
            stats.batches += 1;
            stats.bytes += bytes.len() as u64;
            inner.spool.insert(seq, bytes);
            let spool = &mut inner.spool;
            dropped = enforce_spool_cap(&mut stats, self.opts.spool_max_bytes, || {
                Ok(match spool.first_key_value() {
                    Some((&oldest, _)) if oldest != seq => spool
                        .remove(&oldest)
                        .map(|bytes| (oldest, bytes.len() as u64)),
                    _ => None,
                })
            })?;
            stats.first_seq = spool.first_key_value().map_or(0, |(&s, _)| s);
            inner.spool_stats = stats;
            outcome.spool_seq = Some(seq);
            outcome.spool_dropped = dropped.map_or(0, |d| d.dropped);
        }

        if let Some(dropped) = dropped {
            inner.push_event(dropped.event(commit.now_ms, self.opts.spool_max_bytes));
        }
        inner.index.apply(&plan);
        for (stored, planned) in inner.buckets.iter_mut().zip(plan.buckets) {
            stored.extend(planned);
        }
        for progress in commit.progress {
            inner
                .sources
                .insert(progress.source_id.clone(), progress.clone());
        }
        drop(guard);

        if let Some(dropped) = dropped {
            dropped.log(self.opts.spool_max_bytes);
        }
        outcome.merge_errors = plan.errors;
        Ok(outcome)
    }

    fn metrics(&self) -> Vec<MetricInfo> {
        self.inner.read().index.metrics()
    }

    fn metric_kind(&self, name: &str) -> Option<Kind> {
        self.inner.read().index.kind_of(name)
    }

    fn series_of(&self, metric: &str) -> Vec<Arc<SeriesKey>> {
        self.inner.read().index.series_of(metric)
    }

    fn series_count(&self) -> usize {
        self.inner.read().index.series_count()
    }

    fn read_at(
        &self,
        series: &SeriesKey,
        resolution: Resolution,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, State)>, StoreError> {
        let inner = self.inner.read();
        let Some(id) = inner.index.id_of(series) else {
            return Ok(Vec::new());
        };
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        Ok(inner.buckets[resolution.index()]
            .range((id, from_ms)..(id, to_ms))
            .map(|(&(_, bucket), state)| (bucket, state.clone()))
            .collect())
    }

    fn quarantined(&self) -> u64 {
        0
    }

    fn clear_quarantine(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn sources(&self) -> Vec<SourceProgress> {
        self.inner.read().sources.values().cloned().collect()
    }

    fn source(&self, id: &str) -> Option<SourceProgress> {
        self.inner.read().sources.get(id).cloned()
    }

    fn spool_read(
        &self,
        after_seq: u64,
        max_batches: usize,
    ) -> Result<Vec<SpoolBatch>, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let inner = self.inner.read();
        inner
            .spool
            .range((Excluded(after_seq), Unbounded))
            .take(max_batches)
            .map(|(seq, bytes)| {
                decode_spool_batch(bytes)
                    .map_err(|e| StoreError::Corrupt(format!("spool batch {seq}: {e}")))
            })
            .collect()
    }

    fn spool_ack(&self, upto_seq: u64) -> Result<(), StoreError> {
        let mut guard = self.inner.write();
        let inner = &mut *guard;
        let keep = match upto_seq.checked_add(1) {
            Some(from) => inner.spool.split_off(&from),
            None => BTreeMap::new(),
        };
        let acked = std::mem::replace(&mut inner.spool, keep);
        let stats = &mut inner.spool_stats;
        stats.batches = stats.batches.saturating_sub(acked.len() as u64);
        let freed: u64 = acked.values().map(|b| b.len() as u64).sum();
        stats.bytes = stats.bytes.saturating_sub(freed);
        stats.first_seq = inner.spool.first_key_value().map_or(0, |(&s, _)| s);
        Ok(())
    }

    fn spool_stats(&self) -> SpoolStats {
        self.inner.read().spool_stats.clone()
    }

    fn delete_before(&self, resolution: Resolution, before_ms: i64) -> Result<u64, StoreError> {
        let mut inner = self.inner.write();
        let buckets = &mut inner.buckets[resolution.index()];
        let before = buckets.len();
        buckets.retain(|&(_, bucket), _| bucket >= before_ms);
        Ok((before - buckets.len()) as u64)
    }

    fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
        let mut inner = self.inner.write();
        for event in events {
            inner.push_event(event.clone());
        }
        Ok(())
    }

    fn events(&self, since_ms: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let inner = self.inner.read();
        Ok(inner
            .events
            .range((since_ms, 0)..)
            .rev()
            .take(limit)
            .map(|(_, event)| event.clone())
            .collect())
    }

    fn delete_events_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut inner = self.inner.write();
        let kept = inner.events.split_off(&(before_ms, 0));
        let deleted = std::mem::replace(&mut inner.events, kept);
        Ok(deleted.len() as u64)
    }

    fn expire_series(&self, idle_before_ms: i64) -> Result<u64, StoreError> {
        let mut guard = self.inner.write();
        let inner = &mut *guard;
        let expiry = inner.index.plan_expiry(idle_before_ms);
        if expiry.series.is_empty() {
            return Ok(0);
        }
        let gone: std::collections::HashSet<u64> =
            expiry.series.iter().map(|(id, _)| *id).collect();
        for buckets in &mut inner.buckets {
            buckets.retain(|(id, _), _| !gone.contains(id));
        }
        inner.index.apply_expiry(&expiry);
        Ok(expiry.series.len() as u64)
    }

    fn update_alarms(&self, update: AlarmUpdate<'_>) -> Result<Vec<u64>, StoreError> {
        let mut inner = self.inner.write();
        for state in update.states {
            inner.alarm_states.insert(state.key.clone(), state.clone());
        }
        for key in update.clear {
            inner.alarm_states.remove(key);
        }
        for record in update.history {
            inner.last_history_id += 1;
            let id = inner.last_history_id;
            inner
                .alarm_history
                .insert((record.ts_ms, id), record.clone());
        }
        let mut ids = Vec::with_capacity(update.notifications.len());
        for notification in update.notifications {
            inner.last_outbox_id += 1;
            let id = inner.last_outbox_id;
            inner.outbox.insert(
                id,
                OutboxEntry {
                    id,
                    notification: notification.clone(),
                    attempts: 0,
                    next_attempt_ms: 0,
                    last_error: String::new(),
                },
            );
            ids.push(id);
        }
        for event in update.events {
            inner.push_event(event.clone());
        }
        Ok(ids)
    }

    fn alarm_states(&self) -> Result<Vec<AlarmState>, StoreError> {
        Ok(self.inner.read().alarm_states.values().cloned().collect())
    }

    fn alarm_history(&self, limit: usize) -> Result<Vec<AlarmRecord>, StoreError> {
        let inner = self.inner.read();
        Ok(inner
            .alarm_history
            .values()
            .rev()
            .take(limit)
            .cloned()
            .collect())
    }

    fn delete_alarm_history_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut inner = self.inner.write();
        let kept = inner.alarm_history.split_off(&(before_ms, 0));
        let deleted = std::mem::replace(&mut inner.alarm_history, kept);
        Ok(deleted.len() as u64)
    }

    fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let inner = self.inner.read();
        Ok(inner.outbox.values().take(limit).cloned().collect())
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        Ok(self.inner.read().outbox.len() as u64)
    }

    fn outbox_retry(
        &self,
        id: u64,
        attempts: u32,
        next_attempt_ms: i64,
        last_error: &str,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner.write();
        let Some(entry) = inner.outbox.get_mut(&id) else {
            return Ok(false);
        };
        entry.attempts = attempts;
        entry.next_attempt_ms = next_attempt_ms;
        entry.last_error = last_error.to_owned();
        Ok(true)
    }

    fn outbox_delete(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.inner.write().outbox.remove(&id).is_some())
    }
}
