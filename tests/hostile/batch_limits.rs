//! Batches larger than either side's gRPC message limit: forwarding used to
//! wedge behind one large flush (an edge's own limit failed every send; an
//! upstream's limit made the edge reconnect in a loop while `/health` said
//! OK), and a receiver ended a stream carrying an oversized message with
//! status OK. Now batches go in parts that fit the smaller limit, a receiver
//! answers an oversized message with a status naming its limit, inputs refuse
//! series that could never be forwarded, and a forwarder that keeps failing
//! says so in `/health`.

use serde_json::{Value, json};
use strata_proto::v1::{self, upstream_message::Msg};

use crate::util::*;

/// The smallest message limit a node accepts.
const SMALL: &str = "max_message_bytes = 65536";

/// Label values long enough to meet the message limits, which
/// `limits.max_label_value_bytes` (2048 by default) would refuse first.
const LONG_LABELS: &str = "max_label_value_bytes = 1048576";

/// One counter sample per new series, `n` series of `metric` in the minute
/// `base`, each with a label long enough that the batch is several times 64 KiB;
/// series `i` counts `i % 7 + 1`. Returns the lines and their total.
fn many_series(metric: &str, n: usize, base: i64) -> (Vec<Value>, u64) {
    let mut total = 0;
    let lines = (0..n)
        .map(|i| {
            let count = (i % 7 + 1) as u64;
            total += count;
            let path = format!("/api/v1/orders/{i:05}/items");
            sample(
                metric,
                "counter",
                &[("path", path.as_str()), ("service", "checkout")],
                base + 1_000,
                json!(count),
            )
        })
        .collect();
    (lines, total)
}

/// `/health/<component>`: its status and the detail of its first check.
fn component(node: &Node, name: &str) -> (String, String) {
    let (code, v) = get_json(&node.url(&format!("/health/{name}")));
    assert_eq!(code, 200, "{v}");
    (
        v["status"].as_str().unwrap_or_default().to_string(),
        v["checks"][0]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Waits until `edge`'s forwarder reports OK (connected, delivering).
fn wait_forwarder_ok(edge: &Node) {
    wait_for(&format!("{}'s forwarder to be OK", edge.id), |last| {
        let (status, detail) = component(edge, "forwarder");
        *last = format!("{status}: {detail}");
        (status == "OK").then_some(())
    });
}

/// Number of series `node` has stored for `metric`.
fn series_count(node: &Node, metric: &str) -> u64 {
    let (code, v) = get_json(&node.url("/api/v1/metrics"));
    assert_eq!(code, 200, "{v}");
    v["data"]
        .as_array()
        .expect("metrics array")
        .iter()
        .find(|m| m["name"] == metric)
        .map_or(0, |m| m["series"].as_u64().expect("series count"))
}

/// Ingests 5 000 new series in one request at `edge`, then a later request,
/// and checks that `global` ends with exactly both, delivered in parts on one
/// stream (no reconnect), and that everything is acknowledged.
fn deliver_a_large_ingest(edge: &Node, global: &Node) {
    let base = base_minute_ms();
    let (lines, total) = many_series("bulk_requests", 5_000, base);
    let body = ndjson(&lines);
    assert!(
        body.len() > 8 * 65_536,
        "the request is {} bytes",
        body.len()
    );
    let (code, v) = ingest_raw(edge, &body, true);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["accepted"], 5_000, "{v}");
    let later: Vec<Value> = (0..10)
        .map(|_| sample("later_requests", "counter", &[], base + 2_000, json!(3)))
        .collect();
    ingest_ok(edge, &later, true);
    wait_for("the global to have every series and count", |last| {
        let (bulk, late) = (
            counter_total(global, "bulk_requests", base),
            counter_total(global, "later_requests", base),
        );
        *last = format!("bulk {bulk} of {total}, later {late} of 30");
        (bulk == total && late == 30).then_some(())
    });
    wait_forwarded(edge, global, 1);
    assert_eq!(counter_total(global, "bulk_requests", base), total);
    assert_eq!(counter_total(global, "later_requests", base), 30);
    assert_eq!(series_count(global, "bulk_requests"), 5_000);
    assert!(
        edge.prom("strata_forward_batches_split_total") >= 1.0,
        "the large batch went in parts"
    );
    assert_eq!(edge.prom("strata_forward_oversized_increments_total"), 0.0);
    assert_eq!(
        edge.prom("strata_forward_connects_total"),
        1.0,
        "one stream did it all: no reconnect loop"
    );
    assert_eq!(
        global.prom("strata_federation_oversized_messages_total"),
        0.0
    );
    assert_eq!(global.prom("strata_federation_rejected_batches_total"), 0.0);
    wait_forwarder_ok(edge);
}

#[test]
fn a_large_ingest_at_an_edge_with_a_small_message_limit_is_delivered_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let edge = Node::start(
        NodeConfig::new(dir.path(), "edge")
            .upstream(&global)
            .set("grpc", SMALL),
    );
    wait_forwarder_ok(&edge);
    deliver_a_large_ingest(&edge, &global);
}

#[test]
fn a_large_ingest_for_a_global_with_a_small_message_limit_is_delivered_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(
        NodeConfig::new(dir.path(), "global")
            .downstream("edge")
            .set("grpc", SMALL),
    );
    let edge = Node::start(NodeConfig::new(dir.path(), "edge").upstream(&global));
    wait_forwarder_ok(&edge);
    deliver_a_large_ingest(&edge, &global);
}

/// A batch of one counter increment for a series with a label of `label_bytes`.
fn batch_with_label(seq: u64, metric: &str, bucket_ms: i64, label_bytes: usize) -> v1::Batch {
    let mut batch = forged_batch(seq, metric, bucket_ms, v1::state::Kind::Counter(1));
    batch.series[0].labels = vec![v1::Label {
        name: "blob".into(),
        value: "x".repeat(label_bytes),
    }];
    batch
}

/// A stream to `upstream` as `edge`, once the previous one has let go of the id.
fn open(upstream: &Node, epoch: u64) -> FedStream {
    wait_for("a stream to be welcomed", |last| {
        match FedStream::open(upstream, "edge", epoch, &token_of("edge")) {
            Ok(stream) => Some(stream),
            Err(status) => {
                *last = format!("{status:?}");
                None
            }
        }
    })
}

/// Sends `batch` on a fresh stream as `edge` and returns the status that ends
/// the stream.
fn refused_status(upstream: &Node, epoch: u64, batch: v1::Batch) -> tonic::Status {
    let mut stream = open(upstream, epoch);
    stream.send(batch);
    match stream.recv() {
        Err(status) => status,
        other => panic!("expected the stream to end with an error status, got {other:?}"),
    }
}

#[test]
fn an_oversized_message_ends_the_stream_with_a_status_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let small = Node::start(
        NodeConfig::new(dir.path(), "small")
            .downstream("edge")
            .set("grpc", SMALL),
    );
    let base = base_minute_ms();
    let epoch = 77;
    let welcome = open(&small, epoch).welcome;
    assert_eq!(welcome.max_message_bytes, 65_536, "the limit is announced");

    let status = refused_status(&small, epoch, batch_with_label(1, "attack", base, 200_000));
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    for needle in ["65536", "grpc.max_message_bytes", "bytes"] {
        assert!(status.message().contains(needle), "{needle}: {status:?}");
    }
    assert_eq!(
        small.prom("strata_federation_oversized_messages_total"),
        1.0
    );

    // The node keeps serving: the same source goes on with a batch that fits,
    // and nothing of the oversized one was merged.
    let mut stream = open(&small, epoch);
    assert_eq!(stream.welcome.committed_seq, 0);
    stream.send(forged_batch(1, "fits", base, v1::state::Kind::Counter(4)));
    match stream.recv() {
        Ok(Some(Msg::Ack(a))) => assert_eq!(a.seq, 1),
        other => panic!("expected an ack, got {other:?}"),
    }
    assert_eq!(counter_total(&small, "fits", base), 4);
    assert_eq!(counter_total(&small, "attack", base), 0);
    drop(stream);

    // 100 MB to a node with the default limit (64 MiB): refused the same way.
    let default = Node::start(NodeConfig::new(dir.path(), "default").downstream("edge"));
    let status = refused_status(
        &default,
        epoch,
        batch_with_label(1, "attack", base, 100 << 20),
    );
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&(64u64 << 20).to_string())
            && status.message().contains("grpc.max_message_bytes"),
        "{status:?}"
    );
    let (code, v) = get_json(&default.url("/health"));
    assert_eq!(code, 200, "{v}");

    // Parts out of place end the stream too, naming what was expected.
    let mut first = forged_batch(2, "parts", base, v1::state::Kind::Counter(1));
    first.more_parts = true;
    let mut stray = forged_batch(3, "parts", base, v1::state::Kind::Counter(1));
    stray.part = 1;
    let mut stream = open(&small, epoch);
    assert_eq!(stream.welcome.committed_seq, 1);
    stream.send(first.clone());
    stream.send(stray);
    let status = match stream.recv() {
        Err(status) => status,
        other => panic!("expected an error status, got {other:?}"),
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("expected part 1 of batch 2"),
        "{status:?}"
    );
    assert_eq!(
        counter_total(&small, "parts", base),
        0,
        "nothing of a half batch is merged"
    );

    // A batch in parts is merged whole, once, and acked once.
    let mut stream = open(&small, epoch);
    let mut last = forged_batch(2, "parts", base, v1::state::Kind::Counter(5));
    last.part = 1;
    stream.send(first.clone());
    stream.send(last.clone());
    match stream.recv() {
        Ok(Some(Msg::Ack(a))) => assert_eq!(a.seq, 2),
        other => panic!("expected an ack, got {other:?}"),
    }
    assert_eq!(counter_total(&small, "parts", base), 6);
    // Resent after a reconnect, it is acked again and not merged again.
    drop(stream);
    let mut stream = open(&small, epoch);
    assert_eq!(stream.welcome.committed_seq, 2);
    stream.send(first);
    stream.send(last);
    match stream.recv() {
        Ok(Some(Msg::Ack(a))) => assert_eq!(a.seq, 2),
        other => panic!("expected an ack, got {other:?}"),
    }
    assert_eq!(counter_total(&small, "parts", base), 6);
    assert_eq!(small.prom("strata_federation_duplicates_total"), 1.0);
}

#[test]
fn a_forwarder_that_cannot_deliver_says_why_in_health_and_delivers_once_it_can() {
    let dir = tempfile::tempdir().unwrap();
    // The global takes batches in parts of at most 64 KiB, but no batch over
    // 64 KiB in all: the edge's large flush cannot be delivered.
    let mut global = Node::start(
        NodeConfig::new(dir.path(), "global")
            .downstream("edge")
            .set("grpc", SMALL)
            .set("grpc", "max_batch_bytes = 65536"),
    );
    let edge = Node::start(NodeConfig::new(dir.path(), "edge").upstream(&global));
    wait_forwarder_ok(&edge);
    let base = base_minute_ms();
    let (lines, total) = many_series("stuck_requests", 5_000, base);
    ingest_ok(&edge, &lines, true);

    let degraded = wait_for("the edge's forwarder to report failing", |last| {
        let (status, detail) = component(&edge, "forwarder");
        *last = format!("{status}: {detail}");
        (status == "Degraded" && detail.contains("failing")).then_some(detail)
    });
    assert!(
        degraded.contains("grpc.max_batch_bytes") && degraded.contains("65536"),
        "the reason names the upstream's limit: {degraded}"
    );
    let ko = wait_for("the edge's forwarder to turn KO", |last| {
        let (status, detail) = component(&edge, "forwarder");
        *last = format!("{status}: {detail}");
        (status == "KO").then_some(detail)
    });
    assert!(ko.contains("grpc.max_batch_bytes"), "{ko}");
    let (code, v) = get_json(&edge.url("/health"));
    assert_eq!((code, v["status"].as_str()), (503, Some("KO")), "{v}");
    // Still serving, and nothing was merged upstream.
    let (code, _) = get_json(&edge.url("/api/v1/sources"));
    assert_eq!(code, 200);
    assert_eq!(counter_total(&global, "stuck_requests", base), 0);
    assert!(global.prom("strata_federation_oversized_messages_total") >= 1.0);

    // Raise the limit: everything the edge accepted arrives, exactly once.
    global.kill();
    global
        .config
        .extra
        .retain(|(_, line)| !line.starts_with("max_batch_bytes"));
    global.restart_same_ports();
    wait_for("the global to have every count", |last| {
        let n = counter_total(&global, "stuck_requests", base);
        *last = format!("{n} of {total}");
        (n == total).then_some(())
    });
    wait_forwarded(&edge, &global, 1);
    assert_eq!(counter_total(&global, "stuck_requests", base), total);
    assert_eq!(series_count(&global, "stuck_requests"), 5_000);
    wait_forwarder_ok(&edge);
}

#[test]
fn a_series_that_could_never_be_forwarded_is_refused_at_ingest_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(
        NodeConfig::new(dir.path(), "global")
            .downstream("edge")
            .set("grpc", SMALL)
            .set("limits", LONG_LABELS),
    );
    let small_edge = Node::start(
        NodeConfig::new(dir.path(), "small-edge")
            .set("grpc", SMALL)
            .set("limits", LONG_LABELS),
    );
    let edge = Node::start(
        NodeConfig::new(dir.path(), "edge")
            .upstream(&global)
            .set("limits", LONG_LABELS),
    );
    wait_forwarder_ok(&edge);
    let base = base_minute_ms();
    let blob = "x".repeat(70_000);
    let ok = sample("sized_requests", "counter", &[], base + 1_000, Value::Null);
    let huge = sample(
        "sized_requests",
        "counter",
        &[("blob", blob.as_str())],
        base + 1_000,
        Value::Null,
    );

    // Over the node's own limit: the whole request is refused, naming it.
    let (code, v) = ingest_raw(&small_edge, &ndjson(&[ok.clone(), huge.clone()]), true);
    assert_eq!(code, 400, "{v}");
    let error = v["error"].as_str().expect("error message");
    for needle in [
        "line 2",
        "this node's limit of 65536 bytes",
        "grpc.max_message_bytes",
    ] {
        assert!(error.contains(needle), "{needle}: {error}");
    }
    assert!(error.len() < 500, "the series is abbreviated: {error}");

    // Over the upstream's limit, learned from its welcome.
    let (code, v) = ingest_raw(&edge, &ndjson(&[ok.clone(), huge]), true);
    assert_eq!(code, 400, "{v}");
    let error = v["error"].as_str().expect("error message");
    assert!(
        error.contains("the upstream's limit of 65536 bytes"),
        "{error}"
    );

    // A histogram needs room for its largest state: a label that leaves a
    // counter room is too long for a histogram.
    let label = "y".repeat(30_000);
    let counter = sample(
        "wide_count",
        "counter",
        &[("blob", label.as_str())],
        base + 1_000,
        Value::Null,
    );
    let histogram = sample(
        "wide_latency",
        "histogram",
        &[("blob", label.as_str())],
        base + 1_000,
        json!(5.0),
    );
    let (code, v) = ingest_raw(&edge, &ndjson(&[histogram]), true);
    assert_eq!(code, 400, "{v}");
    ingest_ok(&edge, &[counter, ok.clone()], true);

    // Nothing of the refused requests was merged; the rest is forwarded.
    wait_for("the global to have what was accepted", |last| {
        let (sized, wide) = (
            counter_total(&global, "sized_requests", base),
            counter_total(&global, "wide_count", base),
        );
        *last = format!("sized {sized}, wide {wide}");
        (sized == 1 && wide == 1).then_some(())
    });
    ingest_ok(&small_edge, &[ok], true);
    assert_eq!(counter_total(&small_edge, "sized_requests", base), 1);
    assert_eq!(edge.prom("strata_forward_oversized_increments_total"), 0.0);
}
