//! [`RedbStore`]: the durable store, one redb file in the node's data directory.
//!
//! Tables (all in `strata.redb`):
//!
//! | table          | key                       | value                                      |
//! |----------------|---------------------------|--------------------------------------------|
//! | `series`       | series id `u64`           | encoded series key (`codec.rs`)            |
//! | `series_seen`  | series id `u64`           | `i64`: last commit (`now_ms`) that merged into it |
//! | `metrics`      | metric name               | kind tag ([`Kind::as_str`])                |
//! | `buckets`      | (series id, minute ms)    | [`State::encode`] bytes                    |
//! | `buckets_hour` | (series id, hour ms)      | [`State::encode`] bytes                    |
//! | `buckets_day`  | (series id, day ms)       | [`State::encode`] bytes                    |
//! | `sources`      | source id                 | (epoch, seq, watermark ms, last seen ms)   |
//! | `spool`        | seq `u64`                 | encoded [`SpoolBatch`] (`codec.rs`)        |
//! | `events`       | (ts ms, event id `u64`)   | encoded [`Event`] kind and message (`codec.rs`) |
//! | `alarm_states` | encoded [`AlarmKey`](crate::AlarmKey) | encoded [`AlarmState`] (`codec.rs`)        |
//! | `alarm_history`| (ts ms, record id `u64`)  | encoded [`AlarmRecord`] (`codec.rs`)       |
//! | `alarm_outbox` | entry id `u64`            | encoded [`OutboxEntry`] (`codec.rs`)       |
//! | `meta`         | name                      | `u64`: format version, epoch, spool, event, history and outbox counters, next series id |
//! | `quarantine`   | (bucket table name, series id, bucket ms) | the unreadable bytes, as they were stored |
//!
//! Bucket keys sort by series then time, so reading one series' range is one
//! contiguous scan. The three bucket tables share that layout and are written
//! together by every commit ([`Resolution`]). Event ids come from a counter
//! persisted in `meta`, so they keep increasing across restarts and equal
//! timestamps never collide. Every commit uses redb's default durability: it
//! is on disk (fsynced) when [`Store::commit`] returns.
//!
//! Series, metric kinds, source progress, spool counters and the event
//! counter are small and are loaded into memory on open; readers of those
//! never open a transaction. Bucket, spool and event reads use redb read
//! transactions, which see the last committed snapshot and never wait for the
//! writer.
//!
//! Older files are upgraded on open, in the open transaction. Format 1
//! (before hour and day rollups) gets its hour and day tables built from its
//! minutes. Formats 1 and 2 (before series expiry) get every series stamped
//! as last updated at the time of the upgrade, so none expires earlier than
//! `series_ttl` after it; their alarm tables start empty.
//!
//! A bucket state that does not decode (a corrupt page, or a state an older
//! version wrote that no longer validates) never stops a commit or a query:
//! the commit or read that meets it moves its bytes to `quarantine` in a
//! write transaction of its own or the commit's, with a
//! [`Event::STATE_QUARANTINED`] event, and the bucket starts afresh.
//! [`Store::quarantined`] counts the table's entries (health shows them).
//!
//! Series expiry deletes a series' row, its `series_seen` stamp and its
//! buckets at every resolution, and records the next series id in `meta` so
//! that the ids of expired series are not handed out again after a restart.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    TableHandle, WriteTransaction,
};
use strata_model::{Kind, SeriesKey, State};

use crate::codec::{
    decode_alarm_key, decode_alarm_record, decode_alarm_state, decode_event, decode_outbox_entry,
    decode_series_key, decode_spool_batch, encode_alarm_key, encode_alarm_record,
    encode_alarm_state, encode_event, encode_outbox_entry, encode_series_key, encode_spool_batch,
};
use crate::error::DbContext;
use crate::index::{CommitPlan, Quarantined, SeriesIndex, Stored, plan_commit};
use crate::spool::enforce_spool_cap;
use crate::{
    AlarmRecord, AlarmState, AlarmUpdate, Commit, CommitOutcome, Event, MetricInfo, OutboxEntry,
    Resolution, SeriesId, SourceProgress, SpoolBatch, SpoolStats, Store, StoreError, StoreOptions,
    new_epoch,
};

type BucketTable = TableDefinition<'static, (u64, i64), &'static [u8]>;

pub(crate) const SERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("series");
/// Series id → `now_ms` of the last commit that merged into it.
pub(crate) const SERIES_SEEN: TableDefinition<u64, i64> = TableDefinition::new("series_seen");
const METRICS: TableDefinition<&str, &str> = TableDefinition::new("metrics");
/// Minute buckets (the name predates the rollups).
pub(crate) const BUCKETS: BucketTable = TableDefinition::new("buckets");
pub(crate) const BUCKETS_HOUR: BucketTable = TableDefinition::new("buckets_hour");
pub(crate) const BUCKETS_DAY: BucketTable = TableDefinition::new("buckets_day");
/// (epoch, seq, watermark_ms, last_seen_ms)
const SOURCES: TableDefinition<&str, (u64, u64, i64, i64)> = TableDefinition::new("sources");
const SPOOL: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");
/// (ts_ms, event id) → encoded kind and message.
const EVENTS: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("events");
/// Encoded alarm key → encoded alarm state.
const ALARM_STATES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("alarm_states");
/// (ts_ms, record id) → encoded alarm record.
const ALARM_HISTORY: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("alarm_history");
/// Entry id → encoded outbox entry.
const ALARM_OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("alarm_outbox");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (bucket table name, series id, bucket ms) → the bytes that did not decode.
pub(crate) const QUARANTINE: TableDefinition<(&str, u64, i64), &[u8]> =
    TableDefinition::new("quarantine");

/// The bucket table of a resolution.
pub(crate) fn bucket_table(resolution: Resolution) -> BucketTable {
    match resolution {
        Resolution::Minute => BUCKETS,
        Resolution::Hour => BUCKETS_HOUR,
        Resolution::Day => BUCKETS_DAY,
    }
}

/// Layout version of this file; bumped when a table's encoding changes.
/// 2: hour and day rollup tables (a format 1 file is upgraded on open).
/// 3: `series_seen` (series expiry) and the alarm tables (format 1 and 2
/// files are upgraded on open).
const FORMAT_VERSION: u64 = 3;
pub(crate) const META_FORMAT_VERSION: &str = "format_version";
const META_EPOCH: &str = "epoch";
/// Last spool seq ever assigned; kept when the spool empties so seqs stay
/// contiguous across acks and restarts.
const META_SPOOL_LAST_SEQ: &str = "spool_last_seq";
const META_SPOOL_BYTES: &str = "spool_bytes";
const META_SPOOL_DROPPED: &str = "spool_dropped_batches";
/// Last event id ever assigned; kept when retention empties the log.
const META_EVENT_LAST_ID: &str = "event_last_id";
/// The id the next new series gets; written by series expiry, so ids of
/// expired series stay retired (otherwise it is the highest id plus one).
const META_SERIES_NEXT_ID: &str = "series_next_id";
/// Last alarm history record id ever assigned.
const META_ALARM_HISTORY_LAST_ID: &str = "alarm_history_last_id";
/// Last outbox entry id ever assigned; kept when the outbox empties.
const META_OUTBOX_LAST_ID: &str = "alarm_outbox_last_id";

/// The durable [`Store`]: redb in `<data_dir>/strata.redb`.
///
/// Writers (commit, ack, retention) are serialized; readers run alongside them
/// on committed snapshots.
pub struct RedbStore {
    pub(crate) db: Database,
    /// Where the file lives, for error messages and logs.
    path: PathBuf,
    /// Persisted at creation: the same until the file is lost.
    epoch: u64,
    opts: StoreOptions,
    /// Held by a writer from its transaction's start until its in-memory
    /// effects (new series, progress, spool counters) are published, so the
    /// next writer plans against an index holding every committed series and
    /// never assigns one key two ids. Readers never take it.
    writer: Mutex<()>,
    /// Every series and metric kind, loaded on open.
    index: RwLock<SeriesIndex>,
    /// Committed progress of every source, loaded on open.
    sources: RwLock<BTreeMap<String, SourceProgress>>,
    /// Spool counters as of the last commit; the durable copy is in `meta`.
    spool_stats: Mutex<SpoolStats>,
    /// Last event id assigned, as of the last commit; the durable copy is in
    /// `meta`. Only writers (holding `writer`) read or change it.
    last_event_id: Mutex<u64>,
    /// Entries of the `quarantine` table, loaded on open; changed only by
    /// writers, after their transaction committed.
    quarantined: AtomicU64,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("epoch", &self.epoch)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// File name of the database inside the data directory.
    pub const FILE_NAME: &'static str = "strata.redb";

    /// Opens (creating if needed) the store in `dir`, file `strata.redb`, and
    /// restores series, metric kinds, source progress, spool counters and the
    /// event counter.
    ///
    /// A file that exists but cannot be used is refused with
    /// [`StoreError::Unreadable`] and left as it is: an empty file (redb would
    /// silently start a new database in it), one that is not a redb file, one
    /// whose pages fail their checksums (every page is verified on open), and
    /// one whose reading panics. A missing file is created.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(Self::FILE_NAME);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == 0 => {
                return Err(StoreError::Unreadable(format!(
                    "{} is empty (0 bytes): the node's data is gone from it, and starting on it would \
                     silently begin a new store with a new epoch",
                    path.display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Io(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", path.display()),
                )));
            }
        }
        // redb trusts its pages once their checksums passed; a panic while
        // reading a file altered outside it is still a refusal, not a crash.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::open_file(path.clone(), opts)
        }))
        .unwrap_or_else(|payload| {
            Err(StoreError::Unreadable(format!(
                "{}: reading it panicked: {}",
                path.display(),
                panic_text(payload.as_ref())
            )))
        })
    }

    /// Moves an unreadable store file aside, to
    /// `strata.redb.corrupt-<unix ms>` in the same directory, so that the
    /// next [`RedbStore::open`] starts a new store; returns the new path.
    /// The file is renamed, never deleted.
    pub fn move_aside(dir: &Path) -> Result<PathBuf, StoreError> {
        let path = dir.join(Self::FILE_NAME);
        let aside = dir.join(format!("{}.corrupt-{}", Self::FILE_NAME, wall_clock_ms()));
        std::fs::rename(&path, &aside).map_err(|e| {
            StoreError::Io(std::io::Error::new(
                e.kind(),
                format!("moving {} to {}: {e}", path.display(), aside.display()),
            ))
        })?;
        Ok(aside)
    }

    fn open_file(path: PathBuf, opts: StoreOptions) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(opts.cache_bytes)
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|e| open_error(&path, e))?;
        let epoch = initialize(&db)?;

        let txn = db.begin_read().ctx("open: begin read")?;
        let index = load_index(&txn, wall_clock_ms())?;
        let sources = load_sources(&txn)?;
        let spool_stats = load_spool_stats(&txn)?;
        let last_event_id = load_last_event_id(&txn)?;
        let quarantined = load_quarantine_len(&txn)?;
        drop(txn);
        if quarantined > 0 {
            tracing::warn!(
                path = %path.display(),
                quarantined,
                "store holds unreadable states moved to quarantine (see events of kind state_quarantined)"
            );
        }

        tracing::info!(
            path = %path.display(),
            epoch,
            series = index.series_count(),
            sources = sources.len(),
            spool_batches = spool_stats.batches,
            spool_last_seq = spool_stats.last_seq,
            "store opened"
        );
        Ok(RedbStore {
            db,
            path,
            epoch,
            opts,
            writer: Mutex::new(()),
            index: RwLock::new(index),
            sources: RwLock::new(sources),
            spool_stats: Mutex::new(spool_stats),
            last_event_id: Mutex::new(last_event_id),
            quarantined: AtomicU64::new(quarantined),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the unreadable buckets a read met to `quarantine`, in a write
    /// transaction of their own, with their events. A bucket a commit has
    /// rewritten since the read (it is readable now) is left alone.
    fn quarantine_now(&self, found: &[Quarantined]) -> Result<(), StoreError> {
        let writing = self.writer.lock();
        let txn = self.db.begin_write().ctx("quarantine: begin write")?;
        let mut tables = Vec::with_capacity(Resolution::ALL.len());
        for r in Resolution::ALL {
            tables.push(
                txn.open_table(bucket_table(r))
                    .ctx("quarantine: open table")?,
            );
        }
        let mut still = Vec::new();
        for q in found {
            if let Stored::Unreadable(_) =
                load_bucket(&tables[q.resolution.index()], q.resolution, q.id, q.bucket)?
            {
                still.push(q.clone());
            }
        }
        quarantine_buckets(&txn, &mut tables, &still)?;
        drop(tables);
        let now_ms = wall_clock_ms();
        let events: Vec<Event> = still.iter().map(|q| q.event(now_ms)).collect();
        let mut last_event_id = *self.last_event_id.lock();
        insert_events(&txn, &events, &mut last_event_id, "quarantine")?;
        txn.commit().ctx("quarantine: commit")?;
        *self.last_event_id.lock() = last_event_id;
        self.quarantined
            .fetch_add(still.len() as u64, Ordering::Relaxed);
        drop(writing);
        log_quarantined(&still);
        Ok(())
    }

    /// Writes a commit's plan, progress and spool batch into `txn`.
    fn write_commit(
        &self,
        txn: &WriteTransaction,
        commit: &Commit<'_>,
        plan: &CommitPlan,
        stats: &mut SpoolStats,
        outcome: &mut CommitOutcome,
    ) -> Result<Option<crate::spool::SpoolDrop>, StoreError> {
        {
            let mut series = txn.open_table(SERIES).ctx("commit: open table series")?;
            let mut buf = Vec::new();
            for (id, key) in &plan.new_series {
                buf.clear();
                encode_series_key(key, &mut buf);
                series.insert(*id, buf.as_slice()).map_err(|e| {
                    StoreError::db(format_args!("commit: table series: insert {id}"), e)
                })?;
            }
        }
        {
            let mut seen = txn
                .open_table(SERIES_SEEN)
                .ctx("commit: open table series_seen")?;
            for &(id, seen_ms) in &plan.seen {
                seen.insert(id, seen_ms).map_err(|e| {
                    StoreError::db(format_args!("commit: table series_seen: write {id}"), e)
                })?;
            }
        }
        {
            let mut metrics = txn.open_table(METRICS).ctx("commit: open table metrics")?;
            for (name, kind) in &plan.new_metrics {
                metrics.insert(name.as_str(), kind.as_str()).map_err(|e| {
                    StoreError::db(format_args!("commit: table metrics: insert {name}"), e)
                })?;
            }
        }
        {
            let mut sources = txn.open_table(SOURCES).ctx("commit: open table sources")?;
            for p in commit.progress {
                sources
                    .insert(
                        p.source_id.as_str(),
                        (p.epoch, p.seq, p.watermark_ms, p.last_seen_ms),
                    )
                    .map_err(|e| {
                        StoreError::db(
                            format_args!("commit: table sources: upsert {}", p.source_id),
                            e,
                        )
                    })?;
            }
        }

        let Some(watermark_ms) = commit.spool_watermark_ms else {
            return Ok(None);
        };
        let seq = stats.last_seq + 1;
        let merged: Vec<_> = plan.merged.iter().map(|&i| &commit.increments[i]).collect();
        let mut bytes = Vec::new();
        encode_spool_batch(seq, watermark_ms, commit.now_ms, &merged, &mut bytes);

        let mut spool = txn.open_table(SPOOL).ctx("commit: open table spool")?;
        spool
            .insert(seq, bytes.as_slice())
            .map_err(|e| StoreError::db(format_args!("commit: table spool: insert {seq}"), e))?;
        stats.last_seq = seq;
        stats.batches += 1;
        stats.bytes += bytes.len() as u64;
        let dropped = enforce_spool_cap(stats, self.opts.spool_max_bytes, || {
            pop_oldest_unless(&mut spool, seq)
        })?;
        stats.first_seq = first_spool_seq(&spool)?;
        drop(spool);
        write_spool_meta(txn, stats)?;

        outcome.spool_seq = Some(seq);
        outcome.spool_dropped = dropped.map_or(0, |d| d.dropped);
        Ok(dropped)
    }
}

impl Store for RedbStore {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn commit(&self, commit: Commit<'_>) -> Result<CommitOutcome, StoreError> {
        if commit.increments.is_empty()
            && commit.progress.is_empty()
            && commit.spool_watermark_ms.is_none()
        {
            // Nothing to make durable: skip the fsync.
            return Ok(CommitOutcome::default());
        }
        let writing = self.writer.lock();
        let txn = self.db.begin_write().ctx("commit: begin write")?;

        let plan = {
            let mut tables = Vec::with_capacity(Resolution::ALL.len());
            for r in Resolution::ALL {
                let def = bucket_table(r);
                let name = def.name();
                let table = txn
                    .open_table(def)
                    .map_err(|e| StoreError::db(format_args!("commit: open table {name}"), e))?;
                tables.push(table);
            }
            let plan = {
                let index = self.index.read();
                plan_commit(&index, commit.increments, commit.now_ms, |r, id, bucket| {
                    load_bucket(&tables[r.index()], r, id, bucket)
                })?
            };
            quarantine_buckets(&txn, &mut tables, &plan.quarantined)?;
            let mut buf = Vec::new();
            for (r, table) in Resolution::ALL.into_iter().zip(&mut tables) {
                for (&(id, bucket), state) in plan.buckets(r) {
                    buf.clear();
                    state.encode(&mut buf);
                    table.insert((id, bucket), buf.as_slice()).map_err(|e| {
                        StoreError::db(
                            format_args!(
                                "commit: table {}: write series {id} bucket {bucket}",
                                bucket_table(r).name()
                            ),
                            e,
                        )
                    })?;
                }
            }
            plan
        };

        let mut outcome = CommitOutcome::default();
        let mut stats = self.spool_stats.lock().clone();
        let dropped = self.write_commit(&txn, &commit, &plan, &mut stats, &mut outcome)?;
        let mut last_event_id = *self.last_event_id.lock();
        let mut events: Vec<Event> = plan
            .quarantined
            .iter()
            .map(|q| q.event(commit.now_ms))
            .collect();
        if let Some(dropped) = &dropped {
            events.push(dropped.event(commit.now_ms, self.opts.spool_max_bytes));
        }
        if !events.is_empty() {
            insert_events(&txn, &events, &mut last_event_id, "commit")?;
        }
        txn.commit().ctx("commit")?;
        self.quarantined
            .fetch_add(plan.quarantined.len() as u64, Ordering::Relaxed);
        log_quarantined(&plan.quarantined);

        // Durable: now let readers see it.
        self.index.write().apply(&plan);
        if !commit.progress.is_empty() {
            let mut sources = self.sources.write();
            for p in commit.progress {
                sources.insert(p.source_id.clone(), p.clone());
            }
        }
        *self.spool_stats.lock() = stats;
        *self.last_event_id.lock() = last_event_id;
        drop(writing);

        if let Some(dropped) = dropped {
            dropped.log(self.opts.spool_max_bytes);
        }
        tracing::debug!(
            increments = commit.increments.len(),
            buckets = plan.bucket_count(),
            new_series = plan.new_series.len(),
            merge_errors = plan.errors.len(),
            spool_seq = outcome.spool_seq,
            "store commit"
        );
        outcome.merge_errors = plan.errors;
        outcome.quarantined = plan.quarantined.len() as u64;
        Ok(outcome)
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
        let Some(id) = self.index.read().id_of(series) else {
            return Ok(Vec::new());
        };
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        let def = bucket_table(resolution);
        let name = def.name();
        let txn = self.db.begin_read().ctx("read: begin read")?;
        let buckets = txn
            .open_table(def)
            .map_err(|e| StoreError::db(format_args!("read: open table {name}"), e))?;
        let range = buckets
            .range((id, from_ms)..(id, to_ms))
            .map_err(|e| StoreError::db(format_args!("read: table {name}"), e))?;
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        for entry in range {
            let (key, value) =
                entry.map_err(|e| StoreError::db(format_args!("read: table {name}"), e))?;
            let (_, bucket) = key.value();
            match State::decode(value.value()) {
                Ok(state) => out.push((bucket, state)),
                // Skipped: one bad state must not fail every query of its metric.
                Err(e) => unreadable.push(Quarantined {
                    resolution,
                    id,
                    bucket,
                    series: series.to_string(),
                    reason: e.to_string(),
                }),
            }
        }
        drop(txn);
        if !unreadable.is_empty()
            && let Err(e) = self.quarantine_now(&unreadable)
        {
            tracing::warn!(error = %e, table = name, "unreadable states not moved to quarantine");
        }
        Ok(out)
    }

    fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    fn clear_quarantine(&self) -> Result<u64, StoreError> {
        let writing = self.writer.lock();
        let txn = self.db.begin_write().ctx("clear quarantine: begin write")?;
        let deleted = match txn.delete_table(QUARANTINE) {
            Ok(true) => self.quarantined.load(Ordering::Relaxed),
            Ok(false) => 0,
            Err(e) => return Err(StoreError::db("clear quarantine: delete table", e)),
        };
        txn.commit().ctx("clear quarantine: commit")?;
        self.quarantined.store(0, Ordering::Relaxed);
        drop(writing);
        if deleted > 0 {
            tracing::info!(deleted, "quarantined states deleted");
        }
        Ok(deleted)
    }

    fn sources(&self) -> Vec<SourceProgress> {
        self.sources.read().values().cloned().collect()
    }

    fn source(&self, id: &str) -> Option<SourceProgress> {
        self.sources.read().get(id).cloned()
    }

    fn spool_read(
        &self,
        after_seq: u64,
        max_batches: usize,
    ) -> Result<Vec<SpoolBatch>, StoreError> {
        let txn = self.db.begin_read().ctx("spool read: begin read")?;
        let spool = txn.open_table(SPOOL).ctx("spool read: open table spool")?;
        let range = spool
            .range::<u64>((Excluded(after_seq), Unbounded))
            .ctx("spool read: table spool")?;
        let mut out = Vec::new();
        for entry in range.take(max_batches) {
            let (key, value) = entry.ctx("spool read: table spool")?;
            let seq = key.value();
            let batch = decode_spool_batch(value.value())
                .map_err(|e| StoreError::Corrupt(format!("table spool: batch {seq}: {e}")))?;
            out.push(batch);
        }
        Ok(out)
    }

    fn spool_ack(&self, upto_seq: u64) -> Result<(), StoreError> {
        let _writing = self.writer.lock();
        let mut stats = self.spool_stats.lock().clone();
        if stats.batches == 0 || upto_seq < stats.first_seq {
            return Ok(());
        }
        let txn = self.db.begin_write().ctx("spool ack: begin write")?;
        {
            let mut spool = txn.open_table(SPOOL).ctx("spool ack: open table spool")?;
            let (mut batches, mut bytes) = (0u64, 0u64);
            spool
                .retain_in(..=upto_seq, |_, value| {
                    batches += 1;
                    bytes += value.len() as u64;
                    false
                })
                .ctx("spool ack: table spool")?;
            stats.batches = stats.batches.saturating_sub(batches);
            stats.bytes = stats.bytes.saturating_sub(bytes);
            stats.first_seq = first_spool_seq(&spool)?;
        }
        write_spool_meta(&txn, &stats)?;
        txn.commit().ctx("spool ack: commit")?;
        *self.spool_stats.lock() = stats;
        Ok(())
    }

    fn spool_stats(&self) -> SpoolStats {
        self.spool_stats.lock().clone()
    }

    fn delete_before(&self, resolution: Resolution, before_ms: i64) -> Result<u64, StoreError> {
        let _writing = self.writer.lock();
        let ids = self.index.read().ids();
        let def = bucket_table(resolution);
        let name = def.name();
        let txn = self.db.begin_write().ctx("retention: begin write")?;
        let mut deleted = 0u64;
        {
            let mut buckets = txn
                .open_table(def)
                .map_err(|e| StoreError::db(format_args!("retention: open table {name}"), e))?;
            for id in ids {
                buckets
                    .retain_in((id, i64::MIN)..(id, before_ms), |_, _| {
                        deleted += 1;
                        false
                    })
                    .map_err(|e| {
                        StoreError::db(format_args!("retention: table {name}: series {id}"), e)
                    })?;
            }
        }
        if deleted == 0 {
            txn.abort().ctx("retention: abort")?;
        } else {
            txn.commit().ctx("retention: commit")?;
        }
        Ok(deleted)
    }

    fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let _writing = self.writer.lock();
        let mut last_event_id = *self.last_event_id.lock();
        let txn = self.db.begin_write().ctx("append events: begin write")?;
        insert_events(&txn, events, &mut last_event_id, "append events")?;
        txn.commit().ctx("append events: commit")?;
        *self.last_event_id.lock() = last_event_id;
        Ok(())
    }

    fn events(&self, since_ms: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().ctx("events: begin read")?;
        let table = txn.open_table(EVENTS).ctx("events: open table events")?;
        let range = table
            .range::<(i64, u64)>((since_ms, 0)..)
            .ctx("events: table events")?;
        let mut out = Vec::new();
        for entry in range.rev().take(limit) {
            let (key, value) = entry.ctx("events: table events")?;
            let (ts_ms, id) = key.value();
            let event = decode_event(ts_ms, value.value()).map_err(|e| {
                StoreError::Corrupt(format!("table events: event {id} at {ts_ms}: {e}"))
            })?;
            out.push(event);
        }
        Ok(out)
    }

    fn delete_events_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        let _writing = self.writer.lock();
        let txn = self.db.begin_write().ctx("event retention: begin write")?;
        let mut deleted = 0u64;
        {
            let mut table = txn
                .open_table(EVENTS)
                .ctx("event retention: open table events")?;
            table
                .retain_in(..(before_ms, 0), |_, _| {
                    deleted += 1;
                    false
                })
                .ctx("event retention: table events")?;
        }
        if deleted == 0 {
            txn.abort().ctx("event retention: abort")?;
        } else {
            txn.commit().ctx("event retention: commit")?;
        }
        Ok(deleted)
    }

    fn expire_series(&self, idle_before_ms: i64) -> Result<u64, StoreError> {
        let _writing = self.writer.lock();
        let (expiry, next_id) = {
            let index = self.index.read();
            (index.plan_expiry(idle_before_ms), index.next_id())
        };
        if expiry.series.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write().ctx("series expiry: begin write")?;
        {
            let mut series = txn
                .open_table(SERIES)
                .ctx("series expiry: open table series")?;
            let mut seen = txn
                .open_table(SERIES_SEEN)
                .ctx("series expiry: open table series_seen")?;
            for (id, _) in &expiry.series {
                series.remove(*id).map_err(|e| {
                    StoreError::db(format_args!("series expiry: table series: remove {id}"), e)
                })?;
                seen.remove(*id).map_err(|e| {
                    StoreError::db(
                        format_args!("series expiry: table series_seen: remove {id}"),
                        e,
                    )
                })?;
            }
        }
        for r in Resolution::ALL {
            let def = bucket_table(r);
            let name = def.name();
            let mut buckets = txn
                .open_table(def)
                .map_err(|e| StoreError::db(format_args!("series expiry: open table {name}"), e))?;
            for (id, _) in &expiry.series {
                buckets
                    .retain_in((*id, i64::MIN)..=(*id, i64::MAX), |_, _| false)
                    .map_err(|e| {
                        StoreError::db(format_args!("series expiry: table {name}: series {id}"), e)
                    })?;
            }
        }
        {
            let mut metrics = txn
                .open_table(METRICS)
                .ctx("series expiry: open table metrics")?;
            for name in &expiry.metrics {
                metrics.remove(name.as_str()).map_err(|e| {
                    StoreError::db(
                        format_args!("series expiry: table metrics: remove {name}"),
                        e,
                    )
                })?;
            }
            let mut meta = txn.open_table(META).ctx("series expiry: open table meta")?;
            meta.insert(META_SERIES_NEXT_ID, next_id)
                .ctx("series expiry: table meta: write series_next_id")?;
        }
        txn.commit().ctx("series expiry: commit")?;
        self.index.write().apply_expiry(&expiry);
        tracing::debug!(
            series = expiry.series.len(),
            metrics = expiry.metrics.len(),
            idle_before_ms,
            "series expired"
        );
        Ok(expiry.series.len() as u64)
    }

    fn update_alarms(&self, update: AlarmUpdate<'_>) -> Result<Vec<u64>, StoreError> {
        if update.is_empty() {
            return Ok(Vec::new());
        }
        let _writing = self.writer.lock();
        let mut last_event_id = *self.last_event_id.lock();
        let txn = self.db.begin_write().ctx("alarms: begin write")?;
        {
            let mut states = txn
                .open_table(ALARM_STATES)
                .ctx("alarms: open table alarm_states")?;
            let (mut key_buf, mut buf) = (Vec::new(), Vec::new());
            for state in update.states {
                key_buf.clear();
                encode_alarm_key(&state.key, &mut key_buf);
                buf.clear();
                encode_alarm_state(state, &mut buf);
                states
                    .insert(key_buf.as_slice(), buf.as_slice())
                    .map_err(|e| {
                        StoreError::db(
                            format_args!("alarms: table alarm_states: write {}", state.key.rule),
                            e,
                        )
                    })?;
            }
            for key in update.clear {
                key_buf.clear();
                encode_alarm_key(key, &mut key_buf);
                states.remove(key_buf.as_slice()).map_err(|e| {
                    StoreError::db(
                        format_args!("alarms: table alarm_states: remove {}", key.rule),
                        e,
                    )
                })?;
            }
        }
        let mut ids = Vec::with_capacity(update.notifications.len());
        {
            let mut meta = txn.open_table(META).ctx("alarms: open table meta")?;
            if !update.history.is_empty() {
                let mut history = txn
                    .open_table(ALARM_HISTORY)
                    .ctx("alarms: open table alarm_history")?;
                let mut last = meta_get(&meta, META_ALARM_HISTORY_LAST_ID)?.unwrap_or(0);
                let mut buf = Vec::new();
                for record in update.history {
                    last += 1;
                    buf.clear();
                    encode_alarm_record(record, &mut buf);
                    history
                        .insert((record.ts_ms, last), buf.as_slice())
                        .map_err(|e| {
                            StoreError::db(
                                format_args!("alarms: table alarm_history: insert {last}"),
                                e,
                            )
                        })?;
                }
                meta.insert(META_ALARM_HISTORY_LAST_ID, last)
                    .ctx("alarms: table meta: write alarm_history_last_id")?;
            }
            if !update.notifications.is_empty() {
                let mut outbox = txn
                    .open_table(ALARM_OUTBOX)
                    .ctx("alarms: open table alarm_outbox")?;
                let newest = match outbox.last().ctx("alarms: table alarm_outbox: last")? {
                    Some((id, _)) => id.value(),
                    None => 0,
                };
                let mut last = meta_get(&meta, META_OUTBOX_LAST_ID)?
                    .unwrap_or(0)
                    .max(newest);
                let mut buf = Vec::new();
                for notification in update.notifications {
                    last += 1;
                    let entry = OutboxEntry {
                        id: last,
                        notification: notification.clone(),
                        attempts: 0,
                        next_attempt_ms: 0,
                        last_error: String::new(),
                    };
                    buf.clear();
                    encode_outbox_entry(&entry, &mut buf);
                    outbox.insert(last, buf.as_slice()).map_err(|e| {
                        StoreError::db(format_args!("alarms: table alarm_outbox: insert {last}"), e)
                    })?;
                    ids.push(last);
                }
                meta.insert(META_OUTBOX_LAST_ID, last)
                    .ctx("alarms: table meta: write alarm_outbox_last_id")?;
            }
        }
        if !update.events.is_empty() {
            insert_events(&txn, update.events, &mut last_event_id, "alarms")?;
        }
        txn.commit().ctx("alarms: commit")?;
        *self.last_event_id.lock() = last_event_id;
        Ok(ids)
    }

    fn alarm_states(&self) -> Result<Vec<AlarmState>, StoreError> {
        let txn = self.db.begin_read().ctx("alarm states: begin read")?;
        let table = txn
            .open_table(ALARM_STATES)
            .ctx("alarm states: open table alarm_states")?;
        let mut out = Vec::new();
        for entry in table.iter().ctx("alarm states: table alarm_states")? {
            let (key, value) = entry.ctx("alarm states: table alarm_states")?;
            let key = decode_alarm_key(key.value())
                .map_err(|e| StoreError::Corrupt(format!("table alarm_states: key: {e}")))?;
            let rule = key.rule.clone();
            let state = decode_alarm_state(key, value.value()).map_err(|e| {
                StoreError::Corrupt(format!("table alarm_states: rule {rule}: {e}"))
            })?;
            out.push(state);
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn alarm_history(&self, limit: usize) -> Result<Vec<AlarmRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().ctx("alarm history: begin read")?;
        let table = txn
            .open_table(ALARM_HISTORY)
            .ctx("alarm history: open table alarm_history")?;
        let mut out = Vec::new();
        for entry in table
            .iter()
            .ctx("alarm history: table alarm_history")?
            .rev()
            .take(limit)
        {
            let (key, value) = entry.ctx("alarm history: table alarm_history")?;
            let (ts_ms, id) = key.value();
            let record = decode_alarm_record(ts_ms, value.value()).map_err(|e| {
                StoreError::Corrupt(format!("table alarm_history: record {id} at {ts_ms}: {e}"))
            })?;
            out.push(record);
        }
        Ok(out)
    }

    fn delete_alarm_history_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        let _writing = self.writer.lock();
        let txn = self
            .db
            .begin_write()
            .ctx("alarm history retention: begin write")?;
        let mut deleted = 0u64;
        {
            let mut table = txn
                .open_table(ALARM_HISTORY)
                .ctx("alarm history retention: open table alarm_history")?;
            table
                .retain_in(..(before_ms, 0), |_, _| {
                    deleted += 1;
                    false
                })
                .ctx("alarm history retention: table alarm_history")?;
        }
        if deleted == 0 {
            txn.abort().ctx("alarm history retention: abort")?;
        } else {
            txn.commit().ctx("alarm history retention: commit")?;
        }
        Ok(deleted)
    }

    fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().ctx("outbox: begin read")?;
        let table = txn
            .open_table(ALARM_OUTBOX)
            .ctx("outbox: open table alarm_outbox")?;
        let mut out = Vec::new();
        for entry in table.iter().ctx("outbox: table alarm_outbox")?.take(limit) {
            let (id, value) = entry.ctx("outbox: table alarm_outbox")?;
            let id = id.value();
            let entry = decode_outbox_entry(id, value.value())
                .map_err(|e| StoreError::Corrupt(format!("table alarm_outbox: entry {id}: {e}")))?;
            out.push(entry);
        }
        Ok(out)
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().ctx("outbox: begin read")?;
        let table = txn
            .open_table(ALARM_OUTBOX)
            .ctx("outbox: open table alarm_outbox")?;
        table.len().ctx("outbox: table alarm_outbox: count")
    }

    fn outbox_retry(
        &self,
        id: u64,
        attempts: u32,
        next_attempt_ms: i64,
        last_error: &str,
    ) -> Result<bool, StoreError> {
        let _writing = self.writer.lock();
        let txn = self.db.begin_write().ctx("outbox retry: begin write")?;
        let found = {
            let mut table = txn
                .open_table(ALARM_OUTBOX)
                .ctx("outbox retry: open table alarm_outbox")?;
            let entry = match table
                .get(id)
                .map_err(|e| {
                    StoreError::db(
                        format_args!("outbox retry: table alarm_outbox: read {id}"),
                        e,
                    )
                })?
                .map(|v| decode_outbox_entry(id, v.value()))
            {
                None => None,
                Some(Ok(entry)) => Some(entry),
                Some(Err(e)) => {
                    return Err(StoreError::Corrupt(format!(
                        "table alarm_outbox: entry {id}: {e}"
                    )));
                }
            };
            match entry {
                None => false,
                Some(mut entry) => {
                    entry.attempts = attempts;
                    entry.next_attempt_ms = next_attempt_ms;
                    entry.last_error = last_error.to_owned();
                    let mut buf = Vec::new();
                    encode_outbox_entry(&entry, &mut buf);
                    table.insert(id, buf.as_slice()).map_err(|e| {
                        StoreError::db(
                            format_args!("outbox retry: table alarm_outbox: write {id}"),
                            e,
                        )
                    })?;
                    true
                }
            }
        };
        if found {
            txn.commit().ctx("outbox retry: commit")?;
        } else {
            txn.abort().ctx("outbox retry: abort")?;
        }
        Ok(found)
    }

    fn outbox_delete(&self, id: u64) -> Result<bool, StoreError> {
        let _writing = self.writer.lock();
        let txn = self.db.begin_write().ctx("outbox delete: begin write")?;
        let found = {
            let mut table = txn
                .open_table(ALARM_OUTBOX)
                .ctx("outbox delete: open table alarm_outbox")?;
            let removed = table.remove(id).map_err(|e| {
                StoreError::db(
                    format_args!("outbox delete: table alarm_outbox: remove {id}"),
                    e,
                )
            })?;
            removed.is_some()
        };
        if found {
            txn.commit().ctx("outbox delete: commit")?;
        } else {
            txn.abort().ctx("outbox delete: abort")?;
        }
        Ok(found)
    }
}

/// Why redb refused to open `path`, sorted into what `--reset-store` cures
/// (content that cannot be used) and what it must not touch (a lock held by
/// another process, I/O errors).
fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    use redb::{DatabaseError, StorageError};
    let what = format!("open {}", path.display());
    match e {
        DatabaseError::Storage(StorageError::Corrupted(reason)) => {
            StoreError::Unreadable(format!("{what}: {reason}"))
        }
        DatabaseError::UpgradeRequired(version) => StoreError::Unreadable(format!(
            "{what}: file format version {version} is not one this build reads"
        )),
        // redb's word for "these bytes are not a redb file".
        DatabaseError::Storage(StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            StoreError::Unreadable(format!("{what}: {io}"))
        }
        DatabaseError::Storage(StorageError::Io(io)) => {
            StoreError::Io(std::io::Error::new(io.kind(), format!("{what}: {io}")))
        }
        DatabaseError::DatabaseAlreadyOpen => StoreError::Db(format!(
            "{what}: the file is locked by another process (is another strata running on this data_dir?)"
        )),
        other => StoreError::db(what, other),
    }
}

/// The text of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

/// Milliseconds since the Unix epoch by the system clock (0 if it is before 1970).
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Creates every table and, on a new file, the epoch; returns the epoch.
fn initialize(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_write().ctx("open: begin write")?;
    let epoch = {
        // Opening a table in a write transaction creates it, so read
        // transactions never meet a missing table.
        txn.open_table(SERIES).ctx("open: create table series")?;
        txn.open_table(SERIES_SEEN)
            .ctx("open: create table series_seen")?;
        txn.open_table(METRICS).ctx("open: create table metrics")?;
        for r in Resolution::ALL {
            let def = bucket_table(r);
            let name = def.name();
            txn.open_table(def)
                .map_err(|e| StoreError::db(format_args!("open: create table {name}"), e))?;
        }
        txn.open_table(SOURCES).ctx("open: create table sources")?;
        txn.open_table(SPOOL).ctx("open: create table spool")?;
        txn.open_table(EVENTS).ctx("open: create table events")?;
        txn.open_table(ALARM_STATES)
            .ctx("open: create table alarm_states")?;
        txn.open_table(ALARM_HISTORY)
            .ctx("open: create table alarm_history")?;
        txn.open_table(ALARM_OUTBOX)
            .ctx("open: create table alarm_outbox")?;
        let mut meta = txn.open_table(META).ctx("open: create table meta")?;

        let version = meta_get(&meta, META_FORMAT_VERSION)?;
        match version {
            None => {
                meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)
                    .ctx("open: table meta: insert format_version")?;
            }
            Some(FORMAT_VERSION) => {}
            Some(old @ (1 | 2)) => {
                if old == 1 {
                    let (written, refused) = build_rollups(&txn)?;
                    tracing::info!(
                        rollup_buckets = written,
                        refused_minutes = refused,
                        "store upgrade from format 1: hour and day rollups built from minutes"
                    );
                }
                let stamped = stamp_every_series(&txn, wall_clock_ms())?;
                meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)
                    .ctx("open: table meta: upgrade format_version")?;
                tracing::info!(
                    from = old,
                    to = FORMAT_VERSION,
                    series_stamped = stamped,
                    "store upgraded: every series counts as updated now for series expiry"
                );
            }
            Some(other) => {
                return Err(StoreError::Unsupported(format!(
                    "table meta: format_version {other} is not supported (expected {FORMAT_VERSION}): written by a newer strata?"
                )));
            }
        }
        match meta_get(&meta, META_EPOCH)? {
            Some(0) => {
                return Err(StoreError::Corrupt("table meta: epoch is 0".to_owned()));
            }
            Some(epoch) => epoch,
            None => {
                let epoch = new_epoch();
                meta.insert(META_EPOCH, epoch)
                    .ctx("open: table meta: insert epoch")?;
                tracing::info!(epoch, "store created with a new epoch");
                epoch
            }
        }
    };
    txn.commit().ctx("open: commit")?;
    Ok(epoch)
}

fn meta_get(
    meta: &impl ReadableTable<&'static str, u64>,
    key: &str,
) -> Result<Option<u64>, StoreError> {
    meta.get(key)
        .map(|v| v.map(|v| v.value()))
        .map_err(|e| StoreError::db(format_args!("table meta: read {key}"), e))
}

/// Loads every metric and series, with their last-update stamps; a series
/// without a stamp (which an upgraded file never has) counts as updated at
/// `now_ms`.
fn load_index(txn: &redb::ReadTransaction, now_ms: i64) -> Result<SeriesIndex, StoreError> {
    let mut index = SeriesIndex::new(1);
    let metrics = txn.open_table(METRICS).ctx("open: open table metrics")?;
    for entry in metrics.iter().ctx("open: table metrics")? {
        let (name, tag) = entry.ctx("open: table metrics")?;
        let (name, tag) = (name.value(), tag.value());
        let kind: Kind = tag.parse().map_err(|_| {
            StoreError::Corrupt(format!(
                "table metrics: metric {name}: unknown kind {tag:?}"
            ))
        })?;
        index.add_metric(name, kind);
    }
    let series = txn.open_table(SERIES).ctx("open: open table series")?;
    for entry in series.iter().ctx("open: table series")? {
        let (id, bytes) = entry.ctx("open: table series")?;
        let id = id.value();
        let key = decode_series_key(bytes.value())
            .map_err(|e| StoreError::Corrupt(format!("table series: series {id}: {e}")))?;
        let key = Arc::new(key);
        if !index.add_series(id, Arc::clone(&key)) {
            return Err(StoreError::Corrupt(format!(
                "table series: series {id} ({key}) has a metric missing from table metrics"
            )));
        }
    }
    let seen = txn
        .open_table(SERIES_SEEN)
        .ctx("open: open table series_seen")?;
    let mut unstamped = Vec::new();
    for id in index.ids() {
        match seen
            .get(id)
            .map_err(|e| StoreError::db(format_args!("open: table series_seen: read {id}"), e))?
        {
            Some(at) => index.set_seen(id, at.value()),
            None => unstamped.push(id),
        }
    }
    if !unstamped.is_empty() {
        tracing::warn!(
            series = unstamped.len(),
            "series without a last-update stamp count as updated now"
        );
        for id in unstamped {
            index.set_seen(id, now_ms);
        }
    }
    let meta = txn.open_table(META).ctx("open: open table meta")?;
    if let Some(next_id) = meta_get(&meta, META_SERIES_NEXT_ID)? {
        index.reserve_ids_below(next_id);
    }
    Ok(index)
}

/// Stamps every series as last updated at `now_ms` (upgrade to format 3);
/// returns how many.
fn stamp_every_series(txn: &WriteTransaction, now_ms: i64) -> Result<u64, StoreError> {
    let series = txn.open_table(SERIES).ctx("upgrade: open table series")?;
    let mut seen = txn
        .open_table(SERIES_SEEN)
        .ctx("upgrade: open table series_seen")?;
    let mut stamped = 0u64;
    for entry in series.iter().ctx("upgrade: table series")? {
        let (id, _) = entry.ctx("upgrade: table series")?;
        let id = id.value();
        seen.insert(id, now_ms).map_err(|e| {
            StoreError::db(format_args!("upgrade: table series_seen: write {id}"), e)
        })?;
        stamped += 1;
    }
    Ok(stamped)
}

fn load_sources(
    txn: &redb::ReadTransaction,
) -> Result<BTreeMap<String, SourceProgress>, StoreError> {
    let table = txn.open_table(SOURCES).ctx("open: open table sources")?;
    let mut sources = BTreeMap::new();
    for entry in table.iter().ctx("open: table sources")? {
        let (id, value) = entry.ctx("open: table sources")?;
        let id = id.value().to_owned();
        let (epoch, seq, watermark_ms, last_seen_ms) = value.value();
        sources.insert(
            id.clone(),
            SourceProgress {
                source_id: id,
                epoch,
                seq,
                watermark_ms,
                last_seen_ms,
            },
        );
    }
    Ok(sources)
}

fn load_spool_stats(txn: &redb::ReadTransaction) -> Result<SpoolStats, StoreError> {
    let meta = txn.open_table(META).ctx("open: open table meta")?;
    let spool = txn.open_table(SPOOL).ctx("open: open table spool")?;
    let batches = spool.len().ctx("open: table spool: count")?;
    let first_seq = match spool.first().ctx("open: table spool: first")? {
        Some((seq, _)) => seq.value(),
        None => 0,
    };
    let last_seq = meta_get(&meta, META_SPOOL_LAST_SEQ)?.unwrap_or(0);
    if let Some((seq, _)) = spool.last().ctx("open: table spool: last")?
        && seq.value() > last_seq
    {
        return Err(StoreError::Corrupt(format!(
            "table meta: spool_last_seq {last_seq} is behind spooled batch {}",
            seq.value()
        )));
    }
    Ok(SpoolStats {
        batches,
        bytes: meta_get(&meta, META_SPOOL_BYTES)?.unwrap_or(0),
        first_seq,
        last_seq,
        dropped_batches: meta_get(&meta, META_SPOOL_DROPPED)?.unwrap_or(0),
    })
}

fn load_last_event_id(txn: &redb::ReadTransaction) -> Result<u64, StoreError> {
    let meta = txn.open_table(META).ctx("open: open table meta")?;
    let events = txn.open_table(EVENTS).ctx("open: open table events")?;
    let last_id = meta_get(&meta, META_EVENT_LAST_ID)?.unwrap_or(0);
    // The newest event's id is at most the counter; should the counter have
    // fallen behind, never hand out an id at or below one already used there.
    let newest = match events.last().ctx("open: table events: last")? {
        Some((key, _)) => key.value().1,
        None => 0,
    };
    Ok(last_id.max(newest))
}

fn load_bucket(
    buckets: &Table<'_, (u64, i64), &[u8]>,
    resolution: Resolution,
    id: SeriesId,
    bucket: i64,
) -> Result<Stored, StoreError> {
    let def = bucket_table(resolution);
    let name = def.name();
    let Some(value) = buckets.get((id, bucket)).map_err(|e| {
        StoreError::db(
            format_args!("commit: table {name}: read series {id} bucket {bucket}"),
            e,
        )
    })?
    else {
        return Ok(Stored::Absent);
    };
    Ok(match State::decode(value.value()) {
        Ok(state) => Stored::State(state),
        Err(e) => Stored::Unreadable(e.to_string()),
    })
}

/// Moves each quarantined bucket's bytes from its bucket table to
/// `quarantine` (replacing an earlier entry for the same bucket).
fn quarantine_buckets(
    txn: &WriteTransaction,
    tables: &mut [Table<'_, (u64, i64), &[u8]>],
    found: &[Quarantined],
) -> Result<(), StoreError> {
    if found.is_empty() {
        return Ok(());
    }
    let mut quarantine = txn
        .open_table(QUARANTINE)
        .ctx("quarantine: open table quarantine")?;
    for q in found {
        let def = bucket_table(q.resolution);
        let name = def.name();
        let removed = tables[q.resolution.index()]
            .remove((q.id, q.bucket))
            .map_err(|e| {
                StoreError::db(
                    format_args!(
                        "quarantine: table {name}: remove series {} bucket {}",
                        q.id, q.bucket
                    ),
                    e,
                )
            })?;
        if let Some(bytes) = removed {
            quarantine
                .insert((name, q.id, q.bucket), bytes.value())
                .ctx("quarantine: insert")?;
        }
    }
    Ok(())
}

fn log_quarantined(found: &[Quarantined]) {
    for q in found {
        tracing::error!(
            series = %q.series,
            resolution = %q.resolution,
            bucket_ms = q.bucket,
            reason = %q.reason,
            "unreadable stored state moved to quarantine; the bucket starts afresh"
        );
    }
}

/// Entries of the `quarantine` table (none before the table exists).
fn load_quarantine_len(txn: &redb::ReadTransaction) -> Result<u64, StoreError> {
    match txn.open_table(QUARANTINE) {
        Ok(table) => table.len().ctx("open: table quarantine: len"),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(StoreError::db("open: table quarantine", e)),
    }
}

/// Appends `events` with ids after `last_id`, and persists the new last id.
fn insert_events(
    txn: &WriteTransaction,
    events: &[Event],
    last_id: &mut u64,
    context: &str,
) -> Result<(), StoreError> {
    {
        let mut table = txn
            .open_table(EVENTS)
            .map_err(|e| StoreError::db(format_args!("{context}: open table events"), e))?;
        let mut buf = Vec::new();
        for event in events {
            let id = *last_id + 1;
            buf.clear();
            encode_event(event, &mut buf);
            table
                .insert((event.ts_ms, id), buf.as_slice())
                .map_err(|e| {
                    StoreError::db(
                        format_args!("{context}: table events: insert {id} at {}", event.ts_ms),
                        e,
                    )
                })?;
            *last_id = id;
        }
    }
    let mut meta = txn
        .open_table(META)
        .map_err(|e| StoreError::db(format_args!("{context}: open table meta"), e))?;
    meta.insert(META_EVENT_LAST_ID, *last_id).map_err(|e| {
        StoreError::db(
            format_args!("{context}: table meta: write event_last_id"),
            e,
        )
    })?;
    Ok(())
}

/// Builds the hour and day tables from the minute table, for a file written
/// before rollups existed. Minutes sort by series then time, so each rollup
/// bucket is folded from a contiguous run and written once. Returns how many
/// rollup buckets were written, and how many minute merges were refused (a
/// minute of another precision than the rest of its hour or day: left out of
/// that rollup, as a commit would have refused it).
fn build_rollups(txn: &WriteTransaction) -> Result<(u64, u64), StoreError> {
    const ROLLUPS: [Resolution; 2] = [Resolution::Hour, Resolution::Day];
    let minutes = txn.open_table(BUCKETS).ctx("upgrade: open table buckets")?;
    let mut tables = Vec::with_capacity(ROLLUPS.len());
    for r in ROLLUPS {
        let def = bucket_table(r);
        let name = def.name();
        let table = txn
            .open_table(def)
            .map_err(|e| StoreError::db(format_args!("upgrade: open table {name}"), e))?;
        tables.push(table);
    }
    let mut pending: [Option<((SeriesId, i64), State)>; 2] = [None, None];
    let (mut written, mut refused) = (0u64, 0u64);
    let mut buf = Vec::new();
    let mut flush = |table: &mut Table<'_, (u64, i64), &[u8]>,
                     resolution: Resolution,
                     (key, state): ((SeriesId, i64), State)|
     -> Result<(), StoreError> {
        buf.clear();
        state.encode(&mut buf);
        table.insert(key, buf.as_slice()).map_err(|e| {
            StoreError::db(
                format_args!(
                    "upgrade: table {}: write series {} bucket {}",
                    bucket_table(resolution).name(),
                    key.0,
                    key.1
                ),
                e,
            )
        })?;
        written += 1;
        Ok(())
    };

    for entry in minutes.iter().ctx("upgrade: table buckets")? {
        let (key, value) = entry.ctx("upgrade: table buckets")?;
        let (id, minute) = key.value();
        let state = State::decode(value.value()).map_err(|e| {
            StoreError::Corrupt(format!("table buckets: series {id} bucket {minute}: {e}"))
        })?;
        for ((r, table), slot) in ROLLUPS.into_iter().zip(&mut tables).zip(&mut pending) {
            let rollup_key = (id, r.bucket_start(minute));
            match slot {
                Some((key, rollup)) if *key == rollup_key => {
                    if let Err(e) = rollup.merge(&state) {
                        tracing::warn!(
                            series = id,
                            minute,
                            resolution = %r,
                            error = %e,
                            "upgrade: minute left out of its rollup"
                        );
                        refused += 1;
                    }
                }
                _ => {
                    if let Some(done) = slot.replace((rollup_key, state.clone())) {
                        flush(table, r, done)?;
                    }
                }
            }
        }
    }
    for ((r, table), slot) in ROLLUPS.into_iter().zip(&mut tables).zip(&mut pending) {
        if let Some(done) = slot.take() {
            flush(table, r, done)?;
        }
    }
    Ok((written, refused))
}

/// Removes the oldest spooled batch unless it is `newest`; returns its seq and
/// encoded size.
fn pop_oldest_unless(
    spool: &mut Table<'_, u64, &[u8]>,
    newest: u64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let oldest = match spool.first().ctx("commit: table spool: first")? {
        Some((seq, value)) if seq.value() != newest => {
            Some((seq.value(), value.value().len() as u64))
        }
        _ => None,
    };
    if let Some((seq, _)) = oldest {
        spool
            .remove(seq)
            .map_err(|e| StoreError::db(format_args!("commit: table spool: drop {seq}"), e))?;
    }
    Ok(oldest)
}

fn first_spool_seq(spool: &Table<'_, u64, &[u8]>) -> Result<u64, StoreError> {
    Ok(match spool.first().ctx("table spool: first")? {
        Some((seq, _)) => seq.value(),
        None => 0,
    })
}

fn write_spool_meta(txn: &WriteTransaction, stats: &SpoolStats) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).ctx("open table meta")?;
    for (key, value) in [
        (META_SPOOL_LAST_SEQ, stats.last_seq),
        (META_SPOOL_BYTES, stats.bytes),
        (META_SPOOL_DROPPED, stats.dropped_batches),
    ] {
        meta.insert(key, value)
            .map_err(|e| StoreError::db(format_args!("table meta: write {key}"), e))?;
    }
    Ok(())
}
