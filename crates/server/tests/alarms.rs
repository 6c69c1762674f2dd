//! Alarms in an in-process tier: rules fire and resolve on complete minutes,
//! silences hold, notifications reach a webhook at least once (through
//! failures and restarts), and a restart keeps a firing alarm firing without
//! notifying it again.
//!
//! The evaluator's clock is injected ([`AlarmSettings::clock`]) and tests call
//! [`strata_server::outputs::alarms::Alarms::tick`] themselves, so they evaluate chosen
//! minutes a few minutes in the past (complete, within the allowed lateness)
//! instead of waiting for real minutes to pass.

#![allow(clippy::unwrap_used)]

mod common;
use common::poll;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU16, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use parking_lot::Mutex;
use serde_json::{Value, json};
use strata_server::config::{AlarmConfig, StorageEngine};
use strata_server::outputs::alarms::{AlarmSettings, Op};
use strata_server::{Config, RunningTier, StartOptions};

const M: i64 = 60_000;

/// A webhook receiver on loopback that answers with scripted statuses and
/// records every request it got.
struct Hook {
    addr: SocketAddr,
    state: Arc<HookState>,
}

#[derive(Default)]
struct HookState {
    /// Statuses for the next requests, in order; then `otherwise`.
    script: Mutex<VecDeque<u16>>,
    otherwise: AtomicU16,
    /// (status answered, body) of every request.
    received: Mutex<Vec<(u16, Value)>>,
}

impl Hook {
    async fn start() -> Hook {
        let state = Arc::new(HookState {
            otherwise: AtomicU16::new(200),
            ..HookState::default()
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Hook { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Bodies of the requests answered 2xx.
    fn delivered(&self) -> Vec<Value> {
        self.state
            .received
            .lock()
            .iter()
            .filter(|(status, _)| (200..300).contains(status))
            .map(|(_, body)| body.clone())
            .collect()
    }

    fn requests(&self) -> usize {
        self.state.received.lock().len()
    }
}

async fn receive(State(state): State<Arc<HookState>>, body: Bytes) -> StatusCode {
    let status = state
        .script
        .lock()
        .pop_front()
        .unwrap_or_else(|| state.otherwise.load(Ordering::Relaxed));
    let body: Value = serde_json::from_slice(&body).unwrap();
    state.received.lock().push((status, body));
    StatusCode::from_u16(status).unwrap()
}

fn rule(name: &str, hook: &Hook) -> AlarmConfig {
    AlarmConfig {
        name: name.into(),
        metric: "lat".into(),
        field: "max".into(),
        op: Op::Gt,
        threshold: 100.0,
        period_minutes: 1,
        count: 1,
        silence_minutes: 3,
        webhooks: vec![hook.url()],
        ..AlarmConfig::default()
    }
}

fn config(dir: &std::path::Path, rules: Vec<AlarmConfig>) -> Config {
    let mut c = Config::default();
    c.node.id = "edge-1".into();
    c.node.data_dir = dir.join("edge-1");
    c.http.listen = "127.0.0.1:0".into();
    c.grpc.listen = "127.0.0.1:0".into();
    c.aggregation.flush_interval_ms = 50;
    c.aggregation.shards = 2;
    // `ingest` waits until its samples are merged, which the ticks rely on.
    c.storage.request_log = false;
    c.alarm = rules;
    c
}

/// A tier whose alarm clock reads `clock`, with quick retries.
async fn start(config: Config, clock: &Arc<AtomicI64>) -> RunningTier {
    let clock = clock.clone();
    let options = StartOptions {
        alarms: AlarmSettings {
            clock: Arc::new(move || clock.load(Ordering::SeqCst)),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            ..AlarmSettings::default()
        },
        ..StartOptions::default()
    };
    strata_server::start_with(config, options).await.unwrap()
}

/// Start of the minute `back` minutes before the current one.
fn minutes_ago(back: i64) -> i64 {
    strata_model::minute_start(strata_server::now_ms()) - back * M
}

/// Posts samples (one NDJSON line each) and waits until they are committed.
async fn ingest(tier: &RunningTier, lines: Vec<Value>) {
    let url = format!("http://{}/api/v1/ingest?wait=commit", tier.http_addr);
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let n = lines.len();
    let answer: Value = tokio::task::spawn_blocking(move || {
        ureq::post(&url)
            .send(body)
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(answer["accepted"], n, "{answer}");
}

fn sample(metric: &str, kind: &str, labels: Value, ts_ms: i64, value: f64) -> Value {
    json!({"metric": metric, "kind": kind, "labels": labels, "ts_ms": ts_ms, "value": value})
}

fn lat(ts_ms: i64, value: f64) -> Value {
    sample("lat", "max", json!({"service": "checkout"}), ts_ms, value)
}

/// Evaluates every rule as of `now_ms` (also what the evaluator thread now
/// sees), the way the thread does once a minute.
async fn tick(tier: &RunningTier, clock: &AtomicI64, now_ms: i64) {
    clock.store(now_ms, Ordering::SeqCst);
    let alarms = tier.api.alarms.clone();
    let outcome = tokio::task::spawn_blocking(move || alarms.tick(now_ms))
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.errors.is_empty(), "{outcome:?}");
}

async fn get(tier: &RunningTier, path: &str) -> Value {
    let url = format!("http://{}{path}", tier.http_addr);
    tokio::task::spawn_blocking(move || {
        ureq::get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Waits until the outbox is empty: everything queued was delivered.
async fn drained(tier: &RunningTier) {
    let store = tier.api.ctx.store.clone();
    poll("an empty outbox", || store.outbox_len().unwrap() == 0).await;
}

fn history_len(tier: &RunningTier) -> usize {
    tier.api.ctx.store.alarm_history(100).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_resolves_and_the_silence_holds_back_a_refire() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::start().await;
    let mut cfg = config(dir.path(), vec![rule("lat-max", &hook)]);
    cfg.storage.engine = StorageEngine::Memory;
    let m0 = minutes_ago(5);
    let clock = Arc::new(AtomicI64::new(m0));
    let tier = start(cfg, &clock).await;

    // Minute m0 breaches: evaluated once it is over, the alarm fires.
    ingest(&tier, vec![lat(m0 + 1_000, 250.0), lat(m0 + 2_000, 40.0)]).await;
    tick(&tier, &clock, m0 + M + 1_000).await;
    poll("the firing notification", || hook.delivered().len() == 1).await;
    let firing = &hook.delivered()[0];
    assert_eq!(
        *firing,
        json!({
            "alarm": "lat-max", "state": "firing", "group": {}, "value": 250.0,
            "threshold": 100.0, "op": ">", "ts_ms": m0, "node": "edge-1",
            "metric": "lat", "field": "max",
        })
    );
    let data = &get(&tier, "/api/v1/alarms").await["data"];
    assert_eq!(data["active"].as_array().unwrap().len(), 1, "{data}");
    assert_eq!(data["active"][0]["alarm"], "lat-max");
    assert_eq!(data["active"][0]["value"], 250.0);
    assert_eq!(data["active"][0]["threshold"], 100.0);

    // Evaluating the same minute again changes nothing.
    tick(&tier, &clock, m0 + M + 30_000).await;
    assert_eq!(history_len(&tier), 1);

    // Minute m1 is fine: it resolves.
    let m1 = m0 + M;
    ingest(&tier, vec![lat(m1 + 1_000, 5.0)]).await;
    tick(&tier, &clock, m1 + M + 1_000).await;
    poll("the resolved notification", || hook.delivered().len() == 2).await;
    let resolved = &hook.delivered()[1];
    assert_eq!(
        (&resolved["state"], &resolved["value"], &resolved["ts_ms"]),
        (&json!("resolved"), &json!(5.0), &json!(m1))
    );

    // Minute m2 breaches again, two minutes after firing: silenced (3 min).
    let m2 = m1 + M;
    ingest(&tier, vec![lat(m2 + 1_000, 300.0)]).await;
    tick(&tier, &clock, m2 + M + 1_000).await;
    assert_eq!(history_len(&tier), 2, "no transition within the silence");
    assert_eq!(tier.api.ctx.store.outbox_len().unwrap(), 0);
    let data = &get(&tier, "/api/v1/alarms").await["data"];
    assert!(data["active"].as_array().unwrap().is_empty(), "{data}");

    // Minute m3 breaches three minutes after firing: it fires again.
    let m3 = m2 + M;
    ingest(&tier, vec![lat(m3 + 1_000, 400.0)]).await;
    tick(&tier, &clock, m3 + M + 1_000).await;
    poll("the second firing notification", || {
        hook.delivered().len() == 3
    })
    .await;
    assert_eq!(hook.delivered()[2]["value"], 400.0);
    assert_eq!(hook.delivered()[2]["ts_ms"], m3);

    // The history, newest first, and the event log.
    let data = &get(&tier, "/api/v1/alarms?limit=10").await["data"];
    let history: Vec<(String, f64)> = data["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["state"].as_str().unwrap().to_owned(),
                h["value"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("firing".to_owned(), 400.0),
            ("resolved".to_owned(), 5.0),
            ("firing".to_owned(), 250.0)
        ]
    );
    let limited = &get(&tier, "/api/v1/alarms?limit=1").await["data"]["history"];
    assert_eq!(limited.as_array().unwrap().len(), 1);
    let kinds: Vec<String> = tier
        .api
        .ctx
        .store
        .events(i64::MIN, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.kind.as_str().to_owned())
        .filter(|k| k.starts_with("alarm_"))
        .collect();
    assert_eq!(kinds, ["alarm_fired", "alarm_resolved", "alarm_fired"]);
    let stats = &tier.api.ctx.stats;
    assert_eq!(stats.alarms_fired_total.load(Ordering::Relaxed), 2);
    assert_eq!(stats.alarms_resolved_total.load(Ordering::Relaxed), 1);
    assert_eq!(
        stats.alarm_notifications_sent_total.load(Ordering::Relaxed),
        3
    );
    let health = get(&tier, "/health/alarms").await;
    assert_eq!(health["status"], "OK", "{health}");
    tier.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_retried_until_it_answers_2xx() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::start().await;
    hook.state.script.lock().extend([500, 503, 500]);
    let mut cfg = config(dir.path(), vec![rule("lat-max", &hook)]);
    cfg.storage.engine = StorageEngine::Memory;
    let m0 = minutes_ago(4);
    let clock = Arc::new(AtomicI64::new(m0));
    let tier = start(cfg, &clock).await;

    ingest(&tier, vec![lat(m0, 101.0)]).await;
    tick(&tier, &clock, m0 + M + 1_000).await;
    // Resolved while the firing is (most likely) still being retried: it
    // waits for the firing, so the receiver gets them in order.
    ingest(&tier, vec![lat(m0 + M, 99.0)]).await;
    tick(&tier, &clock, m0 + 2 * M + 1_000).await;
    poll("both deliveries after three failures", || {
        hook.delivered().len() == 2
    })
    .await;
    drained(&tier).await;
    let received = hook.state.received.lock().clone();
    let statuses: Vec<u16> = received.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [500, 503, 500, 200, 200]);
    assert!(
        received[..4].iter().all(|(_, body)| *body == received[0].1),
        "every attempt carries the same notification"
    );
    assert_eq!(
        (&received[3].1["state"], &received[3].1["value"]),
        (&json!("firing"), &json!(101.0))
    );
    assert_eq!(
        (&received[4].1["state"], &received[4].1["value"]),
        (&json!("resolved"), &json!(99.0))
    );
    let stats = &tier.api.ctx.stats;
    assert_eq!(
        stats
            .alarm_notifications_failed_total
            .load(Ordering::Relaxed),
        3
    );
    assert_eq!(
        stats.alarm_notifications_sent_total.load(Ordering::Relaxed),
        2
    );
    tier.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_alarm_firing_and_delivers_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::start().await;
    // The receiver is down for the whole first run.
    hook.state.otherwise.store(500, Ordering::Relaxed);
    let cfg = config(dir.path(), vec![rule("lat-max", &hook)]);
    let m0 = minutes_ago(4);
    let clock = Arc::new(AtomicI64::new(m0));
    let tier = start(cfg.clone(), &clock).await;
    ingest(&tier, vec![lat(m0, 180.0)]).await;
    tick(&tier, &clock, m0 + M + 1_000).await;
    poll("a failed delivery attempt", || hook.requests() >= 1).await;
    tier.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(hook.delivered().is_empty());

    // Back up, same data directory, same minute evaluated again.
    hook.state.otherwise.store(200, Ordering::Relaxed);
    let tier = start(cfg, &clock).await;
    poll("the queued notification after the restart", || {
        hook.delivered().len() == 1
    })
    .await;
    tick(&tier, &clock, m0 + M + 2_000).await;
    drained(&tier).await;
    assert_eq!(history_len(&tier), 1, "no second transition");
    let delivered = hook.delivered();
    assert_eq!(delivered.len(), 1, "no second firing: {delivered:?}");
    assert_eq!(
        (&delivered[0]["state"], &delivered[0]["value"]),
        (&json!("firing"), &json!(180.0))
    );
    let data = &get(&tier, "/api/v1/alarms").await["data"];
    assert_eq!(data["active"].as_array().unwrap().len(), 1, "{data}");

    // The restored state goes on: the next quiet minute resolves it.
    let m1 = m0 + M;
    ingest(&tier, vec![lat(m1, 1.0)]).await;
    tick(&tier, &clock, m1 + M + 1_000).await;
    poll("the resolved notification", || hook.delivered().len() == 2).await;
    assert_eq!(hook.delivered()[1]["state"], "resolved");
    tier.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_by_gives_one_instance_per_group_from_merged_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::start().await;
    let mut by_az = rule("checkout-p99", &hook);
    by_az.metric = "http_ms".into();
    by_az.field = "p99".into();
    by_az.matchers.insert("service".into(), "checkout".into());
    by_az.group_by = vec!["az".into()];
    by_az.threshold = 150.0;
    by_az.period_minutes = 3;
    by_az.count = 2;
    let mut cfg = config(dir.path(), vec![by_az]);
    cfg.storage.engine = StorageEngine::Memory;
    let m0 = minutes_ago(5);
    let clock = Arc::new(AtomicI64::new(m0));
    let tier = start(cfg, &clock).await;

    let h = |service: &str, az: &str, host: &str, ts: i64, v: f64| {
        sample(
            "http_ms",
            "histogram",
            json!({"service": service, "az": az, "host": host}),
            ts,
            v,
        )
    };
    let mut lines = Vec::new();
    for minute in [m0, m0 + M, m0 + 2 * M] {
        // az a: the p99 of its two hosts merged breaches in the last two
        // minutes (count 2 of 3); az b never does; the other service is not
        // matched, or az b would breach.
        let slow = if minute == m0 { 100.0 } else { 200.0 };
        lines.push(h("checkout", "a", "h1", minute, 10.0));
        lines.push(h("checkout", "a", "h2", minute, slow));
        lines.push(h("checkout", "b", "h1", minute, 20.0));
        lines.push(h("search", "b", "h1", minute, 900.0));
    }
    ingest(&tier, lines).await;
    tick(&tier, &clock, m0 + 3 * M + 1_000).await;
    poll("the firing notification of az a", || {
        hook.delivered().len() == 1
    })
    .await;
    let n = &hook.delivered()[0];
    assert_eq!(n["group"], json!({"az": "a"}));
    assert_eq!(n["ts_ms"], m0 + 2 * M);
    let p99 = n["value"].as_f64().unwrap();
    assert!((p99 - 200.0).abs() <= 2.0, "{p99}");
    let states = tier.api.ctx.store.alarm_states().unwrap();
    assert_eq!(states.len(), 1, "{states:?}");
    assert!(states[0].firing);
    tier.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_complete_minutes_count_unless_the_rule_opts_out() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::start().await;
    let complete_only = rule("complete-only", &hook);
    let mut early = rule("early", &hook);
    early.include_incomplete = true;
    let mut cfg = config(dir.path(), vec![complete_only, early]);
    cfg.storage.engine = StorageEngine::Memory;
    let now = strata_server::now_ms();
    let clock = Arc::new(AtomicI64::new(now));
    let tier = start(cfg, &clock).await;

    // A breach in the current minute: not complete until the minute is over.
    ingest(&tier, vec![lat(now, 500.0)]).await;
    tick(&tier, &clock, now).await;
    poll("the early rule's notification", || {
        hook.delivered().len() == 1
    })
    .await;
    drained(&tier).await;
    let delivered = hook.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["alarm"], "early");
    assert_eq!(delivered[0]["ts_ms"], strata_model::minute_start(now));
    let health = get(&tier, "/health").await;
    assert_eq!(health["components"]["alarms"], "OK", "{health}");
    tier.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_data_in_an_evaluated_minute_fires_for_that_minute() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::start().await;
    let mut cfg = config(dir.path(), vec![rule("lat-max", &hook)]);
    cfg.storage.engine = StorageEngine::Memory;
    let m0 = minutes_ago(5);
    // The evaluator thread's own first tick evaluates up to m0 + 2 min.
    let clock = Arc::new(AtomicI64::new(m0 + 3 * M + 1_000));
    let tier = start(cfg, &clock).await;
    let alarms = tier.api.alarms.clone();
    poll("the first evaluation", || {
        alarms.evaluated_through().get("lat-max") == Some(&(m0 + 2 * M))
    })
    .await;

    // A breach arrives for m0, long complete and behind the rule's window.
    ingest(&tier, vec![lat(m0 + 2_000, 300.0)]).await;
    poll("the firing notification", || !hook.delivered().is_empty()).await;
    let firing = &hook.delivered()[0];
    assert_eq!(
        (&firing["state"], &firing["ts_ms"], &firing["value"]),
        (&json!("firing"), &json!(m0), &json!(300.0)),
        "{firing}"
    );
    // The current window has nothing breaching: the tick that follows
    // resolves it.
    poll("the resolved notification", || hook.delivered().len() == 2).await;
    assert_eq!(hook.delivered()[1]["state"], "resolved");
    assert_eq!(hook.delivered()[1]["ts_ms"], json!(m0 + 2 * M));
    assert_eq!(tier.api.pipeline.late_after_complete(), 1);
    tier.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rules_alarms_are_deactivated_and_the_api_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Vec::new());
    cfg.storage.engine = StorageEngine::Memory;
    let clock = Arc::new(AtomicI64::new(0));
    let tier = start(cfg, &clock).await;
    let health = get(&tier, "/health").await;
    assert_eq!(health["components"]["alarms"], "Deactivated", "{health}");
    let answer = get(&tier, "/api/v1/alarms").await;
    assert_eq!(
        answer,
        json!({"status": "success", "data": {"active": [], "history": [], "rules": []}})
    );
    tier.shutdown(Duration::from_secs(10)).await.unwrap();
}
