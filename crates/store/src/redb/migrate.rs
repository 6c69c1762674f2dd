//! Upgrading a file of an older format, inside the transaction that opens it.
//!
//! Format 1 (before hour and day rollups) gets its hour and day tables built
//! from its minutes. Formats 1 and 2 (before series expiry) get every series
//! stamped as last updated at the time of the upgrade, so none expires
//! earlier than `series_ttl` after it; their alarm tables start empty.

use strata_model::State;

use super::schema::{BUCKETS, FORMAT_VERSION, SERIES, SERIES_SEEN, bucket_table};
use super::table::{WriteTable, WriteTxn};
use crate::{DecodeError, Resolution, SeriesId, StoreError, wall_clock_ms};

/// Upgrades a file of format `from` (1, 2 or 3) to [`FORMAT_VERSION`]; the
/// caller records the new version in the same transaction. A format 3 file
/// has every minute folded into its hour and day: no series has an open
/// minute, and nothing changes but the version.
pub(super) fn upgrade(txn: &WriteTxn, from: u64) -> Result<(), StoreError> {
    if from == 3 {
        tracing::info!(
            from,
            to = FORMAT_VERSION,
            "store upgraded: open minutes recorded from now on"
        );
        return Ok(());
    }
    if from == 1 {
        let (written, refused) = build_rollups(txn)?;
        tracing::info!(
            rollup_buckets = written,
            refused_minutes = refused,
            "store upgrade from format 1: hour and day rollups built from minutes"
        );
    }
    let stamped = stamp_every_series(txn, wall_clock_ms())?;
    tracing::info!(
        from,
        to = FORMAT_VERSION,
        series_stamped = stamped,
        "store upgraded: every series counts as updated now for series expiry"
    );
    Ok(())
}

/// Stamps every series as last updated at `now_ms`; returns how many.
fn stamp_every_series(txn: &WriteTxn, now_ms: i64) -> Result<u64, StoreError> {
    let series = txn.table(SERIES)?;
    let mut seen = txn.table(SERIES_SEEN)?;
    let mut stamped = 0u64;
    for entry in series.iter()? {
        let (id, _) = entry?;
        seen.insert(id.value(), now_ms)?;
        stamped += 1;
    }
    Ok(stamped)
}

/// A rollup bucket being folded from its minutes: its key and state.
type Pending = Option<((SeriesId, i64), State)>;

/// Builds the hour and day tables from the minute table, for a file written
/// before rollups existed. Minutes sort by series then time, so each rollup
/// bucket is folded from a contiguous run and written once. Returns how many
/// rollup buckets were written, and how many minute merges were refused (a
/// minute of another precision than the rest of its hour or day: left out of
/// that rollup, as a commit would have refused it).
fn build_rollups(txn: &WriteTxn) -> Result<(u64, u64), StoreError> {
    const ROLLUPS: [Resolution; 2] = [Resolution::Hour, Resolution::Day];
    let minutes = txn.table(BUCKETS)?;
    let mut tables = [
        txn.table(bucket_table(ROLLUPS[0]))?,
        txn.table(bucket_table(ROLLUPS[1]))?,
    ];
    let mut pending: [Pending; 2] = [None, None];
    let (mut written, mut refused) = (0u64, 0u64);
    let mut buf = Vec::new();
    let mut flush = |table: &mut WriteTable<'_, (u64, i64), &'static [u8]>,
                     (key, state): ((SeriesId, i64), State)|
     -> Result<(), StoreError> {
        buf.clear();
        state.encode(&mut buf);
        table.insert(key, buf.as_slice())?;
        written += 1;
        Ok(())
    };

    for entry in minutes.iter()? {
        let (key, value) = entry?;
        let (id, minute) = key.value();
        let state = State::decode(value.value()).map_err(|e| {
            minutes.corrupt(
                format_args!("series {id} bucket {minute}"),
                DecodeError::State(e),
            )
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
                        flush(table, done)?;
                    }
                }
            }
        }
    }
    for (table, slot) in tables.iter_mut().zip(&mut pending) {
        if let Some(done) = slot.take() {
            flush(table, done)?;
        }
    }
    Ok((written, refused))
}
