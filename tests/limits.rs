//! `[limits]` against real processes: every limit trips with an error naming
//! it, nothing of a refused request or batch is merged, and the node keeps
//! serving. Attacks replayed: 1 000 labels, a 1 MiB label value, a 1 MiB
//! metric name, an oversized label inside a federation batch, 100 000 new
//! series from one source, a query over 50 000 series, a 64 MiB body, a
//! gzip bomb, a body trickled byte by byte, 200 slow uploads at once.

mod util;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata_proto::v1::{self, upstream_message::Msg};
use util::*;

/// POSTs `body` to `/api/v1/ingest` with extra `headers`: status and JSON answer.
fn post(node: &Node, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let url = node.url("/api/v1/ingest");
    let mut request = agent().post(&url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut resp = request
        .send(&body[..])
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("POST {url}: {status} {text:?} is not JSON: {e}"));
    (status, v)
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

/// Asserts an error answer `(status, v)` has `code` and names `needle`.
fn assert_refused(answer: &(u16, Value), code: u16, needle: &str) {
    let (status, v) = answer;
    assert_eq!(*status, code, "{v}");
    assert_eq!(v["status"], "error", "{v}");
    assert!(error_of(v).contains(needle), "{needle} not in {v}");
}

/// `n` counter lines of `metric`, one new series each (`i` from `from`).
fn series_lines(metric: &str, from: usize, n: usize, ts_ms: i64) -> String {
    let mut body = String::with_capacity(n * 80);
    for i in from..from + n {
        body += &format!(
            "{{\"metric\":\"{metric}\",\"kind\":\"counter\",\"labels\":{{\"i\":\"{i}\"}},\"ts_ms\":{ts_ms}}}\n"
        );
    }
    body
}

/// The node's resident memory, from `/metrics`.
fn rss(node: &Node) -> f64 {
    let text = node.prometheus();
    text.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process_resident_memory_bytes:\n{text}"))
}

/// A sample of `/metrics` with exactly these labels.
fn prom_labelled(node: &Node, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    node.prometheus()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
}

/// Events of `kind` on `node`.
fn events(node: &Node, kind: &str) -> Vec<Value> {
    let (status, v) = get_json(&node.url(&format!("/api/v1/events?type={kind}")));
    assert_eq!(status, 200, "{v}");
    v["data"].as_array().cloned().unwrap_or_default()
}

#[test]
fn oversized_names_and_labels_are_refused_whole_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::new(dir.path(), "edge"));
    let base = base_minute_ms();
    let ok = sample("sized", "counter", &[("a", "b")], base, json!(1));
    let many: Vec<(String, String)> = (0..1000).map(|i| (format!("l{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let long_value = "v".repeat(1 << 20);
    let long_metric = "m".repeat(1 << 20);
    let long_name = "n".repeat(300);
    let attacks = [
        (
            sample("sized", "counter", &many, base, json!(1)),
            "limits.max_labels_per_series (64)",
        ),
        (
            sample(
                "sized",
                "counter",
                &[("a", long_value.as_str())],
                base,
                json!(1),
            ),
            "limits.max_label_value_bytes (2048)",
        ),
        (
            sample(&long_metric, "counter", &[], base, json!(1)),
            "limits.max_metric_name_bytes (256)",
        ),
        (
            sample(
                "sized",
                "counter",
                &[(long_name.as_str(), "x")],
                base,
                json!(1),
            ),
            "limits.max_label_name_bytes (256)",
        ),
    ];
    for (line, limit) in &attacks {
        let answer = ingest_raw(&node, &ndjson(&[ok.clone(), line.clone()]), true);
        assert_refused(&answer, 400, limit);
        assert_eq!(answer.1["line"], 2, "{}", answer.1);
        assert!(error_of(&answer.1).len() < 400, "abbreviated: {}", answer.1);
    }
    // Nothing of a refused request was merged; the node keeps serving.
    assert_eq!(merged_value(&node, "sized", base), None);
    assert_eq!(
        node.prom("strata_limit_refusals_total"),
        attacks.len() as f64
    );
    ingest_ok(&node, &[ok], true);
    assert_eq!(counter_total(&node, "sized", base), 1);
}

#[test]
fn more_lines_than_the_limit_are_a_413_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        NodeConfig::new(dir.path(), "edge").set("limits", "max_lines_per_request = 100"),
    );
    let base = base_minute_ms();
    let answer = ingest_raw(&node, &series_lines("lines", 0, 101, base), true);
    assert_refused(
        &answer,
        413,
        "request has 101 lines, over limits.max_lines_per_request (100)",
    );
    assert_eq!(merged_value(&node, "lines", base), None);
    let (status, v) = ingest_raw(&node, &series_lines("lines", 0, 100, base), true);
    assert_eq!((status, &v["accepted"]), (200, &json!(100)), "{v}");
}

/// One native push of `series`: `Ok(accepted)` or the refusal's status.
fn push(node: &Node, series: Vec<v1::SeriesSamples>) -> Result<u64, tonic::Status> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut client = v1::ingest_client::IngestClient::connect(format!("http://{}", node.grpc))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let request = v1::PushRequest {
            series,
            wait_commit: true,
        };
        Ok(client.push(request).await?.into_inner().accepted)
    })
}

fn native_series(
    metric: &str,
    labels: &[(&str, &str)],
    points: usize,
    ts_ms: i64,
) -> v1::SeriesSamples {
    v1::SeriesSamples {
        metric: metric.into(),
        kind: v1::Kind::Counter as i32,
        labels: labels
            .iter()
            .map(|(n, v)| v1::Label {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect(),
        points: vec![v1::Point { ts_ms, value: 1.0 }; points],
        apdex_threshold: 0.0,
    }
}

#[test]
fn native_grpc_pushes_meet_the_same_limits() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        NodeConfig::new(dir.path(), "edge").set("limits", "max_lines_per_request = 10"),
    );
    let base = base_minute_ms();
    let long_value = "v".repeat(5000);
    let status = push(
        &node,
        vec![
            native_series("native", &[], 1, base),
            native_series("native", &[("blob", long_value.as_str())], 1, base),
        ],
    )
    .expect_err("over the label value limit");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("limits.max_label_value_bytes (2048)"),
        "{status:?}"
    );
    let status = push(&node, vec![native_series("native", &[], 11, base)])
        .expect_err("over the points limit");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("limits.max_lines_per_request (10)"),
        "{status:?}"
    );
    assert_eq!(merged_value(&node, "native", base), None);
    let accepted = push(&node, vec![native_series("native", &[], 10, base)]);
    assert_eq!(accepted.map_err(|s| s.to_string()), Ok(10));
    assert_eq!(counter_total(&node, "native", base), 10);
}

/// The upstream's next answer that is not an ack of an earlier seq.
fn answer_to(stream: &mut FedStream, seq: u64) -> Msg {
    loop {
        match stream.recv() {
            Ok(Some(Msg::Ack(a))) if a.seq < seq => {}
            Ok(Some(msg)) => return msg,
            other => panic!("expected an answer to batch {seq}, got {other:?}"),
        }
    }
}

#[test]
fn federation_batches_with_an_oversized_series_are_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let base = base_minute_ms();
    let mut stream = FedStream::open(&global, "edge", 7, &token_of("edge")).unwrap();
    let counter = v1::state::Kind::Counter(1);
    let label = |name: String, value: String| v1::Label { name, value };

    // A 60 KiB label value beside a valid series, the value defined by ref.
    let mut batch = forged_batch(1, "fed_valid", base, counter.clone());
    let mut big = forged_batch(1, "fed_big", base, counter.clone());
    big.series[0].series_ref = 1;
    big.series[0].labels = vec![label("blob".into(), "x".repeat(60 << 10))];
    batch.series.extend(big.series);
    stream.send(batch);
    match answer_to(&mut stream, 1) {
        Msg::Reject(r) => assert!(
            r.error.contains("limits.max_label_value_bytes (2048)"),
            "{}",
            r.error
        ),
        other => panic!("expected a reject, got {other:?}"),
    }
    // A batch referring to the refused definition is refused too.
    let mut by_ref = forged_batch(2, "", base, counter.clone());
    by_ref.series[0].series_ref = 1;
    stream.send(by_ref);
    assert!(matches!(answer_to(&mut stream, 2), Msg::Reject(_)));
    // 1 000 labels; a 1 MiB metric name.
    let mut labels = forged_batch(3, "fed_labels", base, counter.clone());
    labels.series[0].labels = (0..1000)
        .map(|i| label(format!("l{i}"), "v".into()))
        .collect();
    stream.send(labels);
    match answer_to(&mut stream, 3) {
        Msg::Reject(r) => assert!(
            r.error.contains("limits.max_labels_per_series"),
            "{}",
            r.error
        ),
        other => panic!("expected a reject, got {other:?}"),
    }
    stream.send(forged_batch(4, &"m".repeat(1 << 20), base, counter.clone()));
    match answer_to(&mut stream, 4) {
        Msg::Reject(r) => assert!(
            r.error.contains("limits.max_metric_name_bytes"),
            "{}",
            r.error
        ),
        other => panic!("expected a reject, got {other:?}"),
    }
    // The stream goes on.
    stream.send(forged_batch(
        5,
        "fed_valid",
        base,
        v1::state::Kind::Counter(5),
    ));
    assert!(matches!(answer_to(&mut stream, 5), Msg::Ack(a) if a.seq == 5));
    assert_eq!(counter_total(&global, "fed_valid", base), 5);
    assert_eq!(merged_value(&global, "fed_labels", base), None);
    assert_eq!(global.prom("strata_federation_rejected_batches_total"), 4.0);
}

#[test]
fn a_source_sending_100000_new_series_is_held_at_its_cardinality_limit() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        NodeConfig::new(dir.path(), "edge")
            .set("limits", "max_series_per_source = 1000")
            .set("limits", "max_metrics_per_source = 10"),
    );
    let base = base_minute_ms();
    let (status, v) = ingest_raw(&node, &series_lines("card", 0, 600, base), true);
    assert_eq!(status, 200, "{v}");
    let rss_before = rss(&node);
    let started = Instant::now();
    // 4 x 25 000 new series: each request refused whole, naming the limit.
    for r in 0..4 {
        let body = series_lines("card", 1000 + r * 25_000, 25_000, base);
        let answer = ingest_raw(&node, &body, false);
        assert_refused(&answer, 422, "at limits.max_series_per_source (1000)");
        assert!(
            error_of(&answer.1).contains("25000 new series refused"),
            "{}",
            answer.1
        );
    }
    let rss_after = rss(&node);
    assert!(
        rss_after - rss_before < 64e6,
        "resident memory grew from {rss_before} to {rss_after}"
    );
    // Existing series keep flowing; new ones up to the limit too, then no more.
    let (status, v) = ingest_raw(&node, &series_lines("card", 0, 1000, base), true);
    assert_eq!(status, 200, "{v}");
    let answer = ingest_raw(&node, &series_lines("card", 1000, 1, base), true);
    assert_refused(&answer, 422, "limits.max_series_per_source");
    // A new metric beyond its own limit.
    let lines: Vec<Value> = (0..10)
        .map(|i| sample(&format!("metric_{i}"), "counter", &[], base, json!(1)))
        .collect();
    let answer = ingest_raw(&node, &ndjson(&lines), true);
    assert_refused(&answer, 422, "at limits.max_metrics_per_source (10)");
    assert_eq!(counter_total(&node, "card", base), 1600);
    let id = "node=\"edge\",source=\"edge\"";
    assert_eq!(
        prom_labelled(&node, "strata_cardinality_refusals_total", id),
        Some(6.0)
    );
    assert_eq!(
        prom_labelled(&node, "strata_cardinality_series", id),
        Some(1000.0)
    );
    // One event per source and minute: the test may straddle a minute.
    let listed = wait_for("a cardinality_limited event", |last| {
        let list = events(&node, "cardinality_limited");
        *last = format!("{list:?}");
        (!list.is_empty()).then_some(list)
    });
    assert!(listed.len() <= 2, "{listed:?}");
    let message = listed[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("limits.max_series_per_source"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_downstream_over_its_cardinality_limit_has_its_new_series_refused_and_the_rest_merged() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(
        NodeConfig::new(dir.path(), "global")
            .downstream("edge")
            .set("limits", "max_series_per_source = 100"),
    );
    let base = base_minute_ms();
    let mut stream = FedStream::open(&global, "edge", 9, &token_of("edge")).unwrap();
    let batch_of = |seq: u64, from: usize, n: usize| {
        let mut batch = forged_batch(seq, "fed_card", base, v1::state::Kind::Counter(1));
        let template = batch.series.remove(0);
        batch.series = (from..from + n)
            .map(|i| v1::SeriesIncrements {
                labels: vec![v1::Label {
                    name: "i".into(),
                    value: i.to_string(),
                }],
                ..template.clone()
            })
            .collect();
        batch
    };
    stream.send(batch_of(1, 0, 80));
    assert!(matches!(answer_to(&mut stream, 1), Msg::Ack(a) if a.seq == 1));
    // 20 series it has and 30 new ones beyond its budget: the new ones are
    // refused, the others merged.
    stream.send(batch_of(2, 60, 50));
    assert!(matches!(answer_to(&mut stream, 2), Msg::Ack(a) if a.seq == 2));
    assert_eq!(counter_total(&global, "fed_card", base), 100);
    // Existing series keep flowing.
    stream.send(batch_of(3, 0, 80));
    assert!(matches!(answer_to(&mut stream, 3), Msg::Ack(a) if a.seq == 3));
    assert_eq!(counter_total(&global, "fed_card", base), 180);
    assert_eq!(
        prom_value(
            &global.prometheus(),
            "strata_federation_refused_increments_total",
            "global"
        ),
        Some(30.0)
    );
    let id = "node=\"global\",source=\"edge\"";
    assert_eq!(
        prom_labelled(&global, "strata_cardinality_refusals_total", id),
        Some(1.0)
    );
}

#[test]
fn queries_over_the_series_or_point_limit_answer_422_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        NodeConfig::new(dir.path(), "edge")
            .set("limits", "max_query_series = 100")
            .set("limits", "max_query_points = 120"),
    );
    let base = base_minute_ms();
    let mut lines = Vec::new();
    for i in 0..150 {
        let group = if i < 80 { "a" } else { "b" };
        let labels = [("i", i.to_string()), ("grp", group.to_string())];
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        lines.push(sample("wide", "counter", &labels, base, json!(1)));
        if group == "a" {
            lines.push(sample("wide", "counter", &labels, base + 60_000, json!(1)));
        }
    }
    ingest_ok(&node, &lines, true);
    let (from, to) = range_of(base);
    let ask = |q: &str, step: &str, from: &str| {
        query_raw(
            &node,
            &[("q", q), ("from", from), ("to", &to), ("step", step)],
        )
    };
    assert_refused(
        &ask("wide", "all", &from),
        422,
        "the selector matches 150 series, over limits.max_query_series (100)",
    );
    // Grouping merges the answer, but the series read are the same.
    assert_refused(
        &ask("wide", "minute", &from),
        422,
        "limits.max_query_series",
    );
    // 80 series of two points each: 160 points.
    assert_refused(
        &ask("wide{grp=\"a\"}", "minute", &from),
        422,
        "over limits.max_query_points",
    );
    let data = query(
        &node,
        &[
            ("q", "wide{grp=\"a\"}"),
            ("from", &from),
            ("to", &to),
            ("step", "all"),
        ],
    );
    assert_eq!(data["series"].as_array().map(Vec::len), Some(80));
    // A range of more minutes than the whole answer may hold.
    let long_ago = (base - 200 * 60_000).to_string();
    assert_refused(
        &ask("wide{i=\"1\"}", "minute", &long_ago),
        422,
        "points per series, over limits.max_query_points (120)",
    );
    assert_eq!(node.prom("strata_limit_refusals_total"), 4.0);
}

#[test]
fn a_query_matching_50000_series_is_refused_before_it_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        NodeConfig::new(dir.path(), "edge")
            .set("limits", "max_series_per_source = 100000")
            .set("limits", "max_query_series = 1000"),
    );
    let base = base_minute_ms();
    for r in 0..2 {
        let (status, v) = ingest_raw(&node, &series_lines("huge", r * 25_000, 25_000, base), true);
        assert_eq!(status, 200, "{v}");
    }
    let rss_before = rss(&node);
    let (from, to) = range_of(base);
    for _ in 0..3 {
        let answer = query_raw(&node, &[("q", "huge"), ("from", &from), ("to", &to)]);
        assert_refused(
            &answer,
            422,
            "the selector matches 50000 series, over limits.max_query_series (1000)",
        );
    }
    let rss_after = rss(&node);
    assert!(
        rss_after - rss_before < 32e6,
        "resident memory grew from {rss_before} to {rss_after}"
    );
    let data = query(
        &node,
        &[("q", "huge{i=\"7\"}"), ("from", &from), ("to", &to)],
    );
    assert_eq!(data["series"].as_array().map(Vec::len), Some(1));
}

/// Writes `head` on a new connection, then `body` from another thread (which
/// stops at the first write error: the node may close first), and reads the
/// answer until the node closes the connection: its status and body.
fn raw_exchange(
    node: &Node,
    head: String,
    body: impl FnOnce(&mut TcpStream) + Send + 'static,
) -> (u16, String) {
    let mut stream = TcpStream::connect(node.http).expect("connecting");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("a read timeout");
    stream.write_all(head.as_bytes()).expect("writing the head");
    let mut writer = stream.try_clone().expect("a second handle");
    let sender = std::thread::spawn(move || body(&mut writer));
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let _ = sender.join();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[test]
fn a_64_mib_body_is_refused_with_413_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::new(dir.path(), "edge"));
    let size = 64 << 20;
    // Declared, more than twice the limit: refused before a byte is read.
    let head = format!("POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
    let (status, body) = raw_exchange(&node, head, |_| {});
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("larger than 16777216 bytes (limits.max_body_bytes)"),
        "{body}"
    );
    // Streamed without a length: refused once past twice the limit, none of
    // it held.
    let head = "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (status, body) = raw_exchange(&node, head.to_string(), move |w| {
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..size / chunk.len() {
            let frame = format!("{:x}\r\n", chunk.len());
            if w.write_all(frame.as_bytes()).is_err()
                || w.write_all(&chunk).is_err()
                || w.write_all(b"\r\n").is_err()
            {
                return;
            }
        }
        let _ = w.write_all(b"0\r\n\r\n");
    });
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("limits.max_body_bytes"), "{body}");
    let base = base_minute_ms();
    ingest_ok(
        &node,
        &[sample("after", "counter", &[], base, json!(2))],
        true,
    );
    assert_eq!(counter_total(&node, "after", base), 2);
}

#[test]
fn a_trickled_body_is_cut_with_408_and_its_connection_closed() {
    let dir = tempfile::tempdir().unwrap();
    let node =
        Node::start(NodeConfig::new(dir.path(), "edge").set("http", "body_read_timeout_ms = 500"));
    let head = "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"met";
    let started = Instant::now();
    // The rest never comes; the connection stays open from this side.
    let (status, body) = raw_exchange(&node, head.to_string(), |_| {});
    assert_eq!(status, 408, "{body}");
    assert!(
        body.contains("within 500 ms (http.body_read_timeout_ms)"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn two_hundred_slow_uploads_leave_the_node_answering_health_queries_and_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::new(dir.path(), "edge"));
    // Each upload sends its head and a few bytes of a 1 000-byte body, then
    // nothing: it holds a connection and a request until the body timeout.
    let uploads: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(node.http).expect("connecting");
            s.write_all(
                b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"met",
            )
            .expect("writing a slow upload's start");
            s
        })
        .collect();
    let (status, health) = get_json(&node.url("/health"));
    assert_eq!(status, 200, "{health}");
    let base = base_minute_ms();
    ingest_ok(
        &node,
        &[sample("beside_slow", "counter", &[], base, json!(3))],
        true,
    );
    assert_eq!(counter_total(&node, "beside_slow", base), 3);
    drop(uploads);
    // Nothing of the uploads was merged.
    let (_, metrics) = get_json(&node.url("/api/v1/metrics"));
    let names: Vec<&str> = metrics["data"]
        .as_array()
        .expect("metrics list")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .filter(|n| !n.starts_with("strata_"))
        .collect();
    assert_eq!(names, ["beside_slow"], "{metrics}");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("in memory");
    e.finish().expect("in memory")
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

#[test]
fn gzip_and_zstd_bodies_ingest_exactly_and_bad_bodies_are_400s() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::new(dir.path(), "edge"));
    let base = base_minute_ms();
    let lines: Vec<Value> = (0..2000)
        .map(|i| {
            sample(
                "packed",
                "counter",
                &[("i", &(i % 50).to_string())],
                base,
                json!(i % 7 + 1),
            )
        })
        .collect();
    let total: u64 = (0..2000u64).map(|i| i % 7 + 1).sum();
    let body = ndjson(&lines).into_bytes();
    for (encoding, packed) in [("gzip", gzip(&body)), ("zstd", zstd(&body))] {
        assert!(packed.len() < body.len() / 4, "{encoding}");
        let (status, v) = post(&node, &[("Content-Encoding", encoding)], packed);
        assert_eq!(
            (status, &v["accepted"]),
            (200, &json!(2000)),
            "{encoding}: {v}"
        );
    }
    wait_for("both bodies merged", |last| {
        let got = counter_total(&node, "packed", base);
        *last = got.to_string();
        (got == 2 * total).then_some(())
    });
    let garbage = b"\x1f\x8b\x08\x00garbage".to_vec();
    assert_refused(
        &post(&node, &[("Content-Encoding", "gzip")], garbage),
        400,
        "not valid gzip",
    );
    assert_refused(
        &post(&node, &[("Content-Encoding", "zstd")], b"nope".to_vec()),
        400,
        "not valid zstd",
    );
    assert_refused(
        &post(&node, &[("Content-Encoding", "br")], body.clone()),
        400,
        "not supported",
    );
    let latin1 = b"{\"metric\":\"caf\xe9\",\"kind\":\"counter\"}\n".to_vec();
    assert_refused(&post(&node, &[], latin1.clone()), 400, "not utf-8");
    assert_refused(
        &post(&node, &[("Content-Encoding", "gzip")], gzip(&latin1)),
        400,
        "not utf-8",
    );
}

#[test]
fn a_gzip_bomb_of_1_gib_is_refused_with_413() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::new(dir.path(), "edge"));
    // 1 024 gzip members of 1 MiB of zeros each: 1 GiB once decompressed.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&vec![0u8; 1 << 20]).expect("in memory");
    let bomb = e.finish().expect("in memory").repeat(1024);
    assert!(bomb.len() < 4 << 20, "{}", bomb.len());
    let rss_before = rss(&node);
    let answer = post(&node, &[("Content-Encoding", "gzip")], bomb);
    assert_refused(
        &answer,
        413,
        "decompresses to more than 16777216 bytes (limits.max_body_bytes)",
    );
    // The same in zstd frames.
    let bomb = zstd(&vec![0u8; 1 << 20]).repeat(1024);
    let answer = post(&node, &[("Content-Encoding", "zstd")], bomb);
    assert_refused(&answer, 413, "limits.max_body_bytes");
    let rss_after = rss(&node);
    assert!(
        rss_after - rss_before < 128e6,
        "{rss_before} -> {rss_after}"
    );
    let base = base_minute_ms();
    ingest_ok(
        &node,
        &[sample("after", "counter", &[], base, json!(1))],
        true,
    );
}

#[test]
fn contradictory_limits_are_refused_at_start_up_naming_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig::new(dir.path(), "edge")
        .set("http", "max_body_bytes = 1000")
        .set("limits", "max_body_bytes = 2000")
        .set("limits", "max_series_per_source = 0")
        .set("http", "ingest_token = \"only-ingest\"");
    let (ok, text) = check_config_of(&config);
    assert!(!ok, "{text}");
    for needle in [
        "limits.max_body_bytes: is set together with http.max_body_bytes",
        "limits.max_series_per_source: must be greater than 0",
        "http.ingest_token: is set without http.token",
    ] {
        assert!(text.contains(needle), "{needle} not in {text}");
    }
    let (status, text) = run_refused(&config);
    assert!(!status.success(), "{text}");
    assert!(text.contains("limits.max_body_bytes"), "{text}");
}

#[test]
fn hostile_values_in_ndjson_are_refused_whole_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::new(dir.path(), "edge"));
    let base = base_minute_ms();
    let ok = r#"{"metric":"calm","kind":"counter","value":1}"#;
    ingest_ok(
        &node,
        &[
            sample("fixed_kind", "sum", &[], base, json!(1.0)),
            json!({"metric": "apdex_t", "kind": "apdex", "ts_ms": base, "value": 10.0, "threshold": 100.0}),
        ],
        true,
    );
    let far = now_ms() + 3_600_000;
    let attacks = [
        (
            r#"{"metric":"v","kind":"sum","value":NaN}"#.to_string(),
            "line 2",
        ),
        (
            r#"{"metric":"v","kind":"sum","value":1e999}"#.to_string(),
            "line 2",
        ),
        (
            r#"{"metric":"v","kind":"max","value":-1e999}"#.to_string(),
            "line 2",
        ),
        (
            r#"{"metric":"v","kind":"counter","value":-1}"#.to_string(),
            "non-negative integer",
        ),
        (
            r#"{"metric":"v","kind":"counter","value":1.5}"#.to_string(),
            "non-negative integer",
        ),
        (
            r#"{"metric":"v","kind":"counter","value":18446744073709551616}"#.to_string(),
            "at most 2^53",
        ),
        (
            r#"{"metric":"v","kind":"histogram","value":-3}"#.to_string(),
            "histogram",
        ),
        (
            r#"{"metric":"v","kind":"bogus","value":1}"#.to_string(),
            "bogus",
        ),
        (
            r#"{"metric":"fixed_kind","kind":"counter","value":1}"#.to_string(),
            "fixed_kind",
        ),
        (
            format!(
                r#"{{"metric":"apdex_t","kind":"apdex","ts_ms":{base},"value":1.0,"threshold":200.0}}"#
            ),
            "threshold",
        ),
        (
            r#"{"metric":"v","kind":"counter","ts_ms":-60000}"#.to_string(),
            "older than the allowed lateness",
        ),
        (
            format!(r#"{{"metric":"v","kind":"counter","ts_ms":{far}}}"#),
            "limits.max_future_s",
        ),
    ];
    for (line, needle) in &attacks {
        let answer = ingest_raw(&node, &format!("{ok}\n{line}\n"), true);
        assert_eq!(answer.0, 400, "{line}: {}", answer.1);
        assert!(
            error_of(&answer.1).contains(needle),
            "{line}: {needle} not in {}",
            answer.1
        );
        assert!(
            error_of(&answer.1).contains("line 2"),
            "{line}: {}",
            answer.1
        );
    }
    // Nothing of any refused request merged; all counted.
    assert_eq!(merged_value(&node, "calm", base), None);
    assert_eq!(merged_value(&node, "v", base), None);
    assert_eq!(
        node.prom("strata_ingest_rejected_requests_total"),
        attacks.len() as f64
    );
}

#[test]
fn federation_minutes_before_1970_or_in_the_future_are_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let base = base_minute_ms();
    let mut stream = FedStream::open(&global, "edge", 5, &token_of("edge")).unwrap();
    let counter = v1::state::Kind::Counter(1);
    let far = base + 3_600_000;
    let cases = [
        (-60_000, "is before 1970"),
        (
            far,
            "is in the future: more than 300 s (limits.max_future_s)",
        ),
    ];
    for (seq, (bucket_ms, needle)) in (1..).zip(cases) {
        let mut batch = forged_batch(seq, "timed", base, counter.clone());
        let mut odd = forged_batch(seq, "timed", bucket_ms, counter.clone());
        odd.series[0].metric = "timed_odd".into();
        batch.series.extend(odd.series);
        batch.watermark_ms = bucket_ms;
        stream.send(batch);
        match answer_to(&mut stream, seq) {
            Msg::Reject(r) => assert!(r.error.contains(needle), "{needle}: {}", r.error),
            other => panic!("expected a reject, got {other:?}"),
        }
    }
    // A histogram of another precision and a kind conflict: those increments
    // are refused alone (counted), the rest of the batch merges.
    let mut hist = strata_model::Hist::new(3).expect("3 digits");
    hist.record(5.0).expect("a value");
    let mut batch = forged_batch(3, "timed", base, counter.clone());
    let wrong = forged_batch(
        3,
        "precise",
        base,
        v1::state::Kind::Histogram(hist.to_v2_bytes()),
    );
    let conflict = forged_batch(3, "timed", base, v1::state::Kind::Max(1.0));
    batch.series.extend(wrong.series);
    batch.series.extend(conflict.series);
    stream.send(batch);
    assert!(matches!(answer_to(&mut stream, 3), Msg::Ack(a) if a.seq == 3));
    assert_eq!(counter_total(&global, "timed", base), 1);
    assert_eq!(merged_value(&global, "timed_odd", base), None);
    assert_eq!(merged_value(&global, "precise", base), None);
    assert_eq!(
        global.prom("strata_federation_refused_increments_total"),
        2.0
    );
    assert_eq!(global.prom("strata_federation_rejected_batches_total"), 2.0);
}
