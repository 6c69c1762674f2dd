//! `strata bench`: a real topology under load, measured.
//!
//! Starts one global and N edge processes of this same binary on loopback,
//! drives the edges with batched native gRPC ingest (histograms and counters
//! over `--series` series) — or, with `--otlp`, with OTLP/gRPC exports as an
//! OpenTelemetry SDK sends them (delta exponential histograms of 100
//! observations per data point, and counters) — for `--duration` seconds,
//! then waits until the
//! global tier's totals equal exactly what the edges acknowledged. Prints
//! progress every second and, as its last line, one JSON object of figures.
//! Each push's acknowledgement latency goes into a histogram of bounded size.
//! With `--memory-passes`, two more passes follow on fresh topologies — every
//! series a histogram, then every series a counter — to measure the global's
//! memory per series of each kind; every pass runs the same code
//! ([`run_pass`]), parameterised by its [`Mix`].
//!
//! With `--global-only` the bench plays the edges itself and streams
//! increments straight to the global ([`sources`]), to measure the global
//! tier alone.
//!
//! CPU is read from `/proc/<pid>/stat` of the strata processes (the load
//! generator is reported separately); RSS from `/proc/<pid>/status`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use strata_model::Hist;
use strata_proto::v1::{self, ingest_client::IngestClient};

mod sources;

/// Options of one run.
pub struct BenchOptions {
    pub duration: Duration,
    pub edges: usize,
    pub series: usize,
    pub durable: bool,
    /// Samples per push request.
    pub batch: usize,
    /// Concurrent push loops per edge.
    pub concurrency: usize,
    /// OTLP exports instead of native pushes (`samples` are then the
    /// observations the exports summarise).
    pub otlp: bool,
    /// After the main run, a histograms-only and a counters-only pass, each
    /// on a fresh topology, for the global's memory per series of each kind.
    pub memory_passes: bool,
    /// No edge processes: the bench plays `edges` sources itself and streams
    /// batches of increments to the global, up to `concurrency` in flight
    /// per source ([`sources`]).
    pub global_only: bool,
    /// With `global_only`: each source sends at most one flush per this
    /// interval, as an edge flushing on it does (the global's steady state),
    /// instead of as fast as the global acknowledges.
    pub flush_every: Option<Duration>,
}

/// Which of the load's series are histograms and which are counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mix {
    /// Even series histograms, odd series counters: the main run.
    Mixed,
    /// Every series a histogram.
    Histograms,
    /// Every series a counter.
    Counters,
}

impl Mix {
    /// Whether series number `s` is a histogram (else a counter).
    fn histogram(self, s: usize) -> bool {
        match self {
            Mix::Mixed => s.is_multiple_of(2),
            Mix::Histograms => true,
            Mix::Counters => false,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mix::Mixed => "half histograms, half counters",
            Mix::Histograms => "histograms only",
            Mix::Counters => "counters only",
        }
    }

    /// The pass's directory under the run's.
    fn dir_name(self) -> &'static str {
        match self {
            Mix::Mixed => "mixed",
            Mix::Histograms => "histograms",
            Mix::Counters => "counters",
        }
    }
}

struct Proc {
    child: Child,
    http: String,
    grpc: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &Path) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["run", "--config"])
        .arg(config)
        .env("STRATA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a strata process")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let v: Value = serde_json::from_str(line.trim())
        .with_context(|| format!("the node did not report its addresses: {line:?}"))?;
    Ok(Proc {
        child,
        http: v["http"].as_str().unwrap_or_default().to_string(),
        grpc: v["grpc"].as_str().unwrap_or_default().to_string(),
    })
}

fn write_config(dir: &Path, id: &str, body: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, body)?;
    Ok(path)
}

/// Room above the load's own series in the limits the bench sets.
const LIMIT_HEADROOM: usize = 1_000;

/// A node's config. Its limits fit the load: each edge's direct ingest, and
/// each edge as a source at the global, brings `--series` series and the
/// freshness probe's one (`limits.max_series_per_source`); the totals query
/// selects every series of one metric at the global, up to `--edges` ×
/// `--series` when every series is of one kind (`limits.max_query_series`).
fn node_toml(dir: &Path, id: &str, opts: &BenchOptions) -> String {
    let durable = opts.durable;
    let series_per_source = opts.series.saturating_add(LIMIT_HEADROOM);
    let query_series = opts
        .edges
        .saturating_mul(opts.series)
        .saturating_add(LIMIT_HEADROOM);
    format!(
        "[node]\nid = \"{id}\"\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\nmax_inflight_requests = 1024\n\
         [grpc]\nlisten = \"127.0.0.1:0\"\n[storage]\nengine = \"{}\"\n\
         [otlp]\nlisten = \"\"\nhttp_listen = \"\"\nwait_commit = {durable}\n\
         [limits]\nmax_series_per_source = {series_per_source}\nmax_query_series = {query_series}\n",
        dir.join(id).display(),
        if durable { "redb" } else { "memory" }
    )
}

/// utime + stime of a process, in seconds (clock ticks at the Linux default of 100 Hz).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit(')').next() else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_bytes(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn get_json(url: &str) -> anyhow::Result<Value> {
    let mut resp = ureq::get(url).call()?;
    Ok(resp.body_mut().read_json()?)
}

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn prom(http: &str) -> String {
    ureq::get(&format!("http://{http}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

/// What the load generator had acknowledged.
#[derive(Default)]
struct Acked {
    samples: AtomicU64,
    counter_sum: AtomicU64,
    hist_count: AtomicU64,
    rejected: AtomicU64,
}

impl Acked {
    /// An acknowledged request: its samples, counter increments and
    /// histogram observations.
    fn add(&self, samples: u64, counter_sum: u64, hist_count: u64) {
        self.samples.fetch_add(samples, Ordering::Relaxed);
        self.counter_sum.fetch_add(counter_sum, Ordering::Relaxed);
        self.hist_count.fetch_add(hist_count, Ordering::Relaxed);
    }

    /// A request refused as busy: counted, and a short pause before the next.
    async fn busy(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn label(name: &str, value: String) -> v1::Label {
    v1::Label {
        name: name.into(),
        value,
    }
}

/// xorshift: cheap deterministic latencies of 5–405 ms.
fn latency(rng: &mut u64) -> f64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    5.0 + (*rng % 40_000) as f64 / 100.0
}

/// One push request: `batch` samples over a rotating window of series, each
/// a histogram or a counter as `mix` has it.
fn request(
    edge: usize,
    series: usize,
    batch: usize,
    offset: usize,
    mix: Mix,
    rng: &mut u64,
) -> (v1::PushRequest, u64, u64) {
    let per_series = 10usize;
    let n_series = (batch / per_series).max(1);
    let mut out = Vec::with_capacity(n_series);
    let (mut counter_sum, mut hist_count) = (0u64, 0u64);
    for k in 0..n_series {
        let s = (offset + k) % series;
        let histogram = mix.histogram(s);
        let mut points = Vec::with_capacity(per_series);
        for _ in 0..per_series {
            let value = if histogram {
                hist_count += 1;
                latency(rng)
            } else {
                counter_sum += 1;
                1.0
            };
            points.push(v1::Point { ts_ms: 0, value });
        }
        out.push(v1::SeriesSamples {
            metric: if histogram {
                "bench_latency_ms".into()
            } else {
                "bench_requests".into()
            },
            kind: if histogram {
                v1::Kind::Histogram as i32
            } else {
                v1::Kind::Counter as i32
            },
            labels: vec![
                label("edge", format!("e{edge}")),
                label("series", format!("s{s}")),
            ],
            points,
            apdex_threshold: 0.0,
        });
    }
    (
        v1::PushRequest {
            series: out,
            wait_commit: false,
        },
        counter_sum,
        hist_count,
    )
}

/// Significant digits of the acknowledgement-latency histograms: buckets
/// 0.1% wide. A histogram's size depends on the range of the latencies (tens
/// of KiB at most for a millisecond to a minute), not on the number of pushes.
const ACK_SIGFIG: u8 = 3;

/// One push loop: the edge it drives, and what it shares with the others.
struct Loader {
    edge: usize,
    worker: usize,
    grpc: String,
    opts: Arc<BenchOptions>,
    mix: Mix,
    stop: Arc<AtomicBool>,
    acked: Arc<Acked>,
}

impl Loader {
    /// A seed of its own for the latencies the loop sends.
    fn seed(&self) -> u64 {
        0x9E37_79B9_7F4A_7C15u64 ^ ((self.edge as u64) << 32 | self.worker as u64)
    }
}

/// Milliseconds since `sent`, recorded into `acks`.
fn record_ack(acks: &mut Hist, sent: Instant) -> anyhow::Result<()> {
    acks.record(sent.elapsed().as_secs_f64() * 1e3)
        .context("recording an acknowledgement latency")
}

/// Pushes until stopped; returns the acknowledgement latency (ms) of every
/// acknowledged push: for durable runs the wait for the commit, otherwise
/// the admission into the aggregator.
async fn load(l: Loader) -> anyhow::Result<Hist> {
    if l.opts.otlp {
        return load_otlp(l).await;
    }
    let (edge, opts) = (l.edge, &l.opts);
    let mut client = IngestClient::connect(format!("http://{}", l.grpc))
        .await
        .with_context(|| format!("connecting to edge {edge} at {}", l.grpc))?
        .max_encoding_message_size(64 << 20);
    let mut rng = l.seed();
    let mut offset = l.worker * 7919;
    let mut acks = Hist::new(ACK_SIGFIG)?;
    while !l.stop.load(Ordering::Relaxed) {
        let (mut req, counter_sum, hist_count) =
            request(edge, opts.series, opts.batch, offset, l.mix, &mut rng);
        req.wait_commit = opts.durable;
        offset = (offset + opts.batch / 10) % opts.series.max(1);
        let sent = Instant::now();
        match client.push(req).await {
            Ok(r) => {
                record_ack(&mut acks, sent)?;
                l.acked
                    .add(r.into_inner().accepted, counter_sum, hist_count);
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                l.acked.busy().await;
            }
            Err(status) => bail!("push to edge {edge} failed: {status}"),
        }
    }
    Ok(acks)
}

/// Observations one OTLP histogram data point summarises, as an SDK's
/// export interval would.
const OBSERVATIONS_PER_POINT: usize = 100;

/// The scale of the benchmark's exponential histograms: 5–405 ms spans about
/// 100 buckets at scale 4, within the SDKs' 160.
const OTLP_SCALE: i32 = 4;

/// One OTLP export: `batch` observations over a rotating window of series,
/// each histogram data point summarising [`OBSERVATIONS_PER_POINT`] of them,
/// each counter data point as many increments.
fn otlp_request(
    edge: usize,
    series: usize,
    batch: usize,
    offset: usize,
    mix: Mix,
    rng: &mut u64,
) -> (otlp::ExportMetricsServiceRequest, u64, u64) {
    let n_points = (batch / OBSERVATIONS_PER_POINT).max(1);
    let now_ns = (strata_server::now_ms() as u64).saturating_mul(1_000_000);
    let (mut counter_sum, mut hist_count) = (0u64, 0u64);
    let (mut hists, mut counters) = (Vec::new(), Vec::new());
    for k in 0..n_points {
        let s = (offset + k) % series;
        let attributes = vec![
            otlp_attr("edge", format!("e{edge}")),
            otlp_attr("series", format!("s{s}")),
        ];
        if !mix.histogram(s) {
            counter_sum += OBSERVATIONS_PER_POINT as u64;
            counters.push(otlp::NumberDataPoint {
                attributes,
                start_time_unix_nano: now_ns.saturating_sub(1_000_000_000),
                time_unix_nano: now_ns,
                value: Some(otlp::number_data_point::Value::AsInt(
                    OBSERVATIONS_PER_POINT as i64,
                )),
                ..Default::default()
            });
            continue;
        }
        hist_count += OBSERVATIONS_PER_POINT as u64;
        hists.push(exp_point(attributes, now_ns, rng));
    }
    let delta = otlp::AggregationTemporality::Delta as i32;
    let metrics = vec![
        otlp::Metric {
            name: "bench_latency_ms".into(),
            data: Some(otlp::metric::Data::ExponentialHistogram(
                otlp::ExponentialHistogram {
                    data_points: hists,
                    aggregation_temporality: delta,
                },
            )),
            ..Default::default()
        },
        otlp::Metric {
            name: "bench_requests".into(),
            data: Some(otlp::metric::Data::Sum(otlp::Sum {
                data_points: counters,
                aggregation_temporality: delta,
                is_monotonic: true,
            })),
            ..Default::default()
        },
    ];
    let request = otlp::ExportMetricsServiceRequest {
        resource_metrics: vec![otlp::ResourceMetrics {
            scope_metrics: vec![otlp::ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (request, counter_sum, hist_count)
}

/// A delta exponential histogram data point of [`OBSERVATIONS_PER_POINT`]
/// latencies around 5–405 ms.
fn exp_point(
    attributes: Vec<otlp::KeyValue>,
    now_ns: u64,
    rng: &mut u64,
) -> otlp::ExponentialHistogramDataPoint {
    let mut counts: Vec<u64> = Vec::new();
    let (mut lo, mut sum, mut min, mut max) = (i32::MAX, 0.0, f64::INFINITY, 0.0f64);
    let mut indices = Vec::with_capacity(OBSERVATIONS_PER_POINT);
    for _ in 0..OBSERVATIONS_PER_POINT {
        let v = latency(rng);
        let i = strata_model::exp_hist::map_to_index(v, OTLP_SCALE);
        lo = lo.min(i);
        indices.push(i);
        sum += v;
        min = min.min(v);
        max = max.max(v);
    }
    for i in indices {
        let at = (i - lo) as usize;
        if counts.len() <= at {
            counts.resize(at + 1, 0);
        }
        counts[at] += 1;
    }
    otlp::ExponentialHistogramDataPoint {
        attributes,
        start_time_unix_nano: now_ns.saturating_sub(1_000_000_000),
        time_unix_nano: now_ns,
        count: OBSERVATIONS_PER_POINT as u64,
        sum: Some(sum),
        scale: OTLP_SCALE,
        positive: Some(otlp::exponential_histogram_data_point::Buckets {
            offset: lo,
            bucket_counts: counts,
        }),
        min: Some(min),
        max: Some(max),
        ..Default::default()
    }
}

fn otlp_attr(key: &str, value: String) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.into(),
        value: Some(otlp::AnyValue {
            value: Some(otlp::any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

/// [`load`] as an OpenTelemetry SDK: OTLP/gRPC exports to the edge's gRPC port.
async fn load_otlp(l: Loader) -> anyhow::Result<Hist> {
    let (edge, opts) = (l.edge, &l.opts);
    let mut client = otlp::MetricsServiceClient::connect(format!("http://{}", l.grpc))
        .await
        .with_context(|| format!("connecting to edge {edge} at {}", l.grpc))?
        .max_encoding_message_size(64 << 20);
    let mut rng = l.seed();
    let mut offset = l.worker * 7919;
    let points = (opts.batch / OBSERVATIONS_PER_POINT).max(1);
    let mut acks = Hist::new(ACK_SIGFIG)?;
    while !l.stop.load(Ordering::Relaxed) {
        let (req, counter_sum, hist_count) =
            otlp_request(edge, opts.series, opts.batch, offset, l.mix, &mut rng);
        offset = (offset + points) % opts.series.max(1);
        let sent = Instant::now();
        match client.export(req).await {
            Ok(r) => {
                record_ack(&mut acks, sent)?;
                if let Some(partial) = r.into_inner().partial_success
                    && partial.rejected_data_points > 0
                {
                    bail!("edge {edge} refused data points: {}", partial.error_message);
                }
                l.acked
                    .add(counter_sum + hist_count, counter_sum, hist_count);
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                l.acked.busy().await;
            }
            Err(status) => bail!("OTLP export to edge {edge} failed: {status}"),
        }
    }
    Ok(acks)
}

/// The OTLP types the benchmark sends.
mod otlp {
    pub use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    pub use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    pub use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    pub use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exponential_histogram_data_point,
        metric, number_data_point,
    };
}

/// Sends a `latest` probe stamped with the send time to edge 0, and polls the
/// global tier until it shows it: freshness = visible time − stamp.
async fn freshness_probe(
    edge_http: String,
    global_http: String,
    stop: Arc<AtomicBool>,
) -> Vec<f64> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let sent = strata_server::now_ms();
        let body = format!(
            "{{\"metric\":\"bench_probe\",\"kind\":\"latest\",\"ts_ms\":{sent},\"value\":{sent}}}\n"
        );
        let (e, g) = (edge_http.clone(), global_http.clone());
        let seen = tokio::task::spawn_blocking(move || -> Option<i64> {
            ureq::post(&format!("http://{e}/api/v1/ingest"))
                .send(body)
                .ok()?;
            let url = format!("http://{g}/api/v1/query?q=bench_probe&step=all&group_by=&from=-5m");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(v) = get_json(&url)
                    && v["data"]["series"][0]["points"][0]["value"]["value"].as_f64()
                        >= Some(sent as f64)
                {
                    return Some(strata_server::now_ms() - sent);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        })
        .await
        .ok()
        .flatten();
        if let Some(ms) = seen {
            samples.push(ms as f64);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    samples
}

/// The exact quantile as HdrHistogram defines it: the smallest value with at
/// least ceil(q·n) values at or below it. NaN when there are none.
pub(crate) fn exact_quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn global_totals(global_http: &str, from_ms: i64) -> (u64, u64) {
    let q = |metric: &str| {
        let url = format!(
            "http://{global_http}/api/v1/query?q={metric}&step=all&group_by=&from={from_ms}"
        );
        get_json(&url)
            .ok()
            .and_then(|v| v["data"]["series"][0]["points"][0]["value"]["count"].as_u64())
            .unwrap_or(0)
    };
    (q("bench_requests"), q("bench_latency_ms"))
}

pub async fn run(opts: BenchOptions) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("strata-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(&dir, opts).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Starts the global and the edges, each edge forwarding to the global.
fn start_topology(dir: &Path, opts: &BenchOptions) -> anyhow::Result<(Proc, Vec<Proc>)> {
    let mut global_toml = node_toml(dir, "global", opts);
    for i in 0..opts.edges {
        global_toml.push_str(&format!(
            "[[downstream]]\nid = \"edge{i}\"\ntoken = \"t{i}\"\n"
        ));
    }
    let global = spawn(&write_config(dir, "global", &global_toml)?)?;
    let mut edges = Vec::new();
    if opts.global_only {
        return Ok((global, edges));
    }
    for i in 0..opts.edges {
        let toml = format!(
            "{}[upstream]\nendpoint = \"http://{}\"\ntoken = \"t{i}\"\n",
            node_toml(dir, &format!("edge{i}"), opts),
            global.grpc
        );
        edges.push(spawn(&write_config(dir, &format!("edge{i}"), &toml)?)?);
    }
    Ok((global, edges))
}

/// What the load of one pass gathered.
struct Driven {
    /// Seconds the load ran.
    secs: f64,
    /// Freshness probe samples, in milliseconds.
    freshness: Vec<f64>,
    /// Acknowledgement latency of every acknowledged push, in milliseconds.
    acks: Hist,
}

/// Drives `concurrency` loaders per edge and a freshness probe for
/// `opts.duration`, printing the acknowledged rate every second.
#[allow(clippy::print_stdout)]
async fn drive_load(
    opts: &Arc<BenchOptions>,
    mix: Mix,
    global: &Proc,
    edges: &[Proc],
    acked: &Arc<Acked>,
) -> anyhow::Result<Driven> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    if opts.global_only {
        for source in 0..opts.edges {
            tasks.push(tokio::spawn(sources::play(sources::Source {
                source,
                grpc: global.grpc.clone(),
                opts: opts.clone(),
                mix,
                stop: stop.clone(),
                acked: acked.clone(),
            })));
        }
    }
    for (edge, e) in edges.iter().enumerate() {
        for worker in 0..opts.concurrency {
            tasks.push(tokio::spawn(load(Loader {
                edge,
                worker,
                grpc: e.grpc.clone(),
                opts: opts.clone(),
                mix,
                stop: stop.clone(),
                acked: acked.clone(),
            })));
        }
    }
    // Freshness is an edge's sample seen at the global: none without edges.
    let probe = edges.first().map(|edge| {
        tokio::spawn(freshness_probe(
            edge.http.clone(),
            global.http.clone(),
            stop.clone(),
        ))
    });
    let started = Instant::now();
    let mut last = 0u64;
    while started.elapsed() < opts.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = acked.samples.load(Ordering::Relaxed);
        println!(
            "  t={:>3}s  {:>10} samples/s acknowledged",
            started.elapsed().as_secs(),
            now - last
        );
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acks = Hist::new(ACK_SIGFIG)?;
    for t in tasks {
        acks.merge(&t.await??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Driven {
        secs,
        freshness: match probe {
            Some(probe) => probe.await?,
            None => Vec::new(),
        },
        acks,
    })
}

/// How long the drain may take before the totals are declared different.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

/// The most an edge's spool holds once it has forwarded all its data: the
/// batch of one flush without increments (its watermark), in flight.
const IDLE_SPOOL_BYTES: f64 = 1024.0;

/// Whether an edge (its `/metrics` text) has forwarded all its increments
/// but the last few: at most one small batch waits for the global's
/// acknowledgement. An edge that cannot be read counts as settled.
fn spool_settled(metrics: &str) -> bool {
    metric_value(metrics, "strata_spool_batches") <= 1.0
        && metric_value(metrics, "strata_spool_bytes") <= IDLE_SPOOL_BYTES
}

/// Polls the global (up to [`DRAIN_LIMIT`]) until its totals since `from_ms`
/// equal `want`; returns the last totals seen. The totals query reads every
/// series, which costs the global CPU with many series, so it is sent only
/// once every edge's spool has settled ([`spool_settled`]), and once more
/// at the limit.
async fn wait_for_totals(
    global: &Proc,
    edges: &[Proc],
    from_ms: i64,
    want: (u64, u64),
) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let edge_http: Vec<String> = edges.iter().map(|e| e.http.clone()).collect();
    loop {
        let (g, e) = (global.http.clone(), edge_http.clone());
        let last_try = Instant::now() >= deadline;
        let seen = tokio::task::spawn_blocking(move || {
            let settled = e.iter().all(|h| spool_settled(&prom(h)));
            (last_try || settled).then(|| global_totals(&g, from_ms))
        })
        .await?;
        match seen {
            Some(got) if got == want || last_try => return Ok(got),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Figures read from the processes at the start and at the end of a pass.
struct Readings {
    /// CPU seconds of every strata process.
    cpu_strata: f64,
    /// CPU seconds of the global process.
    cpu_global: f64,
    /// CPU seconds of this process, the load generator.
    cpu_loadgen: f64,
    /// Increments the global merged from the edges
    /// (`strata_federation_increments_total`).
    increments: f64,
    /// Series in the global's store (`strata_series`).
    series: f64,
    /// The global's resident set.
    rss_global: u64,
}

impl Readings {
    async fn take(global: &Proc, pids: &[u32]) -> anyhow::Result<Readings> {
        let (http, global_pid, pids) = (global.http.clone(), global.child.id(), pids.to_vec());
        let readings = tokio::task::spawn_blocking(move || {
            let text = prom(&http);
            Readings {
                cpu_strata: pids.iter().map(|p| cpu_seconds(*p)).sum(),
                cpu_global: cpu_seconds(global_pid),
                cpu_loadgen: cpu_seconds(std::process::id()),
                increments: metric_value(&text, "strata_federation_increments_total"),
                series: metric_value(&text, "strata_series"),
                rss_global: rss_bytes(global_pid),
            }
        })
        .await?;
        Ok(readings)
    }
}

/// One pass: a fresh topology loaded with one [`Mix`], drained and measured.
struct Pass {
    /// At the start of the load, the global idle and without series.
    start: Readings,
    /// Once the global's totals matched (or the drain gave up).
    end: Readings,
    driven: Driven,
    acked: Arc<Acked>,
    /// Seconds from the start of the load to the end of the drain.
    drained_secs: f64,
    /// The global's counter sum and histogram count since the start.
    got: (u64, u64),
    /// What the edges acknowledged.
    want: (u64, u64),
}

/// `seconds` per million of `count`; NaN (null in the JSON) without any.
fn per_million(seconds: f64, count: f64) -> f64 {
    if count > 0.0 {
        seconds / (count / 1e6)
    } else {
        f64::NAN
    }
}

impl Pass {
    fn exact(&self) -> bool {
        self.got == self.want
    }

    fn increments(&self) -> f64 {
        self.end.increments - self.start.increments
    }

    fn global_cpu_per_million_increments(&self) -> f64 {
        per_million(
            self.end.cpu_global - self.start.cpu_global,
            self.increments(),
        )
    }

    /// The global's RSS at the end above its idle RSS at the start, per
    /// series in its store at the end.
    fn rss_per_series_above_idle(&self) -> f64 {
        if self.end.series > 0.0 {
            (self.end.rss_global as f64 - self.start.rss_global as f64) / self.end.series
        } else {
            f64::NAN
        }
    }

    /// The pass's figures, as the JSON line has them.
    fn figures(&mut self, opts: &BenchOptions) -> serde_json::Map<String, Value> {
        let secs = self.driven.secs;
        let samples = self.acked.samples.load(Ordering::Relaxed);
        let cpu = self.end.cpu_strata - self.start.cpu_strata;
        let cpu_global = self.end.cpu_global - self.start.cpu_global;
        let (rss, series) = (self.end.rss_global, self.end.series);
        let figures = json!({
            "edges": opts.edges,
            "series": opts.series,
            "durable": opts.durable,
            "global_only": opts.global_only,
            "flush_every_ms": opts.flush_every.map(|d| d.as_millis() as u64),
            "otlp": opts.otlp,
            "duration_s": secs,
            "samples": samples,
            "samples_per_s": samples as f64 / secs,
            "busy_rejections": self.acked.rejected.load(Ordering::Relaxed),
            "increments_per_s_global": self.increments() / self.drained_secs,
            "freshness_p50_ms": exact_quantile(&mut self.driven.freshness, 0.5),
            "freshness_p99_ms": exact_quantile(&mut self.driven.freshness, 0.99),
            "ack_latency_p50_ms": self.driven.acks.quantile(0.5),
            "ack_latency_p99_ms": self.driven.acks.quantile(0.99),
            "cpu_s_strata": cpu,
            "cpu_s_loadgen": self.end.cpu_loadgen - self.start.cpu_loadgen,
            "cpu_s_per_million_samples": per_million(cpu, samples as f64),
            "cpu_s_global": cpu_global,
            "global_cpu_s_per_million_increments": self.global_cpu_per_million_increments(),
            "rss_bytes_global": rss,
            "series_global": series,
            "rss_bytes_per_series_global": if series > 0.0 { rss as f64 / series } else { f64::NAN },
        });
        match figures {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }

    #[allow(clippy::print_stdout)]
    fn print_summary(&self) {
        if !self.exact() {
            println!(
                "  NOT EXACT: global has counter sum {} / histogram count {}, acknowledged {} / {}",
                self.got.0, self.got.1, self.want.0, self.want.1
            );
        }
        println!(
            "  drained after {:.1} s; acknowledgements p50 {:.2} ms, p99 {:.2} ms; \
             the global merged {} increments at {:.2} CPU-s per million",
            self.drained_secs,
            self.driven.acks.quantile(0.5),
            self.driven.acks.quantile(0.99),
            self.increments(),
            self.global_cpu_per_million_increments()
        );
    }
}

/// Runs one pass in a directory of its own under `dir`: starts a fresh
/// topology, reads the idle global, loads the edges with `mix`, waits for
/// the global's totals, reads again, and stops the topology.
async fn run_pass(dir: &Path, opts: &Arc<BenchOptions>, mix: Mix) -> anyhow::Result<Pass> {
    let dir = dir.join(mix.dir_name());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (global, edges) = start_topology(&dir, opts)?;
    let pids: Vec<u32> = std::iter::once(global.child.id())
        .chain(edges.iter().map(|e| e.child.id()))
        .collect();
    let start_ms = strata_server::now_ms();
    let start = Readings::take(&global, &pids).await?;
    let acked = Arc::new(Acked::default());
    let started = Instant::now();
    let driven = drive_load(opts, mix, &global, &edges, &acked).await?;
    // Drain: the global totals must reach exactly what was acknowledged.
    let want = (
        acked.counter_sum.load(Ordering::Relaxed),
        acked.hist_count.load(Ordering::Relaxed),
    );
    let got = wait_for_totals(&global, &edges, start_ms - 60_000, want).await?;
    let drained_secs = started.elapsed().as_secs_f64();
    let end = Readings::take(&global, &pids).await?;
    drop(edges);
    drop(global);
    let _ = std::fs::remove_dir_all(&dir);
    let pass = Pass {
        start,
        end,
        driven,
        acked,
        drained_secs,
        got,
        want,
    };
    pass.print_summary();
    Ok(pass)
}

#[allow(clippy::print_stdout)]
async fn run_in(dir: &Path, opts: BenchOptions) -> anyhow::Result<()> {
    let opts = Arc::new(opts);
    println!(
        "bench: {} {} → global, {} series per edge ({}), {} s, {}, {}{}",
        opts.edges,
        if opts.global_only {
            "source(s) played by the bench"
        } else {
            "edge(s)"
        },
        opts.series,
        Mix::Mixed.describe(),
        opts.duration.as_secs(),
        if opts.global_only {
            "flushes of one increment per series streamed to the global"
        } else if opts.otlp {
            "OTLP exports (100 observations per data point)"
        } else {
            "native pushes"
        },
        if opts.durable {
            "durable (redb, wait_commit)"
        } else {
            "best-effort (memory store)"
        },
        if opts.memory_passes {
            "; then memory passes"
        } else {
            ""
        }
    );
    let mut main = run_pass(dir, &opts, Mix::Mixed).await?;
    let mut exact = main.exact();
    let mut figures = main.figures(&opts);
    if opts.memory_passes {
        let passes = [
            (Mix::Histograms, "rss_bytes_per_histogram_series_global"),
            (Mix::Counters, "rss_bytes_per_counter_series_global"),
        ];
        for (mix, key) in passes {
            println!("memory pass: {}, on a fresh topology", mix.describe());
            let pass = run_pass(dir, &opts, mix).await?;
            exact &= pass.exact();
            let per_series = pass.rss_per_series_above_idle();
            println!(
                "  global RSS {:.1} MB idle, {:.1} MB with {} series: {per_series:.0} bytes per series",
                pass.start.rss_global as f64 / 1e6,
                pass.end.rss_global as f64 / 1e6,
                pass.end.series
            );
            figures.insert(key.into(), json!(per_series));
        }
    }
    figures.insert("exact".into(), json!(exact));
    println!("{}", Value::Object(figures));
    if !exact {
        bail!("global totals differ from what was acknowledged");
    }
    Ok(())
}
