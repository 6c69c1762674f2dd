//! Non-finite and inconsistent states: a poisoned sum used to stop every
//! commit of a durable node (and, across tiers, of the global), forged
//! forwarded states were stored and broke every query of their metric, and one
//! unreadable stored state stopped all commits.

use serde_json::{Value, json};
use strata_proto::v1::{self, state::Kind as W, upstream_message::Msg};

use crate::util::*;

/// The sum of `metric` over `[base, base + 2 min)`, if any.
fn sum_of(node: &Node, metric: &str, base: i64) -> Option<f64> {
    merged_value(node, metric, base).map(|v| f(&v, "sum"))
}

fn sum_line(metric: &str, ts_ms: i64, value: f64) -> Value {
    sample(metric, "sum", &[], ts_ms, json!(value))
}

/// `GET /health`: its status code and overall status.
fn health(node: &Node) -> (u16, String) {
    let (code, body) = get_json(&node.url("/health"));
    (
        code,
        body["status"].as_str().unwrap_or_default().to_string(),
    )
}

/// Ingests `lines` with `?wait=commit` and asserts the commit answered 200.
fn ingest_committed(node: &Node, lines: &[Value]) {
    let (code, body) = ingest_raw(node, &ndjson(lines), true);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["accepted"], lines.len(), "{body}");
}

#[test]
fn huge_sums_are_refused_alone_and_the_node_keeps_committing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(NodeConfig::new(dir.path(), "solo"));
    let base = base_minute_ms();
    let refused_before = node.prom("strata_merge_errors_total");

    // The attack: +1e308 twice, then -1e308 twice. Each second sample would
    // overflow its bucket to ±inf (and the two infinities merge into NaN).
    for v in [1e308, -1e308] {
        ingest_committed(
            &node,
            &[sum_line("boom", base, v), sum_line("boom", base, v)],
        );
    }
    ingest_committed(&node, &[sum_line("boom", base, 1.0)]);
    assert_eq!(health(&node), (200, "OK".to_string()));
    // 1e308 - 1e308 + 1: the two overflowing samples alone were refused.
    assert_eq!(sum_of(&node, "boom", base), Some(1.0));
    wait_for("the two refused samples counted", |last| {
        let n = node.prom("strata_merge_errors_total") - refused_before;
        *last = format!("{n}");
        (n == 2.0).then_some(())
    });

    // A restart does not bring the poison back.
    node.kill();
    node.restart();
    ingest_committed(&node, &[sum_line("boom", base, 1.0)]);
    assert_eq!(sum_of(&node, "boom", base), Some(2.0));
    assert_eq!(health(&node), (200, "OK".to_string()));
}

#[test]
fn opposite_huge_sums_from_two_edges_keep_the_global_serving() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(
        NodeConfig::new(dir.path(), "global")
            .downstream("edge-a")
            .downstream("edge-b"),
    );
    let edge_a = Node::start(NodeConfig::new(dir.path(), "edge-a").upstream(&global));
    let edge_b = Node::start(NodeConfig::new(dir.path(), "edge-b").upstream(&global));
    let base = base_minute_ms();

    for _ in 0..2 {
        ingest_committed(&edge_a, &[sum_line("boom", base, 1e308)]);
        ingest_committed(&edge_b, &[sum_line("boom", base, -1e308)]);
    }
    // Each edge refused its second sample (its bucket would overflow), so the
    // global merges +1e308 and -1e308 into 0, then the marker.
    ingest_committed(&edge_a, &[sum_line("boom", base, 1.0)]);
    wait_for("the global to merge both edges", |last| {
        let sum = sum_of(&global, "boom", base);
        *last = format!("{sum:?}");
        (sum == Some(1.0)).then_some(())
    });
    for edge in [&edge_a, &edge_b] {
        // Each edge holds its own total (1e308 + 1 rounds to 1e308).
        let own = if edge.id == "edge-a" { 1e308 } else { -1e308 };
        assert_eq!(sum_of(edge, "boom", base), Some(own));
        wait_for("the edge's spool to drain", |last| {
            let n = edge.spool_batches();
            *last = format!("{n} batches spooled");
            (n == 0.0).then_some(())
        });
    }
    assert_eq!(health(&global), (200, "OK".to_string()));
    assert_eq!(global.prom("strata_merge_errors_total"), 0.0);
}

/// What the forged batch carries, and a word its rejection must name.
fn forged_states() -> Vec<(&'static str, W, &'static str)> {
    let sum = |sum: f64| v1::SumState {
        sum,
        compensation: 0.0,
    };
    vec![
        ("forged_sum", W::Sum(sum(f64::NAN)), "not finite"),
        ("forged_sum", W::Sum(sum(f64::INFINITY)), "not finite"),
        ("forged_max", W::Max(f64::NAN), "max NaN"),
        (
            "forged_avg",
            W::Avg(v1::AvgState {
                sum: Some(sum(5.0)),
                count: 0,
            }),
            "count 0",
        ),
        (
            "forged_apdex",
            W::Apdex(v1::ApdexState {
                satisfied: 0,
                tolerating: 0,
                total: 1,
                threshold: f64::INFINITY,
            }),
            "threshold inf",
        ),
    ]
}

#[test]
fn forged_non_finite_states_from_a_source_are_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let base = base_minute_ms();
    let mut stream = FedStream::open(&global, "edge", 7, &token_of("edge")).unwrap();
    assert_eq!(stream.welcome.committed_seq, 0);

    let forged = forged_states();
    // A rejected batch is skipped, not retried: each forged one takes a seq.
    for ((metric, state, reason), seq) in forged.iter().zip(1..) {
        let mut batch = forged_batch(seq, metric, base, state.clone());
        // A valid increment beside the forged one: rejected with it.
        let valid = forged_batch(seq, "valid_total", base, W::Counter(1));
        batch.series.extend(valid.series);
        stream.send(batch);
        match stream.recv() {
            Ok(Some(Msg::Reject(r))) => {
                assert_eq!(r.seq, seq);
                assert!(r.error.contains(metric), "{metric}: {}", r.error);
                assert!(r.error.contains(reason), "{metric}: {}", r.error);
            }
            other => panic!("{metric}: expected a reject, got {other:?}"),
        }
    }
    // The stream goes on: the next valid batch merges and is acknowledged.
    let next = forged.len() as u64 + 1;
    stream.send(forged_batch(next, "valid_total", base, W::Counter(5)));
    // Rejected seqs are acknowledged too, once the skip is committed.
    loop {
        match stream.recv() {
            Ok(Some(Msg::Ack(a))) if a.seq == next => break,
            Ok(Some(Msg::Ack(a))) if a.seq < next => {}
            other => panic!("expected an ack of {next}, got {other:?}"),
        }
    }
    assert_eq!(counter_total(&global, "valid_total", base), 5);
    assert_eq!(
        global.prom("strata_federation_rejected_batches_total"),
        forged.len() as f64
    );
    for (metric, _, _) in &forged {
        let (code, body) = query_raw(&global, &[("q", metric)]);
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["data"]["series"], json!([]), "{metric}: {body}");
    }
    assert_eq!(health(&global).0, 200);
}

/// Overwrites, in a stopped node's store file, every stored `sum` state with
/// a NaN sum: what an older version stored after +inf met -inf.
fn poison_stored_sums(store: &std::path::Path) -> usize {
    use redb::{ReadableTable, TableDefinition};
    const BUCKETS: TableDefinition<(u64, i64), &[u8]> = TableDefinition::new("buckets");
    let db = redb::Database::open(store).expect("opening the stopped node's store");
    let txn = db.begin_write().expect("a write transaction");
    let mut poisoned = 0;
    {
        let mut table = txn.open_table(BUCKETS).expect("the minute bucket table");
        let sums: Vec<(u64, i64)> = table
            .iter()
            .expect("iterating buckets")
            .map(|e| e.expect("a bucket entry"))
            .filter(|(_, v)| v.value().starts_with(&[1, 2]))
            .map(|(k, _)| k.value())
            .collect();
        let mut nan = vec![1, 2];
        nan.extend_from_slice(&f64::NAN.to_le_bytes());
        nan.extend_from_slice(&0f64.to_le_bytes());
        for key in sums {
            table
                .insert(key, nan.as_slice())
                .expect("overwriting a bucket");
            poisoned += 1;
        }
    }
    txn.commit().expect("committing the poison");
    poisoned
}

#[test]
fn an_unreadable_stored_state_is_quarantined_and_commits_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(NodeConfig::new(dir.path(), "solo"));
    let base = base_minute_ms();
    ingest_committed(&node, &[sum_line("boom", base, 1.0)]);
    node.sigterm();
    node.wait_clean_exit(DEADLINE);
    let store = node.config.data_dir.join("strata.redb");
    assert_eq!(poison_stored_sums(&store), 1);
    node.restart();

    // The query meets the unreadable minute first: it skips and quarantines it.
    assert_eq!(sum_of(&node, "boom", base), None);
    // The commit into the quarantined minute starts it afresh; others go on.
    ingest_committed(
        &node,
        &[
            sum_line("boom", base, 2.0),
            sample("other_total", "counter", &[], base, json!(3)),
        ],
    );
    assert_eq!(sum_of(&node, "boom", base), Some(2.0));
    assert_eq!(counter_total(&node, "other_total", base), 3);

    let (code, body) = get_json(&node.url("/health/store"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "Degraded", "{body}");
    let quarantine = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "quarantine")
        .cloned()
        .unwrap_or_default();
    assert_eq!(quarantine["status"], "Degraded", "{body}");
    assert!(
        quarantine["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("1 unreadable"),
        "{body}"
    );
    assert_eq!(health(&node), (200, "Degraded".to_string()));
    let (_, events) = get_json(&node.url("/api/v1/events?limit=100"));
    let quarantined: Vec<&Value> = events["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["kind"] == "state_quarantined")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(quarantined.len(), 1, "{events}");
    assert!(
        quarantined[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("boom")
    );

    // Once looked at, the operator deletes them and the node is OK again.
    let response = agent()
        .delete(&node.url("/api/v1/quarantine"))
        .call()
        .unwrap();
    let body: Value = serde_json::from_reader(response.into_body().into_reader()).unwrap();
    assert_eq!(body["data"]["deleted"], 1, "{body}");
    assert_eq!(health(&node), (200, "OK".to_string()));
}
