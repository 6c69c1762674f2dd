//! In-process tiers on loopback: the shutdown path flushes, commits and
//! forwards before returning.

#![allow(clippy::unwrap_used)]

mod common;
use common::poll;

use std::time::Duration;

use strata_server::Config;
use strata_server::config::{DownstreamConfig, UpstreamConfig};
use strata_store::{EventKind, RedbStore, Store, StoreOptions};

fn config(id: &str, dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.node.id = id.into();
    c.node.data_dir = dir.join(id);
    c.http.listen = "127.0.0.1:0".into();
    c.grpc.listen = "127.0.0.1:0".into();
    // Long enough that only the shutdown's final flush can commit the samples.
    c.aggregation.flush_interval_ms = 600_000;
    c
}

fn ingest(addr: std::net::SocketAddr, body: String) -> serde_json::Value {
    let mut resp = ureq::post(&format!("http://{addr}/api/v1/ingest"))
        .send(body)
        .expect("ingest request");
    resp.body_mut().read_json().expect("json answer")
}

fn counter_lines(n: usize, ts_ms: i64) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"metric\":\"requests\",\"kind\":\"counter\",\"labels\":{{\"shard\":\"{}\"}},\"ts_ms\":{ts_ms},\"value\":{}}}\n",
                i % 4,
                i + 1
            )
        })
        .collect()
}

fn stored_total(store: &dyn Store) -> u64 {
    store
        .series_of("requests")
        .iter()
        .flat_map(|s| store.read(s, i64::MIN, i64::MAX).expect("read"))
        .map(|(_, state)| match state {
            strata_model::State::Counter(n) => n,
            other => panic!("unexpected state {other:?}"),
        })
        .sum()
}

fn now_minute() -> i64 {
    strata_model::minute_start(strata_server::now_ms())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_what_was_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("solo", dir.path());
    let data_dir = cfg.node.data_dir.clone();
    let tier = strata_server::start(cfg).await.unwrap();
    let addr = tier.http_addr;
    let answer =
        tokio::task::spawn_blocking(move || ingest(addr, counter_lines(100, now_minute())))
            .await
            .unwrap();
    assert_eq!(answer["accepted"], 100);
    tier.shutdown(Duration::from_secs(10)).await.unwrap();

    let store = RedbStore::open(&data_dir, StoreOptions::default()).unwrap();
    assert_eq!(stored_total(&store), (1..=100).sum::<u64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_forwards_until_the_upstream_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut global_cfg = config("global", dir.path());
    global_cfg.aggregation.flush_interval_ms = 50;
    global_cfg.downstream.push(DownstreamConfig {
        id: "edge".into(),
        token: "s3cret".into(),
    });
    let global = strata_server::start(global_cfg).await.unwrap();

    let mut edge_cfg = config("edge", dir.path());
    edge_cfg.upstream = Some(UpstreamConfig {
        endpoint: format!("http://{}", global.grpc_addr),
        token: "s3cret".into(),
        ..Default::default()
    });
    let edge = strata_server::start(edge_cfg).await.unwrap();
    let addr = edge.http_addr;
    let answer = tokio::task::spawn_blocking(move || ingest(addr, counter_lines(40, now_minute())))
        .await
        .unwrap();
    assert_eq!(answer["accepted"], 40);
    // The edge has not flushed yet (10-minute interval): only its shutdown
    // can commit and forward. When it returns, the global tier has committed.
    edge.shutdown(Duration::from_secs(20)).await.unwrap();
    assert_eq!(stored_total(&*global.api.ctx.store), (1..=40).sum::<u64>());
    assert_eq!(edge_spool_left(&dir.path().join("edge")), 0);
    global.shutdown(Duration::from_secs(5)).await.unwrap();
}

fn edge_spool_left(dir: &std::path::Path) -> u64 {
    RedbStore::open(dir, StoreOptions::default())
        .unwrap()
        .spool_stats()
        .batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_and_nothing_is_merged() {
    let dir = tempfile::tempdir().unwrap();
    let mut global_cfg = config("global", dir.path());
    global_cfg.aggregation.flush_interval_ms = 50;
    global_cfg.downstream.push(DownstreamConfig {
        id: "edge".into(),
        token: "right".into(),
    });
    let global = strata_server::start(global_cfg).await.unwrap();

    let mut edge_cfg = config("edge", dir.path());
    edge_cfg.aggregation.flush_interval_ms = 50;
    edge_cfg.upstream = Some(UpstreamConfig {
        endpoint: format!("http://{}", global.grpc_addr),
        token: "wrong".into(),
        ..Default::default()
    });
    let edge = strata_server::start(edge_cfg).await.unwrap();
    let addr = edge.http_addr;
    tokio::task::spawn_blocking(move || ingest(addr, counter_lines(5, now_minute())))
        .await
        .unwrap();
    let stats = global.api.ctx.stats.clone();
    let forwarder = edge.api.forwarder.clone().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let refused = stats
            .federation_refused_streams_total
            .load(std::sync::atomic::Ordering::Relaxed);
        let error = forwarder.lock().last_error.clone().unwrap_or_default();
        if refused > 0 && error.contains("bad token") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not refused: {refused} refusals, error {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored_total(&*global.api.ctx.store), 0);
    // The refusal is in the global tier's event log.
    let store = global.api.ctx.store.clone();
    let refused = || {
        let events = store.events(0, 100).unwrap();
        events
            .into_iter()
            .find(|e| e.kind == EventKind::SourceRefused)
    };
    poll("a source_refused event", || refused().is_some()).await;
    let event = refused().unwrap();
    assert!(event.message.contains("bad token"), "{event:?}");
    edge.shutdown(Duration::from_millis(200)).await.unwrap();
    global.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_conflict_between_regions_refuses_only_that_metric() {
    let dir = tempfile::tempdir().unwrap();
    let mut global_cfg = config("global", dir.path());
    global_cfg.aggregation.flush_interval_ms = 50;
    for id in ["a", "b"] {
        global_cfg.downstream.push(DownstreamConfig {
            id: id.into(),
            token: format!("{id}-token"),
        });
    }
    let global = strata_server::start(global_cfg).await.unwrap();
    let edge = |id: &str| {
        let mut c = config(id, dir.path());
        c.aggregation.flush_interval_ms = 50;
        c.upstream = Some(UpstreamConfig {
            endpoint: format!("http://{}", global.grpc_addr),
            token: format!("{id}-token"),
            ..Default::default()
        });
        c
    };
    let a = strata_server::start(edge("a")).await.unwrap();
    let b = strata_server::start(edge("b")).await.unwrap();
    let ts = now_minute();
    let a_addr = a.http_addr;
    tokio::task::spawn_blocking(move || {
        ingest(
            a_addr,
            format!("{{\"metric\":\"shared\",\"kind\":\"counter\",\"ts_ms\":{ts}}}\n"),
        )
    })
    .await
    .unwrap();
    let store = global.api.ctx.store.clone();
    poll("the counter at the global tier", || {
        store.metric_kind("shared").is_some()
    })
    .await;

    // Region b calls the same metric a histogram, in a request with another metric.
    let b_addr = b.http_addr;
    tokio::task::spawn_blocking(move || {
        ingest(
            b_addr,
            format!(
                "{{\"metric\":\"shared\",\"kind\":\"histogram\",\"ts_ms\":{ts},\"value\":3}}\n\
                 {{\"metric\":\"requests\",\"kind\":\"counter\",\"ts_ms\":{ts},\"value\":5}}\n"
            ),
        )
    })
    .await
    .unwrap();
    poll("b's other metric at the global tier", || {
        stored_total(&*store) == 5
    })
    .await;
    let stats = &global.api.ctx.stats;
    assert_eq!(
        stats
            .federation_refused_increments_total
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        stats
            .federation_rejected_batches_total
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        store.metric_kind("shared"),
        Some(strata_model::Kind::Counter)
    );
    for t in [a, b, global] {
        t.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}
