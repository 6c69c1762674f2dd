//! Request correlation ids: every HTTP and gRPC request a node serves gets
//! one, so a client's report, the node's log lines and the flush that
//! committed the request's data can be matched up (docs/OPERATIONS.md,
//! "Request ids").
//!
//! Where the id comes from, first match wins:
//! 1. the request's `X-Request-Id` header, when it is 1 to
//!    [`MAX_LEN`] bytes of visible ASCII (`!` to `~`, no spaces);
//! 2. the trace id of a valid W3C `traceparent` header
//!    (`00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01` gives
//!    `4bf92f3577b34da6a3ce929d0e0e4736`; its parent span id is logged as
//!    `parent_span_id` beside it);
//! 3. else 16 random bytes as 32 lowercase hex digits.
//!
//! Where it goes:
//! - the `x-request-id` header of every HTTP response and the `x-request-id`
//!   metadata of every gRPC response, error statuses included;
//! - a `request_id` field added to every JSON error body ([`http`], the
//!   middleware of the router), and a ` [request_id=…]` suffix plus
//!   `x-request-id` metadata on every gRPC status built by
//!   [`crate::status::status_of_class`];
//! - a `tracing` span per request (`http` or `grpc`) carrying `request_id`,
//!   so every log line about the request names it; a federation stream's
//!   span lasts as long as the stream ([`spawn`]), and work on blocking
//!   threads runs in it too ([`spawn_blocking`]);
//! - the pipeline's flush: ingest requests hand [`current`] to
//!   `Pipeline::submit_from`, and the commit writer's `flush committed`
//!   line names the ids of the requests the flush holds.
//!
//! The id of the request being served is a task-local ([`current`]), set
//! by the HTTP middleware and the gRPC layer ([`GrpcLayer`]) for the whole
//! handler, so errors and inputs reach it without threading it through
//! every call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

/// The header a client may send an id in, and the response header (and
/// gRPC metadata key) the id is returned in.
pub const HEADER: &str = "x-request-id";

/// The W3C trace context header an id is taken from when there is no
/// [`HEADER`].
pub const TRACEPARENT: &str = "traceparent";

/// Longest `X-Request-Id` taken from a client, in bytes; a longer one is
/// replaced by a generated id.
pub const MAX_LEN: usize = 128;

/// Largest error body the HTTP middleware rewrites to add `request_id`;
/// the node's own error bodies are far smaller.
const MAX_ERROR_BODY: usize = 1 << 20;

tokio::task_local! {
    /// The id of the request the current task serves.
    static CURRENT: RequestId;
}

/// One request's correlation id: visible ASCII, at most [`MAX_LEN`] bytes.
/// Cloning shares the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A new random id: 16 random bytes as 32 lowercase hex digits.
    pub fn generate() -> RequestId {
        RequestId(Arc::from(format!("{:032x}", rand::random::<u128>())))
    }

    /// `text` as an id when it is a valid `X-Request-Id`: 1 to [`MAX_LEN`]
    /// bytes, each visible ASCII (`!` to `~`).
    pub fn parse(text: &str) -> Option<RequestId> {
        let valid =
            (1..=MAX_LEN).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic());
        valid.then(|| RequestId(Arc::from(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's text, shared (what the pipeline keeps per flush).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }

    /// The id as a header value.
    pub fn header_value(&self) -> HeaderValue {
        // Visible ASCII is always a valid header value.
        HeaderValue::from_str(&self.0).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request's id and, when it came from a `traceparent`, the caller's span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub id: RequestId,
    /// The parent span id of the `traceparent` the id was taken from.
    pub parent_span_id: Option<String>,
}

impl Origin {
    /// The id of a request with `headers`: its `X-Request-Id` if valid,
    /// else its `traceparent`'s trace id, else a generated one.
    pub fn of(headers: &HeaderMap) -> Origin {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(id) = text(HEADER).and_then(RequestId::parse) {
            return Origin {
                id,
                parent_span_id: None,
            };
        }
        if let Some((trace, parent)) = text(TRACEPARENT).and_then(trace_parent) {
            return Origin {
                id: RequestId(Arc::from(trace)),
                parent_span_id: Some(parent.to_string()),
            };
        }
        Origin {
            id: RequestId::generate(),
            parent_span_id: None,
        }
    }

    /// The span every log line about the request is in: `protocol` is
    /// `http` or `grpc`, `path` the request's path.
    fn span(&self, protocol: &'static str, method: &str, path: &str) -> tracing::Span {
        let span = tracing::info_span!(
            "request",
            protocol,
            request_id = %self.id,
            method,
            path,
            parent_span_id = tracing::field::Empty,
        );
        if let Some(parent) = &self.parent_span_id {
            span.record("parent_span_id", parent.as_str());
        }
        span
    }
}

/// The (trace id, parent span id) of a W3C `traceparent` value
/// (`version-traceid-parentid-flags`, lowercase hex), or `None` when it is
/// not valid: version `ff`, an all-zero id, or the wrong lengths. Versions
/// after `00` may append fields.
pub fn trace_parent(value: &str) -> Option<(&str, &str)> {
    let is_hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let non_zero = |s: &str| s.bytes().any(|b| b != b'0');
    let mut fields = value.trim().split('-');
    let version = fields.next()?;
    let trace = fields.next()?;
    let parent = fields.next()?;
    let flags = fields.next()?;
    let more = fields.next().is_some();
    let valid = is_hex(version, 2)
        && version != "ff"
        && !(version == "00" && more)
        && is_hex(trace, 32)
        && non_zero(trace)
        && is_hex(parent, 16)
        && non_zero(parent)
        && is_hex(flags, 2);
    valid.then_some((trace, parent))
}

/// The id of the request the current task serves, if it serves one.
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(RequestId::clone).ok()
}

/// Runs `future` as the request `id`: [`current`] answers `id` inside it.
pub async fn scope<F: Future>(id: RequestId, future: F) -> F::Output {
    CURRENT.scope(id, future).await
}

/// `tokio::spawn` of `future` in the current span and as the current
/// request: what a federation stream's session runs as, so the span and
/// the id last as long as the stream.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let span = tracing::Span::current();
    match current() {
        Some(id) => tokio::spawn(CURRENT.scope(id, future).instrument(span)),
        None => tokio::spawn(future.instrument(span)),
    }
}

/// `tokio::task::spawn_blocking` of `f` in the current span and as the
/// current request: blocking work logs with the request's id.
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    let id = current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        match id {
            Some(id) => CURRENT.sync_scope(id, f),
            None => f(),
        }
    })
}

/// The HTTP middleware (outermost layer of the router): gives the request
/// its id, serves it in its span and as [`current`], adds `request_id` to
/// a JSON error body, logs the refusal, and returns the id in
/// `x-request-id`.
pub async fn http(request: Request, next: Next) -> Response {
    let origin = Origin::of(request.headers());
    let span = origin.span("http", request.method().as_str(), request.uri().path());
    let id = origin.id;
    let mut response = CURRENT
        .scope(id.clone(), next.run(request))
        .instrument(span.clone())
        .await;
    if response.status().is_client_error() || response.status().is_server_error() {
        response = error_with_id(response, &id).instrument(span).await;
    }
    response.headers_mut().insert(HEADER, id.header_value());
    response
}

/// Adds `"request_id"` to a JSON object error body and logs the refusal
/// with the body's `error`. Other bodies are passed on as they are.
async fn error_with_id(response: Response, id: &RequestId) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        log_refusal(status, None);
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_ERROR_BODY).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let message = format!("error body unreadable: {e}");
            log_refusal(status, Some(&message));
            parts.headers.remove(header::CONTENT_LENGTH);
            let body =
                serde_json::json!({"status": "error", "error": message, "request_id": id.as_str()});
            return Response::from_parts(parts, Body::from(body.to_string()));
        }
    };
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&bytes) else {
        log_refusal(status, None);
        return Response::from_parts(parts, Body::from(bytes));
    };
    log_refusal(status, object.get("error").and_then(Value::as_str));
    object
        .entry("request_id")
        .or_insert_with(|| Value::from(id.as_str()));
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = Value::Object(object).to_string();
    Response::from_parts(parts, Body::from(body))
}

/// One line per refused HTTP request, in its span: `warn` for the node's
/// own failures (5xx), `info` for other refusals, `debug` for "busy, retry"
/// (429, which comes in floods exactly when the node is loaded) and for
/// answers without an error message (an unknown route, `/health` while a
/// component is KO: polled, and not a failure of the request).
fn log_refusal(status: StatusCode, error: Option<&str>) {
    let code = status.as_u16();
    match (code, error) {
        (429, _) | (_, None) => {
            tracing::debug!(
                status = code,
                error = error.unwrap_or(""),
                "request refused"
            );
        }
        (500.., Some(error)) => tracing::warn!(status = code, error, "request failed"),
        (_, Some(error)) => tracing::info!(status = code, error, "request refused"),
    }
}

/// The gRPC server's layer (all services): gives each call its id, serves
/// it in its span and as [`current`], logs a call refused at once, and
/// returns the id as `x-request-id` response metadata (for a status
/// returned at once too, which travels in the response headers).
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcLayer;

impl<S> tower_layer::Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> GrpcService<S> {
        GrpcService { inner }
    }
}

/// The service [`GrpcLayer`] wraps around the gRPC routes.
#[derive(Clone, Debug)]
pub struct GrpcService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower_service::Service<axum::http::Request<B>> for GrpcService<S>
where
    S: tower_service::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = axum::http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let origin = Origin::of(request.headers());
        let span = origin.span("grpc", request.method().as_str(), request.uri().path());
        let id = origin.id;
        let call = span.in_scope(|| self.inner.call(request));
        Box::pin(async move {
            let mut response = CURRENT
                .scope(id.clone(), call)
                .instrument(span.clone())
                .await?;
            span.in_scope(|| log_grpc_refusal(response.headers()));
            response.headers_mut().insert(HEADER, id.header_value());
            Ok(response)
        })
    }
}

/// One line for a call answered at once with an error status (the status
/// is then in the response headers); `warn` for the node's own failures,
/// `debug` for "busy, retry".
fn log_grpc_refusal(headers: &HeaderMap) {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|&c| c != 0)
    else {
        return;
    };
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let name = format!("{:?}", tonic::Code::from_i32(code));
    match tonic::Code::from_i32(code) {
        tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => {
            tracing::warn!(code = %name, error = message, "call failed");
        }
        tonic::Code::ResourceExhausted => {
            tracing::debug!(code = %name, error = message, "call refused");
        }
        _ => tracing::info!(code = %name, error = message, "call refused"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).expect("test header"));
        }
        h
    }

    const TRACEPARENT_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_x_request_id_is_kept() {
        let o = Origin::of(&headers(&[
            (HEADER, "abc-123"),
            (TRACEPARENT, TRACEPARENT_EXAMPLE),
        ]));
        assert_eq!(o.id.as_str(), "abc-123");
        assert_eq!(o.parent_span_id, None);
        let longest = "x".repeat(MAX_LEN);
        assert_eq!(
            Origin::of(&headers(&[(HEADER, &longest)])).id.as_str(),
            longest
        );
    }

    #[test]
    fn an_invalid_x_request_id_falls_back_to_traceparent_or_a_new_id() {
        for bad in ["", "has space", &"x".repeat(MAX_LEN + 1), "tab\there"] {
            let o = Origin::of(&headers(&[
                (HEADER, bad),
                (TRACEPARENT, TRACEPARENT_EXAMPLE),
            ]));
            assert_eq!(o.id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad:?}");
            assert_eq!(o.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
            let o = Origin::of(&headers(&[(HEADER, bad)]));
            assert_eq!(o.id.as_str().len(), 32, "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            HEADER,
            HeaderValue::from_bytes(b"caf\xc3\xa9").expect("opaque bytes"),
        );
        assert_eq!(Origin::of(&h).id.as_str().len(), 32);
    }

    #[test]
    fn traceparent_is_checked() {
        assert_eq!(
            trace_parent(TRACEPARENT_EXAMPLE),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))
        );
        // A later version may append fields; version 00 may not.
        assert!(
            trace_parent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some()
        );
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            assert_eq!(trace_parent(bad), None, "{bad}");
        }
    }

    #[test]
    fn generated_ids_are_32_hex_digits_and_differ() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.as_str().len(), 32);
            assert!(id.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
            assert!(RequestId::parse(id.as_str()).is_some());
        }
    }

    #[tokio::test]
    async fn the_current_id_reaches_spawned_and_blocking_work() {
        assert_eq!(current(), None);
        let id = RequestId::parse("req-1").expect("valid id");
        let (spawned, blocking) = scope(id.clone(), async {
            let spawned = spawn(async { current() }).await.expect("task");
            let blocking = spawn_blocking(current).await.expect("task");
            (spawned, blocking)
        })
        .await;
        assert_eq!(spawned, Some(id.clone()));
        assert_eq!(blocking, Some(id));
        assert_eq!(spawn_blocking(current).await.expect("task"), None);
    }
}
