//! [`RedbStore`]: the durable store, one redb file in the node's data directory.
//!
//! Tables (all in `strata.redb`):
//!
//! | table          | key                       | value                                      |
//! |----------------|---------------------------|--------------------------------------------|
//! | `series`       | series id `u64`           | encoded series key (`codec.rs`)            |
//! | `metrics`      | metric name               | kind tag ([`Kind::as_str`])                |
//! | `buckets`      | (series id, minute ms)    | [`State::encode`] bytes                    |
//! | `buckets_hour` | (series id, hour ms)      | [`State::encode`] bytes                    |
//! | `buckets_day`  | (series id, day ms)       | [`State::encode`] bytes                    |
//! | `sources`      | source id                 | (epoch, seq, watermark ms, last seen ms)   |
//! | `spool`        | seq `u64`                 | encoded [`SpoolBatch`] (`codec.rs`)        |
//! | `events`       | (ts ms, event id `u64`)   | encoded [`Event`] kind and message (`codec.rs`) |
//! | `meta`         | name                      | `u64`: format version, epoch, spool and event counters |
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
//! A file of format 1 (before hour and day rollups) is upgraded on open: its
//! hour and day tables are built from its minutes, in the open transaction.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    TableHandle, WriteTransaction,
};
use strata_model::{Kind, SeriesKey, State};

use crate::codec::{
    decode_event, decode_series_key, decode_spool_batch, encode_event, encode_series_key,
    encode_spool_batch,
};
use crate::error::DbContext;
use crate::index::{CommitPlan, SeriesIndex, plan_commit};
use crate::spool::enforce_spool_cap;
use crate::{
    Commit, CommitOutcome, Event, MetricInfo, Resolution, SeriesId, SourceProgress, SpoolBatch,
    SpoolStats, Store, StoreError, StoreOptions, new_epoch,
};

type BucketTable = TableDefinition<'static, (u64, i64), &'static [u8]>;

const SERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("series");
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
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

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
const FORMAT_VERSION: u64 = 2;
pub(crate) const META_FORMAT_VERSION: &str = "format_version";
const META_EPOCH: &str = "epoch";
/// Last spool seq ever assigned; kept when the spool empties so seqs stay
/// contiguous across acks and restarts.
const META_SPOOL_LAST_SEQ: &str = "spool_last_seq";
const META_SPOOL_BYTES: &str = "spool_bytes";
const META_SPOOL_DROPPED: &str = "spool_dropped_batches";
/// Last event id ever assigned; kept when retention empties the log.
const META_EVENT_LAST_ID: &str = "event_last_id";

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
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(Self::FILE_NAME);
        let db = Database::create(&path)
            .map_err(|e| StoreError::db(format_args!("open {}", path.display()), e))?;
        let epoch = initialize(&db)?;

        let txn = db.begin_read().ctx("open: begin read")?;
        let index = load_index(&txn)?;
        let sources = load_sources(&txn)?;
        let spool_stats = load_spool_stats(&txn)?;
        let last_event_id = load_last_event_id(&txn)?;
        drop(txn);

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
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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
                plan_commit(&index, commit.increments, |r, id, bucket| {
                    load_bucket(&tables[r.index()], r, id, bucket)
                })?
            };
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
        if let Some(dropped) = dropped {
            let event = dropped.event(commit.now_ms, self.opts.spool_max_bytes);
            insert_events(&txn, &[event], &mut last_event_id, "commit")?;
        }
        txn.commit().ctx("commit")?;

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
        for entry in range {
            let (key, value) =
                entry.map_err(|e| StoreError::db(format_args!("read: table {name}"), e))?;
            let (_, bucket) = key.value();
            let state = State::decode(value.value()).map_err(|e| {
                StoreError::Corrupt(format!(
                    "table {name}: series {id} ({series}) bucket {bucket}: {e}"
                ))
            })?;
            out.push((bucket, state));
        }
        Ok(out)
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
}

/// Creates every table and, on a new file, the epoch; returns the epoch.
fn initialize(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_write().ctx("open: begin write")?;
    let epoch = {
        // Opening a table in a write transaction creates it, so read
        // transactions never meet a missing table.
        txn.open_table(SERIES).ctx("open: create table series")?;
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
        let mut meta = txn.open_table(META).ctx("open: create table meta")?;

        let version = meta_get(&meta, META_FORMAT_VERSION)?;
        match version {
            None => {
                meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)
                    .ctx("open: table meta: insert format_version")?;
            }
            Some(FORMAT_VERSION) => {}
            Some(1) => {
                let (written, refused) = build_rollups(&txn)?;
                meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)
                    .ctx("open: table meta: upgrade format_version")?;
                tracing::info!(
                    rollup_buckets = written,
                    refused_minutes = refused,
                    "store upgraded from format 1: hour and day rollups built from minutes"
                );
            }
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "table meta: format_version {other} is not supported (expected {FORMAT_VERSION})"
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

fn load_index(txn: &redb::ReadTransaction) -> Result<SeriesIndex, StoreError> {
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
    Ok(index)
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
) -> Result<Option<State>, StoreError> {
    let def = bucket_table(resolution);
    let name = def.name();
    let Some(value) = buckets.get((id, bucket)).map_err(|e| {
        StoreError::db(
            format_args!("commit: table {name}: read series {id} bucket {bucket}"),
            e,
        )
    })?
    else {
        return Ok(None);
    };
    State::decode(value.value())
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("table {name}: series {id} bucket {bucket}: {e}")))
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
