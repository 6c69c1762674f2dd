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

use std::collections::HashSet;

use foldhash::fast::RandomState;
use std::sync::Arc;

use strata_model::{Kind, MINUTE_MS, SampleValue, SeriesKey, State, minute_start};
use tokio::sync::{Semaphore, oneshot};

use crate::api::auth::{RefusalLog, Tokens};
use crate::api::request_id;
use crate::context::{Context, now_ms};
use crate::core::cardinality::{Cardinality, CardinalityError};
use crate::core::commit::Ticket;
use crate::core::limits::{Limits, MessageLimits, ReportBudget};
use crate::core::pipeline::{Pipeline, Submission};
use crate::core::registry::{Conflict, Registry};
use crate::core::self_metrics::SELF_PREFIX;
use crate::core::shard::SampleItem;
use crate::core::stats::Stats;
use crate::status::{Class, Classify};

mod ndjson;

pub use ndjson::parse_ndjson;
pub(crate) use ndjson::scan_agrees;

/// Samples of one series as an input read them, before validation. NDJSON
/// gives one per distinct series of the body, its points in the order of
/// their lines; native gRPC one per `SeriesSamples`. Either way the series key
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

/// What [`Ingestor::validate_all`] has admitted so far of a request.
struct Checked {
    /// One key per distinct series, shared by its samples and states.
    interned: HashSet<Arc<SeriesKey>, RandomState>,
    /// What the series ask the registry for, registered once all are valid.
    wanted: Vec<Wanted>,
    admitted: Admitted,
}

/// The line (or point) of a series' first sample or state.
fn first_line(s: &RawSeries) -> Option<usize> {
    let first = s.points.first().map(|p| p.line);
    first.or_else(|| s.states.first().map(|p| p.line))
}

/// A problem of a request: what it is refused with if it is the first (by
/// line), and the counter that then counts it. Problems found while looking
/// for the first are not counted.
struct Refusal {
    line: usize,
    message: String,
    counted: Option<Counted>,
}

/// The node counters a refusal may add to.
#[derive(Clone, Copy)]
enum Counted {
    /// `limit_refusals_total`: a name or label over `[limits]`.
    Limit,
    /// `future_samples_total`.
    Future,
    /// `late_samples_total`.
    Late,
}

impl Refusal {
    fn new(line: usize, message: impl Into<String>) -> Self {
        Refusal {
            line,
            message: message.into(),
            counted: None,
        }
    }

    fn counted(self, counted: Counted) -> Self {
        Refusal {
            counted: Some(counted),
            ..self
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
    ///
    /// Series are checked in turn. A problem found is reported unless a
    /// series after it has one at a smaller line (NDJSON gathers the lines
    /// of a series, whose later lines may follow the next series' first):
    /// the problem of the smallest line is the request's, and the only one
    /// counted.
    pub fn validate_all(&self, input: Vec<RawSeries>) -> Result<Admitted, IngestError> {
        let points = input.iter().map(|s| s.points.len() + s.states.len()).sum();
        self.check_lines(points, "lines")?;
        let window = TimeWindow::new(now_ms(), &self.settings);
        let samples = input.iter().map(|s| s.points.len()).sum();
        let mut checked = Checked {
            interned: HashSet::default(),
            wanted: Vec::with_capacity(input.len()),
            admitted: Admitted {
                samples: Vec::with_capacity(samples),
                ..Admitted::default()
            },
        };
        let mut input = input.into_iter();
        while let Some(s) = input.next() {
            if let Err(found) = self.check_series(s, &window, &mut checked) {
                let first = self.first_refusal(found, input.as_slice(), &window);
                return Err(self.refuse(first));
            }
        }
        let Checked {
            interned,
            wanted,
            admitted,
        } = checked;
        let budget = self
            .cardinality
            .admit(
                &self.ctx.node_id,
                interned.iter().map(|key| &**key),
                window.now,
            )
            .map_err(|e| {
                self.cardinality_refused(&e);
                IngestError::Limited(e.to_string())
            })?;
        if let Err(e) = self.register(&wanted) {
            self.cardinality.release(budget);
            return Err(e);
        }
        Ok(admitted)
    }

    /// Checks one series, its points and its states, and adds them to
    /// `checked`; stops at the first problem, in the order of its lines.
    fn check_series(
        &self,
        s: RawSeries,
        window: &TimeWindow,
        checked: &mut Checked,
    ) -> Result<(), Refusal> {
        let Some(line) = first_line(&s) else {
            return Ok(());
        };
        let key = self.series_key(&s.metric, &s.labels, s.kind, line)?;
        let apdex_threshold = self.apdex_threshold(&key, s.kind, s.threshold, line)?;
        let series = match checked.interned.get(&key) {
            Some(a) => a.clone(),
            None => {
                let a = Arc::new(key);
                checked.interned.insert(a.clone());
                a
            }
        };
        for p in &s.points {
            let (bucket_ms, ts_ms) = self.check_point(s.kind, p, window)?;
            checked.admitted.samples.push(SampleItem {
                series: series.clone(),
                kind: s.kind,
                bucket_ms,
                ts_ms,
                value: p.value,
                apdex_threshold,
            });
        }
        for p in s.states {
            let (bucket_ms, ts_ms) = self.check_state(s.kind, &p, window)?;
            let admitted = &mut checked.admitted;
            admitted.newest_state_ms = admitted.newest_state_ms.max(Some(ts_ms));
            admitted.increments.push(strata_model::Increment {
                series: series.clone(),
                bucket_ms,
                state: p.state,
            });
        }
        checked.wanted.push(Wanted {
            line,
            series,
            kind: s.kind,
            threshold: (s.kind == Kind::Apdex).then_some(apdex_threshold),
        });
        Ok(())
    }

    /// The problem at the smallest line: `found`, or one the series not
    /// checked yet have at a smaller line.
    fn first_refusal(&self, found: Refusal, rest: &[RawSeries], window: &TimeWindow) -> Refusal {
        rest.iter()
            .fold(found, |first, s| match self.series_refusal(s, window) {
                Some(r) if r.line < first.line => r,
                _ => first,
            })
    }

    /// The problem of a series at its smallest line, if it has one.
    fn series_refusal(&self, s: &RawSeries, window: &TimeWindow) -> Option<Refusal> {
        let line = first_line(s)?;
        let series = self
            .series_key(&s.metric, &s.labels, s.kind, line)
            .and_then(|key| self.apdex_threshold(&key, s.kind, s.threshold, line));
        if let Err(r) = series {
            return Some(r);
        }
        let points = s
            .points
            .iter()
            .filter_map(|p| self.check_point(s.kind, p, window).err());
        let states = s
            .states
            .iter()
            .filter_map(|p| self.check_state(s.kind, p, window).err());
        points.chain(states).min_by_key(|r| r.line)
    }

    /// The error a request is refused with, counting its problem.
    fn refuse(&self, r: Refusal) -> IngestError {
        let stats = &self.ctx.stats;
        let counter = match r.counted {
            None => None,
            Some(Counted::Limit) => Some(&stats.limit_refusals_total),
            Some(Counted::Future) => Some(&stats.future_samples_total),
            Some(Counted::Late) => Some(&stats.late_samples_total),
        };
        if let Some(counter) = counter {
            Stats::add(counter, 1);
        }
        invalid(r.line, r.message)
    }

    /// The series of a sample group: not a self-metric name, a valid key,
    /// and one increment of it fits a message of the federation link.
    fn series_key(
        &self,
        metric: &str,
        labels: &[(String, String)],
        kind: Kind,
        line: usize,
    ) -> Result<SeriesKey, Refusal> {
        if metric.starts_with(SELF_PREFIX) {
            return Err(Refusal::new(
                line,
                format!(
                    "metric names starting with {SELF_PREFIX:?} are reserved for the node's own metrics"
                ),
            ));
        }
        let labels = labels.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        if let Err(e) = self.limits.check_series(metric, labels.clone()) {
            return Err(Refusal::new(line, e).counted(Counted::Limit));
        }
        let key =
            SeriesKey::from_strs(metric, labels).map_err(|e| Refusal::new(line, e.to_string()))?;
        self.settings
            .message_limits
            .check(&key, kind)
            .map_err(|e| Refusal::new(line, e))?;
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
    ) -> Result<f64, Refusal> {
        let threshold = match named {
            Some(t) if !(t.is_finite() && t > 0.0) => {
                return Err(Refusal::new(
                    line,
                    format!("threshold must be a positive number, got {t}"),
                ));
            }
            Some(_) if kind != Kind::Apdex => {
                return Err(Refusal::new(
                    line,
                    "threshold is only valid for apdex samples",
                ));
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
    ) -> Result<(i64, i64), Refusal> {
        State::validate_sample(kind, p.value).map_err(|e| Refusal::new(p.line, e.to_string()))?;
        self.check_time(p.line, p.ts_ms, window)
    }

    /// One state: of the series' kind, valid, and of a minute the node
    /// still takes. Returns its (bucket, event time).
    fn check_state(
        &self,
        kind: Kind,
        p: &RawState,
        window: &TimeWindow,
    ) -> Result<(i64, i64), Refusal> {
        if p.state.kind() != kind {
            return Err(Refusal::new(
                p.line,
                format!("a {} state for a {kind} series", p.state.kind()),
            ));
        }
        p.state
            .validate()
            .map_err(|e| Refusal::new(p.line, e.to_string()))?;
        self.check_time(p.line, p.ts_ms, window)
    }

    /// An event time (`None`: now): not too far in the future, not later
    /// than the allowed lateness. Returns its (bucket, event time).
    fn check_time(
        &self,
        line: usize,
        ts_ms: Option<i64>,
        window: &TimeWindow,
    ) -> Result<(i64, i64), Refusal> {
        let ts_ms = ts_ms.unwrap_or(window.now);
        // The future first: the bucket end of a far-future ts would overflow.
        if ts_ms > window.newest_ts {
            let message = format!(
                "ts_ms {ts_ms} is in the future: more than {} s ({}) ahead of this node's clock ({})",
                self.settings.max_future_ms / 1000,
                self.limits.max_future_key,
                window.now
            );
            return Err(Refusal::new(line, message).counted(Counted::Future));
        }
        let bucket_ms = minute_start(ts_ms);
        if bucket_ms.saturating_add(MINUTE_MS) <= window.oldest_bucket_end {
            let message = format!(
                "ts_ms {ts_ms} is older than the allowed lateness ({} s)",
                self.settings.allowed_lateness_ms / 1000
            );
            return Err(Refusal::new(line, message).counted(Counted::Late));
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
        let newest = samples.iter().map(|s| s.ts_ms).max().max(newest_state_ms);
        let pipeline = self.pipeline.clone();
        // The flush that commits these samples names the request.
        let origin = request_id::current().map(|id| id.shared());
        // Durable in the request log: answered now, merged by the next flush.
        // A request without data (a retried report answered once its
        // original's flush is committed) still waits for that commit, as does
        // one whose cursors must be committed with its data.
        if wait_commit && n > 0 && cursors.is_empty() && pipeline.logs_requests() {
            request_id::spawn_blocking(move || {
                pipeline.submit_logged(samples, increments, origin, newest)
            })
            .await
            .map_err(|_| IngestError::Stopping)?
            .map_err(IngestError::CommitFailed)?;
            self.count_accepted(n);
            return Ok((n, None));
        }
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
        // On this thread when that cannot wait, else from a blocking one.
        let submission = Submission {
            samples,
            increments,
            ticket,
            origin,
            newest_event: newest,
        };
        super::submit(&pipeline, submission)
            .await
            .map_err(|_| IngestError::Stopping)?;
        self.count_accepted(n);
        let pending = rx.map(|done| PendingCommit {
            done,
            _permit: permit,
        });
        Ok((n, pending))
    }

    /// Counts an accepted request of `n` samples and states.
    fn count_accepted(&self, n: usize) {
        Stats::add(&self.ctx.stats.ingest_samples_total, n as u64);
        Stats::add(&self.ctx.stats.ingest_requests_total, 1);
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

    /// An ingestor over an idle pipeline (validation only reads its context),
    /// taking event times up to ten minutes late and five ahead.
    fn ingestor() -> (Ingestor, crate::core::pipeline::PipelineThreads) {
        ingestor_with(crate::core::pipeline::PipelineSettings::standalone())
    }

    fn ingestor_with(
        settings: crate::core::pipeline::PipelineSettings,
    ) -> (Ingestor, crate::core::pipeline::PipelineThreads) {
        let store = Arc::new(strata_store::MemoryStore::new(
            strata_store::StoreOptions::default(),
        ));
        let ctx = Arc::new(Context::new("test", store));
        let (pipeline, threads) = Pipeline::start(settings, ctx).unwrap();
        let settings = IngestSettings {
            allowed_lateness_ms: 600_000,
            max_future_ms: 300_000,
            default_apdex_threshold: 500.0,
            message_limits: Arc::new(MessageLimits::new(4 << 20, 2)),
        };
        let registry = Arc::new(Registry::default());
        (Ingestor::new(pipeline, registry, settings, 1), threads)
    }

    fn validated(ingestor: &Ingestor, body: &str) -> Result<Vec<SampleItem>, IngestError> {
        parse_ndjson(body.as_bytes()).and_then(|s| ingestor.validate(s))
    }

    fn counted(ingestor: &Ingestor) -> [u64; 3] {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &ingestor.ctx.stats;
        [
            stats.limit_refusals_total.load(Relaxed),
            stats.future_samples_total.load(Relaxed),
            stats.late_samples_total.load(Relaxed),
        ]
    }

    /// A request is submitted on the async thread when the shard queues
    /// have room to spare, else from a blocking thread (queues of two
    /// messages never have): either way it is merged whole, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_are_merged_alike_whichever_thread_submits_them() {
        use crate::core::pipeline::PipelineSettings;
        let now = now_ms();
        let body: String = (0..40)
            .map(|i| {
                format!(
                    r#"{{"metric":"lat","kind":"histogram","labels":{{"svc":"{}"}},"ts_ms":{now},"value":{i}}}"#,
                    i % 3
                ) + "\n"
            })
            .collect();
        let mut merged = Vec::new();
        for capacity in [1024, 2] {
            let (ingestor, threads) = ingestor_with(PipelineSettings {
                shards: 2,
                carrier_capacity: capacity,
                flush_interval: std::time::Duration::from_millis(20),
                ..PipelineSettings::standalone()
            });
            for _ in 0..3 {
                let items = validated(&ingestor, &body).unwrap();
                let (n, pending) = ingestor
                    .enqueue_admitted(
                        Admitted {
                            samples: items,
                            ..Admitted::default()
                        },
                        Vec::new(),
                        true,
                    )
                    .await
                    .unwrap();
                assert_eq!(n, 40);
                pending.expect("waits for its commit").wait().await.unwrap();
            }
            let store = ingestor.ctx.store.clone();
            let mut states: Vec<(String, u64, String)> = store
                .series_of("lat")
                .iter()
                .map(|key| {
                    let read = store.read(key, 0, i64::MAX).unwrap();
                    let count = read
                        .iter()
                        .map(|(_, state)| match state {
                            State::Histogram(h) => h.count(),
                            other => panic!("{other:?}"),
                        })
                        .sum();
                    (key.to_string(), count, format!("{read:?}"))
                })
                .collect();
            states.sort();
            merged.push(states);
            threads.stop();
        }
        let counts: Vec<u64> = merged[0].iter().map(|(_, n, _)| *n).collect();
        assert_eq!(counts, [42, 39, 39], "3 requests of 14, 13 and 13 lines");
        assert_eq!(merged[0], merged[1]);
    }

    #[test]
    fn gathered_lines_are_admitted_in_full() {
        let (ingestor, threads) = ingestor();
        let body = r#"{"metric":"lat","kind":"histogram","labels":{"svc":"a"},"value":1}
{"metric":"req","kind":"counter","labels":{"svc":"a"}}
{"metric":"lat","kind":"histogram","labels":{"svc":"a"},"value":2}
{"metric":"lat","kind":"histogram","labels":{ "svc" : "a" },"value":3}"#;
        let items = validated(&ingestor, body).unwrap();
        assert_eq!(items.len(), 4);
        let lat: Vec<_> = items
            .iter()
            .filter(|i| i.series.metric() == "lat")
            .collect();
        let values: Vec<SampleValue> = lat.iter().map(|i| i.value).collect();
        let want = [1.0, 2.0, 3.0].map(SampleValue::Number);
        assert_eq!(values, want, "the samples of a series keep their order");
        // Two spellings of one series: one interned key.
        assert!(Arc::ptr_eq(&lat[0].series, &lat[2].series));
        assert_eq!(
            ingestor.registry.get("lat").map(|m| m.kind),
            Some(Kind::Histogram)
        );
        threads.stop();
    }

    #[test]
    fn the_first_bad_line_is_named_though_a_later_line_of_an_earlier_series_is_bad() {
        let (ingestor, threads) = ingestor();
        let late = now_ms() - 3_600_000;
        let future = now_ms() + 3_600_000;
        let a = r#"{"metric":"a","kind":"counter","labels":{"s":"1"}"#;
        let b = r#"{"metric":"b","kind":"counter","labels":{"s":"1"}"#;
        // Series a (lines 1, 4) is checked first; its line 4 is late, but
        // line 3 of series b is in the future, and is the one reported.
        let body = format!("{a}}}\n{b}}}\n{b},\"ts_ms\":{future}}}\n{a},\"ts_ms\":{late}}}");
        let err = validated(&ingestor, &body).unwrap_err();
        assert!(
            matches!(&err, IngestError::Invalid { line: Some(3), message } if message.contains("in the future")),
            "{err:?}"
        );
        // Only the problem reported is counted.
        assert_eq!(counted(&ingestor), [0, 1, 0]);
        assert!(
            ingestor.registry.get("a").is_none(),
            "nothing is registered"
        );
        // A series whose key is refused names its first line.
        let c = r#"{"metric":"strata_c","kind":"counter"}"#;
        let body = format!("{a}}}\n{c}\n{a},\"ts_ms\":{late}}}\n{c}");
        let err = validated(&ingestor, &body).unwrap_err();
        assert!(
            matches!(&err, IngestError::Invalid { line: Some(2), message } if message.contains("reserved")),
            "{err:?}"
        );
        // The earliest of several later series.
        let d = r#"{"metric":"d","kind":"sum","value":1"#;
        let body = format!(
            "{a}}}\n{b}}}\n{d}}}\n{a},\"ts_ms\":{late}}}\n{d},\"ts_ms\":{future}}}\n{b},\"ts_ms\":{future}}}"
        );
        let err = validated(&ingestor, &body).unwrap_err();
        assert!(
            matches!(err, IngestError::Invalid { line: Some(4), .. }),
            "{err:?}"
        );
        assert_eq!(counted(&ingestor), [0, 1, 1]);
        threads.stop();
    }

    #[test]
    fn a_conflict_names_the_first_line_of_the_metric() {
        let (ingestor, threads) = ingestor();
        let body = r#"{"metric":"m","kind":"counter","labels":{"s":"1"}}
{"metric":"m","kind":"sum","labels":{"s":"2"},"value":1}
{"metric":"m","kind":"counter","labels":{"s":"1"}}
{"metric":"m","kind":"sum","labels":{"s":"2"},"value":1}"#;
        let err = validated(&ingestor, body).unwrap_err();
        assert!(
            matches!(err, IngestError::Invalid { line: Some(2), .. }),
            "{err:?}"
        );
        threads.stop();
    }
}
