//! The store's commit path, what the global tier spends most of its time in:
//! one flush of increments (one per series, half histograms of realistic
//! latencies, half counters) committed into a store that already holds
//! their buckets, on both backends.
//!
//! `memory` and `redb`: each iteration commits the same flush again into the
//! same minute, so the buckets grow as they would over a minute of flushes
//! (each series' open minute merges it alone). `memory_next_minute` and
//! `redb_next_minute`: each iteration commits it into the next minute, so
//! every series folds its previous minute into its hour and day first —
//! what the first flush of every minute costs. Throughput is in increments.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use strata_model::bench_inputs::XorShift;
use strata_model::{Increment, Kind, SampleValue, SeriesKey, State, StateParams};
use strata_store::{Commit, MemoryStore, RedbStore, Store, StoreOptions};

/// Series per flush, unless `STRATA_COMMIT_BENCH_SERIES` says otherwise
/// (200 000 is what the global tier holds at `strata bench --edges 2
/// --series 100000`).
const SERIES: usize = 20_000;

fn series() -> usize {
    std::env::var("STRATA_COMMIT_BENCH_SERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SERIES)
}
/// Observations in each histogram increment (about a second of one series).
const OBSERVATIONS: usize = 20;
/// A minute start well inside one hour and one day.
const MINUTE_MS: i64 = 1_763_800_020_000;

/// One flush: an increment per series, even series histograms, odd counters.
fn flush(series: usize) -> Vec<Increment> {
    let mut rng = XorShift(0x5eed);
    let params = StateParams::default();
    (0..series)
        .map(|i| {
            let histogram = i % 2 == 0;
            let metric = if histogram { "latency_ms" } else { "requests" };
            let labels = [("series".to_owned(), i.to_string())];
            let series = Arc::new(SeriesKey::new(metric, labels).expect("valid key"));
            let state = if histogram {
                let mut state = State::empty(Kind::Histogram, &params);
                for _ in 0..OBSERVATIONS {
                    let value = SampleValue::Number(rng.latency_ms());
                    state.record(value, MINUTE_MS, "").expect("in range");
                }
                state
            } else {
                State::Counter(OBSERVATIONS as u64)
            };
            Increment {
                series,
                bucket_ms: MINUTE_MS,
                state,
            }
        })
        .collect()
}

fn commit(store: &dyn Store, increments: &[Increment]) {
    let outcome = store
        .commit(Commit {
            increments,
            progress: &[],
            cursors: &[],
            spool_watermark_ms: None,
            now_ms: MINUTE_MS,
        })
        .expect("commit");
    assert!(outcome.merge_errors.is_empty());
}

/// `increments` moved to the minute after the one they were last committed
/// into (`minute` counts them).
fn next_minute(increments: &[Increment], minute: &mut i64) -> Vec<Increment> {
    *minute += 60_000;
    let mut moved = increments.to_vec();
    for inc in &mut moved {
        inc.bucket_ms = *minute;
    }
    moved
}

fn bench_commit(c: &mut Criterion) {
    let increments = flush(series());
    let mut group = c.benchmark_group("commit");
    group.throughput(Throughput::Elements(increments.len() as u64));
    group.sample_size(10);

    let memory = MemoryStore::new(StoreOptions::default());
    commit(&memory, &increments);
    group.bench_function("memory", |b| {
        b.iter(|| commit(black_box(&memory), &increments))
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let redb = RedbStore::open(dir.path(), StoreOptions::default()).expect("open redb");
    commit(&redb, &increments);
    group.bench_function("redb", |b| b.iter(|| commit(black_box(&redb), &increments)));

    let mut minute = MINUTE_MS;
    group.bench_function("memory_next_minute", |b| {
        b.iter_batched(
            || next_minute(&increments, &mut minute),
            |moved| commit(black_box(&memory), &moved),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("redb_next_minute", |b| {
        b.iter_batched(
            || next_minute(&increments, &mut minute),
            |moved| commit(black_box(&redb), &moved),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_commit);
criterion_main!(benches);
