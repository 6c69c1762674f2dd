//! Inputs: everything that brings samples or increments into the pipeline.
//!
//! - [`samples`]: NDJSON parsing and all-or-nothing admission of samples,
//!   shared by every protocol.
//! - [`native`]: strata's own batched gRPC ingest.
//! - [`federation`]: the receiver of downstream tiers' increments, one stream
//!   per source; [`delivery`] holds its seq decisions, [`receiver_error`]
//!   the reasons it refuses a stream or ends one.
//! - [`otlp`]: the OpenTelemetry metrics receiver (gRPC and HTTP), over
//!   [`points`] (pre-aggregated data points, admitted metric by metric),
//!   whose cumulative streams become deltas through [`cumulative`].
//! - [`remote_write`]: the Prometheus remote-write receiver, over the same.
//!
//! The HTTP NDJSON endpoint is a handler of the API router
//! ([`crate::api::http`]); both gRPC services are served here, on
//! `grpc.listen`. Every error an input answers with gets its HTTP status
//! or gRPC code from the one table in [`crate::status`].

pub mod cumulative;
pub mod delivery;
pub mod federation;
pub mod native;
pub mod otlp;
pub mod points;
pub mod receiver_error;
pub mod remote_write;
pub mod samples;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
use strata_proto::v1::{federation_server::FederationServer, ingest_server::IngestServer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::limits::MessageLimits;
use crate::core::pipeline::{Pipeline, Stopping, Submission};
use crate::inputs::samples::Ingestor;
use crate::net::ListenerSettings;
use crate::net::tls::ServerTls;

/// Binds `grpc.listen` and serves the federation receiver, native ingest and
/// OTLP/gRPC until `stop` is cancelled, which also ends open source streams. With
/// `tls`, the port speaks only TLS (and, with `grpc.client_ca_file`, only to
/// clients with an accepted certificate); connections are bounded and
/// checked before tonic serves them ([`crate::net::grpc`]).
pub async fn serve_grpc(
    config: &Config,
    tls: Option<Arc<ServerTls>>,
    ingestor: Arc<Ingestor>,
    otlp: Arc<otlp::OtlpReceiver>,
    limits: Arc<MessageLimits>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(&config.grpc.listen).await?;
    let addr = listener.local_addr()?;
    let max_msg = config.grpc.max_message_bytes;
    let federation = FederationServer::new(federation::FederationService {
        ingestor: ingestor.clone(),
        node_id: config.node.id.clone(),
        histogram_sigfig: config.aggregation.histogram_significant_digits,
        limits,
        max_batch_bytes: config.grpc.max_batch_bytes,
        shutdown: stop.clone(),
    })
    .max_decoding_message_size(max_msg)
    .max_encoding_message_size(max_msg);
    let otlp = otlp_service(&ingestor, otlp);
    let native =
        IngestServer::new(native::IngestService { ingestor }).max_decoding_message_size(max_msg);
    let incoming =
        crate::net::grpc::incoming(listener, settings("grpc", config, tls), stop.clone());
    let task = tokio::spawn(async move {
        // Keepalives let a stream from a vanished source end, freeing its id.
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            // Every call gets its request id, span and `x-request-id`.
            .layer(crate::api::request_id::GrpcLayer)
            .add_service(federation)
            .add_service(native)
            .add_service(otlp)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "grpc server failed");
        }
    });
    Ok((addr, task))
}

/// OTLP/gRPC's service: exports up to `limits.max_body_bytes`, as OTLP/HTTP.
fn otlp_service(
    ingestor: &Ingestor,
    receiver: Arc<otlp::OtlpReceiver>,
) -> MetricsServiceServer<otlp::OtlpGrpc> {
    MetricsServiceServer::new(otlp::OtlpGrpc { receiver })
        .max_decoding_message_size(ingestor.limits.max_body_bytes)
}

/// Binds `otlp.listen` and serves OTLP/gRPC alone there until `stop` is
/// cancelled, with the TLS and connection bound of `[grpc]`.
pub async fn serve_otlp_grpc(
    config: &Config,
    listen: &str,
    tls: Option<Arc<ServerTls>>,
    ingestor: &Ingestor,
    receiver: Arc<otlp::OtlpReceiver>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let service = otlp_service(ingestor, receiver);
    let incoming =
        crate::net::grpc::incoming(listener, settings("otlp", config, tls), stop.clone());
    let task = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .layer(crate::api::request_id::GrpcLayer)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "OTLP grpc server failed");
        }
    });
    Ok((addr, task))
}

/// A gRPC listener's settings: `[grpc]`'s connection bound and handshake
/// timeout, and its TLS.
fn settings(name: &'static str, config: &Config, tls: Option<Arc<ServerTls>>) -> ListenerSettings {
    ListenerSettings {
        name,
        max_connections: config.grpc.max_connections,
        handshake_timeout: Duration::from_millis(config.grpc.handshake_timeout_ms),
        tls,
    }
}

/// Hands one request or batch to the pipeline: on the caller's task when
/// that cannot wait ([`Pipeline::try_submit_events`]), else from a blocking
/// thread. `Err` when the node is stopping.
pub(crate) async fn submit(
    pipeline: &Arc<Pipeline>,
    submission: Submission,
) -> Result<(), Stopping> {
    match pipeline.try_submit_events(submission) {
        Ok(submitted) => submitted,
        Err(later) => {
            let pipeline = Arc::clone(pipeline);
            crate::api::request_id::spawn_blocking(move || pipeline.submit_blocking(*later))
                .await
                .map_err(|_| Stopping)?
        }
    }
}
