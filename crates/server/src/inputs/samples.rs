//! Sample ingest shared by the HTTP NDJSON and native gRPC inputs.
//!
//! A request is all or nothing: every sample is parsed and checked (names,
//! value, lateness, the metric's kind) before any of it is handed to the
//! aggregator. Admission is bounded: a node that cannot take more answers
//! "busy, retry" instead of queueing without bound.
//!
//! The `[limits]` apply here to every protocol alike ([`Limits`]): lines (or
//! points) per request, the sizes of names and labels, and the node's
//! cardinality budget for direct ingest ([`Cardinality`], the node's own id as
//! the source): a request bringing new series beyond it is refused whole.
//!
//! [`IngestError`] is what every ingest protocol answers with; its HTTP
//! status and gRPC code come from [`crate::status`].

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::sync::Arc;

use serde::Deserialize;
use strata_model::{Kind, MINUTE_MS, SampleValue, SeriesKey, State, minute_start};
use tokio::sync::{Semaphore, oneshot};

use crate::api::auth::{RefusalLog, Tokens};
use crate::api::request_id;
use crate::context::{Context, now_ms};
use crate::core::cardinality::{Cardinality, CardinalityError};
use crate::core::commit::Ticket;
use crate::core::limits::{Limits, MessageLimits, ReportBudget};
use crate::core::pipeline::Pipeline;
use crate::core::registry::{Conflict, Registry};
use crate::core::self_metrics::SELF_PREFIX;
use crate::core::shard::SampleItem;
use crate::core::stats::Stats;
use crate::status::{Class, Classify};

/// Samples of one series as an input read them, before validation. NDJSON
/// gives one per line; native gRPC one per `SeriesSamples`, so the series key
/// is built and checked once for all its points.
#[derive(Clone, Debug)]
pub struct RawSeries {
    pub metric: String,
    pub kind: Kind,
    pub labels: Vec<(String, String)>,
    /// Apdex threshold named by the input, if any.
    pub threshold: Option<f64>,
    pub points: Vec<RawPoint>,
    /// States to merge as they are (inputs that receive pre-aggregated
    /// data: OTLP, remote write); NDJSON and native gRPC have none.
    pub states: Vec<RawState>,
}

/// One pre-aggregated state of a [`RawSeries`], of the series' kind.
#[derive(Clone, Debug, PartialEq)]
pub struct RawState {
    /// What errors name: the data point's number in the request (1-based).
    pub line: usize,
    /// Event time; `None` means now.
    pub ts_ms: Option<i64>,
    pub state: State,
}

/// The commit a request enqueued with `wait_commit` waits for; it holds the
/// request's admission permit until then, so `http.max_inflight_requests`
/// bounds the requests waiting for a commit too.
#[derive(Debug)]
pub struct PendingCommit<'a> {
    done: oneshot::Receiver<Result<(), String>>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl PendingCommit<'_> {
    /// Once the flush holding the request is committed: `Ok`, or why not.
    pub async fn wait(self) -> Result<(), IngestError> {
        match self.done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(IngestError::CommitFailed(e)),
            Err(_) => Err(IngestError::Stopping),
        }
    }
}

/// A request's validated samples and states, ready for [`Ingestor::submit_admitted`].
#[derive(Debug, Default)]
pub struct Admitted {
    pub samples: Vec<SampleItem>,
    pub increments: Vec<strata_model::Increment>,
    /// The newest event time of the states (samples carry their own).
    pub newest_state_ms: Option<i64>,
}

/// One sample of a [`RawSeries`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawPoint {
    /// What errors name: the NDJSON line or the request's point number (1-based).
    pub line: usize,
    /// Event time; `None` means now.
    pub ts_ms: Option<i64>,
    pub value: SampleValue,
}

/// Why a request was not taken.
#[derive(Debug, PartialEq)]
pub enum IngestError {
    /// Bad input: nothing of the request was merged. `line` is 1-based.
    Invalid {
        message: String,
        line: Option<usize>,
    },
    /// More lines (points) than `limits.max_lines_per_request` (413); the
    /// message names the limit.
    TooLarge(String),
    /// New series or metrics beyond the source's cardinality limit (422);
    /// the message names the limit.
    Limited(String),
    /// The node is at its admission limit: retry later.
    Busy,
    /// The node is shutting down.
    Stopping,
    /// `wait=commit` and the commit failed.
    CommitFailed(String),
}

impl std::fmt::Display for IngestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IngestError::Invalid {
                message,
                line: Some(line),
            } => write!(f, "line {line}: {message}"),
            IngestError::Invalid {
                message,
                line: None,
            } => f.write_str(message),
            IngestError::TooLarge(message) | IngestError::Limited(message) => f.write_str(message),
            IngestError::Busy => f.write_str("node is busy, retry later"),
            IngestError::Stopping => f.write_str("node is shutting down"),
            IngestError::CommitFailed(e) => write!(f, "not committed: {e}"),
        }
    }
}

impl Classify for IngestError {
    fn class(&self) -> Class {
        match self {
            IngestError::Invalid { .. } => Class::Invalid,
            IngestError::TooLarge(_) => Class::TooLarge,
            IngestError::Limited(_) => Class::OverLimit,
            IngestError::Busy => Class::Busy,
            IngestError::Stopping => Class::Unavailable,
            IngestError::CommitFailed(_) => Class::Internal,
        }
    }
}

fn invalid(line: usize, message: impl Into<String>) -> IngestError {
    IngestError::Invalid {
        message: message.into(),
        line: Some(line),
    }
}

/// One NDJSON line (DESIGN §8).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    metric: String,
    kind: String,
    #[serde(default, deserialize_with = "unique_labels")]
    labels: std::collections::BTreeMap<String, String>,
    ts_ms: Option<i64>,
    value: Option<serde_json::Value>,
    threshold: Option<f64>,
}

/// The `labels` object, refusing a name given twice: a plain map would keep
/// the last value silently, where every other input refuses the series.
fn unique_labels<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    struct Labels;
    impl<'de> serde::de::Visitor<'de> for Labels {
        type Value = std::collections::BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of label names to string values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut labels = std::collections::BTreeMap::new();
            while let Some((name, value)) = map.next_entry::<String, String>()? {
                if labels.contains_key(&name) {
                    return Err(serde::de::Error::custom(format!(
                        "label {name:?} appears more than once"
                    )));
                }
                labels.insert(name, value);
            }
            Ok(labels)
        }
    }
    d.deserialize_map(Labels)
}

/// Parses an NDJSON body; blank lines are skipped. Any bad line fails the whole body.
pub fn parse_ndjson(body: &[u8]) -> Result<Vec<RawSeries>, IngestError> {
    let text = std::str::from_utf8(body).map_err(|e| IngestError::Invalid {
        message: format!("body is not utf-8: {e}"),
        line: None,
    })?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(raw).map_err(|e| invalid(line_no, e.to_string()))?;
        let kind: Kind = line
            .kind
            .parse()
            .map_err(|e: strata_model::ModelError| invalid(line_no, e.to_string()))?;
        let value = match (&line.value, kind) {
            (None, Kind::Counter) => SampleValue::Number(1.0),
            (None, _) => {
                return Err(invalid(
                    line_no,
                    format!("missing field `value` for a {kind}"),
                ));
            }
            (Some(serde_json::Value::Bool(b)), _) => SampleValue::Flag(*b),
            (Some(serde_json::Value::Number(n)), _) => {
                SampleValue::Number(number_value(n, kind).map_err(|e| invalid(line_no, e))?)
            }
            (Some(other), _) => {
                return Err(invalid(
                    line_no,
                    format!("value must be a number or a boolean, got {other}"),
                ));
            }
        };
        out.push(RawSeries {
            metric: line.metric,
            kind,
            labels: line.labels.into_iter().collect(),
            threshold: line.threshold,
            points: vec![RawPoint {
                line: line_no,
                ts_ms: line.ts_ms,
                value,
            }],
            states: Vec::new(),
        });
    }
    if out.is_empty() {
        return Err(IngestError::Invalid {
            message: "no samples in request".into(),
            line: None,
        });
    }
    Ok(out)
}

/// Largest integer below which every integer is exactly a 64-bit float: 2^53.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// The float of a JSON number. An integer literal the float cannot hold
/// exactly (`9007199254740993` would become 2^53) is refused, naming the
/// value and the range the kind holds exactly, instead of being rounded.
fn number_value(n: &serde_json::Number, kind: Kind) -> Result<f64, String> {
    let v = n
        .as_f64()
        .ok_or_else(|| format!("value {n} is not a number"))?;
    // Through i128, which holds every u64 and i64 and is not saturated by
    // any float of their range (`u64::MAX as f64` is 2^64).
    let literal = n
        .as_u64()
        .map(i128::from)
        .or_else(|| n.as_i64().map(i128::from));
    match literal {
        Some(int) if v as i128 != int => Err(match kind {
            Kind::Counter => format!(
                "counter value {n} cannot be held exactly: counter values are integers from 0 to {MAX_EXACT_INTEGER} (2^53)"
            ),
            _ => format!(
                "{kind} value {n} cannot be held exactly: {kind} values are 64-bit floats, exact for integers from -{MAX_EXACT_INTEGER} to {MAX_EXACT_INTEGER} (2^53)"
            ),
        }),
        _ => Ok(v),
    }
}

/// Limits applied to every sample.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    pub allowed_lateness_ms: i64,
    pub max_future_ms: i64,
    pub default_apdex_threshold: f64,
    /// One increment of every admitted series must fit in a message of the
    /// federation link (`grpc.max_message_bytes`, this node's and its upstream's).
    pub message_limits: Arc<MessageLimits>,
}

/// What one series of a request asks the registry for.
struct Wanted {
    /// The line (or point) of its first sample, which a conflict names.
    line: usize,
    series: Arc<SeriesKey>,
    kind: Kind,
    /// The apdex threshold, for apdex series.
    threshold: Option<f64>,
}

/// The event times a request may carry, fixed once per request.
struct TimeWindow {
    /// This node's clock: the time of a sample that names none.
    now: i64,
    /// A bucket ending at or before this is too late (`allowed_lateness_s`).
    oldest_bucket_end: i64,
    /// Later than this is too far in the future (`max_future_s`).
    newest_ts: i64,
}

impl TimeWindow {
    fn new(now: i64, settings: &IngestSettings) -> Self {
        TimeWindow {
            now,
            oldest_bucket_end: now.saturating_sub(settings.allowed_lateness_ms),
            newest_ts: now.saturating_add(settings.max_future_ms),
        }
    }
}

/// Refused federation streams logged and recorded as events per minute;
/// more are only counted (`federation_refused_streams_total`).
pub const REFUSED_STREAM_REPORTS_PER_MINUTE: u32 = 20;

/// Validates and admits requests into the pipeline.
pub struct Ingestor {
    pub pipeline: Arc<Pipeline>,
    pub registry: Arc<Registry>,
    pub settings: IngestSettings,
    /// Bounds requests being enqueued at once; its exhaustion is the "busy" answer.
    admission: Semaphore,
    /// The node's shared parts (its counters, for the rejections).
    pub ctx: Arc<Context>,
    /// `[limits]`: sizes of requests and series, and of queries.
    pub limits: Arc<Limits>,
    /// Series and metrics per source: this node's direct ingest and its
    /// downstreams (the federation receiver checks its batches here too).
    pub cardinality: Arc<Cardinality>,
    /// `http.token` and `http.ingest_token`, which the HTTP API and the
    /// native gRPC ingest both require.
    pub tokens: Arc<Tokens>,
    /// Logs refused native gRPC pushes, at most once per 10 s.
    pub auth_log: RefusalLog,
    /// Bounds the log lines and `source_refused` events of refused
    /// federation streams, which anyone reaching the port can cause.
    pub refused_streams: ReportBudget,
}

impl Ingestor {
    pub fn new(
        pipeline: Arc<Pipeline>,
        registry: Arc<Registry>,
        settings: IngestSettings,
        max_inflight: usize,
    ) -> Self {
        let ctx = pipeline.context().clone();
        let cardinality = Cardinality::new([ctx.node_id.as_str()], usize::MAX, usize::MAX, 0);
        Ingestor {
            ctx,
            pipeline,
            registry,
            settings,
            admission: Semaphore::new(max_inflight),
            limits: Arc::new(Limits::default()),
            cardinality: Arc::new(cardinality),
            tokens: Arc::new(Tokens::default()),
            auth_log: RefusalLog::default(),
            refused_streams: ReportBudget::new(REFUSED_STREAM_REPORTS_PER_MINUTE),
        }
    }

    /// This ingestor with the node's `[limits]`, cardinality budgets and
    /// tokens (without: the default limits, no cardinality bound, no token).
    pub fn with_protection(
        mut self,
        limits: Arc<Limits>,
        cardinality: Arc<Cardinality>,
        tokens: Arc<Tokens>,
    ) -> Self {
        self.limits = limits;
        self.cardinality = cardinality;
        self.tokens = tokens;
        self
    }

    /// Refuses a request of more than `limits.max_lines_per_request` lines
    /// (`what`: "lines", or "points" for native gRPC).
    pub fn check_lines(&self, lines: usize, what: &str) -> Result<(), IngestError> {
        let max = self.limits.max_lines_per_request;
        if lines <= max {
            return Ok(());
        }
        Stats::add(&self.ctx.stats.limit_refusals_total, 1);
        Err(IngestError::TooLarge(format!(
            "request has {lines} {what}, over limits.max_lines_per_request ({max})"
        )))
    }

    /// Counts a cardinality refusal and, for the first of its source's
    /// minute, logs it and records a `cardinality_limited` event.
    pub fn cardinality_refused(&self, e: &CardinalityError) {
        Stats::add(&self.ctx.stats.limit_refusals_total, 1);
        if e.report {
            tracing::warn!(source = %e.source_id, limit = e.key, error = %e, "new series refused: source at its cardinality limit (further refusals this minute are only counted)");
            self.ctx
                .event(strata_store::EventKind::CardinalityLimited, e.to_string());
        }
    }

    /// Checks every sample of a request and, only if all are valid,
    /// registers the metrics it introduces. Returns the samples ready for
    /// [`Ingestor::submit`]; an error names the line or point (the
    /// [`RawPoint::line`]) of the first problem, and nothing is registered.
    pub fn validate(&self, input: Vec<RawSeries>) -> Result<Vec<SampleItem>, IngestError> {
        self.validate_all(input).map(|admitted| admitted.samples)
    }

    /// [`Ingestor::validate`] of samples and states: a state must be of its
    /// series' kind, valid, and of a minute the node still takes.
    pub fn validate_all(&self, input: Vec<RawSeries>) -> Result<Admitted, IngestError> {
        let points = input.iter().map(|s| s.points.len() + s.states.len()).sum();
        self.check_lines(points, "lines")?;
        let window = TimeWindow::new(now_ms(), &self.settings);
        let mut interned: HashMap<SeriesKey, Arc<SeriesKey>, RandomState> = HashMap::default();
        let mut items = Vec::with_capacity(input.iter().map(|s| s.points.len()).sum());
        let mut admitted = Admitted::default();
        let mut wanted: Vec<Wanted> = Vec::with_capacity(input.len());
        for s in input {
            let first = s.points.first().map(|p| p.line);
            let Some(line) = first.or_else(|| s.states.first().map(|p| p.line)) else {
                continue;
            };
            let key = self.series_key(s.metric, s.labels, s.kind, line)?;
            let apdex_threshold = self.apdex_threshold(&key, s.kind, s.threshold, line)?;
            let series = match interned.get(&key) {
                Some(a) => a.clone(),
                None => {
                    let a = Arc::new(key.clone());
                    interned.insert(key, a.clone());
                    a
                }
            };
            for p in &s.points {
                let (bucket_ms, ts_ms) = self.check_point(s.kind, p, &window)?;
                items.push(SampleItem {
                    series: series.clone(),
                    kind: s.kind,
                    bucket_ms,
                    ts_ms,
                    value: p.value,
                    apdex_threshold,
                });
            }
            for p in s.states {
                let (bucket_ms, ts_ms) = self.check_state(s.kind, &p, &window)?;
                admitted.newest_state_ms = admitted.newest_state_ms.max(Some(ts_ms));
                admitted.increments.push(strata_model::Increment {
                    series: series.clone(),
                    bucket_ms,
                    state: p.state,
                });
            }
            wanted.push(Wanted {
                line,
                series,
                kind: s.kind,
                threshold: (s.kind == Kind::Apdex).then_some(apdex_threshold),
            });
        }
        let budget = self
            .cardinality
            .admit(&self.ctx.node_id, interned.keys(), window.now)
            .map_err(|e| {
                self.cardinality_refused(&e);
                IngestError::Limited(e.to_string())
            })?;
        if let Err(e) = self.register(&wanted) {
            self.cardinality.release(budget);
            return Err(e);
        }
        admitted.samples = items;
        Ok(admitted)
    }

    /// The series of a sample group: not a self-metric name, a valid key,
    /// and one increment of it fits a message of the federation link.
    fn series_key(
        &self,
        metric: String,
        labels: Vec<(String, String)>,
        kind: Kind,
        line: usize,
    ) -> Result<SeriesKey, IngestError> {
        if metric.starts_with(SELF_PREFIX) {
            return Err(invalid(
                line,
                format!(
                    "metric names starting with {SELF_PREFIX:?} are reserved for the node's own metrics"
                ),
            ));
        }
        let sizes = self.limits.check_series(
            &metric,
            labels.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        );
        if let Err(e) = sizes {
            Stats::add(&self.ctx.stats.limit_refusals_total, 1);
            return Err(invalid(line, e));
        }
        let key = SeriesKey::new(metric, labels).map_err(|e| invalid(line, e.to_string()))?;
        self.settings
            .message_limits
            .check(&key, kind)
            .map_err(|e| invalid(line, e))?;
        Ok(key)
    }

    /// The apdex threshold the samples are merged with: the one named (only
    /// apdex samples may name one, and it must be positive), else the
    /// metric's, else the default; 0 for other kinds.
    fn apdex_threshold(
        &self,
        key: &SeriesKey,
        kind: Kind,
        named: Option<f64>,
        line: usize,
    ) -> Result<f64, IngestError> {
        let threshold = match named {
            Some(t) if !(t.is_finite() && t > 0.0) => {
                return Err(invalid(
                    line,
                    format!("threshold must be a positive number, got {t}"),
                ));
            }
            Some(_) if kind != Kind::Apdex => {
                return Err(invalid(line, "threshold is only valid for apdex samples"));
            }
            t => t,
        };
        Ok(match (kind, threshold) {
            (Kind::Apdex, Some(t)) => t,
            (Kind::Apdex, None) => self
                .registry
                .get(key.metric())
                .and_then(|m| m.apdex_threshold)
                .unwrap_or(self.settings.default_apdex_threshold),
            _ => 0.0,
        })
    }

    /// One point: a valid value for its kind, not too far in the future, not
    /// later than the allowed lateness. Returns its (bucket, event time).
    fn check_point(
        &self,
        kind: Kind,
        p: &RawPoint,
        window: &TimeWindow,
    ) -> Result<(i64, i64), IngestError> {
        State::validate_sample(kind, p.value).map_err(|e| invalid(p.line, e.to_string()))?;
        self.check_time(p.line, p.ts_ms, window)
    }

    /// One state: of the series' kind, valid, and of a minute the node
    /// still takes. Returns its (bucket, event time).
    fn check_state(
        &self,
        kind: Kind,
        p: &RawState,
        window: &TimeWindow,
    ) -> Result<(i64, i64), IngestError> {
        if p.state.kind() != kind {
            return Err(invalid(
                p.line,
                format!("a {} state for a {kind} series", p.state.kind()),
            ));
        }
        p.state
            .validate()
            .map_err(|e| invalid(p.line, e.to_string()))?;
        self.check_time(p.line, p.ts_ms, window)
    }

    /// An event time (`None`: now): not too far in the future, not later
    /// than the allowed lateness. Returns its (bucket, event time).
    fn check_time(
        &self,
        line: usize,
        ts_ms: Option<i64>,
        window: &TimeWindow,
    ) -> Result<(i64, i64), IngestError> {
        let ts_ms = ts_ms.unwrap_or(window.now);
        // The future first: the bucket end of a far-future ts would overflow.
        if ts_ms > window.newest_ts {
            Stats::add(&self.ctx.stats.future_samples_total, 1);
            return Err(invalid(
                line,
                format!(
                    "ts_ms {ts_ms} is in the future: more than {} s ({}) ahead of this node's clock ({})",
                    self.settings.max_future_ms / 1000,
                    self.limits.max_future_key,
                    window.now
                ),
            ));
        }
        let bucket_ms = minute_start(ts_ms);
        if bucket_ms.saturating_add(MINUTE_MS) <= window.oldest_bucket_end {
            Stats::add(&self.ctx.stats.late_samples_total, 1);
            return Err(invalid(
                line,
                format!(
                    "ts_ms {ts_ms} is older than the allowed lateness ({} s)",
                    self.settings.allowed_lateness_ms / 1000
                ),
            ));
        }
        Ok((bucket_ms, ts_ms))
    }

    /// Registers the request's metrics, all or none; a conflict (another
    /// kind, another apdex threshold) names the first input that conflicts.
    fn register(&self, wanted: &[Wanted]) -> Result<(), IngestError> {
        let admitted = self.registry.admit(
            wanted
                .iter()
                .map(|w| (w.series.metric(), w.kind, w.threshold)),
        );
        let Err(conflict) = admitted else {
            return Ok(());
        };
        let line = wanted
            .iter()
            .find(|w| {
                w.series.metric() == conflict.metric()
                    && match &conflict {
                        Conflict::Kind { got, .. } => w.kind == *got,
                        Conflict::ApdexThreshold { got, .. } => w.threshold == Some(*got),
                    }
            })
            .map(|w| w.line);
        Err(IngestError::Invalid {
            message: conflict.to_string(),
            line,
        })
    }

    /// Admits validated samples; with `wait_commit` answers only once they are
    /// committed to the store (and spool). Returns the number accepted.
    pub async fn submit(
        &self,
        items: Vec<SampleItem>,
        wait_commit: bool,
    ) -> Result<usize, IngestError> {
        let admitted = Admitted {
            samples: items,
            ..Admitted::default()
        };
        self.submit_admitted(admitted, Vec::new(), wait_commit)
            .await
    }

    /// Admits validated samples and states, with the `cursors` of the
    /// input's stream table to commit in the same transaction; with
    /// `wait_commit` answers only once they are committed. Returns the
    /// number of samples and states accepted.
    pub async fn submit_admitted(
        &self,
        admitted: Admitted,
        cursors: Vec<strata_store::Cursor>,
        wait_commit: bool,
    ) -> Result<usize, IngestError> {
        let (n, commit) = self
            .enqueue_admitted(admitted, cursors, wait_commit)
            .await?;
        if let Some(commit) = commit {
            commit.wait().await?;
        }
        Ok(n)
    }

    /// [`Ingestor::submit_admitted`] up to the enqueue: returns once the
    /// data is in the pipeline (so an input that must keep its requests in
    /// order holds its lock only this long), with what to wait on for the
    /// commit when `wait_commit`.
    pub async fn enqueue_admitted(
        &self,
        admitted: Admitted,
        cursors: Vec<strata_store::Cursor>,
        wait_commit: bool,
    ) -> Result<(usize, Option<PendingCommit<'_>>), IngestError> {
        let Ok(permit) = self.admission.try_acquire() else {
            Stats::add(&self.ctx.stats.ingest_busy_total, 1);
            return Err(IngestError::Busy);
        };
        let Admitted {
            samples,
            increments,
            newest_state_ms,
        } = admitted;
        let n = samples.len() + increments.len();
        let (tx, rx) = if wait_commit {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let ticket = match (cursors.is_empty(), tx) {
            (true, Some(tx)) => Some(Ticket::Commit(tx)),
            (true, None) => None,
            (false, done) => Some(Ticket::Cursors { cursors, done }),
        };
        let pipeline = self.pipeline.clone();
        // The flush that commits these samples names the request.
        let origin = request_id::current().map(|id| id.shared());
        request_id::spawn_blocking(move || {
            let newest = samples.iter().map(|s| s.ts_ms).max().max(newest_state_ms);
            pipeline.submit_events(samples, increments, ticket, origin, newest)
        })
        .await
        .map_err(|_| IngestError::Stopping)?
        .map_err(|_| IngestError::Stopping)?;
        Stats::add(&self.ctx.stats.ingest_samples_total, n as u64);
        Stats::add(&self.ctx.stats.ingest_requests_total, 1);
        let pending = rx.map(|done| PendingCommit {
            done,
            _permit: permit,
        });
        Ok((n, pending))
    }

    /// Counts a request rejected before submission.
    pub fn count_rejected(&self) {
        Stats::add(&self.ctx.stats.ingest_rejected_requests_total, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_line() {
        let body = br#"{"metric":"lat","kind":"histogram","labels":{"service":"checkout"},"ts_ms":1763800000123,"value":12.5}

{"metric":"req","kind":"counter","labels":{}}
{"metric":"ok","kind":"percent","value":true}
"#;
        let parsed = parse_ndjson(body).unwrap();
        assert_eq!(parsed.len(), 3);
        let point = |i: usize| parsed[i].points[0];
        assert_eq!(point(0).line, 1);
        assert_eq!(point(0).value, SampleValue::Number(12.5));
        assert_eq!(point(1).line, 3);
        assert_eq!(point(1).value, SampleValue::Number(1.0));
        assert_eq!(point(2).value, SampleValue::Flag(true));
    }

    #[test]
    fn errors_name_the_line() {
        let body = b"{\"metric\":\"a\",\"kind\":\"counter\"}\n{\"metric\":\"a\",\"kind\":\"bogus\",\"value\":1}\n";
        let err = parse_ndjson(body).unwrap_err();
        assert!(
            matches!(err, IngestError::Invalid { line: Some(2), .. }),
            "{err:?}"
        );
        let err = parse_ndjson(b"{\"metric\":\"a\",\"kind\":\"sum\"}").unwrap_err();
        assert!(err.to_string().contains("value"), "{err}");
        let err = parse_ndjson(b"{\"metric\":\"a\",\"kind\":\"sum\",\"value\":1,\"extra\":2}")
            .unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
        let err = parse_ndjson(b"not json").unwrap_err();
        assert!(matches!(err, IngestError::Invalid { line: Some(1), .. }));
        assert!(parse_ndjson(b"\n\n").is_err());
    }

    #[test]
    fn a_label_named_twice_is_refused_not_overwritten() {
        let body = br#"{"metric":"a","kind":"counter"}
{"metric":"a","kind":"counter","labels":{"az":"eu-1","cloud":"aws","az":"us-1"}}"#;
        let err = parse_ndjson(body).unwrap_err();
        assert!(
            matches!(&err, IngestError::Invalid { line: Some(2), message } if message.contains("label \"az\" appears more than once")),
            "{err:?}"
        );
        // A repeated top-level field was already refused, by serde.
        let err = parse_ndjson(br#"{"metric":"a","kind":"counter","metric":"b"}"#).unwrap_err();
        assert!(
            err.to_string().contains("duplicate field `metric`"),
            "{err}"
        );
        let parsed = parse_ndjson(br#"{"metric":"a","kind":"counter","labels":{"b":"1","a":""}}"#);
        assert_eq!(
            parsed.unwrap()[0].labels,
            [
                ("a".to_string(), String::new()),
                ("b".to_string(), "1".to_string())
            ]
        );
    }

    #[test]
    fn floats_are_read_exactly_as_written() {
        // serde_json's default float parsing was one ulp off for these.
        for v in [
            "103685477589223172036854775808",
            "1.0368547758922319e29",
            "2.2250738585072011e-308",
        ] {
            let line = format!(r#"{{"metric":"s","kind":"sum","value":{v}}}"#);
            let parsed = parse_ndjson(line.as_bytes()).unwrap();
            let exact: f64 = v.parse().unwrap();
            assert_eq!(parsed[0].points[0].value, SampleValue::Number(exact), "{v}");
        }
    }

    fn value_of(line: &str) -> Result<SampleValue, String> {
        parse_ndjson(line.as_bytes())
            .map(|s| s[0].points[0].value)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn integers_a_float_cannot_hold_exactly_are_refused() {
        let counter =
            |v: &str| value_of(&format!(r#"{{"metric":"c","kind":"counter","value":{v}}}"#));
        let err = counter("9007199254740993").unwrap_err();
        assert_eq!(
            err,
            "line 1: counter value 9007199254740993 cannot be held exactly: counter values are integers from 0 to 9007199254740992 (2^53)"
        );
        for v in [
            "18446744073709551615",
            "9223372036854775807",
            "9007199254740995",
        ] {
            assert!(
                counter(v).unwrap_err().contains("cannot be held exactly"),
                "{v}"
            );
        }
        assert_eq!(
            counter("9007199254740992"),
            Ok(SampleValue::Number(9_007_199_254_740_992.0))
        );
        assert_eq!(counter("0"), Ok(SampleValue::Number(0.0)));
        let sum = |v: &str| value_of(&format!(r#"{{"metric":"s","kind":"sum","value":{v}}}"#));
        let err = sum("-9007199254740993").unwrap_err();
        assert!(
            err.contains("sum value -9007199254740993 cannot be held exactly"),
            "{err}"
        );
        assert!(
            err.contains("-9007199254740992 to 9007199254740992"),
            "{err}"
        );
        // Integers a float holds exactly, however large, and float literals pass.
        assert_eq!(
            sum("1152921504606846976"),
            Ok(SampleValue::Number(2f64.powi(60)))
        );
        assert_eq!(
            sum("-9223372036854775808"),
            Ok(SampleValue::Number(-(2f64.powi(63))))
        );
        assert_eq!(sum("12.5"), Ok(SampleValue::Number(12.5)));
        assert_eq!(sum("1e300"), Ok(SampleValue::Number(1e300)));
    }
}
