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
use tonic::{Request, Response as GrpcResponse, Status};

use crate::ApiState;
use crate::core::stats::Stats;
use crate::inputs::points::{Exported, PointInput, PointSettings};
use crate::inputs::samples::{IngestError, Ingestor};
use crate::status::{Classify, grpc_status};

use convert::{Mapping, convert};

/// The OTLP/HTTP route.
pub const HTTP_PATH: &str = "/v1/metrics";

/// Cursor keys of the OTLP stream table.
pub const CURSOR_PREFIX: &str = "otlp/";

/// The receiver both OTLP protocols hand their exports to.
pub struct OtlpReceiver {
    input: PointInput,
    mapping: Mapping,
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
        let input = PointInput::new(
            ingestor,
            PointSettings {
                prefix: CURSOR_PREFIX,
                max_key: "otlp.max_streams",
                max_streams: settings.max_streams,
                stream_ttl_ms: settings.stream_ttl_ms,
                wait_commit: settings.wait_commit,
                params: settings.mapping.params,
            },
        )?;
        Ok(OtlpReceiver {
            input,
            mapping: settings.mapping,
        })
    }

    /// Takes one export: everything it could, refusing the rest point by
    /// point. An error refuses the whole export (nothing merged): too many
    /// data points, or the node is busy or stopping.
    pub async fn export(
        &self,
        request: ExportMetricsServiceRequest,
    ) -> Result<Exported, IngestError> {
        let ingestor = self.input.ingestor();
        let stats = &ingestor.ctx.stats;
        Stats::add(&stats.otlp_requests_total, 1);
        ingestor.check_lines(data_points(&request), "data points")?;
        let converted = convert(request, &self.mapping);
        Stats::add(
            &stats.otlp_dropped_attributes_total,
            converted.dropped_attributes,
        );
        let exported = self
            .input
            .receive(converted.points, converted.rejected)
            .await?;
        Stats::add(&stats.otlp_data_points_total, exported.accepted);
        Stats::add(
            &stats.otlp_rejected_data_points_total,
            exported.rejected.count,
        );
        if exported.rejected.count > 0 {
            tracing::debug!(rejected = exported.rejected.count, reasons = %exported.rejected.message(), "OTLP data points refused");
        }
        Ok(exported)
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
        let ingestor = self.receiver.input.ingestor();
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
