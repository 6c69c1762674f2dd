//! Fuzz entry points for the decoders of the server's inputs; not part of the API.
//!
//! The fuzz targets under `fuzz/` and the smoke test `tests/fuzz_smoke.rs` call
//! these with arbitrary bytes. Each returns quietly whatever the input, and panics
//! only when a property of the decoder is broken: it must never panic, never
//! allocate beyond what the input can justify, never let an invalid value through,
//! and what it accepts must round-trip through its encoding.
//!
//! - [`ndjson`]: an HTTP ingest body through [`parse_ndjson`] and
//!   [`Ingestor::validate`], all or nothing, with line-numbered errors.
//! - [`query`]: the query API's parameters — times, step, `group_by`, the PromQL
//!   selector — and a query executed over a small store.
//! - [`promql`]: a PromQL expression through the Prometheus-compatible
//!   API's parser guard and evaluator over the same small store.
//! - [`federation`]: a federation stream's messages decoded into increments, as
//!   the receiver does.
//! - [`pushed`]: an OTLP export or a remote-write request decoded and
//!   converted into points, as their receivers do.
//!
//! The codecs of stored state live beside them: `strata_model::fuzzing` and
//! `strata_store::fuzzing`.
//!
//! [`parse_ndjson`]: crate::inputs::samples::parse_ndjson
//! [`Ingestor::validate`]: crate::inputs::samples::Ingestor::validate

mod federation;
mod ndjson;
mod pushed;
mod query;

pub use federation::{federation, federation_seeds};
pub use ndjson::ndjson;
pub use pushed::{pushed, pushed_seeds};
pub use query::{promql, query};
