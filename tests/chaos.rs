//! Chaos with real processes: traffic into two edges with `?wait=commit`
//! while the global and the regional tier are SIGKILLed and restarted several
//! times and each edge is SIGKILLed and restarted once. At the end the global
//! totals equal exactly what the edges acknowledged, and stay equal
//! (DESIGN §4, docs/GUARANTEES.md).
//!
//! Topology: edge-a, edge-b → regional → global, all redb, 200 ms flushes;
//! the edges answer from their request logs, so an edge killed between two
//! requests often holds acknowledged requests its flush has not merged yet.
//!
//! A request counts only when the edge answered 200. Every other answer must
//! leave the count checkable: 429 / 503 and a refused connection merged
//! nothing and are retried; anything else (a timeout, a reset, a 500) has an
//! unknown outcome and fails the test. An edge is therefore only killed while
//! its writer is paused between requests; the regional and global tiers are
//! killed at any moment, since their crashes never change what an edge
//! acknowledged.
//!
//! The schedule is random but seeded: `STRATA_CHAOS_SEED=<n>` replays the
//! schedule of a logged run (the timing of the processes still varies).

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use util::*;

const COUNTER: &str = "chaos_requests";
const HISTOGRAM: &str = "chaos_latency_ms";
/// Counter lines (and as many histogram lines) per request.
const LINES_PER_REQUEST: u64 = 12;
/// How long the kills go on.
const CHAOS_WINDOW: Duration = Duration::from_secs(45);
/// How long the totals must stay exact once they are.
const STABLE_FOR: Duration = Duration::from_secs(3);

/// One writer's state, shared with the controlling thread.
#[derive(Default)]
struct Writer {
    /// Asked by the controller: stop between two requests.
    pause: AtomicBool,
    /// Set by the writer while it is paused (no request in flight).
    paused: AtomicBool,
    stop: AtomicBool,
    /// Requests answered 200, and the counter total and histogram samples in them.
    requests: AtomicU64,
    counter: AtomicU64,
    histogram: AtomicU64,
    /// Answers that merged nothing (refused connection, 429, 503), retried.
    retries: AtomicU64,
}

/// What one edge acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    counter: u64,
    histogram: u64,
}

impl Writer {
    fn totals(&self) -> Totals {
        Totals {
            counter: self.counter.load(Ordering::Acquire),
            histogram: self.histogram.load(Ordering::Acquire),
        }
    }
}

/// One request of `edge`: counter lines with values 0..=5 or none (= 1), and
/// as many histogram lines, over a few labelled series. Returns the body, its
/// counter total and its histogram sample count.
fn build_request(edge: &str, base: i64, rng: &mut Rng) -> (String, u64, u64) {
    let mut lines = Vec::new();
    let mut counter = 0;
    for _ in 0..LINES_PER_REQUEST {
        let ts = base + rng.below(60_000) as i64;
        let shard = format!("s{}", rng.below(4));
        let value = match rng.below(7) {
            6 => Value::Null,
            v => json!(v),
        };
        counter += value.as_u64().unwrap_or(1);
        lines.push(sample(
            COUNTER,
            "counter",
            &[("edge", edge), ("shard", &shard)],
            ts,
            value,
        ));
        let route = format!("r{}", rng.below(3));
        let latency = (1 + rng.below(50_000)) as f64 / 10.0;
        lines.push(sample(
            HISTOGRAM,
            "histogram",
            &[("edge", edge), ("route", &route)],
            ts,
            json!(latency),
        ));
    }
    (ndjson(&lines), counter, LINES_PER_REQUEST)
}

/// Sends requests to `url` until told to stop; pauses between requests when
/// asked. `Err` on an answer whose effect is unknown.
fn run_writer(w: &Writer, edge: &str, url: &str, base: i64, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut agent = util::new_agent();
    // The request being sent: retried as is until it is acknowledged.
    let mut pending: Option<(String, u64, u64)> = None;
    loop {
        if w.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        if w.pause.load(Ordering::Acquire) {
            w.paused.store(true, Ordering::Release);
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if w.paused.swap(false, Ordering::AcqRel) {
            agent = util::new_agent();
        }
        let (body, counter, histogram) = pending
            .get_or_insert_with(|| build_request(edge, base, &mut rng))
            .clone();
        let n = w.requests.load(Ordering::Acquire);
        let retry = || {
            w.retries.fetch_add(1, Ordering::AcqRel);
            std::thread::sleep(Duration::from_millis(50));
        };
        match agent.post(url).send(&body) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let text = resp.body_mut().read_to_string().map_err(|e| {
                    format!(
                        "{edge} request {n}: {status}, reading the answer: {e}: outcome unknown"
                    )
                })?;
                match status {
                    200 => {
                        let v: Value = serde_json::from_str(&text)
                            .map_err(|e| format!("{edge} request {n}: 200 {text:?}: {e}"))?;
                        if v["accepted"] != 2 * LINES_PER_REQUEST {
                            return Err(format!("{edge} request {n}: 200 {text}"));
                        }
                        w.counter.fetch_add(counter, Ordering::AcqRel);
                        w.histogram.fetch_add(histogram, Ordering::AcqRel);
                        w.requests.fetch_add(1, Ordering::AcqRel);
                        pending = None;
                    }
                    // Documented as "nothing was merged": retry as is.
                    429 | 503 => retry(),
                    _ => {
                        return Err(format!(
                            "{edge} request {n}: {status} {text}: outcome unknown"
                        ));
                    }
                }
            }
            // Nothing reached the edge.
            Err(ureq::Error::ConnectionFailed) => retry(),
            Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => retry(),
            Err(e) => return Err(format!("{edge} request {n}: {e}: outcome unknown")),
        }
    }
}

struct WriterHandle {
    edge: String,
    state: Arc<Writer>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl WriterHandle {
    fn spawn(edge: &Node, base: i64, seed: u64) -> WriterHandle {
        let state = Arc::new(Writer::default());
        let url = edge.url("/api/v1/ingest?wait=commit");
        let name = edge.id.clone();
        let thread = {
            let (state, name) = (state.clone(), name.clone());
            std::thread::spawn(move || run_writer(&state, &name, &url, base, seed))
        };
        WriterHandle {
            edge: name,
            state,
            thread: Some(thread),
        }
    }

    /// Fails the test if the writer gave up.
    fn check(&mut self) {
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished)
            && !self.state.stop.load(Ordering::Acquire)
        {
            self.join();
            panic!("writer of {} stopped by itself", self.edge);
        }
    }

    fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!(
                    "writer of {}: {e} (an edge answered something other than 200, 429, 503 \
                     or a refused connection while it was up; the exact totals can no longer be \
                     checked)",
                    self.edge
                ),
                Err(_) => panic!("writer of {} panicked", self.edge),
            }
        }
    }

    /// Returns once the writer is between requests and sends no more.
    fn pause(&mut self) {
        self.state.pause.store(true, Ordering::Release);
        wait_for(&format!("the writer of {} to pause", self.edge), |last| {
            self.check();
            *last = format!("{} requests acknowledged", self.requests());
            self.state.paused.load(Ordering::Acquire).then_some(())
        });
    }

    fn resume(&mut self) {
        self.state.pause.store(false, Ordering::Release);
        wait_for(&format!("the writer of {} to resume", self.edge), |_| {
            self.check();
            (!self.state.paused.load(Ordering::Acquire)).then_some(())
        });
    }

    fn stop(&mut self) -> Totals {
        self.state.stop.store(true, Ordering::Release);
        self.join();
        self.state.totals()
    }

    fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Acquire)
    }
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Global,
    Regional,
    /// Both killed at once; restarted in this order, `gap` apart.
    Both {
        regional_first: bool,
        gap: Duration,
    },
    /// An edge (index into the edges), killed while its writer is paused.
    Edge(usize),
}

#[derive(Clone, Copy, Debug)]
struct Event {
    /// Since the start of the chaos.
    at: Duration,
    action: Action,
    /// Between the kill and the restart.
    down_for: Duration,
}

/// Three kills of the global tier and three of the regional (one or two of
/// them together), one of each edge, spread over `CHAOS_WINDOW` in a random
/// order.
fn schedule(rng: &mut Rng) -> Vec<Event> {
    let both = 1 + rng.below(2) as usize;
    let mut actions = Vec::new();
    for _ in 0..both {
        actions.push(Action::Both {
            regional_first: rng.below(2) == 0,
            gap: Duration::from_millis(rng.below(500)),
        });
    }
    for _ in both..3 {
        actions.push(Action::Global);
        actions.push(Action::Regional);
    }
    actions.push(Action::Edge(0));
    actions.push(Action::Edge(1));
    for i in (1..actions.len()).rev() {
        actions.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let start = Duration::from_millis(1_500);
    let slot = (CHAOS_WINDOW - start) / actions.len() as u32;
    actions
        .into_iter()
        .enumerate()
        .map(|(i, action)| Event {
            at: start + slot * i as u32 + slot.mul_f64(rng.unit() * 0.5),
            action,
            down_for: if rng.below(3) == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(rng.below(2_001))
            },
        })
        .collect()
}

/// Sleeps `d`, failing the test early if a writer gave up.
fn sleep_checking(writers: &mut [WriterHandle], d: Duration) {
    let until = Instant::now() + d;
    loop {
        for w in writers.iter_mut() {
            w.check();
        }
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// Counter total and histogram sample count of `node` over the test's range.
fn totals_at(node: &Node, selector: &str, base: i64) -> Totals {
    let histogram_selector = selector.replace(COUNTER, HISTOGRAM);
    Totals {
        counter: counter_total(node, selector, base),
        histogram: merged_value(node, &histogram_selector, base).map_or(0, |v| u(&v, "count")),
    }
}

/// Per-edge totals at `node` (`group_by=edge`), for the failure messages.
fn per_edge(node: &Node, base: i64) -> String {
    let (from, to) = range_of(base);
    [COUNTER, HISTOGRAM]
        .iter()
        .map(|metric| {
            let data = query(
                node,
                &[
                    ("q", metric),
                    ("from", &from),
                    ("to", &to),
                    ("step", "all"),
                    ("group_by", "edge"),
                ],
            );
            let by_edge: Vec<String> = data["series"]
                .as_array()
                .expect("series array")
                .iter()
                .map(|s| {
                    format!(
                        "{}={}",
                        s["labels"]["edge"], s["points"][0]["value"]["count"]
                    )
                })
                .collect();
            format!("{metric}: {}", by_edge.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Epoch (its fingerprint) of `source` at `upstream` once it is connected.
fn connected_epoch(upstream: &Node, source: &str) -> String {
    wait_for(&format!("{source} connected to {}", upstream.id), |last| {
        let s = upstream.source(source);
        *last = format!("{s:?}");
        let s = s?;
        (s["connected"] == true)
            .then(|| s["epoch_fingerprint"].as_str().map(str::to_owned))
            .flatten()
    })
}

/// From every run's log of a forwarding node: how many times it connected
/// upstream, and how many spooled batches the upstream had not committed
/// then, in all (`spooled_to - committed_seq` of each "connected upstream,
/// resuming"): what it had to send again after the crashes.
fn resumes(node: &Node) -> (u64, u64) {
    let field = |line: &str, name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    node.log()
        .lines()
        .filter(|l| l.contains("connected upstream, resuming"))
        .filter_map(|l| Some((field(l, "committed_seq")?, field(l, "spooled_to")?)))
        .fold((0, 0), |(n, resent), (committed, spooled)| {
            (n + 1, resent + spooled.saturating_sub(committed))
        })
}

#[test]
fn kills_of_every_tier_under_load_keep_global_totals_exact() {
    let seed = std::env::var("STRATA_CHAOS_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("STRATA_CHAOS_SEED is a number"))
        .unwrap_or_else(|| now_ms() as u64);
    eprintln!("chaos seed {seed} (STRATA_CHAOS_SEED={seed} replays this schedule)");
    let mut rng = Rng::new(seed);

    let dir = tempfile::tempdir().unwrap();
    let mut global = Node::start(NodeConfig::new(dir.path(), "global").downstream("regional"));
    let mut regional = Node::start(
        NodeConfig::new(dir.path(), "regional")
            .upstream(&global)
            .downstream("edge-a")
            .downstream("edge-b"),
    );
    let mut edges = [
        Node::start(
            NodeConfig::new(dir.path(), "edge-a")
                .upstream(&regional)
                .request_log(),
        ),
        Node::start(
            NodeConfig::new(dir.path(), "edge-b")
                .upstream(&regional)
                .request_log(),
        ),
    ];
    let epochs = [
        connected_epoch(&global, "regional"),
        connected_epoch(&regional, "edge-a"),
        connected_epoch(&regional, "edge-b"),
    ];

    let events = schedule(&mut rng);
    eprintln!("kill schedule:");
    for e in &events {
        eprintln!(
            "  at {:>6} ms: {:?}, down for {} ms",
            e.at.as_millis(),
            e.action,
            e.down_for.as_millis()
        );
    }

    let base = base_minute_ms();
    let mut writers: Vec<WriterHandle> = edges
        .iter()
        .enumerate()
        .map(|(i, edge)| WriterHandle::spawn(edge, base, seed ^ (0x9e37_79b9 * (i as u64 + 1))))
        .collect();

    let start = Instant::now();
    let log = |what: String| eprintln!("[{:>6} ms] {what}", start.elapsed().as_millis());
    for e in &events {
        sleep_checking(&mut writers, e.at.saturating_sub(start.elapsed()));
        match e.action {
            Action::Global => {
                log("kill -9 global".into());
                global.kill();
                sleep_checking(&mut writers, e.down_for);
                global.restart_same_ports();
                log("global restarted".into());
            }
            Action::Regional => {
                log("kill -9 regional".into());
                regional.kill();
                sleep_checking(&mut writers, e.down_for);
                regional.restart_same_ports();
                log("regional restarted".into());
            }
            Action::Both {
                regional_first,
                gap,
            } => {
                log("kill -9 global and regional".into());
                global.kill();
                regional.kill();
                sleep_checking(&mut writers, e.down_for);
                let (first, second) = if regional_first {
                    (&mut regional, &mut global)
                } else {
                    (&mut global, &mut regional)
                };
                first.restart_same_ports();
                log(format!("{} restarted", first.id));
                sleep_checking(&mut writers, gap);
                second.restart_same_ports();
                log(format!("{} restarted", second.id));
            }
            Action::Edge(i) => {
                writers[i].pause();
                let acked = writers[i].state.totals();
                let edge = &mut edges[i];
                log(format!(
                    "writer of {} paused after {} requests; kill -9 {}",
                    edge.id,
                    writers[i].requests(),
                    edge.id
                ));
                edge.kill();
                sleep_checking(&mut writers, e.down_for);
                let edge = &mut edges[i];
                edge.restart_same_ports();
                // Everything it acknowledged with wait=commit survived the
                // crash: what its request log held is merged by its first
                // flush, and never more than that.
                let kept = wait_for(
                    &format!("{} to hold what it acknowledged, {acked:?}", edge.id),
                    |last| {
                        let kept = totals_at(edge, COUNTER, base);
                        *last = format!("{kept:?}");
                        assert!(
                            kept.counter <= acked.counter && kept.histogram <= acked.histogram,
                            "{} after its restart holds {kept:?}, more than the {acked:?} it acknowledged",
                            edge.id
                        );
                        (kept == acked).then_some(kept)
                    },
                );
                log(format!(
                    "{} restarted with {kept:?}; writer resumes",
                    edge.id
                ));
                writers[i].resume();
            }
        }
    }
    // A last stretch of traffic with every node up.
    sleep_checking(&mut writers, Duration::from_secs(1));
    let acked: Vec<Totals> = writers.iter_mut().map(WriterHandle::stop).collect();
    let total = Totals {
        counter: acked.iter().map(|t| t.counter).sum(),
        histogram: acked.iter().map(|t| t.histogram).sum(),
    };
    for (w, t) in writers.iter().zip(&acked) {
        eprintln!(
            "{} acknowledged {} requests: counter {}, histogram samples {} ({} retried answers)",
            w.edge,
            w.requests(),
            t.counter,
            t.histogram,
            w.state.retries.load(Ordering::Acquire)
        );
    }
    eprintln!(
        "acknowledged in total: counter {}, histogram samples {}; traffic ran {} ms",
        total.counter,
        total.histogram,
        start.elapsed().as_millis()
    );
    assert!(
        writers.iter().all(|w| w.requests() > 0),
        "a writer got nothing acknowledged"
    );

    // The global tier reaches exactly the acknowledged totals, never more.
    wait_for("the global totals to equal the acknowledged ones", |last| {
        let now = totals_at(&global, COUNTER, base);
        *last = format!("{now:?} of {total:?}");
        assert!(
            now.counter <= total.counter && now.histogram <= total.histogram,
            "global has {now:?}, more than the {total:?} acknowledged (double count): {}",
            per_edge(&global, base)
        );
        (now == total).then_some(())
    });
    log(format!("global totals equal the acknowledged {total:?}"));

    // Everything spooled anywhere is committed upstream, later flushes went
    // through, and the totals did not move.
    for edge in &edges {
        wait_forwarded(edge, &regional, 0);
    }
    wait_forwarded(&regional, &global, 5);
    let stable_since = Instant::now();
    while stable_since.elapsed() < STABLE_FOR {
        assert_eq!(
            totals_at(&global, COUNTER, base),
            total,
            "global totals moved after they were exact: {}",
            per_edge(&global, base)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every tier has exactly what the edges acknowledged.
    assert_eq!(totals_at(&global, COUNTER, base), total, "global");
    assert_eq!(totals_at(&regional, COUNTER, base), total, "regional");
    for (edge, t) in edges.iter().zip(&acked) {
        assert_eq!(totals_at(edge, COUNTER, base), *t, "{}", edge.id);
        let selector = format!("{COUNTER}{{edge=\"{}\"}}", edge.id);
        assert_eq!(
            totals_at(&global, &selector, base),
            *t,
            "global, {} only: {}",
            edge.id,
            per_edge(&global, base)
        );
    }

    // No node lost its durable state: every stream resumed in its epoch.
    assert_eq!(connected_epoch(&global, "regional"), epochs[0]);
    assert_eq!(connected_epoch(&regional, "edge-a"), epochs[1]);
    assert_eq!(connected_epoch(&regional, "edge-b"), epochs[2]);
    for node in edges.iter().chain([&regional]) {
        let (reconnects, resent) = resumes(node);
        eprintln!(
            "{} connected upstream {reconnects} times, with {resent} spooled batches in all not yet committed there",
            node.id
        );
    }
    log("done".into());
}
