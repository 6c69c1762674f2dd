//! Request correlation ids (docs/OPERATIONS.md, "Request ids"): every HTTP
//! and gRPC answer carries `x-request-id`, error bodies and statuses name
//! it, the node's log lines about the request carry it, and the commit line
//! of the flush holding an ingest names it.
//!
//! The nodes log JSON (`--log-format json`) at the tests' default filter
//! (`info,strata_server=debug`, tests/util), which emits the commit line.

mod util;

use serde_json::Value;
use strata_proto::v1;
use util::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A node logging one JSON object per line.
fn json_logging_node(dir: &std::path::Path, id: &str) -> Node {
    let mut config = NodeConfig::new(dir, id);
    config
        .run_args
        .extend(["--log-format".into(), "json".into()]);
    Node::start(config)
}

/// The node's log lines that parse as JSON.
fn json_lines(node: &Node) -> Vec<Value> {
    node.log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits for a log line in the span of request `id` (a `span` field of
/// the JSON line) that `matches`; returns it.
fn wait_log_line(node: &Node, id: &str, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, |last| {
        let lines = json_lines(node);
        *last = format!("{} lines; last: {:?}", lines.len(), lines.last());
        lines
            .into_iter()
            .find(|l| l["span"]["request_id"] == id && matches(l))
    })
}

/// An HTTP exchange: status, `x-request-id` of the answer, body text.
fn call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Option<String>, String) {
    let agent = agent();
    let mut resp = match body {
        Some(body) => {
            let mut req = agent.post(url);
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            req.send(body)
        }
        None => {
            let mut req = agent.get(url);
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            req.call()
        }
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let text = resp
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {url}: reading body: {e}"));
    (resp.status().as_u16(), id, text)
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"))
}

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[test]
fn a_refused_ingest_names_the_clients_request_id_in_body_header_and_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = json_logging_node(dir.path(), "ids");
    let (status, id, text) = call(
        "POST",
        &node.url("/api/v1/ingest"),
        &[("X-Request-Id", "abc-123")],
        Some("{\"metric\":\"a\",\"kind\":\"bogus\",\"value\":1}\n"),
    );
    assert_eq!(status, 400, "{text}");
    assert_eq!(id.as_deref(), Some("abc-123"));
    let body = json_of(&text);
    assert_eq!(body["request_id"], "abc-123", "{body}");
    assert_eq!(body["status"], "error", "{body}");
    assert_eq!(body["line"], 1, "{body}");
    let line = wait_log_line(&node, "abc-123", "the refusal's log line", |l| {
        l["fields"]["message"] == "request refused"
    });
    assert_eq!(line["fields"]["status"], 400, "{line}");
    let error = line["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("line 1") && error.contains("bogus"),
        "{line}"
    );
    assert_eq!(line["span"]["path"], "/api/v1/ingest", "{line}");

    // An id that is not visible ASCII of at most 128 bytes is replaced.
    let long = "x".repeat(129);
    for bad in [long.as_str(), "two words"] {
        let (status, id, _) = call("GET", &node.url("/health"), &[("X-Request-Id", bad)], None);
        assert_eq!(status, 200);
        let id = id.expect("an x-request-id");
        assert!(is_generated(&id), "{bad:?} gave {id:?}");
    }
}

#[test]
fn traceparent_gives_its_trace_id_and_otherwise_each_request_gets_a_new_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = json_logging_node(dir.path(), "trace");
    // A traceparent's trace id, on a success and in an error body.
    let (status, id, _) = call(
        "GET",
        &node.url("/health"),
        &[("traceparent", TRACEPARENT)],
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(id.as_deref(), Some(TRACE_ID));
    let (status, id, text) = call(
        "GET",
        &node.url("/api/v1/query"),
        &[("traceparent", TRACEPARENT)],
        None,
    );
    assert_eq!(status, 400, "{text}");
    assert_eq!(id.as_deref(), Some(TRACE_ID));
    assert_eq!(json_of(&text)["request_id"], TRACE_ID, "{text}");
    let line = wait_log_line(&node, TRACE_ID, "the query refusal's log line", |l| {
        l["fields"]["message"] == "request refused"
    });
    assert_eq!(line["span"]["parent_span_id"], "00f067aa0ba902b7", "{line}");

    // Neither header: a new id per request, also on unknown routes.
    let (_, first, _) = call("GET", &node.url("/health"), &[], None);
    let (_, second, _) = call("GET", &node.url("/health"), &[], None);
    let (status, third, _) = call("GET", &node.url("/no/such/route"), &[], None);
    assert_eq!(status, 404);
    let ids: Vec<String> = [first, second, third]
        .into_iter()
        .map(|id| id.expect("an x-request-id"))
        .collect();
    for id in &ids {
        assert!(is_generated(id), "{id:?}");
    }
    assert_ne!(ids[0], ids[1]);
    assert_ne!(ids[1], ids[2]);
}

#[test]
fn the_flush_commit_line_names_the_ingest_requests_it_holds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = json_logging_node(dir.path(), "flush");
    let line = ndjson(&[sample(
        "orders_total",
        "counter",
        &[],
        base_minute_ms(),
        Value::Null,
    )]);
    let (status, id, text) = call(
        "POST",
        &node.url("/api/v1/ingest?wait=commit"),
        &[("X-Request-Id", "commit-me-42")],
        Some(&line),
    );
    assert_eq!(
        (status, id.as_deref()),
        (200, Some("commit-me-42")),
        "{text}"
    );
    // Success bodies are left alone.
    assert_eq!(json_of(&text)["request_id"], Value::Null, "{text}");
    let committed = wait_for("the flush commit line naming commit-me-42", |last| {
        let lines = json_lines(&node);
        *last = format!("{} lines", lines.len());
        lines.into_iter().find(|l| {
            l["fields"]["message"] == "flush committed"
                && l["fields"]["request_ids"]
                    .as_str()
                    .is_some_and(|ids| ids.split(',').any(|i| i == "commit-me-42"))
        })
    });
    assert!(
        committed["fields"]["increments"].as_u64().unwrap_or(0) >= 1,
        "{committed}"
    );
}

/// A tokio runtime for the gRPC clients.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a test runtime")
}

fn metadata_id(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

#[test]
fn grpc_calls_return_their_request_id_in_metadata_and_statuses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = json_logging_node(dir.path(), "grpc");
    let rt = runtime();
    let endpoint = format!("http://{}", node.grpc);
    let (refused, accepted) = rt.block_on(async {
        let mut client = v1::ingest_client::IngestClient::connect(endpoint)
            .await
            .expect("connecting to the node's gRPC listener");
        // A series without points: nothing to ingest.
        let mut bad = tonic::Request::new(v1::PushRequest {
            series: vec![v1::SeriesSamples {
                metric: "grpc_total".into(),
                kind: v1::Kind::Counter as i32,
                ..Default::default()
            }],
            wait_commit: false,
        });
        bad.metadata_mut().insert(
            "x-request-id",
            "grpc-req-7".parse().expect("an ascii value"),
        );
        let refused = client.push(bad).await;
        let good = v1::PushRequest {
            series: vec![v1::SeriesSamples {
                metric: "grpc_total".into(),
                kind: v1::Kind::Counter as i32,
                points: vec![v1::Point {
                    ts_ms: 0,
                    value: 1.0,
                }],
                ..Default::default()
            }],
            wait_commit: false,
        };
        let accepted = client.push(good).await;
        (refused, accepted)
    });
    let status = refused.expect_err("a push without samples is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(
        metadata_id(status.metadata()).as_deref(),
        Some("grpc-req-7")
    );
    assert!(
        status.message().ends_with(" [request_id=grpc-req-7]"),
        "{status:?}"
    );
    let line = wait_log_line(&node, "grpc-req-7", "the refused call's log line", |l| {
        l["fields"]["message"] == "call refused"
    });
    assert_eq!(line["fields"]["code"], "InvalidArgument", "{line}");
    let accepted = accepted.expect("a valid push is accepted");
    let id = metadata_id(accepted.metadata()).expect("an x-request-id");
    assert!(is_generated(&id), "{id:?}");
}

#[test]
fn a_refused_federation_stream_names_its_request_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = json_logging_node(dir.path(), "upstream");
    let status = match FedStream::open(&node, "edge-unknown", 7, "no-token") {
        Ok(_) => panic!("an undeclared source's stream was accepted"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let id = metadata_id(status.metadata()).expect("an x-request-id");
    assert!(is_generated(&id), "{id:?}");
    assert!(
        status.message().ends_with(&format!(" [request_id={id}]")),
        "{status:?}"
    );
    // The receiver's own refusal line is in the stream's span.
    wait_log_line(&node, &id, "the stream refusal's log line", |l| {
        l["fields"]["message"] == "federation stream refused"
    });
}
