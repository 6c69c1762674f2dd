//! The federation receiver: one stream per downstream source.
//!
//! The receiver authenticates each source, refuses a second live stream for a
//! connected id, tells the source where to resume (its highest committed seq),
//! drops batches it has already committed (acking them again) and acks every
//! other batch only after the flush holding it is committed. A batch sent in
//! parts is held until its last part and then handled whole; a message over
//! `grpc.max_message_bytes` ends the stream with a status naming the limit.
//!
//! Every refusal is a [`ReceiverError`]; its gRPC code and retry hint come
//! from the one table in [`crate::status`].
//!
//! A source's token is compared in constant time; an unknown id or a wrong
//! token is refused (`PERMISSION_DENIED`, `UNAUTHENTICATED`) before anything
//! of the stream is read beyond its hello, counted, logged and recorded as a
//! `source_refused` event. The `[limits]` on series apply to batches as to
//! ingest: a batch naming a series over a size limit is rejected whole naming
//! the limit (an over-limit series definition is remembered as invalid, so a
//! later batch that refers to it is rejected too, and its strings are not
//! kept). A batch bringing new series beyond the source's cardinality limit
//! is merged without them: they are refused, counted and reported naming the
//! limit, and the source's existing series keep flowing.
//!
//! A stream's session runs in the span of the call that opened it (its
//! `request_id`) for as long as the stream lasts; batch lines name their
//! `source`, `epoch` and `seq`, and a flush's commit line names the batches
//! it holds as `source/seq`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message as _;
use strata_model::{Kind, MINUTE_MS, State};
use strata_proto::v1::{self, federation_server::Federation, source_message, upstream_message};
use strata_store::{EventKind, SourceProgress};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::api::auth::constant_time_eq;
use crate::api::request_id;
use crate::context::now_ms;
use crate::core::commit::Ticket;
use crate::core::limits::MessageLimits;
use crate::core::pipeline::Submission;
use crate::core::sources::{Claim, SourceLive, epoch_fingerprint};
use crate::core::stats::Stats;
use crate::inputs::delivery::{Incoming, MAX_SEQ, Verdict, verdict};
pub use crate::inputs::receiver_error::ReceiverError;
use crate::inputs::samples::Ingestor;

/// How long a new stream may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a new stream waits for its source's previous stream's batches
/// to be committed before it is refused ("retry").
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Federation receiver.
pub struct FederationService {
    pub ingestor: Arc<Ingestor>,
    pub node_id: String,
    pub histogram_sigfig: u8,
    /// This node's message limit (announced in the Welcome) and its upstream's.
    pub limits: Arc<MessageLimits>,
    /// `grpc.max_batch_bytes`: most a batch in parts may hold while it is assembled.
    pub max_batch_bytes: usize,
    /// Ends open streams at shutdown so the server can stop.
    pub shutdown: CancellationToken,
}

type UpstreamStream = Pin<Box<dyn Stream<Item = Result<v1::UpstreamMessage, Status>> + Send>>;

fn message(msg: upstream_message::Msg) -> v1::UpstreamMessage {
    v1::UpstreamMessage { msg: Some(msg) }
}

#[tonic::async_trait]
impl Federation for FederationService {
    type StreamStream = UpstreamStream;

    /// A source's stream, in four steps: read its hello, admit it
    /// (authenticate, claim its id), settle where it resumes, welcome it;
    /// then a `Session` serves the stream.
    async fn stream(
        &self,
        request: Request<Streaming<v1::SourceMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = self.read_hello(&mut inbound).await?;
        let (live, claim) = self.admit(&hello).await?;
        let committed = self.resume_point(&live, hello.epoch);
        let (out_tx, out_rx) = mpsc::channel::<Result<v1::UpstreamMessage, Status>>(64);
        let _ = out_tx.send(Ok(self.welcome(committed))).await;
        let session = Session {
            ingestor: self.ingestor.clone(),
            live,
            epoch: hello.epoch,
            histogram_sigfig: self.histogram_sigfig,
            out: out_tx,
            known: strata_proto::KnownSeries::default(),
            first_on_stream: true,
            limits: self.limits.clone(),
            max_batch_bytes: self.max_batch_bytes,
            parts: None,
            over_limit: None,
        };
        let shutdown = self.shutdown.clone();
        // The stream's request span and id last as long as the session.
        request_id::spawn(async move {
            let _claim = claim;
            session.run(inbound, shutdown).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }
}

impl FederationService {
    /// The stream's first message, which must be a hello, within
    /// [`HELLO_TIMEOUT`]. A transport error other than an oversized message
    /// is passed on as tonic made it.
    async fn read_hello(
        &self,
        inbound: &mut Streaming<v1::SourceMessage>,
    ) -> Result<v1::Hello, Status> {
        match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(v1::SourceMessage {
                msg: Some(source_message::Msg::Hello(h)),
            }))) => Ok(h),
            Ok(Err(status)) if is_over_limit(&status) => {
                let stats = &self.ingestor.ctx.stats;
                Stats::add(&stats.federation_oversized_messages_total, 1);
                Err(over_limit(&status, self.limits.own()).into())
            }
            Ok(Err(status)) => Err(status),
            Err(_) => Err(ReceiverError::NoHello.into()),
            Ok(Ok(_)) => Err(ReceiverError::FirstNotHello.into()),
        }
    }

    /// Authenticates the hello's source and claims its id for this stream,
    /// once the batches of its previous stream are committed (so that the
    /// resume point is exact). Refusals are counted, logged and recorded as
    /// `source_refused` events.
    async fn admit(&self, hello: &v1::Hello) -> Result<(Arc<SourceLive>, Claim), ReceiverError> {
        let sources = &self.ingestor.ctx.sources;
        let source_id = &hello.source_id;
        let Some(token) = sources.token_of(source_id) else {
            return Err(self.refused(
                source_id,
                ReceiverError::UnknownSource {
                    // Chosen by whoever connects: never echoed at length.
                    source_id: crate::core::limits::abbreviated(source_id),
                    node_id: self.node_id.clone(),
                },
            ));
        };
        if !constant_time_eq(token.as_bytes(), hello.token.as_bytes()) {
            return Err(self.refused(
                source_id,
                ReceiverError::BadToken {
                    source_id: source_id.clone(),
                },
            ));
        }
        if hello.epoch == 0 {
            return Err(self.refused(source_id, ReceiverError::EpochZero));
        }
        let live = sources.get(source_id).ok_or(ReceiverError::NoLiveState)?;
        let claim = live.claim().ok_or_else(|| {
            self.refused(
                source_id,
                ReceiverError::AlreadyConnected {
                    source_id: source_id.clone(),
                },
            )
        })?;
        // Batches of a previous stream may still be on their way to the store.
        if tokio::time::timeout(DRAIN_TIMEOUT, live.drained())
            .await
            .is_err()
        {
            return Err(ReceiverError::PreviousStreamCommitting);
        }
        Ok((live, claim))
    }

    /// Counts, logs and records a refused stream; returns `e` to answer with.
    /// Anyone reaching the port can be refused at will: beyond a budget a
    /// minute, refusals are only counted.
    fn refused(&self, source_id: &str, e: ReceiverError) -> ReceiverError {
        let ctx = &self.ingestor.ctx;
        Stats::add(&ctx.stats.federation_refused_streams_total, 1);
        if !self.ingestor.refused_streams.take(now_ms()) {
            tracing::debug!(source = %crate::core::limits::abbreviated(source_id), error = %e, "federation stream refused (over the report budget: counted only)");
            return e;
        }
        let shown = crate::core::limits::abbreviated(source_id);
        tracing::warn!(source = %shown, error = %e, "federation stream refused");
        ctx.event(EventKind::SourceRefused, format!("source {shown:?}: {e}"));
        e
    }

    /// The seq after which the source resumes: what it committed in this
    /// epoch; a new epoch (the source lost its durable state) or an
    /// impossible committed seq starts the count afresh. Logs and records
    /// the connection.
    fn resume_point(&self, live: &SourceLive, epoch: u64) -> u64 {
        let ctx = &self.ingestor.ctx;
        // Events are readable over HTTP: they name epochs by fingerprint only,
        // since an epoch together with the token is what continues a stream.
        if live.epoch() != epoch {
            if live.epoch() != 0 {
                tracing::warn!(source = %live.id, old = live.epoch(), new = epoch, "source starts a new epoch: it lost its durable state");
                ctx.event(
                    EventKind::SourceNewEpoch,
                    format!(
                        "source {:?} came back with epoch {} (was {}): it lost its durable state",
                        live.id,
                        epoch_fingerprint(epoch),
                        epoch_fingerprint(live.epoch())
                    ),
                );
            }
            live.reset_epoch(epoch);
        } else if live.committed() > MAX_SEQ {
            // Only a version without seq limits could have committed this
            // (a forged seq): no real source can resume after it.
            tracing::warn!(source = %live.id, epoch, committed_seq = live.committed(), max_seq = MAX_SEQ, "source's committed seq is beyond any real seq: restarting its epoch's count");
            ctx.event(
                EventKind::SourceSeqReset,
                format!(
                    "source {:?}: committed seq {} is beyond any real seq; counting restarts at 0",
                    live.id,
                    live.committed()
                ),
            );
            live.reset_epoch(epoch);
        }
        let committed = live.committed();
        live.last_seen_ms.store(now_ms(), Ordering::Relaxed);
        tracing::info!(source = %live.id, epoch, committed_seq = committed, "source connected");
        ctx.event(
            EventKind::SourceConnected,
            format!(
                "source {:?} connected (epoch {}, resuming after seq {committed})",
                live.id,
                epoch_fingerprint(epoch)
            ),
        );
        committed
    }

    /// The Welcome: where the source resumes, who we are, our message limit.
    fn welcome(&self, committed: u64) -> v1::UpstreamMessage {
        message(upstream_message::Msg::Welcome(v1::Welcome {
            committed_seq: committed,
            upstream_id: self.node_id.clone(),
            max_message_bytes: self.limits.own() as u64,
        }))
    }
}

/// One source's stream.
struct Session {
    ingestor: Arc<Ingestor>,
    live: Arc<SourceLive>,
    epoch: u64,
    histogram_sigfig: u8,
    out: mpsc::Sender<Result<v1::UpstreamMessage, Status>>,
    /// The series this stream defined, by ref.
    known: strata_proto::KnownSeries,
    /// No batch judged on this stream yet: only this one may follow dropped batches.
    first_on_stream: bool,
    /// A forwarding node refuses increments it could never forward.
    limits: Arc<MessageLimits>,
    /// Bounds what [`Session::assemble`] holds.
    max_batch_bytes: usize,
    /// The batch being received in parts, if any.
    parts: Option<Parts>,
    /// The seq of a batch (or of one of its parts) that named a series over
    /// a `[limits]` size, and why: the batch is rejected whole once complete.
    over_limit: Option<(u64, String)>,
}

/// A batch arriving in parts (`Batch.part`, `more_parts`): held until its last part,
/// then judged, merged and committed whole like a batch sent in one message, so a seq
/// is never half merged.
struct Parts {
    /// The batch so far: the first part's seq, watermark and flags, every part's series.
    batch: v1::Batch,
    /// The part expected next.
    next: u32,
    /// Encoded size of the parts held, against `grpc.max_batch_bytes`.
    bytes: usize,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<v1::SourceMessage>, shutdown: CancellationToken) {
        // Sized well above any source's in-flight window: acks are never dropped.
        let (ack_tx, mut ack_rx) =
            mpsc::channel::<Result<u64, String>>(crate::config::MAX_INFLIGHT_BATCHES + 16);
        let end = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Some(ReceiverError::ShuttingDown),
                ack = ack_rx.recv() => match ack {
                    Some(Ok(seq)) => {
                        if self.out.send(Ok(message(upstream_message::Msg::Ack(v1::Ack { seq })))).await.is_err() {
                            break None;
                        }
                    }
                    Some(Err(e)) => break Some(ReceiverError::CommitFailed(e)),
                    None => break None,
                },
                msg = inbound.message() => match msg {
                    Ok(Some(v1::SourceMessage { msg: Some(source_message::Msg::Batch(batch)) })) => {
                        if let Err(e) = self.on_message(batch, &ack_tx).await {
                            break Some(e);
                        }
                    }
                    Ok(Some(_)) => break Some(ReceiverError::UnexpectedMessage),
                    Ok(None) => break None,
                    Err(status) if is_over_limit(&status) => {
                        Stats::add(&self.ingestor.ctx.stats.federation_oversized_messages_total, 1);
                        break Some(over_limit(&status, self.limits.own()));
                    }
                    Err(status) => {
                        tracing::debug!(source = %self.live.id, error = %status, "source stream broke");
                        break None;
                    }
                },
            }
        };
        let reason = match end {
            Some(e) => {
                tracing::info!(source = %self.live.id, reason = %e, "ending source stream");
                let reason = e.to_string();
                let _ = self.out.send(Err(e.into())).await;
                reason
            }
            None => {
                tracing::info!(source = %self.live.id, "source disconnected");
                "the source closed the stream".to_string()
            }
        };
        self.ingestor.ctx.event(
            EventKind::SourceDisconnected,
            format!("source {:?} disconnected: {reason}", self.live.id),
        );
    }

    /// One batch message: a whole batch, or one of its parts.
    async fn on_message(
        &mut self,
        batch: v1::Batch,
        ack_tx: &mpsc::Sender<Result<u64, String>>,
    ) -> Result<(), ReceiverError> {
        let mut batch = batch;
        self.check_series_limits(&mut batch);
        // Every message the stream carries defines series, in stream order,
        // duplicates and parts included.
        if let Err(e) = self.known.learn(&batch) {
            return Err(ReceiverError::BadDefinition {
                source_id: self.live.id.clone(),
                seq: batch.seq,
                reason: e.to_string(),
            });
        }
        match self.assemble(batch)? {
            Some(whole) => self.on_batch(whole, ack_tx).await,
            None => Ok(()),
        }
    }

    /// Checks every series a message names against the `[limits]` sizes. The
    /// first over-limit one marks the batch for rejection; a definition over
    /// a limit is kept as an invalid one (a metric name that cannot be valid,
    /// no labels), so that refs stay in step without keeping its strings.
    fn check_series_limits(&mut self, batch: &mut v1::Batch) {
        let limits = self.ingestor.limits.clone();
        for s in &mut batch.series {
            if s.series_ref != 0 && s.metric.is_empty() {
                continue;
            }
            let labels = s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str()));
            let Err(reason) = limits.check_series(&s.metric, labels) else {
                continue;
            };
            if self
                .over_limit
                .as_ref()
                .is_none_or(|(seq, _)| *seq != batch.seq)
            {
                self.over_limit = Some((batch.seq, reason));
            }
            s.metric = "0_over_limit".to_string();
            s.labels = Vec::new();
        }
    }

    /// Collects the parts of a batch; returns the batch once whole. A part out of
    /// place ends the stream (the source resends from the committed seq), and so do
    /// parts beyond `grpc.max_batch_bytes`.
    fn assemble(&mut self, batch: v1::Batch) -> Result<Option<v1::Batch>, ReceiverError> {
        let source_id = || self.live.id.clone();
        let Some(mut held) = self.parts.take() else {
            if batch.part != 0 {
                return Err(ReceiverError::PartWithoutStart {
                    source_id: source_id(),
                    part: batch.part,
                    seq: batch.seq,
                });
            }
            if !batch.more_parts {
                return Ok(Some(batch));
            }
            let bytes = batch.encoded_len();
            let mut first = batch;
            if first.seq <= self.live.committed() {
                // Already committed: it will be acked again, not merged; hold nothing.
                first.series.clear();
            }
            self.parts = Some(Parts {
                batch: first,
                next: 1,
                bytes,
            });
            return Ok(None);
        };
        if batch.seq != held.batch.seq || batch.part != held.next {
            return Err(ReceiverError::PartOutOfPlace {
                source_id: source_id(),
                expected_part: held.next,
                expected_seq: held.batch.seq,
                part: batch.part,
                seq: batch.seq,
            });
        }
        if batch.seq > self.live.committed() {
            held.bytes = held.bytes.saturating_add(batch.encoded_len());
            if held.bytes > self.max_batch_bytes {
                Stats::add(
                    &self.ingestor.ctx.stats.federation_oversized_messages_total,
                    1,
                );
                return Err(ReceiverError::BatchOverLimit {
                    source_id: source_id(),
                    seq: batch.seq,
                    limit: self.max_batch_bytes,
                });
            }
            held.batch.series.extend(batch.series);
        }
        if batch.more_parts {
            held.next += 1;
            self.parts = Some(held);
            return Ok(None);
        }
        held.batch.more_parts = false;
        Ok(Some(held.batch))
    }

    /// One whole batch: judged by its seq, merged, acked after commit.
    async fn on_batch(
        &mut self,
        batch: v1::Batch,
        ack_tx: &mpsc::Sender<Result<u64, String>>,
    ) -> Result<(), ReceiverError> {
        let seq = batch.seq;
        self.live.last_seen_ms.store(now_ms(), Ordering::Relaxed);
        if !self.judge(&batch).await? {
            return Ok(());
        }
        let live = &self.live;
        let progress = SourceProgress {
            source_id: live.id.clone(),
            epoch: self.epoch,
            seq,
            watermark_ms: batch.watermark_ms,
            last_seen_ms: now_ms(),
        };
        let ticket = Ticket::Source {
            progress,
            ack: ack_tx.clone(),
        };
        let over_limit = self
            .over_limit
            .take()
            .filter(|(at, _)| *at == seq)
            .map(|(_, reason)| reason);
        let increments = self.increments_of(&batch, over_limit).await?;
        let n = increments.len() as u64;
        live.set_received(seq);
        // The flush that commits this batch names it `source/seq`.
        let origin = Some(Arc::from(format!("{}/{seq}", live.id)));
        let submission = Submission {
            samples: Vec::new(),
            increments,
            ticket: Some(ticket),
            origin,
            // Increments forwarded from below move no watermark of this node.
            newest_event: None,
        };
        super::submit(&self.ingestor.pipeline, submission)
            .await
            .map_err(|_| ReceiverError::ShuttingDown)?;
        let stats = &self.ingestor.ctx.stats;
        live.batches.fetch_add(1, Ordering::Relaxed);
        live.increments.fetch_add(n, Ordering::Relaxed);
        Stats::add(&stats.federation_batches_total, 1);
        Stats::add(&stats.federation_increments_total, n);
        tracing::debug!(source = %live.id, epoch = self.epoch, seq, increments = n, "batch merged, ack after commit");
        Ok(())
    }

    /// Judges a batch by its seq ([`verdict`]): `true` to merge it; a
    /// duplicate is acked again and not merged (`false`); a seq out of order
    /// or refused ends the stream.
    async fn judge(&mut self, batch: &v1::Batch) -> Result<bool, ReceiverError> {
        let seq = batch.seq;
        let stats = &self.ingestor.ctx.stats;
        let live = &self.live;
        let incoming = Incoming {
            seq,
            follows_dropped: batch.follows_dropped,
            first_on_stream: std::mem::replace(&mut self.first_on_stream, false),
        };
        match verdict(live.committed(), live.received(), incoming) {
            Verdict::Duplicate => {
                live.duplicates.fetch_add(1, Ordering::Relaxed);
                Stats::add(&stats.federation_duplicates_total, 1);
                tracing::debug!(source = %live.id, epoch = self.epoch, seq, "duplicate batch acked again, not merged");
                self.out
                    .send(Ok(message(upstream_message::Msg::Ack(v1::Ack { seq }))))
                    .await
                    .map_err(|_| ReceiverError::StreamClosed)?;
                Ok(false)
            }
            Verdict::OutOfOrder { expected } => {
                Stats::add(&stats.federation_refused_seqs_total, 1);
                tracing::info!(source = %live.id, epoch = self.epoch, seq, expected, "batch out of order: ending the stream so the source resumes");
                Err(ReceiverError::OutOfOrder {
                    source_id: live.id.clone(),
                    expected,
                    seq,
                })
            }
            Verdict::Refused(refusal) => {
                Stats::add(&stats.federation_refused_seqs_total, 1);
                tracing::warn!(source = %live.id, epoch = self.epoch, seq, error = %refusal, "batch refused for its seq: nothing merged, ending the stream");
                self.ingestor.ctx.event(
                    EventKind::BatchSeqRefused,
                    format!("source {:?}: {refusal}", live.id),
                );
                Err(ReceiverError::SeqRefused {
                    source_id: live.id.clone(),
                    refusal,
                })
            }
            Verdict::Accept { lost } => {
                if lost > 0 {
                    tracing::warn!(
                        source = %live.id, epoch = self.epoch, first_missing = seq - lost, lost, seq,
                        "source dropped batches at its spool cap: they are lost"
                    );
                }
                Ok(true)
            }
        }
    }

    /// The increments of an accepted batch ([`Session::validate`]). A batch
    /// rejected whole (`over_limit`: it named a series over a `[limits]`
    /// size) is answered with a `Reject` and yields nothing: its seq still
    /// advances (with nothing merged) so the stream goes on with the next
    /// batch.
    async fn increments_of(
        &self,
        batch: &v1::Batch,
        over_limit: Option<String>,
    ) -> Result<Vec<strata_model::Increment>, ReceiverError> {
        let checked = match over_limit {
            Some(reason) => {
                Stats::add(&self.ingestor.ctx.stats.limit_refusals_total, 1);
                Err(reason)
            }
            None => self.validate(batch),
        };
        let reason = match checked {
            Ok(increments) => return Ok(increments),
            Err(reason) => reason,
        };
        let seq = batch.seq;
        Stats::add(
            &self.ingestor.ctx.stats.federation_rejected_batches_total,
            1,
        );
        tracing::warn!(source = %self.live.id, epoch = self.epoch, seq, error = %reason, "batch rejected");
        self.out
            .send(Ok(message(upstream_message::Msg::Reject(v1::Reject {
                seq,
                error: reason,
            }))))
            .await
            .map_err(|_| ReceiverError::StreamClosed)?;
        Ok(Vec::new())
    }

    /// Decodes and checks a batch. A batch that does not decode is rejected
    /// whole. Increments this node cannot merge (a metric of another kind, a
    /// histogram of another precision, an apdex of another threshold) are
    /// refused one by one, counted and logged, and the rest of the batch is
    /// merged: one region's conflicting metric must not cost every other
    /// series of that region.
    fn validate(&self, batch: &v1::Batch) -> Result<Vec<strata_model::Increment>, String> {
        let mut increments = self.known.decode(batch).map_err(|e| e.to_string())?;
        self.check_times(&increments)?;
        self.check_cardinality(&mut increments);
        let mut checks = BatchChecks {
            // A node that forwards refuses what it could never forward, like its own inputs.
            forwarding: self.ingestor.pipeline.settings().forwarding,
            ..BatchChecks::default()
        };
        let mut refused = 0u64;
        let mut keep = Vec::with_capacity(increments.len());
        for inc in increments {
            match self.problem_of(&inc, &mut checks) {
                None => {
                    checks.fits = Some(inc.series.clone());
                    keep.push(inc);
                }
                Some(reason) => {
                    refused += 1;
                    if refused <= 5 {
                        tracing::warn!(source = %self.live.id, series = %inc.series, %reason, "increment refused");
                    }
                }
            }
        }
        if refused > 0 {
            Stats::add(
                &self.ingestor.ctx.stats.federation_refused_increments_total,
                refused,
            );
            self.ingestor.ctx.event(
                EventKind::IncrementsRefused,
                format!(
                    "source {:?}: {refused} increments could not be merged here ({})",
                    self.live.id,
                    checks
                        .refused_metrics
                        .values()
                        .next()
                        .or(checks.oversized.as_ref())
                        .map_or("histogram precision", String::as_str)
                ),
            );
        }
        self.drop_late(batch.watermark_ms, &mut keep);
        Ok(keep)
    }

    /// Refuses a batch holding a minute before 1970 or further ahead of this
    /// node's clock than the future bound allows (its minute may start up to
    /// `max_future_s` ahead): no source's clock runs there.
    fn check_times(&self, increments: &[strata_model::Increment]) -> Result<(), String> {
        let now = now_ms();
        let settings = &self.ingestor.settings;
        let newest = now.saturating_add(settings.max_future_ms);
        let Some(inc) = increments
            .iter()
            .find(|inc| inc.bucket_ms < 0 || inc.bucket_ms > newest)
        else {
            return Ok(());
        };
        let series = crate::core::limits::abbreviated(&inc.series.to_string());
        if inc.bucket_ms < 0 {
            return Err(format!(
                "series {series}: bucket_ms {} is before 1970",
                inc.bucket_ms
            ));
        }
        Stats::add(&self.ingestor.ctx.stats.future_samples_total, 1);
        Err(format!(
            "series {series}: bucket_ms {} is in the future: more than {} s ({}) ahead of this node's clock ({now})",
            inc.bucket_ms,
            settings.max_future_ms / 1000,
            self.ingestor.limits.max_future_key,
        ))
    }

    /// Admits the distinct series of a batch into the source's cardinality
    /// budget. Over the budget, the increments of the batch's new series are
    /// refused (counted, and the refusal reported as for ingest) and those of
    /// series the source already has are kept.
    fn check_cardinality(&self, increments: &mut Vec<strata_model::Increment>) {
        let mut last: Option<&Arc<strata_model::SeriesKey>> = None;
        let distinct = increments.iter().filter_map(|inc| {
            // Increments of one series come together: skip its repeats cheaply.
            let repeat = last.is_some_and(|l| Arc::ptr_eq(l, &inc.series));
            last = Some(&inc.series);
            (!repeat).then_some(&*inc.series)
        });
        let cardinality = &self.ingestor.cardinality;
        if let Err(e) = cardinality.admit(&self.live.id, distinct, now_ms()) {
            self.ingestor.cardinality_refused(&e);
            let dropped = cardinality.retain_known(&self.live.id, increments, now_ms());
            Stats::add(
                &self.ingestor.ctx.stats.federation_refused_increments_total,
                dropped as u64,
            );
            tracing::debug!(source = %self.live.id, dropped, "increments of new series refused; the batch's other series are merged");
        }
    }

    /// Why this node cannot merge `inc`, if it cannot: a histogram of another
    /// precision, an increment it could never forward, or a metric the
    /// registry refuses (another kind, another apdex threshold).
    fn problem_of(
        &self,
        inc: &strata_model::Increment,
        checks: &mut BatchChecks,
    ) -> Option<String> {
        let metric = inc.series.metric();
        if let State::Histogram(h) = &inc.state
            && h.sigfig() != self.histogram_sigfig
        {
            return Some(format!(
                "histogram has {} significant digits, this node merges {}",
                h.sigfig(),
                self.histogram_sigfig
            ));
        }
        if checks.forwarding
            && !checks
                .fits
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &inc.series))
            && let Err(reason) = self.limits.check(&inc.series, inc.state.kind())
        {
            checks.oversized = Some(reason.clone());
            return Some(reason);
        }
        if let Some(reason) = checks.refused_metrics.get(metric) {
            return Some(reason.clone());
        }
        let threshold = match &inc.state {
            State::Apdex(a) => Some(a.threshold),
            _ => None,
        };
        let kind = inc.state.kind();
        if threshold.is_none() && checks.checked.get(metric) == Some(&kind) {
            return None;
        }
        match self.ingestor.registry.admit([(metric, kind, threshold)]) {
            Ok(()) => {
                checks.checked.insert(metric.to_owned(), kind);
                None
            }
            Err(conflict) => {
                checks
                    .refused_metrics
                    .insert(metric.to_string(), conflict.to_string());
                Some(conflict.to_string())
            }
        }
    }

    /// Drops the increments late relative to the source's own watermark:
    /// such a bucket was closed at the source long ago. A backlog after an
    /// outage is not late.
    fn drop_late(&self, watermark_ms: i64, keep: &mut Vec<strata_model::Increment>) {
        // Saturating: both come from the network and may be anything.
        let oldest_end = watermark_ms.saturating_sub(self.ingestor.settings.allowed_lateness_ms);
        let before = keep.len();
        keep.retain(|inc| inc.bucket_ms.saturating_add(MINUTE_MS) > oldest_end);
        let late = before - keep.len();
        if late > 0 {
            Stats::add(&self.ingestor.ctx.stats.late_samples_total, late as u64);
            tracing::warn!(source = %self.live.id, late, "late increments dropped");
        }
    }
}

/// What [`Session::validate`] learns across the increments of one batch, so
/// that each metric and series is checked once.
#[derive(Default)]
struct BatchChecks {
    /// The node forwards: increments it could never forward are refused.
    forwarding: bool,
    /// Metrics the registry refused in this batch, with why: their other
    /// increments are refused alike.
    refused_metrics: HashMap<String, String>,
    /// Metrics the registry admitted in this batch, with the kind (the
    /// registry fixes one per metric): looked up by name for every
    /// increment, with no copy of the name.
    checked: foldhash::HashMap<String, Kind>,
    /// The series of the last increment kept: the next one of the same
    /// series needs no size check.
    fits: Option<Arc<strata_model::SeriesKey>>,
    /// Why an increment was too large to forward, for the event.
    oversized: Option<String>,
}

/// Whether `status` is tonic's refusal of a message over the decoding limit.
fn is_over_limit(status: &Status) -> bool {
    status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
}

/// A message over this node's limit, as the sender should see it: an error
/// naming the limit and its key (tonic's own refusal would otherwise end the
/// stream quietly). `status` is tonic's refusal ([`is_over_limit`]).
fn over_limit(status: &Status, limit: usize) -> ReceiverError {
    // tonic says "... found N bytes, the limit is: L bytes".
    let found = status
        .message()
        .split("found ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    tracing::warn!(limit, found, "message over the limit refused");
    ReceiverError::MessageOverLimit { found, limit }
}
