//! The HTTP listener: HTTP/1.1 (over TLS when configured) served by hyper,
//! one task per connection, with the request-header read timeout.
//!
//! The header timeout (`http.header_read_timeout_ms`) runs from the moment
//! the server waits for a request: on a new connection, and on a kept-alive
//! one between requests. A client that sends nothing, or trickles its
//! headers, is cut when it runs out; a slow *body* is the handler's (ingest
//! reads it against `http.max_body_bytes`). At stop, the listener stops
//! accepting, closes connections that carry no request and lets the others
//! finish theirs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::Conn;
use super::listener::{ListenerSettings, accept_loop, prepare};
use super::slots::SlotState;

/// Serves `app` on `listener` until `stop` is cancelled; returns once every
/// connection has closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: ListenerSettings,
    header_read_timeout: Duration,
    stop: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let settings = Arc::new(settings);
    accept_loop(listener, &settings, &stop, |tcp, peer, slot| {
        let (app, settings, stop) = (app.clone(), settings.clone(), stop.clone());
        tracker.spawn(async move {
            let state = slot.state().clone();
            let conn = tokio::select! {
                conn = prepare(tcp, peer, slot, &settings) => conn,
                _ = stop.cancelled() => None,
            };
            if let Some(conn) = conn
                && state.ready()
            {
                connection(conn, state, app, header_read_timeout, stop).await;
            }
        });
    })
    .await;
    tracker.close();
    tracker.wait().await;
}

/// Serves one connection's requests until it closes, is evicted (it carries
/// no request then) or the listener stops.
async fn connection(
    conn: Conn,
    state: Arc<SlotState>,
    app: Router,
    header_read_timeout: Duration,
    stop: CancellationToken,
) {
    let peer = conn.remote();
    let requests = state.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (mut app, requests) = (app.clone(), requests.clone());
        async move {
            if !requests.begin_request() {
                return Ok::<_, Infallible>(closing());
            }
            let answer = tower_service::Service::call(&mut app, req).await;
            requests.end_request();
            answer
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let served = builder.serve_connection(TokioIo::new(conn), service);
    tokio::pin!(served);
    let ended = tokio::select! {
        ended = served.as_mut() => ended,
        _ = state.evicted() => return,
        _ = stop.cancelled() => {
            if state.close_if_idle() {
                return;
            }
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = ended {
        // A client that timed out on its headers, sent garbage or went away.
        tracing::debug!(%peer, error = %e, "http connection ended");
    }
}

/// The answer to a request that arrives on a connection being closed.
fn closing() -> Response<axum::body::Body> {
    let mut answer = Response::new(axum::body::Body::from("connection closing, retry\n"));
    *answer.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    answer.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    answer
}
