//! The aggregation pipeline of one tier: `submit` behind the flush gate, the
//! flush loop, and the threads of the shards ([`crate::core::shard`]) and the
//! commit writer ([`crate::core::commit`]).
//!
//! ```text
//! inputs ──submit──> ingest carrier (one partition per shard, by series hash)
//!                      └─> Shard: delta map (series, minute) -> State
//! flush thread ── every flush_interval_ms: Flush marker into every shard ──┐
//!   <── each shard swaps out its delta (the increment) ───────────────────┘
//!   ──> output carrier ──> CommitWriter: one store transaction per flush
//!         (merged buckets + source progress + outgoing spool batch),
//!         then acks to sources, wakes `?wait=commit` requests and the forwarder
//! ```
//!
//! **Flush gate.** An input holds the gate's read side while it enqueues all
//! the parts of one request or batch (one per shard); the flush holds the
//! write side while it enqueues its markers. Every shard queue is FIFO, so a
//! request lands entirely before or entirely after a flush marker in every
//! shard: the tickets (source progress, commit waiters) taken at that flush
//! cover exactly the data that flush carries. That is what lets a source's
//! `seq` be committed in the same transaction as its increments.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel as cb;
use parking_lot::{Mutex, RwLock};
use strata_carrier::{Carrier, CarrierConfig, CarrierThreads, Produced, Strategy};
use strata_model::{Increment, SeriesKey, StateParams};
use tokio::sync::watch;

use crate::context::{Context, now_ms};
use crate::core::commit::{CommitWriter, Committed, FlushBatch, RequestIds, Ticket};
use crate::core::event_time::{EventClock, LateMinutes, late_buckets};
use crate::core::fatal::fault;
use crate::core::request_log::{self, RequestLog};
use crate::core::retention::Retention;
use crate::core::self_metrics::SelfMetrics;
use crate::core::shard::{SampleItem, Shard, ShardMsg};
use crate::core::sources::Watermarks;
use crate::core::stats::Stats;

/// The whole request could not be enqueued: the node is stopping.
#[derive(Debug, thiserror::Error)]
#[error("node is shutting down")]
pub struct Stopping;

/// One request's parts, as [`Pipeline::submit_events`] takes them.
pub struct Submission {
    pub samples: Vec<SampleItem>,
    pub increments: Vec<Increment>,
    pub ticket: Option<Ticket>,
    pub origin: Option<Arc<str>>,
    pub newest_event: Option<i64>,
}

/// Static settings of the pipeline.
#[derive(Clone, Debug)]
pub struct PipelineSettings {
    pub shards: usize,
    pub params: StateParams,
    pub carrier_capacity: usize,
    pub carrier_strategy: Strategy,
    pub carrier_bulk_max: usize,
    pub flush_interval: Duration,
    /// Whether commits also append an outgoing spool batch.
    pub forwarding: bool,
    /// How long minute, hour and day buckets are kept.
    pub retention: Retention,
    /// How far the own watermark trails the newest event time accepted
    /// (`aggregation.watermark_delay_ms`).
    pub watermark_delay_ms: i64,
    /// `aggregation.allowed_lateness_s`, in ms: the most the watermark trails.
    pub allowed_lateness_ms: i64,
    /// Where the request log keeps its file (the node's data directory),
    /// when `wait=commit` requests are answered from it
    /// ([`crate::core::request_log`]) instead of after their flush commit.
    pub request_log: Option<std::path::PathBuf>,
}

impl PipelineSettings {
    /// One shard, no forwarding, everything kept, an hour between flushes
    /// (so none comes by itself), event times up to ten minutes late: the
    /// pipeline that benchmarks, fuzz targets and unit tests validate and
    /// merge on.
    pub fn standalone() -> PipelineSettings {
        PipelineSettings {
            shards: 1,
            params: StateParams::default(),
            carrier_capacity: 16,
            carrier_strategy: Strategy::Blocking,
            carrier_bulk_max: 16,
            flush_interval: Duration::from_secs(3600),
            forwarding: false,
            retention: Retention::forever(),
            watermark_delay_ms: 2_000,
            allowed_lateness_ms: 600_000,
            request_log: None,
        }
    }
}

/// Shared handle to the running pipeline.
pub struct Pipeline {
    settings: PipelineSettings,
    ingest: Carrier<ShardMsg>,
    /// Read side: an input enqueuing one request; write side: a flush enqueuing markers.
    gate: RwLock<()>,
    /// Tickets of requests enqueued since the last flush marker.
    tickets: Mutex<Vec<Ticket>>,
    /// Where `wait=commit` requests are made durable, when enabled.
    request_log: Option<Arc<RequestLog>>,
    /// Names of the requests and batches enqueued since the last flush
    /// marker (bounded), for the commit line of the flush holding them.
    request_ids: Mutex<RequestIds>,
    /// Newest event time of what applications sent since the last flush.
    event_clock: EventClock,
    /// Minutes that received data after they were complete, since the last flush.
    late_since_flush: LateMinutes,
    /// Store, counters, sources and the fatal flag the shards, the flush and
    /// the commit writer share with the rest of the node.
    ctx: Arc<Context>,
    /// What the commit writer publishes: own watermark, spool seq, failure.
    committed: Arc<Committed>,
}

/// Threads of a running pipeline, stopped in order by [`PipelineThreads::stop`].
pub struct PipelineThreads {
    request_log: Option<Arc<RequestLog>>,
    ingest: Carrier<ShardMsg>,
    flush_stop: cb::Sender<()>,
    flush_thread: Option<std::thread::JoinHandle<()>>,
    shards: CarrierThreads,
    output: Carrier<FlushBatch>,
    writer: CarrierThreads,
}

impl Pipeline {
    /// Starts shards, the flush thread and the commit writer.
    pub fn start(
        settings: PipelineSettings,
        ctx: Arc<Context>,
    ) -> anyhow::Result<(Arc<Pipeline>, PipelineThreads)> {
        let fatal = &ctx.fatal;
        let (ingest, shard_threads) = Carrier::start_with_panic_hook(
            CarrierConfig {
                name: "shard".into(),
                partitions: settings.shards,
                capacity: settings.carrier_capacity,
                strategy: settings.carrier_strategy,
                bulk_max: settings.carrier_bulk_max,
            },
            |i| Shard::new(i, settings.params, ctx.node_id.clone(), ctx.stats.clone()),
            fatal.carrier_hook(),
        )
        .map_err(|e| anyhow::anyhow!("starting aggregator shards: {e}"))?;
        let (request_log, pending) = match &settings.request_log {
            Some(dir) => {
                let mut recovered = request_log::recover(&*ctx.store, dir)
                    .map_err(|e| anyhow::anyhow!("opening the request log: {e}"))?;
                let pending = std::mem::take(&mut recovered.pending);
                let log = RequestLog::start(ctx.clone(), recovered)?;
                (Some(Arc::new(log)), pending)
            }
            None => (None, Vec::new()),
        };
        let committed = Arc::new(Committed::new(ctx.store.spool_stats().last_seq));
        let writer = CommitWriter::new(
            ctx.clone(),
            committed.clone(),
            settings.forwarding,
            settings.retention.clone(),
        );
        let pipeline = Arc::new(Pipeline {
            event_clock: EventClock::new(settings.watermark_delay_ms, settings.allowed_lateness_ms),
            settings,
            ingest,
            gate: RwLock::new(()),
            tickets: Mutex::new(Vec::new()),
            request_log: request_log.clone(),
            request_ids: Mutex::new(RequestIds::default()),
            late_since_flush: LateMinutes::default(),
            ctx: ctx.clone(),
            committed,
        });
        let mut writer = Some(writer);
        let (output, writer_threads) = Carrier::start_with_panic_hook(
            CarrierConfig {
                name: "commit".into(),
                partitions: 1,
                capacity: 4,
                strategy: Strategy::Blocking,
                bulk_max: 8,
            },
            move |_| writer.take().expect("one partition, one writer"),
            fatal.carrier_hook(),
        )
        .map_err(|e| anyhow::anyhow!("starting commit writer: {e}"))?;
        let (flush_stop, stop_rx) = cb::bounded(1);
        let flush_thread = {
            let pipeline = pipeline.clone();
            let output = output.clone();
            std::thread::Builder::new()
                .name("flush".into())
                .spawn(move || {
                    let run = || pipeline.flush_loop(&output, &stop_rx);
                    if let Err(payload) =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
                    {
                        let message = crate::core::fatal::panic_text(payload.as_ref());
                        tracing::error!(panic = %message, "flush thread panicked");
                        pipeline
                            .ctx
                            .fatal
                            .report(format!("the flush thread panicked: {message}"));
                    }
                })?
        };
        if pipeline.replay(pending).is_err() {
            anyhow::bail!("the pipeline stopped while the request log was replayed");
        }
        let ingest = pipeline.ingest.clone();
        Ok((
            pipeline,
            PipelineThreads {
                request_log,
                ingest,
                flush_stop,
                flush_thread: Some(flush_thread),
                shards: shard_threads,
                output,
                writer: writer_threads,
            },
        ))
    }

    pub fn settings(&self) -> &PipelineSettings {
        &self.settings
    }

    /// What the pipeline shares with the rest of the node.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// [`Pipeline::submit_from`] for what no request names.
    pub fn submit(
        &self,
        samples: Vec<SampleItem>,
        increments: Vec<Increment>,
        ticket: Option<Ticket>,
    ) -> Result<(), Stopping> {
        self.submit_from(samples, increments, ticket, None)
    }

    /// Enqueues one request's samples and increments, all or nothing with
    /// respect to flushes, plus an optional ticket. Blocks while shard queues
    /// are full (call it from a blocking thread). Samples are what
    /// applications sent: their event times move this node's own watermark.
    /// What lands in a minute already complete here is counted as late after
    /// completeness (for the ticket's source, or for the node's own ingest)
    /// and has the alarms look at that minute again once committed.
    ///
    /// `origin` names the request (its request id) or the batch
    /// (`source/seq`) in the commit line of the flush that holds it.
    pub fn submit_from(
        &self,
        samples: Vec<SampleItem>,
        increments: Vec<Increment>,
        ticket: Option<Ticket>,
        origin: Option<Arc<str>>,
    ) -> Result<(), Stopping> {
        let newest_event = samples.iter().map(|s| s.ts_ms).max();
        self.submit_events(samples, increments, ticket, origin, newest_event)
    }

    /// [`Pipeline::submit_from`] for an input whose increments are what
    /// applications sent (OTLP, remote write): `newest_event` is the newest
    /// event time among its samples and increments, which moves this node's
    /// own watermark as samples do.
    pub fn submit_events(
        &self,
        samples: Vec<SampleItem>,
        increments: Vec<Increment>,
        ticket: Option<Ticket>,
        origin: Option<Arc<str>>,
        newest_event: Option<i64>,
    ) -> Result<(), Stopping> {
        self.submit_blocking(Submission {
            samples,
            increments,
            ticket,
            origin,
            newest_event,
        })
    }

    /// [`Pipeline::submit_events`] on the caller's thread, for a caller that
    /// must not block (an async task), when it cannot wait: the flush gate
    /// is free and every shard queue has room for the request's parts with
    /// half its capacity to spare. Otherwise the submission comes back, to
    /// be made from a blocking thread ([`Pipeline::submit_blocking`]).
    pub fn try_submit_events(
        &self,
        submission: Submission,
    ) -> Result<Result<(), Stopping>, Box<Submission>> {
        let Some(_gate) = self.gate.try_read() else {
            return Err(Box::new(submission));
        };
        // A request adds at most two messages to a shard (samples, increments).
        if !self.ingest.has_room(2) {
            return Err(Box::new(submission));
        }
        Ok(self.submit_gated(submission))
    }

    /// [`Pipeline::submit_events`] of a [`Submission`]. Blocks.
    pub fn submit_blocking(&self, submission: Submission) -> Result<(), Stopping> {
        let _gate = self.gate.read();
        self.submit_gated(submission)
    }

    /// [`Pipeline::submit_events`]; the caller holds the flush gate's read side.
    fn submit_gated(&self, submission: Submission) -> Result<(), Stopping> {
        let Submission {
            samples,
            increments,
            ticket,
            origin,
            newest_event,
        } = submission;
        let (late, late_minutes) = late_buckets(
            samples
                .iter()
                .map(|s| s.bucket_ms)
                .chain(increments.iter().map(|i| i.bucket_ms)),
            self.committed.complete_through_ms.load(Ordering::Acquire),
        );
        let late_source = match &ticket {
            Some(Ticket::Source { progress, .. }) if late > 0 => {
                self.ctx.sources.get(&progress.source_id)
            }
            _ => None,
        };
        if let Some(ts) = newest_event {
            self.event_clock.accepted(ts);
        }
        self.enqueue(samples, increments, ticket)?;
        if let Some(origin) = origin {
            self.request_ids.lock().push(origin);
        }
        if late > 0 {
            match late_source {
                Some(source) => {
                    source
                        .late_after_complete
                        .fetch_add(late, Ordering::Relaxed);
                }
                None => {
                    self.event_clock
                        .late_after_complete
                        .fetch_add(late, Ordering::Relaxed);
                }
            }
            self.late_since_flush.add(late_minutes);
        }
        Ok(())
    }

    /// Whether `wait=commit` requests go through the request log
    /// ([`Pipeline::submit_logged`]).
    pub fn logs_requests(&self) -> bool {
        self.request_log.is_some()
    }

    /// Makes one request durable in the request log, then enqueues it (as
    /// [`Pipeline::submit_events`]) with the ticket that deletes its record
    /// in the commit that merges it. Blocks (call it from a blocking
    /// thread). `Ok` once the record is durable, even if the node stops
    /// before the request is enqueued: its record is then merged when the
    /// node starts again. An error means nothing of the request is durable
    /// or merged.
    pub fn submit_logged(
        &self,
        samples: Vec<SampleItem>,
        increments: Vec<Increment>,
        origin: Option<Arc<str>>,
        newest_event: Option<i64>,
    ) -> Result<(), String> {
        let Some(log) = &self.request_log else {
            return Err("this node keeps no request log".to_owned());
        };
        let seq = log.append(request_log::encode(&samples, &increments))?;
        let ticket = log.ticket(seq);
        if self
            .submit_events(samples, increments, Some(ticket), origin, newest_event)
            .is_err()
        {
            tracing::info!(
                record = seq,
                "node stopping: the logged request is merged at the next start"
            );
        }
        Ok(())
    }

    /// Hands every record left in the request log (acknowledged before the
    /// last stop, not merged) to the aggregator again, each with its ticket
    /// ([`request_log`]). An unreadable record is settled the same way, with
    /// nothing merged, and logged.
    fn replay(&self, pending: Vec<request_log::Pending>) -> Result<(), Stopping> {
        let stats = &self.ctx.stats;
        let Some(log) = &self.request_log else {
            return Ok(());
        };
        for record in pending {
            let (name, bytes, ticket) = match record {
                request_log::Pending::InStore { key, bytes } => {
                    let ticket = request_log::deletion(key.clone());
                    (key, bytes, ticket)
                }
                request_log::Pending::Logged { seq, bytes } => (
                    format!("{}{seq}", request_log::LOG_PREFIX),
                    bytes,
                    log.ticket(seq),
                ),
            };
            match request_log::decode(&bytes) {
                Ok(record) => {
                    Stats::add(&stats.request_log_replayed_total, 1);
                    let newest = record
                        .samples
                        .iter()
                        .map(|s| s.ts_ms)
                        .chain(record.increments.iter().map(|i| i.bucket_ms))
                        .max();
                    let origin = Some(Arc::from(name.as_str()));
                    let (samples, increments) = (record.samples, record.increments);
                    self.submit_events(samples, increments, Some(ticket), origin, newest)?;
                }
                Err(e) => {
                    Stats::add(&stats.request_log_unreadable_total, 1);
                    tracing::error!(record = %name, error = %e, "unreadable request-log record dropped: the request it held is lost");
                    self.submit_events(Vec::new(), Vec::new(), Some(ticket), None, None)?;
                }
            }
        }
        Ok(())
    }

    /// Hands samples and increments to their shards and keeps the ticket for
    /// the next flush. The caller holds the flush gate's read side.
    fn enqueue(
        &self,
        samples: Vec<SampleItem>,
        increments: Vec<Increment>,
        ticket: Option<Ticket>,
    ) -> Result<(), Stopping> {
        let n = self.ingest.partitions();
        // Sized for an even spread: large requests do not regrow every part.
        let share = |len: usize| len / n + len / (4 * n) + 1;
        let mut sample_parts: Vec<Vec<SampleItem>> = (0..n)
            .map(|_| Vec::with_capacity(share(samples.len())))
            .collect();
        // Inputs hand over a series' samples together: hash each series once.
        let mut last: Option<(*const SeriesKey, usize)> = None;
        for s in samples {
            let ptr = Arc::as_ptr(&s.series);
            let shard = match last {
                Some((p, shard)) if p == ptr => shard,
                _ => {
                    let shard = self.ingest.partition_for(s.series.hash64());
                    last = Some((ptr, shard));
                    shard
                }
            };
            sample_parts[shard].push(s);
        }
        let mut inc_parts: Vec<Vec<Increment>> = (0..n)
            .map(|_| Vec::with_capacity(share(increments.len())))
            .collect();
        for i in increments {
            inc_parts[self.ingest.partition_for(i.series.hash64())].push(i);
        }
        if self.ctx.fatal.is_set() {
            return Err(Stopping);
        }
        for (shard, (samples, incs)) in sample_parts.into_iter().zip(inc_parts).enumerate() {
            if !samples.is_empty() {
                self.produce(shard, ShardMsg::Samples(samples))?;
            }
            if !incs.is_empty() {
                self.produce(shard, ShardMsg::Increments(incs))?;
            }
        }
        if let Some(t) = ticket {
            self.tickets.lock().push(t);
        }
        Ok(())
    }

    fn produce(&self, shard: usize, msg: ShardMsg) -> Result<(), Stopping> {
        match self.ingest.produce_to(shard, msg) {
            Produced::Sent => Ok(()),
            // drop_if_full: the carrier counted it; the request goes on best-effort.
            Produced::Dropped(_) => Ok(()),
            Produced::Closed(_) => Err(Stopping),
        }
    }

    /// Carrier figures for `/metrics`.
    pub fn carrier_stats(&self) -> strata_carrier::CarrierStats {
        self.ingest.stats()
    }

    /// The watermarks that decide completeness at this node now.
    pub fn watermarks(&self) -> Watermarks {
        Watermarks {
            own_ms: self.committed.own_watermark_ms.load(Ordering::Acquire),
            sources: self
                .ctx
                .sources
                .expected()
                .iter()
                .map(|s| s.watermark_ms.load(Ordering::Acquire))
                .collect(),
        }
    }

    /// Flush instant of the last successful commit (0 before the first).
    pub fn last_commit_ms(&self) -> i64 {
        self.committed.last_commit_ms.load(Ordering::Acquire)
    }

    /// Samples sent to this node directly that came in for a minute already
    /// complete here.
    pub fn late_after_complete(&self) -> u64 {
        self.event_clock.late_after_complete.load(Ordering::Relaxed)
    }

    /// Takes the minutes whose late data has been committed since the last
    /// call, oldest first: the alarm evaluator looks at them again.
    pub fn take_late_minutes(&self) -> Vec<i64> {
        self.committed.late_minutes.take()
    }

    /// After a pipeline thread failed: answers every request and batch still
    /// waiting for a commit, which will not come, so the node can stop
    /// without waiting for them.
    pub fn fail_pending(&self, why: &str) {
        for t in std::mem::take(&mut *self.tickets.lock()) {
            match t {
                Ticket::Source { progress, ack } => {
                    tracing::warn!(source = %progress.source_id, seq = progress.seq, "batch not committed; the source keeps it");
                    let _ = ack.try_send(Err(format!("upstream stopping: {why}")));
                }
                Ticket::Commit(tx) | Ticket::Cursors { done: Some(tx), .. } => {
                    let _ = tx.send(Err(format!("node stopping: {why}")));
                }
                // Acknowledged already: still in the log, merged at the next start.
                Ticket::Cursors { done: None, .. } | Ticket::Logged { .. } => {}
            }
        }
    }

    /// Whether a commit failed for good (the node must be restarted).
    pub fn has_failed(&self) -> bool {
        self.committed.failed.load(Ordering::Acquire)
    }

    /// Watches the last committed spool seq (for the forwarder).
    pub fn spool_seq(&self) -> watch::Receiver<u64> {
        self.committed.spool_seq.subscribe()
    }

    fn flush_loop(&self, output: &Carrier<FlushBatch>, stop: &cb::Receiver<()>) {
        let interval = self.settings.flush_interval;
        let mut next = Instant::now() + interval;
        let mut self_metrics = SelfMetrics::new(&self.ctx.node_id);
        loop {
            let stopping = match stop.recv_deadline(next) {
                Err(cb::RecvTimeoutError::Timeout) => false,
                Ok(()) | Err(cb::RecvTimeoutError::Disconnected) => true,
            };
            next += interval;
            if next < Instant::now() {
                next = Instant::now() + interval;
            }
            // The node's own figures, stamped now: not application events,
            // so they move no watermark.
            let samples = self_metrics.samples(&self.ctx.stats, now_ms());
            if !samples.is_empty() {
                let _gate = self.gate.read();
                if self.enqueue(samples, Vec::new(), None).is_err() {
                    return;
                }
            }
            match self.flush() {
                Some(batch) => {
                    fault::check("flush", batch.increments.iter().map(|i| i.series.metric()));
                    if let Produced::Closed(_) = output.produce_to(0, batch) {
                        tracing::error!("commit writer stopped before the flush loop");
                        return;
                    }
                }
                None => return,
            }
            if stopping {
                tracing::debug!("final flush enqueued");
                return;
            }
        }
    }

    /// Swaps out every shard's delta. `None` if the shards are gone.
    fn flush(&self) -> Option<FlushBatch> {
        let n = self.ingest.partitions();
        let mut replies = Vec::with_capacity(n);
        let request_ids;
        let (tickets, flushed_at_ms, own_watermark_ms, late_minutes) = {
            let _gate = self.gate.write();
            let mut tickets = std::mem::take(&mut *self.tickets.lock());
            // Markers of records the request log has deleted since.
            tickets.extend(self.request_log.as_ref().and_then(|log| log.unmark()));
            request_ids = std::mem::take(&mut *self.request_ids.lock());
            let at = now_ms();
            let own_watermark_ms = self.event_clock.flush(at);
            let late_minutes = self.late_since_flush.take();
            for shard in 0..n {
                let (tx, rx) = cb::bounded(1);
                // Markers must never be dropped, whatever the carrier strategy.
                let mut msg = ShardMsg::Flush(tx);
                loop {
                    match self
                        .ingest
                        .produce_timeout(shard, msg, Duration::from_secs(1))
                    {
                        Produced::Sent => break,
                        Produced::Dropped(back) => msg = back,
                        Produced::Closed(_) => return None,
                    }
                }
                replies.push(rx);
            }
            (tickets, at, own_watermark_ms, late_minutes)
        };
        // A shard that panics drops its queue, this marker included: no hang.
        let mut parts = Vec::with_capacity(replies.len());
        for rx in replies {
            parts.push(rx.recv().ok()?);
        }
        let mut increments = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        for part in parts {
            increments.extend(part);
        }
        Some(FlushBatch {
            increments,
            tickets,
            request_ids,
            flushed_at_ms,
            own_watermark_ms,
            late_minutes,
        })
    }
}

impl PipelineThreads {
    /// Final flush and commit, then stops every thread. Inputs must already
    /// be stopped: anything submitted after the final flush is refused.
    pub fn stop(mut self) {
        // Records written from now on would wait for the next start anyway.
        if let Some(log) = &self.request_log {
            log.close();
        }
        let _ = self.flush_stop.send(());
        if let Some(t) = self.flush_thread.take()
            && t.join().is_err()
        {
            tracing::error!("flush thread panicked");
        }
        self.ingest.close();
        self.shards.join();
        self.output.close();
        self.writer.join();
    }
}
