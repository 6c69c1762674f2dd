//! The spool's ledger: which batches wait, how large they are, and which
//! ones go when the spool outgrows `spool_max_bytes`.
//!
//! The ledger is kept in memory above the backends, so the cap is decided
//! once for all of them, before the transaction that applies it: a backend
//! only appends a batch and deletes a range of seqs.

use std::collections::VecDeque;

use crate::backend::SpoolCounters;
use crate::{DecodeError, Event, EventKind, SpoolStats, StoreError};

/// Seq and encoded size of every waiting batch, and the spool's counters.
#[derive(Debug, Default)]
pub(crate) struct SpoolLedger {
    stats: SpoolStats,
    /// (seq, encoded size), oldest first: what the cap drops from, and what
    /// an ack frees.
    batches: VecDeque<(u64, u64)>,
}

/// Appending one batch, planned: applied to the ledger once it is durable.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpoolAppend {
    /// The new batch's seq.
    pub(crate) seq: u64,
    len: u64,
    /// Batches the cap drops to make room, oldest first.
    pub(crate) dropped: Option<SpoolDrop>,
    /// The counters once appended and dropped.
    pub(crate) counters: SpoolCounters,
}

/// An acknowledgement, planned: deletes every batch up to `through`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpoolAck {
    pub(crate) through: u64,
    batches: usize,
    pub(crate) counters: SpoolCounters,
}

impl SpoolLedger {
    /// The ledger of a backend's spool: its batches (ascending by seq) and
    /// its persisted counters. A last seq behind a spooled batch is
    /// corruption: the next batch would reuse a seq.
    pub(crate) fn restore(
        batches: Vec<(u64, u64)>,
        counters: SpoolCounters,
    ) -> Result<Self, StoreError> {
        if let Some(&(seq, _)) = batches.last()
            && seq > counters.last_seq
        {
            return Err(StoreError::corrupt(
                "spool",
                DecodeError::Inconsistent(format!(
                    "last seq {} is behind spooled batch {seq}",
                    counters.last_seq
                )),
            ));
        }
        let stats = SpoolStats {
            batches: batches.len() as u64,
            bytes: batches.iter().map(|&(_, len)| len).sum(),
            first_seq: batches.first().map_or(0, |&(seq, _)| seq),
            last_seq: counters.last_seq,
            dropped_batches: counters.dropped_batches,
        };
        Ok(SpoolLedger {
            stats,
            batches: batches.into(),
        })
    }

    pub(crate) fn stats(&self) -> SpoolStats {
        self.stats.clone()
    }

    /// The seq the next appended batch gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.stats.last_seq + 1
    }

    /// Appending a batch of `len` encoded bytes under a cap of `cap` bytes:
    /// it gets the next seq, and the oldest batches are dropped until the
    /// spool fits the cap again, never the one just appended.
    pub(crate) fn plan_append(&self, len: u64, cap: u64) -> SpoolAppend {
        let seq = self.next_seq();
        let mut bytes = self.stats.bytes + len;
        let mut dropped: Option<SpoolDrop> = None;
        for &(old, old_len) in &self.batches {
            if bytes <= cap {
                break;
            }
            bytes = bytes.saturating_sub(old_len);
            let d = dropped.get_or_insert(SpoolDrop {
                dropped: 0,
                first_seq: old,
                last_seq: old,
                cap,
            });
            d.dropped += 1;
            d.last_seq = old;
        }
        SpoolAppend {
            seq,
            len,
            dropped,
            counters: SpoolCounters {
                last_seq: seq,
                bytes,
                dropped_batches: self.stats.dropped_batches + dropped.map_or(0, |d| d.dropped),
            },
        }
    }

    /// Records a durable append.
    pub(crate) fn apply_append(&mut self, append: &SpoolAppend) {
        let dropped = append.dropped.map_or(0, |d| d.dropped);
        self.batches.drain(
            ..usize::try_from(dropped)
                .unwrap_or(usize::MAX)
                .min(self.batches.len()),
        );
        self.batches.push_back((append.seq, append.len));
        self.sync_stats(append.counters);
    }

    /// Acknowledging every batch up to `upto_seq`; `None` when that deletes
    /// nothing.
    pub(crate) fn plan_ack(&self, upto_seq: u64) -> Option<SpoolAck> {
        let acked = self.batches.iter().take_while(|&&(seq, _)| seq <= upto_seq);
        let (batches, freed) =
            acked.fold((0usize, 0u64), |(n, bytes), &(_, len)| (n + 1, bytes + len));
        (batches > 0).then(|| SpoolAck {
            through: upto_seq,
            batches,
            counters: SpoolCounters {
                last_seq: self.stats.last_seq,
                bytes: self.stats.bytes.saturating_sub(freed),
                dropped_batches: self.stats.dropped_batches,
            },
        })
    }

    /// Records a durable acknowledgement.
    pub(crate) fn apply_ack(&mut self, ack: &SpoolAck) {
        self.batches.drain(..ack.batches.min(self.batches.len()));
        self.sync_stats(ack.counters);
    }

    fn sync_stats(&mut self, counters: SpoolCounters) {
        self.stats = SpoolStats {
            batches: self.batches.len() as u64,
            bytes: counters.bytes,
            first_seq: self.batches.front().map_or(0, |&(seq, _)| seq),
            last_seq: counters.last_seq,
            dropped_batches: counters.dropped_batches,
        };
    }
}

/// Batches one commit dropped from the spool at its cap.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpoolDrop {
    pub(crate) dropped: u64,
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    /// The cap they were dropped at (`spool_max_bytes`).
    cap: u64,
}

impl SpoolDrop {
    /// The [`EventKind::SpoolOverflow`] event the commit that made the drop
    /// appends in its own transaction, at the commit's time.
    pub(crate) fn event(self, now_ms: i64) -> Event {
        let batches = if self.dropped == 1 {
            "batch"
        } else {
            "batches"
        };
        Event::new(
            now_ms,
            EventKind::SpoolOverflow,
            format!(
                "spool over its cap of {} bytes: dropped {} oldest {batches}, seq {}..={}",
                self.cap, self.dropped, self.first_seq, self.last_seq
            ),
        )
    }

    /// Logs the drop; called only after the commit that made it is durable.
    pub(crate) fn log(self) {
        tracing::warn!(
            dropped = self.dropped,
            first_seq = self.first_seq,
            last_seq = self.last_seq,
            spool_max_bytes = self.cap,
            "spool over its cap: dropped oldest batches"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(batches: &[(u64, u64)]) -> SpoolLedger {
        let counters = SpoolCounters {
            last_seq: batches.last().map_or(0, |&(seq, _)| seq),
            bytes: 0,
            dropped_batches: 0,
        };
        SpoolLedger::restore(batches.to_vec(), counters).expect("consistent")
    }

    #[test]
    fn the_cap_drops_oldest_first_and_never_the_new_batch() {
        let mut l = ledger(&[(1, 10), (2, 10), (3, 10)]);
        let a = l.plan_append(10, 25);
        let d = a.dropped.expect("over the cap");
        assert_eq!((a.seq, d.dropped, d.first_seq, d.last_seq), (4, 2, 1, 2));
        l.apply_append(&a);
        let s = l.stats();
        assert_eq!(
            (
                s.batches,
                s.bytes,
                s.first_seq,
                s.last_seq,
                s.dropped_batches
            ),
            (2, 20, 3, 4, 2)
        );
        // Larger than the cap on its own: everything older goes, it stays.
        let a = l.plan_append(100, 25);
        l.apply_append(&a);
        let s = l.stats();
        assert_eq!(
            (s.batches, s.bytes, s.first_seq, s.dropped_batches),
            (1, 100, 5, 4)
        );
    }

    #[test]
    fn an_ack_frees_what_it_covers() {
        let mut l = ledger(&[(4, 10), (5, 20), (6, 30)]);
        assert!(l.plan_ack(3).is_none());
        let ack = l.plan_ack(5).expect("covers two");
        l.apply_ack(&ack);
        let s = l.stats();
        assert_eq!((s.batches, s.bytes, s.first_seq, s.last_seq), (1, 30, 6, 6));
        let ack = l.plan_ack(u64::MAX).expect("covers the rest");
        l.apply_ack(&ack);
        assert_eq!(l.stats().first_seq, 0);
        assert!(l.plan_ack(u64::MAX).is_none());
    }

    #[test]
    fn a_last_seq_behind_a_batch_is_corruption() {
        let counters = SpoolCounters {
            last_seq: 2,
            ..SpoolCounters::default()
        };
        let err = SpoolLedger::restore(vec![(3, 1)], counters).expect_err("behind");
        assert!(err.is_unreadable(), "{err}");
    }
}
