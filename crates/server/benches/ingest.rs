//! NDJSON ingest before the aggregator: a 5 000-line body of 20 series
//! (16 histograms, 4 counters; one observation a line, as clients send them)
//! parsed, then parsed and validated, as `POST /api/v1/ingest` does before
//! submitting; the series' lines taken in turn, and (`_grouped`) the lines
//! of each series together, as clients that buffer by series write them.
//! Throughput is in lines, so criterion's time per element is the CPU spent
//! per NDJSON sample.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_server::context::Context;
use strata_server::core::limits::MessageLimits;
use strata_server::core::pipeline::{Pipeline, PipelineSettings};
use strata_server::core::registry::Registry;
use strata_server::inputs::samples::{IngestSettings, Ingestor, parse_ndjson};
use strata_store::{MemoryStore, StoreOptions};

const LINES: usize = 5_000;

/// The body: every tenth line a counter, the others histogram observations,
/// the series taken in turn (or, `grouped`, each series' lines together),
/// every line with an event time.
fn body(ts_ms: i64, grouped: bool) -> Vec<u8> {
    let routes = ["/", "/cart", "/checkout", "/search"];
    let services = ["web", "api", "auth", "billing"];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut lines = Vec::with_capacity(LINES);
    for i in 0..LINES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let service = services[i % services.len()];
        if i % 10 == 9 {
            lines.push(format!(
                r#"{{"metric":"http_requests_total","kind":"counter","labels":{{"service":"{service}","region":"eu-west-1"}},"ts_ms":{ts_ms}}}"#
            ));
        } else {
            let route = routes[(i / services.len()) % routes.len()];
            let value = 1.0 + (x % 400_000) as f64 / 1000.0;
            lines.push(format!(
                r#"{{"metric":"http_request_duration_ms","kind":"histogram","labels":{{"service":"{service}","route":"{route}","region":"eu-west-1"}},"ts_ms":{ts_ms},"value":{value}}}"#
            ));
        }
    }
    if grouped {
        // Each line up to its value names its series and time.
        lines.sort_by(|a, b| a[..a.rfind(':').unwrap_or(0)].cmp(&b[..b.rfind(':').unwrap_or(0)]));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out.into_bytes()
}

fn ingest(c: &mut Criterion) {
    let settings = PipelineSettings::standalone();
    let store = Arc::new(MemoryStore::new(StoreOptions::default()));
    let ctx = Arc::new(Context::new("bench", store));
    let (pipeline, threads) = Pipeline::start(settings, ctx).expect("pipeline starts");
    let ingestor = Ingestor::new(
        pipeline,
        Arc::new(Registry::default()),
        IngestSettings {
            // Wide enough for the body's event time however long the run.
            allowed_lateness_ms: 86_400_000,
            max_future_ms: 300_000,
            default_apdex_threshold: 500.0,
            message_limits: Arc::new(MessageLimits::new(4 << 20, 2)),
        },
        1,
    );
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(LINES as u64));
    for (grouped, suffix) in [(false, ""), (true, "_grouped")] {
        let body = body(strata_server::now_ms(), grouped);
        let admitted = parse_ndjson(&body).and_then(|s| ingestor.validate(s));
        assert_eq!(admitted.map(|items| items.len()), Ok(LINES));
        g.bench_function(format!("parse_5000_lines{suffix}"), |b| {
            b.iter(|| parse_ndjson(black_box(&body)).map(|s| s.len()))
        });
        g.bench_function(format!("parse_validate_5000_lines{suffix}"), |b| {
            b.iter(|| {
                parse_ndjson(black_box(&body))
                    .and_then(|s| ingestor.validate(s))
                    .map(|items| items.len())
            })
        });
    }
    g.finish();
    threads.stop();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
