//! The writing primitives of [`Redb`](super::Redb): each one write
//! transaction, durable when it returns.

use redb::Database;

use super::schema::{
    ALARM_HISTORY, ALARM_OUTBOX, ALARM_STATES, BUCKETS, BUCKETS_DAY, BUCKETS_HOUR, EVENTS,
    INPUT_CURSORS, META, META_ALARM_HISTORY_LAST_ID, META_EVENT_LAST_ID, META_OUTBOX_LAST_ID,
    META_SERIES_NEXT_ID, META_SPOOL_BYTES, META_SPOOL_DROPPED, META_SPOOL_LAST_SEQ, METRICS,
    QUARANTINE, SERIES, SERIES_OPEN, SERIES_SEEN, SOURCES, SPOOL, bucket_table,
};
use super::table::WriteTxn;
use crate::backend::{BucketKey, Buckets, Retention, SpoolWrite, Transaction};
use crate::codec::{
    decode_event, decode_outbox_entry, encode_alarm_key, encode_alarm_record, encode_alarm_state,
    encode_event, encode_outbox_entry, encode_series_key,
};
use crate::{Event, EventCutoffs, EventKind, OutboxEntry, Resolution, SeriesId, StoreError};

/// Applies `t` in one transaction; returns the outbox ids assigned to its
/// notifications. Only the tables `t` changes are opened.
pub(super) fn write(db: &Database, t: &Transaction<'_>) -> Result<Vec<u64>, StoreError> {
    let mut txn = WriteTxn::begin(db, operation(t))?;
    if t.lazy {
        txn.lazy()?;
    }
    if !t.quarantine.is_empty() || t.buckets.iter().any(|b| !b.is_empty()) {
        write_buckets(&txn, t.quarantine, &t.buckets)?;
    }
    write_series(&txn, t)?;
    if !t.progress.is_empty() {
        let mut sources = txn.table(SOURCES)?;
        for p in t.progress {
            let value = (p.epoch, p.seq, p.watermark_ms, p.last_seen_ms);
            sources.insert(p.source_id.as_str(), value)?;
        }
    }
    if !t.cursors.is_empty() {
        let mut cursors = txn.table(INPUT_CURSORS)?;
        for cursor in t.cursors {
            let key = cursor.key.as_str();
            match &cursor.value {
                Some(value) => cursors.insert(key, value.as_slice())?,
                None => {
                    cursors.remove(key)?;
                }
            }
        }
    }
    if let Some(spool) = &t.spool {
        write_spool(&txn, spool)?;
    }
    if !t.events.is_empty() {
        append_events(&txn, t.events)?;
    }
    let ids = write_alarms(&txn, t)?;
    txn.commit()?;
    Ok(ids)
}

/// What a transaction is for, as its errors name it.
fn operation(t: &Transaction<'_>) -> &'static str {
    let appends = t.spool.is_some_and(|s| s.append.is_some());
    if appends
        || !t.progress.is_empty()
        || !t.cursors.is_empty()
        || t.buckets.iter().any(|b| !b.is_empty())
    {
        "commit"
    } else if !t.quarantine.is_empty() {
        "quarantine"
    } else if t.spool.is_some() {
        "spool ack"
    } else if !(t.alarm_states.is_empty()
        && t.alarm_clear.is_empty()
        && t.alarm_history.is_empty()
        && t.notifications.is_empty())
    {
        "alarms"
    } else {
        "append events"
    }
}

/// Moves the `quarantine` buckets' bytes to `quarantine` (replacing an
/// earlier entry for the same bucket), then writes `buckets` whole.
fn write_buckets(
    txn: &WriteTxn,
    quarantine: &[BucketKey],
    buckets: &[Buckets; 3],
) -> Result<(), StoreError> {
    let mut tables = [
        txn.table(BUCKETS)?,
        txn.table(BUCKETS_HOUR)?,
        txn.table(BUCKETS_DAY)?,
    ];
    if !quarantine.is_empty() {
        let mut aside = txn.table(QUARANTINE)?;
        for key in quarantine {
            let def = bucket_table(key.resolution);
            let table = &mut tables[key.resolution.index()];
            if let Some(bytes) = table.remove((key.series, key.bucket_ms))? {
                let name: &str = redb::TableHandle::name(&def);
                aside.insert((name, key.series, key.bucket_ms), bytes.value())?;
            }
        }
    }
    let mut buf = Vec::new();
    for (r, table) in Resolution::ALL.into_iter().zip(&mut tables) {
        for (&key, state) in &buckets[r.index()] {
            buf.clear();
            state.encode(&mut buf);
            table.insert(key, buf.as_slice())?;
        }
    }
    Ok(())
}

/// New series (with their keys), new metrics (with their kinds) and
/// last-update stamps.
fn write_series(txn: &WriteTxn, t: &Transaction<'_>) -> Result<(), StoreError> {
    if !t.new_series.is_empty() {
        let mut series = txn.table(SERIES)?;
        let mut buf = Vec::new();
        for (id, key) in t.new_series {
            buf.clear();
            encode_series_key(key, &mut buf);
            series.insert(*id, buf.as_slice())?;
        }
    }
    if !t.last_updates.is_empty() {
        let mut seen = txn.table(SERIES_SEEN)?;
        for &(id, at) in t.last_updates {
            seen.insert(id, at)?;
        }
    }
    if !t.open_minutes.is_empty() {
        let mut open = txn.table(SERIES_OPEN)?;
        for &(id, minute_ms) in t.open_minutes {
            match minute_ms {
                Some(minute_ms) => open.insert(id, minute_ms)?,
                None => {
                    open.remove(id)?;
                }
            }
        }
    }
    if !t.new_metrics.is_empty() {
        let mut metrics = txn.table(METRICS)?;
        for (name, kind) in t.new_metrics {
            metrics.insert(name.as_str(), kind.as_str())?;
        }
    }
    Ok(())
}

fn write_spool(txn: &WriteTxn, spool: &SpoolWrite<'_>) -> Result<(), StoreError> {
    {
        let mut table = txn.table(SPOOL)?;
        if let Some(through) = spool.delete_through {
            table.remove_range(..=through)?;
        }
        if let Some((seq, bytes)) = spool.append {
            table.insert(seq, bytes)?;
        }
    }
    let mut meta = txn.table(META)?;
    let c = spool.counters;
    meta.insert(META_SPOOL_LAST_SEQ, c.last_seq)?;
    meta.insert(META_SPOOL_BYTES, c.bytes)?;
    meta.insert(META_SPOOL_DROPPED, c.dropped_batches)?;
    Ok(())
}

/// Appends `events` with ids after every id used before, and persists the
/// last one.
fn append_events(txn: &WriteTxn, events: &[Event]) -> Result<(), StoreError> {
    let mut meta = txn.table(META)?;
    let mut table = txn.table(EVENTS)?;
    // The newest event's id is at most the counter; should the counter have
    // fallen behind, never reuse an id at or below one already there.
    let newest = table.last()?.map_or(0, |(key, _)| key.value().1);
    let counter = meta.get(META_EVENT_LAST_ID)?.map_or(0, |v| v.value());
    let mut last = counter.max(newest);
    let mut buf = Vec::new();
    for event in events {
        last += 1;
        buf.clear();
        encode_event(event, &mut buf);
        table.insert((event.ts_ms, last), buf.as_slice())?;
    }
    meta.insert(META_EVENT_LAST_ID, last)?;
    Ok(())
}

/// Alarm states, history records and queued notifications; returns the
/// notifications' outbox ids.
fn write_alarms(txn: &WriteTxn, t: &Transaction<'_>) -> Result<Vec<u64>, StoreError> {
    if !t.alarm_states.is_empty() || !t.alarm_clear.is_empty() {
        let mut states = txn.table(ALARM_STATES)?;
        let (mut key_buf, mut buf) = (Vec::new(), Vec::new());
        for state in t.alarm_states {
            key_buf.clear();
            encode_alarm_key(&state.key, &mut key_buf);
            buf.clear();
            encode_alarm_state(state, &mut buf);
            states.insert(key_buf.as_slice(), buf.as_slice())?;
        }
        for key in t.alarm_clear {
            key_buf.clear();
            encode_alarm_key(key, &mut key_buf);
            states.remove(key_buf.as_slice())?;
        }
    }
    if !t.alarm_history.is_empty() {
        let mut meta = txn.table(META)?;
        let mut history = txn.table(ALARM_HISTORY)?;
        let mut last = meta
            .get(META_ALARM_HISTORY_LAST_ID)?
            .map_or(0, |v| v.value());
        let mut buf = Vec::new();
        for record in t.alarm_history {
            last += 1;
            buf.clear();
            encode_alarm_record(record, &mut buf);
            history.insert((record.ts_ms, last), buf.as_slice())?;
        }
        meta.insert(META_ALARM_HISTORY_LAST_ID, last)?;
    }
    let mut ids = Vec::with_capacity(t.notifications.len());
    if !t.notifications.is_empty() {
        let mut meta = txn.table(META)?;
        let mut outbox = txn.table(ALARM_OUTBOX)?;
        let newest = outbox.last()?.map_or(0, |(id, _)| id.value());
        let counter = meta.get(META_OUTBOX_LAST_ID)?.map_or(0, |v| v.value());
        let mut last = counter.max(newest);
        let mut buf = Vec::new();
        for notification in t.notifications {
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
            outbox.insert(last, buf.as_slice())?;
            ids.push(last);
        }
        meta.insert(META_OUTBOX_LAST_ID, last)?;
    }
    Ok(ids)
}

pub(super) fn delete_before(
    db: &Database,
    what: Retention,
    before_ms: i64,
) -> Result<u64, StoreError> {
    let (txn, deleted) = match what {
        Retention::Buckets(resolution) => {
            let txn = WriteTxn::begin(db, "retention")?;
            // Bucket keys sort by series first: one range per series.
            let ids = {
                let series = txn.table(SERIES)?;
                let ids: Result<Vec<SeriesId>, _> = series
                    .iter()?
                    .map(|entry| entry.map(|(id, _)| id.value()))
                    .collect();
                ids?
            };
            let mut table = txn.table(bucket_table(resolution))?;
            let mut deleted = 0;
            for id in ids {
                deleted += table.remove_range((id, i64::MIN)..(id, before_ms))?;
            }
            drop(table);
            (txn, deleted)
        }
        Retention::AlarmHistory => {
            let txn = WriteTxn::begin(db, "alarm history retention")?;
            let deleted = txn
                .table(ALARM_HISTORY)?
                .remove_range(..(before_ms, 0u64))?;
            (txn, deleted)
        }
    };
    txn.finish(deleted > 0)?;
    Ok(deleted)
}

/// Deletes the events before their kind's cutoff: one range when every
/// kind has the same cutoff, otherwise a scan of the events before the
/// latest cutoff, each decoded for its kind (one that does not decode has
/// the default cutoff, so it never outlives the log's retention).
pub(super) fn delete_events(db: &Database, cutoffs: &EventCutoffs) -> Result<u64, StoreError> {
    let txn = WriteTxn::begin(db, "event retention")?;
    let deleted = {
        let mut table = txn.table(EVENTS)?;
        if cutoffs.is_uniform() {
            table.remove_range(..(cutoffs.default_before_ms, 0u64))?
        } else {
            let mut doomed = Vec::new();
            for entry in table.range::<(i64, u64)>(..(cutoffs.latest_ms(), 0u64))? {
                let (key, value) = entry?;
                let (ts_ms, id) = key.value();
                let kind =
                    decode_event(ts_ms, value.value()).map_or(EventKind::Unknown, |e| e.kind);
                if cutoffs.deletes(ts_ms, kind) {
                    doomed.push((ts_ms, id));
                }
            }
            for &key in &doomed {
                table.remove(key)?;
            }
            doomed.len() as u64
        }
    };
    txn.finish(deleted > 0)?;
    Ok(deleted)
}

pub(super) fn remove_series(
    db: &Database,
    series: &[SeriesId],
    metrics: &[String],
    next_series_id: SeriesId,
) -> Result<(), StoreError> {
    let txn = WriteTxn::begin(db, "series expiry")?;
    {
        let mut keys = txn.table(SERIES)?;
        let mut seen = txn.table(SERIES_SEEN)?;
        let mut open = txn.table(SERIES_OPEN)?;
        for &id in series {
            keys.remove(id)?;
            seen.remove(id)?;
            open.remove(id)?;
        }
    }
    for r in Resolution::ALL {
        let mut buckets = txn.table(bucket_table(r))?;
        for &id in series {
            buckets.remove_range((id, i64::MIN)..=(id, i64::MAX))?;
        }
    }
    {
        let mut table = txn.table(METRICS)?;
        for name in metrics {
            table.remove(name.as_str())?;
        }
        txn.table(META)?
            .insert(META_SERIES_NEXT_ID, next_series_id)?;
    }
    txn.commit()
}

pub(super) fn clear_quarantine(db: &Database) -> Result<u64, StoreError> {
    let txn = WriteTxn::begin(db, "clear quarantine")?;
    let count = txn.table(QUARANTINE)?.len()?;
    txn.delete_table(QUARANTINE)?;
    txn.finish(count > 0)?;
    Ok(count)
}

pub(super) fn outbox_retry(
    db: &Database,
    id: u64,
    attempts: u32,
    next_attempt_ms: i64,
    last_error: &str,
) -> Result<bool, StoreError> {
    let txn = WriteTxn::begin(db, "outbox retry")?;
    let found = {
        let mut table = txn.table(ALARM_OUTBOX)?;
        let stored = match table.get(id)? {
            None => None,
            Some(value) => Some(
                decode_outbox_entry(id, value.value())
                    .map_err(|e| table.corrupt(format_args!("entry {id}"), e))?,
            ),
        };
        match stored {
            None => false,
            Some(mut entry) => {
                entry.attempts = attempts;
                entry.next_attempt_ms = next_attempt_ms;
                entry.last_error = last_error.to_owned();
                let mut buf = Vec::new();
                encode_outbox_entry(&entry, &mut buf);
                table.insert(id, buf.as_slice())?;
                true
            }
        }
    };
    txn.finish(found)?;
    Ok(found)
}

pub(super) fn outbox_delete(db: &Database, id: u64) -> Result<bool, StoreError> {
    let txn = WriteTxn::begin(db, "outbox delete")?;
    let found = txn.table(ALARM_OUTBOX)?.remove(id)?.is_some();
    txn.finish(found)?;
    Ok(found)
}
