//! Graceful shutdown: SIGTERM stops accepting, flushes, commits, forwards
//! what is left, and exits 0 (DESIGN §1, STYLE "Concurrency and shutdown").

mod util;

use std::time::Duration;

use serde_json::{Value, json};
use util::*;

#[test]
fn sigterm_flushes_and_forwards_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let mut edge = Node::start(NodeConfig::new(dir.path(), "edge").upstream(&global));
    let base = base_minute_ms();

    // Without wait=commit the answer comes once the samples are in the
    // aggregator: nothing of the last requests is committed yet.
    let mut accepted = 0u64;
    for r in 0..10i64 {
        let lines: Vec<Value> = (0..50i64)
            .map(|i| {
                sample(
                    "sigterm_requests",
                    "counter",
                    &[],
                    base + r * 50 + i,
                    json!(i % 5 + 1),
                )
            })
            .collect();
        accepted += lines
            .iter()
            .map(|l| l["value"].as_u64().unwrap())
            .sum::<u64>();
        ingest_ok(&edge, &lines, false);
    }
    let hist: Vec<Value> = (0..300)
        .map(|i| {
            sample(
                "sigterm_latency_ms",
                "histogram",
                &[],
                base + i,
                json!(i as f64 * 0.5),
            )
        })
        .collect();
    ingest_ok(&edge, &hist, false);
    edge.sigterm();

    edge.wait_clean_exit(Duration::from_secs(30));
    let log = edge.log();
    assert!(
        log.contains("upstream acknowledged everything"),
        "the edge left batches behind:\n{}",
        edge.log_tail(40)
    );

    // Everything accepted reached the global tier, exactly once.
    wait_for("every accepted sample at the global tier", |last| {
        let n = counter_total(&global, "sigterm_requests", base);
        *last = format!("count {n} of {accepted}");
        assert!(n <= accepted, "more than accepted: {n} > {accepted}");
        (n == accepted).then_some(())
    });
    let v =
        merged_value(&global, "sigterm_latency_ms", base).expect("histogram at the global tier");
    assert_eq!(u(&v, "count"), 300, "{v}");
    assert_close("max", f(&v, "max"), 149.5);
    let source = global.source("edge").expect("edge in /api/v1/sources");
    assert_eq!(source["connected"], false, "the edge is gone: {source}");
}

#[test]
fn sigterm_with_upstream_down_keeps_the_spool_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let mut edge = Node::start(
        NodeConfig::new(dir.path(), "edge")
            .upstream(&global)
            .grace_s(2),
    );
    let base = base_minute_ms();
    global.kill();

    let lines: Vec<Value> = (0..40i64)
        .map(|i| sample("grace_requests", "counter", &[], base + i, json!(i % 3 + 1)))
        .collect();
    let accepted: u64 = lines.iter().map(|l| l["value"].as_u64().unwrap()).sum();
    ingest_ok(&edge, &lines, false);
    let started = std::time::Instant::now();
    edge.sigterm();
    // Nobody acknowledges: the edge gives up after its 2 s grace and still exits 0.
    edge.wait_clean_exit(Duration::from_secs(30));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown took {:?} with --grace-s 2",
        started.elapsed()
    );
    assert!(
        edge.log()
            .contains("unacknowledged batches stay in the spool"),
        "{}",
        edge.log_tail(20)
    );

    // Both come back: the spool survived the shutdown and is forwarded.
    global.restart_same_ports();
    edge.restart();
    wait_for("the spooled samples at the global tier", |last| {
        let n = counter_total(&global, "grace_requests", base);
        *last = format!("count {n} of {accepted}");
        assert!(n <= accepted, "more than accepted: {n} > {accepted}");
        (n == accepted).then_some(())
    });
    wait_forwarded(&edge, &global, 5);
    assert_eq!(counter_total(&global, "grace_requests", base), accepted);
}
