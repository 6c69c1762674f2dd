//! The request log: a `?wait=commit` request (gRPC `wait_commit`) answered
//! once it is durable on its own, in milliseconds, instead of after the next
//! flush commit.
//!
//! An accepted request's validated samples and states are encoded
//! ([`strata_store::RequestRecord`]) and written to the store as one entry of
//! its input-cursor table, under [`LOG_PREFIX`] and a sequence number. Records
//! arriving while a write is in progress are written together by the next one
//! (group commit: one transaction, one sync, for every request waiting). Once
//! its record is durable the request is handed to the aggregator with a ticket
//! that deletes the record, and answered. The flush commit that merges the
//! request's data deletes its record **in the same transaction**, so a record
//! is either still in the log (its data not merged) or gone (merged): after a
//! crash, [`Pipeline::start`](crate::core::pipeline::Pipeline::start) hands
//! every record still in the log to the aggregator again, and nothing
//! acknowledged is lost or counted twice.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel as cb;
use parking_lot::Mutex;
use strata_model::{Increment, SampleItem};
use strata_store::{Commit, Cursor, RequestRecord, Store, StoreError};

use crate::context::Context;
use crate::core::stats::Stats;

/// Key prefix of the log's records in the store's input-cursor table.
pub const LOG_PREFIX: &str = "request_log/";

/// Most records one write holds; the rest wait for the next.
const GROUP_RECORDS: usize = 256;
/// Most bytes one write holds (a record larger than this is written alone).
const GROUP_BYTES: usize = 32 << 20;
/// Records waiting for a write at most; appends block beyond (the ingest
/// admission limit bounds them first).
const QUEUE: usize = 1024;

/// One record waiting to be written, and where to say it was.
struct Append {
    record: Vec<u8>,
    done: cb::Sender<Result<String, String>>,
}

/// The log's writer thread and the way to it.
pub(crate) struct RequestLog {
    /// `None` once closed: appends are refused.
    tx: Mutex<Option<cb::Sender<Append>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The key of the record with sequence number `seq` (zero-padded, so keys
/// sort as numbers do).
fn record_key(seq: u64) -> String {
    format!("{LOG_PREFIX}{seq:020}")
}

/// The sequence number in a record's key, if it is one.
fn record_seq(key: &str) -> Option<u64> {
    key.strip_prefix(LOG_PREFIX)?.parse().ok()
}

/// Encodes one request's samples and states as a log record.
pub(crate) fn encode(samples: &[SampleItem], increments: &[Increment]) -> Vec<u8> {
    let mut record = Vec::new();
    strata_store::encode_request_record(samples, increments, &mut record);
    record
}

/// The records still in the log (acknowledged, not yet merged), oldest first.
pub(crate) fn pending(store: &dyn Store) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    store.cursors(LOG_PREFIX)
}

/// What one record in the log holds, or why it cannot be read.
pub(crate) fn decode(bytes: &[u8]) -> Result<RequestRecord, strata_store::DecodeError> {
    strata_store::decode_request_record(bytes)
}

/// The ticket that deletes the record `key` in the commit that merges it.
pub(crate) fn deletion(key: String) -> crate::core::commit::Ticket {
    crate::core::commit::Ticket::Cursors {
        cursors: vec![Cursor::delete(key)],
        done: None,
    }
}

impl RequestLog {
    /// Starts the writer; new records are numbered after every key in
    /// `pending`.
    pub(crate) fn start(
        ctx: Arc<Context>,
        pending: &[(String, Vec<u8>)],
    ) -> std::io::Result<RequestLog> {
        let next_seq = pending
            .iter()
            .filter_map(|(key, _)| record_seq(key))
            .max()
            .map_or(1, |seq| seq + 1);
        let (tx, rx) = cb::bounded(QUEUE);
        let thread = std::thread::Builder::new()
            .name("request-log".into())
            .spawn(move || write_loop(&ctx, &rx, next_seq))?;
        Ok(RequestLog {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Writes `record` durably (with whatever else is waiting) and returns
    /// its key. Blocks until it is durable; an error means nothing of it is.
    pub(crate) fn append(&self, record: Vec<u8>) -> Result<String, String> {
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

/// The writer: takes what is waiting, writes it in one transaction, answers.
fn write_loop(ctx: &Context, rx: &cb::Receiver<Append>, mut next_seq: u64) {
    while let Ok(first) = rx.recv() {
        let mut bytes = first.record.len();
        let mut group = vec![first];
        while group.len() < GROUP_RECORDS && bytes < GROUP_BYTES {
            match rx.try_recv() {
                Ok(more) => {
                    bytes += more.record.len();
                    group.push(more);
                }
                Err(_) => break,
            }
        }
        let mut answers = Vec::with_capacity(group.len());
        let cursors: Vec<Cursor> = group
            .into_iter()
            .map(|append| {
                let key = record_key(next_seq);
                next_seq += 1;
                answers.push((key.clone(), append.done));
                Cursor::set(key, append.record)
            })
            .collect();
        let started = Instant::now();
        let result = ctx.store.commit(Commit {
            increments: &[],
            progress: &[],
            cursors: &cursors,
            spool_watermark_ms: None,
            now_ms: crate::context::now_ms(),
        });
        ctx.stats
            .latency
            .request_log_commit
            .observe(started.elapsed());
        if let Err(e) = &result {
            Stats::add(&ctx.stats.store_errors_total, 1);
            tracing::error!(error = %e, records = answers.len(), "request log write failed; the requests are refused");
        }
        for (key, done) in answers {
            let answer = match &result {
                Ok(_) => Ok(key),
                Err(e) => Err(format!("request log write failed: {e}")),
            };
            let _ = done.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use strata_store::{MemoryStore, StoreOptions};

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

    #[test]
    fn concurrent_appends_are_durable_numbered_after_the_pending_and_deleted_by_their_ticket() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(StoreOptions::default()));
        // A record left by the last run: new ones are numbered after it.
        write(&*store, &[Cursor::set(record_key(41), encode(&[], &[]))]);
        let left = pending(&*store).unwrap();
        let log = RequestLog::start(Arc::new(Context::new("n", store.clone())), &left).unwrap();
        let keys: Vec<String> = std::thread::scope(|s| {
            let writers: Vec<_> = (0..8u8)
                .map(|w| {
                    let log = &log;
                    s.spawn(move || {
                        (0..25)
                            .map(|_| log.append(vec![w]).unwrap())
                            .collect::<Vec<String>>()
                    })
                })
                .collect();
            writers
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect::<Vec<String>>()
        });
        let mut seqs: Vec<u64> = keys.iter().filter_map(|k| record_seq(k)).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (42..242).collect::<Vec<_>>());
        // Every answered record is in the store, with its bytes.
        let stored = pending(&*store).unwrap();
        assert_eq!(stored.len(), 201);
        assert!(stored.iter().skip(1).all(|(_, bytes)| bytes.len() == 1));

        // The ticket of a record deletes it in the commit it rides in.
        let crate::core::commit::Ticket::Cursors {
            cursors,
            done: None,
        } = deletion(keys[0].clone())
        else {
            panic!("a deletion ticket is a cursor write without a waiter");
        };
        write(&*store, &cursors);
        let after = pending(&*store).unwrap();
        assert_eq!(after.len(), 200);
        assert!(after.iter().all(|(key, _)| *key != keys[0]));

        log.close();
        assert!(log.append(vec![1]).is_err(), "a closed log takes nothing");
    }

    #[test]
    fn keys_sort_as_their_numbers_and_read_back() {
        let keys: Vec<String> = [9, 10, 1_000_000_000_000].map(record_key).into();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        assert_eq!(record_seq(&keys[1]), Some(10));
        assert_eq!(record_seq("otlp/x"), None);
        assert_eq!(record_seq("request_log/x"), None);
    }
}
