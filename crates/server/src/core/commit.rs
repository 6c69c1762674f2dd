//! The commit writer: one store transaction per flush (merged buckets, the
//! sources' progress, the outgoing spool batch), then the flush's tickets are
//! settled — sources acked, `?wait=commit` requests answered — and the
//! forwarder is woken.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use strata_carrier::Consumer;
use strata_model::Increment;
use strata_store::{Commit, CommitOutcome, Cursor, EventKind, SourceProgress};
use tokio::sync::{mpsc, oneshot, watch};

use crate::context::Context;
use crate::core::event_time::LateMinutes;
use crate::core::fatal::fault;
use crate::core::retention::{self, Retention};
use crate::core::sources::Watermarks;
use crate::core::stats::Stats;

/// Something to settle once the flush holding a request's data is committed.
pub enum Ticket {
    /// A federation batch: record the source's progress, then ack the seq.
    Source {
        progress: SourceProgress,
        /// The stream to answer on (ack, or an error that ends the stream so
        /// the source resends); gone if the stream ended meanwhile.
        ack: mpsc::Sender<Result<u64, String>>,
    },
    /// An ingest request with `wait=commit`.
    Commit(oneshot::Sender<Result<(), String>>),
    /// A request the request log holds as record `seq`: the commit writes
    /// its marker, and once durable the log deletes the record
    /// ([`crate::core::request_log`]).
    Logged {
        seq: u64,
        merged: crate::core::request_log::Merged,
    },
    /// An input's cursors (the stream table of a cumulative input), written
    /// in the transaction of the flush that holds the request's data; with
    /// `done`, the request waits for that commit.
    Cursors {
        cursors: Vec<Cursor>,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
}

/// What one flush hands to its outputs.
pub struct FlushBatch {
    pub increments: Vec<Increment>,
    pub tickets: Vec<Ticket>,
    /// The requests and batches this flush holds, by name, for its commit line.
    pub request_ids: RequestIds,
    /// The flush instant: everything submitted before it is in this batch.
    pub flushed_at_ms: i64,
    /// The watermark this flush may claim for the node's own ingest
    /// ([`crate::core::event_time`]).
    pub own_watermark_ms: i64,
    /// Minutes that received data after they were complete.
    pub late_minutes: Vec<i64>,
}

/// Names of the requests and batches a flush holds (request ids, or
/// `source/seq` for federation batches): the first [`RequestIds::KEPT`] in
/// the order they came, and a count of the rest, so the commit line stays
/// short however busy the node is. Displayed as `a,b,c (+120 more)`.
#[derive(Debug, Default, PartialEq)]
pub struct RequestIds {
    kept: Vec<Arc<str>>,
    /// How many more there were.
    more: u64,
}

impl RequestIds {
    /// Most names kept per flush.
    pub const KEPT: usize = 16;

    /// Adds one name (counted only, once [`RequestIds::KEPT`] are kept).
    pub fn push(&mut self, name: Arc<str>) {
        if self.kept.len() < Self::KEPT {
            self.kept.push(name);
        } else {
            self.more += 1;
        }
    }

    /// Adds the names of a later flush committed in the same transaction.
    pub fn absorb(&mut self, later: RequestIds) {
        let room = Self::KEPT
            .saturating_sub(self.kept.len())
            .min(later.kept.len());
        let mut names = later.kept.into_iter();
        self.kept.extend(names.by_ref().take(room));
        self.more += names.len() as u64 + later.more;
    }
}

impl std::fmt::Display for RequestIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, name) in self.kept.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        if self.more > 0 {
            write!(f, " (+{} more)", self.more)?;
        }
        Ok(())
    }
}

/// What the commit writer publishes for the rest of the node to read.
pub(crate) struct Committed {
    /// Instant up to which this node has committed what it saw itself: its
    /// own watermark, for completeness and for what it forwards.
    pub(crate) own_watermark_ms: AtomicI64,
    /// Last spool seq committed; the forwarder watches it.
    pub(crate) spool_seq: watch::Sender<u64>,
    /// Set when a commit failed for good: nothing more is committed, so no
    /// later ack can cover the lost flush.
    pub(crate) failed: AtomicBool,
    /// Everything before this instant is complete here: the lowest of the
    /// own watermark and every expected source's, as of the last commit.
    pub(crate) complete_through_ms: AtomicI64,
    /// Flush instant of the last successful commit (0 before the first).
    pub(crate) last_commit_ms: AtomicI64,
    /// Committed minutes that received data after they were complete, for
    /// the alarm evaluator.
    pub(crate) late_minutes: LateMinutes,
}

impl Committed {
    /// Nothing committed yet by this process; the spool's last seq is `last_seq`.
    pub(crate) fn new(last_seq: u64) -> Committed {
        Committed {
            own_watermark_ms: AtomicI64::new(0),
            spool_seq: watch::channel(last_seq).0,
            failed: AtomicBool::new(false),
            complete_through_ms: AtomicI64::new(0),
            last_commit_ms: AtomicI64::new(0),
            late_minutes: LateMinutes::default(),
        }
    }
}

/// Commits flushes to the store and settles their tickets.
pub(crate) struct CommitWriter {
    ctx: Arc<Context>,
    committed: Arc<Committed>,
    /// Whether commits also append an outgoing spool batch (an upstream is
    /// configured).
    forwarding: bool,
    retention: Retention,
    /// When retention and series expiry last ran; nothing until the first
    /// commit after start, which runs them (a node down for a while cleans up
    /// at once).
    last_retention: retention::LastRuns,
}

impl Consumer<FlushBatch> for CommitWriter {
    fn consume(&mut self, items: &mut Vec<FlushBatch>) {
        // Several queued flushes become one transaction: fewer syncs under load.
        let count = items.iter().map(|b| b.increments.len()).sum();
        let mut all = FlushBatch {
            increments: Vec::with_capacity(count),
            tickets: Vec::new(),
            request_ids: RequestIds::default(),
            flushed_at_ms: 0,
            own_watermark_ms: 0,
            late_minutes: Vec::new(),
        };
        for batch in items.drain(..) {
            all.increments.extend(batch.increments);
            all.tickets.extend(batch.tickets);
            all.request_ids.absorb(batch.request_ids);
            all.flushed_at_ms = all.flushed_at_ms.max(batch.flushed_at_ms);
            all.own_watermark_ms = all.own_watermark_ms.max(batch.own_watermark_ms);
            all.late_minutes.extend(batch.late_minutes);
        }
        fault::check("commit", all.increments.iter().map(|i| i.series.metric()));
        let flushed_at_ms = all.flushed_at_ms;
        self.commit(all);
        retention::run_due(
            &self.ctx,
            &self.retention,
            &mut self.last_retention,
            flushed_at_ms,
        );
    }
}

impl CommitWriter {
    pub(crate) fn new(
        ctx: Arc<Context>,
        committed: Arc<Committed>,
        forwarding: bool,
        retention: Retention,
    ) -> CommitWriter {
        CommitWriter {
            ctx,
            committed,
            forwarding,
            retention,
            last_retention: retention::LastRuns::default(),
        }
    }

    /// Commits one or more flushes as one transaction, then settles their
    /// tickets with the outcome.
    fn commit(&mut self, batch: FlushBatch) {
        let FlushBatch {
            increments,
            tickets,
            request_ids,
            flushed_at_ms,
            own_watermark_ms,
            late_minutes,
        } = batch;
        let progress = latest_progress(&tickets);
        let cursors = cursors_of(&tickets);
        let watermarks = self.forwarded_watermarks(&progress, own_watermark_ms);
        let commit = Commit {
            increments: &increments,
            progress: &progress,
            cursors: &cursors,
            spool_watermark_ms: self.forwarding.then(|| watermarks.forwarded()),
            now_ms: flushed_at_ms,
        };
        let outcome = if self.committed.failed.load(Ordering::Acquire) {
            Err("an earlier commit failed for good; restart the node".to_string())
        } else {
            self.commit_with_retries(commit)
        };
        match outcome {
            Ok(outcome) => {
                self.committed_ok(&outcome, increments.len(), &progress, &watermarks);
                self.committed
                    .last_commit_ms
                    .fetch_max(flushed_at_ms, Ordering::AcqRel);
                self.committed.late_minutes.add(late_minutes);
                tracing::debug!(increments = increments.len(), request_ids = %request_ids, "flush committed");
                settle(tickets, Ok(()));
                if let Some(seq) = outcome.spool_seq {
                    tracing::debug!(seq, increments = increments.len(), "flush spooled");
                    self.committed.spool_seq.send_replace(seq);
                }
            }
            Err(e) => {
                // Nothing of this flush is durable, and no later flush may be
                // committed over the hole: the node stops committing (health
                // KO) until it is restarted; sources then resend from what the
                // store has.
                self.committed.failed.store(true, Ordering::Release);
                tracing::error!(error = %e, increments = increments.len(), "flush lost: store commit failed");
                self.ctx.event(
                    EventKind::CommitFailed,
                    format!(
                        "a flush of {} increments was lost and committing stopped: {e}",
                        increments.len()
                    ),
                );
                settle(tickets, Err(e.as_str()));
            }
        }
    }

    /// The watermarks as of this commit, counting the progress it records
    /// and the own watermark it claims (never behind an earlier claim).
    fn forwarded_watermarks(
        &self,
        progress: &[SourceProgress],
        own_watermark_ms: i64,
    ) -> Watermarks {
        Watermarks {
            own_ms: own_watermark_ms.max(self.committed.own_watermark_ms.load(Ordering::Acquire)),
            sources: self
                .ctx
                .sources
                .expected()
                .iter()
                .map(|s| {
                    let committed = s.watermark_ms.load(Ordering::Acquire);
                    progress
                        .iter()
                        .find(|p| p.source_id == s.id)
                        .map_or(committed, |p| committed.max(p.watermark_ms))
                })
                .collect(),
        }
    }

    /// Counts what a successful commit did and publishes the new watermarks.
    fn committed_ok(
        &self,
        outcome: &CommitOutcome,
        increments: usize,
        progress: &[SourceProgress],
        watermarks: &Watermarks,
    ) {
        let stats = &self.ctx.stats;
        Stats::add(&stats.flushes_total, 1);
        Stats::add(&stats.committed_increments_total, increments as u64);
        if !outcome.merge_errors.is_empty() {
            Stats::add(&stats.merge_errors_total, outcome.merge_errors.len() as u64);
            for (series, e) in outcome.merge_errors.iter().take(10) {
                tracing::warn!(%series, error = %e, "increment not merged into the store");
            }
        }
        Stats::add(&stats.quarantined_states_total, outcome.quarantined);
        Stats::add(&stats.spool_dropped_batches_total, outcome.spool_dropped);
        self.committed
            .own_watermark_ms
            .fetch_max(watermarks.own_ms, Ordering::AcqRel);
        for p in progress {
            if let Some(live) = self.ctx.sources.get(&p.source_id) {
                live.mark_committed(p.epoch, p.seq, p.watermark_ms);
            }
        }
        self.committed
            .complete_through_ms
            .store(watermarks.forwarded(), Ordering::Release);
    }

    /// Retries a failing commit with backoff (a full disk may be freed), and
    /// gives up after about a minute.
    fn commit_with_retries(&self, commit: Commit<'_>) -> Result<CommitOutcome, String> {
        let ctx = &self.ctx;
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let result = ctx.store.commit(commit);
            ctx.stats.latency.flush_commit.observe(started.elapsed());
            match result {
                Ok(outcome) => return Ok(outcome),
                Err(e) => {
                    Stats::add(&ctx.stats.store_errors_total, 1);
                    if attempt >= COMMIT_ATTEMPTS {
                        return Err(e.to_string());
                    }
                    tracing::warn!(error = %e, attempt, retry_in_ms = delay.as_millis() as u64, "store commit failed, retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
            }
        }
    }
}

/// Attempts at one commit before the node gives up committing.
const COMMIT_ATTEMPTS: u32 = 16;

/// The highest seq per source among the tickets of a commit.
fn latest_progress(tickets: &[Ticket]) -> Vec<SourceProgress> {
    let mut progress: HashMap<&str, &SourceProgress> = HashMap::new();
    for t in tickets {
        if let Ticket::Source { progress: p, .. } = t {
            let e = progress.entry(p.source_id.as_str()).or_insert(p);
            if p.seq > e.seq {
                *e = p;
            }
        }
    }
    progress.into_values().cloned().collect()
}

/// The cursors of a commit's tickets, in the order the requests came (a
/// later write of a key wins).
fn cursors_of(tickets: &[Ticket]) -> Vec<Cursor> {
    tickets
        .iter()
        .filter_map(|t| match t {
            Ticket::Cursors { cursors, .. } => Some(cursors.clone()),
            Ticket::Logged { seq, .. } => Some(vec![crate::core::request_log::marker(*seq)]),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Acks or refuses every ticket of a commit with its result.
fn settle(tickets: Vec<Ticket>, result: Result<(), &str>) {
    for t in tickets {
        match (t, result) {
            (Ticket::Source { progress, ack }, Ok(())) => {
                tracing::debug!(source = %progress.source_id, epoch = progress.epoch, seq = progress.seq, "batch committed");
                let _ = ack.try_send(Ok(progress.seq));
            }
            (Ticket::Source { progress, ack }, Err(e)) => {
                tracing::warn!(source = %progress.source_id, seq = progress.seq, "batch not committed; the source keeps it");
                let _ = ack.try_send(Err(format!("upstream cannot commit: {e}")));
            }
            (Ticket::Commit(tx), Ok(())) => {
                let _ = tx.send(Ok(()));
            }
            (Ticket::Commit(tx), Err(e)) | (Ticket::Cursors { done: Some(tx), .. }, Err(e)) => {
                let _ = tx.send(Err(format!("store commit failed: {e}")));
            }
            (Ticket::Cursors { done: Some(tx), .. }, Ok(())) => {
                let _ = tx.send(Ok(()));
            }
            (Ticket::Cursors { done: None, .. }, _) => {}
            (Ticket::Logged { seq, merged }, Ok(())) => merged.record(seq),
            // Still in the log: merged at the next start.
            (Ticket::Logged { .. }, Err(_)) => {}
        }
    }
}

#[cfg(test)]
mod request_ids_tests {
    use super::*;

    fn names(range: std::ops::Range<usize>) -> RequestIds {
        let mut ids = RequestIds::default();
        for i in range {
            ids.push(Arc::from(format!("r{i}")));
        }
        ids
    }

    #[test]
    fn request_ids_keep_the_first_16_and_count_the_rest() {
        assert_eq!(RequestIds::default().to_string(), "");
        assert_eq!(names(0..3).to_string(), "r0,r1,r2");
        let many = names(0..20);
        let shown = many.to_string();
        assert!(shown.starts_with("r0,r1,"), "{shown}");
        assert!(shown.ends_with(",r15 (+4 more)"), "{shown}");
        let mut merged = names(0..10);
        merged.absorb(names(10..30));
        assert_eq!(merged, many_of(30));
        assert!(merged.to_string().ends_with("r15 (+14 more)"), "{merged}");
    }

    fn many_of(n: usize) -> RequestIds {
        names(0..n)
    }
}
