//! Federation forwarder: streams the spool to the upstream tier.
//!
//! Every commit appends the flush's increments to the spool with the next
//! `seq`. The forwarder keeps one bidirectional stream to the upstream: it
//! says hello with this node's id and epoch, learns the highest seq the
//! upstream has committed and the largest message it accepts, drops those
//! from the spool, and sends the rest in order with at most
//! `max_inflight_batches` unacknowledged. Acks delete batches from the spool.
//! Any break reconnects with exponential backoff and jitter, and resumes from
//! what the upstream says it has.
//!
//! **Batch parts.** A spooled batch whose encoding is larger than the smaller
//! of this node's and the upstream's `grpc.max_message_bytes` goes out as
//! several messages sharing its seq (`part`, `more_parts`). The upstream
//! commits a seq only whole and acks it once, so a spool batch stays the unit
//! of exactly-once delivery: a crash or a break mid-batch leaves it unacked and
//! it is sent again, whole, cut for the limits of the next stream. An
//! increment that does not fit in one message even alone (inputs refuse such
//! series, so only a limit lowered after admission gets here) is left out,
//! counted and logged, so it cannot hold back everything behind it.
//!
//! **TLS.** An `https://` endpoint is reached over TLS only (tonic refuses
//! it without a TLS config rather than connect in plaintext): the upstream's
//! certificate is verified against `upstream.ca_file`, else the system's
//! roots, and `upstream.cert_file` / `key_file` are presented when set. The
//! files are read at every connection ([`crate::net::tls::upstream_client_tls`]),
//! so rotated ones are used from the next reconnect; one that cannot be read
//! fails the stream like any other error, naming its key.
//!
//! **Health.** A stream that ends in an error before the upstream acknowledged
//! anything new marks the forwarder as failing: `/health` shows it Degraded
//! with the reason, and KO once it has failed for [`ForwarderState::ko_after`].
//! An ack that advances, or an upstream that has everything, ends it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message as _;
use rand::Rng;
use strata_proto::v1::{
    self, federation_client::FederationClient, source_message, upstream_message,
};
use strata_store::{EventKind, SpoolBatch};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::UpstreamConfig;
use crate::context::Context;
use crate::core::health::Health;
use crate::core::limits::MessageLimits;
use crate::core::stats::Stats;
use crate::inputs::delivery::SendWindow;

/// What the forwarder shows to health checks and the API.
#[derive(Debug)]
pub struct ForwarderState {
    pub connected: bool,
    pub upstream_id: String,
    /// Why the last stream failed (kept while failing, for `/health`).
    pub last_error: Option<String>,
    /// Since when streams keep failing without progress; `None` while delivering.
    pub failing_since: Option<Instant>,
    /// Streams that failed since `failing_since`.
    pub failures: u64,
    /// How long failing may last before health says KO: three attempts at the
    /// longest backoff, and at least 10 s.
    pub ko_after: Duration,
    /// The last increment left out as too large for one message, and when.
    pub last_oversized: Option<(Instant, String)>,
}

/// How long a left-out oversized increment keeps the forwarder Degraded.
const OVERSIZED_DEGRADED_FOR: Duration = Duration::from_secs(600);

impl ForwarderState {
    pub fn new(config: &UpstreamConfig) -> ForwarderState {
        ForwarderState {
            connected: false,
            upstream_id: String::new(),
            last_error: None,
            failing_since: None,
            failures: 0,
            ko_after: Duration::from_millis(config.max_backoff_ms.saturating_mul(3))
                .max(Duration::from_secs(10)),
            last_oversized: None,
        }
    }

    /// Status and detail for `/health`, given the spooled batches.
    pub fn check(&self, spooled: u64, now: Instant) -> (Health, String) {
        if let Some(since) = self.failing_since {
            let failing_for = now.saturating_duration_since(since);
            let error = self.last_error.as_deref().unwrap_or("unknown error");
            let detail = format!(
                "failing for {} s ({} failed streams, {}): {error}; {spooled} batches spooled",
                failing_for.as_secs(),
                self.failures,
                if self.connected {
                    "connected again"
                } else {
                    "disconnected"
                },
            );
            let status = if failing_for >= self.ko_after {
                Health::Ko
            } else {
                Health::Degraded
            };
            return (status, detail);
        }
        if !self.connected {
            return (
                Health::Degraded,
                format!("connecting, {spooled} batches spooled"),
            );
        }
        if let Some((at, what)) = &self.last_oversized
            && now.saturating_duration_since(*at) < OVERSIZED_DEGRADED_FOR
        {
            return (
                Health::Degraded,
                format!(
                    "connected to {}, {spooled} batches spooled; {} s ago {what}",
                    self.upstream_id,
                    now.saturating_duration_since(*at).as_secs()
                ),
            );
        }
        (
            Health::Ok,
            format!(
                "connected to {}, {spooled} batches spooled",
                self.upstream_id
            ),
        )
    }

    /// Records a failed stream.
    fn failed(&mut self, error: String) {
        self.connected = false;
        self.last_error = Some(error);
        self.failures += 1;
        self.failing_since.get_or_insert_with(Instant::now);
    }

    /// Records progress: the upstream acknowledged more, or has everything.
    fn delivering(&mut self) {
        self.failing_since = None;
        self.failures = 0;
        self.last_error = None;
    }
}

/// A running forwarder.
pub struct Forwarder {
    pub config: UpstreamConfig,
    pub node_id: String,
    pub epoch: u64,
    /// This node's message limit; the upstream's is recorded here at each Welcome
    /// (inputs check new series against both).
    pub limits: Arc<MessageLimits>,
    /// The spool it reads and acks, the counters it bumps, the events it
    /// records.
    pub ctx: Arc<Context>,
    /// Last committed spool seq.
    pub spool_seq: watch::Receiver<u64>,
    /// Highest seq the upstream acknowledged.
    pub acked: watch::Sender<u64>,
    pub state: Arc<Mutex<ForwarderState>>,
}

/// How long unacknowledged batches may wait before the stream is presumed
/// stuck and replaced (the next stream resumes from the upstream's commit).
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// With its causes: a TLS failure says why (`invalid peer certificate:
    /// UnknownIssuer`), not only "transport error".
    #[error("connect: {}", error_chain(.0))]
    Connect(#[from] tonic::transport::Error),
    /// A TLS file of `[upstream]` that cannot be used (named with its key).
    #[error("{0}")]
    Tls(#[from] crate::net::tls::TlsFileError),
    /// The message, and the transport's causes when the stream broke (a TLS
    /// alert from an upstream that refused this node's certificate).
    #[error("upstream: {}", status_text(.0))]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Protocol(String),
    #[error("store: {0}")]
    Store(String),
}

/// A status's message, followed by its sources.
fn status_text(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!("{}: {}", status.message(), error_chain(source)),
        None => status.message().to_owned(),
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// One open stream to the upstream and where its sending stands.
struct Link {
    /// Messages to the upstream; bounded by the in-flight window.
    tx: mpsc::Sender<v1::SourceMessage>,
    /// Acks and rejects from the upstream.
    inbound: tonic::Streaming<v1::UpstreamMessage>,
    /// Sent and acknowledged seqs on this stream.
    window: SendWindow,
    /// Series named on this stream so far (each is sent by name once).
    refs: strata_proto::SeriesRefs,
    /// The link's message limit and whose it is; `None`: whole batches only.
    wire_limit: Option<(usize, &'static str)>,
    /// When the last ack came (or sending resumed after an idle window).
    last_ack: tokio::time::Instant,
}

impl Link {
    /// Sends one message; if the upstream ended the stream meanwhile, its
    /// status says why.
    async fn send(&mut self, wire: v1::Batch) -> Result<(), SessionError> {
        let msg = v1::SourceMessage {
            msg: Some(source_message::Msg::Batch(wire)),
        };
        if self.tx.send(msg).await.is_ok() {
            return Ok(());
        }
        let why = tokio::time::timeout(Duration::from_secs(1), self.inbound.message());
        Err(match why.await {
            Ok(Err(status)) => status.into(),
            _ => SessionError::Protocol("stream closed while sending".into()),
        })
    }
}

impl Forwarder {
    /// Runs until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        let min = Duration::from_millis(self.config.min_backoff_ms);
        let max = Duration::from_millis(self.config.max_backoff_ms);
        let mut backoff = min;
        while !stop.is_cancelled() {
            let Err(e) = self.session(&stop).await else {
                return;
            };
            {
                let mut st = self.state.lock();
                // A stream that delivered something starts the backoff afresh.
                if st.failing_since.is_none() {
                    backoff = min;
                }
                st.failed(e.to_string());
            }
            tracing::warn!(upstream = %self.config.endpoint, error = %e, retry_in_ms = backoff.as_millis() as u64, "upstream stream failed");
            // Full jitter over the upper half keeps many sources from reconnecting in step.
            let jittered = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(jittered) => {}
            }
            backoff = backoff.saturating_mul(2).min(max);
        }
    }

    /// One stream, until it fails; `Ok` when stopped.
    async fn session(&mut self, stop: &CancellationToken) -> Result<(), SessionError> {
        let Some(mut link) = self.open(stop).await? else {
            return Ok(());
        };
        let max_inflight = self.config.max_inflight_batches;
        loop {
            // Fill the window from the spool.
            let room = link.window.room(max_inflight);
            if room > 0 && link.window.sent < *self.spool_seq.borrow() {
                self.send_from_spool(&mut link, room).await?;
                continue;
            }
            let waiting_for_ack = link.window.sent > link.window.acked;
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(link.last_ack + ACK_TIMEOUT), if waiting_for_ack => {
                    return Err(SessionError::Protocol(format!(
                        "no ack for {} s with seqs {}..={} in flight",
                        ACK_TIMEOUT.as_secs(), link.window.acked + 1, link.window.sent
                    )));
                }
                changed = self.spool_seq.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                m = link.inbound.message() => self.on_upstream_message(&mut link, m?).await?,
            }
        }
    }

    /// Connects, says Hello, and resumes after what the Welcome says the
    /// upstream committed; `None` when stopped meanwhile.
    ///
    /// An `https://` endpoint is reached over TLS only, verified against
    /// `upstream.ca_file` (else the system's roots), presenting
    /// `upstream.cert_file` when set; the files are read again at every
    /// connection, so rotated ones are picked up at the next reconnect.
    /// Without a TLS config tonic refuses an `https://` endpoint rather
    /// than connect in plaintext.
    async fn open(&mut self, stop: &CancellationToken) -> Result<Option<Link>, SessionError> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.config.endpoint.clone())?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
        // Files (and the system's roots) are read off the async threads.
        let config = self.config.clone();
        let endpoint = tokio::task::spawn_blocking(move || {
            match crate::net::tls::upstream_client_tls(&config)? {
                Some(tls) => Ok::<_, SessionError>(endpoint.tls_config(tls)?),
                None => Ok(endpoint),
            }
        })
        .await
        .map_err(|e| SessionError::Protocol(format!("preparing the connection: {e}")))??;
        let channel = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            c = endpoint.connect() => c?,
        };
        let own_limit = self.limits.own();
        let mut client = FederationClient::new(channel)
            .max_decoding_message_size(own_limit)
            .max_encoding_message_size(own_limit);
        let (tx, rx) = mpsc::channel::<v1::SourceMessage>(self.config.max_inflight_batches + 1);
        let hello = v1::Hello {
            source_id: self.node_id.clone(),
            epoch: self.epoch,
            token: self.config.token.clone(),
        };
        let _ = tx
            .send(v1::SourceMessage {
                msg: Some(source_message::Msg::Hello(hello)),
            })
            .await;
        let mut inbound = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let welcome = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            m = tokio::time::timeout(Duration::from_secs(60), inbound.message()) => match m {
                Ok(Ok(Some(v1::UpstreamMessage { msg: Some(upstream_message::Msg::Welcome(w)) }))) => w,
                Ok(Err(status)) => return Err(status.into()),
                Ok(Ok(_)) => return Err(SessionError::Protocol("upstream did not answer hello with welcome".into())),
                Err(_) => return Err(SessionError::Protocol("no welcome within 60 s".into())),
            },
        };
        let (window, wire_limit) = self.resume(&welcome).await?;
        Ok(Some(Link {
            tx,
            inbound,
            window,
            refs: strata_proto::SeriesRefs::default(),
            wire_limit,
            last_ack: tokio::time::Instant::now(),
        }))
    }

    /// Takes the Welcome in: the send window resumes after the upstream's
    /// committed seq, acknowledged batches leave the spool, and the link's
    /// message limit is the smaller of both sides' (`None`: the upstream
    /// announces none and takes whole batches only).
    async fn resume(
        &mut self,
        welcome: &v1::Welcome,
    ) -> Result<(SendWindow, Option<(usize, &'static str)>), SessionError> {
        let committed = welcome.committed_seq;
        let spooled = *self.spool_seq.borrow();
        let window = SendWindow::resume(committed, *self.acked.borrow(), spooled)
            // Shown on /health/forwarder: the epoch by fingerprint only (PROTOCOL.md).
            .map_err(|e| {
                let epoch = crate::core::sources::epoch_fingerprint(self.epoch);
                SessionError::Protocol(format!("{e} (epoch {epoch})"))
            })?;
        self.ack(window.acked).await?;
        // An upstream that announces no limit predates batch parts: whole batches only.
        let upstream_limit = usize::try_from(welcome.max_message_bytes).unwrap_or(usize::MAX);
        self.limits.set_upstream(upstream_limit);
        let wire_limit = (upstream_limit != 0).then(|| self.limits.link());
        Stats::add(&self.ctx.stats.forward_connects_total, 1);
        {
            let mut st = self.state.lock();
            st.connected = true;
            st.upstream_id = welcome.upstream_id.clone();
            if committed >= spooled {
                st.delivering();
            }
        }
        tracing::info!(upstream = %welcome.upstream_id, epoch = self.epoch, committed_seq = committed, spooled_to = spooled, upstream_max_message_bytes = upstream_limit, "connected upstream, resuming");
        Ok((window, wire_limit))
    }

    /// Sends up to `room` spooled batches after the window's last sent seq,
    /// each in as many parts as the link's limit needs.
    async fn send_from_spool(&mut self, link: &mut Link, room: usize) -> Result<(), SessionError> {
        let sent = link.window.sent;
        let store = self.ctx.store.clone();
        let batches = tokio::task::spawn_blocking(move || store.spool_read(sent, room))
            .await
            .map_err(|e| SessionError::Store(e.to_string()))?
            .map_err(|e| SessionError::Store(e.to_string()))?;
        if batches.is_empty() {
            // Everything after `sent` was acknowledged meanwhile or dropped at the cap.
            link.window.on_send(*self.spool_seq.borrow());
            return Ok(());
        }
        if link.window.sent == link.window.acked {
            link.last_ack = tokio::time::Instant::now();
        }
        for b in batches {
            let parts = self.encode(&mut link.refs, &b, link.wire_limit)?;
            let follows_dropped = link.window.on_send(b.seq);
            if follows_dropped {
                tracing::warn!(
                    first_missing = sent + 1,
                    seq = b.seq,
                    "spool dropped batches before this one"
                );
            }
            tracing::debug!(
                seq = b.seq,
                increments = b.increments.len(),
                parts = parts.len(),
                "batch sent"
            );
            if parts.len() > 1 {
                Stats::add(&self.ctx.stats.forward_batches_split_total, 1);
            }
            for mut wire in parts {
                wire.follows_dropped = follows_dropped;
                link.send(wire).await?;
            }
            Stats::add(&self.ctx.stats.forward_batches_sent_total, 1);
        }
        Ok(())
    }

    /// An ack (acknowledged batches leave the spool) or a reject (the batch
    /// is dropped, counted) from the upstream; anything else ends the stream.
    async fn on_upstream_message(
        &mut self,
        link: &mut Link,
        message: Option<v1::UpstreamMessage>,
    ) -> Result<(), SessionError> {
        match message {
            Some(v1::UpstreamMessage {
                msg: Some(upstream_message::Msg::Ack(a)),
            }) => {
                let advanced = link
                    .window
                    .on_ack(a.seq)
                    .map_err(|e| SessionError::Protocol(e.to_string()))?;
                if let Some(seq) = advanced {
                    link.last_ack = tokio::time::Instant::now();
                    self.ack(seq).await?;
                }
                Ok(())
            }
            Some(v1::UpstreamMessage {
                msg: Some(upstream_message::Msg::Reject(r)),
            }) => {
                Stats::add(&self.ctx.stats.forward_batches_rejected_total, 1);
                tracing::error!(seq = r.seq, error = %r.error, "upstream rejected batch; it is dropped");
                Ok(())
            }
            Some(_) => Err(SessionError::Protocol(
                "unexpected message from upstream".into(),
            )),
            // What an upstream older than batch parts did with a message over its limit.
            None => Err(SessionError::Protocol(
                "upstream ended the stream without a status".into(),
            )),
        }
    }

    /// Encodes one spooled batch for this stream: cut into parts that fit
    /// `wire_limit` (the link's limit and whose it is), or whole for an upstream
    /// that announced no limit. Increments too large alone are left out (counted,
    /// logged, an event).
    fn encode(
        &self,
        refs: &mut strata_proto::SeriesRefs,
        b: &SpoolBatch,
        wire_limit: Option<(usize, &'static str)>,
    ) -> Result<Vec<v1::Batch>, SessionError> {
        let Some((limit, whose)) = wire_limit else {
            let whole = refs.encode(b.seq, b.watermark_ms, &b.increments);
            let len = whole.encoded_len();
            if len > self.limits.own() {
                return Err(SessionError::Protocol(format!(
                    "batch seq {} is {len} bytes, over this node's limit of {} bytes (grpc.max_message_bytes), and the upstream takes no batches in parts (it announces no message limit): upgrade it",
                    b.seq,
                    self.limits.own()
                )));
            }
            return Ok(vec![whole]);
        };
        let parts = refs.encode_parts(b.seq, b.watermark_ms, &b.increments, limit);
        if let Some(first) = parts.oversized.first() {
            let n = parts.oversized.len();
            Stats::add(&self.ctx.stats.forward_oversized_increments_total, n as u64);
            let what = format!(
                "left out {n} increments of batch seq {} that alone are over {whose} limit of {limit} bytes (grpc.max_message_bytes), the first of series {} at {} ({} bytes)",
                b.seq, first.series, first.bucket_ms, first.bytes
            );
            tracing::error!(seq = b.seq, left_out = n, limit, series = %first.series, bytes = first.bytes, "increments too large for one message left out of the batch");
            self.ctx.event(EventKind::IncrementsOversized, what.clone());
            self.state.lock().last_oversized = Some((Instant::now(), what));
        }
        Ok(parts.batches)
    }

    /// Records an ack and deletes acknowledged batches from the spool.
    async fn ack(&self, seq: u64) -> Result<(), SessionError> {
        let prev = *self.acked.borrow();
        if seq <= prev {
            return Ok(());
        }
        let store = self.ctx.store.clone();
        tokio::task::spawn_blocking(move || store.spool_ack(seq))
            .await
            .map_err(|e| SessionError::Store(e.to_string()))?
            .map_err(|e| SessionError::Store(e.to_string()))?;
        Stats::add(&self.ctx.stats.forward_batches_acked_total, seq - prev);
        tracing::debug!(seq, "acked upstream");
        self.acked.send_replace(seq);
        self.state.lock().delivering();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_streams_turn_health_degraded_then_ko() {
        let config = UpstreamConfig {
            max_backoff_ms: 500,
            ..UpstreamConfig::default()
        };
        let mut st = ForwarderState::new(&config);
        assert_eq!(st.ko_after, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(st.check(0, t0).0, Health::Degraded, "connecting");
        st.connected = true;
        st.upstream_id = "global".into();
        assert_eq!(st.check(3, t0).0, Health::Ok);
        st.failed("upstream: message of 900000 bytes over its limit".into());
        // Connected again, but nothing acknowledged since: still failing.
        st.connected = true;
        let (status, detail) = st.check(3, Instant::now());
        assert_eq!(status, Health::Degraded);
        assert!(detail.contains("over its limit"), "{detail}");
        let later = Instant::now() + Duration::from_secs(11);
        assert_eq!(st.check(3, later).0, Health::Ko);
        st.delivering();
        assert_eq!(st.check(0, later).0, Health::Ok);
        st.last_oversized = Some((later, "left out 1 increment".into()));
        assert_eq!(st.check(0, later).0, Health::Degraded);
        assert_eq!(st.check(0, later + OVERSIZED_DEGRADED_FOR).0, Health::Ok);
        assert_eq!(
            ForwarderState::new(&UpstreamConfig::default()).ko_after,
            Duration::from_secs(30)
        );
    }
}
