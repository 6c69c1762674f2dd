//! Authentication against real processes: `http.token` guards every route but
//! the health and readiness probes, `http.ingest_token` can send but not read,
//! the native gRPC ingest asks for the same tokens, and a downstream with a
//! wrong federation token is refused without any of its data reaching the
//! upstream.

mod util;

use serde_json::{Value, json};
use strata_proto::v1;
use util::*;

const READ: &str = "read-secret-0123";
const INGEST: &str = "ingest-secret-4567";

fn guarded(root: &std::path::Path) -> Node {
    Node::start(
        NodeConfig::new(root, "edge")
            .set("http", &format!("token = \"{READ}\""))
            .set("http", &format!("ingest_token = \"{INGEST}\"")),
    )
}

/// `method path` with `Authorization: Bearer <token>` when given: status,
/// `WWW-Authenticate` and the body as JSON (`Null` when not JSON).
fn call(
    node: &Node,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Option<String>, Value) {
    let url = node.url(path);
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut resp = match method {
        "GET" => {
            let mut r = agent().get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        "DELETE" => {
            let mut r = agent().delete(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = agent().post(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(body)
        }
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        challenge,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

#[test]
fn tokens_guard_every_route_but_health_and_ready() {
    let dir = tempfile::tempdir().unwrap();
    let node = guarded(dir.path());
    let base = base_minute_ms();
    let line = ndjson(&[sample("authed", "counter", &[], base, json!(3))]);
    let (from, to) = range_of(base);
    let query = format!("/api/v1/query?q=authed&step=all&from={from}&to={to}");

    // Probes need no token.
    for path in ["/health", "/health/store", "/ready"] {
        let (status, _, v) = call(&node, "GET", path, None, "");
        assert_eq!(status, 200, "{path}: {v}");
    }
    // Every other route, unknown ones included, needs one.
    let routes = [
        ("POST", "/api/v1/ingest"),
        ("GET", query.as_str()),
        ("GET", "/api/v1/metrics"),
        ("GET", "/api/v1/sources"),
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/alarms"),
        ("DELETE", "/api/v1/quarantine"),
        ("GET", "/metrics"),
        ("GET", "/no/such/route"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong-token")] {
            let (status, challenge, v) = call(&node, method, path, token, &line);
            assert_eq!(status, 401, "{method} {path} {token:?}: {v}");
            assert_eq!(v["status"], "error", "{v}");
            assert_eq!(v["errorType"], "unauthorized", "{v}");
            assert!(v["request_id"].is_string(), "{v}");
            let challenge = challenge.unwrap_or_default();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
        }
    }
    let refused = 2 * routes.len() as u64;

    // The ingest token sends, and reads nothing.
    let (status, _, v) = call(
        &node,
        "POST",
        "/api/v1/ingest?wait=commit",
        Some(INGEST),
        &line,
    );
    assert_eq!((status, &v["accepted"]), (200, &json!(1)), "{v}");
    for path in [query.as_str(), "/metrics", "/api/v1/events"] {
        let (status, challenge, v) = call(&node, "GET", path, Some(INGEST), "");
        assert_eq!(status, 403, "{path}: {v}");
        assert_eq!(v["errorType"], "forbidden", "{v}");
        assert!(
            challenge.is_some_and(|c| c.contains("insufficient_scope")),
            "{path}"
        );
    }
    // The read token does everything.
    let (status, _, v) = call(
        &node,
        "POST",
        "/api/v1/ingest?wait=commit",
        Some(READ),
        &line,
    );
    assert_eq!(status, 200, "{v}");
    let (status, _, v) = call(&node, "GET", &query, Some(READ), "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["data"]["series"][0]["points"][0]["value"]["count"], 6,
        "{v}"
    );

    let (status, _, _) = call(&node, "GET", "/metrics", Some(READ), "");
    assert_eq!(status, 200);
    let url = node.url("/metrics");
    let text = agent()
        .get(&url)
        .header("Authorization", &format!("Bearer {READ}"))
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    // The 403s are counted too.
    let counted = prom_value(&text, "strata_http_unauthorized_total", "edge");
    assert_eq!(counted, Some((refused + 3) as f64), "{text}");
    assert!(node.log().contains("request refused: no valid token"));
}

/// A native push of one counter sample, with `authorization` metadata when given.
fn push(node: &Node, token: Option<&str>, base: i64) -> Result<u64, tonic::Status> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut client = v1::ingest_client::IngestClient::connect(format!("http://{}", node.grpc))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut request = tonic::Request::new(v1::PushRequest {
            series: vec![v1::SeriesSamples {
                metric: "native_authed".into(),
                kind: v1::Kind::Counter as i32,
                points: vec![v1::Point {
                    ts_ms: base,
                    value: 1.0,
                }],
                ..Default::default()
            }],
            wait_commit: true,
        });
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().expect("ascii metadata");
            request.metadata_mut().insert("authorization", value);
        }
        Ok(client.push(request).await?.into_inner().accepted)
    })
}

#[test]
fn native_grpc_ingest_needs_a_token_too() {
    let dir = tempfile::tempdir().unwrap();
    let node = guarded(dir.path());
    let base = base_minute_ms();
    for token in [None, Some("wrong")] {
        let status = push(&node, token, base).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    for token in [INGEST, READ] {
        let accepted = push(&node, Some(token), base).map_err(|s| s.to_string());
        assert_eq!(accepted, Ok(1));
    }
    let url = node.url(&format!(
        "/api/v1/query?q=native_authed&step=all&from={}&to={}",
        base,
        base + 120_000
    ));
    let text = agent()
        .get(&url)
        .header("Authorization", &format!("Bearer {READ}"))
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!(
        v["data"]["series"][0]["points"][0]["value"]["count"], 2,
        "{v}"
    );
    let metrics = agent()
        .get(&node.url("/metrics"))
        .header("Authorization", &format!("Bearer {READ}"))
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .unwrap_or_default();
    assert_eq!(
        prom_value(&metrics, "strata_grpc_unauthorized_total", "edge"),
        Some(2.0)
    );
}

#[test]
fn a_wrong_federation_token_is_refused_and_its_data_never_appears_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let mut config = NodeConfig::new(dir.path(), "edge").upstream(&global);
    config.upstream = Some((format!("http://{}", global.grpc), "not-the-token".into()));
    let edge = Node::start(config);
    let base = base_minute_ms();
    ingest_ok(
        &edge,
        &[sample("smuggled", "counter", &[], base, json!(5))],
        true,
    );
    // The edge keeps trying; every stream is refused at its hello.
    wait_for("refused streams at the global", |last| {
        let n = global.prom("strata_federation_refused_streams_total");
        *last = n.to_string();
        (n >= 2.0).then_some(())
    });
    let (status, v) = get_json(&global.url("/api/v1/events?type=source_refused"));
    assert_eq!(status, 200, "{v}");
    let message = v["data"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("bad token for source \"edge\""), "{v}");
    assert!(global.log().contains("federation stream refused"));
    // A forged stream fares no better: a wrong token, an unknown id.
    let status = FedStream::open(&global, "edge", 3, "guess")
        .err()
        .expect("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = FedStream::open(&global, &"x".repeat(10_000), 3, "guess")
        .err()
        .expect("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().len() < 300, "{status:?}");
    // Nothing of the edge ever merged upstream.
    assert_eq!(merged_value(&global, "smuggled", base), None);
    assert_eq!(global.prom("strata_federation_batches_total"), 0.0);
    let source = global.source("edge").expect("declared source");
    assert_eq!(source["connected"], false, "{source}");
    assert_eq!(source["committed_seq"], 0, "{source}");
}
