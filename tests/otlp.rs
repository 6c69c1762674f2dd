//! OpenTelemetry SDKs exporting to strata: the real OpenTelemetry Python SDK
//! (in a virtualenv this test makes under `target/test-deps` when missing)
//! exports a cumulative counter, an exponential and an explicit-bucket
//! histogram, several times, over OTLP/gRPC to one edge (on `otlp.listen`)
//! and over OTLP/HTTP to another (on its HTTP port). The global tier shows
//! the exact totals, with a killed and restarted edge and a restarted
//! exporter: no export is counted twice, none is lost.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;

use serde_json::{Value, json};
use strata_model::exp_hist::relative_error;
use util::*;

/// The Python SDK packages, pinned.
const PACKAGES: &[&str] = &[
    "opentelemetry-sdk==1.45.2",
    "opentelemetry-exporter-otlp-proto-grpc==1.45.2",
    "opentelemetry-exporter-otlp-proto-http==1.45.2",
];

/// The bounds `tests/otlp/exporter.py` gives the explicit-bucket histogram.
const EXPLICIT_BOUNDS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// The virtualenv's python, made once per test run when missing.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-deps/otel-venv");
        let python = dir.join("bin/python");
        let ready = |python: &Path| {
            Command::new(python)
                .args(["-c", "import opentelemetry.sdk.metrics, opentelemetry.exporter.otlp.proto.grpc.metric_exporter, opentelemetry.exporter.otlp.proto.http.metric_exporter"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if ready(&python) {
            return python;
        }
        let venv = || {
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success())
        };
        // Debian's python3 needs python3-venv (and pip) for a virtualenv.
        let made = venv() || (apt_install(&["python3", "python3-venv", "python3-pip"]) && venv());
        assert!(
            made,
            "this test needs python3 with venv (Debian: apt-get install python3-venv)"
        );
        let installed = Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet"])
            .args(PACKAGES)
            .status();
        assert!(
            installed.is_ok_and(|s| s.success()) && ready(&python),
            "installing the OpenTelemetry Python SDK ({PACKAGES:?}) from PyPI into {} failed",
            dir.display()
        );
        python
    })
}

/// One instrumented application (`tests/otlp/exporter.py`).
struct Exporter {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Exporter {
    fn start(protocol: &str, endpoint: &str, service: &str, region: &str) -> Exporter {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp/exporter.py");
        let mut child = Command::new(python())
            .arg(script)
            .args([protocol, endpoint, service, region])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the exporter");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut e = Exporter {
            child,
            stdin,
            lines,
        };
        e.expect("ready");
        e
    }

    fn send(&mut self, cmd: Value) {
        writeln!(self.stdin, "{cmd}").expect("writing to the exporter");
        self.stdin.flush().expect("flushing to the exporter");
    }

    /// Waits for the exporter's next answer and checks it has `key: true`.
    fn expect(&mut self, key: &str) {
        let line = self
            .lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("the exporter did not answer {key}"));
        let v: Value = serde_json::from_str(&line).expect("exporter answers JSON");
        assert_eq!(v[key], true, "exporter answered {line}");
    }

    fn add(&mut self, n: u64) {
        self.send(json!({"op": "add", "n": n}));
    }

    fn observe(&mut self, values: &[f64]) {
        self.send(json!({"op": "observe", "values": values}));
    }

    /// Exports now; the export succeeded.
    fn flush(&mut self) {
        self.send(json!({"op": "flush"}));
        self.expect("flushed");
    }

    /// Shuts the SDK down (which exports once more) and waits for the exit.
    fn quit(mut self) {
        self.send(json!({"op": "quit"}));
        self.expect("quit");
        let _ = self.child.wait();
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count_of(node: &Node, selector: &str, from_ms: i64) -> f64 {
    merged_since(node, selector, from_ms).map_or(0.0, |v| f(&v, "count"))
}

/// Latencies of one application: log-normal around 40 ms.
fn latencies(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| (rng.log_normal(40.0, 1.0).clamp(1.0, 4000.0) * 16.0).round() / 16.0)
        .collect()
}

#[test]
fn sdk_exports_reach_the_global_tier_exactly_through_two_tiers() {
    let python = python();
    assert!(python.exists());
    let root = tempfile::tempdir().expect("tempdir");
    let global = Node::start(
        NodeConfig::new(root.path(), "global")
            .downstream("edge-a")
            .downstream("edge-b"),
    );
    let edge_a = Node::start(
        NodeConfig::new(root.path(), "edge-a")
            .upstream(&global)
            .set("otlp", "listen = \"127.0.0.1:0\"")
            .set("otlp", "http_listen = \"\""),
    );
    let mut edge_b = Node::start(NodeConfig::new(root.path(), "edge-b").upstream(&global));
    let from_ms = minute_start(now_ms()) - 60_000;
    let otlp_a = edge_a.otlp_grpc.expect("edge-a serves otlp.listen");
    let mut rng = Rng::new(0x07e1_2026);
    let mut observed = Vec::new();

    // Application A over OTLP/gRPC, application B over OTLP/HTTP; each
    // exports its cumulative totals twice.
    let mut app_a = Exporter::start("grpc", &format!("http://{otlp_a}"), "checkout", "eu-west-1");
    let http_b = format!("http://{}", edge_b.http);
    let mut app_b = Exporter::start("http", &http_b, "checkout", "us-east-1");
    for (a, b) in [(5, 2), (7, 3)] {
        for (app, n) in [(&mut app_a, a), (&mut app_b, b)] {
            let values = latencies(&mut rng, 400);
            app.add(n);
            app.observe(&values);
            app.flush();
            observed.extend(values);
        }
    }
    let mut orders = 5 + 2 + 7 + 3;

    // Edge B is killed and restarted: its stream table comes back from its
    // store, so B's next cumulative export counts only what is new.
    edge_b.kill();
    edge_b.restart_same_ports();
    let values = latencies(&mut rng, 300);
    app_b.add(11);
    app_b.observe(&values);
    app_b.flush();
    observed.extend(values);
    orders += 11;

    // Application A shuts down (exporting its unchanged totals once more)
    // and starts again: a new stream start, counted whole.
    app_a.quit();
    let mut app_a = Exporter::start("grpc", &format!("http://{otlp_a}"), "checkout", "eu-west-1");
    let values = latencies(&mut rng, 200);
    app_a.add(13);
    app_a.observe(&values);
    app_a.flush();
    app_a.flush();
    observed.extend(values);
    orders += 13;

    let n = observed.len() as f64;
    wait_for("every order and observation at the global tier", |last| {
        let got = count_of(&global, "orders", from_ms);
        let exp = count_of(&global, "latency_exp", from_ms);
        let explicit = count_of(&global, "latency_explicit", from_ms);
        *last = format!(
            "orders {got} of {orders}, latency_exp {exp} and latency_explicit {explicit} of {n}"
        );
        assert!(
            got <= orders as f64 && exp <= n && explicit <= n,
            "counted twice: {last}"
        );
        (got == orders as f64 && exp == n && explicit == n).then_some(())
    });
    // Everything the edges hold has reached the global tier: still exact.
    wait_for("the edges' spools to drain", |last| {
        let spooled = edge_a.spool_batches() + edge_b.spool_batches();
        *last = format!("{spooled} batches");
        (spooled == 0.0).then_some(())
    });
    assert_eq!(count_of(&global, "orders", from_ms), orders as f64);
    let by_region = query(
        &global,
        &[
            ("q", "orders"),
            ("from", &from_ms.to_string()),
            ("to", &(now_ms() + 120_000).to_string()),
            ("step", "all"),
            ("group_by", "cloud_region,service,route"),
        ],
    );
    let series = by_region["series"].as_array().expect("series");
    assert_eq!(series.len(), 2, "one series per region: {by_region}");

    // Percentiles: the exponential histogram within its layout's bound, the
    // explicit one within its buckets' (docs/OTLP.md).
    let mut sorted = observed.clone();
    sorted.sort_by(f64::total_cmp);
    let exp = merged_since(&global, "latency_exp", from_ms).expect("latency_exp");
    let explicit = merged_since(&global, "latency_explicit", from_ms).expect("latency_explicit");
    let exact_sum: f64 = observed.iter().sum();
    assert!(
        (f(&exp, "sum") - exact_sum).abs() <= exact_sum * 1e-9,
        "{exp}"
    );
    assert!(
        (f(&explicit, "sum") - exact_sum).abs() <= exact_sum * 1e-9,
        "{explicit}"
    );
    for (field, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let exact = exact_quantile(&sorted, q);
        let got = f(&exp, field);
        let error = (got - exact).abs() / exact;
        eprintln!("latency_exp {field}: {got} vs exact {exact}: relative error {error:.5}");
        // The SDK keeps 160 buckets: scale 3 or finer for this spread.
        assert!(
            error <= relative_error(3),
            "latency_exp {field}: {got} vs exact {exact}"
        );
        let got = f(&explicit, field);
        let error = (got - exact).abs() / exact;
        let bound = explicit_bound(exact) + relative_error(3);
        eprintln!(
            "latency_explicit {field}: {got} vs exact {exact}: relative error {error:.5} (bound {bound:.5})"
        );
        assert!(
            error <= bound,
            "latency_explicit {field}: {got} vs exact {exact}"
        );
    }
}

/// OTLP/HTTP JSON straight from a client: what cannot be merged is refused
/// point by point in the partial success, the rest is merged; a body that is
/// not OTLP refuses the whole export.
#[test]
fn partial_success_names_what_was_refused_and_merges_the_rest() {
    let root = tempfile::tempdir().expect("tempdir");
    let node = Node::start(NodeConfig::new(root.path(), "edge"));
    let now_ns = (now_ms() as u64) * 1_000_000;
    let gauge = |name: &str, value: f64| {
        json!({"name": name, "gauge": {"dataPoints": [
            {"timeUnixNano": now_ns.to_string(), "asDouble": value,
             "attributes": [{"key": "http.route", "value": {"stringValue": "/pay"}}]}
        ]}})
    };
    let body = json!({"resourceMetrics": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "checkout"}},
            {"key": "host.name", "value": {"stringValue": "h1"}}
        ]},
        "scopeMetrics": [{"metrics": [
            gauge("queue_depth", 7.5),
            {"name": "rpc_latency", "summary": {"dataPoints": [
                {"timeUnixNano": now_ns.to_string(), "count": "3", "sum": 9.0}
            ]}},
            {"name": "in_flight", "sum": {"aggregationTemporality": 1, "isMonotonic": false,
                "dataPoints": [{"timeUnixNano": now_ns.to_string(), "asInt": "4"}]}}
        ]}]
    }]});
    let post = |content_type: &str, body: &[u8]| {
        let answer = agent()
            .post(&node.url("/v1/metrics"))
            .header("content-type", content_type)
            .config()
            .http_status_as_error(false)
            .build()
            .send(body)
            .expect("POST /v1/metrics");
        let status = answer.status().as_u16();
        let text = answer.into_body().read_to_string().unwrap_or_default();
        (status, text)
    };
    let (status, text) = post("application/json", body.to_string().as_bytes());
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).expect("JSON answer");
    let partial = &answer["partialSuccess"];
    let rejected = partial["rejectedDataPoints"]
        .as_i64()
        .or_else(|| partial["rejectedDataPoints"].as_str()?.parse().ok());
    assert_eq!(rejected, Some(2), "{answer}");
    let message = partial["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"rpc_latency\": a Summary is refused"),
        "{message}"
    );
    assert!(
        message.contains("in_flight") && message.contains("delta"),
        "{message}"
    );

    // The gauge is merged, with the allow-listed resource label only.
    let from_ms = minute_start(now_ms()) - 60_000;
    let value = wait_for("the gauge", |last| {
        let v = merged_since(&node, "queue_depth", from_ms);
        *last = format!("{v:?}");
        v
    });
    assert_eq!(f(&value, "value"), 7.5, "{value}");
    let data = query(
        &node,
        &[
            ("q", "queue_depth"),
            ("from", &from_ms.to_string()),
            ("step", "all"),
        ],
    );
    assert_eq!(
        data["series"][0]["labels"],
        json!({"http_route": "/pay", "service": "checkout"}),
        "{data}"
    );
    assert_eq!(node.prom("strata_otlp_rejected_data_points_total"), 2.0);
    assert_eq!(node.prom("strata_otlp_dropped_attributes_total"), 1.0);

    // Not OTLP: nothing merged, a clear error.
    let (status, text) = post("application/x-protobuf", b"\xff\xff\xff");
    assert_eq!(status, 400, "{text}");
    let (status, text) = post("text/plain", b"queue_depth 1");
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("application/x-protobuf"), "{text}");
}

/// The error bound of an explicit bucket at `v`: `sqrt(hi/lo) - 1` of its bucket.
fn explicit_bound(v: f64) -> f64 {
    let i = EXPLICIT_BOUNDS.partition_point(|b| *b < v);
    match (
        i.checked_sub(1).map(|j| EXPLICIT_BOUNDS[j]),
        EXPLICIT_BOUNDS.get(i),
    ) {
        (Some(lo), Some(hi)) => (hi / lo).sqrt() - 1.0,
        _ => f64::INFINITY,
    }
}

fn minute_start(ms: i64) -> i64 {
    ms - ms.rem_euclid(60_000)
}
