//! Base-2 exponential histograms: the bucket layout of OpenTelemetry's
//! ExponentialHistogram and of Prometheus native histograms.
//!
//! At scale `s` the base is `2^(2^-s)` and bucket `i` covers `(base^i, base^(i+1)]`, so
//! every bucket of scale `s - 1` is exactly the union of buckets `2j` and `2j + 1` of scale
//! `s`: lowering the scale by `d` maps index `i` to `i >> d`. Scales run from
//! [`MIN_SCALE`] (-10: two buckets hold every normal float) to [`MAX_SCALE`] (20: a
//! relative bucket width of 6.6e-7). Positive and negative samples have their own
//! buckets; exact zeros go to the zero bucket.
//!
//! # Representation
//!
//! Each side keeps an offset and a **dense** array of counts, trimmed so that its first
//! and last counts are not zero ([`Buckets`]). Recording is one index computation and one
//! increment; merging is a shift of the other side's indices and one pass of additions
//! over aligned arrays; downscaling is one in-place pass. The span of each side is bounded
//! by `max_buckets` (160 by default, as the OpenTelemetry SDKs), so a dense side holds at
//! most a few KiB, and the wire form compresses runs of empty buckets, so it is as small
//! as Prometheus' spans without their walk on every record and merge.
//!
//! # Merge and its laws
//!
//! [`ExpHist::merge`] follows OpenTelemetry's rule: both sides go to the smaller scale
//! (`i >> (scale difference)`), then buckets add, zero counts add, sums add (compensated,
//! as the `sum` kind), min/max combine, the zero threshold is the larger one. If the span
//! of either side then exceeds the bound, both sides are downscaled until it fits, as the
//! SDKs do. Stated for a whole multiset `X` of states, the result is
//!
//! - `max_buckets(X)` = the smallest bound of `X`; `zero_threshold(X)` = the largest;
//! - `s_b(X)` = the smallest scale among the states of `X` that hold buckets (of all of
//!   `X` if none does: a state without buckets has no resolution to lose);
//! - `scale(X)` = the largest `s <= s_b(X)` at which, on each side, the union of every
//!   bucket of `X` mapped to scale `s` spans at most `max_buckets(X)` indices;
//! - buckets = that union at `scale(X)`; counts, sum, min, max as above.
//!
//! Merging two results gives the result of the union: (1) mapping to a lower scale is a
//! homomorphism (`(i >> a) >> b == i >> (a + b)`, and adding then shifting is shifting
//! then adding), so where buckets are put does not depend on the grouping; (2) the span
//! of a union at scale `s` is at least the span of any part of it, and a span never grows
//! when the scale decreases (`(hi >> 1) - (lo >> 1) <= hi - lo`). So the scales that fit
//! are all those below some cut, and a partial merge, whose bound is at least the
//! final one and whose buckets are a part of the final ones, always fits at least at the
//! final scale: it never downscales past it, and the final merge reaches exactly
//! `scale(X)`. Hence merge is associative and commutative, with [`ExpHist::new`] (of the
//! same starting scale and bound) as identity, and recording a sample is merging the
//! state of that one sample. Counts and buckets are exact in any order; only the float
//! sum carries the compensated-summation tolerance of the `sum` kind.
//!
//! # Zero threshold
//!
//! Merging keeps the larger zero threshold but does not move the other side's buckets
//! into the zero count: buckets inside the zero bucket are kept as they are, and counted
//! as zeros when values are derived ([`ExpHist::quantile`]), as Prometheus widens its zero
//! bucket to the upper bound of the bucket the threshold falls in. Moving them eagerly
//! would make the result depend on the order: an early merge with a small threshold
//! downscales for buckets that a later, larger threshold would have absorbed. Recording
//! puts only exact zeros in the zero bucket (a recorded sample is a state whose zero
//! threshold is 0); larger thresholds arrive with ingested OpenTelemetry or Prometheus
//! histograms.
//!
//! # Ingest and deltas
//!
//! Data from the network enters through [`ExpHist::from_parts_fitting`] (an
//! OpenTelemetry exponential data point as exporters send it: a side wider than the bound
//! is downscaled, an unknown min or max derived from the buckets) and
//! [`ExpHist::from_explicit_buckets`] (an explicit-bucket histogram, each bucket recorded
//! at one value, with a stated error). [`ExpHist::cumulative_delta`] turns two cumulative
//! snapshots of one stream into the state of the samples between them, or reports a
//! reset. All three refuse hostile input with an error naming it.
//!
//! # Derived values
//!
//! `count`, `sum`, `min` and `max` are exact; `mean` is `sum / count`. A quantile is the
//! midpoint in log space of the bucket holding its rank, `base^(i + 1/2)`, clamped to
//! `[min, max]`: within `sqrt(base) - 1` of the exact sample at that rank (relative),
//! i.e. 3.3e-7 at scale 20, 2.7e-3 at scale 7, 4.4% at scale 3.

use crate::error::ModelError;
use crate::kind::Kind;
use crate::state::Sum;

/// Coarsest scale: every normal float is in bucket -1 or 0.
pub const MIN_SCALE: i32 = -10;
/// Finest scale (OpenTelemetry's maximum): the index of any float fits an `i32`.
pub const MAX_SCALE: i32 = 20;
/// Smallest allowed bucket bound: two buckets hold any side at [`MIN_SCALE`].
pub const MIN_MAX_BUCKETS: u32 = 2;
/// Largest allowed bucket bound: the hard cap on the buckets of one side.
pub const MAX_MAX_BUCKETS: u32 = 16_384;
/// Default bucket bound per side, the OpenTelemetry SDKs' `MaxSize`.
pub const DEFAULT_MAX_BUCKETS: u32 = 160;

/// Index at [`MAX_SCALE`] of the smallest normal float, `2^-1022` (an exact power of
/// two, so the last bucket below `2^-1022 << 20`); subnormals share its bucket, as in
/// OpenTelemetry's reference mapping.
const MIN_INDEX_AT_MAX_SCALE: i64 = -(1022 << MAX_SCALE) - 1;
/// Index at [`MAX_SCALE`] of the largest finite float.
const MAX_INDEX_AT_MAX_SCALE: i64 = (1024 << MAX_SCALE) - 1;

/// Bits of an `f64` significand.
const SIGNIFICAND_BITS: u64 = (1 << 52) - 1;
/// Exponent bits of `1.0`.
const EXPONENT_OF_ONE: u64 = 1023 << 52;

/// Lowest bucket index a finite value has at `scale`.
pub fn min_index(scale: i32) -> i32 {
    (MIN_INDEX_AT_MAX_SCALE >> (MAX_SCALE - scale)) as i32
}

/// Highest bucket index a finite value has at `scale`.
pub fn max_index(scale: i32) -> i32 {
    (MAX_INDEX_AT_MAX_SCALE >> (MAX_SCALE - scale)) as i32
}

/// The bucket of `|value|` (finite, not zero) at `scale` (in
/// [`MIN_SCALE`]`..=`[`MAX_SCALE`]): the `i` with `base^i < |value| <= base^(i+1)`.
///
/// - Scale `<= 0`: the float's exponent, shifted (exact). An exact power of two is the
///   upper bound of the bucket below its exponent's.
/// - Scale `> 0`: the exponent gives the binade exactly; within it the logarithm of the
///   significand (in `[1, 2)`) times `2^scale` gives the sub-bucket, with the spec's
///   correction for exact powers of two. Clamping the sub-bucket to its binade keeps the
///   rounding of the logarithm from crossing a power of two.
///
/// The result at any scale is the result at a finer scale shifted right by the
/// difference (the logarithm is computed once and scaled by a power of two), which is
/// what makes recording then downscaling equal downscaling then recording.
/// Subnormal values map to the bucket of the smallest normal float.
pub fn map_to_index(value: f64, scale: i32) -> i32 {
    let v = value.abs();
    if v < f64::MIN_POSITIVE {
        return min_index(scale);
    }
    let bits = v.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let significand = bits & SIGNIFICAND_BITS;
    if scale <= 0 {
        // Bucket (2^(e-1), 2^e] holds 2^e: one less for exact powers of two.
        let e = if significand == 0 {
            exponent - 1
        } else {
            exponent
        };
        return e >> -scale;
    }
    if significand == 0 {
        return (exponent << scale) - 1;
    }
    // 1 < m < 2, exact: the significand with the exponent of 1.0.
    let m = f64::from_bits(significand | EXPONENT_OF_ONE);
    let per_binade = 1i64 << scale;
    let sub = ((m.log2() * per_binade as f64).floor() as i64).clamp(0, per_binade - 1);
    ((i64::from(exponent) << scale) + sub) as i32
}

/// The lower bound `base^index` of bucket `index` at `scale` (may round to 0 or
/// infinity at the extremes of the float range).
pub fn lower_bound(index: i32, scale: i32) -> f64 {
    (f64::from(index) * 2f64.powi(-scale)).exp2()
}

/// The midpoint in log space, `base^(index + 1/2)`, of bucket `index` at `scale`: the
/// value a quantile falling in that bucket reports (before clamping to `[min, max]`).
pub fn log_midpoint(index: i32, scale: i32) -> f64 {
    ((f64::from(index) + 0.5) * 2f64.powi(-scale)).exp2()
}

/// The largest relative error of a quantile at `scale`: `sqrt(base) - 1`.
pub fn relative_error(scale: i32) -> f64 {
    2f64.powi(-scale - 1).exp2() - 1.0
}

/// How far to lower the scale so that indices `lo..=hi` span at most `max_buckets`.
fn shift_to_fit(lo: i32, hi: i32, max_buckets: u32) -> u32 {
    let (lo, hi) = (i64::from(lo), i64::from(hi));
    let mut shift = 0;
    while (hi >> shift) - (lo >> shift) + 1 > i64::from(max_buckets) {
        shift += 1;
    }
    shift
}

/// Checks that buckets `lo..=hi` of side `name` lie within the indices of `scale` (in
/// `i64`: offset and length may come from anywhere).
fn check_indices(name: &str, lo: i64, hi: i64, scale: i32) -> Result<(), String> {
    let (min, max) = (min_index(scale), max_index(scale));
    if lo < i64::from(min) || hi > i64::from(max) {
        return Err(format!(
            "{name} buckets {lo}..={hi} are outside the indices {min}..={max} of scale {scale}"
        ));
    }
    Ok(())
}

/// The buckets of one side (positive or negative values): `counts[k]` is the count of
/// bucket `offset + k`.
///
/// Invariant: trimmed — empty, with offset 0, or with a non-zero first and last count —
/// so equal histograms are equal field by field and the span is `counts.len()`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buckets {
    /// Index of the first bucket of `counts`.
    offset: i32,
    /// Dense counts from `offset` on.
    counts: Vec<u64>,
}

impl Buckets {
    /// Buckets `offset..offset + counts.len()`, trimmed of empty buckets at either end.
    pub fn new(offset: i32, counts: Vec<u64>) -> Buckets {
        let Some(first) = counts.iter().position(|&c| c != 0) else {
            return Buckets::default();
        };
        let last = counts.iter().rposition(|&c| c != 0).unwrap_or(first);
        let mut counts = counts;
        counts.truncate(last + 1);
        counts.drain(..first);
        Buckets {
            offset: (i64::from(offset) + first as i64) as i32,
            counts,
        }
    }

    /// Index of the first bucket (0 when empty).
    pub fn offset(&self) -> i32 {
        self.offset
    }

    /// Counts of the buckets from [`Buckets::offset`] on.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Whether no bucket holds a sample.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// First and last index, if any.
    fn range(&self) -> Option<(i32, i32)> {
        let len = i32::try_from(self.counts.len()).ok()?;
        (len > 0).then(|| (self.offset, self.offset + (len - 1)))
    }

    /// `(index, count)` of every bucket, including empty ones inside the span.
    fn iter(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + '_ {
        let offset = self.offset;
        // Within the index range of the scale, so no overflow.
        self.counts
            .iter()
            .enumerate()
            .map(move |(k, &c)| (offset + k as i32, c))
    }

    /// Sum of the counts, `None` past `u64::MAX`.
    fn total(&self) -> Option<u64> {
        self.counts
            .iter()
            .try_fold(0u64, |acc, &c| acc.checked_add(c))
    }

    /// Lowers the scale by `by`: bucket `i` goes to `i >> by`, in place.
    fn downscale(&mut self, by: u32) {
        let Some((lo, hi)) = self.range() else {
            return;
        };
        if by == 0 {
            return;
        }
        let new_offset = lo >> by;
        let new_len = ((hi >> by) - new_offset + 1) as usize;
        // Each target position is at or before its source, and every position before the
        // source has already been emptied as a source, so adding in place is safe.
        for k in 0..self.counts.len() {
            let c = std::mem::take(&mut self.counts[k]);
            let target = ((lo + k as i32) >> by) - new_offset;
            self.counts[target as usize] += c;
        }
        self.counts.truncate(new_len);
        self.offset = new_offset;
    }

    /// Grows the span to cover `lo..=hi`.
    fn cover(&mut self, lo: i32, hi: i32) {
        let Some((first, last)) = self.range() else {
            self.offset = lo;
            self.counts = vec![0; (hi - lo + 1) as usize];
            return;
        };
        if lo < first {
            let more = (first - lo) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, more));
            self.offset = lo;
        }
        if hi > last {
            self.counts
                .resize(self.counts.len() + (hi - last) as usize, 0);
        }
    }

    /// Adds `n` to bucket `index`. The caller keeps the total within `u64`.
    fn add(&mut self, index: i32, n: u64) {
        self.cover(index, index);
        self.counts[(index - self.offset) as usize] += n;
    }

    /// Adds every bucket of `other`, lowered by `shift`. The caller keeps the total
    /// within `u64`.
    fn add_all(&mut self, other: &Buckets, shift: u32) {
        let Some((lo, hi)) = other.range() else {
            return;
        };
        self.cover(lo >> shift, hi >> shift);
        for (index, c) in other.iter().filter(|&(_, c)| c != 0) {
            self.counts[((index >> shift) - self.offset) as usize] += c;
        }
    }

    /// This side without its empty ends, refused unless what is left lies within the
    /// indices of `scale` (valid). Works in place: nothing is allocated.
    fn trimmed_within(mut self, name: &str, scale: i32) -> Result<Buckets, String> {
        let Some(first) = self.counts.iter().position(|&c| c != 0) else {
            return Ok(Buckets::default());
        };
        let last = self.counts.iter().rposition(|&c| c != 0).unwrap_or(first);
        // Vector lengths fit an `i64`.
        let lo = i64::from(self.offset) + first as i64;
        let hi = i64::from(self.offset) + last as i64;
        check_indices(name, lo, hi, scale)?;
        let offset = i32::try_from(lo).map_err(|_| format!("{name} offset {lo} is not an i32"))?;
        self.counts.truncate(last + 1);
        self.counts.drain(..first);
        Ok(Buckets {
            offset,
            counts: self.counts,
        })
    }

    /// This side lowered by `own_shift`, less every bucket of `other` lowered by
    /// `shift`, trimmed; `None` if some bucket of `other` is not covered by this side's
    /// count there.
    fn minus(&self, own_shift: u32, other: &Buckets, shift: u32) -> Option<Buckets> {
        let mut out = self.clone();
        out.downscale(own_shift);
        for (index, c) in other.iter().filter(|&(_, c)| c != 0) {
            let k = usize::try_from(i64::from(index >> shift) - i64::from(out.offset)).ok()?;
            let slot = out.counts.get_mut(k)?;
            *slot = slot.checked_sub(c)?;
        }
        Some(Buckets::new(out.offset, out.counts))
    }

    /// The span this side would have after adding `other` lowered by `shift` and
    /// `own_shift` applied to this side.
    fn union_range(&self, own_shift: u32, other: &Buckets, shift: u32) -> Option<(i32, i32)> {
        let mine = self
            .range()
            .map(|(lo, hi)| (lo >> own_shift, hi >> own_shift));
        let theirs = other.range().map(|(lo, hi)| (lo >> shift, hi >> shift));
        match (mine, theirs) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (one, None) | (None, one) => one,
        }
    }
}

/// The fields of an [`ExpHist`], for building one from decoded or ingested data
/// ([`ExpHist::from_parts`] validates them).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpHistParts {
    /// Resolution, [`MIN_SCALE`]`..=`[`MAX_SCALE`].
    pub scale: i32,
    /// Most buckets either side may span, [`MIN_MAX_BUCKETS`]`..=`[`MAX_MAX_BUCKETS`].
    pub max_buckets: u32,
    /// Half-width of the zero bucket, finite and `>= 0`.
    pub zero_threshold: f64,
    /// Samples in the zero bucket.
    pub zero_count: u64,
    /// Buckets of positive samples.
    pub positive: Buckets,
    /// Buckets of negative samples, by the index of their magnitude.
    pub negative: Buckets,
    /// All samples: zero count plus every bucket.
    pub count: u64,
    /// Compensated sum of the samples.
    pub sum: Sum,
    /// Smallest sample (`+inf` when empty).
    pub min: f64,
    /// Largest sample (`-inf` when empty).
    pub max: f64,
}

/// A base-2 exponential histogram of finite floats (see the module docs for the layout,
/// the merge and its laws).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpHist {
    /// Current resolution; only decreases, when a side outgrows `max_buckets`.
    scale: i32,
    /// Memory bound of each side; the smaller one wins in a merge, so a tier never
    /// keeps more than it is configured to.
    max_buckets: u32,
    /// Half-width of the zero bucket; buckets inside it count as zeros when read.
    zero_threshold: f64,
    /// Samples in the zero bucket.
    zero_count: u64,
    /// Buckets of positive samples.
    positive: Buckets,
    /// Buckets of negative samples (indexed by magnitude).
    negative: Buckets,
    /// All samples; sum of `zero_count` and every bucket.
    count: u64,
    /// Compensated sum of the samples.
    sum: Sum,
    /// Smallest sample; `+inf` when empty.
    min: f64,
    /// Largest sample; `-inf` when empty.
    max: f64,
}

/// Bytes of the encoded payload besides the buckets, at most: scale (5), bound (3),
/// zero threshold (8), zero count and count (10 each), sum (16), min and max (8 each).
const FIXED_PAYLOAD_LEN: usize = 5 + 3 + 8 + 10 + 10 + 16 + 8 + 8;

/// Most bytes of one encoded side: offset (5), length (3), at most 10 bytes per bucket.
const MAX_SIDE_LEN: usize = 5 + 3 + 10 * MAX_MAX_BUCKETS as usize;

impl ExpHist {
    /// Upper bound of [`ExpHist::write_payload`]'s output for any valid histogram.
    pub const MAX_PAYLOAD_LEN: usize = FIXED_PAYLOAD_LEN + 2 * MAX_SIDE_LEN;

    /// An empty histogram that records at `scale` and keeps at most `max_buckets` buckets
    /// on each side; refuses values out of range, naming them.
    pub fn new(scale: i32, max_buckets: u32) -> Result<ExpHist, ModelError> {
        Self::check_params(scale, max_buckets).map_err(|reason| ModelError::InvalidValue {
            kind: Kind::ExpHistogram,
            reason,
        })?;
        Ok(ExpHist {
            scale,
            max_buckets,
            zero_threshold: 0.0,
            zero_count: 0,
            positive: Buckets::default(),
            negative: Buckets::default(),
            count: 0,
            sum: Sum::default(),
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        })
    }

    fn check_params(scale: i32, max_buckets: u32) -> Result<(), String> {
        if !(MIN_SCALE..=MAX_SCALE).contains(&scale) {
            return Err(format!(
                "exp_histogram scale must be between {MIN_SCALE} and {MAX_SCALE}, got {scale}"
            ));
        }
        if !(MIN_MAX_BUCKETS..=MAX_MAX_BUCKETS).contains(&max_buckets) {
            return Err(format!(
                "exp_histogram max buckets must be between {MIN_MAX_BUCKETS} and {MAX_MAX_BUCKETS}, got {max_buckets}"
            ));
        }
        Ok(())
    }

    /// Builds a histogram from its fields, trimming nothing but checking everything
    /// [`ExpHist::validate`] checks.
    pub fn from_parts(parts: ExpHistParts) -> Result<ExpHist, ModelError> {
        let h = ExpHist {
            scale: parts.scale,
            max_buckets: parts.max_buckets,
            zero_threshold: parts.zero_threshold,
            zero_count: parts.zero_count,
            positive: parts.positive,
            negative: parts.negative,
            count: parts.count,
            sum: parts.sum,
            min: parts.min,
            max: parts.max,
        };
        h.validate().map_err(|reason| ModelError::InvalidState {
            kind: Kind::ExpHistogram,
            reason,
        })?;
        Ok(h)
    }

    /// Checks what every histogram built by records and merges keeps: scale and bound
    /// in range, trimmed sides within the bound and the index range of the scale, a
    /// finite zero threshold `>= 0`, counts that add up to `count` without overflow,
    /// finite sum, min and max with `min <= max` when not empty, and the identity's
    /// fields when empty. The error names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        Self::check_params(self.scale, self.max_buckets)?;
        if !(self.zero_threshold.is_finite() && self.zero_threshold >= 0.0) {
            return Err(format!(
                "zero threshold {} is not a finite number >= 0",
                self.zero_threshold
            ));
        }
        for (name, side) in [("positive", &self.positive), ("negative", &self.negative)] {
            self.check_side(name, side)?;
        }
        self.check_counts()?;
        self.check_summary()
    }

    /// Checks that the zero and bucket counts add up to `count` without overflow.
    fn check_counts(&self) -> Result<(), String> {
        let buckets = [&self.positive, &self.negative]
            .into_iter()
            .try_fold(self.zero_count, |acc, side| {
                side.total().and_then(|t| acc.checked_add(t))
            })
            .ok_or_else(|| "bucket counts overflow a u64".to_owned())?;
        if buckets != self.count {
            return Err(format!(
                "zero and bucket counts add up to {buckets}, not to count {}",
                self.count
            ));
        }
        Ok(())
    }

    /// Checks one side: trimmed, within the bound and the index range (in `i64`: the
    /// fields may be anything here).
    fn check_side(&self, name: &str, side: &Buckets) -> Result<(), String> {
        let len = side.counts.len();
        if len == 0 {
            if side.offset != 0 {
                return Err(format!("empty {name} buckets with offset {}", side.offset));
            }
            return Ok(());
        }
        if len > self.max_buckets as usize {
            return Err(format!(
                "{len} {name} buckets exceed the bound of {}",
                self.max_buckets
            ));
        }
        if side.counts.first() == Some(&0) || side.counts.last() == Some(&0) {
            return Err(format!("{name} buckets are not trimmed of empty ends"));
        }
        let lo = i64::from(side.offset);
        check_indices(name, lo, lo + len as i64 - 1, self.scale)
    }

    /// Checks sum, min and max against the count.
    fn check_summary(&self) -> Result<(), String> {
        if !self.sum.is_finite() {
            return Err(format!(
                "sum {} (error term {}) is not finite",
                self.sum.sum, self.sum.compensation
            ));
        }
        if self.count == 0 {
            if self.sum != Sum::default()
                || self.min != f64::INFINITY
                || self.max != f64::NEG_INFINITY
            {
                return Err(format!(
                    "sum {}, min {}, max {} with count 0",
                    self.sum.value(),
                    self.min,
                    self.max
                ));
            }
            return Ok(());
        }
        if !(self.min.is_finite() && self.max.is_finite() && self.min <= self.max) {
            return Err(format!(
                "min {} and max {} are not finite with min <= max",
                self.min, self.max
            ));
        }
        Ok(())
    }

    /// Checks that `value` is recordable: any finite number.
    pub fn check_value(value: f64) -> Result<(), ModelError> {
        if value.is_finite() {
            Ok(())
        } else {
            Err(ModelError::InvalidValue {
                kind: Kind::ExpHistogram,
                reason: format!("exp_histogram value must be a finite number, got {value}"),
            })
        }
    }

    /// Records one sample: exact zeros in the zero bucket, others in the bucket of their
    /// magnitude on their side, downscaling first if that side would outgrow the bound.
    /// Refuses (unchanged) a non-finite value, a count past `u64::MAX` or a sum that
    /// would not be finite.
    pub fn record(&mut self, value: f64) -> Result<(), ModelError> {
        Self::check_value(value)?;
        let count = self
            .count
            .checked_add(1)
            .ok_or_else(|| ModelError::Overflow {
                kind: Kind::ExpHistogram,
                reason: format!(
                    "exp_histogram count {} + 1 exceeds {}",
                    self.count,
                    u64::MAX
                ),
            })?;
        let sum = Sum::finite(self.sum.plus(value), Kind::ExpHistogram, || {
            format!("sum {} + {value}", self.sum.value())
        })?;
        self.put(value, 1);
        self.count = count;
        self.sum = sum;
        Ok(())
    }

    /// Adds `n` samples of `value` (finite) to the zero count or to their bucket,
    /// downscaling first if that side would outgrow the bound, and to min and max. The
    /// caller updates count and sum, having checked that they stay within range.
    fn put(&mut self, value: f64, n: u64) {
        if n == 0 {
            return;
        }
        // -0.0 is a zero like 0.0: one spelling keeps equal histograms equal byte for byte.
        let value = value + 0.0;
        if value == 0.0 {
            self.zero_count += n;
        } else {
            let index = map_to_index(value, self.scale);
            let side = if value > 0.0 {
                &self.positive
            } else {
                &self.negative
            };
            let (lo, hi) = side
                .range()
                .map_or((index, index), |(lo, hi)| (lo.min(index), hi.max(index)));
            let shift = shift_to_fit(lo, hi, self.max_buckets);
            self.downscale(shift);
            let side = if value > 0.0 {
                &mut self.positive
            } else {
                &mut self.negative
            };
            side.add(index >> shift, n);
        }
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Lowers the scale by `by` on both sides.
    fn downscale(&mut self, by: u32) {
        if by > 0 {
            self.scale -= by as i32;
            self.positive.downscale(by);
            self.negative.downscale(by);
        }
    }

    /// Whether this histogram's scale constrains a merge: only if it holds buckets.
    fn binding_scale(&self) -> Option<i32> {
        (!self.positive.is_empty() || !self.negative.is_empty()).then_some(self.scale)
    }

    /// The scale of `self` merged with `other` (see the module docs).
    fn merged_scale(&self, other: &ExpHist, max_buckets: u32) -> i32 {
        let base = match (self.binding_scale(), other.binding_scale()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => self.scale.min(other.scale),
        };
        // Shifts are only taken of non-empty sides, whose scale is at least `base`.
        let own = self.scale.saturating_sub(base).max(0) as u32;
        let theirs = other.scale.saturating_sub(base).max(0) as u32;
        let shift = [
            self.positive.union_range(own, &other.positive, theirs),
            self.negative.union_range(own, &other.negative, theirs),
        ]
        .into_iter()
        .flatten()
        .map(|(lo, hi)| shift_to_fit(lo, hi, max_buckets))
        .max()
        .unwrap_or(0);
        base - shift as i32
    }

    /// The add-function: folds `other` in (see the module docs for the rule and its
    /// laws). Refuses (unchanged) a count past `u64::MAX` or a sum that would not be
    /// finite; histograms of any scale, bound or zero threshold merge.
    pub fn merge(&mut self, other: &ExpHist) -> Result<(), ModelError> {
        let (count, sum) = self.merged_totals(other)?;
        let max_buckets = self.max_buckets.min(other.max_buckets);
        let scale = self.merged_scale(other, max_buckets);
        if self.binding_scale().is_some() {
            self.downscale((self.scale - scale) as u32);
        }
        self.scale = scale;
        // A side of `other` with buckets makes its scale binding, so at least `scale`.
        let shift = (other.scale - scale).max(0) as u32;
        self.positive.add_all(&other.positive, shift);
        self.negative.add_all(&other.negative, shift);
        self.max_buckets = max_buckets;
        self.zero_threshold = self.zero_threshold.max(other.zero_threshold);
        // Within `count`, which did not overflow.
        self.zero_count += other.zero_count;
        self.count = count;
        self.sum = sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        Ok(())
    }

    /// Whether [`ExpHist::merge`] would accept `other`. Changes nothing.
    pub fn check_merge(&self, other: &ExpHist) -> Result<(), ModelError> {
        self.merged_totals(other).map(drop)
    }

    /// The count and sum of `self` merged with `other`, or the overflow error.
    fn merged_totals(&self, other: &ExpHist) -> Result<(u64, Sum), ModelError> {
        let count = self
            .count
            .checked_add(other.count)
            .ok_or_else(|| ModelError::Overflow {
                kind: Kind::ExpHistogram,
                reason: format!(
                    "exp_histogram count {} + {} exceeds {}",
                    self.count,
                    other.count,
                    u64::MAX
                ),
            })?;
        let sum = self.sum.checked_merge(&other.sum, Kind::ExpHistogram)?;
        Ok((count, sum))
    }

    /// Current scale.
    pub fn scale(&self) -> i32 {
        self.scale
    }

    /// Bound on the buckets of each side.
    pub fn max_buckets(&self) -> u32 {
        self.max_buckets
    }

    /// Half-width of the zero bucket.
    pub fn zero_threshold(&self) -> f64 {
        self.zero_threshold
    }

    /// Samples in the zero bucket (not counting buckets inside the threshold).
    pub fn zero_count(&self) -> u64 {
        self.zero_count
    }

    /// Buckets of positive samples.
    pub fn positive(&self) -> &Buckets {
        &self.positive
    }

    /// Buckets of negative samples, indexed by magnitude.
    pub fn negative(&self) -> &Buckets {
        &self.negative
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The compensated sum of the samples.
    pub fn sum(&self) -> Sum {
        self.sum
    }

    /// Smallest sample; NaN if empty.
    pub fn min(&self) -> f64 {
        if self.is_empty() { f64::NAN } else { self.min }
    }

    /// Largest sample; NaN if empty.
    pub fn max(&self) -> f64 {
        if self.is_empty() { f64::NAN } else { self.max }
    }

    /// `sum / count`; NaN if empty.
    pub fn mean(&self) -> f64 {
        if self.is_empty() {
            f64::NAN
        } else {
            self.sum.value() / self.count as f64
        }
    }

    /// Value at quantile `q` (clamped to 0..=1): the log-space midpoint of the bucket
    /// holding the `ceil(q * count)`-th smallest sample, clamped to `[min, max]`; 0 if
    /// that sample is in the zero bucket. Buckets whose lower bound is below the zero
    /// threshold count as zeros. NaN if empty or `q` is NaN.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.is_empty() || q.is_nan() {
            return f64::NAN;
        }
        let q = q.clamp(0.0, 1.0);
        // Above 2^53 the float product may round past the count: the largest sample then.
        let target = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let clamp = |v: f64| v.max(self.min).min(self.max);
        // Buckets at or below the one holding the threshold overlap the zero bucket.
        let zero_index = if self.zero_threshold > 0.0 {
            map_to_index(self.zero_threshold, self.scale)
        } else {
            i32::MIN
        };
        let outside = |&(i, c): &(i32, u64)| i > zero_index && c > 0;
        let mut seen = 0u64;
        // Most negative first: the negative side from its largest magnitude down.
        for (i, c) in self.negative.iter().rev().filter(outside) {
            seen += c;
            if seen >= target {
                return clamp(-log_midpoint(i, self.scale));
            }
        }
        let inside = |side: &Buckets| -> u64 {
            side.iter()
                .filter(|&(i, _)| i <= zero_index)
                .map(|(_, c)| c)
                .sum()
        };
        seen += self.zero_count + inside(&self.negative) + inside(&self.positive);
        if seen >= target {
            return clamp(0.0);
        }
        for (i, c) in self.positive.iter().filter(outside) {
            seen += c;
            if seen >= target {
                return clamp(log_midpoint(i, self.scale));
            }
        }
        self.max
    }

    /// Heap memory of the bucket arrays (allocated capacity), in bytes.
    pub fn heap_bytes(&self) -> usize {
        (self.positive.counts.capacity() + self.negative.counts.capacity()) * 8
    }
}

/// Building histograms from what OpenTelemetry and Prometheus receivers decode, and
/// turning cumulative snapshots into deltas. Every input may be hostile: each problem is
/// an error naming it, never a panic, and nothing is allocated beyond the input's size.
impl ExpHist {
    /// Builds a histogram from ingested fields, as [`ExpHist::from_parts`] does, with
    /// three allowances for what OpenTelemetry exporters send:
    ///
    /// - a side may have empty buckets at either end (trimmed, in place);
    /// - a side may span more than `max_buckets` buckets: both sides are then downscaled
    ///   until each fits, the rule of [`ExpHist::merge`] and of the SDKs, which keeps
    ///   every count and the sum;
    /// - `min` or `max` may be NaN, meaning unknown (OpenTelemetry makes both optional).
    ///   It is then derived from the buckets, before downscaling: `min` is the lower
    ///   bound of the lowest occupied bucket (on the negative side, minus the upper bound
    ///   of the largest occupied magnitude), 0 if the lowest sample is in the zero
    ///   bucket (read as zeros, whatever the threshold); `max` likewise from the top. A derived bound contains every sample but
    ///   may be up to one bucket wide of the true one.
    ///
    /// Everything else is refused as [`ModelError::InvalidState`], naming the field:
    /// scale or bound out of range, a zero threshold that is not finite and `>= 0`,
    /// occupied indices outside [`min_index`]`..=`[`max_index`] of the scale (an
    /// OpenTelemetry offset is any `i32`, and offset plus length is computed without
    /// overflow), counts that overflow or do not add up to `count`, a sum that is not
    /// finite, an infinite min or max, `min > max`, and, when `count` is 0, anything but
    /// a zero sum and unknown (or `+inf`/`-inf`) min and max.
    pub fn from_parts_fitting(parts: ExpHistParts) -> Result<ExpHist, ModelError> {
        Self::fit_parts(parts).map_err(|reason| ModelError::InvalidState {
            kind: Kind::ExpHistogram,
            reason,
        })
    }

    /// [`ExpHist::from_parts_fitting`], with the reason of a refusal as a string.
    fn fit_parts(parts: ExpHistParts) -> Result<ExpHist, String> {
        // First: the index range below depends on a valid scale.
        Self::check_params(parts.scale, parts.max_buckets)?;
        let mut h = ExpHist {
            scale: parts.scale,
            max_buckets: parts.max_buckets,
            zero_threshold: parts.zero_threshold,
            zero_count: parts.zero_count,
            positive: parts.positive.trimmed_within("positive", parts.scale)?,
            negative: parts.negative.trimmed_within("negative", parts.scale)?,
            count: parts.count,
            sum: parts.sum,
            min: parts.min,
            max: parts.max,
        };
        let derived = h.bucket_extremes();
        if h.min.is_nan() {
            h.min = derived.map_or(f64::INFINITY, |(min, _)| min);
        }
        if h.max.is_nan() {
            h.max = derived.map_or(f64::NEG_INFINITY, |(_, max)| max);
        }
        // Before downscaling, which adds neighbouring counts.
        h.check_counts()?;
        // Indices are within the scale's range, so this stops at MIN_SCALE at the latest,
        // where every side spans at most 2 buckets.
        let shift = [h.positive.range(), h.negative.range()]
            .into_iter()
            .flatten()
            .map(|(lo, hi)| shift_to_fit(lo, hi, h.max_buckets))
            .max()
            .unwrap_or(0);
        h.downscale(shift);
        h.positive.counts.shrink_to_fit();
        h.negative.counts.shrink_to_fit();
        h.validate()?;
        Ok(h)
    }

    /// The smallest and largest value the occupied buckets and the zero count allow, at
    /// the current scale (see [`ExpHist::from_parts_fitting`]); `None` if nothing is
    /// occupied. Bounds past the float range are `f64::MAX`.
    fn bucket_extremes(&self) -> Option<(f64, f64)> {
        let lower = |i: i32| lower_bound(i, self.scale);
        // `i + 1` fits: indices are at most `max_index(MAX_SCALE)`, far below `i32::MAX`.
        let upper = |i: i32| lower_bound(i.saturating_add(1), self.scale).min(f64::MAX);
        let min = if let Some((_, hi)) = self.negative.range() {
            -upper(hi)
        } else if self.zero_count > 0 {
            0.0
        } else {
            lower(self.positive.range()?.0)
        };
        let max = if let Some((_, hi)) = self.positive.range() {
            upper(hi)
        } else if self.zero_count > 0 {
            0.0
        } else {
            -lower(self.negative.range()?.0)
        };
        Some((min, max))
    }

    /// Converts an explicit-bucket histogram (OpenTelemetry Histogram, Prometheus classic
    /// `le` buckets) into an exponential one recorded at `scale`, downscaled to fit
    /// `max_buckets` as recording does.
    ///
    /// Bucket `i` is `(bounds[i-1], bounds[i]]`, the first `(-inf, bounds[0]]`, the last
    /// `(bounds[last], +inf)`, so `counts.len() == bounds.len() + 1` (Prometheus' `+Inf`
    /// bucket is the last count, not a bound). Its count is recorded at one value:
    ///
    /// - `(lo, hi]` with both of one sign and not zero: the geometric midpoint
    ///   `sqrt(lo * hi)` (`-sqrt(lo * hi)` when negative);
    /// - `(lo, hi]` touching or containing 0: `(lo + hi) / 2`, the zero bucket if that is 0;
    /// - the first bucket: `min` if given and `<= bounds[0]`, else `bounds[0]`;
    /// - the last bucket: `max` if given and `> bounds[last]`, else `bounds[last]`;
    ///
    /// then clamped into `[min, max]` as far as they are given. A value on a bound goes to
    /// the exponential bucket the layout maps it to. `min`, `max` and `sum` count as given
    /// when finite; missing, `min` and `max` are the extreme values recorded and `sum` is
    /// the sum of value times count. The count is the sum of `counts`. The work is linear
    /// in the number of buckets, whatever the counts.
    ///
    /// Accuracy: a sample in `(lo, hi]` (both of one sign, not zero) is represented
    /// within a relative `sqrt(hi / lo) - 1` (e.g. 58% for `(1, 2.5]`, 41% for a
    /// doubling), and a quantile of the result adds the layout's
    /// [`relative_error`]`(scale)` of the final scale on top: within
    /// `sqrt(hi / lo) * (1 + relative_error(scale)) - 1` of the exact sample at its rank.
    /// Samples in the first and last buckets are only as good as `min` and `max`: without
    /// them, they read as the outermost bounds.
    ///
    /// Refuses, naming the problem: no bounds (only count and sum are then known, and a
    /// histogram without buckets cannot be merged as a distribution), a length mismatch,
    /// a bound that is not finite or not above the one before (by index), `min > max`, a
    /// total count past `u64::MAX`, a sum that is not finite when it must be computed, a
    /// finite non-zero `sum` with no samples, and a scale or bound out of range.
    pub fn from_explicit_buckets(
        bounds: &[f64],
        counts: &[u64],
        sum: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
        scale: i32,
        max_buckets: u32,
    ) -> Result<ExpHist, ModelError> {
        let invalid = |reason: String| ModelError::InvalidValue {
            kind: Kind::ExpHistogram,
            reason,
        };
        let mut h = ExpHist::new(scale, max_buckets)?;
        check_explicit_layout(bounds, counts).map_err(invalid)?;
        let (min, max) = (min.filter(|m| m.is_finite()), max.filter(|m| m.is_finite()));
        let sum = sum.filter(|s| s.is_finite());
        if let (Some(lo), Some(hi)) = (min, max)
            && lo > hi
        {
            return Err(invalid(format!(
                "explicit histogram min {lo} is above its max {hi}"
            )));
        }
        let total = counts
            .iter()
            .try_fold(0u64, |acc, &c| acc.checked_add(c))
            .ok_or_else(|| ModelError::Overflow {
                kind: Kind::ExpHistogram,
                reason: format!("explicit histogram bucket counts exceed {}", u64::MAX),
            })?;
        if total == 0 {
            return match sum {
                Some(s) if s != 0.0 => Err(invalid(format!(
                    "explicit histogram has sum {s} but no samples"
                ))),
                _ => Ok(h),
            };
        }
        let pairs = counts
            .iter()
            .enumerate()
            .map(|(i, &n)| (explicit_value(bounds, i, min, max), n));
        // Values rise with the bucket, so this order only ever appends to a side.
        let negative = pairs.clone().rev().filter(|&(v, _)| v < 0.0);
        let rest = pairs.filter(|&(v, _)| v >= 0.0);
        let mut computed = Sum::default();
        for (value, n) in negative.chain(rest) {
            h.put(value, n);
            computed = computed.plus(value * n as f64);
        }
        h.count = total;
        h.sum = match sum {
            Some(sum) => Sum {
                sum,
                compensation: 0.0,
            },
            None => Sum::finite(computed, Kind::ExpHistogram, || {
                "sum of the explicit buckets".to_owned()
            })?,
        };
        h.min = min.unwrap_or(h.min);
        h.max = max.unwrap_or(h.max);
        h.validate().map_err(invalid)?;
        Ok(h)
    }

    /// The difference `self - earlier` of two cumulative snapshots of one stream, `self`
    /// the later: the samples recorded in between, for turning cumulative exports into
    /// deltas.
    ///
    /// Both are compared at the smaller of their scales (a copy is downscaled; an
    /// `earlier` without buckets does not lower the scale), then buckets, zero counts,
    /// counts and sums are subtracted. The result keeps `self`'s bound and zero
    /// threshold; its min and max are derived from its occupied buckets (see
    /// [`ExpHist::from_parts_fitting`]) and clamped into `[self.min, self.max]`. With
    /// count 0 it is the empty histogram at that scale. Its sum is the difference as
    /// computed, so it may be slightly negative through rounding when every sample is
    /// `>= 0`; it is finite. The result always passes [`ExpHist::validate`].
    ///
    /// `None` when `self` is not a continuation of `earlier`: some bucket, the zero count
    /// or the count decreased (a reset: the caller then takes `self` whole as the delta),
    /// or the sums differ by more than a float can hold. A decrease hidden inside one
    /// bucket of the common scale is not seen.
    pub fn cumulative_delta(&self, earlier: &ExpHist) -> Option<ExpHist> {
        let scale = earlier
            .binding_scale()
            .map_or(self.scale, |s| s.min(self.scale));
        let count = self.count.checked_sub(earlier.count)?;
        let zero_count = self.zero_count.checked_sub(earlier.zero_count)?;
        let negated = Sum {
            sum: -earlier.sum.sum,
            compensation: -earlier.sum.compensation,
        };
        let sum = self.sum.checked_merge(&negated, Kind::ExpHistogram).ok()?;
        // Non-negative for every histogram with buckets; irrelevant for one without.
        let shift = |h: &ExpHist| (h.scale - scale).max(0) as u32;
        let positive = self
            .positive
            .minus(shift(self), &earlier.positive, shift(earlier))?;
        let negative = self
            .negative
            .minus(shift(self), &earlier.negative, shift(earlier))?;
        let mut delta = ExpHist::new(scale, self.max_buckets).ok()?;
        delta.zero_threshold = self.zero_threshold;
        if count == 0 {
            // Any bucket left would be counts that do not add up: not a delta.
            let nothing = positive.is_empty() && negative.is_empty() && zero_count == 0;
            return nothing.then_some(delta);
        }
        delta.positive = positive;
        delta.negative = negative;
        delta.zero_count = zero_count;
        delta.count = count;
        delta.sum = sum;
        let (min, max) = delta.bucket_extremes()?;
        // `max`/`min` rather than `clamp`: no panic whatever the fields hold.
        delta.min = min.max(self.min).min(self.max);
        delta.max = max.max(self.min).min(self.max);
        delta.validate().ok()?;
        Some(delta)
    }
}

/// Checks the bucket layout of an explicit histogram (see
/// [`ExpHist::from_explicit_buckets`]), naming the problem.
fn check_explicit_layout(bounds: &[f64], counts: &[u64]) -> Result<(), String> {
    if bounds.is_empty() {
        return Err(format!(
            "explicit histogram has no bucket bounds ({} counts): only its count and sum are \
             known, and a histogram without buckets cannot be merged as a distribution",
            counts.len()
        ));
    }
    if counts.len() != bounds.len() + 1 {
        return Err(format!(
            "explicit histogram has {} bucket counts for {} bounds, not {}",
            counts.len(),
            bounds.len(),
            bounds.len() + 1
        ));
    }
    if let Some((i, b)) = bounds.iter().enumerate().find(|(_, b)| !b.is_finite()) {
        return Err(format!(
            "explicit histogram bound {i} is {b}, not a finite number"
        ));
    }
    if let Some(i) = bounds.windows(2).position(|w| w[0] >= w[1]) {
        return Err(format!(
            "explicit histogram bound {} ({}) is not above bound {i} ({})",
            i + 1,
            bounds[i + 1],
            bounds[i]
        ));
    }
    Ok(())
}

/// The value bucket `i` of a checked explicit layout is recorded at (see
/// [`ExpHist::from_explicit_buckets`]); `min` and `max` are finite when given.
fn explicit_value(bounds: &[f64], i: usize, min: Option<f64>, max: Option<f64>) -> f64 {
    let lower = i.checked_sub(1).and_then(|j| bounds.get(j)).copied();
    let value = match (lower, bounds.get(i).copied()) {
        (Some(lo), Some(hi)) if lo > 0.0 => (lo.sqrt() * hi.sqrt()).max(lo).min(hi),
        (Some(lo), Some(hi)) if hi < 0.0 => {
            let magnitude = ((-lo).sqrt() * (-hi).sqrt()).max(-hi).min(-lo);
            -magnitude
        }
        // Opposite signs or a zero bound: no overflow.
        (Some(lo), Some(hi)) => (lo + hi) / 2.0,
        (None, Some(hi)) => min.filter(|&m| m <= hi).unwrap_or(hi),
        (Some(lo), None) => max.filter(|&m| m > lo).unwrap_or(lo),
        // Not reached: a checked layout has a bound.
        (None, None) => 0.0,
    };
    value
        .max(min.unwrap_or(f64::NEG_INFINITY))
        .min(max.unwrap_or(f64::INFINITY))
}

/// The wire and store form (see docs/PROTOCOL.md): LEB128 varints (zig-zag for signed
/// fields), floats as 8 little-endian bytes.
///
/// | field | encoding |
/// |---|---|
/// | scale | zig-zag varint |
/// | max_buckets | varint |
/// | zero_threshold | f64 |
/// | zero_count, count | varint each |
/// | sum, compensation | f64 each |
/// | min, max | f64 each (`+inf`, `-inf` when empty) |
/// | positive, negative | each: offset (zig-zag varint), span (varint), entries |
///
/// Entries cover the span in order: a varint `c >= 1` is one bucket of count `c`; a 0
/// is followed by a varint `k >= 1` and stands for `k` empty buckets. The encoding is
/// canonical (minimal varints, maximal runs, offset 0 for an empty side), and the
/// decoder accepts nothing else, so a decoded histogram re-encodes to its input.
impl ExpHist {
    /// Appends the encoded histogram to `out`.
    pub fn write_payload(&self, out: &mut Vec<u8>) {
        put_varint(out, zig_zag(self.scale));
        put_varint(out, u64::from(self.max_buckets));
        out.extend_from_slice(&self.zero_threshold.to_le_bytes());
        put_varint(out, self.zero_count);
        put_varint(out, self.count);
        out.extend_from_slice(&self.sum.sum.to_le_bytes());
        out.extend_from_slice(&self.sum.compensation.to_le_bytes());
        out.extend_from_slice(&self.min.to_le_bytes());
        out.extend_from_slice(&self.max.to_le_bytes());
        for side in [&self.positive, &self.negative] {
            put_varint(out, zig_zag(side.offset));
            put_varint(out, side.counts.len() as u64);
            let mut zeros = 0u64;
            for &c in &side.counts {
                if c == 0 {
                    zeros += 1;
                    continue;
                }
                if zeros > 0 {
                    out.push(0);
                    put_varint(out, zeros);
                    zeros = 0;
                }
                put_varint(out, c);
            }
        }
    }

    /// The encoded histogram in a new buffer.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_payload(&mut out);
        out
    }

    /// Decodes exactly one histogram written by [`ExpHist::write_payload`] and validates
    /// it. Refuses a span above the bound before allocating anything for it; garbage
    /// gives [`ModelError::Decode`] naming the problem, never a panic.
    pub fn from_payload(bytes: &[u8]) -> Result<ExpHist, ModelError> {
        decode_payload(bytes)
            .map_err(|reason| ModelError::Decode(format!("exp_histogram: {reason}")))
    }
}

fn decode_payload(bytes: &[u8]) -> Result<ExpHist, String> {
    let mut r = Cursor { bytes };
    let scale = unzig(r.varint("scale")?)
        .filter(|s| (MIN_SCALE..=MAX_SCALE).contains(s))
        .ok_or_else(|| format!("scale is not between {MIN_SCALE} and {MAX_SCALE}"))?;
    let max_buckets = u32::try_from(r.varint("max_buckets")?)
        .ok()
        .filter(|m| (MIN_MAX_BUCKETS..=MAX_MAX_BUCKETS).contains(m))
        .ok_or_else(|| {
            format!("max_buckets is not between {MIN_MAX_BUCKETS} and {MAX_MAX_BUCKETS}")
        })?;
    let zero_threshold = r.f64("zero_threshold")?;
    let zero_count = r.varint("zero_count")?;
    let count = r.varint("count")?;
    let sum = Sum {
        sum: r.f64("sum")?,
        compensation: r.f64("sum compensation")?,
    };
    let min = r.f64("min")?;
    let max = r.f64("max")?;
    let positive = r.buckets("positive", max_buckets)?;
    let negative = r.buckets("negative", max_buckets)?;
    if !r.bytes.is_empty() {
        return Err(format!("{} trailing bytes", r.bytes.len()));
    }
    let h = ExpHist {
        scale,
        max_buckets,
        zero_threshold,
        zero_count,
        positive,
        negative,
        count,
        sum,
        min,
        max,
    };
    h.validate()?;
    Ok(h)
}

fn zig_zag(n: i32) -> u64 {
    u64::from(((n << 1) ^ (n >> 31)) as u32)
}

/// The `i32` of a zig-zag varint, if it is one.
fn unzig(n: u64) -> Option<i32> {
    let n = u32::try_from(n).ok()?;
    Some(((n >> 1) as i32) ^ -((n & 1) as i32))
}

/// Appends the LEB128 varint of `value`.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A cursor over a payload that fails instead of reading past the end.
struct Cursor<'a> {
    /// What has not been consumed yet.
    bytes: &'a [u8],
}

impl Cursor<'_> {
    /// A minimal LEB128 varint of at most 10 bytes.
    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let mut value = 0u64;
        for (i, &b) in self.bytes.iter().enumerate().take(10) {
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(format!("{what} varint overflows a u64"));
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(format!("{what} varint is not minimal"));
                }
                self.bytes = &self.bytes[i + 1..];
                return Ok(value);
            }
        }
        Err(format!("truncated {what} varint"))
    }

    fn f64(&mut self, what: &str) -> Result<f64, String> {
        let Some((head, tail)) = self.bytes.split_first_chunk::<8>() else {
            return Err(format!(
                "truncated {what}: need 8 bytes, {} left",
                self.bytes.len()
            ));
        };
        self.bytes = tail;
        Ok(f64::from_le_bytes(*head))
    }

    /// One side: offset, span and entries, checked canonical and within `max_buckets`.
    fn buckets(&mut self, name: &str, max_buckets: u32) -> Result<Buckets, String> {
        let offset = unzig(self.varint("bucket offset")?)
            .ok_or_else(|| format!("{name} bucket offset is not an i32"))?;
        let span = self.varint("bucket span")?;
        if span > u64::from(max_buckets) {
            return Err(format!(
                "{span} {name} buckets exceed the bound of {max_buckets}"
            ));
        }
        if span == 0 {
            if offset != 0 {
                return Err(format!("empty {name} buckets with offset {offset}"));
            }
            return Ok(Buckets::default());
        }
        let span = span as usize;
        let mut counts = Vec::with_capacity(span);
        while counts.len() < span {
            match self.varint("bucket count")? {
                0 => {
                    let zeros = self.varint("empty bucket run")?;
                    let left = (span - counts.len()) as u64;
                    if zeros == 0 || zeros >= left || counts.last() == Some(&0) {
                        return Err(format!("{name} buckets have a malformed empty run"));
                    }
                    counts.resize(counts.len() + zeros as usize, 0);
                }
                c => counts.push(c),
            }
        }
        if counts.first() == Some(&0) {
            return Err(format!("{name} buckets are not trimmed of empty ends"));
        }
        Ok(Buckets { offset, counts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::FileFailurePersistence;

    fn hist(scale: i32, max_buckets: u32, values: &[f64]) -> ExpHist {
        let mut h = ExpHist::new(scale, max_buckets).unwrap();
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn exact_powers_of_two_are_upper_bounds_at_every_scale() {
        for scale in [-10, -1, 0, 1, 3, 20] {
            for e in [-1022, -100, -1, 0, 1, 2, 10, 1023] {
                let v = 2f64.powi(e);
                let expected = if scale > 0 {
                    (e << scale) - 1
                } else {
                    (e - 1) >> -scale
                };
                assert_eq!(map_to_index(v, scale), expected, "2^{e} at scale {scale}");
                assert_eq!(map_to_index(-v, scale), expected, "-2^{e} at scale {scale}");
                // The next float up is in the next bucket.
                let up = f64::from_bits(v.to_bits() + 1);
                let next = if scale > 0 { e << scale } else { e >> -scale };
                assert_eq!(map_to_index(up, scale), next, "2^{e}+ at scale {scale}");
            }
        }
    }

    #[test]
    fn scale_zero_and_below_follow_the_exponent() {
        // Scale 0: (1, 2] is bucket 0, (2, 4] bucket 1, (0.5, 1] bucket -1.
        assert_eq!(map_to_index(1.5, 0), 0);
        assert_eq!(map_to_index(2.0, 0), 0);
        assert_eq!(map_to_index(3.0, 0), 1);
        assert_eq!(map_to_index(1.0, 0), -1);
        assert_eq!(map_to_index(0.75, 0), -1);
        // Scale -1: base 4, (1, 4] is bucket 0, (4, 16] bucket 1, (1/4, 1] bucket -1.
        assert_eq!(map_to_index(4.0, -1), 0);
        assert_eq!(map_to_index(4.5, -1), 1);
        assert_eq!(map_to_index(16.0, -1), 1);
        assert_eq!(map_to_index(1.0, -1), -1);
        assert_eq!(map_to_index(0.25, -1), -2);
        // Scale -10: every normal float in bucket -1 or 0.
        assert_eq!(map_to_index(f64::MAX, -10), 0);
        assert_eq!(map_to_index(1.0, -10), -1);
        assert_eq!(map_to_index(1.0000001, -10), 0);
        assert_eq!(map_to_index(f64::MIN_POSITIVE, -10), -1);
        assert_eq!(map_to_index(5e-324, -10), -1);
    }

    #[test]
    fn positive_scales_split_each_binade_evenly() {
        // Scale 1: base sqrt(2); (1, 1.414] is bucket 0, (1.414, 2] bucket 1.
        let sqrt2 = std::f64::consts::SQRT_2;
        assert_eq!(map_to_index(1.2, 1), 0);
        assert_eq!(map_to_index(1.5, 1), 1);
        assert_eq!(map_to_index(3.0, 1), 3);
        assert_eq!(map_to_index(sqrt2 * 1.000_000_1, 1), 1);
        assert_eq!(map_to_index(sqrt2 * 0.999_999_9, 1), 0);
        // Scale 3: base 2^(1/8).
        for k in 0..8 {
            let lower = 2f64.powf(f64::from(k) / 8.0);
            let inside = lower * 2f64.powf(1.0 / 16.0);
            assert_eq!(map_to_index(inside, 3), k, "k {k}");
            assert_eq!(map_to_index(inside * 1024.0, 3), 80 + k, "k {k}");
            assert_eq!(map_to_index(inside / 4.0, 3), k - 16, "k {k}");
        }
        // Scale 20: the index of a value just above a boundary.
        let boundary = lower_bound(12_345_678, 20);
        assert_eq!(map_to_index(boundary * (1.0 + 1e-9), 20), 12_345_678);
        assert_eq!(map_to_index(boundary * (1.0 - 1e-9), 20), 12_345_677);
    }

    #[test]
    fn index_range_covers_every_float() {
        for scale in MIN_SCALE..=MAX_SCALE {
            assert_eq!(map_to_index(f64::MAX, scale), max_index(scale), "{scale}");
            assert_eq!(map_to_index(f64::MIN_POSITIVE, scale), min_index(scale));
            assert_eq!(map_to_index(1e-310, scale), min_index(scale));
            assert!(max_index(scale) - min_index(scale) >= 1);
        }
        assert_eq!((min_index(-10), max_index(-10)), (-1, 0));
        assert_eq!(max_index(0), 1023);
        assert_eq!(min_index(0), -1023);
    }

    #[test]
    fn coarser_scales_are_finer_ones_shifted() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x >> 1);
            if !v.is_finite() || v == 0.0 {
                continue;
            }
            let fine = map_to_index(v, MAX_SCALE);
            for scale in MIN_SCALE..MAX_SCALE {
                assert_eq!(
                    map_to_index(v, scale),
                    fine >> (MAX_SCALE - scale),
                    "{v} {scale}"
                );
            }
        }
    }

    #[test]
    fn records_zeros_negatives_and_positives_apart() {
        let h = hist(0, 160, &[0.0, -0.0, 3.0, -3.0, -5.0, 1.5]);
        assert_eq!(h.zero_count(), 2);
        assert_eq!(h.positive(), &Buckets::new(0, vec![1, 1]));
        assert_eq!(h.negative(), &Buckets::new(1, vec![1, 1]));
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum().value(), -3.5);
        assert_eq!((h.min(), h.max()), (-5.0, 3.0));
        assert!(h.validate().is_ok());
        assert!(hist(0, 160, &[-0.0]).min().to_bits() == 0);
    }

    #[test]
    fn recording_downscales_to_the_bound() {
        let h = hist(20, 4, &[1.0, 1000.0]);
        // 1 and 1000 are 10 binades apart: at most 4 buckets leaves 4 binades per bucket.
        assert_eq!(h.scale(), -2);
        assert_eq!(h.positive().counts(), &[1, 0, 0, 1]);
        assert_eq!(h.positive().offset(), -1);
        let h = hist(20, 2, &[1e-300, 1e300, -1e-300, -1e300]);
        assert!(h.scale() >= MIN_SCALE);
        assert!(h.positive().counts().len() <= 2);
        assert!(h.validate().is_ok());
    }

    #[test]
    fn refuses_non_finite_values_and_overflow_unchanged() {
        let mut h = hist(20, 160, &[1.0]);
        let before = h.clone();
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(
                h.record(bad),
                Err(ModelError::InvalidValue {
                    kind: Kind::ExpHistogram,
                    ..
                })
            ));
        }
        let mut big = hist(20, 160, &[f64::MAX]);
        assert!(matches!(
            big.record(f64::MAX),
            Err(ModelError::Overflow { .. })
        ));
        assert!(big.merge(&big.clone()).is_err());
        assert_eq!(big, hist(20, 160, &[f64::MAX]));
        assert_eq!(h, before);
    }

    #[test]
    fn merge_goes_to_the_smaller_scale_then_adds() {
        let mut a = hist(3, 160, &[1.125, 1.25]);
        let b = hist(1, 160, &[1.125, 3.0]);
        a.merge(&b).unwrap();
        assert_eq!(a.scale(), 1);
        assert_eq!(a, hist(1, 160, &[1.125, 1.25, 1.125, 3.0]));
    }

    #[test]
    fn a_state_without_buckets_does_not_lower_the_scale() {
        let mut zeros = hist(0, 160, &[0.0]);
        let fine = hist(20, 160, &[1.5]);
        zeros.merge(&fine).unwrap();
        assert_eq!(zeros.scale(), 20);
        let mut fine2 = fine.clone();
        fine2.merge(&hist(0, 160, &[0.0])).unwrap();
        assert_eq!(zeros, fine2);
    }

    #[test]
    fn merge_keeps_the_smaller_bound_and_larger_threshold() {
        let mut a = hist(20, 160, &[1.0, 2.0]);
        let mut b = hist(20, 8, &[3.0]);
        b.zero_threshold = 0.5;
        a.merge(&b).unwrap();
        assert_eq!(a.max_buckets(), 8);
        assert_eq!(a.zero_threshold(), 0.5);
        assert!(a.positive().counts().len() <= 8);
        assert!(a.validate().is_ok());
    }

    #[test]
    fn buckets_inside_the_zero_threshold_read_as_zeros() {
        let mut h = hist(3, 160, &[0.1, 0.2, 10.0, 20.0]);
        assert!(h.quantile(0.25) > 0.09);
        h.zero_threshold = 0.25;
        // Two of four samples now read as zeros, clamped to min.
        assert_eq!(h.quantile(0.25), h.min());
        assert_eq!(h.quantile(0.5), h.min());
        assert!((h.quantile(0.75) - 10.0).abs() < 10.0 * relative_error(3));
        h.min = -1.0;
        assert_eq!(h.quantile(0.5), 0.0);
    }

    #[test]
    fn quantiles_are_log_midpoints_clamped() {
        let h = hist(0, 160, &[3.0]);
        // Bucket (2, 4]: midpoint 2^1.5, clamped to [3, 3].
        assert_eq!(h.quantile(0.5), 3.0);
        let h = hist(0, 160, &[2.5, 2.6, 3.9]);
        assert_eq!(h.quantile(0.5), 2f64.powf(1.5));
        assert_eq!(h.quantile(0.0), 2f64.powf(1.5));
        assert!(hist(0, 160, &[]).quantile(0.5).is_nan());
        assert!(h.quantile(f64::NAN).is_nan());
        let h = hist(0, 160, &[-3.75, -2.25, 0.0, 5.0]);
        assert_eq!(h.quantile(0.25), -(2f64.powf(1.5)));
        assert_eq!(h.quantile(0.5), -(2f64.powf(1.5)));
        assert_eq!(h.quantile(0.75), 0.0);
        assert_eq!(h.quantile(1.0), 5.0); // 2^2.5 clamped to max 5
        assert_eq!(h.mean(), -0.25);
        // -2^1.5 clamped to min -2.25
        assert_eq!(hist(0, 160, &[-2.25, -2.125]).quantile(0.5), -2.25);
    }

    #[test]
    fn downscale_in_place_adds_neighbours() {
        let mut b = Buckets::new(-3, vec![1, 2, 3, 4, 5, 6]);
        b.downscale(1);
        // -3..=2 >> 1 = -2, -1, -1, 0, 0, 1
        assert_eq!(b, Buckets::new(-2, vec![1, 5, 9, 6]));
        b.downscale(3);
        assert_eq!(b, Buckets::new(-1, vec![6, 15]));
    }

    #[test]
    fn buckets_new_trims_and_normalises_empty() {
        assert_eq!(Buckets::new(5, vec![0, 0]), Buckets::default());
        assert_eq!(
            Buckets::new(5, vec![0, 1, 0, 2, 0]),
            Buckets::new(6, vec![1, 0, 2])
        );
    }

    #[test]
    fn payload_roundtrips_and_is_canonical() {
        let mut h = hist(20, 160, &[0.0, 1.0, 1.5, 100.0, -7.0, 1e9]);
        h.zero_threshold = 0.001;
        let bytes = h.to_payload();
        assert!(bytes.len() <= ExpHist::MAX_PAYLOAD_LEN);
        let back = ExpHist::from_payload(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.to_payload(), bytes);
        let empty = ExpHist::new(20, 160).unwrap();
        assert_eq!(ExpHist::from_payload(&empty.to_payload()).unwrap(), empty);
    }

    #[test]
    fn runs_of_empty_buckets_take_two_bytes() {
        let h = hist(0, 160, &[1.5, 1e30]);
        let bytes = h.to_payload();
        let empty = ExpHist::new(0, 160).unwrap().to_payload();
        // Offset, span 100, count, the 98 empty buckets as a run marker and its length,
        // count: 6 bytes instead of the 2 of an empty side, not 100 more.
        assert_eq!(bytes.len() - empty.len(), 4, "{bytes:?}");
    }

    #[test]
    fn forged_payloads_are_refused() {
        let h = hist(20, 160, &[1.0, 2.0, 300.0]);
        let good = h.to_payload();
        for len in 0..good.len() {
            assert!(
                ExpHist::from_payload(&good[..len]).is_err(),
                "truncated to {len}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(ExpHist::from_payload(&longer).is_err());
        // A span of 2^40 buckets is refused before any allocation.
        let mut huge = Vec::new();
        put_varint(&mut huge, zig_zag(0));
        put_varint(&mut huge, 160);
        huge.extend_from_slice(&0f64.to_le_bytes());
        put_varint(&mut huge, 0);
        put_varint(&mut huge, 1);
        for f in [0.0, 0.0, 1.0, 1.0] {
            huge.extend_from_slice(&f64::to_le_bytes(f));
        }
        put_varint(&mut huge, 0);
        put_varint(&mut huge, 1 << 40);
        let err = ExpHist::from_payload(&huge).unwrap_err().to_string();
        assert!(err.contains("exceed the bound"), "{err}");
        // An overlong varint is refused even though its value is right.
        let mut overlong = vec![0x80 | zig_zag(20) as u8, 0];
        overlong.extend_from_slice(&good[1..]);
        assert!(ExpHist::from_payload(&overlong).is_err());
    }

    #[test]
    fn validate_names_what_records_cannot_make() {
        let good = hist(3, 160, &[1.0, 2.0, -4.0, 0.0]);
        let parts = || ExpHistParts {
            scale: good.scale,
            max_buckets: good.max_buckets,
            zero_threshold: good.zero_threshold,
            zero_count: good.zero_count,
            positive: good.positive.clone(),
            negative: good.negative.clone(),
            count: good.count,
            sum: good.sum,
            min: good.min,
            max: good.max,
        };
        assert_eq!(ExpHist::from_parts(parts()).unwrap(), good);
        let bad = [
            (
                ExpHistParts {
                    scale: 21,
                    ..parts()
                },
                "scale",
            ),
            (
                ExpHistParts {
                    scale: -11,
                    ..parts()
                },
                "scale",
            ),
            (
                ExpHistParts {
                    max_buckets: 1,
                    ..parts()
                },
                "max buckets",
            ),
            (
                ExpHistParts {
                    zero_threshold: -1.0,
                    ..parts()
                },
                "zero threshold",
            ),
            (
                ExpHistParts {
                    zero_threshold: f64::NAN,
                    ..parts()
                },
                "zero threshold",
            ),
            (
                ExpHistParts {
                    count: 5,
                    ..parts()
                },
                "count",
            ),
            (
                ExpHistParts {
                    zero_count: u64::MAX,
                    ..parts()
                },
                "overflow",
            ),
            (
                ExpHistParts {
                    min: 3.0,
                    max: 1.0,
                    ..parts()
                },
                "min",
            ),
            (
                ExpHistParts {
                    max: f64::INFINITY,
                    ..parts()
                },
                "max",
            ),
            (
                ExpHistParts {
                    sum: Sum {
                        sum: f64::NAN,
                        compensation: 0.0,
                    },
                    ..parts()
                },
                "sum",
            ),
            (
                ExpHistParts {
                    positive: Buckets {
                        offset: 0,
                        counts: vec![0, 1],
                    },
                    count: 3,
                    ..parts()
                },
                "trimmed",
            ),
            (
                ExpHistParts {
                    positive: Buckets {
                        offset: 7,
                        counts: vec![],
                    },
                    negative: Buckets::default(),
                    count: 1,
                    ..parts()
                },
                "offset",
            ),
            (
                ExpHistParts {
                    positive: Buckets::new(max_index(3), vec![1, 1]),
                    ..parts()
                },
                "outside",
            ),
            (
                ExpHistParts {
                    positive: Buckets::new(0, vec![1; 161]),
                    count: 163,
                    ..parts()
                },
                "bound",
            ),
        ];
        for (p, word) in bad {
            let err = ExpHist::from_parts(p.clone()).unwrap_err().to_string();
            assert!(err.contains(word), "{p:?}: {err}");
        }
        let empty = ExpHist::new(0, 2).unwrap();
        assert!(
            ExpHist::from_parts(ExpHistParts {
                scale: 0,
                max_buckets: 2,
                zero_threshold: 0.0,
                zero_count: 0,
                positive: Buckets::default(),
                negative: Buckets::default(),
                count: 0,
                sum: Sum::default(),
                min: 0.0,
                max: 0.0,
            })
            .is_err()
        );
        assert!(empty.validate().is_ok());
    }

    #[test]
    fn offsets_at_the_ends_of_i32_are_refused_without_overflow() {
        for (offset, counts) in [(i32::MAX, vec![1, 1]), (i32::MIN, vec![1, 1])] {
            let err = ExpHist::from_parts(ExpHistParts {
                scale: 20,
                max_buckets: 160,
                zero_threshold: 0.0,
                zero_count: 0,
                positive: Buckets { offset, counts },
                negative: Buckets::default(),
                count: 2,
                sum: Sum::default(),
                min: 1.0,
                max: 1.0,
            })
            .unwrap_err();
            assert!(err.to_string().contains("outside"), "{err}");
        }
        // The same through the decoder: offset i32::MAX (zig-zag u32::MAX - 1), span 2.
        let mut bytes = ExpHist::new(20, 160).unwrap().to_payload();
        let sides = bytes.len() - 4;
        bytes.truncate(sides);
        put_varint(&mut bytes, zig_zag(i32::MAX));
        bytes.extend_from_slice(&[2, 1, 1, 0, 0]);
        let err = ExpHist::from_payload(&bytes).unwrap_err().to_string();
        assert!(err.contains("outside") || err.contains("count"), "{err}");
    }

    #[test]
    fn relative_error_is_half_a_bucket_in_log_space() {
        assert!((relative_error(20) - 3.3e-7).abs() < 1e-8);
        assert!((relative_error(0) - (2f64.sqrt() - 1.0)).abs() < 1e-15);
        assert!((relative_error(3) - 0.0443).abs() < 1e-4);
    }

    fn fitting_parts() -> ExpHistParts {
        ExpHistParts {
            scale: 3,
            max_buckets: 160,
            zero_threshold: 0.0,
            zero_count: 4,
            positive: Buckets::new(-200, vec![1; 400]),
            negative: Buckets::new(5, vec![2, 0, 3]),
            count: 409,
            sum: Sum {
                sum: 123.5,
                compensation: 0.0,
            },
            min: f64::NAN,
            max: f64::NAN,
        }
    }

    #[test]
    fn fitting_downscales_a_wide_side_and_keeps_count_and_sum() {
        let h = ExpHist::from_parts_fitting(fitting_parts()).unwrap();
        // 400 buckets at scale 3 take 200 at scale 2 and 100 at scale 1.
        assert_eq!(h.scale(), 1);
        assert_eq!(h.positive().counts().len(), 100);
        assert_eq!(h.positive().total(), Some(400));
        assert_eq!(h.negative(), &Buckets::new(1, vec![5]));
        assert_eq!((h.count(), h.zero_count()), (409, 4));
        assert_eq!(h.sum().value(), 123.5);
        // Unknown min and max come from the buckets at the scale they were sent at: the
        // upper bounds of negative bucket 7 and of positive bucket 199, at scale 3.
        assert_eq!(h.min(), -2.0);
        assert_eq!(h.max(), 2f64.powi(25));
        assert!(h.validate().is_ok());
        // The same as downscaling by hand, then building strictly.
        let mut parts = fitting_parts();
        parts.positive.downscale(2);
        parts.negative.downscale(2);
        parts.scale = 1;
        parts.min = -2.0;
        parts.max = 2f64.powi(25);
        assert_eq!(ExpHist::from_parts(parts).unwrap(), h);
        // Both sides go down together, even when only one is too wide.
        let mut parts = fitting_parts();
        parts.positive = Buckets::new(0, vec![1; 3]);
        parts.negative = Buckets::new(0, vec![1; 161]);
        parts.count = 4 + 3 + 161;
        let h = ExpHist::from_parts_fitting(parts).unwrap();
        assert_eq!(h.scale(), 2);
        assert_eq!(h.positive(), &Buckets::new(0, vec![2, 1]));
        assert_eq!(h.negative().counts().len(), 81);
        assert!(h.validate().is_ok());
    }

    #[test]
    fn fitting_trims_and_derives_unknown_min_and_max() {
        let base = || ExpHistParts {
            scale: 0,
            max_buckets: 160,
            zero_threshold: 0.0,
            zero_count: 0,
            positive: Buckets::default(),
            negative: Buckets::default(),
            count: 0,
            sum: Sum::default(),
            min: f64::NAN,
            max: f64::NAN,
        };
        assert_eq!(
            ExpHist::from_parts_fitting(base()).unwrap(),
            ExpHist::new(0, 160).unwrap()
        );
        let zeros = ExpHist::from_parts_fitting(ExpHistParts {
            zero_count: 3,
            count: 3,
            ..base()
        })
        .unwrap();
        assert_eq!((zeros.min(), zeros.max()), (0.0, 0.0));
        // Untrimmed ends, and an offset on an empty side, as exporters may send them.
        let h = ExpHist::from_parts_fitting(ExpHistParts {
            positive: Buckets {
                offset: 1,
                counts: vec![0, 0, 5, 0],
            },
            negative: Buckets {
                offset: -7,
                counts: vec![0, 0],
            },
            count: 5,
            sum: Sum {
                sum: 60.0,
                compensation: 0.0,
            },
            max: 15.0,
            ..base()
        })
        .unwrap();
        assert_eq!(h.positive(), &Buckets::new(3, vec![5]));
        assert_eq!(h.negative(), &Buckets::default());
        // Bucket 3 at scale 0 is (8, 16]: min is its lower bound; the given max is kept.
        assert_eq!((h.min(), h.max()), (8.0, 15.0));
        // Only negative buckets: -16 and -4 bound buckets 3 and 1, with a zero between.
        let h = ExpHist::from_parts_fitting(ExpHistParts {
            negative: Buckets::new(1, vec![1, 0, 1]),
            count: 2,
            sum: Sum {
                sum: -15.0,
                compensation: 0.0,
            },
            ..base()
        })
        .unwrap();
        assert_eq!((h.min(), h.max()), (-16.0, -2.0));
        // The extremes of the index range give finite bounds.
        let h = ExpHist::from_parts_fitting(ExpHistParts {
            positive: Buckets::new(max_index(0), vec![1]),
            negative: Buckets::new(max_index(0), vec![1]),
            count: 2,
            ..base()
        })
        .unwrap();
        assert_eq!((h.min(), h.max()), (-f64::MAX, f64::MAX));
    }

    #[test]
    fn fitting_refuses_hostile_parts_without_panicking() {
        type Forge = fn(&mut ExpHistParts);
        let bad: [(Forge, &str); 16] = [
            (|p| p.count = 408, "count"),
            (|p| p.zero_threshold = f64::NAN, "zero threshold"),
            (|p| p.zero_threshold = f64::INFINITY, "zero threshold"),
            (|p| p.scale = 21, "scale"),
            (|p| p.scale = i32::MIN, "scale"),
            (|p| p.max_buckets = 0, "max buckets"),
            (
                |p| p.positive = Buckets::new(i32::MAX - 10, vec![1; 1000]),
                "outside",
            ),
            (
                |p| {
                    p.negative = Buckets {
                        offset: i32::MAX,
                        counts: vec![0, 0, 1],
                    }
                },
                "outside",
            ),
            (
                |p| p.positive = Buckets::new(i32::MIN, vec![1, 1]),
                "outside",
            ),
            (|p| p.zero_count = u64::MAX, "overflow"),
            (
                |p| p.positive = Buckets::new(0, vec![u64::MAX, u64::MAX]),
                "overflow",
            ),
            // Downscaling to 2 buckets would add these up.
            (
                |p| {
                    p.max_buckets = 2;
                    p.positive = Buckets::new(0, vec![u64::MAX; 3]);
                    p.negative = Buckets::default();
                    (p.zero_count, p.count) = (0, u64::MAX);
                },
                "overflow",
            ),
            (|p| p.sum.sum = f64::NAN, "sum"),
            (|p| p.min = f64::NEG_INFINITY, "min"),
            (|p| (p.min, p.max) = (3.0, 1.0), "min"),
            // Below what the buckets hold.
            (|p| p.max = -3.0, "min"),
        ];
        let mut cases: Vec<(ExpHistParts, &str)> = bad
            .into_iter()
            .map(|(forge, word)| {
                let mut p = fitting_parts();
                forge(&mut p);
                (p, word)
            })
            .collect();
        // No samples, but a min.
        let mut p = fitting_parts();
        (p.positive, p.negative) = (Buckets::default(), Buckets::default());
        (p.zero_count, p.count, p.sum, p.min) = (0, 0, Sum::default(), 0.0);
        cases.push((p, "count 0"));
        for (p, word) in cases {
            let err = ExpHist::from_parts_fitting(p.clone()).unwrap_err();
            assert!(
                matches!(
                    err,
                    ModelError::InvalidState {
                        kind: Kind::ExpHistogram,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains(word), "{p:?}: {err}");
        }
    }

    /// The bounds of the examples below: (-inf, 1], (1, 2], (2, 5], (5, 10], (10, inf).
    const BOUNDS: [f64; 4] = [1.0, 2.0, 5.0, 10.0];

    #[test]
    fn explicit_buckets_are_recorded_at_their_geometric_midpoints() {
        let h =
            ExpHist::from_explicit_buckets(&BOUNDS, &[1, 2, 3, 4, 5], None, None, None, 20, 160)
                .unwrap();
        assert!(h.validate().is_ok());
        assert_eq!(h.count(), 15);
        let sqrt = f64::sqrt;
        let want = 1.0 + 2.0 * sqrt(2.0) + 3.0 * sqrt(10.0) + 4.0 * sqrt(50.0) + 5.0 * 10.0;
        assert!(
            (h.sum().value() - want).abs() < 1e-12 * want,
            "{:?}",
            h.sum()
        );
        // Without min and max, the outer buckets read as the outer bounds.
        assert_eq!((h.min(), h.max()), (1.0, 10.0));
        assert_eq!(h.positive().total(), Some(15));
        // 1 to 10 is 3.3 binades: 160 buckets hold 32 per binade, scale 5.
        assert_eq!(h.scale(), 5);
        let e = relative_error(h.scale());
        // Ranks 1 | 2-3 | 4-6 | 7-10 | 11-15: each quantile is its bucket's value within
        // the layout's error, and within the stated bound of any sample of the bucket.
        for (q, value, lo, hi) in [
            (0.2, sqrt(2.0), 1.0, 2.0),
            (0.4, sqrt(10.0), 2.0, 5.0),
            (0.5, sqrt(50.0), 5.0, 10.0),
            (0.6, sqrt(50.0), 5.0, 10.0),
        ] {
            let got = h.quantile(q);
            assert!((got - value).abs() <= value * e, "q {q}: {got} vs {value}");
            let bound = sqrt(hi / lo) * (1.0 + e) - 1.0;
            for sample in [lo * (1.0 + 1e-12), hi] {
                assert!((got - sample).abs() <= sample * bound, "q {q}: {got}");
            }
        }
        assert_eq!(h.quantile(0.0), 1.0);
        assert_eq!(h.quantile(1.0), 10.0);
        // Given min, max and sum are kept, and the outer buckets read as min and max.
        let h = ExpHist::from_explicit_buckets(
            &BOUNDS,
            &[1, 2, 3, 4, 5],
            Some(60.0),
            Some(0.5),
            Some(20.0),
            20,
            160,
        )
        .unwrap();
        assert_eq!((h.sum().value(), h.min(), h.max()), (60.0, 0.5, 20.0));
        assert_eq!(h.quantile(0.0), 0.5);
        assert_eq!(h.quantile(1.0), 20.0);
        assert!((h.quantile(0.75) - 20.0).abs() <= 20.0 * relative_error(h.scale()));
    }

    #[test]
    fn explicit_buckets_keep_signs_zeros_and_clamp_into_min_and_max() {
        // (-10, -1] at -sqrt(10); (-1, 1] at 0, a zero; (1, 10] at sqrt(10).
        let h = ExpHist::from_explicit_buckets(
            &[-10.0, -1.0, 1.0, 10.0],
            &[1, 1, 1, 1, 1],
            None,
            None,
            None,
            20,
            160,
        )
        .unwrap();
        assert!(h.validate().is_ok());
        assert_eq!((h.zero_count(), h.count()), (1, 5));
        assert_eq!(h.negative().total(), Some(2));
        assert_eq!(h.positive().total(), Some(2));
        assert_eq!((h.min(), h.max()), (-10.0, 10.0));
        assert!(h.sum().value().abs() < 1e-12);
        let e = relative_error(h.scale());
        let want = -(10f64.sqrt());
        assert!((h.quantile(0.4) - want).abs() <= 10f64.sqrt() * e);
        assert_eq!(h.quantile(0.6), 0.0);
        // A bucket touching zero is recorded at its midpoint.
        let h = ExpHist::from_explicit_buckets(&[-1.0, 0.0], &[0, 2, 0], None, None, None, 20, 160)
            .unwrap();
        assert_eq!((h.min(), h.max(), h.sum().value()), (-0.5, -0.5, -1.0));
        assert_eq!(h.negative().total(), Some(2));
        // Clamped into [min, max]: sqrt(2) is below the given min.
        let h = ExpHist::from_explicit_buckets(
            &BOUNDS,
            &[0, 2, 0, 0, 0],
            None,
            Some(1.6),
            Some(1.7),
            20,
            160,
        )
        .unwrap();
        assert_eq!((h.min(), h.max(), h.sum().value()), (1.6, 1.7, 3.2));
        let q = h.quantile(0.5);
        assert!((1.6..=1.7).contains(&q), "{q}");
        // Non-finite min, max and sum count as missing.
        let h = ExpHist::from_explicit_buckets(
            &BOUNDS,
            &[0, 0, 0, 0, 1],
            Some(f64::NAN),
            Some(f64::NEG_INFINITY),
            Some(f64::INFINITY),
            20,
            160,
        )
        .unwrap();
        assert_eq!((h.min(), h.max(), h.sum().value()), (10.0, 10.0, 10.0));
        // No samples: the empty histogram.
        let h =
            ExpHist::from_explicit_buckets(&BOUNDS, &[0; 5], Some(0.0), None, None, 3, 8).unwrap();
        assert_eq!(h, ExpHist::new(3, 8).unwrap());
    }

    #[test]
    fn explicit_buckets_take_time_in_buckets_not_in_samples() {
        // u64::MAX samples in one bucket: one addition, not 2^64.
        let h = ExpHist::from_explicit_buckets(
            &[1.0, 4.0],
            &[0, u64::MAX, 0],
            None,
            None,
            None,
            20,
            160,
        )
        .unwrap();
        assert_eq!(h.count(), u64::MAX);
        assert_eq!(h.positive().counts(), &[u64::MAX]);
        assert_eq!(h.sum().value(), 2.0 * u64::MAX as f64);
        // Many buckets of both signs, recorded in an order that only appends.
        let bounds: Vec<f64> = (-20_000..20_000).map(|i| f64::from(i) / 7.0).collect();
        let counts = vec![3u64; bounds.len() + 1];
        let h =
            ExpHist::from_explicit_buckets(&bounds, &counts, None, None, None, 20, 160).unwrap();
        assert!(h.validate().is_ok());
        assert_eq!(h.count(), 3 * counts.len() as u64);
        assert!(h.positive().counts().len() <= 160);
    }

    #[test]
    fn explicit_buckets_refuse_bad_layouts_naming_them() {
        let refused = |bounds: &[f64], counts: &[u64], min: Option<f64>, max: Option<f64>| {
            ExpHist::from_explicit_buckets(bounds, counts, None, min, max, 20, 160)
                .unwrap_err()
                .to_string()
        };
        let err = refused(&[1.0, 3.0, 2.0], &[0; 4], None, None);
        assert!(
            err.contains("bound 2 (2) is not above bound 1 (3)"),
            "{err}"
        );
        let err = refused(&[1.0, 1.0], &[0; 3], None, None);
        assert!(err.contains("bound 1"), "{err}");
        let err = refused(&[1.0, f64::NAN], &[0; 3], None, None);
        assert!(err.contains("bound 1 is NaN"), "{err}");
        let err = refused(&[f64::NEG_INFINITY, 1.0], &[0; 3], None, None);
        assert!(err.contains("bound 0 is -inf"), "{err}");
        let err = refused(&[1.0, 2.0], &[1, 2], None, None);
        assert!(err.contains("2 bucket counts for 2 bounds"), "{err}");
        let err = refused(&[], &[], None, None);
        assert!(err.contains("without buckets cannot be merged"), "{err}");
        let err = refused(&[], &[7], None, None);
        assert!(err.contains("no bucket bounds"), "{err}");
        let err = refused(&BOUNDS, &[1; 5], Some(3.0), Some(2.0));
        assert!(err.contains("min 3 is above its max 2"), "{err}");
        let overflow =
            ExpHist::from_explicit_buckets(&[1.0], &[u64::MAX, 1], None, None, None, 20, 160);
        assert!(
            matches!(overflow, Err(ModelError::Overflow { .. })),
            "{overflow:?}"
        );
        // A sum that must be computed and is not finite; with a given sum it need not be.
        let (bounds, counts) = ([1e308, 1.5e308], [0, 10, 0]);
        let huge = ExpHist::from_explicit_buckets(&bounds, &counts, None, None, None, 20, 160);
        assert!(matches!(huge, Err(ModelError::Overflow { .. })), "{huge:?}");
        assert!(
            ExpHist::from_explicit_buckets(&bounds, &counts, Some(1e300), None, None, 20, 160)
                .is_ok()
        );
        let err = ExpHist::from_explicit_buckets(&BOUNDS, &[0; 5], Some(1.0), None, None, 20, 160)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sum 1 but no samples"), "{err}");
        assert!(
            ExpHist::from_explicit_buckets(&BOUNDS, &[1; 5], None, None, None, 21, 160).is_err()
        );
        assert!(ExpHist::from_explicit_buckets(&BOUNDS, &[1; 5], None, None, None, 0, 1).is_err());
    }

    #[test]
    fn a_decrease_is_a_reset_not_a_delta() {
        let earlier = hist(3, 160, &[1.0, 5.0]);
        // More samples, but the bucket of 5 emptied.
        assert_eq!(
            hist(3, 160, &[1.0, 7.0, 9.0]).cumulative_delta(&earlier),
            None
        );
        // Fewer zeros.
        let zeros = hist(3, 160, &[0.0, 0.0]);
        assert_eq!(
            hist(3, 160, &[0.0, 1.0, 2.0]).cumulative_delta(&zeros),
            None
        );
        // Fewer samples.
        assert_eq!(hist(3, 160, &[1.0]).cumulative_delta(&earlier), None);
        // Sums that no stream could have between them.
        let sum_of = |sum: f64, count: u64| {
            ExpHist::from_parts(ExpHistParts {
                scale: 0,
                max_buckets: 160,
                zero_threshold: 0.0,
                zero_count: count,
                positive: Buckets::default(),
                negative: Buckets::default(),
                count,
                sum: Sum {
                    sum,
                    compensation: 0.0,
                },
                min: -1.0,
                max: 1.0,
            })
            .unwrap()
        };
        assert_eq!(
            sum_of(1.7e308, 2).cumulative_delta(&sum_of(-1.7e308, 1)),
            None
        );
    }

    #[test]
    fn a_delta_is_taken_at_the_coarser_scale() {
        // `earlier` is coarser: `self` is downscaled to scale 0, where 1.5 is bucket 0 and
        // 3 bucket 1.
        let earlier = hist(0, 160, &[1.5]);
        let later = hist(3, 160, &[1.5, 1.5, 3.0]);
        let d = later.cumulative_delta(&earlier).unwrap();
        assert_eq!(d.scale(), 0);
        assert_eq!(d.positive(), &Buckets::new(0, vec![1, 1]));
        assert_eq!((d.count(), d.sum().value()), (2, 4.5));
        // Bounds 1 and 4 of the buckets, clamped into [1.5, 3].
        assert_eq!((d.min(), d.max()), (1.5, 3.0));
        assert!(d.validate().is_ok());
        // `earlier` is finer: a copy of it is downscaled.
        let earlier = hist(3, 160, &[1.5, -1.5]);
        let later = hist(0, 160, &[1.5, -1.5, 1.25, 0.0]);
        let d = later.cumulative_delta(&earlier).unwrap();
        assert_eq!(d.scale(), 0);
        assert_eq!(d.positive(), &Buckets::new(0, vec![1]));
        assert!(d.negative().is_empty());
        assert_eq!((d.count(), d.zero_count()), (2, 1));
        // Bucket (1, 2] and the zero bucket: [0, 2], clamped into [-1.5, 1.5].
        assert_eq!((d.min(), d.max()), (0.0, 1.5));
        // Min and max of a single new sample sit within one bucket of it.
        let earlier = hist(20, 160, &[1.0, 100.0]);
        let later = hist(20, 160, &[1.0, 100.0, 3.0]);
        let d = later.cumulative_delta(&earlier).unwrap();
        let width = 2f64.powf(2f64.powi(-d.scale()));
        assert!(d.min() <= 3.0 && d.min() > 3.0 / width, "{}", d.min());
        assert!(d.max() >= 3.0 && d.max() < 3.0 * width, "{}", d.max());
        // An earlier state without buckets does not lower the scale.
        let d = later
            .cumulative_delta(&ExpHist::new(-10, 160).unwrap())
            .unwrap();
        assert_eq!(d.scale(), later.scale());
        assert_eq!(d.positive(), later.positive());
        assert_eq!(d.count(), 3);
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
                "tests/proptest-regressions/exp_hist.txt",
            ))),
            ..ProptestConfig::default()
        }
    }

    /// Finite floats of both signs over many binades, and zeros.
    fn any_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            (-1e3f64..1e3, -60i32..60).prop_map(|(m, e)| m * 2f64.powi(e)),
            -10f64..10.0,
            Just(0.0),
        ]
    }

    /// `h` lowered to `scale` (at most its own, if it holds buckets).
    fn at_scale(h: &ExpHist, scale: i32) -> ExpHist {
        let mut h = h.clone();
        if h.binding_scale().is_some() {
            h.downscale((h.scale - scale) as u32);
        }
        h.scale = scale;
        h
    }

    /// Prometheus' default `le` bounds.
    const DEFAULT_BOUNDS: [f64; 11] = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn cumulative_delta_of_a_continuation_is_what_was_added(
            scale in prop::sample::select(vec![20, 3, 0, -2]),
            max_buckets in prop::sample::select(vec![2u32, 5, 160]),
            a in prop::collection::vec(any_value(), 0..40),
            b in prop::collection::vec(any_value(), 0..40),
        ) {
            let (ha, hb) = (hist(scale, max_buckets, &a), hist(scale, max_buckets, &b));
            let mut m = ha.clone();
            m.merge(&hb).unwrap();
            let d = m.cumulative_delta(&ha);
            prop_assert!(d.is_some());
            let d = d.unwrap();
            prop_assert!(d.validate().is_ok(), "{:?}", d.validate());
            prop_assert_eq!(d.scale(), m.scale());
            let want = at_scale(&hb, m.scale());
            prop_assert_eq!(
                (d.count(), d.zero_count(), d.positive(), d.negative()),
                (want.count(), want.zero_count(), want.positive(), want.negative())
            );
            prop_assert_eq!(d.zero_threshold(), m.zero_threshold());
            let magnitude: f64 = a.iter().chain(&b).map(|v| v.abs()).sum();
            let (got, exact) = (d.sum().value(), hb.sum().value());
            prop_assert!((got - exact).abs() <= 1e-12 * magnitude, "sum {} vs {}", got, exact);
            if hb.is_empty() {
                prop_assert_eq!(&d, &ExpHist::new(m.scale(), max_buckets).unwrap());
            } else {
                // Derived from the buckets, so around the added samples, within m's range.
                let slack = |v: f64| 1e-9 * v.abs();
                prop_assert!(d.min() <= hb.min() + slack(hb.min()), "{} {}", d.min(), hb.min());
                prop_assert!(d.max() >= hb.max() - slack(hb.max()), "{} {}", d.max(), hb.max());
                prop_assert!(d.min() >= m.min() && d.max() <= m.max());
                // The other way round, samples went missing: a reset.
                prop_assert_eq!(ha.cumulative_delta(&m), None);
            }
        }

        #[test]
        fn cumulative_delta_of_a_state_with_itself_is_empty(
            scale in prop::sample::select(vec![20, 3, 0, -2]),
            max_buckets in prop::sample::select(vec![2u32, 5, 160]),
            zero_threshold in prop::sample::select(vec![0.0, 1e-3, 1.0]),
            values in prop::collection::vec(any_value(), 0..40),
        ) {
            let mut x = hist(scale, max_buckets, &values);
            x.zero_threshold = zero_threshold;
            let mut empty = ExpHist::new(x.scale(), max_buckets).unwrap();
            empty.zero_threshold = zero_threshold;
            prop_assert_eq!(x.cumulative_delta(&x), Some(empty));
        }

        #[test]
        fn explicit_quantiles_are_within_the_stated_bound(
            values in prop::collection::vec(
                (-3.0f64..1.3).prop_map(|e| 10f64.powf(e)), 1..300),
            max_buckets in prop::sample::select(vec![8u32, 160]),
        ) {
            let bounds = DEFAULT_BOUNDS;
            let mut counts = vec![0u64; bounds.len() + 1];
            for &v in &values {
                counts[bounds.partition_point(|&b| b < v)] += 1;
            }
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
            let sum: f64 = values.iter().sum();
            let h = ExpHist::from_explicit_buckets(
                &bounds, &counts, Some(sum), Some(min), Some(max), 20, max_buckets,
            ).unwrap();
            prop_assert!(h.validate().is_ok());
            prop_assert_eq!(h.count(), values.len() as u64);
            prop_assert_eq!((h.sum().value(), h.min(), h.max()), (sum, min, max));
            let e = relative_error(h.scale());
            for q in [0.5, 0.9, 0.99] {
                let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
                let exact = sorted[rank - 1];
                // Its explicit bucket, and how far a sample there may be from its value.
                let i = bounds.partition_point(|&b| b < exact);
                let spread = match (i.checked_sub(1).map(|j| bounds[j]), bounds.get(i)) {
                    (Some(lo), Some(&hi)) => (hi / lo).sqrt(),
                    (None, Some(&hi)) => hi / min,
                    (Some(lo), None) => max / lo,
                    (None, None) => unreachable!(),
                };
                let bound = spread * (1.0 + e) - 1.0 + 1e-9;
                let got = h.quantile(q);
                prop_assert!(
                    (got - exact).abs() <= exact * bound,
                    "q {}: {} vs exact {} (bound {})", q, got, exact, bound
                );
            }
        }
    }
}
