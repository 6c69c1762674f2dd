//! The Prometheus-compatible API under `/prometheus` against the real thing:
//! the same counter and gauge samples go into strata (NDJSON into an edge,
//! forwarded to a global tier) and into a real Prometheus (Debian package
//! `prometheus`, installed when missing; its TSDB backfilled by `promtool
//! tsdb create-blocks-from openmetrics`), and both answer the same PromQL
//! with the same numbers. `promtool query instant` and `promtool query
//! range` read strata; the answers equal strata's native query; the
//! completeness of every answer is in its warnings.

mod util;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use util::*;

const M: i64 = 60_000;
/// Minutes of history.
const MINUTES: i64 = 20;

/// What one minute `m` holds for a series: the counter's increase and the
/// gauge's value (sampled at the minute's 30th second).
fn increase(m: i64, service: usize, region: usize) -> i64 {
    (m + 1) * (region as i64 + 2) + service as i64 * 3 + (m * 7 + service as i64) % 5
}

fn gauge(m: i64, region: usize) -> f64 {
    10.0 + ((m * 13 + region as i64 * 5) % 17) as f64 + 0.25
}

const SERVICES: [&str; 2] = ["checkout", "search"];
const REGIONS: [&str; 2] = ["r0", "r1"];

/// The NDJSON samples of every minute since `base`.
fn strata_samples(base: i64) -> Vec<Value> {
    let mut lines = Vec::new();
    for m in 0..MINUTES {
        for (r, region) in REGIONS.iter().enumerate() {
            for (s, service) in SERVICES.iter().enumerate() {
                let labels = [("service", *service), ("region", *region)];
                let ts = base + m * M + 20_000;
                lines.push(sample(
                    "http_requests",
                    "counter",
                    &labels,
                    ts,
                    json!(increase(m, s, r)),
                ));
                for i in 0..(m % 4 + 2) {
                    let v = 5.0 + (i * 11 + m * 3 + s as i64 * 40 + r as i64 * 17) as f64;
                    lines.push(sample("latency_ms", "histogram", &labels, ts, json!(v)));
                }
            }
            lines.push(sample(
                "queue_depth",
                "latest",
                &[("region", region)],
                base + m * M + 30_000,
                json!(gauge(m, r)),
            ));
        }
    }
    lines
}

/// The same data as OpenMetrics for Prometheus: the counter's running total
/// at every minute boundary (everything of the minutes before it), the gauge
/// at each minute's 30th second.
fn openmetrics(base: i64) -> String {
    let mut out = String::from("# TYPE http_requests counter\n");
    for (r, region) in REGIONS.iter().enumerate() {
        for (s, service) in SERVICES.iter().enumerate() {
            let mut total = 0;
            for m in 0..=MINUTES {
                let t = (base + m * M) / 1000;
                out += &format!(
                    "http_requests_total{{region=\"{region}\",service=\"{service}\"}} {total} {t}\n"
                );
                total += increase(m, s, r);
            }
        }
    }
    out += "# TYPE queue_depth gauge\n";
    for (r, region) in REGIONS.iter().enumerate() {
        for m in 0..MINUTES {
            let t = (base + m * M + 30_000) / 1000;
            out += &format!("queue_depth{{region=\"{region}\"}} {} {t}\n", gauge(m, r));
        }
    }
    out + "# EOF\n"
}

/// A Prometheus serving a TSDB backfilled with `openmetrics`.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start(dir: &Path, openmetrics: &str) -> Prometheus {
        let promtool = installed("promtool", "prometheus");
        let input = dir.join("backfill.om");
        std::fs::write(&input, openmetrics).expect("writing the backfill");
        let tsdb = dir.join("prom-tsdb");
        let out = Command::new(&promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&input)
            .arg(&tsdb)
            .output()
            .expect("running promtool");
        assert!(
            out.status.success(),
            "promtool backfill: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 1m\n").expect("prometheus.yml");
        let port = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = port.local_addr().expect("address").to_string();
        drop(port);
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new(installed("prometheus", "prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let p = Prometheus {
            child,
            url: format!("http://{addr}"),
        };
        wait_for("Prometheus to be ready", |last| {
            let (status, body) = try_get(&format!("{}/-/ready", p.url));
            *last = format!("{status} {body}");
            (status == 200).then_some(())
        });
        p
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET that tolerates a refused connection (status 0).
fn try_get(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(ureq::Error::StatusCode(code)) => (code, String::new()),
        Err(e) => (0, e.to_string()),
    }
}

/// GET `base/api/v1/<path>` with `params`: status and JSON.
fn api(base: &str, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let url = format!("{base}/api/v1/{path}");
    let mut resp = new_agent()
        .get(&url)
        .query_pairs(params.iter().copied())
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url} {params:?}: {text}: {e}")),
    )
}

/// An instant query's vector as `(labels, number)`, sorted.
fn instant(base: &str, q: &str, t: i64) -> Vec<(String, f64)> {
    let (status, v) = api(
        base,
        "query",
        &[("query", q), ("time", &(t as f64 / 1000.0).to_string())],
    );
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("success")),
        "{base} {q}: {v}"
    );
    if v["data"]["resultType"] == "scalar" {
        let x = v["data"]["result"][1]
            .as_str()
            .expect("scalar")
            .parse()
            .expect("number");
        return vec![(String::new(), x)];
    }
    let mut out: Vec<(String, f64)> = v["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{q}: {v}"))
        .iter()
        .map(|s| {
            (
                labels_key(&s["metric"]),
                s["value"][1]
                    .as_str()
                    .expect("value")
                    .parse()
                    .expect("number"),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A range query's matrix as `(labels, [(t, number)])`, sorted.
fn range(base: &str, q: &str, start: i64, end: i64) -> Vec<(String, Vec<(f64, f64)>)> {
    let (status, v) = api(
        base,
        "query_range",
        &[
            ("query", q),
            ("start", &(start / 1000).to_string()),
            ("end", &(end / 1000).to_string()),
            ("step", "60"),
        ],
    );
    assert_eq!(status, 200, "{base} {q}: {v}");
    let mut out: Vec<_> = v["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{q}: {v}"))
        .iter()
        .map(|s| {
            let points = s["values"]
                .as_array()
                .expect("values")
                .iter()
                .map(|p| {
                    (
                        p[0].as_f64().expect("t"),
                        p[1].as_str().expect("v").parse().expect("number"),
                    )
                })
                .collect();
            (labels_key(&s["metric"]), points)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn temp_config(root: &Path, id: &str) -> NodeConfig {
    NodeConfig::new(root, id).set("aggregation", "allowed_lateness_s = 3600")
}

/// Edge → global, both fed; a second global expects a source that never
/// reports. Returns (edge, global, lonely global, base minute).
fn topology(root: &Path) -> (Node, Node, Node, i64) {
    let global = Node::start(temp_config(root, "global").downstream("edge"));
    let lonely = Node::start(
        temp_config(root, "lonely")
            .downstream("edge")
            .downstream("absent"),
    );
    let edge = Node::start(temp_config(root, "edge").upstream(&global));
    let now = now_ms();
    let base = now - now.rem_euclid(M) - (MINUTES + 5) * M;
    let lines = strata_samples(base);
    for chunk in lines.chunks(500) {
        ingest_ok(&edge, chunk, true);
        ingest_ok(&lonely, chunk, true);
    }
    let total: i64 = (0..MINUTES)
        .flat_map(|m| (0..2).flat_map(move |s| (0..2).map(move |r| increase(m, s, r))))
        .sum();
    wait_for("the global tier to hold every request", |last| {
        let got = merged_since(&global, "http_requests", base).map_or(0.0, |v| f(&v, "count"));
        *last = format!("{got} of {total}");
        (got == total as f64).then_some(())
    });
    (edge, global, lonely, base)
}

#[test]
fn promql_answers_equal_prometheus_promtool_and_the_native_query() {
    let root = tempfile::tempdir().expect("tempdir");
    let (edge, global, lonely, base) = topology(root.path());
    let prometheus = Prometheus::start(root.path(), &openmetrics(base));
    let strata = global.url("/prometheus");
    let end = base + MINUTES * M;

    // Counters and gauges: the same numbers as Prometheus, at the end and at
    // every minute of a range (Prometheus 2's closed range [t-5m, t] holds
    // the running totals at both ends, so its increase is not extrapolated).
    for (ours, theirs) in [
        (
            "sum by (service) (increase(http_requests[5m]))",
            "sum by (service) (increase(http_requests_total[5m]))",
        ),
        (
            "sum by (region) (rate(http_requests[5m]))",
            "sum by (region) (rate(http_requests_total[5m]))",
        ),
        (
            "increase(http_requests{service=\"search\",region=~\"r.*\"}[10m])",
            "increase(http_requests_total{service=\"search\",region=~\"r.*\"}[10m])",
        ),
        (
            "sum(increase(http_requests[5m])) * 2 - 1",
            "sum(increase(http_requests_total[5m])) * 2 - 1",
        ),
        (
            "topk(1, sum by (service) (increase(http_requests[5m])))",
            "topk(1, sum by (service) (increase(http_requests_total[5m])))",
        ),
        ("queue_depth", "queue_depth"),
        ("max(queue_depth)", "max(queue_depth)"),
        ("sum(queue_depth) / count(queue_depth)", "avg(queue_depth)"),
        ("1+1", "1+1"),
    ] {
        let ours_at = instant(&strata, ours, end);
        let expected = instant(&prometheus.url, theirs, end);
        assert!(!ours_at.is_empty(), "{ours}: no data");
        assert_close(&as_series(ours_at), &as_series(expected), ours);
        assert_close(
            &range(&strata, ours, base + 10 * M, end),
            &range(&prometheus.url, theirs, base + 10 * M, end),
            ours,
        );
    }

    // Histograms: the quantile of the merged state, exactly the native query's.
    let native = query(
        &global,
        &[
            ("q", "latency_ms"),
            ("from", &(end - 5 * M).to_string()),
            ("to", &end.to_string()),
            ("step", "all"),
            ("group_by", "service"),
        ],
    );
    let p99: Vec<f64> = native["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| f(&s["points"][0]["value"], "p99"))
        .collect();
    let ours: Vec<f64> = instant(
        &strata,
        "histogram_quantile(0.99, sum by (service) (rate(latency_ms[5m])))",
        end,
    )
    .into_iter()
    .map(|(_, v)| v)
    .collect();
    assert_eq!(ours, p99);
    let counts = instant(&strata, "sum(increase(latency_ms_count[5m]))", end);
    let native_count = merged_value_between(&global, "latency_ms", end - 5 * M, end);
    assert_eq!(counts[0].1, native_count);

    promtool_reads_strata(&strata, end);
    completeness_is_in_the_warnings(&edge, &lonely, end);
    grafana_calls_are_answered(&strata);
    drop(prometheus);
    drop(edge);
}

/// Equal series with equal timestamps and values equal to 1e-12 relative:
/// Prometheus adds per-series rates where strata divides the merged
/// increase, which may differ in the last bit.
fn assert_close(ours: &[(String, Vec<(f64, f64)>)], theirs: &[(String, Vec<(f64, f64)>)], q: &str) {
    let labels =
        |s: &[(String, Vec<(f64, f64)>)]| s.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(labels(ours), labels(theirs), "{q}: series");
    for ((_, a), (_, b)) in ours.iter().zip(theirs) {
        assert_eq!(a.len(), b.len(), "{q}: {a:?} vs {b:?}");
        for ((ta, va), (tb, vb)) in a.iter().zip(b) {
            assert_eq!(ta, tb, "{q}: {a:?} vs {b:?}");
            assert!(
                (va - vb).abs() <= 1e-12 * va.abs().max(vb.abs()),
                "{q}: {va} vs {vb} at {ta}"
            );
        }
    }
}

/// A series' labels as one sortable key, the metric name aside (strata's
/// counter is `http_requests`, Prometheus' `http_requests_total`).
fn labels_key(metric: &Value) -> String {
    let labels = metric.as_object().expect("labels object");
    let key: Vec<String> = labels
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    key.join(",")
}

/// An instant answer as one-point series, for [`assert_close`].
fn as_series(v: Vec<(String, f64)>) -> Vec<(String, Vec<(f64, f64)>)> {
    v.into_iter().map(|(l, x)| (l, vec![(0.0, x)])).collect()
}

fn merged_value_between(node: &Node, selector: &str, from: i64, to: i64) -> f64 {
    let data = query(
        node,
        &[
            ("q", selector),
            ("from", &from.to_string()),
            ("to", &to.to_string()),
            ("step", "all"),
            ("group_by", ""),
        ],
    );
    f(&data["series"][0]["points"][0]["value"], "count")
}

/// `promtool query instant` and `promtool query range` against strata.
fn promtool_reads_strata(strata: &str, end: i64) {
    let promtool: PathBuf = installed("promtool", "prometheus");
    let expected = instant(strata, "sum(increase(http_requests[5m]))", end)[0].1;
    let out = Command::new(&promtool)
        .args([
            "query",
            "instant",
            strata,
            "sum(increase(http_requests[5m]))",
        ])
        .arg(format!("--time={}", end / 1000))
        .output()
        .expect("promtool query instant");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "promtool: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("=> {expected} @[{}]", end / 1000)),
        "{text}"
    );
    let out = Command::new(&promtool)
        .args(["query", "range", strata, "sum(rate(http_requests[5m]))"])
        .arg(format!("--start={}", (end - 3 * M) / 1000))
        .arg(format!("--end={}", end / 1000))
        .arg("--step=1m")
        .output()
        .expect("promtool query range");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "promtool: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let points = range(strata, "sum(rate(http_requests[5m]))", end - 3 * M, end);
    for (t, v) in &points[0].1 {
        assert!(
            text.contains(&format!("{v} @[{t}]")),
            "{v} @[{t}] in {text}"
        );
    }
    assert_eq!(points[0].1.len(), 4);
}

fn completeness_is_in_the_warnings(edge: &Node, lonely: &Node, end: i64) {
    let t = (end as f64 / 1000.0).to_string();
    let q = [
        ("query", "sum(increase(http_requests[5m]))"),
        ("time", t.as_str()),
    ];
    let (_, v) = api(&edge.url("/prometheus"), "query", &q);
    assert!(
        v.get("warnings").is_none(),
        "the edge has all of its own minutes: {v}"
    );
    // A source that never reported: every minute is incomplete.
    let (_, v) = api(&lonely.url("/prometheus"), "query", &q);
    assert_eq!(v["data"]["result"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("not every source")),
        "{v}"
    );
    let (_, v) = api(
        &lonely.url("/prometheus"),
        "query",
        &[q[0], q[1], ("complete_only", "true")],
    );
    assert_eq!(v["data"]["result"], json!([]), "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("left out")),
        "{v}"
    );
}

/// What Grafana's data source sends: a POSTed `1+1`, label and series
/// lookups, metadata, build info; errors in Prometheus' envelope.
fn grafana_calls_are_answered(strata: &str) {
    let url = format!("{strata}/api/v1/query");
    let mut resp = new_agent()
        .post(&url)
        .content_type("application/x-www-form-urlencoded")
        .send("query=1%2B1&time=1700000000")
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let v: Value =
        serde_json::from_str(&resp.body_mut().read_to_string().expect("body")).expect("json");
    assert_eq!(
        v,
        json!({"status": "success", "data": {"resultType": "scalar", "result": [1700000000, "2"]}})
    );
    let ours = "{__name__=~\"http_requests|latency_ms|queue_depth\"}";
    let (_, v) = api(strata, "labels", &[("match[]", ours)]);
    assert_eq!(v["data"], json!(["__name__", "region", "service"]));
    // Every metric, the node's own `strata_*` ones included.
    let (_, v) = api(strata, "label/__name__/values", &[]);
    let names: Vec<&str> = v["data"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let (own, data): (Vec<&str>, Vec<&str>) = names.iter().partition(|n| n.starts_with("strata_"));
    assert_eq!(data, ["http_requests", "latency_ms", "queue_depth"]);
    assert!(!own.is_empty(), "the node's own metrics: {v}");
    let (_, v) = api(strata, "label/region/values", &[("match[]", "queue_depth")]);
    assert_eq!(v["data"], json!(["r0", "r1"]));
    let (_, v) = api(
        strata,
        "series",
        &[("match[]", "http_requests{service=\"search\"}")],
    );
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(
        v["data"][0],
        json!({"__name__": "http_requests", "region": "r0", "service": "search"})
    );
    let (_, v) = api(strata, "metadata", &[]);
    assert_eq!(v["data"]["latency_ms"][0]["type"], "histogram");
    assert_eq!(v["data"]["http_requests"][0]["type"], "counter");
    let (_, v) = api(strata, "status/buildinfo", &[]);
    assert!(v["data"]["version"].is_string(), "{v}");
    let (_, v) = api(
        strata,
        "format_query",
        &[("query", "sum(rate(x[5m]))by(a)")],
    );
    assert_eq!(v["data"], "sum by (a) (rate(x[5m]))");
    let (status, v) = api(strata, "query", &[("query", "sum(")]);
    assert_eq!(
        (status, v["errorType"].as_str()),
        (400, Some("bad_data")),
        "{v}"
    );
    let (status, v) = api(strata, "query", &[("query", "stddev(http_requests)")]);
    assert_eq!(
        (status, v["errorType"].as_str()),
        (422, Some("execution")),
        "{v}"
    );
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("stddev")),
        "{v}"
    );
}
