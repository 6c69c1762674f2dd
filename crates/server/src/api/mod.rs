//! The read side and the HTTP surface of a node.
//!
//! - [`http`]: the router, NDJSON ingest, queries, sources, events, alarms.
//! - [`alarms`]: the data of `/api/v1/alarms`, from what the alarm evaluator exposes.
//! - [`query`]: selectors, grouping and merging for `/api/v1/query`.
//! - [`health`]: `/health` and `/health/{component}`.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`json`]: the JSON error answers every handler shares.

pub mod alarms;
pub mod health;
pub mod http;
pub mod json;
pub mod metrics;
pub mod query;
