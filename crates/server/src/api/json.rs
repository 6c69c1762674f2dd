//! JSON error answers shared by every handler: `{"status":"error","error":…}`
//! with a 4xx or 5xx code (DESIGN §8).
//!
//! The code and the `Retry-After` header come from the error's class, in the
//! one table of [`crate::status`]: `error_of` for a classified error,
//! `refusal` for a message of a given class.
//!
//! The router's request-id middleware ([`crate::api::request_id::http`])
//! adds `"request_id"` to every one of these bodies on its way out.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::status::{Class, Classify};

/// An error answer with `status` and `message`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"status": "error", "error": message.into()})),
    )
        .into_response()
}

/// The answer to `e`: its message, with its class's status and retry hint.
pub(crate) fn error_of<E: Classify + ?Sized>(e: &E) -> Response {
    refusal(e.class(), e.to_string())
}

/// An error answer of `class` with `message`.
pub(crate) fn refusal(class: Class, message: impl Into<String>) -> Response {
    answer(class, json!({"status": "error", "error": message.into()}))
}

/// An error answer of `class` with `body` (an error object that may carry
/// more fields than `status` and `error`): the class's status, and
/// `Retry-After` in whole seconds when the class tells clients to retry.
pub(crate) fn answer(class: Class, body: Value) -> Response {
    let mut r = (class.http_status(), axum::Json(body)).into_response();
    if let Some(wait) = class.retry_after() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs()));
    }
    r
}
