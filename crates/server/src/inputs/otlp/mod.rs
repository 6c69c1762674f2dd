//! The OpenTelemetry (OTLP) metrics receiver: OTLP/gRPC
//! (`opentelemetry.proto.collector.metrics.v1.MetricsService/Export`) and
//! OTLP/HTTP (`POST /v1/metrics`, protobuf or JSON, gzip or zstd).
//!
//! Both are served on the node's own ports (`grpc.listen`, `http.listen`)
//! and, with an `[otlp]` table, also on `otlp.listen` and
//! `otlp.http_listen` (by default the standard 4317 and 4318).
//!
//! An export is converted ([`convert`]), its cumulative points turned into
//! deltas by the stream table ([`crate::inputs::cumulative`]), then admitted
//! metric by metric through the validation every input shares
//! ([`Ingestor::validate_all`]): a metric that cannot be taken (another
//! kind, the cardinality limit, a minute too late) refuses its data points
//! and the others are merged. The answer's partial success says how many
//! data points were refused and why; nothing of a refused point is merged,
//! and the stream table moves only for points that were. With
//! `otlp.wait_commit` (the default) the answer comes once the data and the
//! stream table are committed together.

pub mod convert;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    metrics_service_server::MetricsService,
};
use prost::Message as _;
use strata_model::State;
use tokio::sync::Mutex;
use tonic::{Request, Response as GrpcResponse, Status};

use crate::ApiState;
use crate::context::now_ms;
use crate::core::stats::Stats;
use crate::inputs::cumulative::{Report, Step, Streams, Total};
use crate::inputs::samples::{Admitted, IngestError, Ingestor, RawSeries, RawState};
use crate::status::{Classify, grpc_status};

use convert::{Mapping, Point, Rejected, Value, convert, state_of};

/// The OTLP/HTTP route.
pub const HTTP_PATH: &str = "/v1/metrics";

/// Cursor keys of the OTLP stream table.
pub const CURSOR_PREFIX: &str = "otlp/";

/// How often the stream table is swept for silent streams.
const EXPIRY_EVERY_MS: i64 = 60_000;

/// The receiver both OTLP protocols hand their exports to.
pub struct OtlpReceiver {
    ingestor: Arc<Ingestor>,
    mapping: Mapping,
    wait_commit: bool,
    /// The stream table, held while an export is converted and enqueued
    /// (not while it waits for its commit): the deltas of a stream are
    /// computed and enqueued in the order its exports came.
    streams: Mutex<Table>,
}

struct Table {
    streams: Streams,
    last_expiry_ms: i64,
}

/// A point ready to admit: the state it merges, and the stream report it
/// moves (cumulative points).
type Ready = (Point, State, Option<(String, Report)>);

/// What an export came to.
#[derive(Debug, Default)]
pub struct Exported {
    /// Data points merged.
    pub accepted: u64,
    /// Data points refused, with why.
    pub rejected: Rejected,
}

/// The settings the receiver needs.
pub struct OtlpSettings {
    pub mapping: Mapping,
    pub max_streams: usize,
    pub stream_ttl_ms: i64,
    pub wait_commit: bool,
}

impl OtlpReceiver {
    /// A receiver with the stream table the store kept.
    pub fn new(
        ingestor: Arc<Ingestor>,
        settings: OtlpSettings,
    ) -> Result<OtlpReceiver, strata_store::StoreError> {
        let mut streams = Streams::new(
            CURSOR_PREFIX,
            "otlp.max_streams",
            settings.max_streams,
            settings.stream_ttl_ms,
        );
        streams.restore(ingestor.ctx.store.cursors(CURSOR_PREFIX)?);
        if !streams.is_empty() {
            tracing::info!(streams = streams.len(), "OTLP cumulative streams restored");
        }
        Ok(OtlpReceiver {
            ingestor,
            mapping: settings.mapping,
            wait_commit: settings.wait_commit,
            streams: Mutex::new(Table {
                streams,
                last_expiry_ms: now_ms(),
            }),
        })
    }

    /// Takes one export: everything it could, refusing the rest point by
    /// point. An error refuses the whole export (nothing merged): too many
    /// data points, or the node is busy or stopping.
    pub async fn export(
        &self,
        request: ExportMetricsServiceRequest,
    ) -> Result<Exported, IngestError> {
        let stats = &self.ingestor.ctx.stats;
        Stats::add(&stats.otlp_requests_total, 1);
        self.ingestor
            .check_lines(data_points(&request), "data points")?;
        let converted = convert(request, &self.mapping);
        Stats::add(
            &stats.otlp_dropped_attributes_total,
            converted.dropped_attributes,
        );
        let mut rejected = converted.rejected;
        let mut table = self.streams.lock().await;
        let now = now_ms();
        let ready = self.deltas(&table.streams, converted.points, &mut rejected);
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
        if accepted > 0 || !cursors.is_empty() {
            commit = self
                .ingestor
                .enqueue_admitted(admitted, cursors, self.wait_commit)
                .await?
                .1;
        }
        // Enqueued: the table moves, and the next export of a stream, which
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
        Stats::add(&stats.otlp_data_points_total, accepted);
        Stats::add(&stats.otlp_rejected_data_points_total, rejected.count);
        if rejected.count > 0 {
            tracing::debug!(rejected = rejected.count, reasons = %rejected.message(), "OTLP data points refused");
        }
        Ok(Exported { accepted, rejected })
    }

    /// The state each point merges: as it came, or the increase of its
    /// cumulative stream (a stale report merges nothing and is not refused).
    fn deltas(&self, streams: &Streams, points: Vec<Point>, rejected: &mut Rejected) -> Vec<Ready> {
        let mut ready = Vec::with_capacity(points.len());
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
            match streams.increase(&identity, &report) {
                Ok(Step::Stale) => {}
                Ok(Step::Counted { increase, .. }) => {
                    let bounds: &[f64] = match &report.total {
                        Total::Explicit { bounds, .. } => bounds,
                        _ => &[],
                    };
                    match state_of(increase, bounds, &self.mapping) {
                        Ok(state) => ready.push((point, state, Some((identity, report)))),
                        Err(e) => refuse(rejected, e),
                    }
                }
                Err(e) => refuse(rejected, e.to_string()),
            }
        }
        ready
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

/// Data points in an export, before anything is converted.
fn data_points(request: &ExportMetricsServiceRequest) -> usize {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    request
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        })
        .sum()
}

/// The OTLP answer: a partial success when something was refused.
fn response(exported: &Exported) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (exported.rejected.count > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: i64::try_from(exported.rejected.count).unwrap_or(i64::MAX),
            error_message: exported.rejected.message(),
        }),
    }
}

/// OTLP/gRPC.
pub struct OtlpGrpc {
    pub receiver: Arc<OtlpReceiver>,
}

#[tonic::async_trait]
impl MetricsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<GrpcResponse<ExportMetricsServiceResponse>, Status> {
        let ingestor = &self.receiver.ingestor;
        let _timer = ingestor.ctx.stats.latency.ingest_grpc.start_timer();
        crate::inputs::native::authenticate(ingestor, &request, "grpc OTLP Export")?;
        match self.receiver.export(request.into_inner()).await {
            Ok(exported) => Ok(GrpcResponse::new(response(&exported))),
            Err(e) => {
                ingestor.count_rejected();
                Err(grpc_status(&e))
            }
        }
    }
}

/// The `google.rpc.Status` an OTLP/HTTP error answer carries.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// How an OTLP/HTTP request is encoded, and so its answer.
#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

/// `POST /v1/metrics`.
pub async fn http_export(
    AxumState(node): AxumState<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let _timer = node.ctx.stats.latency.ingest_http.start_timer();
    let ingestor = &node.ingestor;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = match content_type.split(';').next().map(str::trim) {
        Some("application/x-protobuf") => Encoding::Protobuf,
        Some("application/json") => Encoding::Json,
        _ => {
            ingestor.count_rejected();
            let e = IngestError::Invalid {
                message: format!(
                    "content-type {content_type:?}: OTLP/HTTP takes application/x-protobuf or application/json"
                ),
                line: None,
            };
            return http_error(
                Encoding::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &e.to_string(),
            );
        }
    };
    let body = match crate::api::body::read(body, &headers, &ingestor.limits).await {
        Ok(body) => body,
        Err(e) => {
            ingestor.count_rejected();
            return http_error(encoding, e.class().http_status(), &e.to_string());
        }
    };
    let request = match encoding {
        Encoding::Protobuf => ExportMetricsServiceRequest::decode(body.as_ref())
            .map_err(|e| format!("the body is not an OTLP ExportMetricsServiceRequest: {e}")),
        Encoding::Json => serde_json::from_slice(&body)
            .map_err(|e| format!("the body is not OTLP/JSON ExportMetricsServiceRequest: {e}")),
    };
    let request = match request {
        Ok(r) => r,
        Err(message) => {
            ingestor.count_rejected();
            return http_error(encoding, StatusCode::BAD_REQUEST, &message);
        }
    };
    let Some(receiver) = &node.otlp else {
        return http_error(
            encoding,
            StatusCode::NOT_FOUND,
            "this node has no OTLP receiver",
        );
    };
    match receiver.export(request).await {
        Ok(exported) => {
            let answer = response(&exported);
            match encoding {
                Encoding::Protobuf => (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/x-protobuf"),
                    )],
                    answer.encode_to_vec(),
                )
                    .into_response(),
                Encoding::Json => axum::Json(answer).into_response(),
            }
        }
        Err(e) => {
            ingestor.count_rejected();
            let mut answer = http_error(encoding, e.class().http_status(), &e.to_string());
            if let Some(after) = e.class().retry_after() {
                answer.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(after.as_secs().max(1)),
                );
            }
            answer
        }
    }
}

/// An OTLP/HTTP error answer: a `google.rpc.Status` in the request's encoding.
fn http_error(encoding: Encoding, status: StatusCode, message: &str) -> Response {
    let grpc_code = match status.as_u16() {
        400 | 413 | 415 | 422 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        429 => tonic::Code::ResourceExhausted,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    };
    let rpc = RpcStatus {
        code: grpc_code as i32,
        message: message.to_string(),
    };
    match encoding {
        Encoding::Protobuf => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            )],
            rpc.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => (
            status,
            axum::Json(serde_json::json!({"code": rpc.code, "message": rpc.message})),
        )
            .into_response(),
    }
}
