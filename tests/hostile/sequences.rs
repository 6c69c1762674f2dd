//! A federation client that tries to take a source's place or poison its
//! sequence numbers (docs/PROTOCOL.md, "Sequence rules"): every forged seq
//! is refused with nothing merged, the refusal is counted, and the real
//! source keeps delivering exactly.

use serde_json::json;
use strata_proto::v1::{self, upstream_message};

use crate::util::*;

/// How one forged stream went.
#[derive(Debug)]
struct Forged {
    /// The Welcome's committed seq.
    committed: u64,
    /// Seqs acknowledged before the stream ended.
    acks: Vec<u64>,
    /// The status that ended the stream (`None`: it is still open after
    /// every answer was read, or it closed without an error).
    end: Option<tonic::Status>,
}

/// An empty batch (nothing to merge) with the given seq and flag.
fn batch(seq: u64, follows_dropped: bool) -> v1::Batch {
    v1::Batch {
        seq,
        watermark_ms: now_ms(),
        follows_dropped,
        ..v1::Batch::default()
    }
}

/// Opens a federation stream to `upstream` as `source` with `token` and
/// `epoch`, sends `batches`, and reads answers until the stream ends or
/// `expect_acks` (when not 0) acks arrived; with no batches, returns after
/// the Welcome. `Err`: the Hello was refused.
fn forge(
    upstream: &Node,
    source: &str,
    token: &str,
    epoch: u64,
    batches: Vec<v1::Batch>,
    expect_acks: usize,
) -> Result<Forged, tonic::Status> {
    let mut stream = FedStream::open(upstream, source, epoch, token)?;
    let committed = stream.welcome.committed_seq;
    let sent = batches.len();
    for b in batches {
        stream.send(b);
    }
    let mut acks = Vec::new();
    let end = loop {
        if sent == 0 || (expect_acks > 0 && acks.len() >= expect_acks) {
            break None;
        }
        match stream.recv() {
            Ok(Some(upstream_message::Msg::Ack(a))) => acks.push(a.seq),
            Ok(Some(other)) => panic!("unexpected answer {other:?}"),
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    Ok(Forged {
        committed,
        acks,
        end,
    })
}

/// The epoch `node` logged when it started (what an insider reads).
fn logged_epoch(node: &Node) -> u64 {
    node.log()
        .lines()
        .filter(|l| l.contains("tier started"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("epoch=")?.parse().ok())
        })
        .unwrap_or_else(|| panic!("no epoch in the log of {}", node.id))
}

fn counters(metric: &str, base: i64, n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            sample(
                metric,
                "counter",
                &[("k", "v")],
                base + 1_000 + i as i64,
                json!(1),
            )
        })
        .collect()
}

fn wait_disconnected(upstream: &Node, source: &str) {
    wait_for(
        &format!("{source} disconnected from {}", upstream.id),
        |last| {
            let s = upstream.source(source);
            *last = format!("{s:?}");
            (s?["connected"] == false).then_some(())
        },
    );
}

#[test]
fn a_forged_seq_in_the_victims_epoch_is_refused_and_the_edge_keeps_delivering_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let mut edge = Node::start(NodeConfig::new(dir.path(), "edge").upstream(&global));
    let base = base_minute_ms();
    let metric = "seq_attack_requests";
    ingest_ok(&edge, &counters(metric, base, 5), true);
    wait_forwarded(&edge, &global, 0);

    // The epoch is not public: neither the sources API nor the event log
    // shows it, only a fingerprint.
    let epoch = logged_epoch(&edge);
    let (_, sources) = get_text(&global.url("/api/v1/sources"));
    let (_, events) = get_text(&global.url("/api/v1/events?since=-1h"));
    for (what, text) in [("sources", &sources), ("events", &events)] {
        assert!(
            !text.contains(&epoch.to_string()),
            "{what} shows the epoch {epoch}: {text}"
        );
    }
    let listed = global.source("edge").expect("edge listed");
    assert!(listed.get("epoch").is_none(), "{listed}");
    assert!(listed["epoch_fingerprint"].is_string(), "{listed}");

    // The id is free once the edge is gone; an insider with its token and
    // epoch tries to poison its seq.
    edge.kill();
    wait_disconnected(&global, "edge");
    // The Welcome waits until the edge's last batches are committed: that is
    // the committed seq the attacks start from.
    let committed = forge(&global, "edge", &token_of("edge"), epoch, vec![], 0)
        .expect("hello accepted")
        .committed;
    assert!(committed > 0);
    assert_eq!(committed_seq(&global, "edge"), committed);
    let token = token_of("edge");
    let attacks = [
        ("the poisoning seq", vec![batch(u64::MAX - 1, true)]),
        (
            "a gap larger than a spool can drop",
            vec![batch(committed + 2 + (1 << 32), true)],
        ),
        (
            "a gap after the stream's first batch",
            vec![batch(committed, false), batch(committed + 3, true)],
        ),
    ];
    for (what, batches) in attacks {
        // The previous forged stream must be gone from the global first:
        // a second stream of one source while the first is connected is
        // refused (ids are unique).
        wait_disconnected(&global, "edge");
        let Forged {
            committed: welcomed,
            acks,
            end,
        } = forge(&global, "edge", &token, epoch, batches, 0)
            .unwrap_or_else(|s| panic!("{what}: hello refused: {s:?}"));
        assert_eq!(welcomed, committed, "{what}");
        let end = end.unwrap_or_else(|| panic!("{what}: the stream was not ended (acks {acks:?})"));
        assert_eq!(
            end.code(),
            tonic::Code::FailedPrecondition,
            "{what}: {end:?}"
        );
        assert!(
            acks.iter().all(|&a| a <= committed),
            "{what}: acked {acks:?}"
        );
        assert_eq!(committed_seq(&global, "edge"), committed, "{what}");
    }
    assert_eq!(global.prom("strata_federation_refused_seqs_total"), 3.0);
    // Events are appended off the stream's task: poll for it.
    wait_for("the batch_seq_refused event", |last| {
        let (_, events) = get_text(&global.url("/api/v1/events?since=-1h"));
        let found = events.contains("batch_seq_refused");
        *last = events;
        found.then_some(())
    });

    // The real edge resumes where it was and keeps delivering exactly.
    edge.restart();
    ingest_ok(&edge, &counters(metric, base, 7), true);
    wait_for("every sample at the global tier", |last| {
        let n = counter_total(&global, metric, base);
        *last = format!("count {n}");
        (n == 12).then_some(())
    });
    wait_forwarded(&edge, &global, 1);
    assert_eq!(counter_total(&global, metric, base), 12);
    assert!(committed_seq(&global, "edge") > committed);
    assert!(
        !edge.log().contains("upstream committed seq"),
        "{}",
        edge.log_tail(40)
    );
}

#[test]
fn a_token_for_one_source_does_not_open_another_sources_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = Node::start(
        NodeConfig::new(dir.path(), "global")
            .downstream("edge")
            .downstream("other"),
    );
    let refused = forge(&global, "edge", &token_of("other"), 1, vec![], 0)
        .expect_err("another source's token opened the stream");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert_eq!(global.prom("strata_federation_refused_streams_total"), 1.0);
    assert_eq!(committed_seq(&global, "edge"), 0);
}

#[test]
fn a_stream_may_skip_dropped_batches_only_on_its_first_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let token = token_of("edge");
    let first = forge(
        &global,
        "edge",
        &token,
        42,
        vec![batch(1, false), batch(2, false)],
        2,
    )
    .expect("hello accepted");
    assert_eq!((first.committed, first.acks), (0, vec![1, 2]));
    wait_disconnected(&global, "edge");

    // Seqs 3..=5 were dropped at the source's spool cap: the next stream's
    // first batch says so and is accepted.
    let second =
        forge(&global, "edge", &token, 42, vec![batch(6, true)], 1).expect("hello accepted");
    assert_eq!((second.committed, second.acks), (2, vec![6]));
    wait_disconnected(&global, "edge");

    // A gap later in a stream is not, whatever its flag; what came before it
    // on that stream is committed.
    let third = forge(
        &global,
        "edge",
        &token,
        42,
        vec![batch(7, false), batch(10, true)],
        0,
    )
    .expect("hello accepted");
    assert_eq!(third.committed, 6);
    let end = third.end.expect("the later gap ends the stream");
    assert_eq!(end.code(), tonic::Code::FailedPrecondition, "{end:?}");
    assert!(end.message().contains("first batch"), "{end:?}");
    wait_for("seq 7 committed", |last| {
        let c = committed_seq(&global, "edge");
        *last = format!("committed_seq {c}");
        (c == 7).then_some(())
    });
    assert_eq!(global.prom("strata_federation_refused_seqs_total"), 1.0);
}

/// A source record committed beyond any real seq (as a version without seq
/// limits accepted from a forged batch) is reset at the source's next Hello:
/// the source resumes instead of failing forever, and counts stay exact.
#[test]
fn a_source_record_poisoned_before_the_seq_limits_is_reset_at_the_next_hello() {
    use redb::ReadableTable as _;
    const SOURCES: redb::TableDefinition<&str, (u64, u64, i64, i64)> =
        redb::TableDefinition::new("sources");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut global = Node::start(NodeConfig::new(dir.path(), "global").downstream("edge"));
    let mut edge = Node::start(NodeConfig::new(dir.path(), "edge").upstream(&global));
    let base = base_minute_ms();
    let metric = "poisoned_requests";
    ingest_ok(&edge, &counters(metric, base, 4), true);
    // Stopped first, the edge waits until everything it spooled is acked.
    edge.sigterm();
    edge.wait_clean_exit(DEADLINE);
    assert!(edge.log().contains("upstream acknowledged everything"));
    global.sigterm();
    global.wait_clean_exit(DEADLINE);

    let path = global.config.data_dir.join("strata.redb");
    {
        let db = redb::Database::open(&path).expect("opening the global's store");
        let txn = db.begin_write().expect("write transaction");
        {
            let mut table = txn.open_table(SOURCES).expect("sources table");
            let (epoch, _, watermark, seen) = table
                .get("edge")
                .expect("reading the edge's record")
                .expect("the edge has a record")
                .value();
            table
                .insert("edge", (epoch, u64::MAX - 1, watermark, seen))
                .expect("poisoning the record");
        }
        txn.commit().expect("commit");
    }

    global.restart_same_ports();
    assert_eq!(committed_seq(&global, "edge"), u64::MAX - 1);
    edge.restart();
    ingest_ok(&edge, &counters(metric, base, 3), true);
    wait_for("every sample at the global tier", |last| {
        let n = counter_total(&global, metric, base);
        *last = format!(
            "count {n}, committed_seq {}",
            committed_seq(&global, "edge")
        );
        (n == 7).then_some(())
    });
    assert!(committed_seq(&global, "edge") < 1 << 48);
    let (_, events) = get_text(&global.url("/api/v1/events?since=-1h"));
    assert!(events.contains("source_seq_reset"), "{events}");
    assert!(
        !edge.log().contains("upstream committed seq"),
        "{}",
        edge.log_tail(40)
    );
}
