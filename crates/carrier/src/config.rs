//! What a carrier is asked to be: its [`Strategy`], its [`CarrierConfig`], and the
//! [`CarrierError`] returned when that configuration cannot be started.

use std::fmt;
use std::str::FromStr;

/// What a producer does when its partition is full.
///
/// Its names (`blocking`, `drop_if_full`) are listed once, by the serde
/// derive: configuration files deserialize it directly, and [`FromStr`]
/// goes through the same derive, so an unknown name is refused with the
/// same list of allowed names either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The producer waits for space (counted in `waits`): backpressure reaches the caller.
    Blocking,
    /// The item is handed back as [`Produced::Dropped`](crate::Produced::Dropped) and counted
    /// in `dropped`; the producer never waits.
    DropIfFull,
}

impl Strategy {
    /// The name used in configuration files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Blocking => "blocking",
            Strategy::DropIfFull => "drop_if_full",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = ParseStrategyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use serde::Deserialize as _;
        let name = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s);
        Strategy::deserialize(name).map_err(|e| ParseStrategyError {
            input: s.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// A strategy name that is neither `blocking` nor `drop_if_full`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseStrategyError {
    /// The rejected text, echoed back so the message can name it.
    pub input: String,
    /// What serde said, listing the allowed names.
    pub reason: String,
}

impl fmt::Display for ParseStrategyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "carrier strategy: {}", self.reason)
    }
}

impl std::error::Error for ParseStrategyError {}

/// How to build one carrier.
#[derive(Clone, Debug)]
pub struct CarrierConfig {
    /// Names the carrier in stats and logs, and prefixes its consumer threads
    /// (`"{name}-{partition}"`).
    pub name: String,
    /// Number of independent queues, each drained by its own consumer thread.
    pub partitions: usize,
    /// Items each partition holds before producers wait or drop: the backpressure bound.
    pub capacity: usize,
    /// What a producer does when its partition is full.
    pub strategy: Strategy,
    /// Upper bound on the items handed to one [`Consumer::consume`](crate::Consumer::consume)
    /// call, so one call's latency stays bounded when the queue is deep.
    pub bulk_max: usize,
}

impl Default for CarrierConfig {
    fn default() -> Self {
        CarrierConfig {
            name: "carrier".to_owned(),
            partitions: 2,
            capacity: 1024,
            strategy: Strategy::Blocking,
            bulk_max: 256,
        }
    }
}

impl CarrierConfig {
    /// Checks the sizes before any thread is spawned; the error names the offending field.
    pub fn validate(&self) -> Result<(), CarrierError> {
        let zero = [
            ("partitions", self.partitions),
            ("capacity", self.capacity),
            ("bulk_max", self.bulk_max),
        ]
        .into_iter()
        .find(|&(_, value)| value == 0);
        match zero {
            Some((field, _)) => Err(CarrierError::InvalidConfig {
                carrier: self.name.clone(),
                field,
            }),
            None => Ok(()),
        }
    }
}

/// Why [`Carrier::start`](crate::Carrier::start) failed.
#[derive(Debug)]
pub enum CarrierError {
    /// A size in [`CarrierConfig`] is zero.
    InvalidConfig {
        /// The carrier's configured name.
        carrier: String,
        /// The field that must be at least 1.
        field: &'static str,
    },
    /// The operating system refused to start a consumer thread. Threads spawned before
    /// this one have already been stopped and joined.
    Spawn {
        /// The thread that could not be started.
        thread: String,
        /// The error from the operating system.
        source: std::io::Error,
    },
}

impl fmt::Display for CarrierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CarrierError::InvalidConfig { carrier, field } => {
                write!(f, "carrier `{carrier}`: `{field}` must be at least 1")
            }
            CarrierError::Spawn { thread, source } => {
                write!(f, "cannot spawn carrier thread `{thread}`: {source}")
            }
        }
    }
}

impl std::error::Error for CarrierError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CarrierError::InvalidConfig { .. } => None,
            CarrierError::Spawn { source, .. } => Some(source),
        }
    }
}
