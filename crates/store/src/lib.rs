//! Durable storage for a strata node: metric state per minute, hour and day,
//! the progress of every downstream source, the spool of increments waiting to
//! go upstream, the node's event log, and its alarms (state, history and the
//! outbox of notifications to webhooks and Alertmanagers).
//!
//! Everything a flush produces lands in the store in **one** transaction
//! ([`Store::commit`] with a [`Commit`]): the merged bucket states at every
//! [`Resolution`], the sources' committed `seq` and watermark, the inputs'
//! [`Cursor`]s, the outgoing spool batch, and the
//! [`EventKind::SpoolOverflow`] event if the spool cap made it drop batches.
//! That single transaction is what makes federation exactly-once in effect:
//! a crash either loses the whole flush (and the source resends it) or keeps
//! all of it (and the source's resend is recognised as a duplicate by its
//! `seq`).
//!
//! # Design: one store, backends below it
//! The server codes against the [`Store`] trait. It has one implementation,
//! [`BackedStore`], which holds every behaviour of a store — the series
//! index, commit planning (kind checks, read-merge-write, folding minutes
//! into hours and days), the spool ledger and its cap, quarantine of unreadable
//! states, the events the store records about itself, caches and the writer
//! exclusion — over a [`Backend`]: a narrow trait of storage primitives
//! (restore, load and read buckets, write one planned
//! [`Transaction`](backend::Transaction),
//! retention, series removal, spool, events, alarms, outbox). A backend
//! decides nothing; a new one (PostgreSQL is next) implements the seventeen
//! primitives and runs the behaviour suite.
//!
//! Two backends today:
//! - [`Redb`], an embedded transactional database in the node's data
//!   directory: durable (fsynced at every commit), survives crashes and
//!   restarts. [`RedbStore`] is `BackedStore<Redb>`, the default.
//! - [`Memory`], plain maps, for tests and best-effort nodes that accept
//!   losing everything on restart. [`MemoryStore`] is `BackedStore<Memory>`.
//!   Running redb on its in-memory backend instead was measured about 50%
//!   more CPU per sample at the global tier (docs/PERFORMANCE.md), so the
//!   maps stay; everything above the primitives is shared.
//!
//! Main types:
//! - [`Store`]: what the server codes against; [`BackedStore`] implements it.
//! - [`RedbStore`] and [`MemoryStore`]: the two stores a node runs.
//! - [`Backend`] and the [`backend`] module: the primitives, and the plain
//!   data ([`backend::Transaction`], [`backend::Restored`], …) they exchange.
//! - [`Commit`] / [`CommitOutcome`]: one flush in, what happened out.
//! - [`Resolution`]: minute, hour or day; the width of a stored bucket.
//! - [`Event`] and [`EventKind`]: one entry of the event log, and what it
//!   records; [`EventQuery`] and [`EventCutoffs`]: which events a listing
//!   selects and which retention deletes, per kind.
//! - [`SourceProgress`], [`SpoolBatch`], [`SpoolStats`], [`MetricInfo`]: what
//!   readers get back.
//! - [`Cursor`]: one input's per-stream state, written with a flush.
//! - [`AlarmState`], [`AlarmRecord`], [`OutboxEntry`] and [`AlarmUpdate`]: what
//!   the alarm evaluator keeps here.
//! - [`StoreError`] (and [`DecodeError`], its source when stored bytes do not
//!   decode).
//!
//! # Rollups
//! Each series has at most one **open minute**, its newest minute bucket;
//! every other minute is **folded**: merged into its hour and day buckets.
//! A commit merges an increment for the open minute into that minute alone,
//! one for a new, newer minute into that minute after folding the previous
//! open one (the same transaction), and a late one (a minute already
//! folded) into its minute, hour and day together, or into none of them. A
//! read of hours or days ([`Store::read_at`]) adds the open minute to the
//! bucket it falls in, so an hour or day always reads as the merge of every
//! increment committed into its minutes, and stays readable after minute
//! retention ([`Store::delete_before`], which folds an open minute before
//! deleting it) has removed them. A series updated at every flush so
//! touches one stored state per flush instead of three. Each resolution has
//! its own retention. A minute a rollup refuses while folding (a histogram
//! precision that changed within the hour) stays readable at minute
//! resolution and is left out of that rollup, with an
//! [`EventKind::RollupRefused`] event (`plan.rs` has the details).
//!
//! # Input cursors
//! An input that turns cumulative data into deltas (cumulative sums and
//! histograms, counters) keeps, per stream, the last cumulative value it
//! took. That state is a [`Cursor`]: opaque bytes under a key the input
//! chooses, written in the same transaction as the increments computed from
//! it ([`Commit::cursors`]), so a crash can neither lose the delta nor count
//! it twice. The input reads its cursors back once, at start
//! ([`Store::cursors`]); expiry deletes one by writing it with no value.
//!
//! # Series expiry
//! Every commit stamps each series an increment merged into with the
//! commit's `now_ms`. The stamp persisted with the series is rounded up to
//! a whole minute and written when that moves (once a minute for a series
//! updated all along): a reopened store knows each series' last update to
//! within a minute, never earlier than it was, so after a restart a series
//! expires up to a minute late and never early. [`Store::expire_series`]
//! removes, in one transaction, every series last stamped before a given
//! time: its key, its buckets at every resolution, and its metric once the
//! metric has no series left (its kind is then no longer fixed).
//! [`Store::expire_series_with`] does the same with a time per series (the
//! server's per-metric expiry rules). Expiry is by last update: a series
//! updated within its TTL is kept however old its first sample. Series ids
//! are never reused, also after expiry.
//!
//! # Quarantine
//! A stored bucket state that does not decode (a corrupt page, or a state an
//! older version wrote that no longer validates) never stops a commit or a
//! query: the commit or read that meets it moves its bytes aside, in a
//! transaction of its own or the commit's, with an
//! [`EventKind::StateQuarantined`] event, and the bucket starts afresh.
//! [`Store::quarantined`] counts them (health shows them).
//!
//! # Alarms
//! The store keeps, for the alarm evaluator, one [`AlarmState`] per alarm
//! instance (rule and group), an append-only history of [`AlarmRecord`]s,
//! and an outbox of notifications ([`OutboxEntry`], to webhooks and
//! Alertmanagers: [`NotificationKind`]) that are deleted
//! only once delivered. [`Store::update_alarms`] changes all of them, and
//! appends events, in one transaction.
//!
//! # Event log
//! [`Store::append_events`] adds events in one transaction;
//! [`Store::query_events`] lists them newest first, by time range and kind
//! ([`EventQuery`]); [`Store::delete_events`] is their retention, with a
//! cutoff per kind ([`EventCutoffs`]). Events are keyed by timestamp and a store-assigned,
//! persisted, increasing id, so equal timestamps never overwrite each other.
//!
//! Series get store-assigned ids ([`SeriesId`]); the store keeps every series
//! key in memory, so listing metrics and matching selectors never touch the
//! backend. A metric's kind is fixed by its first committed bucket; a later
//! increment of another kind is skipped and reported in
//! [`CommitOutcome::merge_errors`] while the rest of the commit goes through.
//!
//! # Layout
//! - `lib.rs`: the [`Store`] trait and the types it takes and returns.
//! - `backed.rs`: [`BackedStore`], every behaviour above the primitives.
//! - `backend.rs`: the [`Backend`] trait (its contract) and its data types.
//! - `index.rs`: the in-memory series index (keys, kinds, last updates,
//!   open minutes).
//! - `plan.rs`: the commit planner (kind checks, read-merge-write into
//!   minutes, folding open minutes into hours and days).
//! - `spool.rs`: the spool ledger, its cap and its overflow event.
//! - `codec.rs`: byte encodings of series keys, spool batches, request-log records, events and
//!   alarm records.
//! - `error.rs`: [`StoreError`], [`DecodeError`].
//! - `events.rs`: [`Event`], [`EventKind`], [`EventQuery`], [`EventCutoffs`].
//! - `alarm.rs`: [`AlarmKey`], [`AlarmState`], [`AlarmRecord`],
//!   [`Notification`], [`NotificationKind`], [`OutboxEntry`], [`AlarmUpdate`].
//! - `resolution.rs`: [`Resolution`] and its bucket boundaries.
//! - `memory.rs`: the [`Memory`] backend.
//! - `redb/`: the [`Redb`] backend — `mod.rs` (the type and its `Backend`
//!   impl), `schema.rs` (tables, format version), `table.rs` (typed tables
//!   that name themselves in errors), `open.rs` (open, integrity, move
//!   aside, restore), `migrate.rs` (older formats), `read.rs`, `write.rs`.
//! - `suite.rs` (tests only): the behaviour suite, run against both stores,
//!   then the tests only a durable store passes.
//! - `corrupt_files.rs` (tests only): files damaged outside strata.
//!
//! # Example
//! ```
//! use strata_store::{Commit, MemoryStore, Store, StoreOptions};
//!
//! let store = MemoryStore::new(StoreOptions::default());
//! let outcome = store
//!     .commit(Commit {
//!         increments: &[],
//!         progress: &[],
//!         cursors: &[],
//!         spool_watermark_ms: Some(60_000),
//!         now_ms: 61_000,
//!     })
//!     .expect("commit");
//! assert_eq!(outcome.spool_seq, Some(1));
//! assert_eq!(store.spool_read(0, 10).expect("read spool").len(), 1);
//! store.spool_ack(1).expect("ack");
//! assert_eq!(store.spool_stats().batches, 0);
//! ```

use std::sync::Arc;

use strata_model::{Increment, Kind, ModelError, SeriesKey, State};

mod alarm;
mod backed;
pub mod backend;
mod codec;
#[cfg(test)]
mod corrupt_files;
mod error;
mod events;
#[doc(hidden)]
pub mod fuzzing;
mod index;
mod memory;
mod plan;
mod redb;
mod resolution;
mod spool;
#[cfg(test)]
mod suite;

pub use alarm::{
    AlarmKey, AlarmRecord, AlarmState, AlarmUpdate, Notification, NotificationKind, OutboxEntry,
};
pub use backed::BackedStore;
pub use backend::Backend;
pub use codec::{RequestRecord, decode_request_record, encode_request_record};
pub use error::{BackendError, DecodeError, StoreError};
pub use events::{Event, EventCutoffs, EventKind, EventQuery};
pub use memory::{Memory, MemoryStore};
pub use redb::{Redb, RedbStore, RequestLogFile};
pub use resolution::Resolution;

/// Store-assigned identity of a series: sequential, never reused.
pub type SeriesId = u64;

/// How far one downstream source has been committed here.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceProgress {
    /// The source's node id, unique among this node's downstreams.
    pub source_id: String,
    /// The source's durable-state identity; a new epoch restarts its seqs.
    pub epoch: u64,
    /// Highest batch `seq` committed from this source: the resend point.
    pub seq: u64,
    /// The source's watermark as of that batch, for completeness.
    pub watermark_ms: i64,
    /// When this node last heard from the source, for `source_ttl_s` expiry.
    pub last_seen_ms: i64,
}

/// One write of an input's cursor: per-stream state that an input keeps
/// beside the increments it computed from it (for example the last
/// cumulative value of a stream whose deltas it derives), applied with a
/// [`Commit`] in the same transaction.
///
/// The store does not interpret the value: it keeps the bytes as given and
/// returns them by key ([`Store::cursors`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Chosen by the input, prefixed by the input's name so that each input
    /// reads back only its own (e.g. `"otlp/<stream identity>"`).
    pub key: String,
    /// `Some`: the value to store, replacing any stored one. `None`: delete
    /// the key (deleting a key that is not stored is not an error).
    pub value: Option<Vec<u8>>,
}

impl Cursor {
    /// A write that stores `value` under `key`.
    pub fn set(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Cursor {
            key: key.into(),
            value: Some(value.into()),
        }
    }

    /// A write that deletes `key`.
    pub fn delete(key: impl Into<String>) -> Self {
        Cursor {
            key: key.into(),
            value: None,
        }
    }
}

/// One outgoing batch of increments, waiting in the spool for an upstream ack.
#[derive(Clone, Debug, PartialEq)]
pub struct SpoolBatch {
    /// Contiguous within this store's epoch; the upstream acks by it.
    pub seq: u64,
    /// This node's watermark when the batch was committed.
    pub watermark_ms: i64,
    /// Commit time, to report how stale the spool is.
    pub created_ms: i64,
    /// The increments the commit merged (those it refused are not spooled).
    pub increments: Vec<Increment>,
}

/// Size and position of the outgoing spool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Batches waiting for an ack.
    pub batches: u64,
    /// Their total encoded size, compared against `spool_max_bytes`.
    pub bytes: u64,
    /// Oldest waiting seq; 0 when the spool is empty.
    pub first_seq: u64,
    /// Last seq ever assigned, even if already acked (0 before the first).
    pub last_seq: u64,
    /// Batches dropped at the cap since the store was created.
    pub dropped_batches: u64,
}

/// One metric as listed by [`Store::metrics`].
#[derive(Clone, Debug, PartialEq)]
pub struct MetricInfo {
    pub name: String,
    pub kind: Kind,
    /// How many series the metric has.
    pub series: usize,
}

/// One flush, applied atomically (one transaction).
#[derive(Clone, Copy, Debug)]
pub struct Commit<'a> {
    /// Each is merged into its (series, minute) state, read-merge-write, and
    /// so (at once for a late one, when its minute is folded otherwise) into
    /// its hour and day ("Rollups" above). `bucket_ms` is rounded down to
    /// the start of its minute, hour and day.
    pub increments: &'a [Increment],
    /// Upserted by `source_id`, replacing the stored record.
    pub progress: &'a [SourceProgress],
    /// Input cursors to store or delete, applied in order (of two writes of
    /// one key, the later wins). A commit of cursors alone is written too.
    pub cursors: &'a [Cursor],
    /// `Some`: also append the merged `increments` as one outgoing
    /// [`SpoolBatch`] with the next seq and this watermark. Appended even when
    /// there are no increments (a watermark-only batch): the caller decides.
    pub spool_watermark_ms: Option<i64>,
    /// Commit time, recorded as the spool batch's `created_ms`, as the time
    /// of a spool overflow event, and as the last update of every series an
    /// increment merged into (for [`Store::expire_series`]).
    pub now_ms: i64,
}

/// What a successful commit did.
#[derive(Debug, Default)]
pub struct CommitOutcome {
    /// Seq of the spool batch this commit appended, if it appended one.
    pub spool_seq: Option<u64>,
    /// Batches dropped oldest-first in this commit because the spool exceeded
    /// its cap; when non-zero, the commit also appended an
    /// [`EventKind::SpoolOverflow`] event naming them.
    pub spool_dropped: u64,
    /// Increments that could not be merged (kind or precision mismatch,
    /// overflow), by series display: skipped, the rest committed.
    pub merge_errors: Vec<(String, ModelError)>,
    /// Stored bucket states this commit found unreadable and moved to
    /// quarantine (each with an [`EventKind::StateQuarantined`] event in the
    /// same transaction); their buckets started afresh.
    pub quarantined: u64,
}

/// Storage of a node: metric state, source progress, input cursors, the
/// outgoing spool, the event log and the alarm tables. What the server codes
/// against.
///
/// Implemented once, by [`BackedStore`] over any [`Backend`]: a new kind of
/// storage is a new backend, not a new implementation of this trait.
///
/// Readers work concurrently with a writer and see only committed data.
/// Every method that writes is one transaction: on error nothing of it was
/// applied.
pub trait Store: Send + Sync + 'static {
    /// Identity of this node's durable state: random non-zero u64 chosen when
    /// the store is first created and persisted; a store in memory picks a
    /// new one per instance.
    fn epoch(&self) -> u64;
    /// Applies one flush in one transaction; on error nothing of it is applied.
    fn commit(&self, commit: Commit<'_>) -> Result<CommitOutcome, StoreError>;
    /// Every metric with a committed bucket, sorted by name.
    fn metrics(&self) -> Vec<MetricInfo>;
    fn metric_kind(&self, name: &str) -> Option<Kind>;
    /// All known series of a metric, in order of first commit.
    fn series_of(&self, metric: &str) -> Vec<Arc<SeriesKey>>;
    fn series_count(&self) -> usize;
    /// Minute buckets of one series with `from_ms <= bucket < to_ms`, ascending:
    /// [`Store::read_at`] at [`Resolution::Minute`].
    fn read(
        &self,
        series: &SeriesKey,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, State)>, StoreError> {
        self.read_at(series, Resolution::Minute, from_ms, to_ms)
    }
    /// Buckets of one series at `resolution` whose start is in
    /// `from_ms..to_ms` (not rounded), ascending by start. An hour or day
    /// includes the series' open minute ("Rollups" above).
    fn read_at(
        &self,
        series: &SeriesKey,
        resolution: Resolution,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, State)>, StoreError>;
    /// Progress of every source, sorted by id.
    fn sources(&self) -> Vec<SourceProgress>;
    fn source(&self, id: &str) -> Option<SourceProgress>;
    /// Every stored [`Cursor`] whose key starts with `prefix` (all of them
    /// for `""`), as (key, value), sorted by key. Read from the backend on
    /// each call, not cached: an input reads its cursors once, at start.
    fn cursors(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// How many unreadable bucket states this store holds in quarantine: moved
    /// aside by the commit or read that met them, each recorded as an
    /// [`EventKind::StateQuarantined`] event.
    fn quarantined(&self) -> u64;
    /// Deletes every quarantined state (once an operator has looked at them);
    /// returns how many were deleted.
    fn clear_quarantine(&self) -> Result<u64, StoreError>;
    /// Outgoing batches with `seq > after_seq`, ascending, at most `max_batches`.
    fn spool_read(&self, after_seq: u64, max_batches: usize)
    -> Result<Vec<SpoolBatch>, StoreError>;
    /// Deletes spooled batches with `seq <= upto_seq` (acknowledged upstream).
    fn spool_ack(&self, upto_seq: u64) -> Result<(), StoreError>;
    fn spool_stats(&self) -> SpoolStats;
    /// Retention: deletes minute buckets older than `before_ms`; returns how
    /// many were deleted. [`Store::delete_before`] at [`Resolution::Minute`].
    fn delete_buckets_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.delete_before(Resolution::Minute, before_ms)
    }
    /// Retention of one resolution: deletes its buckets starting before
    /// `before_ms`, leaving the other resolutions alone; returns how many were
    /// deleted. Minute retention first folds every open minute it would
    /// delete into its hour and day (a transaction of its own).
    fn delete_before(&self, resolution: Resolution, before_ms: i64) -> Result<u64, StoreError>;
    /// Appends events to the log, all in one transaction.
    fn append_events(&self, events: &[Event]) -> Result<(), StoreError>;
    /// Events with `ts_ms >= since_ms`, newest first (equal timestamps: last
    /// appended first), at most `limit`: [`Store::query_events`] of
    /// [`EventQuery::since`].
    fn events(&self, since_ms: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.query_events(&EventQuery::since(since_ms, limit))
    }
    /// The events `query` selects, newest first (equal timestamps: last
    /// appended first), at most `query.limit`.
    fn query_events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError>;
    /// Event retention: deletes events with `ts_ms < before_ms`; returns how
    /// many were deleted. [`Store::delete_events`] of one cutoff for every
    /// kind.
    fn delete_events_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.delete_events(&EventCutoffs::uniform(before_ms))
    }
    /// Event retention per kind: deletes every event whose `ts_ms` is before
    /// its kind's cutoff, in one transaction; returns how many were deleted.
    fn delete_events(&self, cutoffs: &EventCutoffs) -> Result<u64, StoreError>;

    /// Series TTL: removes every series whose last update (the `now_ms` of
    /// the last commit that merged an increment into it) is before
    /// `idle_before_ms` — its key, its buckets at every resolution, and its
    /// metric if no series of it is left — in one transaction; returns how
    /// many series were removed. A later increment of the same key creates a
    /// new series with a new id. [`Store::expire_series_with`] of one time
    /// for every series.
    fn expire_series(&self, idle_before_ms: i64) -> Result<u64, StoreError> {
        self.expire_series_with(&|_| idle_before_ms)
    }
    /// Series TTL per series: as [`Store::expire_series`], with each series
    /// removed when its last update is before `idle_before(series)`. Called
    /// once per series, metric by metric, with the writer excluded: keep it
    /// cheap.
    fn expire_series_with(
        &self,
        idle_before: &dyn Fn(&SeriesKey) -> i64,
    ) -> Result<u64, StoreError>;

    /// Applies alarm state changes, history records, new outbox
    /// notifications and events in one transaction; returns the outbox ids
    /// assigned to `update.notifications`, in order.
    fn update_alarms(&self, update: AlarmUpdate<'_>) -> Result<Vec<u64>, StoreError>;
    /// Every alarm state, sorted by key.
    fn alarm_states(&self) -> Result<Vec<AlarmState>, StoreError>;
    /// The alarm history, newest first (equal times: last appended first),
    /// at most `limit` records.
    fn alarm_history(&self, limit: usize) -> Result<Vec<AlarmRecord>, StoreError>;
    /// History retention: deletes records with `ts_ms < before_ms`; returns
    /// how many were deleted.
    fn delete_alarm_history_before(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Queued notifications, oldest (lowest id) first, at most `limit`.
    fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;
    /// How many notifications are queued.
    fn outbox_len(&self) -> Result<u64, StoreError>;
    /// Records a failed delivery of entry `id`: its new attempt count, when to
    /// try next and why it failed. Returns false (and changes nothing) if the
    /// entry is not queued.
    fn outbox_retry(
        &self,
        id: u64,
        attempts: u32,
        next_attempt_ms: i64,
        last_error: &str,
    ) -> Result<bool, StoreError>;
    /// Deletes entry `id` (delivered, or dropped); returns whether it was queued.
    fn outbox_delete(&self, id: u64) -> Result<bool, StoreError>;
}

/// Limits and sizes of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Cap on the spool's total encoded size; past it the oldest batches are
    /// dropped (counted and logged). Default 256 MiB.
    pub spool_max_bytes: u64,
    /// Memory the redb backend may use to cache database pages (read and
    /// write). Default 64 MiB.
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            spool_max_bytes: 256 * 1024 * 1024,
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A random non-zero epoch.
///
/// std's `RandomState` is seeded from the OS once per process and varies per
/// instance; mixing in the clock and pid keeps two processes started from one
/// image apart.
pub(crate) fn new_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    match hasher.finish() {
        0 => 1,
        epoch => epoch,
    }
}

/// Milliseconds since the Unix epoch by the system clock (0 if it is before
/// 1970).
pub(crate) fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
