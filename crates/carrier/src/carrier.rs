//! The producing side: [`Carrier`], its [`Produced`] outcome and [`CarrierStats`].
//!
//! # Closing while producers are alive
//!
//! Every [`Carrier`] clone shares one set of channel senders, so closing cannot rely on the
//! senders being dropped. Instead:
//!
//! * `close` sets the `closed` flag and drops the only sender of a close channel that
//!   never carries a message. Its disconnection wakes consumers waiting on an empty queue
//!   and producers waiting on a full one.
//! * A producer announces itself in its partition's `in_flight` counter *before* it checks
//!   `closed`, and leaves only once its item is queued or handed back. A producer blocked
//!   in a full partition waits on "space or close" (a [`Select`] over both), so close
//!   releases it with [`Produced::Closed`] even when its consumer makes no progress: it
//!   cannot hold the shutdown up.
//! * After the close signal a consumer keeps draining until its partition has no producer
//!   in flight, then drains once more and calls `on_stop`. Because the counter is raised
//!   before the flag is read (both `SeqCst`), a producer either sees `closed` and hands its
//!   item back, or is seen by the consumer and its item is consumed: an item reported
//!   [`Produced::Sent`] is always consumed before `on_stop`.

use std::fmt;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{
    Receiver, RecvTimeoutError, Select, SendError, Sender, TrySendError, bounded,
};

use crate::config::{CarrierConfig, CarrierError, Strategy};
use crate::consumer::{
    CarrierThreads, Consumer, ConsumerPanic, PanicHook, PartitionWorker, panic_message,
};

/// The outcome of one `produce` call. Every variant but `Sent` gives the item back.
#[must_use = "a dropped or closed item is handed back and would otherwise be lost silently"]
#[derive(Debug, PartialEq, Eq)]
pub enum Produced<T> {
    /// The item is queued and will be consumed.
    Sent,
    /// The partition was full: under [`Strategy::DropIfFull`] (counted in `dropped`), or
    /// when [`Carrier::produce_timeout`]'s deadline passed (counted in `timeouts`).
    Dropped(T),
    /// The carrier is closed, or its consumer thread for this partition has died.
    Closed(T),
}

impl<T> Produced<T> {
    /// True when the item was queued.
    pub fn is_sent(&self) -> bool {
        matches!(self, Produced::Sent)
    }

    /// The item handed back, if it was not queued.
    pub fn into_inner(self) -> Option<T> {
        match self {
            Produced::Sent => None,
            Produced::Dropped(item) | Produced::Closed(item) => Some(item),
        }
    }
}

/// A point-in-time snapshot of a carrier's self-metrics, summed over its partitions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CarrierStats {
    /// The carrier's configured name, so snapshots can be reported side by side.
    pub name: String,
    /// Items queued (calls that returned [`Produced::Sent`]).
    pub produced: u64,
    /// Items handed to consumers whose `consume` call has returned.
    pub consumed: u64,
    /// Times a producer found its partition full and had to wait for space.
    pub waits: u64,
    /// Items refused because a [`Strategy::DropIfFull`] partition was full.
    pub dropped: u64,
    /// [`Carrier::produce_timeout`] calls whose deadline passed; not counted in `dropped`.
    pub timeouts: u64,
    /// Items queued now and not yet taken by a consumer, all partitions.
    pub depth: u64,
    /// Items all partitions can hold together.
    pub capacity: u64,
}

/// Uninhabited message type of the close channel: it only ever disconnects.
pub(crate) enum Never {}

/// Keeps a value on its own cache lines, so counters written by different threads do
/// not slow each other down.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Padded<T>(T);

impl<T> Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// One partition's counters, shared by its producers and its consumer thread; aligned so
/// two partitions' counters never share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct LaneCounters {
    /// Producers currently inside a `produce` call for this partition; the consumer's
    /// final drain waits for it to reach zero (see the module docs).
    pub(crate) in_flight: AtomicUsize,
    /// Set once the partition's consumer panicked: producers get `Closed`, and the
    /// consumer thread drops what is queued (see `start_with_panic_hook`).
    pub(crate) dead: AtomicBool,
    pub(crate) produced: AtomicU64,
    pub(crate) waits: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    /// Written only by the consumer thread, so it sits apart from the producer counters.
    pub(crate) consumed: Padded<AtomicU64>,
}

/// One partition as producers see it.
struct Lane<T> {
    /// The bounded queue; its capacity is the backpressure bound.
    tx: Sender<T>,
    /// Shared with the partition's consumer thread.
    counters: Arc<LaneCounters>,
}

/// State behind every clone of a [`Carrier`].
struct Shared<T> {
    name: String,
    strategy: Strategy,
    /// Per partition, kept for `stats().capacity`.
    capacity: usize,
    /// Set once by `close`; producers check it after announcing themselves.
    closed: AtomicBool,
    /// The only sender of the close channel; `close` drops it to signal every partition.
    close_tx: Mutex<Option<Sender<Never>>>,
    /// Waited on by producers blocked on a full partition, to be released by `close`.
    close_rx: Receiver<Never>,
    lanes: Box<[Lane<T>]>,
}

/// A cheap, cloneable producer handle onto a set of bounded partitions, each drained by
/// its own consumer thread.
pub struct Carrier<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Carrier<T> {
    fn clone(&self) -> Self {
        Carrier {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> fmt::Debug for Carrier<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Carrier")
            .field("name", &self.shared.name)
            .field("partitions", &self.shared.lanes.len())
            .field("capacity", &self.shared.capacity)
            .field("strategy", &self.shared.strategy)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Marks a producer as inside `produce` for one partition, for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a partition thread keeps to empty its queue after its consumer panicked.
struct Leftovers<T> {
    rx: Receiver<T>,
    counters: Arc<LaneCounters>,
}

impl<T> Leftovers<T> {
    /// Refuses new items and drops every queued one, including those of producers
    /// already inside `produce` (the same handshake as the final drain of `close`).
    fn drop_all(self) {
        self.counters.dead.store(true, Ordering::SeqCst);
        loop {
            let quiet = self.counters.in_flight.load(Ordering::SeqCst) == 0;
            while self.rx.try_recv().is_ok() {}
            if quiet {
                return;
            }
            match self.rx.recv_timeout(Duration::from_millis(1)) {
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// How a wait for space in a full partition ended.
enum Waited<T> {
    Sent,
    Closed(T),
    TimedOut(T),
}

impl<T: Send + 'static> Carrier<T> {
    /// Spawns one named OS thread per partition ("{name}-{i}") running `make_consumer(i)`'s
    /// consumer.
    ///
    /// Fails if `partitions`, `capacity` or `bulk_max` is zero, or if a thread cannot be
    /// spawned (threads already started are then closed and joined first).
    ///
    /// A consumer that panics stops its partition, logged; use
    /// [`Carrier::start_with_panic_hook`] to be told.
    pub fn start<C: Consumer<T>>(
        config: CarrierConfig,
        make_consumer: impl FnMut(usize) -> C,
    ) -> Result<(Carrier<T>, CarrierThreads), CarrierError> {
        Self::start_with_panic_hook(config, make_consumer, Arc::new(|_: &ConsumerPanic| {}))
    }

    /// [`Carrier::start`], calling `on_panic` when a consumer panics.
    ///
    /// A consumer that panics is not called again: the panic is caught and
    /// logged with `tracing::error!`, `on_panic` runs on the partition's
    /// thread, and the partition stops. From then on producers get
    /// [`Produced::Closed`] instead of waiting on it forever, and the items
    /// still queued (and any a producer already inside `produce` adds) are
    /// dropped rather than kept, so whatever they hold (reply channels, say)
    /// is released. Whoever owns the process decides, in `on_panic`, whether
    /// it goes on without that partition or stops.
    pub fn start_with_panic_hook<C: Consumer<T>>(
        config: CarrierConfig,
        mut make_consumer: impl FnMut(usize) -> C,
        on_panic: PanicHook,
    ) -> Result<(Carrier<T>, CarrierThreads), CarrierError> {
        config.validate()?;
        let (close_tx, close_rx) = bounded::<Never>(0);
        let mut lanes = Vec::with_capacity(config.partitions);
        let mut workers = Vec::with_capacity(config.partitions);
        for _ in 0..config.partitions {
            let (tx, rx) = bounded(config.capacity);
            let counters = Arc::new(LaneCounters::default());
            workers.push((rx, Arc::clone(&counters)));
            lanes.push(Lane { tx, counters });
        }
        let carrier = Carrier {
            shared: Arc::new(Shared {
                name: config.name.clone(),
                strategy: config.strategy,
                capacity: config.capacity,
                closed: AtomicBool::new(false),
                close_tx: Mutex::new(Some(close_tx)),
                close_rx: close_rx.clone(),
                lanes: lanes.into_boxed_slice(),
            }),
        };

        let mut threads = CarrierThreads {
            name: config.name.clone(),
            handles: Vec::with_capacity(config.partitions),
        };
        for (partition, (rx, counters)) in workers.into_iter().enumerate() {
            let leftovers = Leftovers {
                rx: rx.clone(),
                counters: Arc::clone(&counters),
            };
            let worker = PartitionWorker {
                consumer: make_consumer(partition),
                rx,
                close_rx: close_rx.clone(),
                counters: Arc::clone(&counters),
                bulk_max: config.bulk_max,
            };
            let thread = format!("{}-{partition}", config.name);
            let name = config.name.clone();
            let on_panic = Arc::clone(&on_panic);
            let spawned = std::thread::Builder::new()
                .name(thread.clone())
                .spawn(move || {
                    tracing::debug!(carrier = %name, partition, "carrier consumer started");
                    // The worker (and its queue) is dropped while unwinding.
                    match std::panic::catch_unwind(AssertUnwindSafe(move || worker.run())) {
                        Ok(()) => {
                            tracing::debug!(carrier = %name, partition, "carrier consumer stopped");
                        }
                        Err(payload) => {
                            let report = ConsumerPanic {
                                carrier: name,
                                partition,
                                message: panic_message(payload.as_ref()).to_owned(),
                            };
                            tracing::error!(
                                carrier = %report.carrier,
                                partition,
                                panic = %report.message,
                                "carrier consumer panicked: its partition stopped"
                            );
                            on_panic(&report);
                            leftovers.drop_all();
                        }
                    }
                });
            match spawned {
                Ok(handle) => threads.handles.push(handle),
                Err(source) => {
                    carrier.close();
                    threads.join();
                    return Err(CarrierError::Spawn { thread, source });
                }
            }
        }
        tracing::debug!(
            carrier = %config.name,
            partitions = config.partitions,
            capacity = config.capacity,
            strategy = %config.strategy,
            bulk_max = config.bulk_max,
            "carrier started"
        );
        Ok((carrier, threads))
    }
}

impl<T> Carrier<T> {
    /// The configured name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configured strategy.
    pub fn strategy(&self) -> Strategy {
        self.shared.strategy
    }

    /// Number of partitions (and consumer threads).
    pub fn partitions(&self) -> usize {
        self.shared.lanes.len()
    }

    /// True once [`close`](Carrier::close) has been called on any clone.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// The partition for a key hash: the hash is mixed first (so sequential or low-entropy
    /// hashes still spread) and then reduced modulo the partition count. The same hash
    /// always maps to the same partition.
    pub fn partition_for(&self, key_hash: u64) -> usize {
        let partitions = self.shared.lanes.len() as u64;
        // Widening both ways: the result is < partitions, which came from a usize.
        (mix64(key_hash) % partitions) as usize
    }

    /// Whether every partition has room for `items` more with half its
    /// capacity still free after them: a producer that checks it, then
    /// produces at most `items` to each partition, does not wait for space
    /// unless other producers fill half the capacity in between.
    pub fn has_room(&self, items: usize) -> bool {
        let half = self.shared.capacity / 2;
        self.shared
            .lanes
            .iter()
            .all(|lane| lane.tx.len().saturating_add(items) <= half)
    }

    /// Queues `item` on the partition chosen by [`partition_for`](Carrier::partition_for).
    pub fn produce(&self, key_hash: u64, item: T) -> Produced<T> {
        self.produce_to(self.partition_for(key_hash), item)
    }

    /// Queues `item` on a given partition (an index past the end wraps around).
    ///
    /// When the partition is full, [`Strategy::Blocking`] counts one `wait` and blocks
    /// until there is space or the carrier is closed; [`Strategy::DropIfFull`] counts one
    /// `dropped` and hands the item back as [`Produced::Dropped`].
    pub fn produce_to(&self, partition: usize, item: T) -> Produced<T> {
        let lane = self.lane(partition);
        let _in_flight = InFlight::enter(&lane.counters.in_flight);
        let item = match self.try_produce(lane, item) {
            Ok(done) => return done,
            Err(full) => full,
        };
        match self.shared.strategy {
            Strategy::DropIfFull => {
                lane.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Produced::Dropped(item)
            }
            Strategy::Blocking => {
                lane.counters.waits.fetch_add(1, Ordering::Relaxed);
                match self.wait_send(lane, item, None) {
                    Waited::Sent => self.sent(lane),
                    Waited::Closed(item) | Waited::TimedOut(item) => Produced::Closed(item),
                }
            }
        }
    }

    /// Queues `item` on a given partition, waiting at most `timeout` for space whatever the
    /// carrier's strategy.
    ///
    /// Waiting counts one `wait`; a passed deadline counts one `timeout` (not a drop) and
    /// hands the item back as [`Produced::Dropped`].
    pub fn produce_timeout(&self, partition: usize, item: T, timeout: Duration) -> Produced<T> {
        let lane = self.lane(partition);
        let _in_flight = InFlight::enter(&lane.counters.in_flight);
        let item = match self.try_produce(lane, item) {
            Ok(done) => return done,
            Err(full) => full,
        };
        lane.counters.waits.fetch_add(1, Ordering::Relaxed);
        // A deadline too far away to represent is no deadline.
        let deadline = Instant::now().checked_add(timeout);
        match self.wait_send(lane, item, deadline) {
            Waited::Sent => self.sent(lane),
            Waited::Closed(item) => Produced::Closed(item),
            Waited::TimedOut(item) => {
                lane.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                Produced::Dropped(item)
            }
        }
    }

    /// A snapshot of the counters, queue depth and capacity, summed over all partitions.
    pub fn stats(&self) -> CarrierStats {
        let shared = &self.shared;
        let mut stats = CarrierStats {
            name: shared.name.clone(),
            capacity: (shared.capacity as u64).saturating_mul(shared.lanes.len() as u64),
            ..CarrierStats::default()
        };
        for lane in shared.lanes.iter() {
            let c = &lane.counters;
            stats.produced += c.produced.load(Ordering::Relaxed);
            stats.consumed += c.consumed.load(Ordering::Relaxed);
            stats.waits += c.waits.load(Ordering::Relaxed);
            stats.dropped += c.dropped.load(Ordering::Relaxed);
            stats.timeouts += c.timeouts.load(Ordering::Relaxed);
            stats.depth += lane.tx.len() as u64;
        }
        stats
    }

    /// Closes the carrier: subsequent produce returns Closed; consumers drain what is
    /// queued, call on_stop, and exit.
    ///
    /// Idempotent, and effective for every clone. Producers blocked on a full partition
    /// return [`Produced::Closed`] (or [`Produced::Sent`] if space frees up first, in which
    /// case the item is still consumed). Follow with [`CarrierThreads::join`] to wait for
    /// the drain to finish.
    pub fn close(&self) {
        let shared = &self.shared;
        if shared.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let close_tx = shared
            .close_tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(close_tx);
        tracing::debug!(carrier = %shared.name, "carrier closed");
    }

    fn lane(&self, partition: usize) -> &Lane<T> {
        let lanes = &self.shared.lanes;
        &lanes[partition % lanes.len()]
    }

    /// The fast path of every produce: `Err(item)` when the partition is full.
    /// The caller holds the lane's in-flight guard.
    fn try_produce(&self, lane: &Lane<T>, item: T) -> Result<Produced<T>, T> {
        if self.is_closed() || lane.counters.dead.load(Ordering::SeqCst) {
            return Ok(Produced::Closed(item));
        }
        match lane.tx.try_send(item) {
            Ok(()) => Ok(self.sent(lane)),
            Err(TrySendError::Disconnected(item)) => Ok(Produced::Closed(item)),
            Err(TrySendError::Full(item)) => Err(item),
        }
    }

    fn sent(&self, lane: &Lane<T>) -> Produced<T> {
        lane.counters.produced.fetch_add(1, Ordering::Relaxed);
        Produced::Sent
    }

    /// Blocks until the partition has space, the carrier closes, or `deadline` passes.
    fn wait_send(&self, lane: &Lane<T>, item: T, deadline: Option<Instant>) -> Waited<T> {
        let close_rx = &self.shared.close_rx;
        let mut select = Select::new();
        let send_index = select.send(&lane.tx);
        select.recv(close_rx);
        let operation = match deadline {
            None => select.select(),
            Some(deadline) => match select.select_deadline(deadline) {
                Ok(operation) => operation,
                Err(_) => return Waited::TimedOut(item),
            },
        };
        if operation.index() == send_index {
            match operation.send(&lane.tx, item) {
                Ok(()) => Waited::Sent,
                // The consumer thread is gone (it panicked): nothing will drain this queue.
                Err(SendError(item)) => Waited::Closed(item),
            }
        } else {
            // The close channel only ever disconnects; completing the operation is required.
            let _closed = operation.recv(close_rx);
            Waited::Closed(item)
        }
    }
}

/// SplitMix64's finalizer: a cheap bijection that spreads every input bit over the output.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
