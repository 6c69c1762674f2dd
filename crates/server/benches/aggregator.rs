//! Aggregator ingest per shard: validated samples through the ingest carrier
//! into one shard's delta map (histograms and counters over 1 000 series),
//! measured until the shard has consumed everything submitted.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_model::{Kind, SampleValue, SeriesKey};
use strata_server::context::Context;
use strata_server::core::pipeline::{Pipeline, PipelineSettings};
use strata_server::core::shard::SampleItem;
use strata_store::{MemoryStore, StoreOptions};

fn samples(n: usize, series: &[Arc<SeriesKey>]) -> Vec<SampleItem> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let s = &series[i % series.len()];
            let histogram = s.metric() == "lat";
            SampleItem {
                series: s.clone(),
                kind: if histogram {
                    Kind::Histogram
                } else {
                    Kind::Counter
                },
                bucket_ms: 0,
                ts_ms: 0,
                value: SampleValue::Number(if histogram {
                    1.0 + (x % 400_000) as f64 / 1000.0
                } else {
                    1.0
                }),
                apdex_threshold: 0.0,
            }
        })
        .collect()
}

fn aggregator(c: &mut Criterion) {
    let settings = PipelineSettings {
        carrier_capacity: 1024,
        carrier_bulk_max: 64,
        ..PipelineSettings::standalone()
    };
    let store = Arc::new(MemoryStore::new(StoreOptions::default()));
    let ctx = Arc::new(Context::new("bench", store));
    let (pipeline, threads) = Pipeline::start(settings, ctx).expect("pipeline starts");
    let series: Vec<Arc<SeriesKey>> = (0..1_000)
        .map(|i| {
            let metric = if i % 2 == 0 { "lat" } else { "req" };
            Arc::new(SeriesKey::new(metric, [("s".to_string(), format!("{i}"))]).expect("valid"))
        })
        .collect();
    let batch = samples(10_000, &series);
    let mut g = c.benchmark_group("aggregator");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("one_shard_10000_samples", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                // Requests of 1 000 samples, as the ingest APIs submit them.
                for chunk in batch.chunks(1_000) {
                    pipeline
                        .submit(black_box(chunk.to_vec()), Vec::new(), None)
                        .expect("running");
                }
            }
            let stats = pipeline.carrier_stats();
            while pipeline.carrier_stats().consumed < stats.produced {
                std::hint::spin_loop();
            }
            start.elapsed()
        })
    });
    g.finish();
    threads.stop();
}

criterion_group!(benches, aggregator);
criterion_main!(benches);
