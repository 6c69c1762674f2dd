//! [`Backend`]: the storage primitives every store is built on, and the
//! plain data they exchange with [`crate::BackedStore`].
//!
//! A backend stores and reads back; it decides nothing. Which series a
//! commit creates and with which ids, what a bucket's merged state is, which
//! spool batches the cap drops, which events a commit appends, what is
//! quarantined: all of that is decided once, above the backend, by
//! [`crate::BackedStore`], and handed down as a planned [`Transaction`]. A
//! new backend (PostgreSQL is next) implements these seventeen methods and
//! passes the behaviour suite (`suite.rs`); it gets every behaviour of the
//! [`crate::Store`] trait from them.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use strata_model::{Kind, SeriesKey, State};

use crate::{
    AlarmKey, AlarmRecord, AlarmState, Cursor, DecodeError, Event, EventCutoffs, EventQuery,
    Notification, OutboxEntry, Resolution, SeriesId, SourceProgress, StoreError,
};

/// Bucket states of one resolution, by (series id, bucket start).
pub type Buckets = BTreeMap<(SeriesId, i64), State>;

/// Where one bucket state is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    pub resolution: Resolution,
    pub series: SeriesId,
    /// Start of the bucket at `resolution`, ms since the Unix epoch.
    pub bucket_ms: i64,
}

/// What a backend holds for one bucket.
#[derive(Debug)]
pub enum Stored {
    /// No state yet.
    Absent,
    /// The decoded state.
    State(State),
    /// Bytes that do not decode (a corrupt page, or a state an older version
    /// wrote that no longer validates), with why. The store moves them to
    /// quarantine ([`Transaction::quarantine`]) and the bucket starts afresh.
    Unreadable(DecodeError),
}

/// Everything [`crate::BackedStore`] keeps in memory, read once when the
/// store is opened.
#[derive(Debug, Default)]
pub struct Restored {
    /// Identity of the durable state: random, non-zero, chosen when the
    /// backend's storage was first created and the same ever after.
    pub epoch: u64,
    /// Every metric with the kind its first bucket fixed.
    pub metrics: Vec<(String, Kind)>,
    /// Every series.
    pub series: Vec<RestoredSeries>,
    /// The id the next new series gets, as last recorded by
    /// [`Backend::remove_series`] (`None` if never): ids of expired series
    /// are never handed out again.
    pub series_next_id: Option<SeriesId>,
    /// Progress of every source.
    pub sources: Vec<SourceProgress>,
    /// Seq and encoded size of every spooled batch, ascending by seq.
    pub spool: Vec<(u64, u64)>,
    /// The persisted [`SpoolCounters`] (`bytes` is recomputed from `spool`).
    pub spool_counters: SpoolCounters,
    /// How many states are in quarantine.
    pub quarantined: u64,
}

/// One stored series, as [`Backend::restore`] reads it back.
#[derive(Debug)]
pub struct RestoredSeries {
    pub id: SeriesId,
    pub key: SeriesKey,
    /// The `now_ms` of the last commit that merged into it; `None` if it was
    /// never stamped (a store written before series expiry existed).
    pub last_update_ms: Option<i64>,
    /// Its open minute (`plan.rs`): the newest minute bucket, not yet
    /// folded into its hour and day; `None` when every minute is folded.
    pub open_minute_ms: Option<i64>,
}

/// The spool counters a backend persists beside the batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolCounters {
    /// Last seq ever assigned, kept when the spool empties so seqs stay
    /// contiguous across acks and restarts.
    pub last_seq: u64,
    /// Total encoded size of the spooled batches.
    pub bytes: u64,
    /// Batches dropped at the cap since the store was created.
    pub dropped_batches: u64,
}

/// The spool part of a [`Transaction`].
#[derive(Clone, Copy, Debug)]
pub struct SpoolWrite<'a> {
    /// A batch to append: its seq and its encoding (`codec.rs`), kept as is.
    pub append: Option<(u64, &'a [u8])>,
    /// Delete every batch with a seq up to this one (acknowledged upstream,
    /// or dropped at the cap); applied before `append`.
    pub delete_through: Option<u64>,
    /// The counters as of after this transaction.
    pub counters: SpoolCounters,
}

/// One planned write, applied by [`Backend::write`] in one transaction.
///
/// Every part may be empty; a backend writes only what is there. The parts
/// are independent of each other, except that `quarantine` is applied
/// before `buckets` (the bytes moved aside are the unreadable ones, and the
/// bucket is then written afresh). The bucket states are the backend's to
/// keep: a backend holding states as values moves them in, without a copy.
#[derive(Debug, Default)]
pub struct Transaction<'a> {
    /// Stored bucket states to move, as they are, to quarantine: removed
    /// from their bucket and kept apart for an operator to look at.
    pub quarantine: &'a [BucketKey],
    /// Metrics seen for the first time, with the kind that is now theirs.
    pub new_metrics: &'a [(String, Kind)],
    /// Series seen for the first time, with the ids assigned to them.
    pub new_series: &'a [(SeriesId, Arc<SeriesKey>)],
    /// Series' new durable last-update stamps (replacing the stored ones):
    /// rounded up to a minute and written when that moves
    /// ([`crate::plan::durable_stamp`]).
    pub last_updates: &'a [(SeriesId, i64)],
    /// Series' open minutes: `Some` replaces the stored one, `None` deletes
    /// it (every minute of the series folded). A backend whose
    /// [`Backend::restore`] returns nothing (memory) need not keep them.
    pub open_minutes: &'a [(SeriesId, Option<i64>)],
    /// Bucket states to write whole, replacing what is stored, per
    /// resolution (in [`Resolution::ALL`] order).
    pub buckets: [Buckets; 3],
    /// Source progress, upserted by `source_id`.
    pub progress: &'a [SourceProgress],
    /// Input cursors, applied in order: a value is upserted by key, `None`
    /// deletes the key (absent keys are ignored).
    pub cursors: &'a [Cursor],
    /// Spool changes.
    pub spool: Option<SpoolWrite<'a>>,
    /// Events to append to the log, in order.
    pub events: &'a [Event],
    /// Alarm states, upserted by key.
    pub alarm_states: &'a [AlarmState],
    /// Alarm states to delete (unknown keys are ignored).
    pub alarm_clear: &'a [AlarmKey],
    /// Records to append to the alarm history, in order.
    pub alarm_history: &'a [AlarmRecord],
    /// Notifications to queue in the outbox, in order.
    pub notifications: &'a [Notification],
    /// Whether a crash may lose this transaction until the next one without
    /// `lazy` is durable (which makes every one before it durable too): for
    /// writes a repeat repairs, such as deleting spool batches the upstream
    /// acknowledged (sent again after a crash, they are acknowledged again,
    /// not merged again). A durable backend then skips the sync.
    pub lazy: bool,
}

/// What [`Backend::delete_before`] deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Bucket states of one resolution whose bucket starts before the time.
    Buckets(Resolution),
    /// Alarm history records with `ts_ms` before the time.
    AlarmHistory,
}

/// Storage primitives: what a backend implements.
///
/// # Contract
/// - **Transactions.** Each method that writes is one transaction: when it
///   returns `Ok` all of it is durable (for a durable backend: on disk, or
///   committed by the database), when it returns `Err` none of it is.
/// - **Readers** see only committed data, never wait for a writer, and may
///   run alongside one.
/// - **One writer.** [`crate::BackedStore`] calls the writing methods one
///   at a time, and plans each against what the previous ones committed
///   (the reads it plans with, [`Backend::load_buckets`], happen under the
///   same exclusion). A backend need not serialize writers itself, but its
///   storage must not be written by anything else meanwhile: the redb
///   backend holds its file locked; a shared database would fence writers.
/// - **Ids.** Event, alarm history and outbox ids are the backend's:
///   increasing, persisted, never reused, also after retention or deletes
///   emptied their table. Events with equal timestamps keep their order.
/// - **Decoding.** Reads decode what they return; bytes that do not decode
///   are [`StoreError::Corrupt`] (naming the table and key), except bucket
///   states, which come back as [`Stored::Unreadable`] for the store to
///   quarantine.
/// - **No behaviour.** Kind checks, merging, the spool cap, events about
///   the store itself and caching are above this trait, shared by every
///   backend.
pub trait Backend: Send + Sync + 'static {
    /// Reads everything the store keeps in memory; called once, on open.
    fn restore(&self) -> Result<Restored, StoreError>;

    /// The stored state of each bucket of `keys`, in the same order (for
    /// planning a commit).
    fn load_buckets(&self, keys: &[BucketKey]) -> Result<Vec<Stored>, StoreError>;

    /// The stored states of one series at `resolution` whose bucket starts
    /// in `range`, ascending by start; each decoded, or why it does not
    /// decode.
    #[allow(clippy::type_complexity)]
    fn read_buckets(
        &self,
        resolution: Resolution,
        series: SeriesId,
        range: Range<i64>,
    ) -> Result<Vec<(i64, Result<State, DecodeError>)>, StoreError>;

    /// Applies `txn` in one transaction; returns the outbox ids assigned to
    /// `txn.notifications`, in order.
    fn write(&self, txn: Transaction<'_>) -> Result<Vec<u64>, StoreError>;

    /// Retention: deletes what `what` names from before `before_ms`, in one
    /// transaction; returns how many entries were deleted.
    fn delete_before(&self, what: Retention, before_ms: i64) -> Result<u64, StoreError>;

    /// Event retention: deletes every event whose `ts_ms` is before its
    /// kind's cutoff (an event whose stored bytes do not decode has the
    /// default cutoff), in one transaction; returns how many were deleted.
    fn delete_events(&self, cutoffs: &EventCutoffs) -> Result<u64, StoreError>;

    /// Series expiry: deletes `series` (their keys, last-update times, open
    /// minutes and buckets at every resolution) and `metrics` (their kinds), and records
    /// `next_series_id` (see [`Restored::series_next_id`]), in one
    /// transaction.
    fn remove_series(
        &self,
        series: &[SeriesId],
        metrics: &[String],
        next_series_id: SeriesId,
    ) -> Result<(), StoreError>;

    /// Deletes every quarantined state; returns how many there were.
    fn clear_quarantine(&self) -> Result<u64, StoreError>;

    /// Spooled batches with `seq > after_seq`, ascending, at most
    /// `max_batches`, as they were appended (encoded).
    fn spool_read(
        &self,
        after_seq: u64,
        max_batches: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// The events `query` selects, newest first (equal timestamps: last
    /// appended first), at most `query.limit`.
    fn events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError>;

    /// Every alarm state, in any order.
    fn alarm_states(&self) -> Result<Vec<AlarmState>, StoreError>;

    /// The alarm history, newest first (equal times: last appended first),
    /// at most `limit` records.
    fn alarm_history(&self, limit: usize) -> Result<Vec<AlarmRecord>, StoreError>;

    /// Queued notifications, lowest id first, at most `limit`.
    fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;

    /// How many notifications are queued.
    fn outbox_len(&self) -> Result<u64, StoreError>;

    /// Sets entry `id`'s attempts, next attempt time and last error; returns
    /// false (changing nothing) if it is not queued.
    fn outbox_retry(
        &self,
        id: u64,
        attempts: u32,
        next_attempt_ms: i64,
        last_error: &str,
    ) -> Result<bool, StoreError>;

    /// Deletes entry `id`; returns whether it was queued.
    fn outbox_delete(&self, id: u64) -> Result<bool, StoreError>;

    /// Every stored input cursor whose key starts with `prefix`, as (key,
    /// value), ascending by key (byte order).
    fn read_cursors(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}
