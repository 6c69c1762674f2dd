//! [`Resolution`]: the widths at which the store keeps bucket state.

use strata_model::time::{DAY_MS, HOUR_MS};
use strata_model::{MINUTE_MS, Step, minute_start};

/// Width of a stored bucket.
///
/// A commit merges each increment into its minute; a series' minutes are
/// folded into its hour and day buckets once a newer minute starts (late
/// increments into all three at once), and reads of hours and days add the
/// minute not yet folded (`plan.rs`), so an hour (day) always reads as the
/// merge of every increment committed into its minutes, also after minute
/// retention has deleted them. Buckets start at UTC boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    /// One bucket per UTC minute: the finest kept.
    Minute,
    /// One bucket per UTC hour.
    Hour,
    /// One bucket per UTC day.
    Day,
}

impl Resolution {
    /// Every resolution, finest first: the order commits merge them in.
    pub const ALL: [Resolution; 3] = [Resolution::Minute, Resolution::Hour, Resolution::Day];

    /// Width of one bucket in milliseconds.
    pub fn width_ms(self) -> i64 {
        match self {
            Resolution::Minute => MINUTE_MS,
            Resolution::Hour => HOUR_MS,
            Resolution::Day => DAY_MS,
        }
    }

    /// Start of the bucket of this resolution that contains `ts_ms` (floor,
    /// also before 1970; saturates at `i64::MIN`).
    ///
    /// ```
    /// use strata_store::Resolution;
    /// assert_eq!(Resolution::Minute.bucket_start(125_000), 120_000);
    /// assert_eq!(Resolution::Hour.bucket_start(3_600_000 + 59_999), 3_600_000);
    /// assert_eq!(Resolution::Day.bucket_start(-1), -86_400_000);
    /// ```
    pub fn bucket_start(self, ts_ms: i64) -> i64 {
        match self {
            Resolution::Minute => minute_start(ts_ms),
            Resolution::Hour => Step::Hour.bucket_start(ts_ms),
            Resolution::Day => Step::Day.bucket_start(ts_ms),
        }
    }

    /// The lowercase name, as in the query API's `step`.
    pub fn as_str(self) -> &'static str {
        self.step().as_str()
    }

    /// The query step with points of this width.
    pub fn step(self) -> Step {
        match self {
            Resolution::Minute => Step::Minute,
            Resolution::Hour => Step::Hour,
            Resolution::Day => Step::Day,
        }
    }

    /// The resolution whose buckets are the points of `step`; `None` for
    /// [`Step::All`], whose single point is a merge of buckets.
    pub fn from_step(step: Step) -> Option<Resolution> {
        match step {
            Step::Minute => Some(Resolution::Minute),
            Step::Hour => Some(Resolution::Hour),
            Step::Day => Some(Resolution::Day),
            Step::All => None,
        }
    }

    /// Position in [`Resolution::ALL`], for per-resolution arrays.
    pub(crate) fn index(self) -> usize {
        match self {
            Resolution::Minute => 0,
            Resolution::Hour => 1,
            Resolution::Day => 2,
        }
    }
}

impl std::fmt::Display for Resolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_starts_floor_to_utc_boundaries() {
        let ts = 1_763_800_000_123;
        assert_eq!(Resolution::Minute.bucket_start(ts), 1_763_799_960_000);
        assert_eq!(Resolution::Hour.bucket_start(ts), 1_763_798_400_000);
        assert_eq!(Resolution::Day.bucket_start(ts), 1_763_769_600_000);
        for r in Resolution::ALL {
            assert_eq!(r.bucket_start(0), 0);
            assert_eq!(r.bucket_start(-1), -r.width_ms());
            assert_eq!(r.bucket_start(r.width_ms() - 1), 0);
            assert_eq!(r.bucket_start(i64::MIN), i64::MIN);
            assert_eq!(Resolution::ALL[r.index()], r);
            assert_eq!(Resolution::from_step(r.step()), Some(r));
            assert_eq!(r.step().width_ms(), Some(r.width_ms()));
            assert_eq!(r.to_string(), r.step().to_string());
        }
        assert_eq!(Resolution::from_step(Step::All), None);
    }
}
