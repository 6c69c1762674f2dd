//! A real Prometheus (Debian package `prometheus`, installed by this test
//! when missing) scrapes a test exporter and remote-writes to an edge, which
//! forwards to a global tier: a counter, a gauge and a classic histogram
//! arrive exact, through a killed and restarted edge, an exporter restart (a
//! counter reset), and with every value sent again at each scrape.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use util::*;

/// What the test exporter exposes: orders, queue depth, latency buckets
/// (cumulative by `le`: 0.1, 0.5, +Inf) and the latency sum.
#[derive(Clone, Copy)]
struct Exposed {
    orders: u64,
    queue: f64,
    buckets: [u64; 3],
    sum: f64,
}

impl Exposed {
    fn text(&self) -> String {
        let [b1, b2, inf] = self.buckets;
        format!(
            "# TYPE orders_total counter\norders_total{{route=\"/pay\"}} {}\n\
             # TYPE queue_depth gauge\nqueue_depth {}\n\
             # TYPE latency_seconds histogram\n\
             latency_seconds_bucket{{le=\"0.1\"}} {b1}\n\
             latency_seconds_bucket{{le=\"0.5\"}} {b2}\n\
             latency_seconds_bucket{{le=\"+Inf\"}} {inf}\n\
             latency_seconds_sum {}\nlatency_seconds_count {inf}\n",
            self.orders, self.queue, self.sum
        )
    }
}

/// Serves `exposed` as Prometheus text on `/metrics`; returns its address.
fn exporter(exposed: Arc<Mutex<Exposed>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the exporter");
    let addr = listener.local_addr().expect("exporter address").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            // Read the request head; the body is empty.
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = exposed.lock().expect("exposed").text();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// The `prometheus` binary, installed with apt when missing.
fn prometheus_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| installed("prometheus", "prometheus"))
}

/// A Prometheus scraping `target` every second and remote-writing to `edge`.
struct Prometheus(Child);

impl Prometheus {
    fn start(dir: &Path, target: &str, edge: &Node) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n\
                 scrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: [\"{target}\"]\n\
                 remote_write:\n  - url: http://{}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 50ms\n      max_backoff: 500ms\n    metadata_config:\n      send_interval: 1s\n",
                edge.http
            ),
        )
        .expect("writing prometheus.yml");
        let web = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let web_addr = web.local_addr().expect("address").to_string();
        drop(web);
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web_addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        Prometheus(child)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn field(node: &Node, selector: &str, name: &str, from_ms: i64) -> f64 {
    merged_since(node, selector, from_ms).map_or(0.0, |v| f(&v, name))
}

/// Waits until the global tier shows `orders` orders and `observations`
/// latencies; fails if it ever shows more.
fn wait_totals(global: &Node, from_ms: i64, orders: f64, observations: f64) {
    wait_for(
        &format!("{orders} orders and {observations} latencies at the global tier"),
        |last| {
            let got = field(global, "orders_total", "sum", from_ms);
            let seen = field(global, "latency_seconds", "count", from_ms);
            *last = format!("orders {got}, latencies {seen}");
            assert!(
                got <= orders && seen <= observations,
                "counted twice: {last}"
            );
            (got == orders && seen == observations).then_some(())
        },
    );
}

#[test]
fn a_prometheus_remote_writes_exact_totals_through_edge_and_exporter_restarts() {
    let root = tempfile::tempdir().expect("tempdir");
    let global = Node::start(NodeConfig::new(root.path(), "global").downstream("edge"));
    let mut edge = Node::start(NodeConfig::new(root.path(), "edge").upstream(&global));
    let from_ms = now_ms() - now_ms().rem_euclid(60_000) - 60_000;
    let exposed = Arc::new(Mutex::new(Exposed {
        orders: 10,
        queue: 7.0,
        buckets: [3, 5, 6],
        sum: 1.5,
    }));
    let target = exporter(exposed.clone());
    let _prometheus = Prometheus::start(root.path(), &target, &edge);

    // The first scrape counts everything since the exporter started.
    wait_totals(&global, from_ms, 10.0, 6.0);
    // More orders and latencies; each scrape repeats the totals.
    *exposed.lock().expect("exposed") = Exposed {
        orders: 25,
        queue: 9.0,
        buckets: [4, 8, 10],
        sum: 3.0,
    };
    wait_totals(&global, from_ms, 25.0, 10.0);
    // The edge is killed and comes back on its port: its series table is
    // read back from its store, so the totals Prometheus keeps sending (and
    // resends, for what the dead edge did not answer) count nothing twice.
    edge.kill();
    edge.restart_same_ports();
    *exposed.lock().expect("exposed") = Exposed {
        orders: 31,
        queue: 9.0,
        buckets: [4, 9, 11],
        sum: 3.5,
    };
    wait_totals(&global, from_ms, 31.0, 11.0);
    // The exporter restarts: its counters start again from zero.
    *exposed.lock().expect("exposed") = Exposed {
        orders: 3,
        queue: 2.0,
        buckets: [1, 2, 2],
        sum: 0.25,
    };
    wait_totals(&global, from_ms, 34.0, 13.0);

    let latency = merged_since(&global, "latency_seconds", from_ms).expect("latency");
    assert_eq!(f(&latency, "sum"), 3.75, "{latency}");
    wait_for("the gauge's newest value", |last| {
        let v = field(&edge, "queue_depth", "value", from_ms);
        *last = format!("{v}");
        (v == 2.0).then_some(())
    });
    // Prometheus' own labels came along; the histogram has no `le`.
    let data = query(
        &global,
        &[
            ("q", "latency_seconds"),
            ("from", &from_ms.to_string()),
            ("step", "all"),
        ],
    );
    let labels = &data["series"][0]["labels"];
    assert_eq!(labels["job"], "app", "{data}");
    assert!(labels.get("le").is_none(), "{data}");
    assert_eq!(data["kind"], "exp_histogram", "{data}");
    assert_eq!(edge.prom("strata_remote_write_rejected_samples_total"), 0.0);
}
