//! The one error type of the model crate.
//!
//! Callers branch on the variant: the ingest path turns `InvalidValue`, `InvalidName` and
//! `UnknownKind` into a 400 for the offending line; the aggregator and the federation
//! receiver count `KindMismatch`, `PrecisionMismatch`, `ApdexThresholdMismatch` and
//! `Overflow` as rejected merges; decoders return `InvalidState` for a state no records
//! could have made; the store treats `Decode` and `InvalidState` as corruption.

use crate::kind::Kind;

/// Everything that can go wrong when building, recording, merging or decoding metric state.
///
/// Every operation that returns this error leaves its receiver unchanged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// Two states of different kinds were merged (or a sample of another kind was recorded):
    /// a metric's kind is fixed at first sight.
    #[error("kind mismatch: metric is {expected}, got {found}")]
    KindMismatch {
        /// The kind of the state being merged into.
        expected: Kind,
        /// The kind of the state or sample that was refused.
        found: Kind,
    },
    /// Two histograms with different significant digits were merged; their buckets do not
    /// line up, so the merge would silently lose precision.
    #[error("histogram precision mismatch: metric has {expected} significant digits, got {found}")]
    PrecisionMismatch {
        /// Significant digits of the histogram being merged into.
        expected: u8,
        /// Significant digits of the refused histogram.
        found: u8,
    },
    /// Two apdex states with different thresholds were merged: their satisfied/tolerating
    /// counts mean different things.
    #[error("apdex threshold mismatch: metric has threshold {expected}, got {found}")]
    ApdexThresholdMismatch {
        /// Threshold of the state being merged into.
        expected: f64,
        /// Threshold of the refused state.
        found: f64,
    },
    /// A sample value that the kind cannot record (negative counter, non-finite float, a
    /// boolean for a numeric kind, ...).
    #[error("invalid value: {reason}")]
    InvalidValue {
        /// The kind the value was meant for.
        kind: Kind,
        /// Lowercase explanation naming the kind and the offending value, e.g.
        /// `counter value must be a non-negative integer, got -1`.
        reason: String,
    },
    /// A record or merge whose result the state cannot hold: a float total that would
    /// overflow to ±infinity (or NaN), an integer count past `u64::MAX`. Refused rather
    /// than saturated, so every stored state stays finite and exact.
    #[error("overflow: {reason}")]
    Overflow {
        /// The kind of the state that refused.
        kind: Kind,
        /// Lowercase explanation naming the values, e.g.
        /// `sum 1e308 + 1e308 is not finite`.
        reason: String,
    },
    /// A state whose fields are not ones any sequence of records and merges could
    /// produce (a NaN or infinite total, an average of no samples with a non-zero sum,
    /// more matched flags than flags, ...). Decoders refuse such states.
    #[error("invalid {kind} state: {reason}")]
    InvalidState {
        /// The kind of the refused state.
        kind: Kind,
        /// Lowercase explanation naming the offending field and value.
        reason: String,
    },
    /// A metric or label name that does not follow the Prometheus naming rules, or a
    /// duplicated label name. The message names the offending name.
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// A kind name that is not one of [`Kind::ALL`].
    #[error(
        "unknown metric kind {0:?}: expected one of counter, sum, avg, max, min, latest, percent, apdex, histogram, exp_histogram"
    )]
    UnknownKind(String),
    /// A step name that is not `minute`, `hour`, `day` or `all`.
    #[error("invalid step {0:?}: expected one of minute, hour, day, all")]
    InvalidStep(String),
    /// Bytes that are not a valid encoded state or histogram.
    #[error("cannot decode state: {0}")]
    Decode(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_and_name_the_cause() {
        let e = ModelError::KindMismatch {
            expected: Kind::Counter,
            found: Kind::Histogram,
        };
        assert_eq!(
            e.to_string(),
            "kind mismatch: metric is counter, got histogram"
        );

        let e = ModelError::PrecisionMismatch {
            expected: 2,
            found: 3,
        };
        assert_eq!(
            e.to_string(),
            "histogram precision mismatch: metric has 2 significant digits, got 3"
        );

        let e = ModelError::ApdexThresholdMismatch {
            expected: 500.0,
            found: 250.0,
        };
        assert_eq!(
            e.to_string(),
            "apdex threshold mismatch: metric has threshold 500, got 250"
        );

        let e = ModelError::UnknownKind("gauge".into());
        assert!(e.to_string().starts_with("unknown metric kind \"gauge\""));

        let e = ModelError::InvalidStep("week".into());
        assert!(e.to_string().starts_with("invalid step \"week\""));

        let e = ModelError::Decode("truncated".into());
        assert_eq!(e.to_string(), "cannot decode state: truncated");
    }
}
