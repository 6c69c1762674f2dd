//! The tier runtime of strata: every tier runs this same pipeline, and its
//! TOML config switches inputs and outputs on.
//!
//! ```text
//! HTTP NDJSON ─┐                                                ┌─> store (merged minute buckets)
//! gRPC ingest ─┼─> ingest carrier ─> shards ─flush─> commit ────┼─> spool ─> forwarder ─> upstream
//! federation  ─┘   (by series hash)   (per-minute    writer     └─> acks to sources / wait=commit
//!   receiver                           deltas)
//! query API, /health, /metrics read the store and the live counters
//! alarm evaluator (every minute) reads the store ─> alarm outbox ─> webhooks
//! ```
//!
//! Main types: [`Config`] (one node's TOML), [`start`] → [`RunningTier`]
//! (addresses, [`RunningTier::shutdown`]), [`run`] (start, wait for a shutdown
//! future, stop in order), [`start_with`] and [`StartOptions`] (what tests
//! inject, such as the alarm clock).
//!
//! # Layout
//! - [`config`]: the TOML schema, defaults and validation naming every bad key.
//! - [`pipeline`]: shards, the flush gate, the flush loop and the commit writer.
//! - [`ingest`]: NDJSON parsing and all-or-nothing sample admission.
//! - [`grpc`]: native ingest and the federation receiver.
//! - [`delivery`]: the delivery protocol's decisions (seq verdicts, send window), model-tested.
//! - [`fatal`]: a panic in a pipeline thread stops the node (and the fault-injection hook).
//! - [`forwarder`]: the stream to the upstream tier, fed from the spool.
//! - [`limits`]: both ends' message limits and the check that keeps increments forwardable.
//! - [`query`]: selectors, grouping and merging for `/api/v1/query`.
//! - [`http`]: the HTTP API.
//! - [`alarms`]: alarm rule evaluation and webhook notifications (outbox, retries).
//! - [`registry`], [`sources`], [`stats`]: metric kinds, downstream sources, self-metrics.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let mut config = strata_server::Config::default();
//! config.http.listen = "127.0.0.1:0".into();
//! config.grpc.listen = "127.0.0.1:0".into();
//! config.storage.engine = "memory".into();
//! let tier = strata_server::start(config).await?;
//! println!("query me at http://{}/api/v1/query?q=up", tier.http_addr);
//! tier.shutdown(std::time::Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

pub mod alarms;
pub mod config;
pub mod delivery;
pub mod fatal;
pub mod forwarder;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod pipeline;
pub mod query;
pub mod registry;
pub mod sources;
pub mod stats;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use parking_lot::Mutex;
use strata_carrier::Strategy;
use strata_model::StateParams;
use strata_proto::v1::{federation_server::FederationServer, ingest_server::IngestServer};
use strata_store::{MemoryStore, RedbStore, Store, StoreOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::forwarder::{Forwarder, ForwarderState};
use crate::ingest::{IngestSettings, Ingestor};
use crate::limits::MessageLimits;
use crate::pipeline::{Pipeline, PipelineSettings, PipelineThreads};
use crate::registry::Registry;
use crate::sources::Sources;
use crate::stats::Stats;

/// What the request handlers share.
pub struct Node {
    pub id: String,
    pub ingestor: Arc<Ingestor>,
    pub pipeline: Arc<Pipeline>,
    /// Present when the node forwards upstream.
    pub forwarder: Option<Arc<Mutex<ForwarderState>>>,
    /// Alarm rules, their state for `/api/v1/alarms` and health (present
    /// even without rules).
    pub alarms: Arc<alarms::Alarms>,
}

/// A started tier.
pub struct RunningTier {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub node: Arc<Node>,
    /// Cancelled first at shutdown: listeners stop accepting, source streams end.
    accept_stop: CancellationToken,
    servers: Vec<(&'static str, JoinHandle<()>)>,
    pipeline: PipelineThreads,
    forwarder: Option<ForwarderTask>,
    /// The alarm evaluator and sender, when there is anything to do.
    alarms: Option<alarms::AlarmThreads>,
}

/// What [`start_with`] lets a caller (a test) choose beyond the config.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// The alarm evaluator's clock, backoff and limits.
    pub alarms: alarms::AlarmSettings,
    /// `strata run --reset-store`: a store file that cannot be read is moved
    /// aside (`strata.redb.corrupt-<unix ms>`) and a new store is started,
    /// instead of refusing to start. A readable store is left alone.
    pub reset_store: bool,
}

struct ForwarderTask {
    stop: CancellationToken,
    handle: JoinHandle<()>,
    acked: watch::Receiver<u64>,
}

/// Opens the store, starts the pipeline, binds the listeners and the forwarder.
pub async fn start(config: Config) -> anyhow::Result<RunningTier> {
    start_with(config, StartOptions::default()).await
}

/// [`start`] with non-default [`StartOptions`].
pub async fn start_with(config: Config, options: StartOptions) -> anyhow::Result<RunningTier> {
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(config::ConfigError::Invalid(problems).into());
    }
    let opts = StoreOptions {
        spool_max_bytes: config.storage.spool_max_bytes,
        // Validated to at most 1 TiB.
        cache_bytes: usize::try_from(config.storage.cache_bytes).unwrap_or(usize::MAX),
    };
    let store: Arc<dyn Store> = match config.storage.engine.as_str() {
        "memory" => Arc::new(MemoryStore::new(opts)),
        _ => Arc::new(open_redb(config.node.data_dir.clone(), opts, options.reset_store).await?),
    };
    let stats = Arc::new(Stats::default());
    let registry = Arc::new(Registry::with_known(
        store.metrics().into_iter().map(|m| (m.name, m.kind)).chain(
            pipeline::self_metric_names()
                .into_iter()
                .map(|n| (n, strata_model::Kind::Counter)),
        ),
    ));
    let sources = Arc::new(Sources::new(
        config.downstream.clone(),
        store.sources(),
        strata_model::time::span_ms(config.aggregation.source_ttl_s, 1_000),
    ));
    let agg = &config.aggregation;
    let settings = PipelineSettings {
        node_id: config.node.id.clone(),
        shards: config.shard_count(),
        params: StateParams {
            histogram_sigfig: agg.histogram_significant_digits,
            apdex_threshold: agg.apdex_threshold,
        },
        carrier_capacity: config.carrier.capacity,
        carrier_strategy: config
            .carrier
            .strategy
            .parse::<Strategy>()
            .unwrap_or(Strategy::Blocking),
        carrier_bulk_max: config.carrier.bulk_max,
        flush_interval: Duration::from_millis(agg.flush_interval_ms),
        forwarding: config.upstream.is_some(),
        retention: pipeline::Retention::from_config(&config.storage),
    };
    let (pipeline, pipeline_threads) =
        Pipeline::start(settings, store.clone(), sources, stats.clone())?;
    let message_limits = Arc::new(MessageLimits::new(
        config.grpc.max_message_bytes,
        agg.histogram_significant_digits,
    ));
    let ingestor = Arc::new(Ingestor::new(
        pipeline.clone(),
        registry,
        IngestSettings {
            allowed_lateness_ms: strata_model::time::span_ms(agg.allowed_lateness_s, 1_000),
            max_future_ms: strata_model::time::span_ms(agg.max_future_s, 1_000),
            default_apdex_threshold: agg.apdex_threshold,
            message_limits: message_limits.clone(),
        },
        config.http.max_inflight_requests,
    ));

    let forwarder = config.upstream.as_ref().map(|up| {
        let spool = store.spool_stats();
        let acked_at_start = if spool.batches == 0 {
            spool.last_seq
        } else {
            spool.first_seq.saturating_sub(1)
        };
        let (acked_tx, acked_rx) = watch::channel(acked_at_start);
        let state = Arc::new(Mutex::new(ForwarderState::new(up)));
        let f = Forwarder {
            config: up.clone(),
            node_id: config.node.id.clone(),
            epoch: store.epoch(),
            limits: message_limits.clone(),
            store: store.clone(),
            pipeline: pipeline.clone(),
            stats: stats.clone(),
            spool_seq: pipeline.spool_seq(),
            acked: acked_tx,
            state: state.clone(),
        };
        let stop = CancellationToken::new();
        let handle = tokio::spawn(f.run(stop.clone()));
        (
            state,
            ForwarderTask {
                stop,
                handle,
                acked: acked_rx,
            },
        )
    });
    let (forwarder_state, forwarder) = match forwarder {
        Some((s, t)) => (Some(s), Some(t)),
        None => (None, None),
    };
    let (alarms, alarm_threads) = {
        let (id, rules, pipeline) = (
            config.node.id.clone(),
            config.alarm.clone(),
            pipeline.clone(),
        );
        tokio::task::spawn_blocking(move || {
            alarms::Alarms::start(&id, &rules, pipeline, options.alarms)
        })
        .await?
        .context("starting the alarm evaluator")?
    };

    let node = Arc::new(Node {
        id: config.node.id.clone(),
        ingestor: ingestor.clone(),
        pipeline: pipeline.clone(),
        forwarder: forwarder_state,
        alarms,
    });
    let accept_stop = CancellationToken::new();

    let http_listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    let http_addr = http_listener.local_addr()?;
    let app = http::router(node.clone(), config.http.max_body_bytes);
    let http_stop = accept_stop.clone();
    let http_task = tokio::spawn(async move {
        let served = axum::serve(http_listener, app)
            .with_graceful_shutdown(http_stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server failed");
        }
    });

    let grpc_listener = tokio::net::TcpListener::bind(&config.grpc.listen)
        .await
        .with_context(|| format!("binding grpc.listen {}", config.grpc.listen))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let max_msg = config.grpc.max_message_bytes;
    let federation = FederationServer::new(grpc::FederationService {
        ingestor: ingestor.clone(),
        node_id: config.node.id.clone(),
        histogram_sigfig: agg.histogram_significant_digits,
        limits: message_limits.clone(),
        max_batch_bytes: config.grpc.max_batch_bytes,
        shutdown: accept_stop.clone(),
    })
    .max_decoding_message_size(max_msg)
    .max_encoding_message_size(max_msg);
    let native = IngestServer::new(grpc::IngestService {
        ingestor: ingestor.clone(),
    })
    .max_decoding_message_size(max_msg);
    let grpc_stop = accept_stop.clone();
    let grpc_task = tokio::spawn(async move {
        // Keepalives let a stream from a vanished source end, freeing its id.
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(federation)
            .add_service(native)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                grpc_stop.cancelled_owned(),
            )
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "grpc server failed");
        }
    });
    if config.otlp.is_some() {
        tracing::warn!(
            "[otlp] is configured but this build has no OTLP receiver; the section is ignored"
        );
    }
    tracing::info!(
        node = %config.node.id, %http_addr, %grpc_addr,
        upstream = config.upstream.as_ref().map(|u| u.endpoint.as_str()).unwrap_or("none"),
        downstream = config.downstream.len(),
        epoch = store.epoch(),
        "tier started"
    );
    Ok(RunningTier {
        http_addr,
        grpc_addr,
        node,
        accept_stop,
        servers: vec![("http", http_task), ("grpc", grpc_task)],
        pipeline: pipeline_threads,
        forwarder,
        alarms: alarm_threads,
    })
}

/// Opens the durable store in `dir`. An unreadable store file is refused
/// with an error saying how to start afresh, or, with `reset`, moved aside
/// (never deleted) and replaced by a new store, with a warning naming both.
async fn open_redb(dir: PathBuf, opts: StoreOptions, reset: bool) -> anyhow::Result<RedbStore> {
    let open = |dir: PathBuf, opts: StoreOptions| {
        tokio::task::spawn_blocking(move || RedbStore::open(&dir, opts))
    };
    let context = || format!("opening the store in {}", dir.display());
    match open(dir.clone(), opts.clone()).await? {
        Ok(store) => {
            if reset {
                tracing::info!(path = %store.path().display(), "the store is readable: --reset-store leaves it in place");
            }
            Ok(store)
        }
        Err(e) if reset && e.is_unreadable() => {
            let aside = RedbStore::move_aside(&dir).with_context(context)?;
            tracing::warn!(
                error = %e,
                moved_to = %aside.display(),
                "store unreadable: moved aside, starting a new store with a new epoch (--reset-store)"
            );
            let store = open(dir.clone(), opts).await?.with_context(context)?;
            Ok(store)
        }
        Err(e) if e.is_unreadable() => Err(anyhow::anyhow!(
            "{}: {e}. Nothing was changed; to keep the file and start a new, empty store, run `strata run --reset-store` (it moves {} aside)",
            context(),
            RedbStore::FILE_NAME
        )),
        Err(e) => Err(anyhow::Error::new(e).context(context())),
    }
}

impl RunningTier {
    /// Resolves when a pipeline thread panicked, with what happened: the node
    /// cannot go on and must be shut down ([`fatal`]).
    pub async fn stopped_by(&self) -> String {
        self.node.pipeline.fatal.wait().await
    }

    /// Stops in order: stop accepting and end source streams, let in-flight
    /// requests finish, final flush and commit, stop the alarm evaluator and
    /// sender (queued notifications stay in the outbox), forward until the
    /// upstream has acknowledged everything (bounded by `grace`), then exit.
    /// Whatever is not acknowledged by then stays in the spool for the next
    /// start.
    pub async fn shutdown(self, grace: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(node = %self.node.id, "shutting down: no longer accepting");
        self.accept_stop.cancel();
        if let Some(what) = self.node.pipeline.fatal.get() {
            // Nothing more will be committed: do not hold requests until the deadline.
            self.node.pipeline.fail_pending(&what);
        }
        for (name, task) in self.servers {
            match tokio::time::timeout_at(deadline, task).await {
                Ok(_) => tracing::debug!(server = name, "stopped"),
                Err(_) => tracing::warn!(
                    server = name,
                    "still serving requests at the grace deadline"
                ),
            }
        }
        tracing::info!("final flush and commit");
        let pipeline = self.pipeline;
        tokio::task::spawn_blocking(move || pipeline.stop()).await?;
        if let Some(alarms) = self.alarms {
            // Queued notifications stay in the outbox for the next start.
            let stopped = tokio::time::timeout_at(
                deadline,
                tokio::task::spawn_blocking(move || alarms.stop()),
            )
            .await;
            if stopped.is_err() {
                tracing::warn!("alarm sender still delivering at the grace deadline");
            }
        }
        if let Some(mut f) = self.forwarder {
            let last = self.node.pipeline.store.spool_stats().last_seq;
            let acked = tokio::time::timeout_at(deadline, f.acked.wait_for(|a| *a >= last))
                .await
                .is_ok();
            match acked {
                true => tracing::info!(seq = last, "upstream acknowledged everything"),
                false => tracing::warn!(
                    unacked_from = *f.acked.borrow() + 1,
                    to = last,
                    "grace period over: unacknowledged batches stay in the spool"
                ),
            }
            f.stop.cancel();
            let _ = f.handle.await;
        }
        tracing::info!(node = %self.node.id, "stopped");
        Ok(())
    }
}

/// Runs a tier until `shutdown` resolves, then stops it in order.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> anyhow::Result<()> {
    let tier = start(config).await?;
    let fatal = tokio::select! {
        _ = shutdown => None,
        what = tier.stopped_by() => Some(what),
    };
    if let Some(what) = &fatal {
        tracing::error!(error = %what, "stopping the node: a pipeline thread failed");
    }
    tier.shutdown(grace).await?;
    match fatal {
        Some(what) => Err(anyhow::anyhow!("the node stopped because {what}")),
        None => Ok(()),
    }
}
