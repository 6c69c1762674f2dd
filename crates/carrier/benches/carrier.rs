//! Throughput of the carrier: 1 and 2 producer threads into a 2-partition carrier whose
//! consumers only sum what they get, for both strategies.
//!
//! One iteration moves `ITEMS` small structs: the producers are started, produce their
//! share, and the clock stops when the consumers have caught up with everything that was
//! queued. Under `drop_if_full` the figure counts attempts, so it includes the drops.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use strata_carrier::{Carrier, CarrierConfig, CarrierThreads, Consumer, Produced, Strategy};

/// Items moved per iteration, split evenly between the producers.
const ITEMS: u64 = 20_000;

/// About the size of what the aggregator hands over per series.
#[derive(Clone, Copy)]
struct Sample {
    series: u64,
    ts_ms: i64,
    value: f64,
}

/// Sums what it is given so the work cannot be optimized away.
struct Summing {
    sink: Arc<AtomicU64>,
}

impl Consumer<Sample> for Summing {
    fn consume(&mut self, items: &mut Vec<Sample>) {
        let mut acc = 0u64;
        for sample in items.drain(..) {
            acc = acc
                .wrapping_add(sample.series)
                .wrapping_add(sample.ts_ms as u64)
                .wrapping_add(sample.value as u64);
        }
        self.sink.fetch_add(black_box(acc), Ordering::Relaxed);
    }
}

fn start(strategy: Strategy) -> (Carrier<Sample>, CarrierThreads) {
    let sink = Arc::new(AtomicU64::new(0));
    let config = CarrierConfig {
        name: format!("bench-{strategy}"),
        partitions: 2,
        capacity: 1024,
        strategy,
        bulk_max: 128,
    };
    match Carrier::start(config, |_| Summing {
        sink: Arc::clone(&sink),
    }) {
        Ok(started) => started,
        Err(err) => panic!("cannot start the bench carrier: {err}"),
    }
}

/// Runs `iters` rounds of `producers` threads moving `ITEMS` in total; returns the time
/// until every queued item was consumed.
fn run(carrier: &Carrier<Sample>, producers: u64, iters: u64) -> Duration {
    let per_producer = ITEMS / producers;
    let started = Instant::now();
    for _ in 0..iters {
        std::thread::scope(|scope| {
            for producer in 0..producers {
                let carrier = carrier.clone();
                scope.spawn(move || {
                    let base = producer * per_producer;
                    for i in base..base + per_producer {
                        let sample = Sample {
                            series: i,
                            ts_ms: i as i64,
                            value: 1.0,
                        };
                        match carrier.produce(i, sample) {
                            Produced::Sent | Produced::Dropped(_) => {}
                            Produced::Closed(_) => panic!("bench carrier closed"),
                        }
                    }
                });
            }
        });
        loop {
            let stats = carrier.stats();
            if stats.consumed == stats.produced {
                break;
            }
            std::thread::yield_now();
        }
    }
    started.elapsed()
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("carrier");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    for strategy in [Strategy::Blocking, Strategy::DropIfFull] {
        let (carrier, threads) = start(strategy);
        for producers in [1u64, 2] {
            group.bench_with_input(
                BenchmarkId::new(strategy.to_string(), format!("{producers}_producers")),
                &producers,
                |b, &producers| b.iter_custom(|iters| run(&carrier, producers, iters)),
            );
        }
        carrier.close();
        threads.join();
    }
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
