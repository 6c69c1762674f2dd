//! Native ingest: strata's own batched gRPC push (`Ingest/Push`), admitted
//! by the same all-or-nothing validation as NDJSON. Errors are
//! [`IngestError`]s, given their gRPC codes by [`crate::status`].
//!
//! With `http.token` set, a push must carry `authorization: Bearer <token>`
//! metadata with it or `http.ingest_token`, as the HTTP ingest route does;
//! otherwise it is refused `UNAUTHENTICATED`, counted and logged.

use std::sync::Arc;
use strata_model::{Kind, SampleValue};
use strata_proto::v1::{self, ingest_server::Ingest};
use tonic::{Request, Response, Status};

use crate::api::auth::Scope;
use crate::core::stats::Stats;
use crate::inputs::samples::{IngestError, Ingestor, RawPoint, RawSeries};
use crate::status::grpc_status;

/// Native ingest service.
pub struct IngestService {
    pub ingestor: Arc<Ingestor>,
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn push(
        &self,
        request: Request<v1::PushRequest>,
    ) -> Result<Response<v1::PushResponse>, Status> {
        let _timer = self.ingestor.ctx.stats.latency.ingest_grpc.start_timer();
        authenticate(&self.ingestor, &request, "grpc Ingest/Push")?;
        let req = request.into_inner();
        let points: usize = req.series.iter().map(|s| s.points.len()).sum();
        if let Err(e) = self.ingestor.check_lines(points, "points") {
            self.ingestor.count_rejected();
            return Err(grpc_status(&e));
        }
        let mut input = Vec::with_capacity(req.series.len());
        let mut point = 0usize;
        for s in req.series {
            let kind = strata_proto::kind_from_wire(s.kind).map_err(|e| {
                self.ingestor.count_rejected();
                grpc_status(&IngestError::Invalid {
                    message: format!("series {:?}: {e}", s.metric),
                    line: None,
                })
            })?;
            let points = s
                .points
                .iter()
                .map(|p| {
                    point += 1;
                    let value = match kind {
                        Kind::Percent => SampleValue::Flag(p.value != 0.0),
                        Kind::Counter if p.value == 0.0 => SampleValue::Number(1.0),
                        _ => SampleValue::Number(p.value),
                    };
                    RawPoint {
                        line: point,
                        ts_ms: (p.ts_ms != 0).then_some(p.ts_ms),
                        value,
                    }
                })
                .collect();
            input.push(RawSeries {
                metric: s.metric,
                kind,
                labels: s.labels.into_iter().map(|l| (l.name, l.value)).collect(),
                threshold: (s.apdex_threshold != 0.0).then_some(s.apdex_threshold),
                points,
                states: Vec::new(),
            });
        }
        if point == 0 {
            self.ingestor.count_rejected();
            return Err(grpc_status(&IngestError::Invalid {
                message: "no samples in request".into(),
                line: None,
            }));
        }
        let items = self.ingestor.validate(input).map_err(|e| {
            self.ingestor.count_rejected();
            // Points are numbered across the request, 1-based.
            grpc_status(&match e {
                IngestError::Invalid {
                    message,
                    line: Some(n),
                } => IngestError::Invalid {
                    message: format!("point {n}: {message}"),
                    line: None,
                },
                other => other,
            })
        })?;
        let accepted = self
            .ingestor
            .submit(items, req.wait_commit)
            .await
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(v1::PushResponse {
            accepted: accepted as u64,
        }))
    }
}

/// Refuses a call whose `authorization` metadata does not carry a token the
/// ingest scope accepts (when the node has tokens); `what` names the call in
/// the log.
pub fn authenticate<T>(
    ingestor: &Ingestor,
    request: &Request<T>,
    what: &str,
) -> Result<(), Status> {
    let presented = request
        .metadata()
        .get("authorization")
        .map(|v| v.as_bytes());
    ingestor
        .tokens
        .check(Scope::Ingest, presented)
        .map_err(|e| {
            Stats::add(&ingestor.ctx.stats.grpc_unauthorized_total, 1);
            ingestor.auth_log.refused(what, e);
            grpc_status(&e)
        })
}
