//! NDJSON ingest is all or nothing, errors name the line, and query errors
//! are `{"status":"error"}` with a 4xx code (DESIGN §8).

mod util;

use serde_json::{Value, json};
use util::*;

/// A single node, no upstream.
fn single_node(dir: &std::path::Path) -> Node {
    Node::start(NodeConfig::new(dir, "solo"))
}

/// Commits a marker sample and waits for it: anything submitted before is
/// committed by then too (or was never taken).
fn commit_barrier(node: &Node, base: i64) {
    ingest_ok(
        node,
        &[sample("barrier_total", "counter", &[], base, Value::Null)],
        true,
    );
}

#[test]
fn a_bad_line_rejects_the_whole_request_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path());
    let base = base_minute_ms();
    let rejected_before = node.prom("strata_ingest_rejected_requests_total");
    let late_before = node.prom("strata_late_samples_total");

    let too_late = now_ms() - 2 * 3600 * 1000;
    let cases: Vec<(&str, String)> = vec![
        (
            "unknown kind",
            r#"{"metric":"bad_third","kind":"gauge","ts_ms":TS,"value":1}"#.to_string(),
        ),
        (
            "bad value",
            r#"{"metric":"bad_third","kind":"sum","ts_ms":TS,"value":"lots"}"#.to_string(),
        ),
        (
            "negative histogram value",
            r#"{"metric":"bad_third","kind":"histogram","ts_ms":TS,"value":-5}"#.to_string(),
        ),
        (
            "bad metric name",
            r#"{"metric":"9-bad name","kind":"counter","ts_ms":TS}"#.to_string(),
        ),
        (
            "bad label name",
            r#"{"metric":"bad_third","kind":"counter","labels":{"a-b":"x"},"ts_ms":TS}"#
                .to_string(),
        ),
        (
            "too late",
            format!(r#"{{"metric":"bad_third","kind":"counter","ts_ms":{too_late}}}"#),
        ),
        (
            "too far ahead",
            format!(
                r#"{{"metric":"bad_third","kind":"counter","ts_ms":{}}}"#,
                now_ms() + 3600 * 1000
            ),
        ),
        (
            "negative counter",
            r#"{"metric":"bad_third","kind":"counter","ts_ms":TS,"value":-1}"#.to_string(),
        ),
        (
            "fractional counter",
            r#"{"metric":"bad_third","kind":"counter","ts_ms":TS,"value":1.5}"#.to_string(),
        ),
        (
            "percent as number",
            r#"{"metric":"bad_third","kind":"percent","ts_ms":TS,"value":1}"#.to_string(),
        ),
        ("not json", "{metric: nope".to_string()),
        (
            "unknown field",
            r#"{"metric":"bad_third","kind":"counter","ts_ms":TS,"colour":"red"}"#.to_string(),
        ),
    ];
    for (i, (case, bad)) in cases.iter().enumerate() {
        let good_metric = format!("good_lines_{i}");
        let good = |n: i64| {
            sample(
                &good_metric,
                "counter",
                &[("case", "x")],
                base + n,
                json!(2),
            )
            .to_string()
        };
        let bad = bad.replace("TS", &base.to_string());
        let body = format!("{}\n{}\n{bad}\n{}\n", good(1), good(2), good(4));
        let (status, v) = ingest_raw(&node, &body, true);
        assert_eq!(status, 400, "{case}: {v}");
        assert_eq!(v["status"], "error", "{case}: {v}");
        assert_eq!(v["line"], 3, "{case}: {v}");
        let message = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{case}: no error message in {v}"));
        assert!(message.contains("line 3"), "{case}: {message}");
    }
    // A blank line still counts as a line.
    let body = format!(
        "{}\n\n{}\n",
        sample("good_lines_blank", "counter", &[], base, Value::Null),
        r#"{"metric":"good_lines_blank","kind":"counter","value":-1}"#
    );
    let (status, v) = ingest_raw(&node, &body, false);
    assert_eq!((status, v["line"].clone()), (400, json!(3)), "{v}");

    // Specific messages for the cases an operator must be able to act on.
    let body = format!(
        "{}\n{}\n{}\n",
        sample("good_lines_x", "counter", &[], base, Value::Null),
        sample("good_lines_x", "counter", &[], base, Value::Null),
        sample("good_lines_x", "counter", &[], too_late, Value::Null)
    );
    let (_, v) = ingest_raw(&node, &body, false);
    assert!(v["error"].as_str().unwrap().contains("lateness"), "{v}");
    let (_, v) = ingest_raw(&node, &cases[0].1.replace("TS", &base.to_string()), false);
    assert!(
        v["error"].as_str().unwrap().contains("gauge"),
        "unknown kind is named: {v}"
    );
    assert_eq!(v["line"], 1, "{v}");

    commit_barrier(&node, base);
    for i in 0..cases.len() {
        let metric = format!("good_lines_{i}");
        assert_eq!(
            merged_value(&node, &metric, base),
            None,
            "{metric}: lines of a rejected request were merged"
        );
    }
    assert_eq!(merged_value(&node, "good_lines_blank", base), None);
    assert_eq!(merged_value(&node, "good_lines_x", base), None);
    assert_eq!(merged_value(&node, "bad_third", base), None);
    let (_, metrics) = get_json(&node.url("/api/v1/metrics"));
    let names: Vec<&str> = metrics["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("good_lines") || *n == "bad_third"),
        "{names:?}"
    );
    // A rejected request registers no kind either: the name is free for any kind.
    ingest_ok(
        &node,
        &[sample("good_lines_0", "histogram", &[], base, json!(3.5))],
        true,
    );

    let rejected = cases.len() as f64 + 3.0;
    assert_eq!(
        node.prom("strata_ingest_rejected_requests_total") - rejected_before,
        rejected
    );
    assert_eq!(
        node.prom("strata_late_samples_total") - late_before,
        2.0,
        "two too-late lines were sent"
    );
}

#[test]
fn a_kind_conflict_is_refused_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path());
    let base = base_minute_ms();
    ingest_ok(
        &node,
        &[sample(
            "conflicted",
            "counter",
            &[("svc", "a")],
            base,
            json!(3),
        )],
        true,
    );
    let rejected_before = node.prom("strata_ingest_rejected_requests_total");

    // Later, as a histogram (on another series of the same metric, even).
    let body = ndjson(&[
        sample("unrelated_ok", "counter", &[], base, Value::Null),
        sample(
            "conflicted",
            "histogram",
            &[("svc", "b")],
            base,
            json!(12.5),
        ),
    ]);
    let (status, v) = ingest_raw(&node, &body, true);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["status"], "error", "{v}");
    assert_eq!(v["line"], 2, "{v}");
    let message = v["error"].as_str().unwrap();
    assert!(
        message.contains("conflicted") && message.contains("counter"),
        "the error names the metric and its kind: {message}"
    );

    // Two kinds for one new metric inside one request.
    let body = ndjson(&[
        sample("twice", "sum", &[], base, json!(1.0)),
        sample("twice", "max", &[], base, json!(1.0)),
    ]);
    let (status, v) = ingest_raw(&node, &body, true);
    assert_eq!(status, 400, "{v}");

    // An apdex threshold different from the metric's first one.
    let mut a = sample("apdex_t", "apdex", &[], base, json!(10.0));
    a["threshold"] = json!(100.0);
    ingest_ok(&node, &[a.clone()], true);
    a["threshold"] = json!(250.0);
    let (status, v) = ingest_raw(&node, &ndjson(&[a]), true);
    assert_eq!(status, 400, "{v}");

    assert_eq!(
        node.prom("strata_ingest_rejected_requests_total") - rejected_before,
        3.0
    );

    // Still serving, and the first kind still holds.
    let (status, health) = get_json(&node.url("/health"));
    assert_eq!(status, 200, "{health}");
    ingest_ok(
        &node,
        &[sample(
            "conflicted",
            "counter",
            &[("svc", "b")],
            base,
            json!(4),
        )],
        true,
    );
    let v = merged_value(&node, "conflicted", base).unwrap();
    assert_eq!(u(&v, "count"), 7, "{v}");
    assert_eq!(
        merged_value(&node, "unrelated_ok", base),
        None,
        "a rejected request merged a line"
    );
    assert_eq!(merged_value(&node, "twice", base), None);
    // Nothing of the rejected requests registered a kind either.
    ingest_ok(
        &node,
        &[sample("unrelated_ok", "histogram", &[], base, json!(1.0))],
        true,
    );
    ingest_ok(
        &node,
        &[sample("twice", "max", &[], base, json!(1.0))],
        true,
    );
    let (from, to) = range_of(base);
    let data = query(
        &node,
        &[
            ("q", "conflicted"),
            ("from", &from),
            ("to", &to),
            ("step", "all"),
        ],
    );
    assert_eq!(data["kind"], "counter", "{data}");
    assert_eq!(data["series"].as_array().unwrap().len(), 2, "{data}");
}

#[test]
fn query_errors_are_4xx_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path());
    let base = base_minute_ms();
    ingest_ok(
        &node,
        &[sample("queried", "counter", &[], base, Value::Null)],
        true,
    );
    let (from, to) = range_of(base);
    let bad: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "unparsable selector",
            vec![("q", "queried{"), ("from", &from), ("to", &to)],
        ),
        (
            "function instead of selector",
            vec![("q", "rate(queried[5m])"), ("from", &from), ("to", &to)],
        ),
        (
            "selector without a metric",
            vec![("q", "{job=\"x\"}"), ("from", &from), ("to", &to)],
        ),
        (
            "bad step",
            vec![
                ("q", "queried"),
                ("from", &from),
                ("to", &to),
                ("step", "week"),
            ],
        ),
        (
            "bad time",
            vec![("q", "queried"), ("from", "yesterday"), ("to", &to)],
        ),
        (
            "from after to",
            vec![("q", "queried"), ("from", &to), ("to", &from)],
        ),
        ("missing q", vec![("from", &from), ("to", &to)]),
    ];
    for (case, params) in bad {
        let (status, v) = query_raw(&node, &params);
        assert!((400..500).contains(&status), "{case}: {status} {v}");
        assert_eq!(v["status"], "error", "{case}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{case}: {v}"
        );
    }
    let (status, v) = query_raw(
        &node,
        &[
            ("q", "queried"),
            ("from", &from),
            ("to", &to),
            ("step", "week"),
        ],
    );
    assert_eq!(status, 400);
    assert!(
        v["error"].as_str().unwrap().contains("week"),
        "the bad step is named: {v}"
    );

    // An unknown metric is not an error: no series.
    let data = query(
        &node,
        &[
            ("q", "never_sent"),
            ("from", &from),
            ("to", &to),
            ("step", "all"),
        ],
    );
    assert_eq!(data["series"], json!([]), "{data}");
    // And the node still answers good queries.
    assert_eq!(counter_total(&node, "queried", base), 1);
    // wait= takes only commit.
    let url = node.url("/api/v1/ingest?wait=forever");
    let mut resp = agent()
        .post(&url)
        .send(ndjson(&[sample(
            "queried",
            "counter",
            &[],
            base,
            Value::Null,
        )]))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["status"], "error", "{v}");
}

#[test]
fn an_oversized_body_is_refused_with_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path());
    // One byte more than the default http.max_body_bytes (16 MiB).
    let line =
        sample("oversized", "counter", &[], base_minute_ms(), Value::Null).to_string() + "\n";
    let body = line.repeat((16 << 20) / line.len() + 1);
    assert!(body.len() > 16 << 20);
    let url = node.url("/api/v1/ingest");
    let mut resp = agent()
        .post(&url)
        .send(&body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    assert_eq!(status, 413, "{text}");
    // Scripts read every error the same way (DESIGN §8).
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("413 answer {text:?} is not JSON: {e}"));
    assert_eq!(v["status"], "error", "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert_eq!(merged_value(&node, "oversized", base_minute_ms()), None);
}
