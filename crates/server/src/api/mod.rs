//! The read side and the HTTP surface of a node.
//!
//! - [`http`]: the router, NDJSON ingest, queries, sources, events, alarms,
//!   `/ready`.
//! - [`auth`]: bearer tokens of the HTTP API and the native gRPC ingest.
//! - [`body`]: ingest bodies, bounded in size and time, gzip and zstd.
//! - [`events`]: `/api/v1/events`, the event log filtered by type and time.
//! - [`alarms`]: the data of `/api/v1/alarms`, from what the alarm evaluator exposes.
//! - [`query`]: selectors, grouping and merging for `/api/v1/query`.
//! - [`health`]: `/health` and `/health/{component}`.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`prometheus`]: the Prometheus-compatible API under `/prometheus`
//!   (PromQL over merged state).
//! - [`console`]: the web console at `/` (assets compiled in) and its
//!   `/api/v1/status` and `/api/v1/labels`.
//! - [`json`]: the JSON error answers every handler shares.
//! - [`request_id`]: request correlation ids: the HTTP middleware and gRPC
//!   layer that give every request an id, its span and its `x-request-id`.

pub mod alarms;
pub mod auth;
pub mod body;
pub mod console;
pub mod events;
pub mod health;
pub mod http;
pub mod json;
pub mod metrics;
pub mod prometheus;
pub mod query;
pub mod request_id;
