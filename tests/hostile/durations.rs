//! Out-of-range durations and times: retention and TTL values so large that
//! converting them to milliseconds used to overflow (and expire everything),
//! and query times whose bucket arithmetic overflowed.

use serde_json::json;

use crate::util::*;

/// A retention or TTL that overflows `i64` once converted to milliseconds is
/// refused by `check-config` and by `strata run`, naming the key; the same
/// keys at their documented bound (100 years) are accepted.
#[test]
fn huge_retentions_are_refused_at_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (key, line) in [
        ("storage.series_ttl_s", "series_ttl_s = 10000000000000000"),
        ("storage.retention_days", "retention_days = 9999999999999"),
        (
            "storage.event_retention_days",
            "event_retention_days = 9999999999999",
        ),
    ] {
        let config = NodeConfig::new(dir.path(), "edge").set("storage", line);
        let (ok, text) = check_config_of(&config);
        assert!(!ok, "check-config accepted {line}: {text}");
        assert!(text.contains(key), "{line}: {text}");
        assert!(text.contains("(100 years)"), "{line}: {text}");
        let (status, text) = run_refused(&config);
        assert!(!status.success(), "{line}: {status} {text}");
        assert!(text.contains(key), "{line}: {text}");
    }
    let bound = NodeConfig::new(dir.path(), "edge")
        .set("storage", "series_ttl_s = 3153600000")
        .set("storage", "retention_days = 36500")
        .set("storage", "event_retention_days = 36500");
    let (ok, text) = check_config_of(&bound);
    assert!(ok, "{text}");
}

/// A node with every retention at its largest accepted value keeps its
/// series and buckets through a retention pass (one runs at the first commit
/// after start): nothing wraps into a negative retention.
#[test]
fn largest_retentions_keep_series_through_a_retention_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(
        NodeConfig::new(dir.path(), "edge")
            .set("storage", "series_ttl_s = 3153600000")
            .set("storage", "retention_minutes = 52560000")
            .set("storage", "retention_hours = 876000")
            .set("storage", "retention_days = 36500")
            .set("storage", "event_retention_days = 36500"),
    );
    let base = base_minute_ms();
    ingest_ok(
        &node,
        &[sample(
            "req",
            "counter",
            &[("svc", "a")],
            base + 1,
            json!(5),
        )],
        true,
    );
    node.kill();
    node.restart();
    wait_for("a retention pass after the restart", |last| {
        let runs = node.prom("strata_retention_runs_total");
        *last = format!("strata_retention_runs_total {runs}");
        (runs >= 1.0).then_some(())
    });
    assert_eq!(counter_total(&node, "req", base), 5);
    let data = query(
        &node,
        &[
            ("q", "req"),
            ("from", "-2d"),
            ("to", "now"),
            ("step", "day"),
        ],
    );
    assert_eq!(data["series"].as_array().map(Vec::len), Some(1), "{data}");
}

/// Query times whose whole-bucket rounding would overflow are refused with a
/// 400 naming the parameter; the node keeps answering.
#[test]
fn query_times_beyond_year_9999_are_refused_naming_the_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::new(dir.path(), "edge"));
    let base = base_minute_ms();
    ingest_ok(
        &node,
        &[sample("req", "counter", &[], base, json!(2))],
        true,
    );
    for (param, value) in [
        ("to", "9223372036854775807"),
        ("to", "253402300800000"),
        ("from", "-9223372036854775808"),
        ("from", "-9223372036854775807d"),
        ("to", "99999999999999999999"),
    ] {
        let mut params = vec![("q", "req"), ("step", "day")];
        params.push((param, value));
        let (status, v) = query_raw(&node, &params);
        assert_eq!(status, 400, "{param}={value}: {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("parameter {param}: ")) && error.contains("outside"),
            "{param}={value}: {v}"
        );
    }
    let (status, v) = get_json(&node.url("/api/v1/events?since=-9223372036854775807d"));
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("parameter since: "),
        "{v}"
    );
    assert_eq!(counter_total(&node, "req", base), 2);
}
