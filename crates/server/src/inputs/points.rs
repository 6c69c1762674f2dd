//! What the inputs that receive pre-aggregated data points (OTLP, remote
//! write) share: a point's conversion into a state, the stream table that
//! turns cumulative points into deltas, and admission metric by metric.
//!
//! [`PointInput::receive`] takes a request's converted points: the
//! cumulative ones become increases through the stream table
//! ([`crate::inputs::cumulative`]), then every point is admitted, metric by
//! metric, by the validation every input shares
//! ([`Ingestor::validate_all`]): a metric that cannot be taken (another
//! kind, the cardinality limit, a minute too late) refuses its points and
//! the others are merged. Nothing of a refused point is merged, and the
//! stream table moves only for points that were. The table's cursors are
//! committed in the flush that holds the points; with `wait_commit` the
//! request is answered once that flush is committed.

use std::collections::HashMap;
use std::sync::Arc;

use strata_model::{ExpHist, Kind, State, StateParams, Sum};
use tokio::sync::Mutex;

use crate::context::now_ms;
use crate::inputs::cumulative::{Increase, Report, Step, Streams, Total};
use crate::inputs::samples::{Admitted, IngestError, Ingestor, RawSeries, RawState};

/// What one exported data point becomes.
#[derive(Debug)]
pub struct Point {
    /// The data point's place in the request (1-based), which errors name.
    pub ordinal: usize,
    pub metric: String,
    pub kind: Kind,
    pub labels: Vec<(String, String)>,
    /// Event time in ms; `None`: the point gave none (now).
    pub ts_ms: Option<i64>,
    pub value: Value,
}

/// A point's contribution.
#[derive(Debug)]
pub enum Value {
    /// A state to merge as it is (delta points, gauges).
    State(State),
    /// A cumulative report, turned into a state by the stream table.
    Cumulative {
        /// The stream: resource, scope, metric and attributes.
        identity: String,
        report: Report,
    },
}

/// Data points not taken, with why.
#[derive(Debug, Default)]
pub struct Rejected {
    pub count: u64,
    /// The first few reasons, for the partial-success message.
    pub reasons: Vec<String>,
}

/// Reasons kept for the partial-success message.
const REASONS_KEPT: usize = 5;

impl Rejected {
    /// Counts one refused data point (or `n`), keeping the first reasons.
    pub fn add(&mut self, n: u64, reason: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        self.count += n;
        if self.reasons.len() < REASONS_KEPT {
            self.reasons.push(reason());
        }
    }

    /// The partial-success message: the first reasons, and how many more.
    pub fn message(&self) -> String {
        let mut text = self.reasons.join("; ");
        let more = self.count.saturating_sub(self.reasons.len() as u64);
        if more > 0 && !text.is_empty() {
            text.push_str(&format!(" (and {more} more data points refused)"));
        }
        text
    }
}

/// How often the stream table is swept for silent streams.
const EXPIRY_EVERY_MS: i64 = 60_000;

/// A point ready to admit: the state it merges, and the stream report it
/// moves (cumulative points).
type Ready = (Point, State, Option<(String, Report)>);

/// What a request came to.
#[derive(Debug, Default)]
pub struct Exported {
    /// Points merged.
    pub accepted: u64,
    /// Points refused, with why.
    pub rejected: Rejected,
}

/// An input of data points with its stream table.
pub struct PointInput {
    ingestor: Arc<Ingestor>,
    /// Scale and bound of the exponential histograms made from explicit buckets.
    params: StateParams,
    wait_commit: bool,
    /// The stream table, held while a request is converted and enqueued
    /// (not while it waits for its commit): the deltas of a stream are
    /// computed and enqueued in the order its requests came.
    streams: Mutex<Table>,
}

struct Table {
    streams: Streams,
    last_expiry_ms: i64,
}

/// What a [`PointInput`] is: its cursor prefix, its bound and how long its
/// streams live.
pub struct PointSettings {
    /// Cursor key prefix of its stream table (`"otlp/"`).
    pub prefix: &'static str,
    /// The config key bounding its stream table, which refusals name.
    pub max_key: &'static str,
    pub max_streams: usize,
    pub stream_ttl_ms: i64,
    pub wait_commit: bool,
    pub params: StateParams,
}

impl PointInput {
    /// An input with the stream table the store kept.
    pub fn new(
        ingestor: Arc<Ingestor>,
        settings: PointSettings,
    ) -> Result<PointInput, strata_store::StoreError> {
        let mut streams = Streams::new(
            settings.prefix,
            settings.max_key,
            settings.max_streams,
            settings.stream_ttl_ms,
        );
        streams.restore(ingestor.ctx.store.cursors(settings.prefix)?);
        if !streams.is_empty() {
            tracing::info!(
                prefix = settings.prefix,
                streams = streams.len(),
                "cumulative streams restored"
            );
        }
        Ok(PointInput {
            ingestor,
            params: settings.params,
            wait_commit: settings.wait_commit,
            streams: Mutex::new(Table {
                streams,
                last_expiry_ms: now_ms(),
            }),
        })
    }

    /// The ingestor the points are admitted through.
    pub fn ingestor(&self) -> &Arc<Ingestor> {
        &self.ingestor
    }

    /// Takes a request's points: everything it could, refusing the rest
    /// point by point (added to `rejected`). An error refuses the whole
    /// request (nothing merged): the node is busy or stopping, or the commit
    /// failed.
    pub async fn receive(
        &self,
        points: Vec<Point>,
        mut rejected: Rejected,
    ) -> Result<Exported, IngestError> {
        let mut table = self.streams.lock().await;
        let now = now_ms();
        let (ready, stale) = self.deltas(&table.streams, points, &mut rejected);
        let (admitted, taken) = self.admit(ready, &mut rejected);
        let mut cursors: Vec<strata_store::Cursor> = taken
            .iter()
            .map(|(identity, report)| table.streams.cursor(identity, report, now))
            .collect();
        let expire = now.saturating_sub(table.last_expiry_ms) >= EXPIRY_EVERY_MS;
        let mut expired = Vec::new();
        if expire {
            expired = table.streams.expiring(now);
            cursors.extend(
                expired
                    .iter()
                    .map(|identity| table.streams.delete_cursor(identity)),
            );
        }
        let accepted = (admitted.samples.len() + admitted.increments.len()) as u64;
        let mut commit = None;
        // A stale report (a retry) may repeat one whose flush is not
        // committed yet: with wait_commit, it is answered after that flush
        // too (an empty request waits for the next commit).
        if accepted > 0 || !cursors.is_empty() || (stale && self.wait_commit) {
            commit = self
                .ingestor
                .enqueue_admitted(admitted, cursors, self.wait_commit)
                .await?
                .1;
        }
        // Enqueued: the table moves, and the next report of a stream, which
        // lands in this flush or a later one, is counted from here. (Should
        // this commit fail, the node stops committing until it is restarted,
        // and the table is read back from the store.)
        for (identity, report) in taken {
            table.streams.take(&identity, report, now);
        }
        if expire {
            table.streams.forget(&expired);
            table.last_expiry_ms = now;
        }
        drop(table);
        if let Some(commit) = commit {
            commit.wait().await?;
        }
        Ok(Exported { accepted, rejected })
    }

    /// The state each point merges: as it came, or the increase of its
    /// cumulative stream (a stale report merges nothing and is not
    /// refused); and whether any report was stale.
    fn deltas(
        &self,
        streams: &Streams,
        points: Vec<Point>,
        rejected: &mut Rejected,
    ) -> (Vec<Ready>, bool) {
        let mut ready = Vec::with_capacity(points.len());
        let mut pending = HashMap::new();
        let mut stale = false;
        for mut point in points {
            let value = std::mem::replace(&mut point.value, Value::State(State::Counter(0)));
            let (identity, report) = match value {
                Value::State(state) => {
                    ready.push((point, state, None));
                    continue;
                }
                Value::Cumulative { identity, report } => (identity, report),
            };
            let refuse = |rejected: &mut Rejected, e: String| {
                rejected.add(1, || {
                    format!(
                        "metric {:?}, data point {}: {e}",
                        point.metric, point.ordinal
                    )
                })
            };
            match streams.increase(&mut pending, &identity, &report) {
                Ok(Step::Stale) => stale = true,
                Ok(Step::Counted { increase, .. }) => {
                    let bounds: &[f64] = match &report.total {
                        Total::Explicit { bounds, .. } => bounds,
                        _ => &[],
                    };
                    match state_of(increase, bounds, &self.params) {
                        Ok(state) => ready.push((point, state, Some((identity, report)))),
                        Err(e) => refuse(rejected, e),
                    }
                }
                Err(e) => refuse(rejected, e.to_string()),
            }
        }
        (ready, stale)
    }

    /// Validates the points metric by metric; returns what is admitted and
    /// the stream reports it holds.
    fn admit(
        &self,
        ready: Vec<Ready>,
        rejected: &mut Rejected,
    ) -> (Admitted, Vec<(String, Report)>) {
        let mut groups: Vec<Vec<Ready>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for item in ready {
            let i = *index.entry(item.0.metric.clone()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[i].push(item);
        }
        let mut admitted = Admitted::default();
        let mut taken = Vec::new();
        for group in groups {
            let n = group.len() as u64;
            let mut input = Vec::with_capacity(group.len());
            let mut reports = Vec::new();
            for (point, state, report) in group {
                reports.extend(report);
                input.push(RawSeries {
                    metric: point.metric,
                    kind: point.kind,
                    labels: point.labels,
                    threshold: None,
                    points: Vec::new(),
                    states: vec![RawState {
                        line: point.ordinal,
                        ts_ms: point.ts_ms,
                        state,
                    }],
                });
            }
            match self.ingestor.validate_all(input) {
                Ok(a) => {
                    admitted.increments.extend(a.increments);
                    admitted.newest_state_ms = admitted.newest_state_ms.max(a.newest_state_ms);
                    taken.extend(reports);
                }
                Err(e) => rejected.add(n, || point_error(&e)),
            }
        }
        (admitted, taken)
    }
}

/// An admission error naming the data point (`line` is its number).
fn point_error(e: &IngestError) -> String {
    match e {
        IngestError::Invalid {
            message,
            line: Some(n),
        } => format!("data point {n}: {message}"),
        other => other.to_string(),
    }
}

/// An explicit-bucket histogram as an exponential one at the node's scale.
pub fn explicit(
    bounds: &[f64],
    counts: &[u64],
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    params: &StateParams,
) -> Result<ExpHist, String> {
    ExpHist::from_explicit_buckets(
        bounds,
        counts,
        sum.filter(|s| s.is_finite()),
        min,
        max,
        params.exp_histogram_scale,
        params.exp_histogram_max_buckets,
    )
    .map_err(|e| e.to_string())
}

/// The state of an increase: `counter`, `sum` or `exp_histogram`
/// (`bounds`: those of an explicit-bucket increase).
pub fn state_of(increase: Increase, bounds: &[f64], params: &StateParams) -> Result<State, String> {
    match increase {
        Increase::Int(v) => Ok(State::Counter(v)),
        Increase::Float(v) => {
            let mut s = Sum::default();
            s.add(v).map_err(|e| e.to_string())?;
            Ok(State::Sum(s))
        }
        Increase::Explicit { counts, sum } => {
            let sum = sum.is_finite().then_some(sum);
            explicit(bounds, &counts, sum, None, None, params)
                .map(|h| State::ExpHistogram(Box::new(h)))
        }
        Increase::Exp(h) => Ok(State::ExpHistogram(Box::new(h))),
    }
}
