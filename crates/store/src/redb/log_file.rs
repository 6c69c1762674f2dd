//! [`RequestLogFile`]: the request log's own redb file, beside the store's.
//!
//! The server's request log makes a `wait=commit` request durable on its
//! own, before the flush that merges it. Kept in a file of its own, its
//! writes never wait for the store's writer (one writer per redb file, and
//! a flush commit of many series takes a while): an acknowledgement costs
//! one small transaction here. The file holds the records (sequence number
//! → bytes, [`crate::encode_request_record`]) and the next sequence number,
//! which only grows, so a number is never given to two records even after
//! every record was deleted. Which records a flush merged is recorded in
//! the store, in that flush's transaction; the server ties the two
//! together (`crates/server/src/core/request_log.rs`).

use std::path::{Path, PathBuf};

use redb::{Database, TableDefinition};

use super::open::{open_error, rename_aside};
use super::table::{ReadTxn, WriteTxn};
use crate::StoreError;

/// Sequence number → record bytes.
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// `next_seq` → the number the next record gets.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_NEXT_SEQ: &str = "next_seq";

/// Page cache of the file: records are written once, read back only at
/// start, and deleted soon after.
const CACHE_BYTES: usize = 4 << 20;

/// The request log's file: records appended and deleted in transactions
/// that are durable (fsynced) when they return.
pub struct RequestLogFile {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RequestLogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLogFile")
            .field("path", &self.path)
            .finish()
    }
}

impl RequestLogFile {
    /// File name of the log inside the data directory.
    pub const FILE_NAME: &'static str = "request_log.redb";

    /// Opens (creating if needed) the log in `dir`. An existing file that
    /// is not a readable redb file is refused, naming it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format_args!("create {}", dir.display()), e))?;
        let path = dir.join(Self::FILE_NAME);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| open_error(&path, e))?;
        let txn = WriteTxn::begin(&db, "open request log")?;
        txn.table(RECORDS)?;
        txn.table(META)?;
        txn.commit().map_err(|e| e.within(path.display()))?;
        Ok(RequestLogFile { db, path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the log's file in `dir`, if there is one, to
    /// `request_log.redb.reset-<unix ms>` beside it (renamed, never
    /// deleted); returns the new path. For a store started afresh: the
    /// records belong to the store they were merged into, or were to be.
    pub fn move_aside(dir: &Path) -> Result<Option<PathBuf>, StoreError> {
        if !dir.join(Self::FILE_NAME).exists() {
            return Ok(None);
        }
        rename_aside(dir, Self::FILE_NAME, "reset").map(Some)
    }

    /// In one durable transaction: deletes the records numbered `delete`
    /// (absent ones are ignored), then appends `append` numbered from the
    /// next sequence number, never below `at_least`; returns their numbers,
    /// in order.
    pub fn write(
        &self,
        append: &[Vec<u8>],
        delete: &[u64],
        at_least: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let txn = WriteTxn::begin(&self.db, "request log write")?;
        let mut seqs = Vec::with_capacity(append.len());
        {
            let mut records = txn.table(RECORDS)?;
            for &seq in delete {
                records.remove(seq)?;
            }
            if !append.is_empty() {
                let mut meta = txn.table(META)?;
                let mut next = meta
                    .get(META_NEXT_SEQ)?
                    .map_or(1, |v| v.value())
                    .max(at_least);
                for record in append {
                    records.insert(next, record.as_slice())?;
                    seqs.push(next);
                    next += 1;
                }
                meta.insert(META_NEXT_SEQ, next)?;
            }
        }
        txn.commit().map_err(|e| e.within(self.path.display()))?;
        Ok(seqs)
    }

    /// Every record, ascending by number.
    pub fn records(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = ReadTxn::begin(&self.db, "request log read")?;
        let table = txn.table(RECORDS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (seq, bytes) = entry?;
            out.push((seq.value(), bytes.value().to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_numbered_durably_and_numbers_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = RequestLogFile::open(dir.path()).unwrap();
            assert_eq!(
                log.write(&[b"a".to_vec(), b"b".to_vec()], &[], 0).unwrap(),
                [1, 2]
            );
            assert_eq!(log.write(&[b"c".to_vec()], &[1], 0).unwrap(), [3]);
            assert_eq!(
                log.records().unwrap(),
                [(2, b"b".to_vec()), (3, b"c".to_vec())]
            );
            // Deleting everything keeps the numbering.
            assert!(log.write(&[], &[2, 3, 99], 0).unwrap().is_empty());
            assert!(log.records().unwrap().is_empty());
        }
        let log = RequestLogFile::open(dir.path()).unwrap();
        assert_eq!(log.write(&[b"d".to_vec()], &[], 0).unwrap(), [4]);
        // A floor from elsewhere (numbers the store still names) wins.
        assert_eq!(log.write(&[b"e".to_vec()], &[], 10).unwrap(), [10]);
        assert_eq!(log.write(&[b"f".to_vec()], &[], 0).unwrap(), [11]);
        assert_eq!(log.records().unwrap().len(), 3);
    }

    #[test]
    fn moving_aside_keeps_the_file_and_starts_an_empty_log() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RequestLogFile::move_aside(dir.path()).unwrap(), None);
        let log = RequestLogFile::open(dir.path()).unwrap();
        log.write(&[b"a".to_vec()], &[], 0).unwrap();
        drop(log);
        let aside = RequestLogFile::move_aside(dir.path()).unwrap().unwrap();
        assert!(aside.exists());
        assert!(
            RequestLogFile::open(dir.path())
                .unwrap()
                .records()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(RequestLogFile::FILE_NAME),
            b"not redb at all",
        )
        .unwrap();
        let e = RequestLogFile::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains(RequestLogFile::FILE_NAME), "{e}");
    }
}
