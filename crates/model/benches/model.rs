//! Model benchmarks: recording samples and merging states per kind, and the storage codec
//! on both histogram kinds.
//!
//! Inputs are generated deterministically (xorshift) so runs are comparable: histogram
//! latencies are log-normal-ish (median ~40 ms, long tail to seconds), like request
//! latencies. Throughput is in elements: samples for `record`, states for `merge`,
//! `encode` and `decode`.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use strata_model::bench_inputs::XorShift;
use strata_model::{Kind, SampleValue, State, StateParams};

/// Samples per simulated minute of one series.
const SAMPLES: usize = 10_000;

/// `SAMPLES` sample values suitable for `kind`.
fn samples(kind: Kind, seed: u64) -> Vec<SampleValue> {
    let mut rng = XorShift(seed | 1);
    (0..SAMPLES)
        .map(|_| match kind {
            Kind::Counter => SampleValue::Number((rng.next_u64() % 10) as f64),
            Kind::Percent => SampleValue::Flag(rng.unit() < 0.97),
            Kind::Sum | Kind::Avg | Kind::Max | Kind::Min | Kind::Latest => {
                SampleValue::Number(rng.normal() * 100.0)
            }
            Kind::Apdex | Kind::Histogram | Kind::ExpHistogram => {
                SampleValue::Number(rng.latency_ms())
            }
        })
        .collect()
}

fn record_all(kind: Kind, values: &[SampleValue]) -> State {
    let mut state = State::empty(kind, &StateParams::default());
    for (i, v) in values.iter().enumerate() {
        // `i` as timestamp keeps `latest` replacing, its worst case.
        state
            .record(*v, i as i64, "bench")
            .expect("generated samples are valid");
    }
    state
}

fn bench_record(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(SAMPLES as u64));
    for kind in Kind::ALL {
        let values = samples(kind, 1);
        group.bench_with_input(BenchmarkId::from_parameter(kind), &values, |b, values| {
            b.iter(|| black_box(record_all(kind, values)));
        });
    }
    group.finish();
}

fn bench_merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("merge");
    group.throughput(Throughput::Elements(1));
    for kind in Kind::ALL {
        // Two one-minute states of `SAMPLES` samples each, as from two regions.
        let a = record_all(kind, &samples(kind, 1));
        let b = record_all(kind, &samples(kind, 2));
        group.bench_with_input(
            BenchmarkId::from_parameter(kind),
            &(a, b),
            |bench, (a, b)| {
                bench.iter_batched_ref(
                    || a.clone(),
                    |target| target.merge(black_box(b)).expect("same kind and params"),
                    BatchSize::SmallInput,
                );
            },
        );
    }
    group.finish();
}

fn bench_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    for kind in [Kind::Histogram, Kind::ExpHistogram] {
        let hist = record_all(kind, &samples(kind, 1));
        let bytes = hist.to_bytes();
        group.bench_function(format!("encode/{kind}"), |b| {
            let mut out = Vec::with_capacity(bytes.len());
            b.iter(|| {
                out.clear();
                black_box(&hist).encode(&mut out);
                black_box(out.len())
            });
        });
        group.bench_function(format!("decode/{kind}"), |b| {
            b.iter(|| State::decode(black_box(&bytes)).expect("valid encoding"));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_record, bench_merge, bench_codec);
criterion_main!(benches);
