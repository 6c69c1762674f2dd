//! The request log: a `?wait=commit` request (gRPC `wait_commit`) answered
//! once it is durable on its own, in milliseconds, instead of after the next
//! flush commit.
//!
//! An accepted request's validated samples and states are encoded
//! ([`strata_store::RequestRecord`]) and written as one record of the log's
//! own file ([`RequestLogFile`], `request_log.redb` in the data directory),
//! numbered in sequence. Records arriving while a write is in progress are
//! written together by the next one (group commit: one transaction, one
//! sync, for every request waiting). A file of its own means a write never
//! waits for the store's writer, which a flush commit of many series holds
//! for a while. Once its record is durable the request is handed to the
//! aggregator with a [`Ticket::Logged`] and answered.
//!
//! The flush commit that merges the request's data writes a **marker** for
//! its record (`request_merged/<seq>` in the store's input-cursor table) in
//! the same transaction. After that commit the writer deletes the record
//! from the file, and once that deletion is durable the next flush commit
//! deletes the marker. So a record is unmerged (in the file, no marker),
//! merged (a marker, whether or not still in the file), or gone. At start
//! [`recover`] reads both: a record with a marker is deleted from the file
//! without being merged again, every other record is handed to the
//! aggregator again, and the markers left are deleted by the first flush.
//! Nothing acknowledged is lost or counted twice. Numbers only grow (the
//! file keeps the next one, and never goes below a marker's), so a marker
//! never names a newer record.
//!
//! Records an older build kept in the store itself (`request_log/<seq>` in
//! its input-cursor table) are handed to the aggregator at start with the
//! ticket that deletes them in the commit that merges them ([`deletion`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel as cb;
use parking_lot::Mutex;
use strata_model::{Increment, SampleItem};
use strata_store::{Cursor, RequestLogFile, RequestRecord, Store, StoreError};

use crate::context::Context;
use crate::core::commit::Ticket;
use crate::core::stats::Stats;

/// Key prefix of records an older build kept in the store's input-cursor
/// table.
pub const LOG_PREFIX: &str = "request_log/";
/// Key prefix of the markers of merged records in the store's input-cursor
/// table.
pub const MERGED_PREFIX: &str = "request_merged/";

/// Most records one write holds; the rest wait for the next.
const GROUP_RECORDS: usize = 256;
/// Most bytes one write holds (a record larger than this is written alone).
const GROUP_BYTES: usize = 32 << 20;
/// Records waiting for a write at most; appends block beyond (the ingest
/// admission limit bounds them first).
const QUEUE: usize = 1024;
/// How long the writer waits for a record before it deletes merged ones
/// anyway.
const IDLE: Duration = Duration::from_secs(1);

/// One record waiting to be written, and where to say it was.
struct Append {
    record: Vec<u8>,
    done: cb::Sender<Result<u64, String>>,
}

/// The log's writer thread and the way to it.
pub(crate) struct RequestLog {
    /// `None` once closed: appends are refused.
    tx: Mutex<Option<cb::Sender<Append>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    merged: Merged,
}

/// The records merged by committed flushes and deleted from the file since:
/// what the writer and the flush pass each other.
#[derive(Clone, Default)]
pub struct Merged(Arc<MergedLists>);

#[derive(Default)]
struct MergedLists {
    /// Merged by a durable commit (its marker written): to delete from the
    /// file. At most what was appended and not yet deleted.
    to_delete: Mutex<Vec<u64>>,
    /// Deleted from the file: their markers are deleted by the next flush.
    deleted: Mutex<Vec<u64>>,
}

impl Merged {
    /// The commit holding record `seq`'s data (and its marker) is durable.
    pub(crate) fn record(&self, seq: u64) {
        self.0.to_delete.lock().push(seq);
    }
}

/// The key of the marker of record `seq` (zero-padded, so keys sort as
/// numbers do).
fn marker_key(seq: u64) -> String {
    format!("{MERGED_PREFIX}{seq:020}")
}

/// The sequence number in a marker's key, if it is one.
fn marker_seq(key: &str) -> Option<u64> {
    numbered(key, MERGED_PREFIX)
}

/// The number after `prefix` in `key`, if it is `prefix` and a number.
fn numbered(key: &str, prefix: &str) -> Option<u64> {
    key.strip_prefix(prefix)?.parse().ok()
}

/// The marker write of record `seq`, for the commit that merges it.
pub(crate) fn marker(seq: u64) -> Cursor {
    Cursor::set(marker_key(seq), Vec::new())
}

/// Encodes one request's samples and states as a log record.
pub(crate) fn encode(samples: &[SampleItem], increments: &[Increment]) -> Vec<u8> {
    let mut record = Vec::new();
    strata_store::encode_request_record(samples, increments, &mut record);
    record
}

/// What one record in the log holds, or why it cannot be read.
pub(crate) fn decode(bytes: &[u8]) -> Result<RequestRecord, strata_store::DecodeError> {
    strata_store::decode_request_record(bytes)
}

/// The ticket that deletes the record an older build kept in the store
/// under `key`, in the commit that merges it.
pub(crate) fn deletion(key: String) -> Ticket {
    Ticket::Cursors {
        cursors: vec![Cursor::delete(key)],
        done: None,
    }
}

/// A record acknowledged before the last stop and not merged.
pub(crate) enum Pending {
    /// Kept in the store by an older build, under this key.
    InStore { key: String, bytes: Vec<u8> },
    /// In the log's file, under this number.
    Logged { seq: u64, bytes: Vec<u8> },
}

/// What [`recover`] found.
pub(crate) struct Recovered {
    file: RequestLogFile,
    /// To hand to the aggregator again, oldest first.
    pub(crate) pending: Vec<Pending>,
    /// Markers whose records are gone: deleted by the first flush.
    stale_markers: Vec<u64>,
    /// The lowest number a new record may get.
    at_least: u64,
}

/// Opens the log's file in `dir` and sorts out what the last run left:
/// records whose marker is in the store (merged, but not yet deleted from
/// the file) are deleted now; the rest, and the records an older build kept
/// in the store, are pending.
pub(crate) fn recover(store: &dyn Store, dir: &Path) -> Result<Recovered, StoreError> {
    let file = RequestLogFile::open(dir)?;
    let markers: BTreeSet<u64> = store
        .cursors(MERGED_PREFIX)?
        .iter()
        .filter_map(|(key, _)| marker_seq(key))
        .collect();
    let (merged, unmerged): (Vec<_>, Vec<_>) = file
        .records()?
        .into_iter()
        .partition(|(seq, _)| markers.contains(seq));
    if !merged.is_empty() {
        let seqs: Vec<u64> = merged.iter().map(|(seq, _)| *seq).collect();
        file.write(&[], &seqs, 0)?;
        tracing::info!(
            records = seqs.len(),
            "request-log records merged before the last stop deleted"
        );
    }
    let in_store = store
        .cursors(LOG_PREFIX)?
        .into_iter()
        .filter(|(key, _)| numbered(key, LOG_PREFIX).is_some())
        .map(|(key, bytes)| Pending::InStore { key, bytes });
    let logged = unmerged
        .into_iter()
        .map(|(seq, bytes)| Pending::Logged { seq, bytes });
    Ok(Recovered {
        file,
        pending: in_store.chain(logged).collect(),
        at_least: markers.last().map_or(1, |seq| seq + 1),
        // Every record with a marker is deleted by now.
        stale_markers: markers.into_iter().collect(),
    })
}

impl RequestLog {
    /// Starts the writer on what [`recover`] opened and found.
    pub(crate) fn start(ctx: Arc<Context>, recovered: Recovered) -> std::io::Result<RequestLog> {
        let Recovered {
            file,
            stale_markers,
            at_least,
            ..
        } = recovered;
        let merged = Merged::default();
        *merged.0.deleted.lock() = stale_markers;
        let (tx, rx) = cb::bounded(QUEUE);
        let thread = {
            let merged = merged.clone();
            std::thread::Builder::new()
                .name("request-log".into())
                .spawn(move || write_loop(&ctx, &file, &rx, &merged, at_least))?
        };
        Ok(RequestLog {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            merged,
        })
    }

    /// Writes `record` durably (with whatever else is waiting) and returns
    /// its number. Blocks until it is durable; an error means nothing of it
    /// is.
    pub(crate) fn append(&self, record: Vec<u8>) -> Result<u64, String> {
        let Some(tx) = self.tx.lock().clone() else {
            return Err("node stopping".to_owned());
        };
        let (done, result) = cb::bounded(1);
        tx.send(Append { record, done })
            .map_err(|_| "request log stopped".to_owned())?;
        result
            .recv()
            .map_err(|_| "request log stopped".to_owned())?
    }

    /// The ticket of record `seq`: its marker is written by the commit that
    /// merges it, and the record deleted from the file after.
    pub(crate) fn ticket(&self, seq: u64) -> Ticket {
        Ticket::Logged {
            seq,
            merged: self.merged.clone(),
        }
    }

    /// The ticket that deletes the markers of records deleted from the file
    /// since the last call, for the next flush; `None` if there are none.
    pub(crate) fn unmark(&self) -> Option<Ticket> {
        let seqs = std::mem::take(&mut *self.merged.0.deleted.lock());
        (!seqs.is_empty()).then(|| Ticket::Cursors {
            cursors: seqs
                .into_iter()
                .map(|s| Cursor::delete(marker_key(s)))
                .collect(),
            done: None,
        })
    }

    /// Stops taking records and waits for the writer to finish the ones it
    /// has.
    pub(crate) fn close(&self) {
        self.tx.lock().take();
        if let Some(thread) = self.thread.lock().take()
            && thread.join().is_err()
        {
            tracing::error!("request log writer panicked");
        }
    }
}

/// The writer: takes what is waiting (records to append, merged records to
/// delete), writes it in one transaction, answers.
fn write_loop(
    ctx: &Context,
    file: &RequestLogFile,
    rx: &cb::Receiver<Append>,
    merged: &Merged,
    at_least: u64,
) {
    loop {
        let mut group = match rx.recv_timeout(IDLE) {
            Ok(first) => vec![first],
            Err(cb::RecvTimeoutError::Timeout) => Vec::new(),
            Err(cb::RecvTimeoutError::Disconnected) => return,
        };
        let mut bytes = group.first().map_or(0, |a| a.record.len());
        while !group.is_empty() && group.len() < GROUP_RECORDS && bytes < GROUP_BYTES {
            match rx.try_recv() {
                Ok(more) => {
                    bytes += more.record.len();
                    group.push(more);
                }
                Err(_) => break,
            }
        }
        let delete = std::mem::take(&mut *merged.0.to_delete.lock());
        if group.is_empty() && delete.is_empty() {
            continue;
        }
        let records: Vec<Vec<u8>> = group
            .iter_mut()
            .map(|a| std::mem::take(&mut a.record))
            .collect();
        let started = Instant::now();
        let result = file.write(&records, &delete, at_least);
        if !records.is_empty() {
            let took = started.elapsed();
            ctx.stats.latency.request_log_commit.observe(took);
        }
        match &result {
            Ok(_) => merged.0.deleted.lock().extend(delete),
            Err(e) => {
                Stats::add(&ctx.stats.store_errors_total, 1);
                tracing::error!(error = %e, records = records.len(), "request log write failed; the requests are refused");
                // Deleted by a later write, or at the next start.
                merged.0.to_delete.lock().extend(delete);
            }
        }
        let seqs = result
            .as_ref()
            .map_err(|e| format!("request log write failed: {e}"));
        for (i, append) in group.into_iter().enumerate() {
            let answer = match &seqs {
                Ok(seqs) => seqs
                    .get(i)
                    .copied()
                    .ok_or_else(|| "request log: no number".to_owned()),
                Err(e) => Err(e.clone()),
            };
            let _ = append.done.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use strata_store::{Commit, MemoryStore, StoreOptions};

    use super::*;

    fn write(store: &dyn Store, cursors: &[Cursor]) {
        let commit = Commit {
            increments: &[],
            progress: &[],
            cursors,
            spool_watermark_ms: None,
            now_ms: 0,
        };
        store.commit(commit).unwrap();
    }

    /// The cursor writes of a ticket, as a flush commit applies them.
    fn cursors(ticket: &Ticket) -> Vec<Cursor> {
        match ticket {
            Ticket::Logged { seq, .. } => vec![marker(*seq)],
            Ticket::Cursors { cursors, .. } => cursors.clone(),
            _ => panic!("not a request-log ticket"),
        }
    }

    fn markers(store: &dyn Store) -> Vec<u64> {
        let found = store.cursors(MERGED_PREFIX).unwrap();
        found
            .iter()
            .filter_map(|(key, _)| marker_seq(key))
            .collect()
    }

    #[test]
    fn records_are_durable_merged_once_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(StoreOptions::default()));
        let ctx = Arc::new(Context::new("n", store.clone()));
        // A record an older build kept in the store is pending too.
        write(
            &*store,
            &[Cursor::set(
                format!("{LOG_PREFIX}{:020}", 41),
                encode(&[], &[]),
            )],
        );
        let recovered = recover(&*store, dir.path()).unwrap();
        assert!(
            matches!(&recovered.pending[..], [Pending::InStore { key, .. }] if key.ends_with("41"))
        );
        let log = RequestLog::start(ctx.clone(), recovered).unwrap();
        let seqs: Vec<u64> = std::thread::scope(|s| {
            let writers: Vec<_> = (0..8u8)
                .map(|w| {
                    let log = &log;
                    s.spawn(move || {
                        (0..25)
                            .map(|_| log.append(vec![w]).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            writers
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=200).collect::<Vec<_>>());

        // A commit merges record 1 (its marker), then the file loses it, then
        // the next flush's ticket deletes the marker.
        let ticket = log.ticket(1);
        write(&*store, &cursors(&ticket));
        assert_eq!(markers(&*store), [1]);
        let Ticket::Logged { merged, .. } = ticket else {
            unreachable!()
        };
        merged.record(1);
        let deadline = Instant::now() + Duration::from_secs(10);
        let unmark = loop {
            if let Some(t) = log.unmark() {
                break t;
            }
            assert!(
                Instant::now() < deadline,
                "record 1 never deleted from the file"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        write(&*store, &cursors(&unmark));
        assert!(markers(&*store).is_empty());
        log.close();
        assert!(log.append(vec![1]).is_err(), "a closed log takes nothing");

        // Record 2 merged, the node killed before the file lost it: at start
        // it is deleted, not replayed, and its marker goes with the first flush.
        write(&*store, &[marker(2)]);
        let recovered = recover(&*store, dir.path()).unwrap();
        let logged: Vec<u64> = recovered
            .pending
            .iter()
            .filter_map(|p| match p {
                Pending::Logged { seq, bytes } => {
                    assert_eq!(bytes.len(), 1);
                    Some(*seq)
                }
                Pending::InStore { .. } => None,
            })
            .collect();
        assert_eq!(logged, (3..=200).collect::<Vec<_>>());
        assert_eq!(recovered.pending.len(), 199);
        let log = RequestLog::start(ctx, recovered).unwrap();
        assert_eq!(log.append(vec![9]).unwrap(), 201);
        let unmark = log.unmark().expect("the stale marker's deletion");
        write(&*store, &cursors(&unmark));
        assert!(markers(&*store).is_empty());
        log.close();
    }

    #[test]
    fn new_numbers_stay_above_every_marker() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(StoreOptions::default()));
        // A marker whose record's file is gone (an operator deleted it).
        write(&*store, &[marker(77)]);
        let recovered = recover(&*store, dir.path()).unwrap();
        assert!(recovered.pending.is_empty());
        let log = RequestLog::start(Arc::new(Context::new("n", store)), recovered).unwrap();
        assert_eq!(log.append(vec![1]).unwrap(), 78);
        log.close();
    }

    #[test]
    fn marker_keys_sort_as_their_numbers_and_read_back() {
        let keys: Vec<String> = [9, 10, 1_000_000_000_000].map(marker_key).into();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        assert_eq!(marker_seq(&keys[1]), Some(10));
        assert_eq!(marker_seq("otlp/x"), None);
        assert_eq!(marker_seq("request_merged/x"), None);
    }
}
