//! Metric state and its add-function.
//!
//! Every [`State`] is a commutative monoid: [`State::merge`] is associative and
//! commutative and [`State::empty`] is its identity, so merging increments in any grouping,
//! at any tier, gives the state one node would have built from every raw sample. The
//! property tests in `tests/merge_laws.rs` check these laws for every kind.
//!
//! Float kinds are exact as long as the float additions are (Sum and Avg use Neumaier
//! compensated summation, so in general they agree to within a few ulps of the sum of
//! magnitudes).
//!
//! **Every state is valid by construction** ([`State::validate`]): a record or merge
//! whose result a state cannot hold — a float total that would overflow to ±infinity or
//! become NaN, an integer count past `u64::MAX` — is refused with
//! [`ModelError::Overflow`] and leaves the state unchanged, like any other merge
//! conflict. Decoders check [`State::validate`], so a forged state never enters.

use crate::error::ModelError;
use crate::exp_hist::{self, ExpHist};
use crate::hist::Hist;
use crate::kind::Kind;

/// The value of one raw sample, before it is recorded into a state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SampleValue {
    /// Every kind except `percent`.
    Number(f64),
    /// `percent`: whether the sample matched.
    Flag(bool),
}

/// Per-metric settings that shape the identity state of a kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateParams {
    /// Significant decimal digits of histograms (1..=5): 2 bounds percentile error by
    /// 1%, 3 by 0.1%, at roughly 8x the memory.
    pub histogram_sigfig: u8,
    /// Apdex threshold T, in the unit of the samples (milliseconds by convention).
    pub apdex_threshold: f64,
    /// Most buckets either side of an exponential histogram may span (2..=16384); past
    /// it the histogram lowers its scale. Bounds its memory and wire size.
    pub exp_histogram_max_buckets: u32,
    /// The scale (-10..=20) exponential histograms start recording at: the finest one
    /// their bucket bound allows is kept.
    pub exp_histogram_scale: i32,
}

impl Default for StateParams {
    fn default() -> StateParams {
        StateParams {
            histogram_sigfig: 2,
            apdex_threshold: 500.0,
            exp_histogram_max_buckets: exp_hist::DEFAULT_MAX_BUCKETS,
            exp_histogram_scale: exp_hist::MAX_SCALE,
        }
    }
}

impl StateParams {
    /// Checks the parameters: 1..=5 histogram digits, a finite apdex threshold `> 0`, an
    /// exponential histogram scale in -10..=20 and bucket bound in 2..=16384.
    /// [`State::empty`] tolerates invalid parameters (see there); config loading should
    /// call this to name the problem instead.
    pub fn validate(&self) -> Result<(), ModelError> {
        ExpHist::new(self.exp_histogram_scale, self.exp_histogram_max_buckets)?;
        if !(1..=5).contains(&self.histogram_sigfig) {
            return Err(ModelError::InvalidValue {
                kind: Kind::Histogram,
                reason: format!(
                    "histogram significant digits must be between 1 and 5, got {}",
                    self.histogram_sigfig
                ),
            });
        }
        if !(self.apdex_threshold.is_finite() && self.apdex_threshold > 0.0) {
            return Err(ModelError::InvalidValue {
                kind: Kind::Apdex,
                reason: format!(
                    "apdex threshold must be a finite number greater than 0, got {}",
                    self.apdex_threshold
                ),
            });
        }
        Ok(())
    }
}

/// A float total with Neumaier compensated summation: `compensation` carries the low-order
/// bits that `sum` could not hold, so adding many values of mixed magnitude stays accurate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sum {
    /// The running float sum.
    pub sum: f64,
    /// Accumulated rounding error of `sum`; the total is `sum + compensation`.
    pub compensation: f64,
}

impl Sum {
    /// The compensated total.
    pub fn value(&self) -> f64 {
        self.sum + self.compensation
    }

    /// Whether the running sum, its error term and the total are all finite: the
    /// invariant every stored sum keeps.
    pub fn is_finite(&self) -> bool {
        self.sum.is_finite() && self.compensation.is_finite() && self.value().is_finite()
    }

    /// `self + x`, compensated; may be non-finite (callers check).
    pub(crate) fn plus(&self, x: f64) -> Sum {
        let t = self.sum + x;
        let mut compensation = self.compensation;
        // Past an overflow the error term is meaningless (inf - inf = NaN); the caller
        // refuses the result anyway.
        if t.is_finite() {
            if self.sum.abs() >= x.abs() {
                compensation += (self.sum - t) + x;
            } else {
                compensation += (x - t) + self.sum;
            }
        }
        Sum {
            sum: t,
            compensation,
        }
    }

    /// `self + other`; may be non-finite (callers check).
    fn merged(&self, other: &Sum) -> Sum {
        let mut t = self.plus(other.sum);
        t.compensation += other.compensation;
        t
    }

    /// Adds one value; refuses (unchanged) if the total would not be finite.
    pub fn add(&mut self, x: f64) -> Result<(), ModelError> {
        *self = Self::finite(self.plus(x), Kind::Sum, || {
            format!("{} + {x}", self.value())
        })?;
        Ok(())
    }

    /// Adds another compensated sum; refuses (unchanged) if the total would not be
    /// finite.
    pub fn merge(&mut self, other: &Sum) -> Result<(), ModelError> {
        *self = self.checked_merge(other, Kind::Sum)?;
        Ok(())
    }

    /// `self + other` if finite, else the overflow error of a `kind` state.
    pub(crate) fn checked_merge(&self, other: &Sum, kind: Kind) -> Result<Sum, ModelError> {
        Self::finite(self.merged(other), kind, || {
            format!("{} + {}", self.value(), other.value())
        })
    }

    /// `sum` if finite, else the overflow error for `kind`, described by `what`.
    pub(crate) fn finite(
        sum: Sum,
        kind: Kind,
        what: impl FnOnce() -> String,
    ) -> Result<Sum, ModelError> {
        if sum.is_finite() {
            Ok(sum)
        } else {
            Err(ModelError::Overflow {
                kind,
                reason: format!("{kind} {} is not finite", what()),
            })
        }
    }
}

/// `(matched, total)` of two percent states added, or the overflow error.
fn percent_merged(a: (u64, u64), b: (u64, u64)) -> Result<(u64, u64), ModelError> {
    Ok((
        add_count(a.0, b.0, Kind::Percent, "matched")?,
        add_count(a.1, b.1, Kind::Percent, "total")?,
    ))
}

/// `a + b`, or the overflow error naming `what` of `kind`.
fn add_count(a: u64, b: u64, kind: Kind, what: &str) -> Result<u64, ModelError> {
    a.checked_add(b).ok_or_else(|| ModelError::Overflow {
        kind,
        reason: format!("{kind} {what} {a} + {b} exceeds {}", u64::MAX),
    })
}

/// Sum and count of float samples; the average is derived at query time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Avg {
    /// Compensated sum of the samples.
    pub sum: Sum,
    /// Number of samples.
    pub count: u64,
}

impl Avg {
    /// Records one sample; refuses (unchanged) if the sum would not be finite or the
    /// count would overflow.
    pub fn add(&mut self, x: f64) -> Result<(), ModelError> {
        let count = add_count(self.count, 1, Kind::Avg, "count")?;
        let sum = Sum::finite(self.sum.plus(x), Kind::Avg, || {
            format!("{} + {x}", self.sum.value())
        })?;
        *self = Avg { sum, count };
        Ok(())
    }

    /// Adds another average's sum and count; refuses (unchanged) on overflow.
    pub fn merge(&mut self, other: &Avg) -> Result<(), ModelError> {
        *self = self.merged(other)?;
        Ok(())
    }

    /// `self + other`, or the overflow error.
    fn merged(&self, other: &Avg) -> Result<Avg, ModelError> {
        Ok(Avg {
            sum: self.sum.checked_merge(&other.sum, Kind::Avg)?,
            count: add_count(self.count, other.count, Kind::Avg, "count")?,
        })
    }

    /// The mean, NaN when nothing was recorded.
    pub fn avg(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum.value() / self.count as f64
        }
    }
}

/// The most recent value of a gauge-like metric, with where and when it was observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    /// The observed value.
    pub value: f64,
    /// Event time of the observation; the greatest wins.
    pub ts_ms: i64,
    /// Who observed it; breaks ties between sources reporting the same millisecond, so
    /// every tier picks the same winner.
    pub source: String,
}

impl Latest {
    /// Whether `self` should replace `other`: greater `(ts_ms, source)`, and on a full tie
    /// the greater value (by `total_cmp`), which keeps merge commutative.
    pub fn beats(&self, other: &Latest) -> bool {
        Self::beats_parts(self.value, self.ts_ms, &self.source, other)
    }

    fn beats_parts(value: f64, ts_ms: i64, source: &str, other: &Latest) -> bool {
        (ts_ms, source)
            .cmp(&(other.ts_ms, other.source.as_str()))
            .then_with(|| value.total_cmp(&other.value))
            .is_gt()
    }

    /// Puts the candidate `(value, ts_ms, source)` in `slot` if it beats what is there.
    fn offer(slot: &mut Option<Latest>, value: f64, ts_ms: i64, source: &str) {
        match slot {
            None => {
                *slot = Some(Latest {
                    value,
                    ts_ms,
                    source: source.to_owned(),
                })
            }
            Some(cur) if Self::beats_parts(value, ts_ms, source, cur) => {
                // Reuse the allocation: a steady stream from one source replaces every time.
                cur.value = value;
                cur.ts_ms = ts_ms;
                cur.source.clear();
                cur.source.push_str(source);
            }
            Some(_) => {}
        }
    }
}

/// Apdex counts against a threshold T: a latency `v` is satisfied if `v <= T`, tolerating
/// if `v <= 4T`, frustrated otherwise (frustrated = total - satisfied - tolerating).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Apdex {
    /// Samples with latency `<= threshold`.
    pub satisfied: u64,
    /// Samples with latency in `(threshold, 4 * threshold]`.
    pub tolerating: u64,
    /// All samples, including frustrated ones.
    pub total: u64,
    /// T. Only states with exactly the same T merge: the counts mean different things
    /// otherwise.
    pub threshold: f64,
}

impl Apdex {
    /// The identity for threshold `threshold`.
    pub fn new(threshold: f64) -> Apdex {
        Apdex {
            satisfied: 0,
            tolerating: 0,
            total: 0,
            threshold,
        }
    }

    /// Records one latency; refuses (unchanged) if the total would overflow.
    pub fn record(&mut self, latency: f64) -> Result<(), ModelError> {
        let one = if latency <= self.threshold {
            Apdex {
                satisfied: 1,
                tolerating: 0,
                total: 1,
                threshold: self.threshold,
            }
        } else if latency <= 4.0 * self.threshold {
            Apdex {
                satisfied: 0,
                tolerating: 1,
                total: 1,
                threshold: self.threshold,
            }
        } else {
            Apdex {
                satisfied: 0,
                tolerating: 0,
                total: 1,
                threshold: self.threshold,
            }
        };
        self.merge(&one)
    }

    /// Adds another state's counts; refuses a different threshold or a count past
    /// `u64::MAX`, leaving `self` unchanged.
    pub fn merge(&mut self, other: &Apdex) -> Result<(), ModelError> {
        *self = self.merged(other)?;
        Ok(())
    }

    /// `self + other`, or why they do not merge.
    fn merged(&self, other: &Apdex) -> Result<Apdex, ModelError> {
        // Exact on purpose: T is configuration, not a measurement.
        if self.threshold != other.threshold {
            return Err(ModelError::ApdexThresholdMismatch {
                expected: self.threshold,
                found: other.threshold,
            });
        }
        Ok(Apdex {
            total: add_count(self.total, other.total, Kind::Apdex, "total")?,
            satisfied: add_count(self.satisfied, other.satisfied, Kind::Apdex, "satisfied")?,
            tolerating: add_count(self.tolerating, other.tolerating, Kind::Apdex, "tolerating")?,
            threshold: self.threshold,
        })
    }

    /// `(satisfied + tolerating / 2) / total`, in 0..=1; NaN when empty.
    pub fn score(&self) -> f64 {
        if self.total == 0 {
            f64::NAN
        } else {
            (self.satisfied as f64 + self.tolerating as f64 / 2.0) / self.total as f64
        }
    }
}

/// The mergeable state of one series in one bucket; what crosses the wire between tiers.
///
/// The two histogram kinds are boxed: a state is held in every aggregator map
/// entry, flush and commit plan, and most series are counters or other
/// scalars, which then take 40 bytes instead of the 128 of an exponential
/// histogram's header (a histogram's buckets are on the heap either way).
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Total of integer samples.
    Counter(u64),
    /// Compensated float total.
    Sum(Sum),
    /// Float sum and count.
    Avg(Avg),
    /// Largest sample; `-inf` when empty.
    Max(f64),
    /// Smallest sample; `+inf` when empty.
    Min(f64),
    /// Sample with the greatest `(ts_ms, source)`; `None` when empty.
    Latest(Option<Latest>),
    /// Flags that were `true`, out of all flags.
    Percent {
        /// Samples whose flag was `true`.
        matched: u64,
        /// All samples.
        total: u64,
    },
    /// Apdex counts and their threshold.
    Apdex(Apdex),
    /// Full HDR histogram.
    Histogram(Box<Hist>),
    /// Base-2 exponential histogram (OpenTelemetry / Prometheus native layout).
    ExpHistogram(Box<ExpHist>),
}

impl State {
    /// The identity of `kind`'s add-function: merging it changes nothing.
    ///
    /// Histogram digits outside 1..=5, exponential histogram scales outside -10..=20 and
    /// bucket bounds outside 2..=16384 are clamped into those ranges (use
    /// [`StateParams::validate`] to reject them up front).
    pub fn empty(kind: Kind, params: &StateParams) -> State {
        match kind {
            Kind::Counter => State::Counter(0),
            Kind::Sum => State::Sum(Sum::default()),
            Kind::Avg => State::Avg(Avg::default()),
            Kind::Max => State::Max(f64::NEG_INFINITY),
            Kind::Min => State::Min(f64::INFINITY),
            Kind::Latest => State::Latest(None),
            Kind::Percent => State::Percent {
                matched: 0,
                total: 0,
            },
            Kind::Apdex => State::Apdex(Apdex::new(params.apdex_threshold)),
            Kind::Histogram => {
                let sigfig = params.histogram_sigfig.clamp(1, 5);
                State::Histogram(Box::new(
                    Hist::new(sigfig).expect("1..=5 significant digits always make a histogram"),
                ))
            }
            Kind::ExpHistogram => {
                let scale = params
                    .exp_histogram_scale
                    .clamp(exp_hist::MIN_SCALE, exp_hist::MAX_SCALE);
                let max_buckets = params
                    .exp_histogram_max_buckets
                    .clamp(exp_hist::MIN_MAX_BUCKETS, exp_hist::MAX_MAX_BUCKETS);
                State::ExpHistogram(Box::new(
                    ExpHist::new(scale, max_buckets)
                        .expect("a clamped scale and bound always make a histogram"),
                ))
            }
        }
    }

    /// The kind this state aggregates.
    pub fn kind(&self) -> Kind {
        match self {
            State::Counter(_) => Kind::Counter,
            State::Sum(_) => Kind::Sum,
            State::Avg(_) => Kind::Avg,
            State::Max(_) => Kind::Max,
            State::Min(_) => Kind::Min,
            State::Latest(_) => Kind::Latest,
            State::Percent { .. } => Kind::Percent,
            State::Apdex(_) => Kind::Apdex,
            State::Histogram(_) => Kind::Histogram,
            State::ExpHistogram(_) => Kind::ExpHistogram,
        }
    }

    /// Checks that `value` is a valid sample for `kind`, without recording it; the ingest
    /// path calls this on every line before merging any, so a request is all or nothing.
    ///
    /// - counter: an integer number in `0..=2^53`
    /// - sum, avg, max, min, latest: a finite number
    /// - percent: a flag
    /// - apdex: a finite number `>= 0`
    /// - histogram: a finite number in `0..=Hist::MAX_VALUE`
    /// - exp_histogram: a finite number
    pub fn validate_sample(kind: Kind, value: SampleValue) -> Result<(), ModelError> {
        let invalid = |reason: String| Err(ModelError::InvalidValue { kind, reason });
        let v = match (kind, value) {
            (Kind::Percent, SampleValue::Flag(_)) => return Ok(()),
            (Kind::Percent, SampleValue::Number(v)) => {
                return invalid(format!("percent value must be a boolean, got {v}"));
            }
            (_, SampleValue::Flag(b)) => {
                return invalid(format!("{kind} value must be a number, got boolean {b}"));
            }
            (_, SampleValue::Number(v)) => v,
        };
        match kind {
            Kind::Counter => {
                const MAX_EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
                if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0) {
                    return invalid(format!(
                        "counter value must be a non-negative integer, got {v}"
                    ));
                }
                if v > MAX_EXACT {
                    return invalid(format!("counter value must be at most 2^53, got {v}"));
                }
            }
            Kind::Sum | Kind::Avg | Kind::Max | Kind::Min | Kind::Latest => {
                if !v.is_finite() {
                    return invalid(format!("{kind} value must be a finite number, got {v}"));
                }
            }
            Kind::Apdex => {
                if !(v.is_finite() && v >= 0.0) {
                    return invalid(format!(
                        "apdex latency must be a finite non-negative number, got {v}"
                    ));
                }
            }
            Kind::Histogram => Hist::check_value(v)?,
            Kind::ExpHistogram => ExpHist::check_value(v)?,
            Kind::Percent => {}
        }
        Ok(())
    }

    /// Validates and records one sample. `ts_ms` and `source` matter only to `latest`;
    /// other kinds ignore them. On error the state is unchanged.
    pub fn record(
        &mut self,
        value: SampleValue,
        ts_ms: i64,
        source: &str,
    ) -> Result<(), ModelError> {
        let kind = self.kind();
        Self::validate_sample(kind, value)?;
        match (self, value) {
            // `validate_sample` guarantees an integer in 0..=2^53, so the cast is exact.
            (State::Counter(c), SampleValue::Number(v)) => {
                *c = add_count(*c, v as u64, Kind::Counter, "total")?
            }
            (State::Sum(s), SampleValue::Number(v)) => s.add(v)?,
            (State::Avg(a), SampleValue::Number(v)) => a.add(v)?,
            (State::Max(m), SampleValue::Number(v)) => {
                if v > *m {
                    *m = v;
                }
            }
            (State::Min(m), SampleValue::Number(v)) => {
                if v < *m {
                    *m = v;
                }
            }
            (State::Latest(slot), SampleValue::Number(v)) => Latest::offer(slot, v, ts_ms, source),
            (State::Percent { matched, total }, SampleValue::Flag(b)) => {
                (*matched, *total) = percent_merged((*matched, *total), (u64::from(b), 1))?;
            }
            (State::Apdex(a), SampleValue::Number(v)) => a.record(v)?,
            (State::Histogram(h), SampleValue::Number(v)) => h.record(v)?,
            (State::ExpHistogram(h), SampleValue::Number(v)) => h.record(v)?,
            // Excluded by `validate_sample`; an error rather than a panic all the same.
            (_, value) => {
                return Err(ModelError::InvalidValue {
                    kind,
                    reason: format!("{kind} cannot record {value:?}"),
                });
            }
        }
        Ok(())
    }

    /// The add-function: folds `other` into `self`.
    ///
    /// Refuses a different kind ([`ModelError::KindMismatch`]), histograms of different
    /// precision ([`ModelError::PrecisionMismatch`]), apdex states with a different T
    /// ([`ModelError::ApdexThresholdMismatch`]) and results the state cannot hold
    /// ([`ModelError::Overflow`]: a float total that would not be finite, a count past
    /// `u64::MAX`). On error `self` is unchanged. Never panics.
    pub fn merge(&mut self, other: &State) -> Result<(), ModelError> {
        match (&mut *self, other) {
            (State::Counter(a), State::Counter(b)) => {
                *a = add_count(*a, *b, Kind::Counter, "total")?
            }
            (State::Sum(a), State::Sum(b)) => a.merge(b)?,
            (State::Avg(a), State::Avg(b)) => a.merge(b)?,
            (State::Max(a), State::Max(b)) => {
                if *b > *a {
                    *a = *b;
                }
            }
            (State::Min(a), State::Min(b)) => {
                if *b < *a {
                    *a = *b;
                }
            }
            (State::Latest(slot), State::Latest(b)) => {
                if let Some(b) = b {
                    Latest::offer(slot, b.value, b.ts_ms, &b.source);
                }
            }
            (
                State::Percent { matched, total },
                State::Percent {
                    matched: other_matched,
                    total: other_total,
                },
            ) => {
                (*matched, *total) =
                    percent_merged((*matched, *total), (*other_matched, *other_total))?;
            }
            (State::Apdex(a), State::Apdex(b)) => a.merge(b)?,
            (State::Histogram(a), State::Histogram(b)) => a.merge(b)?,
            (State::ExpHistogram(a), State::ExpHistogram(b)) => a.merge(b)?,
            (this, other) => {
                return Err(ModelError::KindMismatch {
                    expected: this.kind(),
                    found: other.kind(),
                });
            }
        }
        Ok(())
    }

    /// Whether [`State::merge`] would accept `other`, without changing anything:
    /// the same checks, in the same order, with the same errors. Lets a caller
    /// that must merge one state into several (or none) check them all first
    /// instead of merging into copies.
    pub fn check_merge(&self, other: &State) -> Result<(), ModelError> {
        match (self, other) {
            (State::Counter(a), State::Counter(b)) => {
                add_count(*a, *b, Kind::Counter, "total").map(drop)
            }
            (State::Sum(a), State::Sum(b)) => a.checked_merge(b, Kind::Sum).map(drop),
            (State::Avg(a), State::Avg(b)) => a.merged(b).map(drop),
            (
                State::Percent { matched, total },
                State::Percent {
                    matched: other_matched,
                    total: other_total,
                },
            ) => percent_merged((*matched, *total), (*other_matched, *other_total)).map(drop),
            (State::Apdex(a), State::Apdex(b)) => a.merged(b).map(drop),
            (State::Histogram(a), State::Histogram(b)) => a.check_merge(b),
            (State::ExpHistogram(a), State::ExpHistogram(b)) => a.check_merge(b),
            (this, other) if this.kind() != other.kind() => Err(ModelError::KindMismatch {
                expected: this.kind(),
                found: other.kind(),
            }),
            _ => Ok(()),
        }
    }

    /// Checks the invariants every state built by records and merges keeps, so a
    /// decoder can refuse a forged or corrupt one ([`ModelError::InvalidState`]):
    ///
    /// - sum, avg: finite running sum, error term and total; an avg of no samples has
    ///   a zero sum
    /// - max / min: a sample value or the identity (`-inf` / `+inf`), never NaN or
    ///   the opposite infinity
    /// - latest: a finite value
    /// - percent: `matched <= total`
    /// - apdex: `satisfied + tolerating <= total`, a finite threshold `>= 0`
    /// - exp_histogram: everything [`ExpHist::validate`] checks (scale, bound, buckets
    ///   adding up to the count, finite sum, min and max)
    ///
    /// Counters hold any `u64`; HDR histograms are checked by their own decoder.
    pub fn validate(&self) -> Result<(), ModelError> {
        let kind = self.kind();
        let invalid = |reason: String| Err(ModelError::InvalidState { kind, reason });
        match self {
            State::Sum(s) if !s.is_finite() => invalid(format!(
                "sum {} (error term {}) is not finite",
                s.sum, s.compensation
            )),
            State::Avg(a) if !a.sum.is_finite() => invalid(format!(
                "sum {} (error term {}) is not finite",
                a.sum.sum, a.sum.compensation
            )),
            State::Avg(a) if a.count == 0 && a.sum != Sum::default() => {
                invalid(format!("sum {} with count 0", a.sum.value()))
            }
            State::Max(v) if v.is_nan() || *v == f64::INFINITY => {
                invalid(format!("max {v} is not a sample value"))
            }
            State::Min(v) if v.is_nan() || *v == f64::NEG_INFINITY => {
                invalid(format!("min {v} is not a sample value"))
            }
            State::Latest(Some(l)) if !l.value.is_finite() => {
                invalid(format!("latest value {} is not finite", l.value))
            }
            State::Percent { matched, total } if matched > total => {
                invalid(format!("matched {matched} exceeds total {total}"))
            }
            State::Apdex(a)
                if a.satisfied
                    .checked_add(a.tolerating)
                    .is_none_or(|st| st > a.total) =>
            {
                invalid(format!(
                    "satisfied {} + tolerating {} exceeds total {}",
                    a.satisfied, a.tolerating, a.total
                ))
            }
            State::Apdex(a) if !(a.threshold.is_finite() && a.threshold >= 0.0) => invalid(
                format!("threshold {} is not a finite number >= 0", a.threshold),
            ),
            State::ExpHistogram(h) => h.validate().or_else(invalid),
            _ => Ok(()),
        }
    }

    /// Whether this state equals the identity of its kind (for apdex: of its own
    /// threshold; for histograms: of its own precision), i.e. nothing was recorded.
    pub fn is_empty(&self) -> bool {
        match self {
            State::Counter(c) => *c == 0,
            State::Sum(s) => *s == Sum::default(),
            State::Avg(a) => *a == Avg::default(),
            State::Max(m) => *m == f64::NEG_INFINITY,
            State::Min(m) => *m == f64::INFINITY,
            State::Latest(l) => l.is_none(),
            State::Percent { matched, total } => *matched == 0 && *total == 0,
            State::Apdex(a) => a.satisfied == 0 && a.tolerating == 0 && a.total == 0,
            State::Histogram(h) => h.is_empty(),
            State::ExpHistogram(h) => h.is_empty(),
        }
    }

    /// The derived values a query returns for this state, named and ordered as in
    /// [`Kind::value_fields`]. `minutes` is how many minutes the state covers (see
    /// [`Step::minutes`](crate::Step::minutes)), used for the counter's per-minute rate.
    /// Undefined values (an empty max, a percentile of an empty histogram, ...) are NaN.
    pub fn values(&self, minutes: u64) -> Vec<(&'static str, f64)> {
        let nan_if = |undefined: bool, v: f64| if undefined { f64::NAN } else { v };
        match self {
            State::Counter(c) => {
                let count = *c as f64;
                vec![
                    ("count", count),
                    ("rate_per_min", count / minutes.max(1) as f64),
                ]
            }
            State::Sum(s) => vec![("sum", s.value())],
            State::Avg(a) => {
                vec![
                    ("sum", a.sum.value()),
                    ("count", a.count as f64),
                    ("avg", a.avg()),
                ]
            }
            State::Max(m) => vec![("max", nan_if(*m == f64::NEG_INFINITY, *m))],
            State::Min(m) => vec![("min", nan_if(*m == f64::INFINITY, *m))],
            State::Latest(l) => vec![("value", l.as_ref().map_or(f64::NAN, |l| l.value))],
            State::Percent { matched, total } => vec![
                ("matched", *matched as f64),
                ("total", *total as f64),
                (
                    "percent",
                    nan_if(*total == 0, *matched as f64 * 100.0 / *total as f64),
                ),
            ],
            State::Apdex(a) => vec![
                ("satisfied", a.satisfied as f64),
                ("tolerating", a.tolerating as f64),
                ("total", a.total as f64),
                ("apdex", a.score()),
            ],
            State::Histogram(h) => vec![
                ("count", h.count() as f64),
                ("min", h.min()),
                ("max", h.max()),
                ("mean", h.mean()),
                ("p50", h.quantile(0.5)),
                ("p75", h.quantile(0.75)),
                ("p90", h.quantile(0.9)),
                ("p95", h.quantile(0.95)),
                ("p99", h.quantile(0.99)),
                ("p999", h.quantile(0.999)),
            ],
            State::ExpHistogram(h) => vec![
                ("count", h.count() as f64),
                ("sum", h.sum().value()),
                ("min", h.min()),
                ("max", h.max()),
                ("mean", h.mean()),
                ("p50", h.quantile(0.5)),
                ("p75", h.quantile(0.75)),
                ("p90", h.quantile(0.9)),
                ("p95", h.quantile(0.95)),
                ("p99", h.quantile(0.99)),
                ("p999", h.quantile(0.999)),
            ],
        }
    }

    /// Approximate heap memory held by this state, in bytes (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        match self {
            State::Latest(Some(l)) => l.source.capacity(),
            State::Histogram(h) => h.heap_bytes(),
            State::ExpHistogram(h) => h.heap_bytes(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: StateParams = StateParams {
        histogram_sigfig: 2,
        apdex_threshold: 100.0,
        exp_histogram_max_buckets: 160,
        exp_histogram_scale: 20,
    };

    fn num(v: f64) -> SampleValue {
        SampleValue::Number(v)
    }

    fn state(kind: Kind, values: &[f64]) -> State {
        let mut s = State::empty(kind, &P);
        for &v in values {
            s.record(num(v), 0, "src").unwrap();
        }
        s
    }

    fn values(s: &State) -> Vec<(&'static str, f64)> {
        s.values(1)
    }

    fn assert_values(s: &State, minutes: u64, expected: &[(&str, f64)]) {
        let got = s.values(minutes);
        assert_eq!(got.len(), expected.len(), "{got:?}");
        for ((name, v), (exp_name, exp)) in got.iter().zip(expected) {
            assert_eq!(name, exp_name);
            assert!(
                v == exp || (v.is_nan() && exp.is_nan()),
                "{name}: {v} != {exp}"
            );
        }
    }

    #[test]
    fn default_params() {
        let p = StateParams::default();
        assert_eq!(p.histogram_sigfig, 2);
        assert_eq!(p.apdex_threshold, 500.0);
        assert!(p.validate().is_ok());
        assert!(
            StateParams {
                histogram_sigfig: 0,
                ..p
            }
            .validate()
            .is_err()
        );
        assert!(
            StateParams {
                histogram_sigfig: 6,
                ..p
            }
            .validate()
            .is_err()
        );
        assert!(
            StateParams {
                apdex_threshold: 0.0,
                ..p
            }
            .validate()
            .is_err()
        );
        assert!(
            StateParams {
                apdex_threshold: f64::NAN,
                ..p
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn empty_is_empty_for_every_kind_and_has_its_kind() {
        for kind in Kind::ALL {
            let s = State::empty(kind, &P);
            assert_eq!(s.kind(), kind);
            assert!(s.is_empty(), "{kind}");
            let names: Vec<_> = s.values(1).into_iter().map(|(n, _)| n).collect();
            assert_eq!(names, kind.value_fields());
        }
    }

    #[test]
    fn empty_clamps_out_of_range_sigfig() {
        let s = State::empty(
            Kind::Histogram,
            &StateParams {
                histogram_sigfig: 9,
                ..P
            },
        );
        assert!(matches!(s, State::Histogram(h) if h.sigfig() == 5));
    }

    #[test]
    fn undefined_values_are_nan() {
        assert_values(
            &State::empty(Kind::Counter, &P),
            1,
            &[("count", 0.0), ("rate_per_min", 0.0)],
        );
        assert_values(&State::empty(Kind::Sum, &P), 1, &[("sum", 0.0)]);
        assert_values(
            &State::empty(Kind::Avg, &P),
            1,
            &[("sum", 0.0), ("count", 0.0), ("avg", f64::NAN)],
        );
        assert_values(&State::empty(Kind::Max, &P), 1, &[("max", f64::NAN)]);
        assert_values(&State::empty(Kind::Min, &P), 1, &[("min", f64::NAN)]);
        assert_values(&State::empty(Kind::Latest, &P), 1, &[("value", f64::NAN)]);
        assert_values(
            &State::empty(Kind::Percent, &P),
            1,
            &[("matched", 0.0), ("total", 0.0), ("percent", f64::NAN)],
        );
        assert_values(
            &State::empty(Kind::Apdex, &P),
            1,
            &[
                ("satisfied", 0.0),
                ("tolerating", 0.0),
                ("total", 0.0),
                ("apdex", f64::NAN),
            ],
        );
        let h = values(&State::empty(Kind::Histogram, &P));
        assert_eq!(h[0], ("count", 0.0));
        assert!(h[1..].iter().all(|(_, v)| v.is_nan()));
    }

    #[test]
    fn counter_counts_and_rates() {
        let s = state(Kind::Counter, &[1.0, 1.0, 28.0]);
        assert_eq!(s, State::Counter(30));
        assert_values(&s, 15, &[("count", 30.0), ("rate_per_min", 2.0)]);
        assert_values(&s, 0, &[("count", 30.0), ("rate_per_min", 30.0)]);
    }

    #[test]
    fn counter_overflow_is_refused_and_changes_nothing() {
        let mut s = State::Counter(u64::MAX - 1);
        assert!(matches!(
            s.check_merge(&State::Counter(5)),
            Err(ModelError::Overflow {
                kind: Kind::Counter,
                ..
            })
        ));
        assert!(matches!(
            s.merge(&State::Counter(5)),
            Err(ModelError::Overflow {
                kind: Kind::Counter,
                ..
            })
        ));
        assert_eq!(s, State::Counter(u64::MAX - 1));
        s.merge(&State::Counter(1)).unwrap();
        assert_eq!(s, State::Counter(u64::MAX));
        assert!(s.record(num(1.0), 0, "src").is_err());
        assert_eq!(s, State::Counter(u64::MAX));
    }

    #[test]
    fn count_overflow_is_refused_for_every_counting_kind() {
        let percent = State::Percent {
            matched: 1,
            total: u64::MAX,
        };
        let mut p = percent.clone();
        assert!(p.record(SampleValue::Flag(true), 0, "src").is_err());
        assert!(p.merge(&percent).is_err());
        assert_eq!(p, percent);
        let apdex = State::Apdex(Apdex {
            satisfied: 0,
            tolerating: 0,
            total: u64::MAX,
            threshold: 100.0,
        });
        let mut a = apdex.clone();
        assert!(a.record(num(1.0), 0, "src").is_err());
        assert!(a.check_merge(&apdex).is_err());
        assert_eq!(a, apdex);
        let avg = State::Avg(Avg {
            sum: Sum::default(),
            count: u64::MAX,
        });
        let mut g = avg.clone();
        assert!(g.record(num(0.0), 0, "src").is_err());
        assert_eq!(g, avg);
    }

    #[test]
    fn sum_and_avg() {
        assert_values(&state(Kind::Sum, &[1.5, -0.5, 2.0]), 1, &[("sum", 3.0)]);
        assert_values(
            &state(Kind::Avg, &[1.0, 2.0, 6.0]),
            1,
            &[("sum", 9.0), ("count", 3.0), ("avg", 3.0)],
        );
    }

    #[test]
    fn sum_compensates_cancellation() {
        // Naive summation returns 0 here.
        let s = state(Kind::Sum, &[1e16, 1.0, -1e16]);
        assert_values(&s, 1, &[("sum", 1.0)]);
        let mut a = state(Kind::Sum, &[1e16]);
        a.merge(&state(Kind::Sum, &[1.0])).unwrap();
        a.merge(&state(Kind::Sum, &[-1e16])).unwrap();
        assert_values(&a, 1, &[("sum", 1.0)]);
    }

    #[test]
    fn float_overflow_is_refused_and_changes_nothing() {
        // The attack: +1e308 twice, then -1e308 twice, merged into one bucket.
        for kind in [Kind::Sum, Kind::Avg] {
            let mut s = state(kind, &[1e308]);
            let before = s.clone();
            let err = s.record(num(1e308), 0, "src").unwrap_err();
            assert!(
                matches!(err, ModelError::Overflow { kind: k, .. } if k == kind),
                "{err}"
            );
            assert!(err.to_string().contains("not finite"), "{err}");
            assert_eq!(s, before);
            let up = state(kind, &[1e308]);
            assert!(s.check_merge(&up).is_err());
            assert!(s.merge(&up).is_err());
            assert_eq!(s, before);
            // Opposite signs cancel instead of making inf - inf = NaN.
            s.merge(&state(kind, &[-1e308])).unwrap();
            assert!(s.validate().is_ok());
            assert_eq!(values(&s)[0].1, 0.0);
        }
        let mut s = state(Kind::Sum, &[f64::MAX]);
        assert!(s.record(num(f64::MAX), 0, "src").is_err());
        assert_eq!(values(&s)[0].1, f64::MAX);
    }

    #[test]
    fn validate_accepts_what_records_make_and_names_what_they_cannot() {
        for kind in Kind::ALL {
            assert!(State::empty(kind, &P).validate().is_ok(), "{kind}");
        }
        let bad = [
            State::Sum(Sum {
                sum: f64::NAN,
                compensation: 0.0,
            }),
            State::Max(f64::NAN),
            State::Min(f64::NEG_INFINITY),
            State::Avg(Avg {
                sum: Sum {
                    sum: 5.0,
                    compensation: 0.0,
                },
                count: 0,
            }),
            State::Apdex(Apdex {
                satisfied: 0,
                tolerating: 0,
                total: 0,
                threshold: f64::INFINITY,
            }),
        ];
        for s in bad {
            let err = s.validate().unwrap_err();
            assert!(
                matches!(err, ModelError::InvalidState { kind, .. } if kind == s.kind()),
                "{s:?}: {err}"
            );
        }
    }

    #[test]
    fn max_min_ignore_zero_identity() {
        // Identity is -inf/+inf, not 0: all-negative maxima stay negative.
        assert_values(&state(Kind::Max, &[-5.0, -2.0, -9.0]), 1, &[("max", -2.0)]);
        assert_values(&state(Kind::Min, &[5.0, 2.0, 9.0]), 1, &[("min", 2.0)]);
    }

    #[test]
    fn latest_keeps_greatest_ts_then_source_then_value() {
        let mut s = State::empty(Kind::Latest, &P);
        s.record(num(1.0), 100, "b").unwrap();
        s.record(num(2.0), 50, "z").unwrap(); // older: ignored
        assert_values(&s, 1, &[("value", 1.0)]);
        s.record(num(3.0), 100, "a").unwrap(); // same ts, smaller source: ignored
        assert_values(&s, 1, &[("value", 1.0)]);
        s.record(num(4.0), 100, "c").unwrap(); // same ts, greater source: wins
        assert_values(&s, 1, &[("value", 4.0)]);
        s.record(num(3.5), 100, "c").unwrap(); // full tie, smaller value: ignored
        assert_values(&s, 1, &[("value", 4.0)]);
        s.record(num(4.5), 100, "c").unwrap(); // full tie, greater value: wins
        assert_values(&s, 1, &[("value", 4.5)]);
        assert_eq!(
            s,
            State::Latest(Some(Latest {
                value: 4.5,
                ts_ms: 100,
                source: "c".into()
            }))
        );
    }

    #[test]
    fn percent_is_0_to_100() {
        let mut s = State::empty(Kind::Percent, &P);
        for b in [true, false, false, true] {
            s.record(SampleValue::Flag(b), 0, "").unwrap();
        }
        assert_values(
            &s,
            1,
            &[("matched", 2.0), ("total", 4.0), ("percent", 50.0)],
        );
    }

    #[test]
    fn apdex_classifies_against_threshold() {
        // T = 100: 100 satisfied (boundary), 400 tolerating (boundary), 401 frustrated.
        let s = state(Kind::Apdex, &[0.0, 100.0, 100.5, 400.0, 401.0]);
        assert_values(
            &s,
            1,
            &[
                ("satisfied", 2.0),
                ("tolerating", 2.0),
                ("total", 5.0),
                ("apdex", 0.6),
            ],
        );
    }

    #[test]
    fn histogram_values() {
        let vals: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = state(Kind::Histogram, &vals);
        let v = values(&s);
        let names: Vec<_> = v.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, Kind::Histogram.value_fields());
        assert_eq!(v[0].1, 100.0);
        assert_eq!(v[1].1, 1.0);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.01 + 0.001;
        assert!(close(v[2].1, 100.0), "{v:?}");
        assert!(close(v[3].1, 50.5), "{v:?}");
        for (i, want) in [
            (4, 50.0),
            (5, 75.0),
            (6, 90.0),
            (7, 95.0),
            (8, 99.0),
            (9, 100.0),
        ] {
            assert!(close(v[i].1, want), "{}: {} vs {want}", v[i].0, v[i].1);
        }
    }

    #[test]
    fn validate_sample_rules() {
        use SampleValue::{Flag, Number};
        let ok = |k: Kind, v| State::validate_sample(k, v).is_ok();
        assert!(ok(Kind::Counter, Number(0.0)));
        assert!(ok(Kind::Counter, Number(9_007_199_254_740_992.0)));
        assert!(!ok(Kind::Counter, Number(9_007_199_254_740_994.0)));
        assert!(!ok(Kind::Counter, Number(-1.0)));
        assert!(!ok(Kind::Counter, Number(1.5)));
        assert!(!ok(Kind::Counter, Number(f64::INFINITY)));
        assert!(!ok(Kind::Counter, Number(f64::NAN)));
        assert!(!ok(Kind::Counter, Flag(true)));
        for k in [Kind::Sum, Kind::Avg, Kind::Max, Kind::Min, Kind::Latest] {
            assert!(ok(k, Number(-1.5e300)));
            assert!(!ok(k, Number(f64::NAN)));
            assert!(!ok(k, Number(f64::NEG_INFINITY)));
            assert!(!ok(k, Flag(false)));
        }
        assert!(ok(Kind::Percent, Flag(false)));
        assert!(!ok(Kind::Percent, Number(1.0)));
        assert!(ok(Kind::Apdex, Number(0.0)));
        assert!(!ok(Kind::Apdex, Number(-0.1)));
        assert!(!ok(Kind::Apdex, Number(f64::INFINITY)));
        assert!(ok(Kind::Histogram, Number(Hist::MAX_VALUE)));
        assert!(!ok(Kind::Histogram, Number(-1.0)));
        assert!(!ok(Kind::Histogram, Number(2e12)));
        assert!(!ok(Kind::Histogram, Flag(true)));
    }

    #[test]
    fn validate_sample_messages_name_the_value() {
        let err = State::validate_sample(Kind::Counter, SampleValue::Number(-1.0)).unwrap_err();
        assert_eq!(
            err,
            ModelError::InvalidValue {
                kind: Kind::Counter,
                reason: "counter value must be a non-negative integer, got -1".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid value: counter value must be a non-negative integer, got -1"
        );
        let err = State::validate_sample(Kind::Max, SampleValue::Flag(true)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value: max value must be a number, got boolean true"
        );
    }

    #[test]
    fn invalid_record_leaves_state_unchanged() {
        for kind in Kind::ALL {
            let mut s = State::empty(kind, &P);
            if kind == Kind::Percent {
                s.record(SampleValue::Flag(true), 0, "a").unwrap();
            } else {
                s.record(num(3.0), 0, "a").unwrap();
            }
            let before = s.clone();
            for bad in [num(f64::NAN), num(-1.0), num(0.5), SampleValue::Flag(true)] {
                if State::validate_sample(kind, bad).is_err() {
                    assert!(s.record(bad, 0, "b").is_err());
                    assert_eq!(s, before, "{kind} {bad:?}");
                }
            }
        }
    }

    #[test]
    fn merge_kind_mismatch_is_an_error_and_changes_nothing() {
        let mut a = state(Kind::Counter, &[3.0]);
        let b = state(Kind::Histogram, &[3.0]);
        assert_eq!(
            a.merge(&b),
            Err(ModelError::KindMismatch {
                expected: Kind::Counter,
                found: Kind::Histogram
            })
        );
        assert_eq!(a, State::Counter(3));
        // Every pair of distinct kinds is refused, including empty states.
        for ka in Kind::ALL {
            for kb in Kind::ALL {
                let mut a = State::empty(ka, &P);
                let r = a.merge(&State::empty(kb, &P));
                assert_eq!(r.is_ok(), ka == kb, "{ka} {kb}");
                assert_eq!(a, State::empty(ka, &P));
            }
        }
    }

    #[test]
    fn merge_precision_mismatch_is_an_error_and_changes_nothing() {
        let mut a = state(Kind::Histogram, &[1.0, 2.0]);
        let before = a.clone();
        let mut b = State::empty(
            Kind::Histogram,
            &StateParams {
                histogram_sigfig: 3,
                ..P
            },
        );
        b.record(num(5.0), 0, "").unwrap();
        assert_eq!(
            a.merge(&b),
            Err(ModelError::PrecisionMismatch {
                expected: 2,
                found: 3
            })
        );
        assert_eq!(a, before);
    }

    #[test]
    fn merge_apdex_threshold_mismatch_is_an_error_and_changes_nothing() {
        let mut a = state(Kind::Apdex, &[1.0, 200.0]);
        let before = a.clone();
        let mut b = State::empty(
            Kind::Apdex,
            &StateParams {
                apdex_threshold: 250.0,
                ..P
            },
        );
        b.record(num(5.0), 0, "").unwrap();
        assert_eq!(
            a.merge(&b),
            Err(ModelError::ApdexThresholdMismatch {
                expected: 100.0,
                found: 250.0
            })
        );
        assert_eq!(a, before);
        // Even an empty state with another T is refused: T is part of the identity.
        let empty_other_t = State::empty(Kind::Apdex, &StateParams::default());
        assert!(a.merge(&empty_other_t).is_err());
        assert_eq!(a, before);
    }

    #[test]
    fn heap_bytes_counts_histograms_and_sources() {
        assert_eq!(State::Counter(1).heap_bytes(), 0);
        assert!(state(Kind::Histogram, &[1.0]).heap_bytes() > 0);
        let mut l = State::empty(Kind::Latest, &P);
        l.record(num(1.0), 0, "eu-west").unwrap();
        assert!(l.heap_bytes() >= 7);
    }
}
