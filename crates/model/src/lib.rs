//! The strata data model: metric kinds, their mergeable per-minute state, series keys and
//! time buckets. No I/O and no async; every other crate builds on these types.
//!
//! The central type is [`State`], one variant per [`Kind`]. A state is a commutative
//! monoid: [`State::empty`] is the identity and [`State::merge`] (the add-function) is
//! associative and commutative, so a tier can merge increments from any number of
//! downstream tiers, in any grouping, and get exactly the state one node would have built
//! from every raw sample. Histograms ([`Hist`]) are merged bucket-wise and percentiles are
//! computed only at query time, from merged state.
//!
//! Main types:
//! - [`Kind`]: the ten metric kinds and their names.
//! - [`State`]: per-kind state; [`State::record`] adds a [`SampleValue`], [`State::merge`]
//!   adds another state, [`State::values`] derives what a query prints.
//! - [`Hist`]: auto-resizing HdrHistogram of non-negative floats, V2-serialisable.
//! - [`ExpHist`]: base-2 exponential histogram (OpenTelemetry ExponentialHistogram,
//!   Prometheus native histogram layout) of any finite floats, with a bounded bucket count.
//! - [`SeriesKey`]: validated metric name and sorted labels, with a stable
//!   [`SeriesKey::hash64`] for sharding.
//! - [`Step`], [`minute_start`]: time buckets.
//! - [`Increment`]: one series' state change in one minute, what flows from the
//!   aggregator to the store and upstream.
//! - [`ModelError`]: every failure, each leaving its receiver unchanged.
//!
//! # Layout
//! - [`error`] — [`ModelError`].
//! - [`kind`] — [`Kind`].
//! - [`state`] — [`State`], [`SampleValue`], [`StateParams`] and the per-kind parts
//!   ([`Sum`], [`Avg`], [`Latest`], [`Apdex`]).
//! - [`hist`] — [`Hist`].
//! - [`exp_hist`] — [`ExpHist`], its index mapping and its compact encoding.
//! - [`series`] — [`SeriesKey`].
//! - [`time`] — [`Step`], [`minute_start`], [`MINUTE_MS`].
//! - [`codec`] — the versioned binary encoding of states ([`State::encode`],
//!   [`State::decode`]) used by the store.
//!
//! # Example
//!
//! Two regions record latencies; the global tier merges their increments and reads the
//! true p99, not an average of regional p99s.
//!
//! ```
//! use strata_model::{Kind, SampleValue, State, StateParams};
//!
//! let params = StateParams::default();
//! let mut eu = State::empty(Kind::Histogram, &params);
//! let mut us = State::empty(Kind::Histogram, &params);
//! for ms in 1..=99 {
//!     eu.record(SampleValue::Number(f64::from(ms)), 0, "eu")?;
//! }
//! us.record(SampleValue::Number(5000.0), 0, "us")?;
//!
//! let mut global = State::empty(Kind::Histogram, &params);
//! global.merge(&eu)?;
//! global.merge(&us)?;
//!
//! let values = global.values(1);
//! assert_eq!(values[0], ("count", 100.0));
//! let p99 = values.iter().find(|(name, _)| *name == "p99").map(|(_, v)| *v);
//! assert!((p99.unwrap() - 99.0).abs() <= 1.0); // within the 2-digit (1%) bound
//!
//! // Merging is refused, not coerced, when kinds differ.
//! assert!(global.merge(&State::Counter(1)).is_err());
//!
//! // States travel and persist as bytes.
//! let back = State::decode(&global.to_bytes())?;
//! assert_eq!(back, global);
//! # Ok::<(), strata_model::ModelError>(())
//! ```

#[doc(hidden)]
pub mod bench_inputs;
pub mod codec;
pub mod error;
pub mod exp_hist;
#[doc(hidden)]
pub mod fuzzing;
pub mod hist;
pub mod kind;
pub mod series;
pub mod state;
pub mod time;

use std::sync::Arc;

pub use error::ModelError;
pub use exp_hist::ExpHist;
pub use hist::Hist;
pub use kind::Kind;
pub use series::SeriesKey;
pub use state::{Apdex, Avg, Latest, SampleValue, State, StateParams, Sum};
pub use time::{MINUTE_MS, Step, minute_start};

/// What changed for one series in one minute bucket since the last flush: the unit the
/// aggregator hands to the store and the federation forwarder. Merging increments (in any
/// order or grouping) into the bucket's state gives the same result as having seen every
/// raw sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Increment {
    /// The series; shared, because one series appears in many increments and maps.
    pub series: Arc<SeriesKey>,
    /// Start of the UTC minute (see [`minute_start`]) the state belongs to.
    pub bucket_ms: i64,
    /// The state change; merged into the stored state with [`State::merge`].
    pub state: State,
}

/// One validated sample, ready for an aggregator shard: the unit inputs hand
/// over, and what a node's request log keeps of a request it acknowledged
/// ahead of the flush that merges it.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleItem {
    pub series: Arc<SeriesKey>,
    pub kind: Kind,
    /// Start of the UTC minute of `ts_ms`.
    pub bucket_ms: i64,
    /// Event time, ms since the Unix epoch.
    pub ts_ms: i64,
    pub value: SampleValue,
    /// Apdex threshold for apdex samples.
    pub apdex_threshold: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increments_compare_by_content() {
        let series = Arc::new(SeriesKey::new("requests_total", []).unwrap());
        let a = Increment {
            series: series.clone(),
            bucket_ms: 60_000,
            state: State::Counter(2),
        };
        let b = Increment {
            series: Arc::new(SeriesKey::new("requests_total", []).unwrap()),
            bucket_ms: 60_000,
            state: State::Counter(2),
        };
        assert_eq!(a, b);
        assert_ne!(
            a,
            Increment {
                state: State::Counter(3),
                ..b.clone()
            }
        );
    }
}
