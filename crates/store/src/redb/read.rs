//! The reading primitives of [`Redb`](super::Redb): each one read
//! transaction, a committed snapshot that never waits for the writer.

use std::ops::{Bound, Range};

use redb::Database;
use strata_model::State;

use super::schema::{
    ALARM_HISTORY, ALARM_OUTBOX, ALARM_STATES, EVENTS, INPUT_CURSORS, SPOOL, bucket_table,
};
use super::table::{ReadTxn, Table};
use crate::backend::{BucketKey, Stored};
use crate::codec::decode_outbox_entry;
use crate::codec::{decode_alarm_key, decode_alarm_record, decode_alarm_state, decode_event};
use crate::{
    AlarmRecord, AlarmState, DecodeError, Event, EventQuery, OutboxEntry, Resolution, SeriesId,
    StoreError,
};

/// A bucket state as stored: decoded, or why not.
pub(super) fn decode_state(bytes: &[u8]) -> Result<State, DecodeError> {
    State::decode(bytes).map_err(DecodeError::State)
}

/// The stored state of one bucket, looked up in its resolution's table.
pub(super) fn load_bucket<T: redb::ReadableTable<(u64, i64), &'static [u8]>>(
    table: &Table<(u64, i64), &'static [u8], T>,
    key: BucketKey,
) -> Result<Stored, StoreError> {
    Ok(match table.get((key.series, key.bucket_ms))? {
        None => Stored::Absent,
        Some(value) => match decode_state(value.value()) {
            Ok(state) => Stored::State(state),
            Err(e) => Stored::Unreadable(e),
        },
    })
}

pub(super) fn load_buckets(db: &Database, keys: &[BucketKey]) -> Result<Vec<Stored>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let txn = ReadTxn::begin(db, "commit: load")?;
    let tables = [
        txn.table(bucket_table(Resolution::Minute))?,
        txn.table(bucket_table(Resolution::Hour))?,
        txn.table(bucket_table(Resolution::Day))?,
    ];
    keys.iter()
        .map(|&key| load_bucket(&tables[key.resolution.index()], key))
        .collect()
}

#[allow(clippy::type_complexity)]
pub(super) fn read_buckets(
    db: &Database,
    resolution: Resolution,
    series: SeriesId,
    range: Range<i64>,
) -> Result<Vec<(i64, Result<State, DecodeError>)>, StoreError> {
    let txn = ReadTxn::begin(db, "read")?;
    let table = txn.table(bucket_table(resolution))?;
    let mut out = Vec::new();
    for entry in table.range((series, range.start)..(series, range.end))? {
        let (key, value) = entry?;
        out.push((key.value().1, decode_state(value.value())));
    }
    Ok(out)
}

pub(super) fn spool_read(
    db: &Database,
    after_seq: u64,
    max_batches: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let txn = ReadTxn::begin(db, "spool read")?;
    let spool = txn.table(SPOOL)?;
    let mut out = Vec::new();
    for entry in spool
        .range::<u64>((Bound::Excluded(after_seq), Bound::Unbounded))?
        .take(max_batches)
    {
        let (seq, bytes) = entry?;
        out.push((seq.value(), bytes.value().to_vec()));
    }
    Ok(out)
}

/// The events `query` selects, newest first: a reverse scan of its time
/// range, each event decoded and kept if its kind is one asked for.
pub(super) fn events(db: &Database, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
    let txn = ReadTxn::begin(db, "events")?;
    let table = txn.table(EVENTS)?;
    let end = match query.to_ms {
        // Ids start at 1: `(to_ms, 0)` sorts before every event at `to_ms`.
        Some(to_ms) => Bound::Excluded((to_ms, 0u64)),
        None => Bound::Unbounded,
    };
    let mut out = Vec::new();
    for entry in table
        .range::<(i64, u64)>((Bound::Included((query.from_ms, 0u64)), end))?
        .rev()
    {
        if out.len() >= query.limit {
            break;
        }
        let (key, value) = entry?;
        let (ts_ms, id) = key.value();
        let event = decode_event(ts_ms, value.value())
            .map_err(|e| table.corrupt(format_args!("event {id} at {ts_ms}"), e))?;
        if query.matches(event.ts_ms, event.kind) {
            out.push(event);
        }
    }
    Ok(out)
}

pub(super) fn alarm_states(db: &Database) -> Result<Vec<AlarmState>, StoreError> {
    let txn = ReadTxn::begin(db, "alarm states")?;
    let table = txn.table(ALARM_STATES)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        let key = decode_alarm_key(key.value()).map_err(|e| table.corrupt("key", e))?;
        let rule = key.rule.clone();
        let state = decode_alarm_state(key, value.value())
            .map_err(|e| table.corrupt(format_args!("rule {rule}"), e))?;
        out.push(state);
    }
    Ok(out)
}

pub(super) fn alarm_history(db: &Database, limit: usize) -> Result<Vec<AlarmRecord>, StoreError> {
    let txn = ReadTxn::begin(db, "alarm history")?;
    let table = txn.table(ALARM_HISTORY)?;
    let mut out = Vec::new();
    for entry in table.iter()?.rev().take(limit) {
        let (key, value) = entry?;
        let (ts_ms, id) = key.value();
        let record = decode_alarm_record(ts_ms, value.value())
            .map_err(|e| table.corrupt(format_args!("record {id} at {ts_ms}"), e))?;
        out.push(record);
    }
    Ok(out)
}

pub(super) fn outbox(db: &Database, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
    let txn = ReadTxn::begin(db, "outbox")?;
    let table = txn.table(ALARM_OUTBOX)?;
    let mut out = Vec::new();
    for entry in table.iter()?.take(limit) {
        let (id, value) = entry?;
        let id = id.value();
        let entry = decode_outbox_entry(id, value.value())
            .map_err(|e| table.corrupt(format_args!("entry {id}"), e))?;
        out.push(entry);
    }
    Ok(out)
}

pub(super) fn outbox_len(db: &Database) -> Result<u64, StoreError> {
    let txn = ReadTxn::begin(db, "outbox")?;
    txn.table(ALARM_OUTBOX)?.len()
}

/// The input cursors whose key starts with `prefix`, ascending by key: one
/// scan from `prefix` to the first key without it.
pub(super) fn cursors(db: &Database, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let txn = ReadTxn::begin(db, "input cursors")?;
    let table = txn.table(INPUT_CURSORS)?;
    let mut out = Vec::new();
    for entry in table.range::<&str>(prefix..)? {
        let (key, value) = entry?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        out.push((key.to_owned(), value.value().to_vec()));
    }
    Ok(out)
}
