//! Per-metric series expiry (`[[expiry]]` rules) on a real node: a series a
//! rule gives a short TTL expires while the others stay, a series updated
//! all along never expires however old its first sample, and an expired
//! series that comes back starts from nothing.

mod util;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use util::*;

/// The TTL the rules give, in seconds: short, yet several times the longest
/// pause a loaded machine puts between two updates of the updated series.
const TTL_S: u64 = 5;

/// A node whose allowed lateness fits a 5 s TTL, with two rules: `short_total`
/// series labelled `env="dev"`, and every metric named `hot_…`.
fn node_with_rules(dir: &std::path::Path) -> Node {
    let rules = format!(
        r#"
[[expiry]]
metric = "short_total"
labels = {{ env = "dev" }}
series_ttl_s = {TTL_S}

[[expiry]]
metric_regex = "hot_.*"
series_ttl_s = {TTL_S}
"#
    );
    // The rules open tables of their own: they go last in the storage section.
    Node::start(
        NodeConfig::new(dir, "edge")
            .set("aggregation", &format!("allowed_lateness_s = {TTL_S}"))
            .set("aggregation", "watermark_delay_ms = 0")
            .set("storage", &rules),
    )
}

fn counter(metric: &str, labels: &[(&str, &str)], value: u64) -> Value {
    sample(metric, "counter", labels, now_ms(), json!(value))
}

/// `/api/v1/metrics`, by name.
fn metric(node: &Node, name: &str) -> Option<Value> {
    let (status, v) = get_json(&node.url("/api/v1/metrics"));
    assert_eq!(status, 200, "{v}");
    v["data"]
        .as_array()
        .expect("metrics data is an array")
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

fn series_count(node: &Node, name: &str) -> u64 {
    metric(node, name).map_or(0, |m| u(&m, "series"))
}

/// The total of the counter series `selector` selects since the start of
/// yesterday (UTC), read at `step` (`all` reads minutes, `hour` and `day`
/// the rollups) and merged into one; 0 without data.
fn total(node: &Node, selector: &str, step: &str) -> u64 {
    const DAY_MS: i64 = 86_400_000;
    let now = now_ms();
    let from = (now - now.rem_euclid(DAY_MS) - DAY_MS).to_string();
    let to = (now + 60_000).to_string();
    let data = query(
        node,
        &[
            ("q", selector),
            ("from", &from),
            ("to", &to),
            ("step", step),
            ("group_by", ""),
        ],
    );
    let series = data["series"].as_array().expect("series array");
    series
        .iter()
        .flat_map(|s| s["points"].as_array().expect("points array").iter())
        .map(|p| p["value"]["count"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn a_series_a_rule_matches_expires_and_the_others_stay() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_rules(dir.path());
    // The series are stamped by a flush after the request began.
    let sent = Instant::now();
    ingest_ok(
        &node,
        &[
            counter("short_total", &[("env", "dev")], 1),
            counter("short_total", &[("env", "prod")], 2),
            counter("other_total", &[("env", "dev")], 3),
        ],
        true,
    );
    // What the API shows: the metric-level TTL, and the label rule before it.
    let short = metric(&node, "short_total").expect("short_total listed");
    assert_eq!(short["series"], 2, "{short}");
    assert_eq!(short["series_ttl_s"], 2_592_000, "{short}");
    assert_eq!(short["series_ttl_from"], "storage.series_ttl_s", "{short}");
    assert_eq!(
        short["expiry_rules"],
        json!([{"rule": "expiry[0]", "labels": {"env": "dev"}, "series_ttl_s": TTL_S}]),
        "{short}"
    );
    let other = metric(&node, "other_total").expect("other_total listed");
    assert_eq!(other["expiry_rules"], json!([]), "{other}");

    wait_for("short_total{env=\"dev\"} to expire", |last| {
        let n = series_count(&node, "short_total");
        *last = format!("{n} series of short_total");
        (n == 1).then_some(())
    });
    // The node's wall clock and this monotonic one may differ a little.
    assert!(
        sent.elapsed() >= Duration::from_secs(TTL_S) - Duration::from_millis(100),
        "expired {:?} after it was sent, before its TTL",
        sent.elapsed()
    );
    assert_eq!(total(&node, "short_total{env=\"dev\"}", "all"), 0);
    assert_eq!(total(&node, "short_total{env=\"prod\"}", "all"), 2);
    assert_eq!(total(&node, "other_total", "all"), 3);
    assert_eq!(series_count(&node, "other_total"), 1);
}

#[test]
fn a_series_updated_all_along_never_expires() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_rules(dir.path());
    let first = Instant::now();
    ingest_ok(&node, &[counter("hot_cold_total", &[], 1)], true);
    let hot = metric(&node, "hot_cold_total").expect("hot_cold_total listed");
    assert_eq!(hot["series_ttl_s"], TTL_S, "{hot}");
    assert_eq!(hot["series_ttl_from"], "expiry[1]", "{hot}");

    // `hot_requests_total` is updated every 300 ms for three TTLs, while
    // `hot_cold_total`, under the same rule, is left alone and expires.
    let mut sent = 0u64;
    let mut cold_gone = false;
    loop {
        ingest_ok(&node, &[counter("hot_requests_total", &[], 1)], true);
        sent += 1;
        cold_gone = cold_gone || series_count(&node, "hot_cold_total") == 0;
        assert_eq!(
            series_count(&node, "hot_requests_total"),
            1,
            "expired while updated, {:?} after its first sample",
            first.elapsed()
        );
        if cold_gone && first.elapsed() >= Duration::from_secs(3 * TTL_S) {
            break;
        }
        assert!(
            first.elapsed() < DEADLINE,
            "hot_cold_total never expired; log:\n{}",
            node.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every update is there: the series was never started afresh.
    assert_eq!(total(&node, "hot_requests_total", "all"), sent);
    assert!(metric(&node, "hot_cold_total").is_none());
}

#[test]
fn an_expired_series_that_comes_back_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_rules(dir.path());
    let dev = [("env", "dev")];
    ingest_ok(&node, &[counter("short_total", &dev, 5)], true);
    assert_eq!(total(&node, "short_total", "hour"), 5);
    wait_for("short_total to expire", |last| {
        let listed = metric(&node, "short_total");
        *last = format!("{listed:?}");
        listed.is_none().then_some(())
    });
    ingest_ok(&node, &[counter("short_total", &dev, 3)], true);
    // Minutes and rollups alike hold only what came after the expiry.
    assert_eq!(total(&node, "short_total", "all"), 3);
    assert_eq!(total(&node, "short_total", "hour"), 3);
    assert_eq!(total(&node, "short_total", "day"), 3);
    assert_eq!(series_count(&node, "short_total"), 1);
}
