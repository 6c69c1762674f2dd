//! Federation across tiers: every kind merges exactly through edge →
//! regional → global, and a second node claiming a connected id is refused.

mod util;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use util::*;

/// Raw samples of every kind sent to one node, kept to compute the exact
/// expected results.
#[derive(Default)]
struct Sent {
    counter: u64,
    sum: f64,
    avg_sum: f64,
    avg_count: u64,
    max: Option<f64>,
    min: Option<f64>,
    /// (ts_ms, value) of every latest sample.
    latest: Vec<(i64, f64)>,
    matched: u64,
    percent_total: u64,
    satisfied: u64,
    tolerating: u64,
    apdex_total: u64,
    /// (cloud, service) -> latencies.
    latencies: BTreeMap<(String, String), Vec<f64>>,
}

const APDEX_T: f64 = 100.0;
const CLOUDS: [&str; 2] = ["aws", "gcp"];
const SERVICES: [&str; 2] = ["checkout", "search"];

/// Builds the samples one node receives: a request with every kind but
/// histograms, then histogram requests. Histograms go last so that once the
/// global tier has every histogram sample, it has everything else too
/// (batches travel in seq order at every tier).
fn samples_for(
    node: usize,
    base: i64,
    rng: &mut Rng,
    sent: &mut Sent,
    histogram_samples: usize,
) -> (Vec<Value>, Vec<Value>) {
    let mut kinds = Vec::new();
    let ts = |i: usize| base + 1_000 + (node as i64) * 7_000 + (i as i64) * 13;
    for i in 0..40 {
        // Counter: a value of 0..=4, or none (= 1).
        if i % 5 == 0 {
            kinds.push(sample("e2e_requests", "counter", &[], ts(i), Value::Null));
            sent.counter += 1;
        } else {
            let v = rng.below(5);
            kinds.push(sample("e2e_requests", "counter", &[], ts(i), json!(v)));
            sent.counter += v;
        }
        // Sum and avg: multiples of 0.25 keep float additions exact.
        let v = (rng.below(41) as f64 - 20.0) * 0.25;
        kinds.push(sample("e2e_bytes", "sum", &[], ts(i), json!(v)));
        sent.sum += v;
        let v = rng.below(400) as f64 * 0.25 + 0.5;
        kinds.push(sample("e2e_load", "avg", &[], ts(i), json!(v)));
        sent.avg_sum += v;
        sent.avg_count += 1;
        // Max of negative values and min of positive ones: a 0 identity would show.
        let v = -1.0 - rng.below(1000) as f64 * 0.25;
        kinds.push(sample("e2e_peak", "max", &[], ts(i), json!(v)));
        sent.max = Some(sent.max.map_or(v, |m: f64| m.max(v)));
        let v = 1.0 + rng.below(1000) as f64 * 0.25;
        kinds.push(sample("e2e_floor", "min", &[], ts(i), json!(v)));
        sent.min = Some(sent.min.map_or(v, |m: f64| m.min(v)));
        // Latest: every ts distinct across nodes.
        let v = rng.below(10_000) as f64 * 0.5;
        kinds.push(sample("e2e_temperature", "latest", &[], ts(i), json!(v)));
        sent.latest.push((ts(i), v));
        // Percent.
        let b = rng.below(3) != 0;
        kinds.push(sample("e2e_ok", "percent", &[], ts(i), json!(b)));
        sent.matched += u64::from(b);
        sent.percent_total += 1;
        // Apdex, with values right on T and 4T.
        let v = match i % 8 {
            0 => APDEX_T,
            1 => 4.0 * APDEX_T,
            2 => 4.0 * APDEX_T + 0.5,
            _ => rng.below(1000) as f64 * 0.75,
        };
        let mut s = sample("e2e_apdex", "apdex", &[], ts(i), json!(v));
        s["threshold"] = json!(APDEX_T);
        kinds.push(s);
        if v <= APDEX_T {
            sent.satisfied += 1;
        } else if v <= 4.0 * APDEX_T {
            sent.tolerating += 1;
        }
        sent.apdex_total += 1;
    }
    let mut hist = Vec::new();
    for i in 0..histogram_samples {
        let cloud = CLOUDS[rng.below(2) as usize];
        let service = SERVICES[rng.below(2) as usize];
        let median = if service == "checkout" { 40.0 } else { 120.0 };
        // Three decimals: the unit resolution of strata histograms.
        let v = (rng.log_normal(median, 0.9).min(60_000.0) * 1000.0).round() / 1000.0;
        hist.push(sample(
            "e2e_latency_ms",
            "histogram",
            &[("cloud", cloud), ("service", service)],
            ts(i % 500),
            json!(v),
        ));
        sent.latencies
            .entry((cloud.to_string(), service.to_string()))
            .or_default()
            .push(v);
    }
    (kinds, hist)
}

fn assert_histogram(what: &str, value: &Value, raw: &[f64]) {
    let mut sorted = raw.to_vec();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(
        u(value, "count"),
        sorted.len() as u64,
        "{what} count: {value}"
    );
    for (field, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        assert_close(
            &format!("{what} {field}"),
            f(value, field),
            exact_quantile(&sorted, q),
        );
    }
    assert_close(
        &format!("{what} max"),
        f(value, "max"),
        sorted[sorted.len() - 1],
    );
    assert_close(&format!("{what} min"), f(value, "min"), sorted[0]);
}

fn assert_point_has_completeness(point: &Value) {
    assert!(point["complete"].is_boolean(), "complete missing: {point}");
    assert!(point["sources"].is_u64(), "sources missing: {point}");
    assert!(
        point["expected_sources"].is_u64(),
        "expected_sources missing: {point}"
    );
}

#[test]
fn three_tiers_merge_every_kind_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("regional"));
    let regional = Node::start(
        NodeConfig::new(dir.path(), "regional")
            .upstream(&global)
            .downstream("edge-a")
            .downstream("edge-b"),
    );
    let edge_a = Node::start(NodeConfig::new(dir.path(), "edge-a").upstream(&regional));
    let edge_b = Node::start(NodeConfig::new(dir.path(), "edge-b").upstream(&regional));

    let base = base_minute_ms();
    let mut rng = Rng::new(0x5eed_0001);
    let mut per_node = Vec::new();
    for (i, (node, n_hist)) in [(&edge_a, 1500), (&edge_b, 1100), (&regional, 700)]
        .into_iter()
        .enumerate()
    {
        let mut sent = Sent::default();
        let (kinds, hist) = samples_for(i, base, &mut rng, &mut sent, n_hist);
        ingest_ok(node, &kinds, true);
        for chunk in hist.chunks(400) {
            ingest_ok(node, chunk, true);
        }
        per_node.push(sent);
    }
    // Everything together, as one node would have seen it.
    let mut all = Sent::default();
    for s in &per_node {
        all.counter += s.counter;
        all.sum += s.sum;
        all.avg_sum += s.avg_sum;
        all.avg_count += s.avg_count;
        all.max = [all.max, s.max].into_iter().flatten().reduce(f64::max);
        all.min = [all.min, s.min].into_iter().flatten().reduce(f64::min);
        all.latest.extend(&s.latest);
        all.matched += s.matched;
        all.percent_total += s.percent_total;
        all.satisfied += s.satisfied;
        all.tolerating += s.tolerating;
        all.apdex_total += s.apdex_total;
        for (k, v) in &s.latencies {
            all.latencies.entry(k.clone()).or_default().extend(v);
        }
    }
    let histogram_total: usize = all.latencies.values().map(Vec::len).sum();
    assert_eq!(histogram_total, 3300);

    wait_for("every histogram sample at the global tier", |last| {
        let count = merged_value(&global, "e2e_latency_ms", base).map_or(0, |v| u(&v, "count"));
        *last = format!("count {count} of {histogram_total}");
        assert!(
            count <= histogram_total as u64,
            "more histogram samples than sent: {count} > {histogram_total}"
        );
        (count == histogram_total as u64).then_some(())
    });

    let v = merged_value(&global, "e2e_requests", base).expect("counter data");
    assert_eq!(u(&v, "count"), all.counter, "counter: {v}");
    // step=all over two minutes.
    assert_eq!(
        f(&v, "rate_per_min"),
        all.counter as f64 / 2.0,
        "counter rate: {v}"
    );

    let v = merged_value(&global, "e2e_bytes", base).expect("sum data");
    assert_eq!(f(&v, "sum"), all.sum, "sum: {v}");

    let v = merged_value(&global, "e2e_load", base).expect("avg data");
    assert_eq!(f(&v, "sum"), all.avg_sum, "avg sum: {v}");
    assert_eq!(u(&v, "count"), all.avg_count, "avg count: {v}");
    assert!(
        (f(&v, "avg") - all.avg_sum / all.avg_count as f64).abs() < 1e-9,
        "avg: {v}"
    );

    let v = merged_value(&global, "e2e_peak", base).expect("max data");
    assert_eq!(f(&v, "max"), all.max.unwrap(), "max: {v}");
    let v = merged_value(&global, "e2e_floor", base).expect("min data");
    assert_eq!(f(&v, "min"), all.min.unwrap(), "min: {v}");

    let (_, latest_value) = *all.latest.iter().max_by_key(|(ts, _)| *ts).unwrap();
    let v = merged_value(&global, "e2e_temperature", base).expect("latest data");
    assert_eq!(f(&v, "value"), latest_value, "latest: {v}");

    let v = merged_value(&global, "e2e_ok", base).expect("percent data");
    assert_eq!(u(&v, "matched"), all.matched, "percent matched: {v}");
    assert_eq!(u(&v, "total"), all.percent_total, "percent total: {v}");
    let percent = all.matched as f64 * 100.0 / all.percent_total as f64;
    assert!(
        (f(&v, "percent") - percent).abs() < 1e-9,
        "percent: {v}, expected {percent}"
    );

    let v = merged_value(&global, "e2e_apdex", base).expect("apdex data");
    assert_eq!(u(&v, "satisfied"), all.satisfied, "apdex satisfied: {v}");
    assert_eq!(u(&v, "tolerating"), all.tolerating, "apdex tolerating: {v}");
    assert_eq!(u(&v, "total"), all.apdex_total, "apdex total: {v}");
    let apdex = (all.satisfied as f64 + all.tolerating as f64 / 2.0) / all.apdex_total as f64;
    assert!(
        (f(&v, "apdex") - apdex).abs() < 1e-9,
        "apdex: {v}, expected {apdex}"
    );

    // The histogram, merged over everything, and at every grouping.
    let every: Vec<f64> = all.latencies.values().flatten().copied().collect();
    let v = merged_value(&global, "e2e_latency_ms", base).expect("histogram data");
    assert_histogram("global histogram", &v, &every);

    let (from, to) = range_of(base);
    let q = |group_by: Option<&str>| {
        let mut params = vec![
            ("q", "e2e_latency_ms"),
            ("from", from.as_str()),
            ("to", to.as_str()),
            ("step", "all"),
        ];
        if let Some(g) = group_by {
            params.push(("group_by", g));
        }
        query(&global, &params)
    };

    let data = q(Some("service"));
    assert_eq!(data["kind"], "histogram", "{data}");
    assert_eq!(data["metric"], "e2e_latency_ms", "{data}");
    assert_eq!(data["step"], "all", "{data}");
    let series = data["series"].as_array().unwrap();
    assert_eq!(series.len(), SERVICES.len(), "group_by=service: {data}");
    for service in SERVICES {
        let s = series
            .iter()
            .find(|s| s["labels"] == json!({"service": service}))
            .unwrap_or_else(|| panic!("no series for service {service}: {data}"));
        let raw: Vec<f64> = all
            .latencies
            .iter()
            .filter(|((_, sv), _)| sv == service)
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        let points = s["points"].as_array().unwrap();
        assert_eq!(points.len(), 1, "{s}");
        assert_point_has_completeness(&points[0]);
        assert_histogram(&format!("service={service}"), &points[0]["value"], &raw);
    }

    let data = q(Some(""));
    let series = data["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "group_by= (empty): {data}");
    assert_eq!(series[0]["labels"], json!({}), "{data}");
    assert_eq!(
        u(&series[0]["points"][0]["value"], "count"),
        histogram_total as u64,
        "{data}"
    );

    let data = q(None);
    let series = data["series"].as_array().unwrap();
    assert_eq!(
        series.len(),
        CLOUDS.len() * SERVICES.len(),
        "no group_by: {data}"
    );
    for ((cloud, service), raw) in &all.latencies {
        let s = series
            .iter()
            .find(|s| s["labels"] == json!({"cloud": cloud, "service": service}))
            .unwrap_or_else(|| panic!("no series for cloud={cloud},service={service}: {data}"));
        assert_eq!(
            u(&s["points"][0]["value"], "count"),
            raw.len() as u64,
            "{s}"
        );
    }

    // A selector with a matcher keeps only the matching series.
    let data = query(
        &global,
        &[
            ("q", "e2e_latency_ms{cloud=\"gcp\"}"),
            ("from", &from),
            ("to", &to),
            ("step", "all"),
            ("group_by", ""),
        ],
    );
    let gcp: usize = all
        .latencies
        .iter()
        .filter(|((c, _), _)| c == "gcp")
        .map(|(_, v)| v.len())
        .sum();
    assert_eq!(
        u(&data["series"][0]["points"][0]["value"], "count"),
        gcp as u64,
        "{data}"
    );

    // step=minute: every sample is in the base minute.
    let data = query(
        &global,
        &[
            ("q", "e2e_latency_ms"),
            ("from", &from),
            ("to", &to),
            ("step", "minute"),
            ("group_by", ""),
        ],
    );
    let points = data["series"][0]["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{data}");
    assert_eq!(points[0]["ts_ms"], base, "{data}");
    assert_eq!(
        u(&points[0]["value"], "count"),
        histogram_total as u64,
        "{data}"
    );
    assert_point_has_completeness(&points[0]);
    // The global tier expects exactly one source (the regional); the regional two.
    assert_eq!(points[0]["expected_sources"], 1, "{data}");
    let regional_data = query(
        &regional,
        &[
            ("q", "e2e_latency_ms"),
            ("from", &from),
            ("to", &to),
            ("step", "minute"),
            ("group_by", ""),
        ],
    );
    let rp = &regional_data["series"][0]["points"][0];
    assert_point_has_completeness(rp);
    assert_eq!(rp["expected_sources"], 2, "{regional_data}");
    assert_eq!(
        u(&rp["value"], "count"),
        histogram_total as u64,
        "{regional_data}"
    );

    // The base minute is long over: once every tier's watermark has passed
    // it, the global point is complete with its one source.
    wait_for(
        "the base minute to be complete at the global tier",
        |last| {
            let data = query(
                &global,
                &[
                    ("q", "e2e_latency_ms"),
                    ("from", &from),
                    ("to", &(base + 60_000).to_string()),
                    ("step", "minute"),
                    ("group_by", ""),
                ],
            );
            let p = data["series"][0]["points"][0].clone();
            *last = p.to_string();
            (p["complete"] == true && p["sources"] == 1 && p["expected_sources"] == 1).then_some(())
        },
    );

    // The node lists the metrics it knows with their kinds.
    let (status, metrics) = get_json(&global.url("/api/v1/metrics"));
    assert_eq!(status, 200, "{metrics}");
    for (name, kind) in [
        ("e2e_requests", "counter"),
        ("e2e_bytes", "sum"),
        ("e2e_load", "avg"),
        ("e2e_peak", "max"),
        ("e2e_floor", "min"),
        ("e2e_temperature", "latest"),
        ("e2e_ok", "percent"),
        ("e2e_apdex", "apdex"),
        ("e2e_latency_ms", "histogram"),
    ] {
        let m = metrics["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from /api/v1/metrics: {metrics}"));
        assert_eq!(m["kind"], kind, "{m}");
    }
    let m = metrics["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "e2e_latency_ms")
        .unwrap();
    assert_eq!(m["series"], 4, "{m}");

    // Nothing was counted twice along the way: after more flushes the
    // numbers have not moved.
    wait_forwarded(&edge_a, &regional, 0);
    wait_forwarded(&edge_b, &regional, 0);
    wait_forwarded(&regional, &global, 5);
    assert_eq!(
        merged_value(&global, "e2e_requests", base).map(|v| u(&v, "count")),
        Some(all.counter)
    );
    assert_eq!(
        merged_value(&global, "e2e_latency_ms", base).map(|v| u(&v, "count")),
        Some(histogram_total as u64)
    );
}

#[test]
fn duplicate_node_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let first = Node::start(NodeConfig::new(dir.path(), "edge").upstream(&global));
    wait_for("the first edge to connect", |last| {
        let s = global.source("edge");
        *last = format!("{s:?}");
        (s?["connected"] == true).then_some(())
    });

    // Same id, its own data dir (hence its own epoch).
    let second = Node::start(
        NodeConfig::new(dir.path(), "edge")
            .data_dir(dir.path().join("edge-twin"))
            .upstream(&global),
    );
    wait_for("the second stream to be refused", |last| {
        let refused = global.prom("strata_federation_refused_streams_total");
        *last = format!("refused {refused}");
        (refused > 0.0).then_some(())
    });
    // The refused node says why.
    wait_for("the twin to report the refusal", |last| {
        let (_, v) = get_json(&second.url("/health/forwarder"));
        *last = v.to_string();
        let detail = v["checks"][0]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (v["status"] != "OK" && detail.contains("already connected")).then_some(())
    });

    let base = base_minute_ms();
    let mut expected = 0;
    for r in 0..5 {
        let lines: Vec<Value> = (0..20)
            .map(|i| {
                sample(
                    "dup_requests",
                    "counter",
                    &[],
                    base + r * 100 + i,
                    json!(i % 3 + 1),
                )
            })
            .collect();
        expected += lines
            .iter()
            .map(|l| l["value"].as_u64().unwrap())
            .sum::<u64>();
        ingest_ok(&first, &lines, true);
    }
    wait_for("the first edge's samples at the global tier", |last| {
        let n = counter_total(&global, "dup_requests", base);
        *last = format!("count {n} of {expected}");
        assert!(n <= expected, "more than sent: {n} > {expected}");
        (n == expected).then_some(())
    });

    let sources = global.sources();
    assert_eq!(sources.len(), 1, "{sources:?}");
    assert_eq!(sources[0]["id"], "edge");
    assert_eq!(sources[0]["connected"], true, "{sources:?}");
    // The first edge kept its stream: its spool drains and nothing is double counted.
    wait_forwarded(&first, &global, 5);
    assert_eq!(counter_total(&global, "dup_requests", base), expected);
    assert!(global.prom("strata_federation_refused_streams_total") > 0.0);
    let (status, health) = get_json(&first.url("/health/forwarder"));
    assert_eq!(status, 200);
    assert_eq!(health["status"], "OK", "{health}");
}
