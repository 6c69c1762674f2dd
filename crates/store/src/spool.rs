//! The spool cap: which batches go when the spool outgrows `spool_max_bytes`.

use crate::{Event, SpoolStats, StoreError};

/// Removes the oldest spool batches until `stats.bytes <= cap`, never the one
/// just appended.
///
/// `pop_older_than_newest` removes the oldest batch and returns its seq and
/// encoded size, or returns `None` without removing anything when the oldest
/// batch is the newest one. Returns how many were dropped and the seq range
/// they spanned, for the caller to log once the commit is durable.
pub(crate) fn enforce_spool_cap(
    stats: &mut SpoolStats,
    cap: u64,
    mut pop_older_than_newest: impl FnMut() -> Result<Option<(u64, u64)>, StoreError>,
) -> Result<Option<SpoolDrop>, StoreError> {
    let mut dropped: Option<SpoolDrop> = None;
    while stats.bytes > cap {
        let Some((seq, len)) = pop_older_than_newest()? else {
            break;
        };
        stats.bytes = stats.bytes.saturating_sub(len);
        stats.batches = stats.batches.saturating_sub(1);
        stats.dropped_batches += 1;
        let d = dropped.get_or_insert(SpoolDrop {
            dropped: 0,
            first_seq: seq,
            last_seq: seq,
        });
        d.dropped += 1;
        d.last_seq = seq;
    }
    Ok(dropped)
}

/// Batches one commit dropped from the spool at its cap.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpoolDrop {
    pub(crate) dropped: u64,
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
}

impl SpoolDrop {
    /// The [`Event::SPOOL_OVERFLOW`] event the commit that made the drop
    /// appends in its own transaction, at the commit's time.
    pub(crate) fn event(self, now_ms: i64, cap: u64) -> Event {
        let batches = if self.dropped == 1 {
            "batch"
        } else {
            "batches"
        };
        Event::new(
            now_ms,
            Event::SPOOL_OVERFLOW,
            format!(
                "spool over its cap of {cap} bytes: dropped {} oldest {batches}, seq {}..={}",
                self.dropped, self.first_seq, self.last_seq
            ),
        )
    }

    /// Logs the drop; called only after the commit that made it is durable.
    pub(crate) fn log(self, cap: u64) {
        tracing::warn!(
            dropped = self.dropped,
            first_seq = self.first_seq,
            last_seq = self.last_seq,
            spool_max_bytes = cap,
            "spool over its cap: dropped oldest batches"
        );
    }
}
