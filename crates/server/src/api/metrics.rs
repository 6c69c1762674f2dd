//! `GET /metrics`: the node's counters, gauges and latency histograms in the
//! Prometheus text exposition format (0.0.4), with `strata_build_info` and,
//! on Linux, the `process_*` metrics the Prometheus client libraries export.
//!
//! Every family has `# HELP` and `# TYPE`; counters end `_total`. The
//! `strata_*` families carry `node="<id>"`; `process_*` carry no label, as
//! the client libraries write them (the scraper adds `instance` and `job`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::ApiState;
use crate::context::now_ms;
use crate::core::stats::{Exposition, MetricType};

/// The version this binary was built as.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The source revision, when the build sets `STRATA_GIT_REVISION` (a
/// release build does; nothing at build time runs git).
const REVISION: Option<&str> = option_env!("STRATA_GIT_REVISION");

/// Renders everything the node knows about itself.
pub(crate) async fn prometheus(State(node): State<Arc<ApiState>>) -> Response {
    let text = render(&node);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn render(node: &ApiState) -> String {
    let id = node.ctx.node_id.as_str();
    let mut out = Exposition::default();
    node.ctx.stats.render(id, &mut out);
    carrier_and_store(node, &mut out);
    source_lag(node, &mut out);
    late_after_complete(node, &mut out);
    cardinality(node, &mut out);
    build_info(id, &mut out);
    process::render(&mut out);
    out.finish()
}

/// The ingest carrier's queue figures, the spool and the series count.
fn carrier_and_store(node: &ApiState, out: &mut Exposition) {
    let id = node.ctx.node_id.as_str();
    let c = node.pipeline.carrier_stats();
    let labels = [("node", id), ("carrier", "shard")];
    let carrier = [
        (
            "strata_queue_depth",
            MetricType::Gauge,
            "Items queued in a carrier.",
            c.depth,
        ),
        (
            "strata_queue_capacity",
            MetricType::Gauge,
            "Items a carrier can hold.",
            c.capacity,
        ),
        (
            "strata_queue_waits_total",
            MetricType::Counter,
            "Times a producer found its carrier partition full and waited.",
            c.waits,
        ),
        (
            "strata_queue_dropped_total",
            MetricType::Counter,
            "Items dropped by a drop_if_full carrier.",
            c.dropped,
        ),
    ];
    for (name, kind, help, value) in carrier {
        out.family(name, kind, help);
        out.sample(name, &labels, value);
    }
    let spool = node.ctx.store.spool_stats();
    let node_label = [("node", id)];
    let store = [
        (
            "strata_spool_batches",
            "Batches in the spool waiting for an upstream ack.",
            spool.batches,
        ),
        (
            "strata_spool_bytes",
            "Encoded bytes of the spooled batches.",
            spool.bytes,
        ),
        (
            "strata_series",
            "Series in the store.",
            node.ctx.store.series_count() as u64,
        ),
    ];
    for (name, help, value) in store {
        out.family(name, MetricType::Gauge, help);
        out.sample(name, &node_label, value);
    }
}

/// How far each known source's watermark is behind now (NaN before its first).
fn source_lag(node: &ApiState, out: &mut Exposition) {
    let sources = node.ctx.sources.all();
    if sources.is_empty() {
        return;
    }
    let name = "strata_source_lag_ms";
    out.family(
        name,
        MetricType::Gauge,
        "How far a source's watermark is behind now, in milliseconds.",
    );
    let now = now_ms();
    for s in sources {
        let wm = s.watermark_ms.load(Ordering::Relaxed);
        let lag = if wm > 0 { (now - wm) as f64 } else { f64::NAN };
        out.sample(name, &[("node", &node.ctx.node_id), ("source", &s.id)], lag);
    }
}

/// Data that came in for a minute already complete here: per source, and
/// for what applications send this node directly (`source` = the node).
fn late_after_complete(node: &ApiState, out: &mut Exposition) {
    let name = "strata_late_after_complete_total";
    out.family(
        name,
        MetricType::Counter,
        "Samples or increments that came in for a minute already complete here, by the source that sent them (this node's id: its own ingest).",
    );
    let id = node.ctx.node_id.as_str();
    out.sample(
        name,
        &[("node", id), ("source", id)],
        node.pipeline.late_after_complete(),
    );
    for s in node.ctx.sources.all() {
        out.sample(
            name,
            &[("node", id), ("source", &s.id)],
            s.late_after_complete.load(Ordering::Relaxed),
        );
    }
}

/// Per source (this node's id: its direct ingest), the series counted against
/// `limits.max_series_per_source` and the requests or batches refused for
/// bringing new series or metrics beyond the limits.
fn cardinality(node: &ApiState, out: &mut Exposition) {
    let id = node.ctx.node_id.as_str();
    let figures = node.ingestor.cardinality.figures();
    let name = "strata_cardinality_series";
    out.family(
        name,
        MetricType::Gauge,
        "Distinct series a source brought since start, counted against limits.max_series_per_source (this node's id: its direct ingest).",
    );
    for (source, series, _) in &figures {
        out.sample(name, &[("node", id), ("source", source)], *series);
    }
    let name = "strata_cardinality_refusals_total";
    out.family(
        name,
        MetricType::Counter,
        "Ingest requests or federation batches refused for bringing new series or metrics beyond limits.max_series_per_source or limits.max_metrics_per_source, by source.",
    );
    for (source, _, refusals) in &figures {
        out.sample(name, &[("node", id), ("source", source)], *refusals);
    }
}

/// `strata_build_info{version="…"} 1`, with `revision` when built with one.
fn build_info(node: &str, out: &mut Exposition) {
    let name = "strata_build_info";
    out.family(
        name,
        MetricType::Gauge,
        "Always 1; the labels name the build of this binary.",
    );
    let mut labels = vec![("node", node), ("version", VERSION)];
    if let Some(revision) = REVISION.filter(|r| !r.is_empty()) {
        labels.push(("revision", revision));
    }
    out.sample(name, &labels, 1u64);
}

/// The `process_*` metrics, from `/proc/self` (Linux only).
#[cfg(target_os = "linux")]
mod process {
    use crate::core::stats::{Exposition, MetricType};

    /// What `/proc/self/stat` tells, in its own units.
    #[derive(Debug, PartialEq)]
    pub(super) struct Stat {
        /// User plus system CPU time, in clock ticks.
        pub cpu_ticks: u64,
        /// Start of the process after boot, in clock ticks.
        pub start_ticks: u64,
        /// Virtual memory size, in bytes.
        pub vsize_bytes: u64,
        /// Resident set size, in pages.
        pub rss_pages: u64,
    }

    /// Writes the families it can read; one whose file cannot be read is
    /// left out (and logged at debug level), never written as 0.
    pub(super) fn render(out: &mut Exposition) {
        // From the auxiliary vector the kernel hands the process: no libc.
        let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
        let page_bytes = rustix::param::page_size() as u64;
        match read("/proc/self/stat").and_then(|text| parse_stat(&text)) {
            Ok(stat) => {
                let mut gauge = |name: &str, kind: MetricType, help: &str, value: f64| {
                    out.family(name, kind, help);
                    out.sample(name, &[], value);
                };
                gauge(
                    "process_cpu_seconds_total",
                    MetricType::Counter,
                    "Total user and system CPU time spent in seconds.",
                    stat.cpu_ticks as f64 / ticks,
                );
                gauge(
                    "process_resident_memory_bytes",
                    MetricType::Gauge,
                    "Resident memory size in bytes.",
                    stat.rss_pages.saturating_mul(page_bytes) as f64,
                );
                gauge(
                    "process_virtual_memory_bytes",
                    MetricType::Gauge,
                    "Virtual memory size in bytes.",
                    stat.vsize_bytes as f64,
                );
                match read("/proc/stat").and_then(|text| boot_time_s(&text)) {
                    Ok(boot) => gauge(
                        "process_start_time_seconds",
                        MetricType::Gauge,
                        "Start time of the process since unix epoch in seconds.",
                        boot as f64 + stat.start_ticks as f64 / ticks,
                    ),
                    Err(e) => tracing::debug!(error = %e, "process_start_time_seconds left out"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "process cpu and memory metrics left out"),
        }
        match std::fs::read_dir("/proc/self/fd") {
            Ok(dir) => {
                out.family(
                    "process_open_fds",
                    MetricType::Gauge,
                    "Number of open file descriptors.",
                );
                out.sample("process_open_fds", &[], dir.count() as u64);
            }
            Err(e) => tracing::debug!(error = %e, "process_open_fds left out"),
        }
        match read("/proc/self/limits").and_then(|text| max_open_files(&text)) {
            Ok(max) => {
                out.family(
                    "process_max_fds",
                    MetricType::Gauge,
                    "Maximum number of open file descriptors.",
                );
                out.sample("process_max_fds", &[], max);
            }
            Err(e) => tracing::debug!(error = %e, "process_max_fds left out"),
        }
    }

    fn read(path: &str) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))
    }

    /// Parses `/proc/self/stat` (proc(5)): the command name, in parentheses,
    /// may hold spaces and parentheses, so fields are counted after the last `)`.
    pub(super) fn parse_stat(text: &str) -> Result<Stat, String> {
        let (_, rest) = text
            .rsplit_once(')')
            .ok_or("/proc/self/stat: no command name")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state); proc(5) numbers fields from 1.
        let field = |n: usize| -> Result<u64, String> {
            let raw = fields
                .get(n - 3)
                .ok_or(format!("/proc/self/stat: no field {n}"))?;
            raw.parse()
                .map_err(|_| format!("/proc/self/stat: field {n} is {raw:?}, not a number"))
        };
        Ok(Stat {
            cpu_ticks: field(14)?.saturating_add(field(15)?),
            start_ticks: field(22)?,
            vsize_bytes: field(23)?,
            rss_pages: field(24)?,
        })
    }

    /// The `btime` line of `/proc/stat`: boot time, seconds since the epoch.
    pub(super) fn boot_time_s(text: &str) -> Result<u64, String> {
        text.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| "/proc/stat: no btime line".to_owned())
    }

    /// The soft limit of "Max open files" in `/proc/self/limits`;
    /// `unlimited` is the largest count there is, as the client libraries
    /// report it.
    pub(super) fn max_open_files(text: &str) -> Result<u64, String> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .ok_or("/proc/self/limits: no \"Max open files\" line")?;
        match line.split_whitespace().next() {
            Some("unlimited") => Ok(u64::MAX),
            Some(soft) => soft
                .parse()
                .map_err(|_| format!("/proc/self/limits: max open files {soft:?}")),
            None => Err("/proc/self/limits: max open files has no value".to_owned()),
        }
    }

    /// Seconds since the epoch now, for tests of the start time.
    #[cfg(test)]
    pub(super) fn now_s() -> f64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

/// No `process_*` metrics where `/proc` is not Linux's.
#[cfg(not(target_os = "linux"))]
mod process {
    use crate::core::stats::Exposition;

    pub(super) fn render(_out: &mut Exposition) {}
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::core::stats::check;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as a thread may set.
        let text = "4242 (my (app) x) S 1 4242 4242 0 -1 4194304 500 0 0 0 \
                    150 50 0 0 20 0 8 0 123456 987654321 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let stat = process::parse_stat(text).expect("parses");
        assert_eq!(
            stat,
            process::Stat {
                cpu_ticks: 200,
                start_ticks: 123_456,
                vsize_bytes: 987_654_321,
                rss_pages: 2048,
            }
        );
        assert!(process::parse_stat("4242 (x) S 1 2").is_err());
        assert!(process::parse_stat("no parenthesis").is_err());
    }

    #[test]
    fn limits_and_boot_time_are_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63432                63432                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(process::max_open_files(limits), Ok(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(process::max_open_files(unlimited), Ok(u64::MAX));
        assert!(process::max_open_files("Max processes 1 1\n").is_err());
        assert_eq!(
            process::boot_time_s("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Ok(1_700_000_000)
        );
        assert!(process::boot_time_s("cpu 1\n").is_err());
    }

    #[test]
    fn process_metrics_of_this_process_are_plausible() {
        let mut out = Exposition::default();
        process::render(&mut out);
        build_info("t", &mut out);
        let text = out.finish();
        let samples = check::exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let value = |name: &str| {
            samples
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.value)
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
        };
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0, "{text}");
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let started = value("process_start_time_seconds");
        let now = process::now_s();
        assert!(
            started <= now + 1.0 && started > now - 24.0 * 3600.0,
            "{started} vs {now}"
        );
        assert!(text.contains(&format!(
            "strata_build_info{{node=\"t\",version=\"{VERSION}\""
        )));
    }
}
