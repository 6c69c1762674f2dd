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
//! inject, such as the alarm clock), [`context::Context`] (what every part is
//! handed at start).
//!
//! # Layout
//! The rooms follow the pipeline (docs/ARCHITECTURE.md has the full map):
//! - [`inputs`]: NDJSON and native gRPC ingest, the federation receiver and its
//!   seq decisions.
//! - [`core`]: the pipeline (flush gate, flush loop), the aggregator shards,
//!   the commit writer, retention, self-metrics, metric kinds, sources,
//!   counters, message limits, health status, fatal panics.
//! - [`outputs`]: the forwarder to the upstream tier, alarm rules, evaluation
//!   and notifications.
//! - [`api`]: the HTTP router and handlers, queries, health, `/metrics`.
//! - [`net`]: the listeners' accept loops, connection bounds and timeouts,
//!   TLS (the crypto provider, certificates, SIGHUP reload, client configs).
//! - [`config`]: the TOML schema, defaults and checks naming every bad key.
//! - [`context`]: the shared parts (store, counters, sources) and the clock.
//! - [`status`]: errors to statuses, in one place: each error's class → HTTP
//!   status, gRPC code and retry hint.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let mut config = strata_server::Config::default();
//! config.http.listen = "127.0.0.1:0".into();
//! config.grpc.listen = "127.0.0.1:0".into();
//! config.storage.engine = strata_server::config::StorageEngine::Memory;
//! let tier = strata_server::start(config).await?;
//! println!("query me at http://{}/api/v1/query?q=up", tier.http_addr);
//! tier.shutdown(std::time::Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod config;
pub mod context;
pub mod core;
#[doc(hidden)]
pub mod fuzzing;
pub mod inputs;
pub mod net;
pub mod outputs;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use parking_lot::Mutex;
use strata_model::StateParams;
use strata_store::{MemoryStore, RedbStore, Store, StoreOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use context::now_ms;

use crate::context::Context;
use crate::core::fatal::Fatal;
use crate::core::limits::MessageLimits;
use crate::core::pipeline::{Pipeline, PipelineSettings, PipelineThreads};
use crate::core::registry::Registry;
use crate::core::retention::Retention;
use crate::core::self_metrics::self_metric_names;
use crate::core::sources::Sources;
use crate::core::stats::Stats;
use crate::inputs::samples::{IngestSettings, Ingestor};
use crate::outputs::alarms;
use crate::outputs::forwarder::{Forwarder, ForwarderState};

/// What the HTTP handlers share: built once at start, held by the router.
pub struct ApiState {
    /// Store, counters, sources: what every handler reads.
    pub ctx: Arc<context::Context>,
    /// Admits NDJSON ingest requests into the pipeline.
    pub ingestor: Arc<Ingestor>,
    /// Watermarks (completeness), carrier figures and settings for queries
    /// and health.
    pub pipeline: Arc<Pipeline>,
    /// Present when the node forwards upstream.
    pub forwarder: Option<Arc<Mutex<ForwarderState>>>,
    /// Alarm rules, their state for `/api/v1/alarms` and health (present
    /// even without rules).
    pub alarms: Arc<alarms::Alarms>,
    /// The OTLP receiver, served on the node's ports (and `[otlp]`'s).
    pub otlp: Option<Arc<inputs::otlp::OtlpReceiver>>,
    /// The Prometheus remote-write receiver (`POST /api/v1/write`).
    pub remote_write: Option<Arc<inputs::remote_write::RemoteWrite>>,
}

/// A started tier.
pub struct RunningTier {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// `otlp.listen` and `otlp.http_listen` as bound, when served.
    pub otlp_grpc_addr: Option<SocketAddr>,
    pub otlp_http_addr: Option<SocketAddr>,
    /// What the HTTP handlers share; tests read the store and counters here.
    pub api: Arc<ApiState>,
    /// Cancelled first at shutdown: listeners stop accepting, source streams end.
    accept_stop: CancellationToken,
    servers: Vec<(&'static str, JoinHandle<()>)>,
    pipeline: PipelineThreads,
    forwarder: Option<ForwarderTask>,
    /// The alarm evaluator and sender, when there is anything to do.
    alarms: Option<alarms::AlarmThreads>,
    /// Re-reads the listeners' certificates ([`RunningTier::tls_reloader`]).
    tls: net::tls::Reloader,
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

/// [`start`] with non-default [`StartOptions`]: open the store, build the
/// shared context and the pipeline, spawn the outputs, serve the inputs.
pub async fn start_with(config: Config, options: StartOptions) -> anyhow::Result<RunningTier> {
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(config::ConfigError::Invalid(problems).into());
    }
    let (http_tls, grpc_tls) = listener_tls(&config)?;
    let store = open_store(&config, options.reset_store).await?;
    let ctx = Arc::new(build_context(&config, store));
    let (pipeline, pipeline_threads) = Pipeline::start(pipeline_settings(&config), ctx.clone())?;
    let limits = Arc::new(MessageLimits::new(
        config.grpc.max_message_bytes,
        config.aggregation.histogram_significant_digits,
    ));
    let ingestor = Arc::new(build_ingestor(&config, &pipeline, &limits));
    let forwarder = config
        .upstream
        .as_ref()
        .map(|up| spawn_forwarder(up, &ctx, &pipeline, &limits));
    let (alarms, alarm_threads) = start_alarms(&config, &pipeline, options.alarms).await?;
    let otlp = Arc::new(
        inputs::otlp::OtlpReceiver::new(ingestor.clone(), otlp_settings(&config))
            .context("reading the OTLP stream table from the store")?,
    );
    let remote_write = Arc::new(
        inputs::remote_write::RemoteWrite::new(
            ingestor.clone(),
            remote_write_settings(&config),
            config.node.id.clone(),
        )
        .context("reading the remote-write stream table from the store")?,
    );
    let api = Arc::new(ApiState {
        ctx: ctx.clone(),
        ingestor: ingestor.clone(),
        pipeline,
        forwarder: forwarder.as_ref().map(|(state, _)| state.clone()),
        alarms,
        otlp: Some(otlp.clone()),
        remote_write: Some(remote_write),
    });

    let accept_stop = CancellationToken::new();
    let (http_addr, http_task) = api::http::serve(
        &config.http,
        http_tls.clone(),
        api.clone(),
        accept_stop.clone(),
    )
    .await
    .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    api.alarms.http_bound(http_addr);
    let grpc = inputs::serve_grpc(
        &config,
        grpc_tls.clone(),
        ingestor.clone(),
        otlp.clone(),
        limits,
        accept_stop.clone(),
    );
    let (grpc_addr, grpc_task) = grpc
        .await
        .with_context(|| format!("binding grpc.listen {}", config.grpc.listen))?;
    let mut servers = vec![("http", http_task), ("grpc", grpc_task)];
    let otlp_addrs = serve_otlp(
        &config,
        (http_tls.clone(), grpc_tls.clone()),
        &api,
        otlp,
        &accept_stop,
        &mut servers,
    )
    .await?;
    tracing::info!(
        node = %config.node.id, %http_addr, %grpc_addr,
        upstream = config.upstream.as_ref().map(|u| u.endpoint.as_str()).unwrap_or("none"),
        downstream = config.downstream.len(),
        epoch = ctx.store.epoch(),
        "tier started"
    );
    Ok(RunningTier {
        http_addr,
        grpc_addr,
        otlp_grpc_addr: otlp_addrs.0,
        otlp_http_addr: otlp_addrs.1,
        api,
        accept_stop,
        servers,
        pipeline: pipeline_threads,
        forwarder: forwarder.map(|(_, task)| task),
        alarms: alarm_threads,
        tls: net::tls::Reloader::new(http_tls.into_iter().chain(grpc_tls).collect()),
    })
}

/// How the OTLP receiver maps and tracks what it receives (`[otlp]`, or
/// its defaults).
fn otlp_settings(config: &Config) -> inputs::otlp::OtlpSettings {
    let otlp = config.otlp.clone().unwrap_or_default();
    let agg = &config.aggregation;
    inputs::otlp::OtlpSettings {
        mapping: inputs::otlp::convert::Mapping {
            resource_labels: otlp.resource_labels,
            params: pipeline_settings(config).params,
            node_id: config.node.id.clone(),
        },
        max_streams: otlp.max_streams,
        stream_ttl_ms: strata_model::time::span_ms(agg.source_ttl_s, 1_000),
        wait_commit: otlp.wait_commit,
    }
}

/// The remote-write receiver's stream table (`[remote_write]`, or its
/// defaults).
fn remote_write_settings(config: &Config) -> inputs::points::PointSettings {
    let rw = config.remote_write.clone().unwrap_or_default();
    inputs::points::PointSettings {
        prefix: inputs::remote_write::CURSOR_PREFIX,
        max_key: "remote_write.max_streams",
        max_streams: rw.max_streams,
        stream_ttl_ms: strata_model::time::span_ms(config.aggregation.source_ttl_s, 1_000),
        wait_commit: rw.wait_commit,
        params: pipeline_settings(config).params,
    }
}

/// With an `[otlp]` table, binds `otlp.listen` (OTLP/gRPC, with `[grpc]`'s
/// TLS) and `otlp.http_listen` (OTLP/HTTP, with `[http]`'s), each unless
/// `""`; returns their addresses.
async fn serve_otlp(
    config: &Config,
    (http_tls, grpc_tls): (
        Option<Arc<net::tls::ServerTls>>,
        Option<Arc<net::tls::ServerTls>>,
    ),
    api: &Arc<ApiState>,
    receiver: Arc<inputs::otlp::OtlpReceiver>,
    stop: &CancellationToken,
    servers: &mut Vec<(&'static str, JoinHandle<()>)>,
) -> anyhow::Result<(Option<SocketAddr>, Option<SocketAddr>)> {
    let Some(otlp) = &config.otlp else {
        return Ok((None, None));
    };
    let mut grpc_addr = None;
    if !otlp.listen.is_empty() {
        let (addr, task) = inputs::serve_otlp_grpc(
            config,
            &otlp.listen,
            grpc_tls,
            &api.ingestor,
            receiver,
            stop.clone(),
        )
        .await
        .with_context(|| format!("binding otlp.listen {}", otlp.listen))?;
        servers.push(("otlp", task));
        grpc_addr = Some(addr);
    }
    let mut http_addr = None;
    if !otlp.http_listen.is_empty() {
        let app = api::http::otlp_router(api.clone());
        let (addr, task) = api::http::serve_app(
            &otlp.http_listen,
            "otlp_http",
            &config.http,
            http_tls,
            app,
            stop.clone(),
        )
        .await
        .with_context(|| format!("binding otlp.http_listen {}", otlp.http_listen))?;
        servers.push(("otlp_http", task));
        http_addr = Some(addr);
    }
    Ok((grpc_addr, http_addr))
}

/// The listeners' TLS (HTTP, gRPC), from the files the config names; every
/// TLS file of the config (the forwarder's and the webhooks' too) is read
/// first, and any that cannot be used is refused naming its key.
#[allow(clippy::type_complexity)]
fn listener_tls(
    config: &Config,
) -> anyhow::Result<(
    Option<Arc<net::tls::ServerTls>>,
    Option<Arc<net::tls::ServerTls>>,
)> {
    net::tls::install_crypto_provider();
    let problems = net::tls::check_files(config);
    if !problems.is_empty() {
        return Err(config::ConfigError::Invalid(problems).into());
    }
    let http = net::tls::ServerTls::for_http(&config.http)?;
    let grpc = net::tls::ServerTls::for_grpc(&config.grpc)?;
    Ok((http, grpc))
}

/// The store `storage.engine` names: in memory, or the durable one in
/// `node.data_dir`.
async fn open_store(config: &Config, reset: bool) -> anyhow::Result<Arc<dyn Store>> {
    let opts = StoreOptions {
        spool_max_bytes: config.storage.spool_max_bytes,
        // Validated to at most 1 TiB.
        cache_bytes: usize::try_from(config.storage.cache_bytes).unwrap_or(usize::MAX),
    };
    Ok(match config.storage.engine {
        config::StorageEngine::Memory => Arc::new(MemoryStore::new(opts)),
        config::StorageEngine::Redb => {
            Arc::new(open_redb(config.node.data_dir.clone(), opts, reset).await?)
        }
    })
}

/// What every part of the node shares: the store, fresh counters, and the
/// downstream sources restored from the store's progress.
fn build_context(config: &Config, store: Arc<dyn Store>) -> Context {
    let sources = Arc::new(Sources::new(
        config.downstream.clone(),
        store.sources(),
        strata_model::time::span_ms(config.aggregation.source_ttl_s, 1_000),
    ));
    Context {
        node_id: config.node.id.clone(),
        store,
        stats: Arc::new(Stats::default()),
        sources,
        fatal: Fatal::default(),
    }
}

fn pipeline_settings(config: &Config) -> PipelineSettings {
    let agg = &config.aggregation;
    PipelineSettings {
        shards: config.shard_count(),
        params: StateParams {
            histogram_sigfig: agg.histogram_significant_digits,
            apdex_threshold: agg.apdex_threshold,
            exp_histogram_max_buckets: agg.exp_histogram_max_buckets,
            exp_histogram_scale: agg.exp_histogram_scale,
        },
        carrier_capacity: config.carrier.capacity,
        carrier_strategy: config.carrier.strategy,
        carrier_bulk_max: config.carrier.bulk_max,
        flush_interval: Duration::from_millis(agg.flush_interval_ms),
        forwarding: config.upstream.is_some(),
        retention: Retention::from_config(config),
        watermark_delay_ms: strata_model::time::span_ms(agg.watermark_delay_ms, 1),
        allowed_lateness_ms: strata_model::time::span_ms(agg.allowed_lateness_s, 1_000),
        // A memory store keeps nothing across a restart: nothing to log.
        request_log: (config.storage.request_log
            && config.storage.engine == config::StorageEngine::Redb)
            .then(|| config.node.data_dir.clone()),
    }
}

/// The sample admission every input shares, knowing the metrics the store
/// already fixed (and the self-metrics, counters by definition).
fn build_ingestor(
    config: &Config,
    pipeline: &Arc<Pipeline>,
    limits: &Arc<MessageLimits>,
) -> Ingestor {
    let agg = &config.aggregation;
    let registry = Arc::new(Registry::with_known(
        pipeline
            .context()
            .store
            .metrics()
            .into_iter()
            .map(|m| (m.name, m.kind))
            .chain(
                self_metric_names()
                    .into_iter()
                    .map(|n| (n, strata_model::Kind::Counter)),
            ),
    ));
    Ingestor::new(
        pipeline.clone(),
        registry,
        IngestSettings {
            allowed_lateness_ms: strata_model::time::span_ms(agg.allowed_lateness_s, 1_000),
            max_future_ms: strata_model::time::span_ms(config.max_future_s().0, 1_000),
            default_apdex_threshold: agg.apdex_threshold,
            message_limits: limits.clone(),
        },
        config.http.max_inflight_requests,
    )
    .with_protection(
        Arc::new(config.limits()),
        Arc::new(core::cardinality::Cardinality::for_config(config)),
        Arc::new(api::auth::Tokens::new(
            &config.http.token,
            &config.http.ingest_token,
        )),
    )
}

/// Starts the forwarder task, resuming after what the upstream acknowledged
/// before the last stop.
fn spawn_forwarder(
    up: &config::UpstreamConfig,
    ctx: &Arc<Context>,
    pipeline: &Arc<Pipeline>,
    limits: &Arc<MessageLimits>,
) -> (Arc<Mutex<ForwarderState>>, ForwarderTask) {
    let spool = ctx.store.spool_stats();
    let acked_at_start = if spool.batches == 0 {
        spool.last_seq
    } else {
        spool.first_seq.saturating_sub(1)
    };
    let (acked_tx, acked_rx) = watch::channel(acked_at_start);
    let state = Arc::new(Mutex::new(ForwarderState::new(up)));
    let forwarder = Forwarder {
        config: up.clone(),
        node_id: ctx.node_id.clone(),
        epoch: ctx.store.epoch(),
        limits: limits.clone(),
        ctx: ctx.clone(),
        spool_seq: pipeline.spool_seq(),
        acked: acked_tx,
        state: state.clone(),
    };
    let stop = CancellationToken::new();
    let handle = tokio::spawn(forwarder.run(stop.clone()));
    let task = ForwarderTask {
        stop,
        handle,
        acked: acked_rx,
    };
    (state, task)
}

/// Loads the alarm rules and their stored state, and starts the evaluator
/// and the sender when there is anything to do.
async fn start_alarms(
    config: &Config,
    pipeline: &Arc<Pipeline>,
    settings: alarms::AlarmSettings,
) -> anyhow::Result<(Arc<alarms::Alarms>, Option<alarms::AlarmThreads>)> {
    let (id, rules, pipeline) = (
        config.node.id.clone(),
        config.alarm.clone(),
        pipeline.clone(),
    );
    let settings = settings.with_config(config);
    tokio::task::spawn_blocking(move || alarms::Alarms::start(&id, &rules, pipeline, settings))
        .await?
        .context("starting the alarm evaluator")
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
            // Its records belong to the store moved aside: which of them it
            // merged (and forwarded) is lost with it.
            if let Some(log) =
                strata_store::RequestLogFile::move_aside(&dir).with_context(context)?
            {
                tracing::warn!(moved_to = %log.display(), "request log moved aside with the store (--reset-store)");
            }
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
    /// What re-reads the listeners' certificates, key and client CA (the
    /// binary calls it on SIGHUP): new connections use the new files,
    /// established ones keep theirs, and a file that cannot be loaded keeps
    /// the previous certificates (logged, naming the file).
    pub fn tls_reloader(&self) -> net::tls::Reloader {
        self.tls.clone()
    }

    /// Resolves when a pipeline thread panicked, with what happened: the node
    /// cannot go on and must be shut down ([`fatal`]).
    pub async fn stopped_by(&self) -> String {
        self.api.ctx.fatal.wait().await
    }

    /// Stops in order: stop accepting and end source streams, let in-flight
    /// requests finish, final flush and commit, stop the alarm evaluator and
    /// sender (queued notifications stay in the outbox), forward until the
    /// upstream has acknowledged everything (bounded by `grace`), then exit.
    /// Whatever is not acknowledged by then stays in the spool for the next
    /// start.
    pub async fn shutdown(self, grace: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(node = %self.api.ctx.node_id, "shutting down: no longer accepting");
        self.accept_stop.cancel();
        if let Some(what) = self.api.ctx.fatal.get() {
            // Nothing more will be committed: do not hold requests until the deadline.
            self.api.pipeline.fail_pending(&what);
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
            let last = self.api.ctx.store.spool_stats().last_seq;
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
        tracing::info!(node = %self.api.ctx.node_id, "stopped");
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
