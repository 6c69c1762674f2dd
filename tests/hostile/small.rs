//! Small hostile inputs: malformed time parameters, integers a kind cannot
//! hold exactly, timestamps at the end of time.

use serde_json::json;

use crate::util::*;

/// A relative time ending in a multi-byte character used to panic in
/// `parse_time` (byte-slicing inside the character) and drop the connection:
/// it is a 400 naming the parameter, and the node keeps serving.
#[test]
fn time_parameters_with_multi_byte_characters_are_a_400() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::new(dir.path(), "edge"));
    let base = base_minute_ms();
    ingest_ok(
        &node,
        &[sample("req", "counter", &[], base, json!(3))],
        true,
    );
    for (path, param) in [
        ("/api/v1/query?q=req&from=-1%C3%A9", "from"),
        ("/api/v1/query?q=req&to=-1%E2%82%AC", "to"),
        ("/api/v1/query?q=req&from=-%E2%82%AC", "from"),
        ("/api/v1/events?since=-1%C3%A9", "since"),
    ] {
        let (status, v) = get_json(&node.url(path));
        assert_eq!(status, 400, "{path}: {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("parameter {param}: bad time")),
            "{path}: {v}"
        );
    }
    assert_eq!(counter_total(&node, "req", base), 3);
}

/// 2^53 + 1 parsed into a float becomes 2^53: such a counter is refused
/// whole, naming the value and the exact range, nothing of the request is
/// merged, and the rejection is counted.
#[test]
fn counter_values_beyond_2_pow_53_are_refused_not_rounded() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::new(dir.path(), "edge"));
    let base = base_minute_ms();
    let body = format!(
        "{}\n{{\"metric\":\"big\",\"kind\":\"counter\",\"ts_ms\":{base},\"value\":9007199254740993}}\n",
        sample("req", "counter", &[], base, json!(1))
    );
    let (status, v) = ingest_raw(&node, &body, true);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["line"], 2, "{v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains("9007199254740993"), "{v}");
    assert!(error.contains("0 to 9007199254740992"), "{v}");
    assert_eq!(node.prom("strata_ingest_rejected_requests_total"), 1.0);
    // The largest exact counter is taken as is.
    ingest_ok(
        &node,
        &[sample(
            "big",
            "counter",
            &[],
            base,
            json!(9_007_199_254_740_992_u64),
        )],
        true,
    );
    let big = merged_value(&node, "big", base).expect("big has data");
    // Rendered as a float this large: compare the number, exact at 2^53.
    assert_eq!(
        big["count"].as_f64(),
        Some(9_007_199_254_740_992.0),
        "{big}"
    );
    assert_eq!(counter_total(&node, "req", base), 0);
}

/// `ts_ms = i64::MAX` was refused as "older than the allowed lateness" (its
/// bucket end overflowed): it is refused as in the future, counted, and the
/// node keeps serving.
#[test]
fn far_future_timestamps_are_refused_as_in_the_future() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::new(dir.path(), "edge"));
    let base = base_minute_ms();
    for ts in [i64::MAX, now_ms() + 3_600_000] {
        let body = ndjson(&[
            sample("req", "counter", &[], base, json!(1)),
            sample("req", "counter", &[], ts, json!(1)),
        ]);
        let (status, v) = ingest_raw(&node, &body, true);
        assert_eq!(status, 400, "ts_ms {ts}: {v}");
        assert_eq!(v["line"], 2, "{v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("ts_ms {ts} is in the future")),
            "ts_ms {ts}: {v}"
        );
        assert!(error.contains("limits.max_future_s"), "{v}");
        assert!(!error.contains("older"), "{v}");
    }
    assert_eq!(node.prom("strata_future_samples_total"), 2.0);
    assert_eq!(node.prom("strata_late_samples_total"), 0.0);
    ingest_ok(
        &node,
        &[sample("req", "counter", &[], base, json!(4))],
        true,
    );
    assert_eq!(counter_total(&node, "req", base), 4);
}
