//! [`Redb`]: the durable backend, one redb file in the node's data
//! directory ([`RedbStore::open`]); every commit is fsynced when it returns.
//!
//! - `schema.rs`: the tables, `meta` entries and format version.
//! - `table.rs`: transactions and tables that name themselves in errors.
//! - `open.rs`: opening, refusing a damaged file, moving it aside, creating
//!   the tables, and restoring what the store keeps in memory.
//! - `migrate.rs`: upgrading files of older formats, in the open
//!   transaction.
//! - `read.rs` and `write.rs`: the [`Backend`] primitives.
//! - `log_file.rs`: [`RequestLogFile`], the server's request log, a redb
//!   file of its own beside the store's.
//!
//! A bucket state that does not decode never stops a commit or a query: the
//! store moves its bytes to `quarantine`, keyed by bucket table, series and
//! bucket, where they stay until [`Store::clear_quarantine`](crate::Store::clear_quarantine).

use std::ops::Range;
use std::path::{Path, PathBuf};

use redb::Database;
use strata_model::State;

pub use log_file::RequestLogFile;

use crate::backend::{Backend, BucketKey, Restored, Retention, Stored, Transaction};
use crate::{
    AlarmRecord, AlarmState, BackedStore, DecodeError, Event, EventCutoffs, EventQuery,
    OutboxEntry, Resolution, SeriesId, StoreError,
};

mod log_file;
mod migrate;
mod open;
mod read;
pub(crate) mod schema;
mod table;
mod write;

/// The durable [`Backend`]: a redb database file.
///
/// Writes are redb write transactions (one at a time); reads are redb read
/// transactions, which see the last committed snapshot and never wait for
/// the writer.
pub struct Redb {
    pub(crate) db: Database,
    /// The database file, for errors and logs.
    path: PathBuf,
}

/// The durable store of a node: [`BackedStore`] over [`Redb`].
pub type RedbStore = BackedStore<Redb>;

impl std::fmt::Debug for Redb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redb").field("path", &self.path).finish()
    }
}

impl BackedStore<Redb> {
    /// File name of the database inside the data directory.
    pub const FILE_NAME: &'static str = "strata.redb";

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.backend.path
    }
}

impl Backend for Redb {
    fn restore(&self) -> Result<Restored, StoreError> {
        open::restore(&self.db)
    }

    fn load_buckets(&self, keys: &[BucketKey]) -> Result<Vec<Stored>, StoreError> {
        read::load_buckets(&self.db, keys)
    }

    fn read_buckets(
        &self,
        resolution: Resolution,
        series: SeriesId,
        range: Range<i64>,
    ) -> Result<Vec<(i64, Result<State, DecodeError>)>, StoreError> {
        read::read_buckets(&self.db, resolution, series, range)
    }

    fn write(&self, txn: Transaction<'_>) -> Result<Vec<u64>, StoreError> {
        write::write(&self.db, &txn)
    }

    fn delete_before(&self, what: Retention, before_ms: i64) -> Result<u64, StoreError> {
        write::delete_before(&self.db, what, before_ms)
    }

    fn delete_events(&self, cutoffs: &EventCutoffs) -> Result<u64, StoreError> {
        write::delete_events(&self.db, cutoffs)
    }

    fn remove_series(
        &self,
        series: &[SeriesId],
        metrics: &[String],
        next_series_id: SeriesId,
    ) -> Result<(), StoreError> {
        write::remove_series(&self.db, series, metrics, next_series_id)
    }

    fn clear_quarantine(&self) -> Result<u64, StoreError> {
        write::clear_quarantine(&self.db)
    }

    fn spool_read(
        &self,
        after_seq: u64,
        max_batches: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        read::spool_read(&self.db, after_seq, max_batches)
    }

    fn events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        read::events(&self.db, query)
    }

    fn alarm_states(&self) -> Result<Vec<AlarmState>, StoreError> {
        read::alarm_states(&self.db)
    }

    fn alarm_history(&self, limit: usize) -> Result<Vec<AlarmRecord>, StoreError> {
        read::alarm_history(&self.db, limit)
    }

    fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        read::outbox(&self.db, limit)
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        read::outbox_len(&self.db)
    }

    fn outbox_retry(
        &self,
        id: u64,
        attempts: u32,
        next_attempt_ms: i64,
        last_error: &str,
    ) -> Result<bool, StoreError> {
        write::outbox_retry(&self.db, id, attempts, next_attempt_ms, last_error)
    }

    fn outbox_delete(&self, id: u64) -> Result<bool, StoreError> {
        write::outbox_delete(&self.db, id)
    }

    fn read_cursors(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        read::cursors(&self.db, prefix)
    }
}
