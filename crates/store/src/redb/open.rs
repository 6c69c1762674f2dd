//! Opening a [`RedbStore`](crate::RedbStore): refusing a file that cannot
//! be used (and moving it aside on request), creating the tables and the
//! epoch, upgrading older formats, and restoring what the store keeps in
//! memory.

use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, StorageError};

use super::schema::{
    ALARM_HISTORY, ALARM_OUTBOX, ALARM_STATES, EVENTS, FORMAT_VERSION, INPUT_CURSORS, META,
    META_EPOCH, META_FORMAT_VERSION, META_SERIES_NEXT_ID, META_SPOOL_BYTES, META_SPOOL_DROPPED,
    META_SPOOL_LAST_SEQ, METRICS, QUARANTINE, SERIES, SERIES_OPEN, SERIES_SEEN, SOURCES, SPOOL,
    bucket_table,
};
use super::table::{ReadTxn, WriteTxn};
use super::{Redb, migrate};
use crate::backend::{Restored, RestoredSeries, SpoolCounters};
use crate::codec::decode_series_key;
use crate::{
    BackedStore, DecodeError, Resolution, SourceProgress, Store, StoreError, StoreOptions,
    new_epoch, wall_clock_ms,
};

impl BackedStore<Redb> {
    /// Opens (creating if needed) the store in `dir`, file `strata.redb`, and
    /// restores series, metric kinds, source progress and the spool.
    ///
    /// A file that exists but cannot be used is refused with
    /// [`StoreError::Unreadable`] and left as it is: an empty file (redb would
    /// silently start a new database in it), one that is not a redb file, one
    /// whose pages fail their checksums (every page is verified on open), and
    /// one whose reading panics. A missing file is created. Every error names
    /// the file.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format_args!("create {}", dir.display()), e))?;
        let path = dir.join(Self::FILE_NAME);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == 0 => {
                return Err(StoreError::Unreadable {
                    reason: format!(
                        "{} is empty (0 bytes): the node's data is gone from it, and starting on it \
                         would silently begin a new store with a new epoch",
                        path.display()
                    ),
                    source: None,
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(path.display(), e)),
        }
        // redb trusts its pages once their checksums passed; a panic while
        // reading a file altered outside it is still a refusal, not a crash.
        let store = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let db = Database::builder()
                .set_cache_size(opts.cache_bytes)
                .set_check_integrity_on_open(true)
                .create(&path)
                .map_err(|e| open_error(&path, e))?;
            initialize(&db).map_err(|e| e.within(path.display()))?;
            let backend = Redb {
                db,
                path: path.clone(),
            };
            BackedStore::restore(backend, opts).map_err(|e| e.within(path.display()))
        }))
        .unwrap_or_else(|payload| {
            Err(StoreError::Unreadable {
                reason: format!(
                    "{}: reading it panicked: {}",
                    path.display(),
                    panic_text(payload.as_ref())
                ),
                source: None,
            })
        })?;
        tracing::info!(
            path = %path.display(),
            epoch = store.epoch(),
            series = store.series_count(),
            sources = store.sources().len(),
            spool_batches = store.spool_stats().batches,
            spool_last_seq = store.spool_stats().last_seq,
            "store opened"
        );
        Ok(store)
    }

    /// Moves an unreadable store file aside, to
    /// `strata.redb.corrupt-<unix ms>` in the same directory, so that the
    /// next [`RedbStore::open`](crate::RedbStore::open) starts a new store; returns the new path.
    /// The file is renamed, never deleted.
    pub fn move_aside(dir: &Path) -> Result<PathBuf, StoreError> {
        rename_aside(dir, Self::FILE_NAME, "corrupt")
    }
}

/// Renames the file `name` in `dir` to `<name>.<why>-<unix ms>` beside it
/// (never deleted); returns the new path.
pub(super) fn rename_aside(dir: &Path, name: &str, why: &str) -> Result<PathBuf, StoreError> {
    let path = dir.join(name);
    let aside = dir.join(format!("{name}.{why}-{}", wall_clock_ms()));
    std::fs::rename(&path, &aside).map_err(|e| {
        StoreError::io(
            format_args!("moving {} to {}", path.display(), aside.display()),
            e,
        )
    })?;
    Ok(aside)
}

/// Why redb refused to open `path`, sorted into what `--reset-store` cures
/// (content that cannot be used) and what it must not touch (a lock held by
/// another process, I/O errors).
pub(super) fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    let what = format!("open {}", path.display());
    match e {
        DatabaseError::Storage(StorageError::Corrupted(_)) => StoreError::Unreadable {
            reason: format!("{what}: {e}"),
            source: Some(Box::new(e)),
        },
        DatabaseError::UpgradeRequired(version) => StoreError::Unreadable {
            reason: format!("{what}: file format version {version} is not one this build reads"),
            source: Some(Box::new(e)),
        },
        // redb's word for "these bytes are not a redb file".
        DatabaseError::Storage(StorageError::Io(ref io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            StoreError::Unreadable {
                reason: format!("{what}: {e}"),
                source: Some(Box::new(e)),
            }
        }
        DatabaseError::Storage(StorageError::Io(io)) => StoreError::io(what, io),
        DatabaseError::DatabaseAlreadyOpen => StoreError::db(
            format_args!(
                "{what}: the file is locked by another process (is another strata running on this data_dir?)"
            ),
            e,
        ),
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

/// Creates every table and, in a new database, the epoch; upgrades a file of
/// an older format.
fn initialize(db: &Database) -> Result<(), StoreError> {
    let txn = WriteTxn::begin(db, "open")?;
    // Opening a table in a write transaction creates it, so read
    // transactions never meet a missing table.
    txn.table(SERIES)?;
    txn.table(SERIES_SEEN)?;
    txn.table(SERIES_OPEN)?;
    txn.table(METRICS)?;
    for r in Resolution::ALL {
        txn.table(bucket_table(r))?;
    }
    txn.table(SOURCES)?;
    // Created here also in a file written before input cursors existed.
    txn.table(INPUT_CURSORS)?;
    txn.table(SPOOL)?;
    txn.table(EVENTS)?;
    txn.table(ALARM_STATES)?;
    txn.table(ALARM_HISTORY)?;
    txn.table(ALARM_OUTBOX)?;
    let mut meta = txn.table(META)?;

    let version = meta.get(META_FORMAT_VERSION)?.map(|v| v.value());
    match version {
        None => meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)?,
        Some(FORMAT_VERSION) => {}
        Some(old @ (1..=3)) => {
            migrate::upgrade(&txn, old)?;
            meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)?;
        }
        Some(other) => {
            return Err(StoreError::Unsupported(format!(
                "table meta: format_version {other} is not supported (expected {FORMAT_VERSION}): written by a newer strata?"
            )));
        }
    }
    let epoch = meta.get(META_EPOCH)?.map(|v| v.value());
    match epoch {
        Some(0) => {
            return Err(meta.corrupt(
                META_EPOCH,
                DecodeError::Inconsistent("epoch is 0".to_owned()),
            ));
        }
        Some(_) => {}
        None => {
            let epoch = new_epoch();
            meta.insert(META_EPOCH, epoch)?;
            tracing::info!(epoch, "store created with a new epoch");
        }
    }
    drop(meta);
    txn.commit()
}

/// Reads everything [`BackedStore`] keeps in memory, in one snapshot.
pub(super) fn restore(db: &Database) -> Result<Restored, StoreError> {
    let txn = ReadTxn::begin(db, "open")?;
    let meta = txn.table(META)?;
    let meta_get =
        |key: &str| -> Result<Option<u64>, StoreError> { Ok(meta.get(key)?.map(|v| v.value())) };
    let epoch = meta_get(META_EPOCH)?.unwrap_or_default();

    let table = txn.table(METRICS)?;
    let mut metrics = Vec::new();
    for entry in table.iter()? {
        let (name, tag) = entry?;
        let name = name.value();
        let kind = tag
            .value()
            .parse()
            .map_err(|e| table.corrupt(format_args!("metric {name}"), DecodeError::Kind(e)))?;
        metrics.push((name.to_owned(), kind));
    }

    let table = txn.table(SERIES)?;
    let seen = txn.table(SERIES_SEEN)?;
    let open = txn.table(SERIES_OPEN)?;
    let mut series = Vec::new();
    for entry in table.iter()? {
        let (id, bytes) = entry?;
        let id = id.value();
        let key = decode_series_key(bytes.value())
            .map_err(|e| table.corrupt(format_args!("series {id}"), e))?;
        let last_update_ms = seen.get(id)?.map(|at| at.value());
        let open_minute_ms = open.get(id)?.map(|at| at.value());
        series.push(RestoredSeries {
            id,
            key,
            last_update_ms,
            open_minute_ms,
        });
    }

    let mut sources = Vec::new();
    for entry in txn.table(SOURCES)?.iter()? {
        let (id, value) = entry?;
        let (epoch, seq, watermark_ms, last_seen_ms) = value.value();
        sources.push(SourceProgress {
            source_id: id.value().to_owned(),
            epoch,
            seq,
            watermark_ms,
            last_seen_ms,
        });
    }

    let mut spool = Vec::new();
    for entry in txn.table(SPOOL)?.iter()? {
        let (seq, bytes) = entry?;
        spool.push((seq.value(), bytes.value().len() as u64));
    }
    let spool_counters = SpoolCounters {
        last_seq: meta_get(META_SPOOL_LAST_SEQ)?.unwrap_or(0),
        bytes: meta_get(META_SPOOL_BYTES)?.unwrap_or(0),
        dropped_batches: meta_get(META_SPOOL_DROPPED)?.unwrap_or(0),
    };
    // Absent in files written before quarantine existed.
    let quarantined = match txn.table_if_exists(QUARANTINE)? {
        Some(table) => table.len()?,
        None => 0,
    };
    Ok(Restored {
        epoch,
        metrics,
        series,
        series_next_id: meta_get(META_SERIES_NEXT_ID)?,
        sources,
        spool,
        spool_counters,
        quarantined,
    })
}
