//! The NDJSON ingest body: parsed, then validated all or nothing; every
//! line the scanner reads, it reads as serde_json does.

use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value, json};
use strata_model::time::in_range;
use strata_model::{SampleValue, SeriesKey, State, StateParams, minute_start};
use strata_store::{MemoryStore, StoreOptions};

use crate::context::Context;
use crate::core::limits::MessageLimits;
use crate::core::pipeline::{Pipeline, PipelineSettings, PipelineThreads};
use crate::core::registry::Registry;
use crate::core::shard::SampleItem;
use crate::inputs::samples::{
    IngestError, IngestSettings, Ingestor, RawPoint, RawSeries, parse_ndjson, scan_agrees,
};

/// Parses `body` as an HTTP ingest request and validates what parses, checking:
/// errors name a line of the body; every parsed sample re-serialises to a line that
/// parses to the same sample; validation is all or nothing (a refused request
/// registers no metric) and every sample it admits is recordable into a valid state
/// of its bucket.
pub fn ndjson(body: &[u8]) {
    let text = std::str::from_utf8(body).ok();
    for line in text.iter().flat_map(|text| text.lines()) {
        assert!(scan_agrees(line), "the scanner reads {line:?} otherwise");
    }
    let lines = text.map_or(0, |text| text.lines().count());
    let parsed = match parse_ndjson(body) {
        Ok(parsed) => parsed,
        Err(IngestError::Invalid { message, line }) => {
            assert!(!message.is_empty(), "an error without a message");
            if let Some(line) = line {
                assert!(
                    (1..=lines).contains(&line),
                    "error names line {line} of a body of {lines}: {message}"
                );
            }
            return;
        }
        Err(other) => panic!("parsing answered {other:?}"),
    };
    let mut previous_first = 0;
    for s in &parsed {
        assert!(!s.points.is_empty(), "a series without a sample");
        let first = s.points[0].line;
        assert!(
            previous_first < first,
            "series of line {first} after {previous_first}"
        );
        previous_first = first;
        for pair in s.points.windows(2) {
            assert!(
                pair[0].line < pair[1].line,
                "lines of a series out of order"
            );
        }
    }
    let samples = by_line(&parsed);
    for pair in samples.windows(2) {
        assert!(pair[0].1.line < pair[1].1.line, "a line read twice");
    }
    if let Some((_, last)) = samples.last() {
        assert!(
            last.line <= lines,
            "line {} of a body of {lines}",
            last.line
        );
    }
    check_roundtrip(&parsed);
    check_validation(parsed, body.len().is_multiple_of(2));
}

/// Every sample of a parsed body with its series, in the order of its lines.
fn by_line(parsed: &[RawSeries]) -> Vec<(&RawSeries, RawPoint)> {
    let mut samples: Vec<(&RawSeries, RawPoint)> = parsed
        .iter()
        .flat_map(|s| s.points.iter().map(move |p| (s, *p)))
        .collect();
    samples.sort_by_key(|(_, p)| p.line);
    samples
}

/// Each parsed line, written back as JSON, parses to the same sample.
fn check_roundtrip(parsed: &[RawSeries]) {
    let samples = by_line(parsed);
    let mut body = String::new();
    for (s, p) in &samples {
        let mut line = Map::new();
        line.insert("metric".into(), json!(s.metric));
        line.insert("kind".into(), json!(s.kind.as_str()));
        let labels: Map<String, Value> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        line.insert("labels".into(), Value::Object(labels));
        if let Some(ts) = p.ts_ms {
            line.insert("ts_ms".into(), json!(ts));
        }
        let value = match p.value {
            SampleValue::Flag(b) => json!(b),
            SampleValue::Number(v) => json!(v),
        };
        line.insert("value".into(), value);
        if let Some(t) = s.threshold {
            line.insert("threshold".into(), json!(t));
        }
        body.push_str(&Value::Object(line).to_string());
        body.push('\n');
    }
    let again = parse_ndjson(body.as_bytes())
        .unwrap_or_else(|e| panic!("re-serialised body does not parse: {e}\n{body}"));
    let again = by_line(&again);
    assert_eq!(again.len(), samples.len());
    for (i, ((a, pa), (b, pb))) in samples.iter().zip(&again).enumerate() {
        assert_eq!(
            (&a.metric, a.kind, &a.labels, a.threshold),
            (&b.metric, b.kind, &b.labels, b.threshold),
            "sample {i} changed through serialisation"
        );
        assert_eq!((pa.ts_ms, pa.value), (pb.ts_ms, pb.value), "sample {i}");
        assert_eq!(pb.line, i + 1);
    }
}

/// [`Ingestor::validate`] with a fresh registry: all or nothing, and every admitted
/// sample fits a valid state in a bucket of the accepted time range. `wide_window`
/// accepts event times as far from now as the configuration allows (7 days either
/// way), else the defaults.
fn check_validation(parsed: Vec<RawSeries>, wide_window: bool) {
    const WEEK_MS: i64 = 7 * 86_400_000;
    let registry = Arc::new(Registry::default());
    let settings = IngestSettings {
        allowed_lateness_ms: if wide_window { WEEK_MS } else { 600_000 },
        max_future_ms: if wide_window { WEEK_MS } else { 300_000 },
        default_apdex_threshold: 500.0,
        message_limits: Arc::new(MessageLimits::new(4 << 20, 2)),
    };
    let ingestor = Ingestor::new(pipeline().clone(), registry.clone(), settings, 1);
    let metrics: Vec<String> = parsed.iter().map(|s| s.metric.clone()).collect();
    let lines: Vec<usize> = parsed
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.line))
        .collect();
    let refusal = match ingestor.validate(parsed) {
        Ok(items) => return check_admitted(items, lines.len(), &registry),
        Err(IngestError::Invalid { message, line }) => {
            if let Some(line) = line {
                assert!(lines.contains(&line), "error names line {line}: {message}");
            }
            message
        }
        Err(IngestError::TooLarge(message) | IngestError::Limited(message)) => message,
        Err(other) => panic!("validation answered {other:?}"),
    };
    assert!(!refusal.is_empty(), "a refusal without a message");
    for m in &metrics {
        assert!(
            registry.get(m).is_none(),
            "refused request registered {m:?}: {refusal}"
        );
    }
}

/// Every admitted sample is recordable into a valid state of its bucket.
fn check_admitted(items: Vec<SampleItem>, samples: usize, registry: &Registry) {
    assert_eq!(items.len(), samples, "a sample lost in validation");
    for item in items {
        assert_eq!(item.bucket_ms, minute_start(item.ts_ms));
        assert!(in_range(item.ts_ms), "admitted ts_ms {}", item.ts_ms);
        let key = SeriesKey::new(item.series.metric(), item.series.label_pairs());
        assert_eq!(key.as_ref().ok(), Some(&*item.series), "{key:?}");
        let meta = registry.get(item.series.metric());
        assert_eq!(meta.map(|m| m.kind), Some(item.kind), "not registered");
        let params = StateParams {
            histogram_sigfig: 2,
            apdex_threshold: item.apdex_threshold,
            ..StateParams::default()
        };
        let mut state = State::empty(item.kind, &params);
        let recorded = state.record(item.value, item.ts_ms, "fuzz");
        assert!(recorded.is_ok(), "admitted sample refused: {recorded:?}");
        if let Err(e) = state.validate() {
            panic!("admitted sample made an invalid state: {e}: {state:?}");
        }
    }
}

/// One pipeline for every input: validation only reads its context's counters.
fn pipeline() -> &'static Arc<Pipeline> {
    static PIPELINE: OnceLock<Arc<Pipeline>> = OnceLock::new();
    // Idle for the life of the process (nothing is ever submitted), and reachable,
    // so that leak checkers do not report it.
    static THREADS: Mutex<Option<PipelineThreads>> = Mutex::new(None);
    PIPELINE.get_or_init(|| {
        let settings = PipelineSettings::standalone();
        let store = Arc::new(MemoryStore::new(StoreOptions::default()));
        let ctx = Arc::new(Context::new("fuzz", store));
        match Pipeline::start(settings, ctx) {
            Ok((pipeline, threads)) => {
                *THREADS.lock().unwrap_or_else(|e| e.into_inner()) = Some(threads);
                pipeline
            }
            Err(e) => panic!("the pipeline does not start: {e}"),
        }
    })
}
