//! The aggregation pipeline of one tier: sharded aggregator, flush, commit.
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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel as cb;
use parking_lot::{Mutex, RwLock};
use strata_carrier::{Carrier, CarrierConfig, CarrierThreads, Consumer, Produced, Strategy};
use strata_model::{Increment, Kind, SampleValue, SeriesKey, State, StateParams};
use strata_store::{Commit, Event, Resolution, SourceProgress, Store};
use tokio::sync::{mpsc, oneshot, watch};

use crate::fatal::{Fatal, fault};
use crate::sources::{Sources, Watermarks};
use crate::stats::Stats;

/// One validated sample, ready for its shard.
#[derive(Clone, Debug)]
pub struct SampleItem {
    pub series: Arc<SeriesKey>,
    pub kind: Kind,
    pub bucket_ms: i64,
    pub ts_ms: i64,
    pub value: SampleValue,
    /// Apdex threshold for apdex samples.
    pub apdex_threshold: f64,
}

/// What travels through the ingest carrier to a shard.
pub enum ShardMsg {
    Samples(Vec<SampleItem>),
    Increments(Vec<Increment>),
    /// Swap out the delta and send it back.
    Flush(cb::Sender<Vec<Increment>>),
}

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
}

/// The whole request could not be enqueued: the node is stopping.
#[derive(Debug, thiserror::Error)]
#[error("node is shutting down")]
pub struct Stopping;

/// Static settings of the pipeline.
#[derive(Clone, Debug)]
pub struct PipelineSettings {
    pub node_id: String,
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
}

/// Retention per step, for the event log and for idle series, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub minute_ms: i64,
    pub hour_ms: i64,
    pub day_ms: i64,
    pub events_ms: i64,
    /// Series not updated for this long expire with their buckets (DESIGN §5).
    pub series_ms: i64,
}

impl Retention {
    /// The configured retentions in milliseconds. Saturates rather than wraps,
    /// so no value, even one validation would refuse, turns into a negative
    /// retention that deletes everything.
    pub fn from_config(storage: &crate::config::StorageConfig) -> Self {
        use strata_model::time::{DAY_MS, HOUR_MS, MINUTE_MS, span_ms};
        Retention {
            minute_ms: span_ms(storage.retention_minutes, MINUTE_MS),
            hour_ms: span_ms(storage.retention_hours, HOUR_MS),
            day_ms: span_ms(storage.retention_days, DAY_MS),
            events_ms: span_ms(storage.event_retention_days, DAY_MS),
            series_ms: span_ms(storage.series_ttl_s, 1_000),
        }
    }

    /// Keeps everything (tests and benchmarks).
    pub fn forever() -> Self {
        let ms = i64::MAX / 4;
        Retention {
            minute_ms: ms,
            hour_ms: ms,
            day_ms: ms,
            events_ms: ms,
            series_ms: ms,
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
    pub stats: Arc<Stats>,
    pub sources: Arc<Sources>,
    pub store: Arc<dyn Store>,
    /// Instant up to which this node has committed what it saw itself.
    own_watermark_ms: AtomicI64,
    /// Last spool seq committed; the forwarder watches it.
    spool_seq: watch::Sender<u64>,
    /// Set when a commit failed for good: nothing more is committed, so no
    /// later ack can cover the lost flush.
    failed: AtomicBool,
    /// Set when a pipeline thread panicked: the node must stop.
    pub fatal: Fatal,
}

/// Threads of a running pipeline, stopped in order by [`PipelineThreads::stop`].
pub struct PipelineThreads {
    ingest: Carrier<ShardMsg>,
    flush_stop: cb::Sender<()>,
    flush_thread: Option<std::thread::JoinHandle<()>>,
    shards: CarrierThreads,
    output: Carrier<FlushBatch>,
    writer: CarrierThreads,
}

/// What one flush hands to its outputs.
pub struct FlushBatch {
    pub increments: Vec<Increment>,
    pub tickets: Vec<Ticket>,
    /// The flush instant: everything submitted before it is in this batch.
    pub flushed_at_ms: i64,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Pipeline {
    /// Starts shards, the flush thread and the commit writer.
    pub fn start(
        settings: PipelineSettings,
        store: Arc<dyn Store>,
        sources: Arc<Sources>,
        stats: Arc<Stats>,
    ) -> anyhow::Result<(Arc<Pipeline>, PipelineThreads)> {
        let fatal = Fatal::default();
        let (ingest, shard_threads) = Carrier::start_with_panic_hook(
            CarrierConfig {
                name: "shard".into(),
                partitions: settings.shards,
                capacity: settings.carrier_capacity,
                strategy: settings.carrier_strategy,
                bulk_max: settings.carrier_bulk_max,
            },
            |i| Shard {
                index: i,
                delta: HashMap::default(),
                params: settings.params,
                source: settings.node_id.clone(),
                stats: stats.clone(),
            },
            fatal.carrier_hook(),
        )
        .map_err(|e| anyhow::anyhow!("starting aggregator shards: {e}"))?;
        let last_seq = store.spool_stats().last_seq;
        let pipeline = Arc::new(Pipeline {
            settings: settings.clone(),
            ingest,
            gate: RwLock::new(()),
            tickets: Mutex::new(Vec::new()),
            stats: stats.clone(),
            sources,
            store: store.clone(),
            own_watermark_ms: AtomicI64::new(0),
            spool_seq: watch::channel(last_seq).0,
            failed: AtomicBool::new(false),
            fatal: fatal.clone(),
        });
        let writer = CommitWriter {
            pipeline: pipeline.clone(),
            last_retention: None,
        };
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
                        let message = crate::fatal::panic_text(payload.as_ref());
                        tracing::error!(panic = %message, "flush thread panicked");
                        pipeline
                            .fatal
                            .report(format!("the flush thread panicked: {message}"));
                    }
                })?
        };
        let ingest = pipeline.ingest.clone();
        Ok((
            pipeline,
            PipelineThreads {
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

    /// Enqueues one request's samples and increments, all or nothing with
    /// respect to flushes, plus an optional ticket. Blocks while shard queues
    /// are full (call it from a blocking thread).
    pub fn submit(
        &self,
        samples: Vec<SampleItem>,
        increments: Vec<Increment>,
        ticket: Option<Ticket>,
    ) -> Result<(), Stopping> {
        let n = self.ingest.partitions();
        let mut sample_parts: Vec<Vec<SampleItem>> = (0..n).map(|_| Vec::new()).collect();
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
        let mut inc_parts: Vec<Vec<Increment>> = (0..n).map(|_| Vec::new()).collect();
        for i in increments {
            inc_parts[self.ingest.partition_for(i.series.hash64())].push(i);
        }
        if self.fatal.is_set() {
            return Err(Stopping);
        }
        let _gate = self.gate.read();
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
            own_ms: self.own_watermark_ms.load(Ordering::Acquire),
            sources: self
                .sources
                .expected()
                .iter()
                .map(|s| s.watermark_ms.load(Ordering::Acquire))
                .collect(),
        }
    }

    /// Appends a notable event to the store's event log, off the async runtime.
    pub fn event(self: &Arc<Self>, kind: &'static str, message: String) {
        let store = self.store.clone();
        let event = Event::new(now_ms(), kind, message);
        let append = move || {
            if let Err(e) = store.append_events(std::slice::from_ref(&event)) {
                tracing::warn!(error = %e, kind = event.kind, "event not recorded");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(append);
            }
            Err(_) => append(),
        }
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
                Ticket::Commit(tx) => {
                    let _ = tx.send(Err(format!("node stopping: {why}")));
                }
            }
        }
    }

    /// Whether a commit failed for good (the node must be restarted).
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Watches the last committed spool seq (for the forwarder).
    pub fn spool_seq(&self) -> watch::Receiver<u64> {
        self.spool_seq.subscribe()
    }

    fn flush_loop(&self, output: &Carrier<FlushBatch>, stop: &cb::Receiver<()>) {
        let interval = self.settings.flush_interval;
        let mut next = Instant::now() + interval;
        let mut self_metrics = SelfMetrics::new(&self.settings.node_id);
        loop {
            let stopping = match stop.recv_deadline(next) {
                Err(cb::RecvTimeoutError::Timeout) => false,
                Ok(()) | Err(cb::RecvTimeoutError::Disconnected) => true,
            };
            next += interval;
            if next < Instant::now() {
                next = Instant::now() + interval;
            }
            let samples = self_metrics.samples(&self.stats, now_ms());
            if !samples.is_empty() && self.submit(samples, Vec::new(), None).is_err() {
                return;
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
        let (tickets, flushed_at_ms) = {
            let _gate = self.gate.write();
            let tickets = std::mem::take(&mut *self.tickets.lock());
            let at = now_ms();
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
            (tickets, at)
        };
        let mut increments = Vec::new();
        // A shard that panics drops its queue, this marker included: no hang.
        for rx in replies {
            match rx.recv() {
                Ok(part) => increments.extend(part),
                Err(_) => return None,
            }
        }
        Some(FlushBatch {
            increments,
            tickets,
            flushed_at_ms,
        })
    }
}

impl PipelineThreads {
    /// Final flush and commit, then stops every thread. Inputs must already
    /// be stopped: anything submitted after the final flush is refused.
    pub fn stop(mut self) {
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

/// One aggregator shard: the only writer of its delta map.
struct Shard {
    index: usize,
    /// What changed since the last flush: the increment to hand on. A fast,
    /// randomly seeded hasher: keys come from outside but cannot be aimed.
    delta: HashMap<(Arc<SeriesKey>, i64), State, foldhash::fast::RandomState>,
    params: StateParams,
    /// Source name recorded by `latest` samples ingested here.
    source: String,
    stats: Arc<Stats>,
}

impl Consumer<ShardMsg> for Shard {
    fn consume(&mut self, items: &mut Vec<ShardMsg>) {
        for msg in items.drain(..) {
            match msg {
                ShardMsg::Samples(samples) => {
                    fault::check("shard", samples.iter().map(|s| s.series.metric()));
                    for s in samples {
                        let params = StateParams {
                            apdex_threshold: s.apdex_threshold,
                            ..self.params
                        };
                        let state = self
                            .delta
                            .entry((s.series, s.bucket_ms))
                            .or_insert_with(|| State::empty(s.kind, &params));
                        if let Err(e) = state.record(s.value, s.ts_ms, &self.source) {
                            // Inputs validate each sample, but only the state knows
                            // whether adding it overflows: that sample alone is refused.
                            Stats::add(&self.stats.merge_errors_total, 1);
                            tracing::warn!(shard = self.index, kind = %s.kind, bucket_ms = s.bucket_ms, error = %e, "sample not recorded");
                        }
                    }
                }
                ShardMsg::Increments(incs) => {
                    for inc in incs {
                        match self.delta.entry((inc.series, inc.bucket_ms)) {
                            std::collections::hash_map::Entry::Vacant(v) => {
                                v.insert(inc.state);
                            }
                            std::collections::hash_map::Entry::Occupied(mut o) => {
                                if let Err(e) = o.get_mut().merge(&inc.state) {
                                    Stats::add(&self.stats.merge_errors_total, 1);
                                    tracing::error!(shard = self.index, series = %o.key().0, error = %e, "increment not merged");
                                }
                            }
                        }
                    }
                }
                ShardMsg::Flush(reply) => {
                    let out: Vec<Increment> = self
                        .delta
                        .drain()
                        .map(|((series, bucket_ms), state)| Increment {
                            series,
                            bucket_ms,
                            state,
                        })
                        .collect();
                    let _ = reply.send(out);
                }
            }
        }
    }
}

/// Commits flushes to the store and settles their tickets.
struct CommitWriter {
    pipeline: Arc<Pipeline>,
    /// When retention last ran; `None` until the first commit after start,
    /// which runs it (a node down for a while cleans up at once).
    last_retention: Option<Instant>,
}

impl Consumer<FlushBatch> for CommitWriter {
    fn consume(&mut self, items: &mut Vec<FlushBatch>) {
        // Several queued flushes become one transaction: fewer syncs under load.
        let mut increments = Vec::new();
        let mut tickets = Vec::new();
        let mut flushed_at_ms = 0;
        for batch in items.drain(..) {
            increments.extend(batch.increments);
            tickets.extend(batch.tickets);
            flushed_at_ms = flushed_at_ms.max(batch.flushed_at_ms);
        }
        fault::check("commit", increments.iter().map(|i| i.series.metric()));
        self.commit(increments, tickets, flushed_at_ms);
        if self
            .last_retention
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            self.last_retention = Some(Instant::now());
            self.apply_retention(flushed_at_ms);
        }
    }
}

impl CommitWriter {
    /// Deletes buckets and events past their retention, and expires series
    /// not updated within the series TTL.
    fn apply_retention(&self, now_ms: i64) {
        let store = &self.pipeline.store;
        let r = self.pipeline.settings.retention;
        for (resolution, keep_ms) in [
            (Resolution::Minute, r.minute_ms),
            (Resolution::Hour, r.hour_ms),
            (Resolution::Day, r.day_ms),
        ] {
            let before = resolution.bucket_start(now_ms.saturating_sub(keep_ms));
            match store.delete_before(resolution, before) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(deleted = n, %resolution, before_ms = before, "retention deleted old buckets")
                }
                Err(e) => tracing::warn!(error = %e, %resolution, "retention failed"),
            }
        }
        if let Err(e) = store.delete_events_before(now_ms.saturating_sub(r.events_ms)) {
            tracing::warn!(error = %e, "event retention failed");
        }
        // Series TTL (DESIGN §5).
        let idle_before = now_ms.saturating_sub(r.series_ms);
        match store.expire_series(idle_before) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                expired = n,
                idle_before_ms = idle_before,
                "series not updated within the series TTL expired"
            ),
            Err(e) => tracing::warn!(error = %e, "series expiry failed"),
        }
        Stats::add(&self.pipeline.stats.retention_runs_total, 1);
    }

    fn commit(&mut self, increments: Vec<Increment>, tickets: Vec<Ticket>, flushed_at_ms: i64) {
        let p = &self.pipeline;
        // Highest seq per source in this commit.
        let mut progress: HashMap<String, SourceProgress> = HashMap::new();
        for t in &tickets {
            if let Ticket::Source { progress: pr, .. } = t {
                let e = progress
                    .entry(pr.source_id.clone())
                    .or_insert_with(|| pr.clone());
                if pr.seq > e.seq {
                    *e = pr.clone();
                }
            }
        }
        // The watermark this commit forwards, counting the progress it records.
        let watermarks = Watermarks {
            own_ms: flushed_at_ms,
            sources: p
                .sources
                .expected()
                .iter()
                .map(|s| {
                    let committed = s.watermark_ms.load(Ordering::Acquire);
                    progress
                        .get(&s.id)
                        .map_or(committed, |pr| committed.max(pr.watermark_ms))
                })
                .collect(),
        };
        let progress: Vec<SourceProgress> = progress.into_values().collect();
        let commit = Commit {
            increments: &increments,
            progress: &progress,
            spool_watermark_ms: p.settings.forwarding.then(|| watermarks.forwarded()),
            now_ms: flushed_at_ms,
        };
        let outcome = if p.failed.load(Ordering::Acquire) {
            Err("an earlier commit failed for good; restart the node".to_string())
        } else {
            self.commit_with_retries(commit)
        };
        match outcome {
            Ok(outcome) => {
                Stats::add(&p.stats.flushes_total, 1);
                Stats::add(&p.stats.committed_increments_total, increments.len() as u64);
                if !outcome.merge_errors.is_empty() {
                    Stats::add(
                        &p.stats.merge_errors_total,
                        outcome.merge_errors.len() as u64,
                    );
                    for (series, e) in outcome.merge_errors.iter().take(10) {
                        tracing::warn!(%series, error = %e, "increment not merged into the store");
                    }
                }
                if outcome.quarantined > 0 {
                    Stats::add(&p.stats.quarantined_states_total, outcome.quarantined);
                }
                if outcome.spool_dropped > 0 {
                    Stats::add(&p.stats.spool_dropped_batches_total, outcome.spool_dropped);
                }
                p.own_watermark_ms
                    .fetch_max(flushed_at_ms, Ordering::AcqRel);
                for pr in &progress {
                    if let Some(live) = p.sources.get(&pr.source_id) {
                        live.mark_committed(pr.epoch, pr.seq, pr.watermark_ms);
                    }
                }
                for t in tickets {
                    match t {
                        Ticket::Source { progress, ack, .. } => {
                            tracing::debug!(source = %progress.source_id, epoch = progress.epoch, seq = progress.seq, "batch committed");
                            let _ = ack.try_send(Ok(progress.seq));
                        }
                        Ticket::Commit(tx) => {
                            let _ = tx.send(Ok(()));
                        }
                    }
                }
                if let Some(seq) = outcome.spool_seq {
                    tracing::debug!(seq, increments = increments.len(), "flush spooled");
                    p.spool_seq.send_replace(seq);
                }
            }
            Err(e) => {
                // Nothing of this flush is durable, and no later flush may be
                // committed over the hole: the node stops committing (health
                // KO) until it is restarted; sources then resend from what the
                // store has.
                p.failed.store(true, Ordering::Release);
                tracing::error!(error = %e, increments = increments.len(), "flush lost: store commit failed");
                p.event(
                    "commit_failed",
                    format!(
                        "a flush of {} increments was lost and committing stopped: {e}",
                        increments.len()
                    ),
                );
                for t in tickets {
                    match t {
                        Ticket::Source { progress, ack, .. } => {
                            tracing::warn!(source = %progress.source_id, seq = progress.seq, "batch not committed; the source keeps it");
                            let _ = ack.try_send(Err(format!("upstream cannot commit: {e}")));
                        }
                        Ticket::Commit(tx) => {
                            let _ = tx.send(Err(format!("store commit failed: {e}")));
                        }
                    }
                }
            }
        }
    }

    /// Retries a failing commit with backoff (a full disk may be freed), and
    /// gives up after about a minute.
    fn commit_with_retries(
        &self,
        commit: Commit<'_>,
    ) -> Result<strata_store::CommitOutcome, String> {
        let p = &self.pipeline;
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match p.store.commit(commit) {
                Ok(outcome) => return Ok(outcome),
                Err(e) => {
                    Stats::add(&p.stats.store_errors_total, 1);
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

/// Turns the growth of this node's [`Stats`] counters into ordinary
/// `strata_*{node="<id>"}` counter samples, so they are stored and forwarded
/// upward like any metric (DESIGN §6).
struct SelfMetrics {
    series: Vec<Arc<SeriesKey>>,
    last: Vec<u64>,
}

/// Prefix of the metrics a node records about itself.
pub const SELF_PREFIX: &str = "strata_";

impl SelfMetrics {
    fn new(node_id: &str) -> Self {
        let names = Stats::default().snapshot();
        let series = names
            .iter()
            .filter_map(|(name, _)| {
                SeriesKey::new(
                    format!("{SELF_PREFIX}{name}"),
                    [("node".to_string(), node_id.to_string())],
                )
                .ok()
            })
            .map(Arc::new)
            .collect();
        SelfMetrics {
            series,
            last: vec![0; names.len()],
        }
    }

    fn samples(&mut self, stats: &Stats, now: i64) -> Vec<SampleItem> {
        let mut out = Vec::new();
        for ((series, last), (_, value)) in self
            .series
            .iter()
            .zip(self.last.iter_mut())
            .zip(stats.snapshot())
        {
            if value > *last {
                out.push(SampleItem {
                    series: series.clone(),
                    kind: Kind::Counter,
                    bucket_ms: strata_model::minute_start(now),
                    ts_ms: now,
                    value: SampleValue::Number((value - *last) as f64),
                    apdex_threshold: 0.0,
                });
                *last = value;
            }
        }
        out
    }
}

/// Names of the self-metrics, to register as counters before any input runs.
pub fn self_metric_names() -> Vec<String> {
    Stats::default()
        .snapshot()
        .into_iter()
        .map(|(n, _)| format!("{SELF_PREFIX}{n}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use strata_store::{MemoryStore, StoreOptions};

    /// One shard, no forwarding, flushing only when asked: for retention tests.
    fn settings(retention: Retention) -> PipelineSettings {
        PipelineSettings {
            node_id: "t".into(),
            shards: 1,
            params: StateParams::default(),
            carrier_capacity: 16,
            carrier_strategy: Strategy::Blocking,
            carrier_bulk_max: 16,
            flush_interval: Duration::from_secs(3600),
            forwarding: false,
            retention,
        }
    }

    #[test]
    fn retention_expires_series_idle_for_longer_than_the_ttl() {
        let settings = settings(Retention {
            series_ms: 3_000,
            ..Retention::forever()
        });
        let store = Arc::new(MemoryStore::new(StoreOptions::default()));
        let sources = Arc::new(Sources::new(Vec::new(), Vec::new(), 0));
        let (pipeline, threads) =
            Pipeline::start(settings, store.clone(), sources, Arc::new(Stats::default())).unwrap();
        let key = |s: &str| Arc::new(SeriesKey::new("req", [("s".into(), s.into())]).unwrap());
        for (series, now_ms) in [("old", 1_000), ("new", 5_000)] {
            store
                .commit(Commit {
                    increments: &[Increment {
                        series: key(series),
                        bucket_ms: 0,
                        state: State::Counter(1),
                    }],
                    progress: &[],
                    spool_watermark_ms: None,
                    now_ms,
                })
                .unwrap();
        }
        let writer = CommitWriter {
            pipeline: pipeline.clone(),
            last_retention: None,
        };
        // Both updated within the TTL: nothing expires.
        writer.apply_retention(3_999);
        assert_eq!(store.series_count(), 2);
        writer.apply_retention(5_999);
        assert_eq!(store.series_of("req"), vec![key("new")]);
        drop(writer);
        threads.stop();
    }

    #[test]
    fn configured_retentions_convert_to_ms_without_wrapping() {
        use crate::config::{MAX_RETENTION_S, StorageConfig};
        let largest = StorageConfig {
            retention_minutes: MAX_RETENTION_S / 60,
            retention_hours: MAX_RETENTION_S / 3600,
            retention_days: MAX_RETENTION_S / 86_400,
            event_retention_days: MAX_RETENTION_S / 86_400,
            series_ttl_s: MAX_RETENTION_S,
            ..StorageConfig::default()
        };
        let r = Retention::from_config(&largest);
        for ms in [r.minute_ms, r.hour_ms, r.day_ms, r.events_ms, r.series_ms] {
            assert_eq!(ms, 3_153_600_000_000);
        }
        // Beyond what validation accepts: saturates instead of wrapping negative
        // (`10^16 s * 1000` used to become about -8.4e18 ms).
        let huge = StorageConfig {
            retention_days: 9_999_999_999_999,
            series_ttl_s: 10_000_000_000_000_000,
            ..StorageConfig::default()
        };
        let r = Retention::from_config(&huge);
        assert_eq!((r.day_ms, r.series_ms), (i64::MAX, i64::MAX));
    }

    #[test]
    fn retention_with_the_largest_or_saturated_values_deletes_nothing() {
        use crate::config::{MAX_RETENTION_S, StorageConfig};
        let at = 1_763_800_020_000;
        let ninety_nine_years = 99 * 365 * 86_400_000;
        for (storage, later) in [
            (
                StorageConfig {
                    retention_minutes: MAX_RETENTION_S / 60,
                    retention_hours: MAX_RETENTION_S / 3600,
                    retention_days: MAX_RETENTION_S / 86_400,
                    series_ttl_s: MAX_RETENTION_S,
                    ..StorageConfig::default()
                },
                at + ninety_nine_years,
            ),
            // Beyond the bounds: saturated, kept until the end of time.
            (
                StorageConfig {
                    retention_minutes: u64::MAX,
                    retention_hours: u64::MAX,
                    retention_days: 9_999_999_999_999,
                    event_retention_days: u64::MAX,
                    series_ttl_s: 10_000_000_000_000_000,
                    ..StorageConfig::default()
                },
                strata_model::time::MAX_TS_MS,
            ),
        ] {
            let settings = settings(Retention::from_config(&storage));
            let store = Arc::new(MemoryStore::new(StoreOptions::default()));
            let sources = Arc::new(Sources::new(Vec::new(), Vec::new(), 0));
            let stats = Arc::new(Stats::default());
            let (pipeline, threads) =
                Pipeline::start(settings, store.clone(), sources, stats.clone()).unwrap();
            let series = Arc::new(SeriesKey::new("req", [("s".into(), "a".into())]).unwrap());
            store
                .commit(Commit {
                    increments: &[Increment {
                        series: series.clone(),
                        bucket_ms: at,
                        state: State::Counter(7),
                    }],
                    progress: &[],
                    spool_watermark_ms: None,
                    now_ms: at,
                })
                .unwrap();
            let writer = CommitWriter {
                pipeline: pipeline.clone(),
                last_retention: None,
            };
            // A day later, and as late as the retention reaches.
            for now_ms in [at + 86_400_000, later] {
                writer.apply_retention(now_ms);
            }
            assert_eq!(store.series_of("req"), vec![series.clone()], "{storage:?}");
            for resolution in [Resolution::Minute, Resolution::Hour, Resolution::Day] {
                let buckets = store.read_at(&series, resolution, 0, i64::MAX).unwrap();
                assert_eq!(buckets.len(), 1, "{resolution} {storage:?}");
            }
            assert_eq!(stats.retention_runs_total.load(Ordering::Relaxed), 2);
            drop(writer);
            threads.stop();
        }
    }
}
