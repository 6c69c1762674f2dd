//! The ten metric kinds.
//!
//! A metric's kind is fixed at first sight; it decides which [`State`](crate::State) the
//! metric aggregates into and which value fields a query returns for it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// What a metric measures, and therefore how its samples aggregate.
///
/// The lowercase name (`as_str`, `Display`, `FromStr`, serde) is what users write in
/// NDJSON samples and what the query API prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Integer occurrences; merges by addition.
    Counter,
    /// Float total; merges by compensated addition.
    Sum,
    /// Float sum and count; merges both by addition.
    Avg,
    /// Largest float seen.
    Max,
    /// Smallest float seen.
    Min,
    /// The value with the greatest (timestamp, source).
    Latest,
    /// Share of `true` flags, reported as 0–100.
    Percent,
    /// Apdex score of latencies against a threshold T, 0–1.
    Apdex,
    /// Full HDR histogram of non-negative floats; percentiles are computed at query time.
    Histogram,
    /// Base-2 exponential histogram of any finite floats, the layout of OpenTelemetry's
    /// ExponentialHistogram and Prometheus native histograms; percentiles at query time.
    #[serde(rename = "exp_histogram")]
    ExpHistogram,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 10] = [
        Kind::Counter,
        Kind::Sum,
        Kind::Avg,
        Kind::Max,
        Kind::Min,
        Kind::Latest,
        Kind::Percent,
        Kind::Apdex,
        Kind::Histogram,
        Kind::ExpHistogram,
    ];

    /// The lowercase name users write and read.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Sum => "sum",
            Kind::Avg => "avg",
            Kind::Max => "max",
            Kind::Min => "min",
            Kind::Latest => "latest",
            Kind::Percent => "percent",
            Kind::Apdex => "apdex",
            Kind::Histogram => "histogram",
            Kind::ExpHistogram => "exp_histogram",
        }
    }

    /// The value fields [`State::values`](crate::State::values) returns for this kind, in
    /// the same order. Alarm rules and query output name one of these.
    pub fn value_fields(self) -> &'static [&'static str] {
        match self {
            Kind::Counter => &["count", "rate_per_min"],
            Kind::Sum => &["sum"],
            Kind::Avg => &["sum", "count", "avg"],
            Kind::Max => &["max"],
            Kind::Min => &["min"],
            Kind::Latest => &["value"],
            Kind::Percent => &["matched", "total", "percent"],
            Kind::Apdex => &["satisfied", "tolerating", "total", "apdex"],
            Kind::Histogram => &[
                "count", "min", "max", "mean", "p50", "p75", "p90", "p95", "p99", "p999",
            ],
            Kind::ExpHistogram => &[
                "count", "sum", "min", "max", "mean", "p50", "p75", "p90", "p95", "p99", "p999",
            ],
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = ModelError;

    /// Parses the exact lowercase name, as serde does.
    fn from_str(s: &str) -> Result<Kind, ModelError> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ModelError::UnknownKind(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_through_from_str_and_display() {
        for kind in Kind::ALL {
            assert_eq!(kind.as_str().parse::<Kind>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.as_str());
        }
    }

    #[test]
    fn unknown_kind_names_the_input() {
        assert_eq!(
            "gauge".parse::<Kind>(),
            Err(ModelError::UnknownKind("gauge".into()))
        );
        assert_eq!(
            "Counter".parse::<Kind>(),
            Err(ModelError::UnknownKind("Counter".into()))
        );
    }

    #[test]
    fn serde_uses_lowercase_names() {
        for kind in Kind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<Kind>(&json).unwrap(), kind);
        }
        assert!(serde_json::from_str::<Kind>("\"Counter\"").is_err());
    }

    #[test]
    fn all_lists_each_kind_once() {
        let mut seen = std::collections::HashSet::new();
        for kind in Kind::ALL {
            assert!(seen.insert(kind));
            assert!(!kind.value_fields().is_empty());
        }
    }
}
