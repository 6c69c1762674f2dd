//! Attacks a hostile client can make on a node, replayed against real
//! processes: each is refused with a clear error or handled, nothing already
//! accepted is lost, and the node keeps serving.
//!
//! - `values`: non-finite and inconsistent states (ingest and federation),
//!   quarantine of an unreadable stored state.
//! - `durations`: out-of-range retention, TTL and query times.
//! - `batch_limits`: batches larger than either side's message limit.
//! - `sequences`: a stream that tries to take another source's place or
//!   poison its sequence numbers.
//! - `store_files`: truncated and corrupt store files, panics in pipeline
//!   threads.
//! - `small`: malformed time parameters, inexact integers, far-future times.

mod util;

#[path = "hostile/batch_limits.rs"]
mod batch_limits;
#[path = "hostile/durations.rs"]
mod durations;
#[path = "hostile/sequences.rs"]
mod sequences;
#[path = "hostile/small.rs"]
mod small;
#[path = "hostile/store_files.rs"]
mod store_files;
#[path = "hostile/values.rs"]
mod values;
