//! Errors to statuses, in one place: what every error the node answers with
//! becomes over HTTP (status code, `Retry-After`) and over gRPC (code,
//! `retry-after-ms` metadata).
//!
//! Each error enum says which [`Class`] each of its variants is
//! ([`Classify`], implemented beside the enum); [`Class`] alone decides the
//! codes and the retry hint (quickwit's `ServiceErrorCode`,
//! `quickwit-proto/src/error.rs`). Handlers never pick a code themselves:
//! HTTP answers go through [`crate::api::json`], gRPC statuses through
//! [`grpc_status`].
//!
//! | class | HTTP | gRPC | retry hint | errors |
//! |---|---|---|---|---|
//! | [`Class::Invalid`] | 400 | `INVALID_ARGUMENT` | | `IngestError::Invalid`, `QueryError`, `ReceiverError::{FirstNotHello, EpochZero, UnexpectedMessage, BadDefinition, PartWithoutStart, PartOutOfPlace}` |
//! | [`Class::Unauthenticated`] | 401 | `UNAUTHENTICATED` | | `ReceiverError::BadToken`, `AuthError` |
//! | [`Class::Forbidden`] | 403 | `PERMISSION_DENIED` | | `ReceiverError::UnknownSource` |
//! | [`Class::Timeout`] | 408 | `DEADLINE_EXCEEDED` | | `ReceiverError::NoHello`, `IngestError::BodyTimeout` |
//! | [`Class::AlreadyExists`] | 409 | `ALREADY_EXISTS` | | `ReceiverError::AlreadyConnected` |
//! | [`Class::OutOfSequence`] | 400 | `FAILED_PRECONDITION` | | `ReceiverError::{OutOfOrder, SeqRefused}` |
//! | [`Class::TooLarge`] | 413 | `RESOURCE_EXHAUSTED` | | `ReceiverError::{MessageOverLimit, BatchOverLimit}`, `IngestError::TooLarge` |
//! | [`Class::OverLimit`] | 422 | `RESOURCE_EXHAUSTED` | | `IngestError::Limited` (cardinality), `QueryError::OverLimit` |
//! | [`Class::Busy`] | 429 | `RESOURCE_EXHAUSTED` | yes | `IngestError::Busy` |
//! | [`Class::Unavailable`] | 503 | `UNAVAILABLE` | yes | `IngestError::Stopping`, `ReceiverError::{PreviousStreamCommitting, ShuttingDown, CommitFailed}` |
//! | [`Class::Internal`] | 500 | `INTERNAL` | | `IngestError::CommitFailed`, `QueryFailed::Store`, `ReceiverError::NoLiveState`, a failed store read or task |
//! | [`Class::Cancelled`] | 499 | `CANCELLED` | | `ReceiverError::StreamClosed` (the peer is gone) |
//!
//! The retry hint is [`RETRY_AFTER`]: `Retry-After: 1` over HTTP,
//! `retry-after-ms: 1000` over gRPC (the forwarder honours it).
//!
//! Not classified here: axum's own refusals of a request body (413 over
//! `http.max_body_bytes`, 400 otherwise) keep axum's status, and a transport
//! error met while waiting for a source's hello is passed on as tonic made it.

use std::time::Duration;

use axum::http::StatusCode;
use tonic::Status;

/// How long a client told to retry should wait.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The gRPC metadata key of the retry hint (milliseconds).
pub const RETRY_AFTER_MS_KEY: &str = "retry-after-ms";

/// What kind of failure an error is: decides the HTTP status, the gRPC code
/// and whether the answer tells the client to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The request itself is wrong: nothing of it was taken.
    Invalid,
    /// The credentials do not match.
    Unauthenticated,
    /// The caller is not one this node serves.
    Forbidden,
    /// The caller did not say what it must in time.
    Timeout,
    /// Another caller already holds what this one claims.
    AlreadyExists,
    /// A message out of the order the protocol requires: resume from the
    /// last commit.
    OutOfSequence,
    /// A message over a size limit this node set: retrying the same message
    /// cannot help.
    TooLarge,
    /// Over a `[limits]` limit that retrying cannot lift (a source's
    /// cardinality, a query's size): the answer names the limit.
    OverLimit,
    /// At the admission limit: retry later.
    Busy,
    /// Stopping, or unable to commit for now: retry later.
    Unavailable,
    /// This node failed.
    Internal,
    /// The peer went away before the answer.
    Cancelled,
}

impl Class {
    /// The one table: class → (HTTP status, gRPC code, retry hint).
    const fn table(self) -> (u16, tonic::Code, bool) {
        use tonic::Code;
        match self {
            Class::Invalid => (400, Code::InvalidArgument, false),
            Class::Unauthenticated => (401, Code::Unauthenticated, false),
            Class::Forbidden => (403, Code::PermissionDenied, false),
            Class::Timeout => (408, Code::DeadlineExceeded, false),
            Class::AlreadyExists => (409, Code::AlreadyExists, false),
            Class::OutOfSequence => (400, Code::FailedPrecondition, false),
            Class::TooLarge => (413, Code::ResourceExhausted, false),
            Class::OverLimit => (422, Code::ResourceExhausted, false),
            Class::Busy => (429, Code::ResourceExhausted, true),
            Class::Unavailable => (503, Code::Unavailable, true),
            Class::Internal => (500, Code::Internal, false),
            // nginx's "client closed request": the answer reaches no one.
            Class::Cancelled => (499, Code::Cancelled, false),
        }
    }

    /// The HTTP status of an answer of this class.
    pub fn http_status(self) -> StatusCode {
        StatusCode::from_u16(self.table().0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The gRPC code of a status of this class.
    pub const fn grpc_code(self) -> tonic::Code {
        self.table().1
    }

    /// How long the client should wait before retrying, if it should.
    pub const fn retry_after(self) -> Option<Duration> {
        match self.table().2 {
            true => Some(RETRY_AFTER),
            false => None,
        }
    }
}

/// An error the node answers with: which [`Class`] it is. Its `Display` is
/// the message the client reads (lowercase, no trailing period).
pub trait Classify: std::fmt::Display {
    fn class(&self) -> Class;
}

/// The gRPC status of `e`: its class's code, its message, and the retry hint
/// when the class has one.
pub fn grpc_status<E: Classify + ?Sized>(e: &E) -> Status {
    status_of_class(e.class(), e.to_string())
}

/// A gRPC status of `class` with `message` (and the retry hint). Inside a
/// request ([`crate::api::request_id::current`]) the message ends in
/// ` [request_id=…]` and the status carries `x-request-id` metadata.
pub fn status_of_class(class: Class, message: impl Into<String>) -> Status {
    let mut message = message.into();
    let id = crate::api::request_id::current();
    if let Some(id) = &id {
        message.push_str(" [request_id=");
        message.push_str(id.as_str());
        message.push(']');
    }
    let mut status = Status::new(class.grpc_code(), message);
    if let Some(id) = id
        && let Ok(value) = id.as_str().parse()
    {
        status
            .metadata_mut()
            .insert(crate::api::request_id::HEADER, value);
    }
    if let Some(wait) = class.retry_after() {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        status
            .metadata_mut()
            .insert(RETRY_AFTER_MS_KEY, tonic::metadata::MetadataValue::from(ms));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::query::QueryError;
    use crate::inputs::delivery::Refusal;
    use crate::inputs::receiver_error::ReceiverError;
    use crate::inputs::samples::IngestError;
    use tonic::Code;

    /// The codes tests, clients and docs/OPERATIONS.md rely on.
    #[test]
    fn ingest_and_query_errors_have_their_documented_codes() {
        let http = |e: &dyn Classify| e.class().http_status().as_u16();
        let grpc = |e: &dyn Classify| e.class().grpc_code();
        let invalid = IngestError::Invalid {
            message: "x".into(),
            line: Some(1),
        };
        assert_eq!(
            (http(&invalid), grpc(&invalid)),
            (400, Code::InvalidArgument)
        );
        assert_eq!(
            (http(&IngestError::Busy), grpc(&IngestError::Busy)),
            (429, Code::ResourceExhausted)
        );
        assert_eq!(
            (http(&IngestError::Stopping), grpc(&IngestError::Stopping)),
            (503, Code::Unavailable)
        );
        let failed = IngestError::CommitFailed("disk".into());
        assert_eq!((http(&failed), grpc(&failed)), (500, Code::Internal));
        assert_eq!(http(&QueryError("bad".into())), 400);
        // The limits and authentication ("Limits and authentication").
        use crate::api::auth::AuthError;
        use crate::api::body::BodyError;
        use crate::api::query::QueryFailed;
        let limited = IngestError::Limited("x".into());
        assert_eq!(
            (http(&limited), grpc(&limited)),
            (422, Code::ResourceExhausted)
        );
        let lines = IngestError::TooLarge("x".into());
        assert_eq!((http(&lines), grpc(&lines)), (413, Code::ResourceExhausted));
        assert_eq!(http(&QueryFailed::OverLimit("x".into())), 422);
        assert_eq!(http(&QueryFailed::Invalid(QueryError("x".into()))), 400);
        assert_eq!(http(&QueryFailed::Store("x".into())), 500);
        assert_eq!(
            (http(&AuthError::Wrong), grpc(&AuthError::Wrong)),
            (401, Code::Unauthenticated)
        );
        assert_eq!(http(&AuthError::IngestOnly), 403);
        assert_eq!(http(&BodyError::Timeout("x".into())), 408);
        assert_eq!(http(&BodyError::Malformed("x".into())), 400);
    }

    /// docs/PROTOCOL.md names these codes; tests/hostile checks several.
    #[test]
    fn every_receiver_error_has_its_documented_code() {
        let id = || "edge-1".to_string();
        let receiver: [(ReceiverError, Code); 19] = [
            (ReceiverError::NoHello, Code::DeadlineExceeded),
            (ReceiverError::FirstNotHello, Code::InvalidArgument),
            (
                ReceiverError::UnknownSource {
                    source_id: id(),
                    node_id: id(),
                },
                Code::PermissionDenied,
            ),
            (
                ReceiverError::BadToken { source_id: id() },
                Code::Unauthenticated,
            ),
            (ReceiverError::EpochZero, Code::InvalidArgument),
            (ReceiverError::NoLiveState, Code::Internal),
            (
                ReceiverError::AlreadyConnected { source_id: id() },
                Code::AlreadyExists,
            ),
            (ReceiverError::PreviousStreamCommitting, Code::Unavailable),
            (ReceiverError::ShuttingDown, Code::Unavailable),
            (ReceiverError::CommitFailed("x".into()), Code::Unavailable),
            (ReceiverError::UnexpectedMessage, Code::InvalidArgument),
            (
                ReceiverError::MessageOverLimit {
                    found: None,
                    limit: 1,
                },
                Code::ResourceExhausted,
            ),
            (
                ReceiverError::BadDefinition {
                    source_id: id(),
                    seq: 1,
                    reason: "x".into(),
                },
                Code::InvalidArgument,
            ),
            (
                ReceiverError::PartWithoutStart {
                    source_id: id(),
                    part: 1,
                    seq: 1,
                },
                Code::InvalidArgument,
            ),
            (
                ReceiverError::PartOutOfPlace {
                    source_id: id(),
                    expected_part: 1,
                    expected_seq: 1,
                    part: 2,
                    seq: 1,
                },
                Code::InvalidArgument,
            ),
            (
                ReceiverError::BatchOverLimit {
                    source_id: id(),
                    seq: 1,
                    limit: 1,
                },
                Code::ResourceExhausted,
            ),
            (
                ReceiverError::OutOfOrder {
                    source_id: id(),
                    expected: 1,
                    seq: 3,
                },
                Code::FailedPrecondition,
            ),
            (
                ReceiverError::SeqRefused {
                    source_id: id(),
                    refusal: Refusal::BeyondMaxSeq { seq: u64::MAX },
                },
                Code::FailedPrecondition,
            ),
            (ReceiverError::StreamClosed, Code::Cancelled),
        ];
        for (e, code) in receiver {
            assert_eq!(grpc_status(&e).code(), code, "{e}");
        }
    }

    /// Inside a request, a status names the request id in its message and
    /// its metadata (docs/OPERATIONS.md, "Request ids"); outside, neither.
    #[tokio::test]
    async fn statuses_inside_a_request_name_its_id() {
        use crate::api::request_id::{self, RequestId};
        let e = IngestError::Busy;
        let id = RequestId::parse("abc-123").expect("valid id");
        let status = request_id::scope(id, async { grpc_status(&e) }).await;
        assert_eq!(
            status.message(),
            "node is busy, retry later [request_id=abc-123]"
        );
        assert_eq!(
            status
                .metadata()
                .get(request_id::HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("abc-123")
        );
        let outside = grpc_status(&e);
        assert_eq!(outside.message(), "node is busy, retry later");
        assert!(outside.metadata().get(request_id::HEADER).is_none());
    }

    /// PROTOCOL.md: `UNAVAILABLE` and busy `RESOURCE_EXHAUSTED` carry
    /// `retry-after-ms`; OPERATIONS.md: 429 / 503 carry `Retry-After: 1`.
    #[test]
    fn retry_hints_go_with_busy_and_unavailable_only() {
        for e in [IngestError::Busy, IngestError::Stopping] {
            let status = grpc_status(&e);
            assert_eq!(
                status
                    .metadata()
                    .get(RETRY_AFTER_MS_KEY)
                    .and_then(|v| v.to_str().ok()),
                Some("1000"),
                "{e}"
            );
            assert_eq!(e.class().retry_after(), Some(Duration::from_secs(1)));
        }
        let invalid = IngestError::Invalid {
            message: "x".into(),
            line: None,
        };
        assert!(grpc_status(&invalid).metadata().is_empty());
        let over = ReceiverError::BatchOverLimit {
            source_id: "a".into(),
            seq: 1,
            limit: 1,
        };
        assert!(
            grpc_status(&over)
                .metadata()
                .get(RETRY_AFTER_MS_KEY)
                .is_none()
        );
    }
}
