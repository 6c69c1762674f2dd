//! `strata bench --global-only`: the global tier measured alone.
//!
//! Instead of edge processes, the bench itself plays `--edges` sources: each
//! opens a federation stream to the global (Hello, Welcome, as an edge's
//! forwarder does) and sends it batches as an edge's flush would make them —
//! one increment per series (a histogram of [`SAMPLES_PER_INCREMENT`]
//! latencies, or a counter of as many), series interned on the stream — with
//! up to `--concurrency` batches unacknowledged, as fast as the global
//! acknowledges them, or with `--flush-every-ms` one flush per interval at
//! most, as edges flushing on that interval send them. The batches are
//! encoded once (again only when the minute turns, which rewrites their
//! buckets' minute), so the load costs the machine's two cores little besides
//! the global's own work: the figures are what the global merges, not what
//! edges can feed it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use strata_model::{Hist, Increment, SeriesKey, State, StateParams, minute_start};
use strata_proto::v1::{
    self, federation_client::FederationClient, source_message, upstream_message,
};
use tokio::sync::mpsc;

use super::{ACK_SIGFIG, Acked, BenchOptions, Mix, latency, record_ack};

/// Samples each increment stands for: a histogram of this many latencies, or
/// a counter of this much (an edge's series that took this many samples in
/// one flush).
pub(super) const SAMPLES_PER_INCREMENT: u64 = 10;

/// How long a source waits for the global's next acknowledgement.
const ACK_LIMIT: Duration = Duration::from_secs(120);

/// One source's flush: its increments and what they add up to.
struct Flush {
    increments: Vec<Increment>,
    counter_sum: u64,
    hist_count: u64,
}

/// The increments of source `source`'s flush in the minute `bucket_ms`:
/// series named as the native loaders name them, so the totals query counts
/// them alike.
fn flush(source: usize, opts: &BenchOptions, mix: Mix, bucket_ms: i64) -> anyhow::Result<Flush> {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((source as u64 + 1) << 40);
    let sigfig = StateParams::default().histogram_sigfig;
    let (mut counter_sum, mut hist_count) = (0, 0);
    let mut increments = Vec::with_capacity(opts.series);
    for s in 0..opts.series {
        let histogram = mix.histogram(s);
        let (metric, state) = if histogram {
            let mut h = Hist::new(sigfig)?;
            for _ in 0..SAMPLES_PER_INCREMENT {
                h.record(latency(&mut rng))?;
            }
            hist_count += SAMPLES_PER_INCREMENT;
            ("bench_latency_ms", State::Histogram(Box::new(h)))
        } else {
            counter_sum += SAMPLES_PER_INCREMENT;
            ("bench_requests", State::Counter(SAMPLES_PER_INCREMENT))
        };
        let (edge, series) = (format!("e{source}"), format!("s{s}"));
        let key = SeriesKey::from_strs(metric, [("edge", &*edge), ("series", &*series)])?;
        increments.push(Increment {
            series: Arc::new(key),
            bucket_ms,
            state,
        });
    }
    Ok(Flush {
        increments,
        counter_sum,
        hist_count,
    })
}

/// One played source: its number, the global's address and what the sources share.
pub(super) struct Source {
    pub source: usize,
    pub grpc: String,
    pub opts: Arc<BenchOptions>,
    pub mix: Mix,
    pub stop: Arc<AtomicBool>,
    pub acked: Arc<Acked>,
}

/// The batches of one stream after the first: the flush with every series by
/// its ref, cut into the parts the global's message limit allows.
struct Template {
    parts: Vec<v1::Batch>,
    bucket_ms: i64,
}

impl Template {
    /// The parts of batch `seq`, with the minute turned to `bucket_ms`.
    fn batch(&mut self, seq: u64, bucket_ms: i64) -> Vec<v1::Batch> {
        if bucket_ms != self.bucket_ms {
            for bucket in self
                .parts
                .iter_mut()
                .flat_map(|p| &mut p.series)
                .flat_map(|s| &mut s.buckets)
            {
                bucket.bucket_ms = bucket_ms;
            }
            self.bucket_ms = bucket_ms;
        }
        let mut parts = self.parts.clone();
        for p in &mut parts {
            p.seq = seq;
            p.watermark_ms = strata_server::now_ms();
        }
        parts
    }
}

fn batch_message(batch: v1::Batch) -> v1::SourceMessage {
    v1::SourceMessage {
        msg: Some(source_message::Msg::Batch(batch)),
    }
}

/// Streams batches to the global until stopped, then waits for the
/// acknowledgement of every batch in flight; returns the acknowledgement
/// latency (ms) of every batch. The global acknowledges a batch once the
/// commit that holds it is done (its memory store's, best-effort).
pub(super) async fn play(s: Source) -> anyhow::Result<Hist> {
    let epoch = strata_server::now_ms() as u64;
    let mut client = FederationClient::connect(format!("http://{}", s.grpc))
        .await
        .with_context(|| format!("connecting to the global at {}", s.grpc))?
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(s.opts.concurrency + 1);
    let hello = v1::Hello {
        source_id: format!("edge{}", s.source),
        epoch,
        token: format!("t{}", s.source),
    };
    tx.send(v1::SourceMessage {
        msg: Some(source_message::Msg::Hello(hello)),
    })
    .await?;
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let limit = match inbound.message().await? {
        Some(v1::UpstreamMessage {
            msg: Some(upstream_message::Msg::Welcome(w)),
        }) => usize::try_from(w.max_message_bytes).unwrap_or(usize::MAX),
        other => bail!("the global answered hello with {other:?}"),
    };
    let limit = if limit == 0 { usize::MAX } else { limit };
    let mut minute = minute_start(strata_server::now_ms());
    let f = flush(s.source, &s.opts, s.mix, minute)?;
    let mut refs = strata_proto::SeriesRefs::default();
    // The first batch names every series; the later ones refer to them.
    let first = refs.encode_parts(1, strata_server::now_ms(), &f.increments, limit);
    let mut template = Template {
        parts: refs.encode_parts(0, 0, &f.increments, limit).batches,
        bucket_ms: minute,
    };
    drop(f.increments);
    let mut acks = Hist::new(ACK_SIGFIG)?;
    // Sent and not yet acknowledged: (seq, when sent).
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut next = 1u64;
    let mut pending = Some(first.batches);
    // When the next flush may be sent (`--flush-every-ms`; at once without).
    let mut due = Instant::now();
    loop {
        let stopping = s.stop.load(Ordering::Relaxed);
        if stopping && in_flight.is_empty() {
            return Ok(acks);
        }
        let room = !stopping && in_flight.len() < s.opts.concurrency;
        if room && Instant::now() >= due {
            if let Some(every) = s.opts.flush_every {
                // On the interval's grid, as an edge's flush timer; a source
                // that fell behind sends at once rather than in a burst.
                due = (due + every).max(Instant::now());
            }
            let parts = match pending.take() {
                Some(parts) => parts,
                None => {
                    minute = minute_start(strata_server::now_ms());
                    template.batch(next, minute)
                }
            };
            in_flight.push_back((next, Instant::now()));
            for p in parts {
                tx.send(batch_message(p)).await?;
            }
            next += 1;
            continue;
        }
        // An acknowledgement, or the next flush falling due (dropping
        // `message()` then loses nothing: the stream keeps what it read).
        let wait = if room {
            due
        } else {
            Instant::now() + ACK_LIMIT
        };
        let answer = match tokio::time::timeout_at(wait.into(), inbound.message()).await {
            Ok(answer) => answer,
            Err(_) if room => continue,
            Err(_) => bail!("source {}: no acknowledgement for {ACK_LIMIT:?}", s.source),
        };
        match answer? {
            Some(v1::UpstreamMessage {
                msg: Some(upstream_message::Msg::Ack(a)),
            }) => {
                while let Some(&(seq, sent)) = in_flight.front() {
                    if seq > a.seq {
                        break;
                    }
                    record_ack(&mut acks, sent)?;
                    s.acked
                        .add(f.counter_sum + f.hist_count, f.counter_sum, f.hist_count);
                    in_flight.pop_front();
                }
            }
            other => bail!("source {}: the global sent {other:?}", s.source),
        }
    }
}
