//! The redb file's tables, the names of its `meta` entries, and its format
//! version.
//!
//! | table          | key                       | value                                      |
//! |----------------|---------------------------|--------------------------------------------|
//! | `series`       | series id `u64`           | encoded series key (`codec.rs`)            |
//! | `series_seen`  | series id `u64`           | `i64`: last commit (`now_ms`) that merged into it |
//! | `series_open`  | series id `u64`           | `i64`: its open minute, not yet folded into its hour and day (absent: none) |
//! | `metrics`      | metric name               | kind tag ([`Kind::as_str`](strata_model::Kind::as_str)) |
//! | `buckets`      | (series id, minute ms)    | [`State::encode`](strata_model::State::encode) bytes |
//! | `buckets_hour` | (series id, hour ms)      | [`State::encode`](strata_model::State::encode) bytes |
//! | `buckets_day`  | (series id, day ms)       | [`State::encode`](strata_model::State::encode) bytes |
//! | `sources`      | source id                 | (epoch, seq, watermark ms, last seen ms)   |
//! | `input_cursors`| cursor key                | the input's bytes, as given ([`Cursor`](crate::Cursor)) |
//! | `spool`        | seq `u64`                 | encoded [`SpoolBatch`](crate::SpoolBatch) (`codec.rs`) |
//! | `events`       | (ts ms, event id `u64`)   | encoded [`Event`](crate::Event) kind and message (`codec.rs`) |
//! | `alarm_states` | encoded [`AlarmKey`](crate::AlarmKey) | encoded [`AlarmState`](crate::AlarmState) (`codec.rs`) |
//! | `alarm_history`| (ts ms, record id `u64`)  | encoded [`AlarmRecord`](crate::AlarmRecord) (`codec.rs`) |
//! | `alarm_outbox` | entry id `u64`            | encoded [`OutboxEntry`](crate::OutboxEntry) (`codec.rs`) |
//! | `meta`         | name                      | `u64`: format version, epoch, spool, event, history and outbox counters, next series id |
//! | `quarantine`   | (bucket table name, series id, bucket ms) | the unreadable bytes, as they were stored |
//!
//! Bucket keys sort by series then time, so reading one series' range is one
//! contiguous scan. The three bucket tables share that layout; a commit
//! writes a series' hour and day when it folds a minute into them or merges
//! a late increment (`plan.rs`). Ids of events, history records and outbox
//! entries come from counters persisted in `meta`, so they keep increasing
//! across restarts and after retention emptied their table.
//!
//! A table added without a change of layout (`input_cursors`) needs no new
//! format version: opening a file creates every table it lacks, and a build
//! that does not know the table leaves it alone.

use redb::TableDefinition;

use crate::Resolution;

pub(crate) type BucketTable = TableDefinition<'static, (u64, i64), &'static [u8]>;

pub(crate) const SERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("series");
/// Series id → `now_ms` of the last commit that merged into it.
pub(crate) const SERIES_SEEN: TableDefinition<u64, i64> = TableDefinition::new("series_seen");
/// Series id → its open minute (ms), the one not yet folded into its hour
/// and day; absent when every minute of the series is folded.
pub(crate) const SERIES_OPEN: TableDefinition<u64, i64> = TableDefinition::new("series_open");
pub(crate) const METRICS: TableDefinition<&str, &str> = TableDefinition::new("metrics");
/// Minute buckets (the name predates the rollups).
pub(crate) const BUCKETS: BucketTable = TableDefinition::new("buckets");
pub(crate) const BUCKETS_HOUR: BucketTable = TableDefinition::new("buckets_hour");
pub(crate) const BUCKETS_DAY: BucketTable = TableDefinition::new("buckets_day");
/// (epoch, seq, watermark_ms, last_seen_ms)
pub(crate) const SOURCES: TableDefinition<&str, (u64, u64, i64, i64)> =
    TableDefinition::new("sources");
pub(crate) const SPOOL: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");
/// Input cursor key → the input's bytes.
pub(crate) const INPUT_CURSORS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("input_cursors");
/// (ts_ms, event id) → encoded kind and message.
pub(crate) const EVENTS: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("events");
/// Encoded alarm key → encoded alarm state.
pub(crate) const ALARM_STATES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("alarm_states");
/// (ts_ms, record id) → encoded alarm record.
pub(crate) const ALARM_HISTORY: TableDefinition<(i64, u64), &[u8]> =
    TableDefinition::new("alarm_history");
/// Entry id → encoded outbox entry.
pub(crate) const ALARM_OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("alarm_outbox");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (bucket table name, series id, bucket ms) → the bytes that did not decode.
pub(crate) const QUARANTINE: TableDefinition<(&str, u64, i64), &[u8]> =
    TableDefinition::new("quarantine");

/// The bucket table of a resolution.
pub(crate) fn bucket_table(resolution: Resolution) -> BucketTable {
    match resolution {
        Resolution::Minute => BUCKETS,
        Resolution::Hour => BUCKETS_HOUR,
        Resolution::Day => BUCKETS_DAY,
    }
}

/// Layout version of this file; bumped when a table's encoding changes.
/// 2: hour and day rollup tables (a format 1 file is upgraded on open).
/// 3: `series_seen` (series expiry) and the alarm tables (format 1 and 2
/// files are upgraded on open).
/// 4: `series_open`: a series' newest minute is merged into its hour and day
/// only when a newer one starts, so hour and day buckets no longer hold
/// every minute by themselves, and an older build must not read them (a
/// format 3 file has every minute folded and opens unchanged).
pub(crate) const FORMAT_VERSION: u64 = 4;
pub(crate) const META_FORMAT_VERSION: &str = "format_version";
pub(crate) const META_EPOCH: &str = "epoch";
/// Last spool seq ever assigned; kept when the spool empties so seqs stay
/// contiguous across acks and restarts.
pub(crate) const META_SPOOL_LAST_SEQ: &str = "spool_last_seq";
/// Total size of the spooled batches. Restored from the batches themselves;
/// still written, for older versions that read it.
pub(crate) const META_SPOOL_BYTES: &str = "spool_bytes";
pub(crate) const META_SPOOL_DROPPED: &str = "spool_dropped_batches";
/// Last event id ever assigned; kept when retention empties the log.
pub(crate) const META_EVENT_LAST_ID: &str = "event_last_id";
/// The id the next new series gets; written by series expiry, so ids of
/// expired series stay retired (otherwise it is the highest id plus one).
pub(crate) const META_SERIES_NEXT_ID: &str = "series_next_id";
/// Last alarm history record id ever assigned.
pub(crate) const META_ALARM_HISTORY_LAST_ID: &str = "alarm_history_last_id";
/// Last outbox entry id ever assigned; kept when the outbox empties.
pub(crate) const META_OUTBOX_LAST_ID: &str = "alarm_outbox_last_id";
