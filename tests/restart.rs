//! Crashes (SIGKILL) of either side of a federation stream: no sample is
//! lost and none is counted twice (DESIGN §4).

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::{Value, json};
use util::*;

/// Counter samples of one request: 25 lines with values 1..=4.
fn counter_request(metric: &str, base: i64, request: u64) -> (Vec<Value>, u64) {
    let lines: Vec<Value> = (0..25u64)
        .map(|i| {
            sample(
                metric,
                "counter",
                &[],
                base + ((request * 25 + i) % 59_000) as i64,
                json!(i % 4 + 1),
            )
        })
        .collect();
    let total = lines
        .iter()
        .map(|l| l["value"].as_u64().expect("counter value"))
        .sum();
    (lines, total)
}

/// Waits until `upstream` has `expected` in total, then until everything the
/// edge has spooled is committed upstream and a few more flushes went
/// through, and checks the total again: a resend merged twice would show.
fn assert_settles_exactly(upstream: &Node, edge: &Node, metric: &str, base: i64, expected: u64) {
    wait_for(
        &format!("{metric} at {} to reach {expected}", upstream.id),
        |last| {
            let n = counter_total(upstream, metric, base);
            *last = format!("count {n} of {expected}");
            assert!(
                n <= expected,
                "{metric} at {}: {n} is more than the {expected} accepted (double count)",
                upstream.id
            );
            (n == expected).then_some(())
        },
    );
    wait_forwarded(edge, upstream, 5);
    assert_eq!(
        counter_total(upstream, metric, base),
        expected,
        "{metric} at {} after the spool drained",
        upstream.id
    );
}

#[test]
fn upstream_restart_does_not_double_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let edge = Node::start(NodeConfig::new(dir.path(), "edge").upstream(&global));
    let base = base_minute_ms();

    // Sender: requests with wait=commit until told to stop; counts what the
    // edge accepted.
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, requests) = (stop.clone(), requests.clone());
        let edge_url = edge.url("/api/v1/ingest?wait=commit");
        std::thread::spawn(move || {
            let mut accepted = 0u64;
            let mut r = 0u64;
            while !stop.load(Ordering::Acquire) {
                let (lines, total) = counter_request("restart_up_requests", base, r);
                let mut resp = agent()
                    .post(&edge_url)
                    .send(&ndjson(&lines))
                    .expect("edge answers");
                let status = resp.status().as_u16();
                let body = resp.body_mut().read_to_string().expect("edge answer body");
                assert_eq!(status, 200, "edge refused request {r}: {body}");
                let v: Value = serde_json::from_str(&body).expect("json answer");
                assert_eq!(v["accepted"], 25, "{body}");
                accepted += total;
                r += 1;
                requests.store(r, Ordering::Release);
            }
            accepted
        })
    };
    let sent_after = |n: u64| {
        let start = requests.load(Ordering::Acquire);
        wait_for(&format!("{n} more requests accepted by the edge"), |last| {
            let now = requests.load(Ordering::Acquire);
            *last = format!("{now} requests (started at {start})");
            (now >= start + n).then_some(())
        });
    };

    sent_after(10);
    wait_for("data at the global tier before the crash", |last| {
        let n = counter_total(&global, "restart_up_requests", base);
        *last = format!("count {n}");
        (n > 0).then_some(())
    });
    let before = global.source("edge").expect("edge in /api/v1/sources");
    global.kill();
    sent_after(15);
    // Meanwhile the edge keeps what it cannot forward.
    wait_for("batches to pile up in the edge's spool", |last| {
        let n = edge.spool_batches();
        *last = format!("strata_spool_batches {n}");
        (n >= 5.0).then_some(())
    });
    global.restart_same_ports();
    // The source's progress is restored from the store: the resume point is
    // at least what was committed before the crash, in the same epoch.
    let restored = global
        .source("edge")
        .expect("edge in /api/v1/sources after restart");
    assert_eq!(
        restored["epoch_fingerprint"], before["epoch_fingerprint"],
        "before {before}, after {restored}"
    );
    assert!(
        restored["committed_seq"].as_u64() >= before["committed_seq"].as_u64()
            && before["committed_seq"].as_u64() > Some(0),
        "committed_seq went back: before {before}, after {restored}"
    );
    sent_after(15);
    stop.store(true, Ordering::Release);
    let accepted = sender.join().expect("sender thread");
    eprintln!(
        "edge accepted {accepted} in {} requests",
        requests.load(Ordering::Acquire)
    );

    assert_settles_exactly(&global, &edge, "restart_up_requests", base, accepted);

    let source = global.source("edge").expect("edge in /api/v1/sources");
    assert_eq!(source["connected"], true, "{source}");
    assert!(source["duplicates"].is_u64(), "duplicates ≥ 0: {source}");
    assert!(source["batches"].as_u64().unwrap() > 0, "{source}");
    assert!(global.prom("strata_federation_duplicates_total") >= 0.0);
    // The edge reconnected after the crash.
    assert!(
        edge.prom("strata_forward_connects_total") >= 2.0,
        "{}",
        edge.prometheus()
    );
}

#[test]
fn edge_restart_resumes_from_its_spool() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let mut edge = Node::start(NodeConfig::new(dir.path(), "edge").upstream(&global));
    let base = base_minute_ms();

    let mut accepted = 0;
    for r in 0..8 {
        let (lines, total) = counter_request("restart_edge_requests", base, r);
        ingest_ok(&edge, &lines, true);
        accepted += total;
    }
    // Killed right after the last commit: its batch is in the spool, most
    // likely not yet acknowledged by the global tier.
    let epoch =
        global.source("edge").expect("edge in /api/v1/sources")["epoch_fingerprint"].clone();
    edge.kill();
    edge.restart();
    assert_settles_exactly(&global, &edge, "restart_edge_requests", base, accepted);
    // Same durable state, same epoch: the edge resumed, it did not start over.
    assert_eq!(global.source("edge").unwrap()["epoch_fingerprint"], epoch);

    // The restarted edge goes on where it was.
    for r in 8..12 {
        let (lines, total) = counter_request("restart_edge_requests", base, r);
        ingest_ok(&edge, &lines, true);
        accepted += total;
    }
    // Its own store kept what it had committed before the crash.
    assert_eq!(
        counter_total(&edge, "restart_edge_requests", base),
        accepted
    );
    assert_settles_exactly(&global, &edge, "restart_edge_requests", base, accepted);
    let source = global.source("edge").expect("edge in /api/v1/sources");
    assert_eq!(source["connected"], true, "{source}");
}

#[test]
fn edge_crash_while_upstream_is_frozen_is_resumed_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let mut edge = Node::start(NodeConfig::new(dir.path(), "edge").upstream(&global));
    let base = base_minute_ms();
    let mut accepted = 0;
    for r in 0..4 {
        let (lines, total) = counter_request("frozen_requests", base, r);
        ingest_ok(&edge, &lines, true);
        accepted += total;
    }
    wait_forwarded(&edge, &global, 0);

    // The global tier stops reading: batches pile up in the edge's spool and
    // in the socket between them, unacknowledged.
    global.freeze();
    for r in 4..12 {
        let (lines, total) = counter_request("frozen_requests", base, r);
        ingest_ok(&edge, &lines, true);
        accepted += total;
    }
    assert!(
        edge.spool_batches() >= 1.0,
        "nothing spooled while the upstream is frozen"
    );
    // The edge dies with them; then the global tier reads what was already
    // on the wire from a source that is gone, and the edge comes back and
    // resends everything not committed.
    edge.kill();
    global.thaw();
    edge.restart();
    assert_settles_exactly(&global, &edge, "frozen_requests", base, accepted);
    let source = global.source("edge").expect("edge in /api/v1/sources");
    assert_eq!(source["connected"], true, "{source}");
}

/// `wait=commit` answered from the request log: long before any flush (ten
/// minutes apart here, the most allowed, so none comes during the test), and
/// nothing acknowledged is lost or counted twice through a SIGKILL before the
/// flush, a second SIGKILL while the replayed records still wait for theirs,
/// and a clean stop.
#[test]
fn request_log_acknowledges_before_the_flush_and_merges_exactly_once() {
    const HIST: &str = "logged_latency_ms";
    let dir = tempfile::tempdir().unwrap();
    let mut edge = Node::start(
        NodeConfig::new(dir.path(), "edge")
            .request_log()
            .flush_interval_ms(600_000),
    );
    let base = base_minute_ms();
    let mut expected = 0;
    let mut requests = 0;
    let mut push = |edge: &Node| {
        let (mut lines, total) = counter_request("logged_requests", base, requests);
        lines.push(sample(HIST, "histogram", &[], base + 5, json!(12.5)));
        // Answered although no flush comes for ten minutes: durable in the log.
        ingest_ok(edge, &lines, true);
        requests += 1;
        expected += total;
    };
    for _ in 0..5 {
        push(&edge);
    }
    assert_eq!(
        counter_total(&edge, "logged_requests", base),
        0,
        "nothing is merged before the flush"
    );
    assert!(edge.prom("strata_request_log_commit_duration_seconds_count") >= 1.0);

    // Killed before any flush: the records are merged after the restart.
    edge.kill();
    edge.restart();
    assert_eq!(edge.prom("strata_request_log_replayed_total"), 5.0);
    push(&edge);
    // Killed again while the replayed records wait for their flush: they
    // are still in the log, and replayed again, not merged twice.
    edge.kill();
    edge.restart();
    assert_eq!(edge.prom("strata_request_log_replayed_total"), 6.0);
    push(&edge);
    // A clean stop flushes: the final commit merges the records and deletes
    // them in the same transaction.
    edge.sigterm();
    edge.wait_clean_exit(std::time::Duration::from_secs(30));
    edge.restart();
    assert_eq!(edge.prom("strata_request_log_replayed_total"), 0.0);
    assert_eq!(counter_total(&edge, "logged_requests", base), expected);
    let hist = merged_value(&edge, HIST, base).expect("histogram merged");
    assert_eq!(hist["count"], 7, "{hist}");
    edge.kill();
    edge.restart();
    assert_eq!(counter_total(&edge, "logged_requests", base), expected);
    assert_eq!(edge.prom("strata_request_log_replayed_total"), 0.0);
}
