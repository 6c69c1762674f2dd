//! `strata demo`: two clouds feeding a global tier, on loopback, with
//! synthetic traffic whose latency differs per cloud.
//!
//! It prints the global tier's console URL first, then every few seconds
//! each tier's ingest and forward rates, the p99 of `checkout` latency in
//! each cloud, the global p99 that strata merges
//! from full histograms, the exact p99 of the raw samples (the demo keeps
//! them), and what averaging the clouds' p99s would have said.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use raw::Samples;
use serde_json::Value;
use strata_server::{Config, RunningTier};

/// Raw checkout latencies per minute, kept to compute exact percentiles.
mod raw {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Samples(Mutex<BTreeMap<i64, Vec<f64>>>);

    impl Samples {
        pub fn add(&self, minute: i64, values: &[f64]) {
            if let Ok(mut m) = self.0.lock() {
                m.entry(minute).or_default().extend_from_slice(values);
                while m.len() > 5 {
                    m.pop_first();
                }
            }
        }

        /// The smallest sample with at least ceil(q·n) samples at or below it.
        pub fn quantile(&self, minute: i64, q: f64) -> Option<(f64, usize)> {
            let m = self.0.lock().ok()?;
            let mut values = m.get(&minute)?.clone();
            let n = values.len();
            Some((crate::bench::exact_quantile(&mut values, q), n))
        }
    }
}

struct Cloud {
    id: &'static str,
    /// Median latency (ms) and spread of the log-normal latency distribution.
    median_ms: f64,
    sigma: f64,
    /// Requests per second per service.
    rps: u32,
}

const CLOUDS: [Cloud; 2] = [
    Cloud {
        id: "aws-us-east",
        median_ms: 40.0,
        sigma: 0.5,
        rps: 1500,
    },
    Cloud {
        id: "gcp-eu-west",
        median_ms: 90.0,
        sigma: 0.8,
        rps: 500,
    },
];
const SERVICES: [&str; 3] = ["checkout", "search", "cart"];

fn tier_config(id: &str, dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.node.id = id.into();
    c.node.data_dir = dir.join(id);
    c.http.listen = "127.0.0.1:0".into();
    c.grpc.listen = "127.0.0.1:0".into();
    c
}

#[allow(clippy::print_stdout)]
pub async fn run(duration: Option<Duration>) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("strata-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let mut global_cfg = tier_config("global", &dir);
    for cloud in &CLOUDS {
        global_cfg
            .downstream
            .push(strata_server::config::DownstreamConfig {
                id: cloud.id.into(),
                token: format!("{}-token", cloud.id),
            });
    }
    let global = strata_server::start(global_cfg).await?;
    let mut edges: Vec<RunningTier> = Vec::new();
    for cloud in &CLOUDS {
        let mut cfg = tier_config(cloud.id, &dir);
        cfg.upstream = Some(strata_server::config::UpstreamConfig {
            endpoint: format!("http://{}", global.grpc_addr),
            token: format!("{}-token", cloud.id),
            ..Default::default()
        });
        edges.push(strata_server::start(cfg).await?);
    }

    // First, so it can be clicked before the figures start scrolling.
    println!(
        "console: http://{}/  (topology, merged percentiles, alarms)",
        global.http_addr
    );
    println!(
        "strata demo: two clouds → one global tier, on loopback (data in {})",
        dir.display()
    );
    for (cloud, edge) in CLOUDS.iter().zip(&edges) {
        println!(
            "  {:<12} http://{}  → forwards to global",
            cloud.id, edge.http_addr
        );
    }
    println!("  {:<12} http://{}", "global", global.http_addr);
    println!("Query it while it runs:");
    println!(
        "  curl -s 'http://{}/api/v1/query?q=http_latency_ms{{service=\"checkout\"}}&group_by=&from=-5m'",
        global.http_addr
    );
    println!(
        "  strata query 'http_latency_ms' --group-by service --addr http://{} --from -5m",
        global.http_addr
    );
    println!("Ctrl-C stops it cleanly.\n");

    let stop = Arc::new(AtomicBool::new(false));
    let exact = Arc::new(Samples::default());
    let mut generators = Vec::new();
    for (cloud, edge) in CLOUDS.iter().zip(&edges) {
        let url = format!("http://{}/api/v1/ingest", edge.http_addr);
        let stop = stop.clone();
        let exact = exact.clone();
        generators.push(std::thread::spawn(move || {
            generate(cloud, &url, &stop, &exact)
        }));
    }

    let started = Instant::now();
    let mut last = snapshot(&edges, &global);
    let mut last_at = Instant::now();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let now = snapshot(&edges, &global);
        let dt = last_at.elapsed().as_secs_f64();
        last_at = Instant::now();
        let edge_addrs: Vec<_> = edges.iter().map(|e| e.http_addr).collect();
        let global_addr = global.http_addr;
        let exact2 = exact.clone();
        let report =
            tokio::task::spawn_blocking(move || report(&edge_addrs, global_addr, &exact2)).await?;
        print!("{}", render(&last, &now, dt, &report));
        last = now;
    }

    println!("\nstopping: edges flush and forward, then the global tier commits…");
    stop.store(true, Ordering::Relaxed);
    for g in generators {
        let _ = g.join();
    }
    for edge in edges {
        edge.shutdown(Duration::from_secs(10)).await?;
    }
    global.shutdown(Duration::from_secs(10)).await?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("stopped.");
    Ok(())
}

/// Sends batches of samples to one edge every 100 ms until stopped.
fn generate(cloud: &Cloud, url: &str, stop: &AtomicBool, exact: &Samples) {
    let mut rng = rand::rng();
    let tick = Duration::from_millis(100);
    let per_tick = (cloud.rps / 10).max(1);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now_ms = strata_server::now_ms();
        let minute = strata_model::minute_start(now_ms);
        let mut body = String::with_capacity(per_tick as usize * 3 * 120);
        let mut checkout = Vec::with_capacity(per_tick as usize);
        for service in SERVICES {
            // Box–Muller normal → log-normal latency; a slow tail on checkout.
            for _ in 0..per_tick {
                let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let mut latency = cloud.median_ms * (cloud.sigma * z).exp();
                if service == "checkout" && rng.random_bool(0.02) {
                    latency *= 8.0;
                }
                let latency = (latency * 1000.0).round() / 1000.0;
                if service == "checkout" {
                    checkout.push(latency);
                }
                body.push_str(&format!(
                    "{{\"metric\":\"http_latency_ms\",\"kind\":\"histogram\",\"labels\":{{\"service\":\"{service}\",\"cloud\":\"{}\"}},\"ts_ms\":{now_ms},\"value\":{latency}}}\n",
                    cloud.id
                ));
            }
            body.push_str(&format!(
                "{{\"metric\":\"http_requests\",\"kind\":\"counter\",\"labels\":{{\"service\":\"{service}\",\"cloud\":\"{}\"}},\"ts_ms\":{now_ms},\"value\":{per_tick}}}\n",
                cloud.id
            ));
        }
        match ureq::post(url)
            .content_type("application/x-ndjson")
            .send(&body)
        {
            Ok(_) => exact.add(minute, &checkout),
            Err(e) => tracing::warn!(cloud = cloud.id, error = %e, "demo ingest failed"),
        }
        next += tick;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

#[derive(Clone)]
struct Snap {
    ingested: Vec<u64>,
    forwarded: Vec<u64>,
    spool: Vec<u64>,
    merged_global: u64,
}

fn snapshot(edges: &[RunningTier], global: &RunningTier) -> Snap {
    let load =
        |t: &RunningTier,
         f: fn(&strata_server::core::stats::Stats) -> &std::sync::atomic::AtomicU64| {
            f(&t.api.ctx.stats).load(Ordering::Relaxed)
        };
    Snap {
        ingested: edges
            .iter()
            .map(|e| load(e, |s| &s.ingest_samples_total))
            .collect(),
        forwarded: edges
            .iter()
            .map(|e| load(e, |s| &s.forward_batches_acked_total))
            .collect(),
        spool: edges
            .iter()
            .map(|e| e.api.ctx.store.spool_stats().batches)
            .collect(),
        merged_global: load(global, |s| &s.federation_increments_total),
    }
}

struct Report {
    minute: Option<i64>,
    cloud_p99: Vec<Option<f64>>,
    global: Option<(f64, bool, u64, u64, u64)>,
    exact: Option<(f64, usize)>,
}

fn get(url: &str) -> Option<Value> {
    let mut resp = ureq::get(url).call().ok()?;
    resp.body_mut().read_json().ok()
}

fn p99_point(addr: std::net::SocketAddr, minute: i64) -> Option<Value> {
    let url = format!(
        "http://{addr}/api/v1/query?q=http_latency_ms%7Bservice%3D%22checkout%22%7D&group_by=&step=minute&from={}&to={}",
        minute,
        minute + 60_000
    );
    let v = get(&url)?;
    v["data"]["series"][0]["points"][0]
        .as_object()
        .map(|o| Value::Object(o.clone()))
}

/// The latest minute the global tier reports complete (else the current one).
fn report(edges: &[std::net::SocketAddr], global: std::net::SocketAddr, exact: &Samples) -> Report {
    let now = strata_server::now_ms();
    let current = strata_model::minute_start(now);
    let previous = current - 60_000;
    let pick = match p99_point(global, previous) {
        Some(p) if p["complete"] == true => Some((previous, p)),
        _ => p99_point(global, current).map(|p| (current, p)),
    };
    let Some((minute, point)) = pick else {
        return Report {
            minute: None,
            cloud_p99: vec![None; edges.len()],
            global: None,
            exact: None,
        };
    };
    let cloud_p99 = edges
        .iter()
        .map(|addr| p99_point(*addr, minute).and_then(|p| p["value"]["p99"].as_f64()))
        .collect();
    let global = point["value"]["p99"].as_f64().map(|p99| {
        (
            p99,
            point["complete"] == true,
            point["sources"].as_u64().unwrap_or(0),
            point["expected_sources"].as_u64().unwrap_or(0),
            point["value"]["count"].as_u64().unwrap_or(0),
        )
    });
    Report {
        minute: Some(minute),
        cloud_p99,
        global,
        exact: exact.quantile(minute, 0.99),
    }
}

fn render(last: &Snap, now: &Snap, dt: f64, r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / dt.max(0.001);
    let _ = writeln!(
        out,
        "──────────────────────────────────────────────────────────────────────"
    );
    let _ = writeln!(
        out,
        "{:<14}{:>14}{:>20}{:>16}",
        "tier", "samples/s in", "batches/s forwarded", "spooled"
    );
    for (i, c) in CLOUDS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:<14}{:>14.0}{:>20.1}{:>16}",
            c.id,
            rate(last.ingested[i], now.ingested[i]),
            rate(last.forwarded[i], now.forwarded[i]),
            now.spool[i]
        );
    }
    let _ = writeln!(
        out,
        "{:<14}{:>14}{:>20}   merging {:.0} increments/s from {} clouds",
        "global",
        "-",
        "-",
        rate(last.merged_global, now.merged_global),
        CLOUDS.len()
    );
    let Some(minute) = r.minute else {
        let _ = writeln!(out, "waiting for the first minute of data…");
        return out;
    };
    let mut by_cloud = BTreeMap::new();
    for (c, p) in CLOUDS.iter().zip(&r.cloud_p99) {
        by_cloud.insert(c.id, *p);
    }
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    let _ = writeln!(
        out,
        "checkout latency p99, minute {} UTC:",
        crate::cli_query::format_time(minute)
    );
    for (id, p) in &by_cloud {
        let _ = writeln!(
            out,
            "  {:<26}{:>12}",
            format!("{id} (its own tier)"),
            fmt(*p)
        );
    }
    if let Some((p99, complete, sources, expected, count)) = r.global {
        let _ = writeln!(
            out,
            "  {:<26}{:>12}   {count} samples, {} ({sources}/{expected} sources past the minute)",
            "global (merged HDR)",
            fmt(Some(p99)),
            if complete {
                "complete"
            } else {
                "minute still open"
            },
        );
        if let Some((exact, n)) = r.exact {
            let err = (p99 - exact).abs() / exact * 100.0;
            let _ = writeln!(
                out,
                "  {:<26}{:>12}   error of the global p99: {err:.2}% (over {n} raw samples)",
                "exact, from raw samples",
                fmt(Some(exact))
            );
            let clouds: Vec<f64> = r.cloud_p99.iter().flatten().copied().collect();
            if clouds.len() == CLOUDS.len() {
                let avg = clouds.iter().sum::<f64>() / clouds.len() as f64;
                let avg_err = (avg - exact).abs() / exact * 100.0;
                let _ = writeln!(
                    out,
                    "  {:<26}{:>12}   error {avg_err:.1}% ← why percentiles must not be averaged",
                    "average of cloud p99s",
                    fmt(Some(avg))
                );
            }
        }
    }
    out
}
