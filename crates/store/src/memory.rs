//! [`Memory`]: the backend of best-effort nodes, plain maps in memory.
//!
//! Kept apart from [`Redb`](crate::Redb) on measurement: redb on its
//! in-memory backend cost about 50% more CPU per sample at the global tier
//! of `strata bench --best-effort` and doubled its memory, because every
//! commit encodes and decodes each state and writes B-tree pages, where maps
//! hold states as values (docs/PERFORMANCE.md has the figures). Everything
//! above the primitives is shared, through [`BackedStore`].

use std::collections::{BTreeMap, HashSet};
use std::ops::{Bound, Range};

use parking_lot::RwLock;
use strata_model::State;

use crate::backend::{Backend, BucketKey, Buckets, Restored, Retention, Stored, Transaction};
use crate::{
    AlarmKey, AlarmRecord, AlarmState, BackedStore, DecodeError, Event, EventCutoffs, EventQuery,
    OutboxEntry, Resolution, SeriesId, StoreError, StoreOptions, new_epoch,
};

/// A [`Backend`] in memory: for tests, and for nodes that accept losing
/// their state (and starting a new epoch) on every restart
/// (`storage.engine = "memory"`).
///
/// It lives exactly as long as its [`MemoryStore`], which restores from it
/// once, empty. So it keeps only what is read back through the primitives:
/// bucket states (as values, never encoded), spool batches (encoded, so the
/// spool cap counts the same bytes as on disk), input cursors, the event log
/// and the alarm tables. Series keys, metric kinds, last-update stamps,
/// source progress and spool counters are held by the store above it and are
/// not copied here. Its states are never unreadable, so nothing is ever
/// quarantined.
#[derive(Debug)]
pub struct Memory {
    /// New per instance: a restarted node has lost everything, and its
    /// upstream must learn that its seqs start over.
    epoch: u64,
    /// One lock for everything: a write is a few map operations, so readers
    /// wait microseconds, and they never see half of one.
    tables: RwLock<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    /// Per resolution, indexed by [`Resolution::index`].
    buckets: [Buckets; 3],
    /// seq → encoded batch.
    spool: BTreeMap<u64, Vec<u8>>,
    /// Input cursor key → value.
    cursors: BTreeMap<String, Vec<u8>>,
    /// (ts_ms, id) → event.
    events: BTreeMap<(i64, u64), Event>,
    last_event_id: u64,
    alarm_states: BTreeMap<AlarmKey, AlarmState>,
    /// (ts_ms, id) → record.
    alarm_history: BTreeMap<(i64, u64), AlarmRecord>,
    last_history_id: u64,
    /// id → entry.
    outbox: BTreeMap<u64, OutboxEntry>,
    last_outbox_id: u64,
}

/// The store of a best-effort node: [`BackedStore`] over [`Memory`].
pub type MemoryStore = BackedStore<Memory>;

impl BackedStore<Memory> {
    /// A new, empty store in memory, with a new epoch.
    pub fn new(opts: StoreOptions) -> Self {
        let epoch = new_epoch();
        let backend = Memory {
            epoch,
            tables: RwLock::new(Tables::default()),
        };
        BackedStore::empty(backend, epoch, opts)
    }
}

impl Backend for Memory {
    fn restore(&self) -> Result<Restored, StoreError> {
        Ok(Restored {
            epoch: self.epoch,
            ..Restored::default()
        })
    }

    fn load_buckets(&self, keys: &[BucketKey]) -> Result<Vec<Stored>, StoreError> {
        let tables = self.tables.read();
        Ok(keys
            .iter()
            .map(|k| {
                tables.buckets[k.resolution.index()]
                    .get(&(k.series, k.bucket_ms))
                    .cloned()
                    .map_or(Stored::Absent, Stored::State)
            })
            .collect())
    }

    fn read_buckets(
        &self,
        resolution: Resolution,
        series: SeriesId,
        range: Range<i64>,
    ) -> Result<Vec<(i64, Result<State, DecodeError>)>, StoreError> {
        let tables = self.tables.read();
        Ok(tables.buckets[resolution.index()]
            .range((series, range.start)..(series, range.end))
            .map(|(&(_, bucket_ms), state)| (bucket_ms, Ok(state.clone())))
            .collect())
    }

    fn write(&self, txn: Transaction<'_>) -> Result<Vec<u64>, StoreError> {
        let mut guard = self.tables.write();
        let tables = &mut *guard;
        // `txn.quarantine` is always empty: states held as values decode.
        for (stored, written) in tables.buckets.iter_mut().zip(txn.buckets) {
            stored.extend(written);
        }
        if let Some(spool) = txn.spool {
            if let Some(through) = spool.delete_through {
                tables.spool = match through.checked_add(1) {
                    Some(from) => tables.spool.split_off(&from),
                    None => BTreeMap::new(),
                };
            }
            if let Some((seq, bytes)) = spool.append {
                tables.spool.insert(seq, bytes.to_vec());
            }
        }
        for cursor in txn.cursors {
            match &cursor.value {
                Some(value) => {
                    tables.cursors.insert(cursor.key.clone(), value.clone());
                }
                None => {
                    tables.cursors.remove(&cursor.key);
                }
            }
        }
        for event in txn.events {
            tables.last_event_id += 1;
            let id = tables.last_event_id;
            tables.events.insert((event.ts_ms, id), event.clone());
        }
        for state in txn.alarm_states {
            tables.alarm_states.insert(state.key.clone(), state.clone());
        }
        for key in txn.alarm_clear {
            tables.alarm_states.remove(key);
        }
        for record in txn.alarm_history {
            tables.last_history_id += 1;
            let id = tables.last_history_id;
            tables
                .alarm_history
                .insert((record.ts_ms, id), record.clone());
        }
        let mut ids = Vec::with_capacity(txn.notifications.len());
        for notification in txn.notifications {
            tables.last_outbox_id += 1;
            let id = tables.last_outbox_id;
            let entry = OutboxEntry {
                id,
                notification: notification.clone(),
                attempts: 0,
                next_attempt_ms: 0,
                last_error: String::new(),
            };
            tables.outbox.insert(id, entry);
            ids.push(id);
        }
        Ok(ids)
    }

    fn delete_before(&self, what: Retention, before_ms: i64) -> Result<u64, StoreError> {
        let mut tables = self.tables.write();
        let deleted = match what {
            Retention::Buckets(resolution) => {
                let buckets = &mut tables.buckets[resolution.index()];
                let before = buckets.len();
                buckets.retain(|&(_, bucket_ms), _| bucket_ms >= before_ms);
                before - buckets.len()
            }
            Retention::AlarmHistory => {
                let kept = tables.alarm_history.split_off(&(before_ms, 0));
                std::mem::replace(&mut tables.alarm_history, kept).len()
            }
        };
        Ok(deleted as u64)
    }

    fn delete_events(&self, cutoffs: &EventCutoffs) -> Result<u64, StoreError> {
        let mut tables = self.tables.write();
        // Only events before the latest cutoff can go.
        let kept = tables.events.split_off(&(cutoffs.latest_ms(), 0));
        let mut older = std::mem::replace(&mut tables.events, kept);
        let before = older.len();
        older.retain(|&(ts_ms, _), event| !cutoffs.deletes(ts_ms, event.kind));
        let deleted = before - older.len();
        tables.events.append(&mut older);
        Ok(deleted as u64)
    }

    fn remove_series(
        &self,
        series: &[SeriesId],
        _metrics: &[String],
        _next_series_id: SeriesId,
    ) -> Result<(), StoreError> {
        let gone: HashSet<SeriesId> = series.iter().copied().collect();
        let mut tables = self.tables.write();
        for buckets in &mut tables.buckets {
            buckets.retain(|(id, _), _| !gone.contains(id));
        }
        Ok(())
    }

    fn clear_quarantine(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn spool_read(
        &self,
        after_seq: u64,
        max_batches: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let tables = self.tables.read();
        Ok(tables
            .spool
            .range((Bound::Excluded(after_seq), Bound::Unbounded))
            .take(max_batches)
            .map(|(&seq, bytes)| (seq, bytes.clone()))
            .collect())
    }

    fn events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let tables = self.tables.read();
        let end = match query.to_ms {
            Some(to_ms) => Bound::Excluded((to_ms, 0)),
            None => Bound::Unbounded,
        };
        Ok(tables
            .events
            .range((Bound::Included((query.from_ms, 0)), end))
            .rev()
            .filter(|(_, event)| query.matches(event.ts_ms, event.kind))
            .take(query.limit)
            .map(|(_, event)| event.clone())
            .collect())
    }

    fn alarm_states(&self) -> Result<Vec<AlarmState>, StoreError> {
        Ok(self.tables.read().alarm_states.values().cloned().collect())
    }

    fn alarm_history(&self, limit: usize) -> Result<Vec<AlarmRecord>, StoreError> {
        let tables = self.tables.read();
        Ok(tables
            .alarm_history
            .values()
            .rev()
            .take(limit)
            .cloned()
            .collect())
    }

    fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let tables = self.tables.read();
        Ok(tables.outbox.values().take(limit).cloned().collect())
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        Ok(self.tables.read().outbox.len() as u64)
    }

    fn outbox_retry(
        &self,
        id: u64,
        attempts: u32,
        next_attempt_ms: i64,
        last_error: &str,
    ) -> Result<bool, StoreError> {
        let mut tables = self.tables.write();
        let Some(entry) = tables.outbox.get_mut(&id) else {
            return Ok(false);
        };
        entry.attempts = attempts;
        entry.next_attempt_ms = next_attempt_ms;
        entry.last_error = last_error.to_owned();
        Ok(true)
    }

    fn outbox_delete(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.tables.write().outbox.remove(&id).is_some())
    }

    fn read_cursors(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tables = self.tables.read();
        Ok(tables
            .cursors
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }
}
