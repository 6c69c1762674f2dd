//! Behaviour tests for the carrier: delivery, strategies, routing, close and stats.
//!
//! Nothing here sleeps "long enough": every wait polls a condition under a deadline, and
//! consumers that must stay busy are held on a gate the test opens explicitly.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::{Carrier, CarrierConfig, CarrierError, CarrierThreads, Consumer, Produced, Strategy};

/// Upper bound on any wait in these tests; generous because the machine may be loaded.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Item {
    producer: usize,
    seq: u64,
    key: u64,
}

fn item(producer: usize, seq: u64, key: u64) -> Item {
    Item { producer, seq, key }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    /// One `consume` call: the partition and the items it was handed.
    Bulk(usize, Vec<Item>),
    /// `on_stop` ran for this partition.
    Stop(usize),
}

type Log = Arc<Mutex<Vec<Event>>>;

/// Records every bulk and stop into a shared log. Optionally held on a gate at its first
/// bulk (until the test drops the gate's sender), and optionally slowed per bulk.
struct Recorder {
    partition: usize,
    log: Log,
    /// Taken at the first bulk; `recv` returns once the test drops its sender.
    gate: Option<Receiver<()>>,
    /// Tells the test which partition has entered its first `consume`.
    entered: Option<Sender<usize>>,
    pause_per_bulk: Duration,
}

impl Consumer<Item> for Recorder {
    fn consume(&mut self, items: &mut Vec<Item>) {
        if let Some(entered) = self.entered.take() {
            let _ = entered.try_send(self.partition);
        }
        if let Some(gate) = self.gate.take() {
            let _ = gate.recv();
        }
        if !self.pause_per_bulk.is_zero() {
            thread::sleep(self.pause_per_bulk);
        }
        let bulk = items.to_vec();
        items.clear();
        lock(&self.log).push(Event::Bulk(self.partition, bulk));
    }

    fn on_stop(&mut self) {
        lock(&self.log).push(Event::Stop(self.partition));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("test log lock poisoned")
}

fn config(
    partitions: usize,
    capacity: usize,
    strategy: Strategy,
    bulk_max: usize,
) -> CarrierConfig {
    CarrierConfig {
        name: "test".to_owned(),
        partitions,
        capacity,
        strategy,
        bulk_max,
    }
}

/// A started carrier whose consumers are [`Recorder`]s.
struct Harness {
    carrier: Carrier<Item>,
    /// Taken by [`Harness::join`].
    threads: Option<CarrierThreads>,
    log: Log,
    /// Dropping it opens every consumer's gate.
    gate: Option<Sender<()>>,
    /// One message per partition when its consumer first enters `consume`.
    entered: Receiver<usize>,
}

fn start(config: CarrierConfig, gated: bool, pause_per_bulk: Duration) -> Harness {
    let log: Log = Arc::default();
    let (gate_tx, gate_rx) = bounded::<()>(1);
    let (entered_tx, entered_rx) = bounded(config.partitions);
    let (carrier, threads) = Carrier::start(config, |partition| Recorder {
        partition,
        log: Arc::clone(&log),
        gate: gated.then(|| gate_rx.clone()),
        entered: Some(entered_tx.clone()),
        pause_per_bulk,
    })
    .expect("carrier starts");
    Harness {
        carrier,
        threads: Some(threads),
        log,
        gate: Some(gate_tx),
        entered: entered_rx,
    }
}

impl Harness {
    fn join(&mut self) {
        let threads = self.threads.take().expect("joined once");
        join_within_deadline(threads);
    }

    fn open_gate(&mut self) {
        self.gate = None;
    }

    /// Waits until `n` distinct partitions have entered their first `consume`.
    fn wait_entered(&self, n: usize) {
        let mut seen = HashSet::new();
        while seen.len() < n {
            let partition = self
                .entered
                .recv_timeout(DEADLINE)
                .expect("consumer entered consume before the deadline");
            seen.insert(partition);
        }
    }

    fn events(&self) -> Vec<Event> {
        lock(&self.log).clone()
    }

    /// Every consumed item with the partition that consumed it, in consumption order.
    fn consumed(&self) -> Vec<(usize, Item)> {
        self.events()
            .into_iter()
            .filter_map(|event| match event {
                Event::Bulk(partition, items) => Some((partition, items)),
                Event::Stop(_) => None,
            })
            .flat_map(|(partition, items)| items.into_iter().map(move |item| (partition, item)))
            .collect()
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Joins the consumer threads, failing the test instead of hanging if they do not stop.
fn join_within_deadline(threads: CarrierThreads) {
    let (done_tx, done_rx) = bounded(1);
    thread::spawn(move || {
        threads.join();
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(DEADLINE)
        .expect("consumer threads stopped before the deadline");
}

#[test]
fn blocking_never_loses_an_item_under_a_slow_consumer() {
    const PRODUCERS: usize = 4;
    const PER_PRODUCER: u64 = 500;
    const BULK_MAX: usize = 4;
    let mut h = start(
        config(2, 2, Strategy::Blocking, BULK_MAX),
        false,
        Duration::from_micros(50),
    );

    thread::scope(|scope| {
        for producer in 0..PRODUCERS {
            let carrier = h.carrier.clone();
            scope.spawn(move || {
                for seq in 0..PER_PRODUCER {
                    let key = seq % 7;
                    let produced = carrier.produce(key, item(producer, seq, key));
                    assert_eq!(produced, Produced::Sent);
                }
            });
        }
    });
    h.carrier.close();
    h.join();

    let consumed = h.consumed();
    let total = PRODUCERS * PER_PRODUCER as usize;
    assert_eq!(consumed.len(), total, "every item arrives");
    let unique: HashSet<_> = consumed.iter().map(|(_, i)| (i.producer, i.seq)).collect();
    assert_eq!(unique.len(), total, "no item arrives twice");

    // Per partition, each producer's items arrive in the order it sent them.
    let mut last_seq: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    for (partition, i) in &consumed {
        assert_eq!(*partition, h.carrier.partition_for(i.key), "routed by key");
        if let Some(previous) = last_seq.insert((*partition, i.producer), i.seq) {
            assert!(
                previous < i.seq,
                "FIFO broken: {previous} then {} on {partition}",
                i.seq
            );
        }
    }
    for event in h.events() {
        if let Event::Bulk(_, items) = event {
            assert!(
                (1..=BULK_MAX).contains(&items.len()),
                "bulk of {}",
                items.len()
            );
        }
    }

    let stats = h.carrier.stats();
    assert!(stats.waits > 0, "producers had to wait: {stats:?}");
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.produced, total as u64);
    assert_eq!(stats.consumed, total as u64);
    assert_eq!(stats.depth, 0);
}

#[test]
fn drop_if_full_counts_and_returns_every_drop() {
    const PRODUCERS: usize = 3;
    const ATTEMPTS: u64 = 100;
    let mut h = start(config(1, 4, Strategy::DropIfFull, 1), true, Duration::ZERO);

    let sent: Vec<Item> = thread::scope(|scope| {
        let workers: Vec<_> = (0..PRODUCERS)
            .map(|producer| {
                let carrier = h.carrier.clone();
                scope.spawn(move || {
                    let mut sent = Vec::new();
                    let mut dropped = 0u64;
                    for seq in 0..ATTEMPTS {
                        let attempt = item(producer, seq, seq);
                        match carrier.produce(seq, attempt) {
                            Produced::Sent => sent.push(attempt),
                            Produced::Dropped(back) => {
                                assert_eq!(back, attempt, "the dropped item is handed back");
                                dropped += 1;
                            }
                            Produced::Closed(_) => panic!("carrier closed unexpectedly"),
                        }
                    }
                    (sent, dropped)
                })
            })
            .collect();
        let mut sent = Vec::new();
        let mut dropped = 0;
        for worker in workers {
            let (s, d) = worker.join().expect("producer thread");
            sent.extend(s);
            dropped += d;
        }
        let stats = h.carrier.stats();
        assert_eq!(stats.dropped, dropped, "every drop counted");
        assert_eq!(stats.produced, sent.len() as u64);
        assert_eq!(stats.produced + stats.dropped, PRODUCERS as u64 * ATTEMPTS);
        assert!(
            stats.dropped > 0,
            "the gated consumer let the queue fill: {stats:?}"
        );
        assert_eq!(stats.waits, 0, "drop_if_full never waits");
        sent
    });

    h.open_gate();
    let produced = h.carrier.stats().produced;
    wait_until("consumed == produced", || {
        h.carrier.stats().consumed == produced
    });

    let mut consumed: Vec<Item> = h.consumed().into_iter().map(|(_, i)| i).collect();
    let mut sent = sent;
    consumed.sort();
    sent.sort();
    assert_eq!(consumed, sent, "exactly the sent items are consumed");

    h.carrier.close();
    h.join();
}

#[test]
fn same_key_goes_to_same_partition_and_keys_spread() {
    const PARTITIONS: usize = 8;
    let mut h = start(
        config(PARTITIONS, 64, Strategy::Blocking, 16),
        false,
        Duration::ZERO,
    );

    let mut per_partition = [0usize; PARTITIONS];
    for key in 0..8000u64 {
        let partition = h.carrier.partition_for(key);
        assert!(partition < PARTITIONS);
        assert_eq!(partition, h.carrier.partition_for(key), "deterministic");
        per_partition[partition] += 1;
    }
    for (partition, count) in per_partition.iter().enumerate() {
        assert!(
            (700..=1300).contains(count),
            "sequential keys spread: partition {partition} got {count} of 8000"
        );
    }

    for round in 0..3 {
        for key in 0..200u64 {
            assert!(h.carrier.produce(key, item(round, key, key)).is_sent());
        }
    }
    h.carrier.close();
    h.join();

    let mut seen_on: BTreeMap<u64, HashSet<usize>> = BTreeMap::new();
    for (partition, i) in h.consumed() {
        assert_eq!(partition, h.carrier.partition_for(i.key));
        seen_on.entry(i.key).or_default().insert(partition);
    }
    assert_eq!(seen_on.len(), 200);
    assert!(seen_on.values().all(|partitions| partitions.len() == 1));
    let used: HashSet<usize> = seen_on.values().flatten().copied().collect();
    assert_eq!(used.len(), PARTITIONS, "every consumer got some keys");
}

#[test]
fn close_drains_queued_items_then_stops_each_partition_once() {
    const PARTITIONS: usize = 2;
    let mut h = start(
        config(PARTITIONS, 16, Strategy::Blocking, 4),
        true,
        Duration::ZERO,
    );
    let other_handle = h.carrier.clone();

    for seq in 0..20u64 {
        let partition = (seq % 2) as usize;
        assert!(h.carrier.produce_to(partition, item(0, seq, seq)).is_sent());
    }
    h.wait_entered(PARTITIONS);
    assert!(
        h.carrier.stats().depth > 0,
        "items are still queued at close"
    );

    h.carrier.close();
    assert!(other_handle.is_closed());
    let late = item(1, 0, 0);
    assert_eq!(h.carrier.produce(0, late), Produced::Closed(late));
    assert_eq!(other_handle.produce_to(1, late), Produced::Closed(late));
    assert_eq!(
        other_handle.produce_timeout(1, late, Duration::from_secs(1)),
        Produced::Closed(late)
    );

    h.open_gate();
    h.join();

    let events = lock(&h.log).clone();
    for partition in 0..PARTITIONS {
        let mine: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e, Event::Bulk(p, _) | Event::Stop(p) if *p == partition))
            .collect();
        let stops = mine.iter().filter(|e| matches!(e, Event::Stop(_))).count();
        assert_eq!(stops, 1, "on_stop once on partition {partition}");
        assert!(
            matches!(mine.last(), Some(Event::Stop(_))),
            "on_stop runs last"
        );
        let items: usize = mine
            .iter()
            .map(|e| match e {
                Event::Bulk(_, items) => items.len(),
                Event::Stop(_) => 0,
            })
            .sum();
        assert_eq!(
            items, 10,
            "partition {partition} consumed all it had queued"
        );
    }
    let stats = other_handle.stats();
    assert_eq!((stats.produced, stats.consumed, stats.depth), (20, 20, 0));
}

#[test]
fn close_releases_a_producer_blocked_on_a_full_partition() {
    let mut h = start(config(1, 1, Strategy::Blocking, 1), true, Duration::ZERO);
    assert!(h.carrier.produce_to(0, item(0, 0, 0)).is_sent());
    h.wait_entered(1); // the consumer holds item 0 and waits on the gate
    assert!(h.carrier.produce_to(0, item(0, 1, 0)).is_sent()); // the queue is now full

    let (result_tx, result_rx) = bounded(1);
    let blocked = h.carrier.clone();
    thread::spawn(move || {
        let _ = result_tx.send(blocked.produce_to(0, item(0, 2, 0)));
    });
    wait_until("the producer to wait", || h.carrier.stats().waits == 1);
    assert!(result_rx.try_recv().is_err(), "still blocked before close");

    h.carrier.close();
    let result = result_rx
        .recv_timeout(DEADLINE)
        .expect("blocked producer released by close");
    assert_eq!(result, Produced::Closed(item(0, 2, 0)));

    h.open_gate();
    h.join();
    let consumed: Vec<u64> = h.consumed().iter().map(|(_, i)| i.seq).collect();
    assert_eq!(consumed, vec![0, 1]);
    assert_eq!(h.carrier.stats().produced, 2);
}

#[test]
fn produce_timeout_returns_the_item_after_the_deadline() {
    let mut h = start(config(1, 1, Strategy::Blocking, 1), true, Duration::ZERO);
    assert!(h.carrier.produce_to(0, item(0, 0, 0)).is_sent());
    h.wait_entered(1);
    assert!(h.carrier.produce_to(0, item(0, 1, 0)).is_sent());

    let timeout = Duration::from_millis(50);
    let started = Instant::now();
    let late = item(0, 2, 0);
    assert_eq!(
        h.carrier.produce_timeout(0, late, timeout),
        Produced::Dropped(late)
    );
    assert!(started.elapsed() >= timeout, "returned before the deadline");

    let stats = h.carrier.stats();
    assert_eq!(stats.timeouts, 1);
    assert_eq!(stats.dropped, 0, "a timeout is not a drop");
    assert_eq!(stats.waits, 1);
    assert_eq!(stats.produced, 2);

    h.open_gate();
    wait_until("queue empty", || h.carrier.stats().depth == 0);
    let next = item(0, 3, 0);
    assert!(h.carrier.produce_timeout(0, next, DEADLINE).is_sent());

    h.carrier.close();
    h.join();
    let consumed: Vec<u64> = h.consumed().iter().map(|(_, i)| i.seq).collect();
    assert_eq!(consumed, vec![0, 1, 3]);
}

#[test]
fn stats_report_depth_and_capacity() {
    let mut h = start(config(2, 8, Strategy::Blocking, 1), true, Duration::ZERO);
    assert_eq!(h.carrier.stats().capacity, 16);
    assert_eq!(h.carrier.stats().name, "test");

    assert!(h.carrier.produce_to(0, item(0, 0, 0)).is_sent());
    assert!(h.carrier.produce_to(1, item(1, 0, 0)).is_sent());
    h.wait_entered(2); // each consumer holds its first item

    for seq in 1..=5 {
        assert!(h.carrier.produce_to(0, item(0, seq, 0)).is_sent());
    }
    for seq in 1..=3 {
        assert!(h.carrier.produce_to(1, item(1, seq, 0)).is_sent());
    }
    let stats = h.carrier.stats();
    assert_eq!(stats.depth, 8);
    assert_eq!(stats.capacity, 16);
    assert_eq!(stats.produced, 10);
    assert_eq!(stats.consumed, 0);

    h.open_gate();
    wait_until("all consumed", || {
        let stats = h.carrier.stats();
        stats.consumed == 10 && stats.depth == 0
    });
    h.carrier.close();
    h.join();
}

#[test]
fn close_during_concurrent_produce_consumes_every_sent_item() {
    for round in 0..5 {
        let mut h = start(config(2, 4, Strategy::Blocking, 3), false, Duration::ZERO);
        let sent: u64 = thread::scope(|scope| {
            let producers: Vec<_> = (0..4)
                .map(|producer| {
                    let carrier = h.carrier.clone();
                    scope.spawn(move || {
                        let mut sent = 0u64;
                        for seq in 0.. {
                            match carrier.produce(seq, item(producer, seq, seq)) {
                                Produced::Sent => sent += 1,
                                Produced::Closed(_) => break,
                                Produced::Dropped(_) => panic!("blocking never drops"),
                            }
                        }
                        sent
                    })
                })
                .collect();
            wait_until("some traffic", || h.carrier.stats().produced >= 200);
            h.carrier.close();
            producers
                .into_iter()
                .map(|p| p.join().expect("producer thread"))
                .sum()
        });
        h.join();
        let stats = h.carrier.stats();
        assert_eq!(
            h.consumed().len() as u64,
            sent,
            "round {round}: every sent item consumed"
        );
        assert_eq!(
            (stats.produced, stats.consumed, stats.depth),
            (sent, sent, 0)
        );
    }
}

#[test]
fn dropping_every_handle_stops_the_consumers_after_draining() {
    let mut h = start(config(2, 8, Strategy::Blocking, 4), false, Duration::ZERO);
    for seq in 0..10u64 {
        assert!(h.carrier.produce(seq, item(0, seq, seq)).is_sent());
    }
    let log = Arc::clone(&h.log);
    let threads = h.threads.take().expect("not joined yet");
    drop(h);
    join_within_deadline(threads);

    let events = lock(&log).clone();
    let stops = events
        .iter()
        .filter(|e| matches!(e, Event::Stop(_)))
        .count();
    let items: usize = events
        .iter()
        .map(|e| match e {
            Event::Bulk(_, items) => items.len(),
            Event::Stop(_) => 0,
        })
        .sum();
    assert_eq!((stops, items), (2, 10));
}

#[test]
fn items_left_in_the_vec_are_cleared_between_calls() {
    let lens = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&lens);
    let (carrier, threads) = Carrier::start(config(1, 64, Strategy::Blocking, 8), move |_| {
        let lens = Arc::clone(&recorded);
        // Reads the bulk but leaves it in the Vec.
        move |items: &mut Vec<u64>| lock(&lens).push(items.len())
    })
    .expect("carrier starts");
    for value in 0..50u64 {
        assert!(carrier.produce(value, value).is_sent());
    }
    carrier.close();
    join_within_deadline(threads);

    let lens = lock(&lens).clone();
    assert!(
        lens.iter().all(|len| (1..=8).contains(len)),
        "bulks: {lens:?}"
    );
    assert_eq!(lens.iter().sum::<usize>(), 50);
}

/// Panics on its first bulk.
struct Exploding;

impl Consumer<u64> for Exploding {
    fn consume(&mut self, _items: &mut Vec<u64>) {
        panic!("consumer exploded on purpose");
    }
}

#[test]
fn a_panicked_consumer_closes_its_partition_and_join_still_returns() {
    let (carrier, threads) =
        Carrier::start(config(1, 4, Strategy::Blocking, 4), |_| Exploding).expect("carrier starts");
    let mut next = 0u64;
    wait_until("produce to report the dead partition", || {
        next += 1;
        matches!(carrier.produce_to(0, next), Produced::Closed(n) if n == next)
    });
    join_within_deadline(threads);
}

#[test]
fn a_panicked_consumer_is_reported_to_the_panic_hook_once() {
    let (tx, rx) = bounded::<crate::ConsumerPanic>(4);
    let hook: crate::PanicHook = Arc::new(move |report: &crate::ConsumerPanic| {
        let _ = tx.try_send(report.clone());
    });
    let (carrier, threads) = Carrier::start_with_panic_hook(
        config(2, 4, Strategy::Blocking, 4),
        |p| {
            let alive = p == 0;
            move |items: &mut Vec<u64>| {
                assert!(alive, "consumer exploded on purpose");
                items.clear();
            }
        },
        hook,
    )
    .expect("carrier starts");
    assert!(carrier.produce_to(1, 7).is_sent());
    let report = rx.recv_timeout(DEADLINE).expect("the hook is called");
    assert_eq!(report.carrier, "test");
    assert_eq!(report.partition, 1);
    assert!(report.message.contains("exploded on purpose"), "{report:?}");
    // The other partition keeps consuming; the dead one refuses.
    assert!(carrier.produce_to(0, 1).is_sent());
    wait_until("the dead partition to refuse", || {
        matches!(carrier.produce_to(1, 8), Produced::Closed(8))
    });
    carrier.close();
    join_within_deadline(threads);
    assert!(rx.try_recv().is_err(), "reported once");
}

#[test]
fn items_queued_behind_a_panicked_consumer_are_dropped_not_kept() {
    let (gate_tx, gate_rx) = bounded::<()>(0);
    let (carrier, threads) = Carrier::start(config(1, 4, Strategy::Blocking, 1), move |_| {
        let gate_rx = gate_rx.clone();
        move |_: &mut Vec<Sender<()>>| {
            // Held until the test has queued more behind this item.
            let _ = gate_rx.recv();
            panic!("consumer exploded on purpose");
        }
    })
    .expect("carrier starts");
    let mut waiting: Vec<Receiver<()>> = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = bounded::<()>(1);
        assert!(carrier.produce_to(0, tx).is_sent());
        waiting.push(rx);
    }
    gate_tx.send(()).expect("the consumer is waiting");
    // Each item's sender is dropped: nobody waits on a reply forever.
    for rx in &waiting {
        assert_eq!(
            rx.recv_timeout(DEADLINE),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
    }
    let (tx, _rx) = bounded::<()>(1);
    assert!(matches!(carrier.produce_to(0, tx), Produced::Closed(_)));
    join_within_deadline(threads);
}

#[test]
fn zero_sizes_are_rejected_by_name() {
    for (field, cfg) in [
        ("partitions", config(0, 1, Strategy::Blocking, 1)),
        ("capacity", config(1, 0, Strategy::Blocking, 1)),
        ("bulk_max", config(1, 1, Strategy::Blocking, 0)),
    ] {
        match Carrier::<u64>::start(cfg, |_| |_: &mut Vec<u64>| {}) {
            Err(err @ CarrierError::InvalidConfig { field: f, .. }) => {
                assert_eq!(f, field);
                assert_eq!(
                    err.to_string(),
                    format!("carrier `test`: `{field}` must be at least 1")
                );
            }
            other => panic!("expected InvalidConfig for {field}, got {other:?}"),
        }
    }
}

#[test]
fn strategy_round_trips_through_its_name() {
    for strategy in [Strategy::Blocking, Strategy::DropIfFull] {
        assert_eq!(strategy.to_string().parse::<Strategy>(), Ok(strategy));
    }
    assert_eq!("drop_if_full".parse::<Strategy>(), Ok(Strategy::DropIfFull));
    let err = "drop-if-full"
        .parse::<Strategy>()
        .expect_err("not a strategy name");
    assert!(err.to_string().contains("`drop-if-full`"), "{err}");
    assert!(
        err.to_string().contains("`blocking` or `drop_if_full`"),
        "{err}"
    );
}

#[test]
fn room_is_counted_against_half_of_every_partition() {
    // Capacity 8: room for `items` while the fullest partition holds at
    // most 4 - items.
    let mut h = start(config(2, 8, Strategy::Blocking, 1), true, Duration::ZERO);
    assert!(h.carrier.has_room(4));
    assert!(!h.carrier.has_room(5));
    // Each consumer takes one item and is held at the gate with it.
    assert_eq!(h.carrier.produce_to(0, item(0, 0, 0)), Produced::Sent);
    assert_eq!(h.carrier.produce_to(1, item(0, 1, 1)), Produced::Sent);
    h.wait_entered(2);
    for seq in 2..4 {
        assert_eq!(h.carrier.produce_to(1, item(0, seq, 1)), Produced::Sent);
    }
    // Partition 1 holds 2 queued items; partition 0 none.
    assert!(h.carrier.has_room(2));
    assert!(!h.carrier.has_room(3));
    assert_eq!(h.carrier.produce_to(1, item(0, 4, 1)), Produced::Sent);
    assert!(h.carrier.has_room(1));
    assert!(!h.carrier.has_room(2));
    h.open_gate();
    wait_until("both partitions drained", || h.carrier.has_room(4));
    h.carrier.close();
    h.join();
    assert_eq!(h.consumed().len(), 5);
}
