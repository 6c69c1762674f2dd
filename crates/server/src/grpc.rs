//! gRPC inputs: native batched ingest and the federation receiver.
//!
//! The receiver authenticates each source, refuses a second live stream for a
//! connected id, tells the source where to resume (its highest committed seq),
//! drops batches it has already committed (acking them again) and acks every
//! other batch only after the flush holding it is committed. A batch sent in
//! parts is held until its last part and then handled whole; a message over
//! `grpc.max_message_bytes` ends the stream with a status naming the limit.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message as _;
use strata_model::{Kind, MINUTE_MS, SampleValue, State};
use strata_proto::v1::{
    self, federation_server::Federation, ingest_server::Ingest, source_message, upstream_message,
};
use strata_store::SourceProgress;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::delivery::{Incoming, MAX_SEQ, Verdict, verdict};
use crate::ingest::{IngestError, Ingestor, RawPoint, RawSeries};
use crate::limits::MessageLimits;
use crate::pipeline::{Ticket, now_ms};
use crate::sources::{SourceLive, epoch_fingerprint};
use crate::stats::Stats;

/// Maps input errors to gRPC statuses, in one place.
pub fn status_of(e: &IngestError) -> Status {
    match e {
        IngestError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        IngestError::Busy => retry_later(Status::resource_exhausted(e.to_string())),
        IngestError::Stopping => retry_later(Status::unavailable(e.to_string())),
        IngestError::CommitFailed(_) => Status::internal(e.to_string()),
    }
}

/// Adds the retry hint the forwarder and clients honour.
fn retry_later(mut status: Status) -> Status {
    status.metadata_mut().insert(
        "retry-after-ms",
        tonic::metadata::MetadataValue::from_static("1000"),
    );
    status
}

/// Native ingest service.
pub struct IngestService {
    pub ingestor: Arc<Ingestor>,
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn push(
        &self,
        request: Request<v1::PushRequest>,
    ) -> Result<Response<v1::PushResponse>, Status> {
        let req = request.into_inner();
        let mut input = Vec::with_capacity(req.series.len());
        let mut point = 0usize;
        for s in req.series {
            let kind = strata_proto::kind_from_wire(s.kind).map_err(|e| {
                self.ingestor.count_rejected();
                Status::invalid_argument(format!("series {:?}: {e}", s.metric))
            })?;
            let points = s
                .points
                .iter()
                .map(|p| {
                    point += 1;
                    let value = match kind {
                        Kind::Percent => SampleValue::Flag(p.value != 0.0),
                        Kind::Counter if p.value == 0.0 => SampleValue::Number(1.0),
                        _ => SampleValue::Number(p.value),
                    };
                    RawPoint {
                        line: point,
                        ts_ms: (p.ts_ms != 0).then_some(p.ts_ms),
                        value,
                    }
                })
                .collect();
            input.push(RawSeries {
                metric: s.metric,
                kind,
                labels: s.labels.into_iter().map(|l| (l.name, l.value)).collect(),
                threshold: (s.apdex_threshold != 0.0).then_some(s.apdex_threshold),
                points,
            });
        }
        if point == 0 {
            self.ingestor.count_rejected();
            return Err(Status::invalid_argument("no samples in request"));
        }
        let items = self.ingestor.prepare(input).map_err(|e| {
            self.ingestor.count_rejected();
            // Points are numbered across the request, 1-based.
            match e {
                IngestError::Invalid {
                    message,
                    line: Some(n),
                } => Status::invalid_argument(format!("point {n}: {message}")),
                other => status_of(&other),
            }
        })?;
        let accepted = self
            .ingestor
            .submit(items, req.wait_commit)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(v1::PushResponse {
            accepted: accepted as u64,
        }))
    }
}

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

    async fn stream(
        &self,
        request: Request<Streaming<v1::SourceMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let stats = self.ingestor.pipeline.stats.clone();
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Ok(Ok(Some(v1::SourceMessage {
                msg: Some(source_message::Msg::Hello(h)),
            }))) => h,
            Ok(Err(status)) if is_over_limit(&status) => {
                Stats::add(&stats.federation_oversized_messages_total, 1);
                return Err(over_limit(status, self.limits.own()));
            }
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no hello within 10 s")),
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message must be a hello",
                ));
            }
        };
        let sources = &self.ingestor.pipeline.sources;
        let pipeline = &self.ingestor.pipeline;
        let refuse = |status: Status| {
            Stats::add(&stats.federation_refused_streams_total, 1);
            tracing::warn!(source = %hello.source_id, error = %status.message(), "federation stream refused");
            pipeline.event(
                "source_refused",
                format!("source {:?}: {}", hello.source_id, status.message()),
            );
            status
        };
        let Some(token) = sources.token_of(&hello.source_id) else {
            return Err(refuse(Status::permission_denied(format!(
                "source {:?} is not a declared downstream of {}",
                hello.source_id, self.node_id
            ))));
        };
        if !constant_time_eq(token.as_bytes(), hello.token.as_bytes()) {
            return Err(refuse(Status::unauthenticated(format!(
                "bad token for source {:?}",
                hello.source_id
            ))));
        }
        if hello.epoch == 0 {
            return Err(refuse(Status::invalid_argument("epoch must not be 0")));
        }
        let live = sources
            .get(&hello.source_id)
            .ok_or_else(|| Status::internal("declared source has no live state"))?;
        let claim = live.claim().ok_or_else(|| {
            refuse(Status::already_exists(format!(
                "source {:?} is already connected: node ids must be unique",
                hello.source_id
            )))
        })?;
        // Batches of a previous stream may still be on their way to the store:
        // wait for them so the resume point is exact.
        if tokio::time::timeout(Duration::from_secs(30), live.drained())
            .await
            .is_err()
        {
            return Err(retry_later(Status::unavailable(
                "previous stream still committing, retry",
            )));
        }
        // Events are readable over HTTP: they name epochs by fingerprint only,
        // since an epoch together with the token is what continues a stream.
        if live.epoch() != hello.epoch {
            if live.epoch() != 0 {
                tracing::warn!(source = %live.id, old = live.epoch(), new = hello.epoch, "source starts a new epoch: it lost its durable state");
                pipeline.event(
                    "source_new_epoch",
                    format!(
                        "source {:?} came back with epoch {} (was {}): it lost its durable state",
                        live.id,
                        epoch_fingerprint(hello.epoch),
                        epoch_fingerprint(live.epoch())
                    ),
                );
            }
            live.reset_epoch(hello.epoch);
        } else if live.committed() > MAX_SEQ {
            // Only a version without seq limits could have committed this
            // (a forged seq): no real source can resume after it.
            tracing::warn!(source = %live.id, epoch = hello.epoch, committed_seq = live.committed(), max_seq = MAX_SEQ, "source's committed seq is beyond any real seq: restarting its epoch's count");
            pipeline.event(
                "source_seq_reset",
                format!(
                    "source {:?}: committed seq {} is beyond any real seq; counting restarts at 0",
                    live.id,
                    live.committed()
                ),
            );
            live.reset_epoch(hello.epoch);
        }
        let committed = live.committed();
        live.last_seen_ms.store(now_ms(), Ordering::Relaxed);
        tracing::info!(source = %live.id, epoch = hello.epoch, committed_seq = committed, "source connected");
        pipeline.event(
            "source_connected",
            format!(
                "source {:?} connected (epoch {}, resuming after seq {committed})",
                live.id,
                epoch_fingerprint(hello.epoch)
            ),
        );
        let (out_tx, out_rx) = mpsc::channel::<Result<v1::UpstreamMessage, Status>>(64);
        let _ = out_tx
            .send(Ok(message(upstream_message::Msg::Welcome(v1::Welcome {
                committed_seq: committed,
                upstream_id: self.node_id.clone(),
                max_message_bytes: self.limits.own() as u64,
            }))))
            .await;
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
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _claim = claim;
            session.run(inbound, shutdown).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
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
                _ = shutdown.cancelled() => break Some(retry_later(Status::unavailable("upstream is shutting down"))),
                ack = ack_rx.recv() => match ack {
                    Some(Ok(seq)) => {
                        if self.out.send(Ok(message(upstream_message::Msg::Ack(v1::Ack { seq })))).await.is_err() {
                            break None;
                        }
                    }
                    Some(Err(e)) => break Some(retry_later(Status::unavailable(e))),
                    None => break None,
                },
                msg = inbound.message() => match msg {
                    Ok(Some(v1::SourceMessage { msg: Some(source_message::Msg::Batch(batch)) })) => {
                        if let Err(status) = self.on_message(batch, &ack_tx).await {
                            break Some(status);
                        }
                    }
                    Ok(Some(_)) => break Some(Status::invalid_argument("unexpected message after hello")),
                    Ok(None) => break None,
                    Err(status) if is_over_limit(&status) => {
                        Stats::add(&self.ingestor.pipeline.stats.federation_oversized_messages_total, 1);
                        break Some(over_limit(status, self.limits.own()));
                    }
                    Err(status) => {
                        tracing::debug!(source = %self.live.id, error = %status, "source stream broke");
                        break None;
                    }
                },
            }
        };
        let reason = match end {
            Some(status) => {
                tracing::info!(source = %self.live.id, reason = %status.message(), "ending source stream");
                let reason = status.message().to_string();
                let _ = self.out.send(Err(status)).await;
                reason
            }
            None => {
                tracing::info!(source = %self.live.id, "source disconnected");
                "the source closed the stream".to_string()
            }
        };
        self.ingestor.pipeline.event(
            "source_disconnected",
            format!("source {:?} disconnected: {reason}", self.live.id),
        );
    }

    /// One batch message: a whole batch, or one of its parts.
    async fn on_message(
        &mut self,
        batch: v1::Batch,
        ack_tx: &mpsc::Sender<Result<u64, String>>,
    ) -> Result<(), Status> {
        // Every message the stream carries defines series, in stream order,
        // duplicates and parts included.
        if let Err(e) = self.known.learn(&batch) {
            return Err(Status::invalid_argument(format!(
                "source {:?}, batch {}: {e}",
                self.live.id, batch.seq
            )));
        }
        match self.assemble(batch)? {
            Some(whole) => self.on_batch(whole, ack_tx).await,
            None => Ok(()),
        }
    }

    /// Collects the parts of a batch; returns the batch once whole. A part out of
    /// place ends the stream (the source resends from the committed seq), and so do
    /// parts beyond `grpc.max_batch_bytes`.
    fn assemble(&mut self, batch: v1::Batch) -> Result<Option<v1::Batch>, Status> {
        let source = &self.live.id;
        let Some(mut held) = self.parts.take() else {
            if batch.part != 0 {
                return Err(Status::invalid_argument(format!(
                    "source {source:?}: part {} of batch {} came without the parts before it",
                    batch.part, batch.seq
                )));
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
            return Err(Status::invalid_argument(format!(
                "source {source:?}: expected part {} of batch {}, got part {} of batch {}",
                held.next, held.batch.seq, batch.part, batch.seq
            )));
        }
        if batch.seq > self.live.committed() {
            held.bytes = held.bytes.saturating_add(batch.encoded_len());
            if held.bytes > self.max_batch_bytes {
                Stats::add(
                    &self
                        .ingestor
                        .pipeline
                        .stats
                        .federation_oversized_messages_total,
                    1,
                );
                return Err(Status::resource_exhausted(format!(
                    "source {source:?}: batch {} in parts is over {} bytes, this node's limit (grpc.max_batch_bytes)",
                    batch.seq, self.max_batch_bytes
                )));
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
    ) -> Result<(), Status> {
        let seq = batch.seq;
        let stats = &self.ingestor.pipeline.stats;
        let live = &self.live;
        live.last_seen_ms.store(now_ms(), Ordering::Relaxed);
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
                return self
                    .out
                    .send(Ok(message(upstream_message::Msg::Ack(v1::Ack { seq }))))
                    .await
                    .map_err(|_| Status::cancelled("stream closed"));
            }
            Verdict::OutOfOrder { expected } => {
                Stats::add(&stats.federation_refused_seqs_total, 1);
                tracing::info!(source = %live.id, epoch = self.epoch, seq, expected, "batch out of order: ending the stream so the source resumes");
                return Err(Status::failed_precondition(format!(
                    "source {:?}: expected seq {expected}, got {seq}; reconnect to resume",
                    live.id
                )));
            }
            Verdict::Refused(refusal) => {
                Stats::add(&stats.federation_refused_seqs_total, 1);
                tracing::warn!(source = %live.id, epoch = self.epoch, seq, error = %refusal, "batch refused for its seq: nothing merged, ending the stream");
                self.ingestor.pipeline.event(
                    "batch_seq_refused",
                    format!("source {:?}: {refusal}", live.id),
                );
                return Err(Status::failed_precondition(format!(
                    "source {:?}: {refusal}",
                    live.id
                )));
            }
            Verdict::Accept { lost } if lost > 0 => {
                tracing::warn!(
                    source = %live.id, epoch = self.epoch, first_missing = seq - lost, lost, seq,
                    "source dropped batches at its spool cap: they are lost"
                );
            }
            Verdict::Accept { .. } => {}
        }
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
        let increments = match self.validate(&batch) {
            Ok(incs) => incs,
            Err(reason) => {
                // Rejected whole: its seq still advances (with nothing merged) so
                // the stream goes on with the next batch.
                Stats::add(&stats.federation_rejected_batches_total, 1);
                tracing::warn!(source = %live.id, epoch = self.epoch, seq, error = %reason, "batch rejected");
                self.out
                    .send(Ok(message(upstream_message::Msg::Reject(v1::Reject {
                        seq,
                        error: reason,
                    }))))
                    .await
                    .map_err(|_| Status::cancelled("stream closed"))?;
                Vec::new()
            }
        };
        let n = increments.len() as u64;
        live.set_received(seq);
        let pipeline = self.ingestor.pipeline.clone();
        tokio::task::spawn_blocking(move || pipeline.submit(Vec::new(), increments, Some(ticket)))
            .await
            .map_err(|_| Status::unavailable("upstream is shutting down"))?
            .map_err(|_| retry_later(Status::unavailable("upstream is shutting down")))?;
        live.batches.fetch_add(1, Ordering::Relaxed);
        live.increments.fetch_add(n, Ordering::Relaxed);
        Stats::add(&stats.federation_batches_total, 1);
        Stats::add(&stats.federation_increments_total, n);
        tracing::debug!(source = %live.id, epoch = self.epoch, seq, increments = n, "batch merged, ack after commit");
        Ok(())
    }

    /// Decodes and checks a batch. A batch that does not decode is rejected
    /// whole. Increments this node cannot merge (a metric of another kind, a
    /// histogram of another precision, an apdex of another threshold) are
    /// refused one by one, counted and logged, and the rest of the batch is
    /// merged: one region's conflicting metric must not cost every other
    /// series of that region.
    fn validate(&self, batch: &v1::Batch) -> Result<Vec<strata_model::Increment>, String> {
        let increments = self.known.decode(batch).map_err(|e| e.to_string())?;
        let stats = &self.ingestor.pipeline.stats;
        let mut refused_metrics: HashMap<String, String> = HashMap::new();
        let mut checked: HashSet<(String, Kind)> = HashSet::new();
        let mut refused = 0u64;
        let mut keep = Vec::with_capacity(increments.len());
        // A node that forwards refuses what it could never forward, like its own inputs.
        let forwarding = self.ingestor.pipeline.settings().forwarding;
        let mut fits: Option<Arc<strata_model::SeriesKey>> = None;
        let mut oversized: Option<String> = None;
        for inc in increments {
            let metric = inc.series.metric();
            let problem = if let State::Histogram(h) = &inc.state
                && h.sigfig() != self.histogram_sigfig
            {
                Some(format!(
                    "histogram has {} significant digits, this node merges {}",
                    h.sigfig(),
                    self.histogram_sigfig
                ))
            } else if forwarding
                && !fits.as_ref().is_some_and(|s| Arc::ptr_eq(s, &inc.series))
                && let Err(reason) = self.limits.check(&inc.series, inc.state.kind())
            {
                oversized = Some(reason.clone());
                Some(reason)
            } else if let Some(reason) = refused_metrics.get(metric) {
                Some(reason.clone())
            } else {
                let threshold = match &inc.state {
                    State::Apdex(a) => Some(a.threshold),
                    _ => None,
                };
                let kind = inc.state.kind();
                if threshold.is_none() && checked.contains(&(metric.to_string(), kind)) {
                    None
                } else {
                    match self.ingestor.registry.admit([(metric, kind, threshold)]) {
                        Ok(()) => {
                            checked.insert((metric.to_string(), kind));
                            None
                        }
                        Err(conflict) => {
                            refused_metrics.insert(metric.to_string(), conflict.to_string());
                            Some(conflict.to_string())
                        }
                    }
                }
            };
            match problem {
                None => {
                    fits = Some(inc.series.clone());
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
            Stats::add(&stats.federation_refused_increments_total, refused);
            self.ingestor.pipeline.event(
                "increments_refused",
                format!(
                    "source {:?}: {refused} increments could not be merged here ({})",
                    self.live.id,
                    refused_metrics
                        .values()
                        .next()
                        .or(oversized.as_ref())
                        .map_or("histogram precision", String::as_str)
                ),
            );
        }
        // Late relative to the source's own watermark: such a bucket was closed
        // at the source long ago. A backlog after an outage is not late.
        // Saturating: both come from the network and may be anything.
        let oldest_end = batch
            .watermark_ms
            .saturating_sub(self.ingestor.settings.allowed_lateness_ms);
        let before = keep.len();
        keep.retain(|inc| inc.bucket_ms.saturating_add(MINUTE_MS) > oldest_end);
        let late = before - keep.len();
        if late > 0 {
            Stats::add(&stats.late_samples_total, late as u64);
            tracing::warn!(source = %self.live.id, late, "late increments dropped");
        }
        Ok(keep)
    }
}

/// Whether `status` is tonic's refusal of a message over the decoding limit.
fn is_over_limit(status: &Status) -> bool {
    status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
}

/// A message over this node's limit, as the sender should see it: a status naming
/// the limit and its key (tonic's own refusal would otherwise end the stream
/// quietly). Other statuses pass through.
fn over_limit(status: Status, limit: usize) -> Status {
    if !is_over_limit(&status) {
        return status;
    }
    // tonic says "... found N bytes, the limit is: L bytes".
    let found = status
        .message()
        .split("found ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    let what = match found {
        Some(n) => format!("a message of {n} bytes"),
        None => "a message".to_string(),
    };
    tracing::warn!(limit, found, "message over the limit refused");
    Status::resource_exhausted(format!(
        "{what} is over this node's limit of {limit} bytes (grpc.max_message_bytes); batches larger than the limit announced in the welcome must be sent in parts"
    ))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
