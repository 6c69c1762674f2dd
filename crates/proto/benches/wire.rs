//! Federation wire cost: grouping increments into a batch and back, and the
//! protobuf bytes of a batch, for a realistic mix (half histograms with a
//! minute of latency samples, half counters).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use strata_model::{Increment, Kind, SampleValue, SeriesKey, State, StateParams};

fn increments(series: usize) -> Vec<Increment> {
    let params = StateParams::default();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..series)
        .map(|i| {
            let key = SeriesKey::new(
                if i % 2 == 0 {
                    "http_latency_ms"
                } else {
                    "http_requests"
                },
                [
                    ("service".to_string(), format!("svc{}", i % 50)),
                    ("instance".to_string(), format!("i{i}")),
                ],
            )
            .expect("valid series");
            let kind = if i % 2 == 0 {
                Kind::Histogram
            } else {
                Kind::Counter
            };
            let mut state = State::empty(kind, &params);
            for _ in 0..200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = if kind == Kind::Counter {
                    1.0
                } else {
                    1.0 + (x % 500_000) as f64 / 1000.0
                };
                state
                    .record(SampleValue::Number(v), 0, "bench")
                    .expect("valid sample");
            }
            Increment {
                series: Arc::new(key),
                bucket_ms: 60_000,
                state,
            }
        })
        .collect()
}

fn wire(c: &mut Criterion) {
    let incs = increments(1_000);
    let batch = strata_proto::encode_batch(1, 0, &incs);
    let bytes = batch.encode_to_vec();
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(incs.len() as u64));
    g.bench_function("encode_batch_1000_increments", |b| {
        b.iter(|| black_box(strata_proto::encode_batch(1, 0, black_box(&incs))).encode_to_vec())
    });
    g.bench_function("decode_batch_1000_increments", |b| {
        b.iter(|| {
            let msg =
                strata_proto::v1::Batch::decode(black_box(bytes.as_slice())).expect("decodes");
            strata_proto::decode_batch(&msg).expect("valid")
        })
    });
    // A stream's steady state: every series defined by an earlier batch.
    let mut refs = strata_proto::SeriesRefs::default();
    let first = refs.encode(1, 0, &incs);
    let interned = refs.encode(2, 0, &incs).encode_to_vec();
    let mut known = strata_proto::KnownSeries::default();
    known.learn(&first).expect("in order");
    g.bench_function("encode_batch_1000_increments_interned", |b| {
        b.iter(|| black_box(refs.encode(2, 0, black_box(&incs))).encode_to_vec())
    });
    g.bench_function("decode_batch_1000_increments_interned", |b| {
        b.iter(|| {
            let msg =
                strata_proto::v1::Batch::decode(black_box(interned.as_slice())).expect("decodes");
            known.learn(&msg).expect("defines nothing");
            known.decode(&msg).expect("valid")
        })
    });
    g.finish();
    eprintln!(
        "interned batch of {} increments: {} bytes on the wire",
        incs.len(),
        interned.len()
    );
    eprintln!(
        "batch of {} increments: {} bytes on the wire",
        incs.len(),
        bytes.len()
    );
}

criterion_group!(benches, wire);
criterion_main!(benches);
