//! The Prometheus remote-write receiver (remote write 1.0): `POST
//! /api/v1/write`, a snappy-compressed `prometheus.WriteRequest`, on the
//! node's HTTP port (docs/REMOTE_WRITE.md).
//!
//! A regional Prometheus (or vmagent, or Grafana Alloy) keeps scraping as
//! it does and adds strata with one `remote_write` entry. Its series are
//! converted ([`convert`]), cumulative ones (counters, histograms) turned
//! into deltas per series by the stream table, and admitted metric by
//! metric ([`crate::inputs::points`]). Remote write has no partial
//! success: a request is answered 204 once what could be taken is
//! committed; refused samples are counted
//! (`strata_remote_write_rejected_samples_total`) and logged at most once a
//! minute with why. A request that does not decode is answered 400 (the
//! sender drops it), a busy or stopping node 503 (the sender retries).

pub mod convert;
pub mod prompb;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use prost::Message as _;

use crate::ApiState;
use crate::api::json::refusal;
use crate::context::now_ms;
use crate::core::limits::ReportBudget;
use crate::core::stats::Stats;
use crate::inputs::points::{PointInput, PointSettings};
use crate::inputs::samples::{IngestError, Ingestor};
use crate::status::{Class, Classify};

/// The remote-write route.
pub const HTTP_PATH: &str = "/api/v1/write";

/// Cursor keys of the remote-write stream table.
pub const CURSOR_PREFIX: &str = "remote_write/";

/// Metric families whose type the receiver remembers from metadata.
const MAX_TYPES: usize = 100_000;

/// The receiver.
pub struct RemoteWrite {
    input: PointInput,
    /// Metric family → `MetricType`, from the metadata senders send.
    types: Mutex<HashMap<String, i32>>,
    node_id: String,
    params: strata_model::StateParams,
    /// Refusals are logged once a minute at most.
    refusal_log: ReportBudget,
}

impl RemoteWrite {
    /// A receiver with the stream table the store kept.
    pub fn new(
        ingestor: Arc<Ingestor>,
        settings: PointSettings,
        node_id: String,
    ) -> Result<RemoteWrite, strata_store::StoreError> {
        let params = settings.params;
        Ok(RemoteWrite {
            input: PointInput::new(ingestor, settings)?,
            types: Mutex::new(HashMap::new()),
            node_id,
            params,
            refusal_log: ReportBudget::new(1),
        })
    }

    /// Takes one decoded request; returns how many samples were merged.
    pub async fn write(&self, request: prompb::WriteRequest) -> Result<u64, IngestError> {
        let ingestor = self.input.ingestor();
        let stats = &ingestor.ctx.stats;
        Stats::add(&stats.remote_write_requests_total, 1);
        let samples = request
            .timeseries
            .iter()
            .map(|t| t.samples.len() + t.histograms.len())
            .sum();
        ingestor.check_lines(samples, "samples")?;
        let converted = {
            let mut types = self.types.lock();
            for m in &request.metadata {
                if types.len() < MAX_TYPES || types.contains_key(&m.metric_family_name) {
                    types.insert(m.metric_family_name.clone(), m.r#type);
                }
            }
            convert::convert(request, &types, &self.params, &self.node_id)
        };
        let exported = self
            .input
            .receive(converted.points, converted.rejected)
            .await?;
        Stats::add(&stats.remote_write_samples_total, exported.accepted);
        Stats::add(
            &stats.remote_write_rejected_samples_total,
            exported.rejected.count,
        );
        if exported.rejected.count > 0 && self.refusal_log.take(now_ms()) {
            tracing::warn!(rejected = exported.rejected.count, reasons = %exported.rejected.message(), "remote-write samples refused (further refusals this minute are only counted)");
        }
        Ok(exported.accepted)
    }
}

/// `POST /api/v1/write`.
pub async fn http_write(
    AxumState(node): AxumState<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let _timer = node.ctx.stats.latency.ingest_http.start_timer();
    let ingestor = &node.ingestor;
    let Some(receiver) = &node.remote_write else {
        return refusal(Class::Invalid, "this node has no remote-write receiver");
    };
    let body = match crate::api::body::read(body, &headers, &ingestor.limits).await {
        Ok(body) => body,
        Err(e) => {
            ingestor.count_rejected();
            return refusal(e.class(), e.to_string());
        }
    };
    let request = match prompb::WriteRequest::decode(body.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            ingestor.count_rejected();
            return refusal(
                Class::Invalid,
                format!(
                    "the body is not a remote-write WriteRequest (snappy-compressed protobuf): {e}"
                ),
            );
        }
    };
    match receiver.write(request).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            ingestor.count_rejected();
            // The sender retries on 5xx only: busy is a reason to retry.
            let class = match e.class() {
                Class::Busy => Class::Unavailable,
                other => other,
            };
            refusal(class, e.to_string())
        }
    }
}
