//! Federation forwarder: streams the spool to the upstream tier.
//!
//! Every commit appends the flush's increments to the spool with the next
//! `seq`. The forwarder keeps one bidirectional stream to the upstream: it
//! says hello with this node's id and epoch, learns the highest seq the
//! upstream has committed, drops those from the spool, and sends the rest in
//! order with at most `max_inflight_batches` unacknowledged. Acks delete
//! batches from the spool. Any break reconnects with exponential backoff and
//! jitter, and resumes from what the upstream says it has.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use strata_proto::v1::{
    self, federation_client::FederationClient, source_message, upstream_message,
};
use strata_store::Store;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::UpstreamConfig;
use crate::delivery::SendWindow;
use crate::stats::Stats;

/// What the forwarder shows to health checks and the API.
#[derive(Debug, Default)]
pub struct ForwarderState {
    pub connected: bool,
    pub upstream_id: String,
    pub last_error: Option<String>,
}

/// A running forwarder.
pub struct Forwarder {
    pub config: UpstreamConfig,
    pub node_id: String,
    pub epoch: u64,
    pub max_message_bytes: usize,
    pub store: Arc<dyn Store>,
    pub stats: Arc<Stats>,
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
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("upstream: {}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Protocol(String),
    #[error("store: {0}")]
    Store(String),
}

impl Forwarder {
    /// Runs until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        let min = Duration::from_millis(self.config.min_backoff_ms);
        let max = Duration::from_millis(self.config.max_backoff_ms);
        let mut backoff = min;
        while !stop.is_cancelled() {
            let result = self.session(&stop).await;
            {
                let mut st = self.state.lock();
                st.connected = false;
                if let Err(e) = &result {
                    st.last_error = Some(e.to_string());
                }
            }
            match result {
                Ok(true) => backoff = min,
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(upstream = %self.config.endpoint, error = %e, retry_in_ms = backoff.as_millis() as u64, "upstream stream failed");
                }
            }
            // Full jitter over the upper half keeps many sources from reconnecting in step.
            let jittered = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(jittered) => {}
            }
            backoff = (backoff * 2).min(max);
        }
    }

    /// One stream. `Ok(false)`: stopped; `Ok(true)`: ended cleanly, reconnect.
    async fn session(&mut self, stop: &CancellationToken) -> Result<bool, SessionError> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.config.endpoint.clone())?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
        let channel = tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            c = endpoint.connect() => c?,
        };
        let mut client = FederationClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        let max_inflight = self.config.max_inflight_batches;
        let (tx, rx) = mpsc::channel::<v1::SourceMessage>(max_inflight + 1);
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
            _ = stop.cancelled() => return Ok(false),
            m = tokio::time::timeout(Duration::from_secs(60), inbound.message()) => match m {
                Ok(Ok(Some(v1::UpstreamMessage { msg: Some(upstream_message::Msg::Welcome(w)) }))) => w,
                Ok(Err(status)) => return Err(status.into()),
                Ok(Ok(_)) => return Err(SessionError::Protocol("upstream did not answer hello with welcome".into())),
                Err(_) => return Err(SessionError::Protocol("no welcome within 60 s".into())),
            },
        };
        let committed = welcome.committed_seq;
        let spooled = *self.spool_seq.borrow();
        let mut window = SendWindow::resume(committed, *self.acked.borrow(), spooled)
            .map_err(|e| SessionError::Protocol(format!("{e} (epoch {})", self.epoch)))?;
        self.ack(window.acked).await?;
        Stats::add(&self.stats.forward_connects_total, 1);
        {
            let mut st = self.state.lock();
            st.connected = true;
            st.upstream_id = welcome.upstream_id.clone();
            st.last_error = None;
        }
        tracing::info!(upstream = %welcome.upstream_id, epoch = self.epoch, committed_seq = committed, spooled_to = spooled, "connected upstream, resuming");
        let mut last_ack = tokio::time::Instant::now();
        // Series are named once per stream, then referred to by number.
        let mut refs = strata_proto::SeriesRefs::default();
        loop {
            // Fill the window from the spool.
            let room = window.room(max_inflight);
            let sent = window.sent;
            if room > 0 && sent < *self.spool_seq.borrow() {
                let store = self.store.clone();
                let batches = tokio::task::spawn_blocking(move || store.spool_read(sent, room))
                    .await
                    .map_err(|e| SessionError::Store(e.to_string()))?
                    .map_err(|e| SessionError::Store(e.to_string()))?;
                if batches.is_empty() {
                    // Everything after `sent` was acknowledged meanwhile or dropped at the cap.
                    window.on_send(*self.spool_seq.borrow());
                    continue;
                }
                if window.sent == window.acked {
                    last_ack = tokio::time::Instant::now();
                }
                for b in batches {
                    let mut wire = refs.encode(b.seq, b.watermark_ms, &b.increments);
                    wire.follows_dropped = window.on_send(b.seq);
                    if wire.follows_dropped {
                        tracing::warn!(
                            first_missing = sent + 1,
                            seq = b.seq,
                            "spool dropped batches before this one"
                        );
                    }
                    tracing::debug!(seq = b.seq, increments = b.increments.len(), "batch sent");
                    if tx
                        .send(v1::SourceMessage {
                            msg: Some(source_message::Msg::Batch(wire)),
                        })
                        .await
                        .is_err()
                    {
                        return Err(SessionError::Protocol("stream closed while sending".into()));
                    }
                    Stats::add(&self.stats.forward_batches_sent_total, 1);
                }
                continue;
            }
            let waiting_for_ack = window.sent > window.acked;
            tokio::select! {
                _ = stop.cancelled() => return Ok(false),
                _ = tokio::time::sleep_until(last_ack + ACK_TIMEOUT), if waiting_for_ack => {
                    return Err(SessionError::Protocol(format!(
                        "no ack for {} s with seqs {}..={} in flight",
                        ACK_TIMEOUT.as_secs(), window.acked + 1, window.sent
                    )));
                }
                changed = self.spool_seq.changed() => {
                    if changed.is_err() {
                        return Ok(false);
                    }
                }
                m = inbound.message() => match m? {
                    Some(v1::UpstreamMessage { msg: Some(upstream_message::Msg::Ack(a)) }) => {
                        let advanced = window.on_ack(a.seq).map_err(|e| SessionError::Protocol(e.to_string()))?;
                        if let Some(seq) = advanced {
                            last_ack = tokio::time::Instant::now();
                            self.ack(seq).await?;
                        }
                    }
                    Some(v1::UpstreamMessage { msg: Some(upstream_message::Msg::Reject(r)) }) => {
                        Stats::add(&self.stats.forward_batches_rejected_total, 1);
                        tracing::error!(seq = r.seq, error = %r.error, "upstream rejected batch; it is dropped");
                    }
                    Some(_) => return Err(SessionError::Protocol("unexpected message from upstream".into())),
                    None => return Ok(true),
                },
            }
        }
    }

    /// Records an ack and deletes acknowledged batches from the spool.
    async fn ack(&self, seq: u64) -> Result<(), SessionError> {
        let prev = *self.acked.borrow();
        if seq <= prev {
            return Ok(());
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.spool_ack(seq))
            .await
            .map_err(|e| SessionError::Store(e.to_string()))?
            .map_err(|e| SessionError::Store(e.to_string()))?;
        Stats::add(&self.stats.forward_batches_acked_total, seq - prev);
        tracing::debug!(seq, "acked upstream");
        self.acked.send_replace(seq);
        Ok(())
    }
}
