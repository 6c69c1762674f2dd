//! Time buckets.
//!
//! State is kept per UTC minute of event time; hour, day and whole-range views are merges
//! of minutes. All timestamps are milliseconds since the Unix epoch, as `i64`.

use std::fmt;
use std::str::FromStr;

use crate::error::ModelError;

/// Milliseconds in a minute, the width of a stored bucket.
pub const MINUTE_MS: i64 = 60_000;
/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
/// Milliseconds in a (UTC, leap-second-free) day.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// Earliest timestamp the APIs accept: 0001-01-01T00:00:00Z (RFC 3339's first instant).
pub const MIN_TS_MS: i64 = -62_135_596_800_000;
/// Latest timestamp the APIs accept: 9999-12-31T23:59:59.999Z (RFC 3339's last instant).
/// Far from `i64::MAX`, so bucket and range arithmetic on accepted times cannot overflow.
pub const MAX_TS_MS: i64 = 253_402_300_799_999;

/// Whether `ts_ms` is within [`MIN_TS_MS`]`..=`[`MAX_TS_MS`].
pub fn in_range(ts_ms: i64) -> bool {
    (MIN_TS_MS..=MAX_TS_MS).contains(&ts_ms)
}

/// `count` units of `unit_ms` milliseconds, saturating at `i64::MAX`: converts a
/// configured duration (seconds, minutes, days) into milliseconds without the
/// wrap-around that would turn a huge retention into a negative one.
///
/// ```
/// use strata_model::time::{DAY_MS, span_ms};
/// assert_eq!(span_ms(2, DAY_MS), 172_800_000);
/// assert_eq!(span_ms(9_999_999_999_999, DAY_MS), i64::MAX);
/// assert_eq!(span_ms(u64::MAX, 1), i64::MAX);
/// ```
pub fn span_ms(count: u64, unit_ms: i64) -> i64 {
    i64::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(unit_ms.max(0)))
        .unwrap_or(i64::MAX)
}

/// Start of the UTC minute containing `ts_ms` (floor, also for timestamps before 1970).
///
/// ```
/// use strata_model::minute_start;
/// assert_eq!(minute_start(125_000), 120_000);
/// assert_eq!(minute_start(-1), -60_000);
/// ```
pub fn minute_start(ts_ms: i64) -> i64 {
    floor_to(ts_ms, MINUTE_MS)
}

/// Floors `ts_ms` to a multiple of `width_ms`. Saturates at `i64::MIN` for the few
/// timestamps whose floor is not representable.
fn floor_to(ts_ms: i64, width_ms: i64) -> i64 {
    ts_ms.saturating_sub(ts_ms.rem_euclid(width_ms))
}

/// Resolution of a query: the width of each returned point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// One point per UTC minute (the stored resolution).
    Minute,
    /// One point per UTC hour.
    Hour,
    /// One point per UTC day.
    Day,
    /// One point for the whole queried range.
    All,
}

impl Step {
    /// The lowercase name used in the query API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Minute => "minute",
            Step::Hour => "hour",
            Step::Day => "day",
            Step::All => "all",
        }
    }

    /// Width of one point in milliseconds; `None` for [`Step::All`], whose single point
    /// spans the queried range.
    pub fn width_ms(self) -> Option<i64> {
        match self {
            Step::Minute => Some(MINUTE_MS),
            Step::Hour => Some(HOUR_MS),
            Step::Day => Some(DAY_MS),
            Step::All => None,
        }
    }

    /// Start of the point of this step that contains `ts_ms`. Every timestamp falls in the
    /// same [`Step::All`] point, keyed `i64::MIN`.
    ///
    /// ```
    /// use strata_model::Step;
    /// assert_eq!(Step::Hour.bucket_start(3_600_000 + 59_999), 3_600_000);
    /// assert_eq!(Step::All.bucket_start(42), i64::MIN);
    /// ```
    pub fn bucket_start(self, ts_ms: i64) -> i64 {
        match self.width_ms() {
            Some(width) => floor_to(ts_ms, width),
            None => i64::MIN,
        }
    }

    /// How many minutes one point of this step spans, for per-minute rates. For
    /// [`Step::All`] that is the queried range `[from_ms, to_ms)` rounded up to whole
    /// minutes, and at least 1.
    pub fn minutes(self, from_ms: i64, to_ms: i64) -> u64 {
        match self {
            Step::Minute => 1,
            Step::Hour => 60,
            Step::Day => 1440,
            Step::All => {
                let span = i128::from(to_ms) - i128::from(from_ms);
                let minutes = (span + i128::from(MINUTE_MS) - 1).div_euclid(i128::from(MINUTE_MS));
                u64::try_from(minutes.max(1)).unwrap_or(u64::MAX)
            }
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Step {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Step, ModelError> {
        match s {
            "minute" => Ok(Step::Minute),
            "hour" => Ok(Step::Hour),
            "day" => Ok(Step::Day),
            "all" => Ok(Step::All),
            _ => Err(ModelError::InvalidStep(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_start_floors_positive_and_negative() {
        assert_eq!(minute_start(0), 0);
        assert_eq!(minute_start(59_999), 0);
        assert_eq!(minute_start(60_000), 60_000);
        assert_eq!(minute_start(1_763_800_000_123), 1_763_799_960_000);
        assert_eq!(minute_start(-1), -60_000);
        assert_eq!(minute_start(-60_000), -60_000);
        assert_eq!(minute_start(-60_001), -120_000);
    }

    #[test]
    fn minute_start_does_not_overflow_at_the_extremes() {
        assert_eq!(minute_start(i64::MIN), i64::MIN);
        assert_eq!(minute_start(i64::MAX) % MINUTE_MS, 0);
        assert_eq!(Step::Day.bucket_start(i64::MIN + 1), i64::MIN);
    }

    #[test]
    fn span_ms_saturates_instead_of_wrapping() {
        assert_eq!(span_ms(0, DAY_MS), 0);
        assert_eq!(span_ms(30, 1_000), 30_000);
        // 10^16 s is 10^19 ms: more than i64::MAX, which used to wrap negative.
        assert_eq!(span_ms(10_000_000_000_000_000, 1_000), i64::MAX);
        assert_eq!(span_ms(u64::MAX, MINUTE_MS), i64::MAX);
        assert_eq!(span_ms(i64::MAX as u64, 1), i64::MAX);
    }

    #[test]
    fn accepted_time_range_leaves_room_for_bucket_arithmetic() {
        assert!(in_range(0) && in_range(MIN_TS_MS) && in_range(MAX_TS_MS));
        assert!(!in_range(MAX_TS_MS + 1) && !in_range(MIN_TS_MS - 1));
        assert!(!in_range(i64::MAX) && !in_range(i64::MIN));
        for step in [Step::Minute, Step::Hour, Step::Day] {
            let width = step.width_ms().unwrap_or(0);
            assert!(step.bucket_start(MAX_TS_MS).checked_add(width).is_some());
            assert!(step.bucket_start(MIN_TS_MS) > i64::MIN);
        }
    }

    #[test]
    fn bucket_start_per_step() {
        let ts = 1_763_800_000_123;
        assert_eq!(Step::Minute.bucket_start(ts), 1_763_799_960_000);
        assert_eq!(Step::Hour.bucket_start(ts), 1_763_798_400_000);
        assert_eq!(Step::Day.bucket_start(ts), 1_763_769_600_000);
        assert_eq!(Step::All.bucket_start(ts), i64::MIN);
        assert_eq!(Step::Day.bucket_start(-1), -DAY_MS);
    }

    #[test]
    fn minutes_per_step() {
        assert_eq!(Step::Minute.minutes(0, 10 * MINUTE_MS), 1);
        assert_eq!(Step::Hour.minutes(0, 0), 60);
        assert_eq!(Step::Day.minutes(0, 0), 1440);
        assert_eq!(Step::All.minutes(0, 15 * MINUTE_MS), 15);
        assert_eq!(Step::All.minutes(0, 15 * MINUTE_MS + 1), 16);
        assert_eq!(Step::All.minutes(0, 1), 1);
        assert_eq!(Step::All.minutes(0, 0), 1);
        assert_eq!(Step::All.minutes(10, 0), 1);
        assert_eq!(Step::All.minutes(i64::MIN, i64::MAX), 307_445_734_561_826);
    }

    #[test]
    fn step_names_roundtrip() {
        for step in [Step::Minute, Step::Hour, Step::Day, Step::All] {
            assert_eq!(step.as_str().parse::<Step>().unwrap(), step);
            assert_eq!(step.to_string(), step.as_str());
        }
        assert_eq!(
            "week".parse::<Step>(),
            Err(ModelError::InvalidStep("week".into()))
        );
    }
}
