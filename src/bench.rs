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
use strata_proto::v1::{self, ingest_client::IngestClient};

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

fn node_toml(dir: &Path, id: &str, durable: bool) -> String {
    format!(
        "[node]\nid = \"{id}\"\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\nmax_inflight_requests = 1024\n\
         [grpc]\nlisten = \"127.0.0.1:0\"\n[storage]\nengine = \"{}\"\n\
         [otlp]\nlisten = \"\"\nhttp_listen = \"\"\nwait_commit = {durable}\n",
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

/// One push request: `batch` samples over a rotating window of series.
fn request(
    edge: usize,
    series: usize,
    batch: usize,
    offset: usize,
    rng: &mut u64,
) -> (v1::PushRequest, u64, u64) {
    let per_series = 10usize;
    let n_series = (batch / per_series).max(1);
    let mut out = Vec::with_capacity(n_series);
    let (mut counter_sum, mut hist_count) = (0u64, 0u64);
    for k in 0..n_series {
        let s = (offset + k) % series;
        let histogram = s.is_multiple_of(2);
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

async fn load(
    edge: usize,
    grpc: String,
    opts: Arc<BenchOptions>,
    stop: Arc<AtomicBool>,
    acked: Arc<Acked>,
    worker: usize,
) -> anyhow::Result<()> {
    if opts.otlp {
        return load_otlp(edge, grpc, opts, stop, acked, worker).await;
    }
    let mut client = IngestClient::connect(format!("http://{grpc}"))
        .await?
        .max_encoding_message_size(64 << 20);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((edge as u64) << 32 | worker as u64);
    let mut offset = worker * 7919;
    while !stop.load(Ordering::Relaxed) {
        let (mut req, counter_sum, hist_count) =
            request(edge, opts.series, opts.batch, offset, &mut rng);
        req.wait_commit = opts.durable;
        offset = (offset + opts.batch / 10) % opts.series.max(1);
        match client.push(req).await {
            Ok(r) => acked.add(r.into_inner().accepted, counter_sum, hist_count),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => acked.busy().await,
            Err(status) => bail!("push to edge {edge} failed: {status}"),
        }
    }
    Ok(())
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
        if !s.is_multiple_of(2) {
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
async fn load_otlp(
    edge: usize,
    grpc: String,
    opts: Arc<BenchOptions>,
    stop: Arc<AtomicBool>,
    acked: Arc<Acked>,
    worker: usize,
) -> anyhow::Result<()> {
    let mut client = otlp::MetricsServiceClient::connect(format!("http://{grpc}"))
        .await?
        .max_encoding_message_size(64 << 20);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((edge as u64) << 32 | worker as u64);
    let mut offset = worker * 7919;
    let points = (opts.batch / OBSERVATIONS_PER_POINT).max(1);
    while !stop.load(Ordering::Relaxed) {
        let (req, counter_sum, hist_count) =
            otlp_request(edge, opts.series, opts.batch, offset, &mut rng);
        offset = (offset + points) % opts.series.max(1);
        match client.export(req).await {
            Ok(r) => {
                if let Some(partial) = r.into_inner().partial_success
                    && partial.rejected_data_points > 0
                {
                    bail!("edge {edge} refused data points: {}", partial.error_message);
                }
                acked.add(counter_sum + hist_count, counter_sum, hist_count);
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => acked.busy().await,
            Err(status) => bail!("OTLP export to edge {edge} failed: {status}"),
        }
    }
    Ok(())
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

#[allow(clippy::print_stdout)]
pub async fn run(opts: BenchOptions) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("strata-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, opts).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Starts the global and the edges, each edge forwarding to the global.
fn start_topology(dir: &Path, opts: &BenchOptions) -> anyhow::Result<(Proc, Vec<Proc>)> {
    let mut global_toml = node_toml(dir, "global", opts.durable);
    for i in 0..opts.edges {
        global_toml.push_str(&format!(
            "[[downstream]]\nid = \"edge{i}\"\ntoken = \"t{i}\"\n"
        ));
    }
    let global = spawn(&write_config(dir, "global", &global_toml)?)?;
    let mut edges = Vec::new();
    for i in 0..opts.edges {
        let toml = format!(
            "{}[upstream]\nendpoint = \"http://{}\"\ntoken = \"t{i}\"\n",
            node_toml(dir, &format!("edge{i}"), opts.durable),
            global.grpc
        );
        edges.push(spawn(&write_config(dir, &format!("edge{i}"), &toml)?)?);
    }
    Ok((global, edges))
}

/// Drives `concurrency` loaders per edge and a freshness probe for
/// `opts.duration`, printing the acknowledged rate every second; returns how
/// long the load ran and the freshness samples.
#[allow(clippy::print_stdout)]
async fn drive_load(
    opts: &Arc<BenchOptions>,
    global: &Proc,
    edges: &[Proc],
    acked: &Arc<Acked>,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, e) in edges.iter().enumerate() {
        for w in 0..opts.concurrency {
            tasks.push(tokio::spawn(load(
                i,
                e.grpc.clone(),
                opts.clone(),
                stop.clone(),
                acked.clone(),
                w,
            )));
        }
    }
    let probe = tokio::spawn(freshness_probe(
        edges[0].http.clone(),
        global.http.clone(),
        stop.clone(),
    ));
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
    for t in tasks {
        t.await??;
    }
    let load_secs = started.elapsed().as_secs_f64();
    Ok((load_secs, probe.await?))
}

/// Polls the global (up to 2 minutes) until its totals since `from_ms` equal
/// `want`; returns the last totals seen.
async fn wait_for_totals(
    global_http: &str,
    from_ms: i64,
    want: (u64, u64),
) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = (0, 0);
    while Instant::now() < deadline {
        let g = global_http.to_string();
        got = tokio::task::spawn_blocking(move || global_totals(&g, from_ms)).await?;
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(got)
}

#[allow(clippy::print_stdout)]
async fn run_in(dir: &Path, opts: BenchOptions) -> anyhow::Result<()> {
    let opts = Arc::new(opts);
    let (global, edges) = start_topology(dir, &opts)?;
    let pids: Vec<u32> = std::iter::once(global.child.id())
        .chain(edges.iter().map(|e| e.child.id()))
        .collect();
    println!(
        "bench: {} edge(s) → global, {} series, {} s, {}, {}",
        opts.edges,
        opts.series,
        opts.duration.as_secs(),
        if opts.otlp {
            "OTLP exports (100 observations per data point)"
        } else {
            "native pushes"
        },
        if opts.durable {
            "durable (redb, wait_commit)"
        } else {
            "best-effort (memory store)"
        }
    );
    let start_ms = strata_server::now_ms();
    let cpu_before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let self_cpu_before = cpu_seconds(std::process::id());
    let inc_before = metric_value(&prom(&global.http), "strata_federation_increments_total");
    let acked = Arc::new(Acked::default());
    let started = Instant::now();
    let (load_secs, mut freshness) = drive_load(&opts, &global, &edges, &acked).await?;

    // Drain: the global totals must reach exactly what was acknowledged.
    let want = (
        acked.counter_sum.load(Ordering::Relaxed),
        acked.hist_count.load(Ordering::Relaxed),
    );
    let got = wait_for_totals(&global.http, start_ms - 60_000, want).await?;
    let drained_secs = started.elapsed().as_secs_f64();
    let exact = got == want;
    let cpu: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu_before;
    let loadgen_cpu = cpu_seconds(std::process::id()) - self_cpu_before;
    let prom_text = prom(&global.http);
    let increments = metric_value(&prom_text, "strata_federation_increments_total") - inc_before;
    let series = metric_value(&prom_text, "strata_series");
    let rss = rss_bytes(global.child.id());
    let samples = acked.samples.load(Ordering::Relaxed);
    if !exact {
        println!(
            "  NOT EXACT: global has counter sum {} / histogram count {}, acknowledged {} / {}",
            got.0, got.1, want.0, want.1
        );
    }
    let figures = json!({
        "edges": opts.edges,
        "series": opts.series,
        "durable": opts.durable,
        "otlp": opts.otlp,
        "duration_s": load_secs,
        "samples": samples,
        "samples_per_s": samples as f64 / load_secs,
        "busy_rejections": acked.rejected.load(Ordering::Relaxed),
        "increments_per_s_global": increments / drained_secs,
        "freshness_p50_ms": exact_quantile(&mut freshness, 0.5),
        "freshness_p99_ms": exact_quantile(&mut freshness, 0.99),
        "cpu_s_strata": cpu,
        "cpu_s_loadgen": loadgen_cpu,
        "cpu_s_per_million_samples": cpu / (samples as f64 / 1e6),
        "rss_bytes_global": rss,
        "series_global": series,
        "rss_bytes_per_series_global": if series > 0.0 { rss as f64 / series } else { f64::NAN },
        "exact": exact,
    });
    println!("{figures}");
    drop(edges);
    drop(global);
    if !exact {
        bail!("global totals differ from what was acknowledged");
    }
    Ok(())
}
