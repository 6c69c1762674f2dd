//! Mergeable latency histograms.
//!
//! [`Hist`] is an HdrHistogram of `u64` counts. Float samples are recorded in fixed units
//! of `1 / SCALE` (three decimal places), so a histogram merged from any number of tiers
//! has exactly the buckets it would have had if every sample had been recorded at one
//! node: the relative error of every percentile is bounded by the significant digits
//! (`10^-sigfig`) plus one unit, and does not grow with merging.
//!
//! The buckets are HdrHistogram's, bucket for bucket (lowest discernible value 1, the same
//! sub-bucket count and index math), but only the window of the counts array between the
//! lowest and the highest non-zero bucket is stored, in a column whose width (8, 16, 32 or
//! 64 bits) grows with the largest count. Recording stays one array increment, merging one
//! tight loop over the other side's window. A minute of 5–400 ms latencies at two digits
//! takes about 800 bytes instead of the 13 KiB of a dense auto-resized array.
//!
//! Reported values follow HdrHistogram: percentiles and `max` are the highest value
//! equivalent to the bucket holding them, `min` the lowest, `mean` uses bucket midpoints.
//! The wire format is HdrHistogram V2 (uncompressed), written and read directly from the
//! window: byte for byte what the HdrHistogram library writes for the same content.

use std::fmt;

use crate::error::ModelError;
use crate::kind::Kind;

/// An HDR histogram of non-negative floats with 3 decimal places of unit resolution.
#[derive(Clone)]
pub struct Hist {
    /// Counts-array index of the first entry of `counts`.
    base: u32,
    /// Counts of the buckets `base..base + counts.len()`. Empty when nothing was recorded;
    /// otherwise its first and last entries are non-zero.
    counts: Counts,
    /// Sum of all counts.
    ///
    /// Invariant: at most `i64::MAX`, so every bucket count fits the V2 wire format and
    /// [`Hist::to_v2_bytes`] cannot fail.
    total: u64,
    /// The `highest trackable value` a dense auto-resizing HdrHistogram with the same
    /// history would report (it only grows, as the dense array would). Written in the V2
    /// header so the bytes match the HdrHistogram library's; it bounds nothing here.
    high: u64,
    /// `geo.top_for_high(high)`: the largest value that range covers, cached for
    /// [`Hist::record_n`].
    top: u64,
    /// Bucket geometry for the significant digits.
    geo: Geometry,
}

/// Largest total count a histogram may hold (the V2 format stores counts as `i64`).
const MAX_TOTAL_COUNT: u64 = i64::MAX as u64;

/// Largest `highest trackable value` accepted from V2 bytes: a histogram holding
/// [`Hist::MAX_VALUE`] resizes to at most `2^50 - 1` units. It bounds the counts indices a
/// decoded histogram may use (below 2^23 at 5 digits), so forged bytes cannot make the
/// decoder allocate a huge window.
const MAX_TRACKABLE_UNITS: u64 = 1 << 50;

/// Cookie of an uncompressed V2 histogram (`0x1c849303 | 0x10`).
const V2_COOKIE: u32 = 0x1c84_9313;
/// Bytes of the V2 header before the counts payload.
const V2_HEADER_LEN: usize = 40;
/// `highest trackable value` of a fresh HdrHistogram (`Histogram::new`: `2 * lowest`).
const INITIAL_HIGH: u64 = 2;

/// HdrHistogram's bucket layout for lowest discernible value 1 (unit magnitude 0).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Geometry {
    sigfig: u8,
    /// `log2(sub_bucket_count)`, where `sub_bucket_count = 2^ceil(log2(2 * 10^sigfig))`.
    sub_bucket_count_magnitude: u32,
}

impl Geometry {
    /// Callers pass 1..=5.
    fn new(sigfig: u8) -> Geometry {
        // Largest value with single unit resolution, rounded up to a power of two: the
        // integer form of HdrHistogram's `ceil(log2(2 * 10^sigfig))` (never a power of two).
        let largest = 2 * 10u64.pow(u32::from(sigfig));
        Geometry {
            sigfig,
            sub_bucket_count_magnitude: 64 - (largest - 1).leading_zeros(),
        }
    }

    fn half_count_magnitude(self) -> u32 {
        self.sub_bucket_count_magnitude - 1
    }

    fn sub_bucket_count(self) -> u64 {
        1 << self.sub_bucket_count_magnitude
    }

    fn half_count(self) -> u64 {
        1 << self.half_count_magnitude()
    }

    /// Bucket (power of two) holding `value`.
    fn bucket_for(self, value: u64) -> u32 {
        let mask = self.sub_bucket_count() - 1;
        (64 - self.sub_bucket_count_magnitude) - (value | mask).leading_zeros()
    }

    /// Counts-array index of `value`: `(bucket + 1) * half + sub_bucket - half`.
    fn index_for(self, value: u64) -> u64 {
        let bucket = self.bucket_for(value);
        let sub_bucket = value >> bucket;
        ((u64::from(bucket) + 1) << self.half_count_magnitude()) + sub_bucket - self.half_count()
    }

    /// Lowest value of the bucket at counts-array `index` (HdrHistogram's `value_for`).
    fn value_for(self, index: u64) -> u64 {
        let half = self.half_count();
        let bucket = index >> self.half_count_magnitude();
        let sub_bucket = (index & (half - 1)) + half;
        if bucket == 0 {
            // Lower half of the first bucket.
            sub_bucket - half
        } else {
            sub_bucket << (bucket - 1)
        }
    }

    fn lowest_equivalent(self, value: u64) -> u64 {
        let bucket = self.bucket_for(value);
        (value >> bucket) << bucket
    }

    fn equivalent_range(self, value: u64) -> u64 {
        1 << self.bucket_for(value)
    }

    fn highest_equivalent(self, value: u64) -> u64 {
        if value == u64::MAX {
            u64::MAX
        } else {
            self.lowest_equivalent(value)
                .saturating_add(self.equivalent_range(value))
                - 1
        }
    }

    fn median_equivalent(self, value: u64) -> u64 {
        self.lowest_equivalent(value) + (self.equivalent_range(value) >> 1)
    }

    /// Number of buckets a dense array needs so that `value` is representable: the
    /// smallest `b >= 1` with `sub_bucket_count << (b - 1) > value` (HdrHistogram's
    /// doubling loop, in closed form).
    fn buckets_to_cover(self, value: u64) -> u64 {
        let bits = 64 - value.leading_zeros();
        u64::from(
            (bits + 1)
                .saturating_sub(self.sub_bucket_count_magnitude)
                .max(1),
        )
    }

    /// Length of the dense counts array a histogram with this `high` would have.
    fn len_for_high(self, high: u64) -> u64 {
        (self.buckets_to_cover(high) + 1) * self.half_count()
    }

    /// Largest value the dense counts array for `high` holds.
    fn top_for_high(self, high: u64) -> u64 {
        self.highest_equivalent(self.value_for(self.len_for_high(high) - 1))
    }
}

/// A count column element.
trait Count: Copy + Default + Into<u64> {
    const MAX: u64;
    /// `value` must be at most `MAX`.
    fn narrow(value: u64) -> Self;
    fn wide(self) -> u64 {
        self.into()
    }
}

macro_rules! impl_count {
    ($($t:ty),*) => {$(
        impl Count for $t {
            const MAX: u64 = <$t>::MAX as u64;
            #[allow(clippy::cast_possible_truncation)]
            fn narrow(value: u64) -> Self {
                debug_assert!(value <= <Self as Count>::MAX);
                value as $t
            }
        }
    )*};
}
impl_count!(u8, u16, u32, u64);

/// The counts column, as narrow as the largest count allows (it only widens).
#[derive(Clone)]
enum Counts {
    W8(Vec<u8>),
    W16(Vec<u16>),
    W32(Vec<u32>),
    W64(Vec<u64>),
}

/// Runs `$body` with `$v` bound to the column's vector, whatever its width.
macro_rules! with_counts {
    ($counts:expr, $v:ident => $body:expr) => {
        match $counts {
            Counts::W8($v) => $body,
            Counts::W16($v) => $body,
            Counts::W32($v) => $body,
            Counts::W64($v) => $body,
        }
    };
}

/// Width class (0..=3 for 8..=64 bits) needed to hold `value`.
fn width_for(value: u64) -> u8 {
    if value <= u64::from(u8::MAX) {
        0
    } else if value <= u64::from(u16::MAX) {
        1
    } else if value <= u64::from(u32::MAX) {
        2
    } else {
        3
    }
}

/// Capacity for a window of `len` growing by `n`: an eighth to spare, so that a window
/// growing bucket by bucket is not copied at every step, without the doubling of `Vec`
/// (the window is most of a histogram's memory).
fn grown_capacity(len: usize, n: usize) -> usize {
    len + n + len / 8
}

/// Allocated bytes of a vector.
fn capacity_bytes<T>(v: &Vec<T>) -> usize {
    v.capacity() * std::mem::size_of::<T>()
}

/// Re-stores `src` in a vector of another element type (values known to fit).
fn convert<A: Count, B: Count>(src: &[A]) -> Vec<B> {
    src.iter().map(|&c| B::narrow(c.wide())).collect()
}

impl Counts {
    fn width(&self) -> u8 {
        match self {
            Counts::W8(_) => 0,
            Counts::W16(_) => 1,
            Counts::W32(_) => 2,
            Counts::W64(_) => 3,
        }
    }

    /// `len` zero counts, `width` wide.
    fn zeros(width: u8, len: usize) -> Counts {
        match width {
            0 => Counts::W8(vec![0; len]),
            1 => Counts::W16(vec![0; len]),
            2 => Counts::W32(vec![0; len]),
            _ => Counts::W64(vec![0; len]),
        }
    }

    fn len(&self) -> usize {
        with_counts!(self, v => v.len())
    }

    fn get(&self, at: usize) -> u64 {
        with_counts!(self, v => v.get(at).map_or(0, |&c| Count::wide(c)))
    }

    fn heap_bytes(&self) -> usize {
        with_counts!(self, v => capacity_bytes(v))
    }

    /// Re-stores the column at least `width` wide.
    fn widen(&mut self, width: u8) {
        if width <= self.width() {
            return;
        }
        *self = match width {
            1 => Counts::W16(with_counts!(&*self, v => convert(v))),
            2 => Counts::W32(with_counts!(&*self, v => convert(v))),
            _ => Counts::W64(with_counts!(&*self, v => convert(v))),
        };
    }

    /// Inserts `n` zero counts in front.
    fn grow_front(&mut self, n: usize) {
        with_counts!(self, v => {
            let mut grown = Vec::with_capacity(grown_capacity(v.len(), n));
            grown.resize(n, Default::default());
            grown.extend_from_slice(v);
            *v = grown;
        });
    }

    /// Appends `n` zero counts.
    fn grow_back(&mut self, n: usize) {
        with_counts!(self, v => {
            let len = v.len();
            if v.capacity() < len + n {
                v.reserve_exact(grown_capacity(len, n) - len);
            }
            v.resize(len + n, Default::default());
        });
    }

    /// Adds `more` to the count at `at` (< len); the caller keeps the total within
    /// `i64::MAX`.
    fn add_at(&mut self, at: usize, more: u64) {
        let Some(sum) = with_counts!(&mut *self, v => try_add(v, at, more)) else {
            return;
        };
        self.widen(width_for(sum));
        with_counts!(self, v => {
            if let Some(c) = v.get_mut(at) {
                *c = Count::narrow(sum);
            }
        });
    }

    /// Whether both columns hold the same values, whatever their widths.
    fn same_values(&self, other: &Counts) -> bool {
        match (self, other) {
            (Counts::W8(a), Counts::W8(b)) => a == b,
            (Counts::W16(a), Counts::W16(b)) => a == b,
            (Counts::W32(a), Counts::W32(b)) => a == b,
            (Counts::W64(a), Counts::W64(b)) => a == b,
            _ => self.len() == other.len() && (0..self.len()).all(|i| self.get(i) == other.get(i)),
        }
    }
}

/// Adds `more` to `v[at]` if the sum fits `C`; otherwise returns the sum to store wider.
fn try_add<C: Count>(v: &mut [C], at: usize, more: u64) -> Option<u64> {
    let c = v.get_mut(at)?;
    let sum = c.wide() + more;
    if sum <= C::MAX {
        *c = C::narrow(sum);
        None
    } else {
        Some(sum)
    }
}

/// Adds `src` into `dst` element by element from position `from`. Stops at the first sum
/// that does not fit `A`, leaving it unwritten, and returns its position and value.
fn add_into<A: Count, B: Count>(dst: &mut [A], src: &[B], from: usize) -> Option<(usize, u64)> {
    let dst = dst.get_mut(from..)?;
    let src = src.get(from..)?;
    for (i, (d, &s)) in dst.iter_mut().zip(src).enumerate() {
        let sum = d.wide() + s.wide();
        if sum > A::MAX {
            return Some((from + i, sum));
        }
        *d = A::narrow(sum);
    }
    None
}

impl Hist {
    /// Values are recorded as `round(value * SCALE)` units: three decimal places.
    pub const SCALE: f64 = 1000.0;
    /// Largest recordable value (10^12, e.g. 31 years in milliseconds).
    pub const MAX_VALUE: f64 = 1e12;

    /// An empty histogram keeping `sigfig` significant decimal digits (1..=5).
    pub fn new(sigfig: u8) -> Result<Hist, ModelError> {
        if !(1..=5).contains(&sigfig) {
            return Err(ModelError::InvalidValue {
                kind: Kind::Histogram,
                reason: format!(
                    "histogram significant digits must be between 1 and 5, got {sigfig}"
                ),
            });
        }
        let geo = Geometry::new(sigfig);
        Ok(Hist {
            base: 0,
            counts: Counts::W8(Vec::new()),
            total: 0,
            high: INITIAL_HIGH,
            top: geo.top_for_high(INITIAL_HIGH),
            geo,
        })
    }

    /// Upper bound of [`Hist::to_v2_bytes`]'s length for any histogram of `sigfig`
    /// digits (1..=5; others are clamped): the header, then every bucket up to the one
    /// of [`Hist::MAX_VALUE`] non-zero, each count at most 9 bytes, and the run of zeros
    /// before the window at most 4. About 50 KB at 2 digits, 376 KB at 3, 40 MB at 5:
    /// what a node's message limit must leave room for (it bounds one increment).
    pub fn max_v2_len(sigfig: u8) -> usize {
        let geo = Geometry::new(sigfig.clamp(1, 5));
        let buckets = geo.index_for((Self::MAX_VALUE * Self::SCALE) as u64) + 1;
        V2_HEADER_LEN + 9 * buckets as usize + 4
    }

    /// Significant decimal digits kept; only histograms with equal digits merge.
    pub fn sigfig(&self) -> u8 {
        self.geo.sigfig
    }

    /// Checks that `value` is recordable: finite, `>= 0` and `<= MAX_VALUE`.
    pub fn check_value(value: f64) -> Result<(), ModelError> {
        if value.is_finite() && (0.0..=Self::MAX_VALUE).contains(&value) {
            Ok(())
        } else {
            Err(ModelError::InvalidValue {
                kind: Kind::Histogram,
                reason: format!(
                    "histogram value must be a finite number between 0 and {}, got {value}",
                    Self::MAX_VALUE
                ),
            })
        }
    }

    /// Records one sample.
    pub fn record(&mut self, value: f64) -> Result<(), ModelError> {
        self.record_n(value, 1)
    }

    /// Records `count` samples of `value`. Recording zero samples does nothing.
    pub fn record_n(&mut self, value: f64, count: u64) -> Result<(), ModelError> {
        Self::check_value(value)?;
        if count == 0 {
            return Ok(());
        }
        self.check_total(count)?;
        // In range by `check_value`: at most 10^15 units, so the index is below 2^23.
        let units = (value * Self::SCALE).round() as u64;
        let index = self.geo.index_for(units) as u32;
        if units > self.top {
            // What the dense histogram's auto-resize would report as its new range.
            self.set_high(self.geo.top_for_high(units));
        }
        self.cover(index, index + 1);
        self.counts.add_at((index - self.base) as usize, count);
        self.total += count;
        Ok(())
    }

    fn set_high(&mut self, high: u64) {
        self.high = high;
        self.top = self.geo.top_for_high(high);
    }

    /// One past the last index of the window.
    fn end(&self) -> u32 {
        // The window lies within the 2^23 indices of the largest value.
        self.base + self.counts.len() as u32
    }

    /// Grows the window to cover the indices `lo..hi` (non-empty).
    fn cover(&mut self, lo: u32, hi: u32) {
        if self.counts.len() == 0 {
            self.base = lo;
            self.counts = Counts::zeros(self.counts.width(), (hi - lo) as usize);
            return;
        }
        if lo < self.base {
            self.counts.grow_front((self.base - lo) as usize);
            self.base = lo;
        }
        let end = self.end();
        if hi > end {
            self.counts.grow_back((hi - end) as usize);
        }
    }

    /// Adds every count of `other` (bucket-wise, lossless). Refuses histograms with other
    /// significant digits. On error `self` is unchanged.
    pub fn merge(&mut self, other: &Hist) -> Result<(), ModelError> {
        self.check_merge(other)?;
        if other.is_empty() {
            return Ok(());
        }
        // As the dense histogram's `add`: grow the range to the other's max if beyond.
        let other_max = other.max_units();
        if self.top < other_max {
            self.set_high(other_max);
        }
        self.cover(other.base, other.end());
        let offset = (other.base - self.base) as usize;
        let mut from = 0;
        // Widen whenever a sum does not fit, and carry on from there.
        while let Some((at, sum)) = with_counts!(&mut self.counts, dst => {
            with_counts!(&other.counts, src => add_into(dst.get_mut(offset..).unwrap_or_default(), src, from))
        }) {
            self.counts.widen(width_for(sum));
            from = at;
        }
        self.total += other.total;
        Ok(())
    }

    /// Whether [`Hist::merge`] would accept `other`: the same precision, and a
    /// total count that stays within [`MAX_TOTAL_COUNT`]. Changes nothing.
    pub fn check_merge(&self, other: &Hist) -> Result<(), ModelError> {
        if self.sigfig() != other.sigfig() {
            return Err(ModelError::PrecisionMismatch {
                expected: self.sigfig(),
                found: other.sigfig(),
            });
        }
        if other.is_empty() {
            return Ok(());
        }
        self.check_total(other.count())
    }

    /// Refuses to grow the total count past [`MAX_TOTAL_COUNT`].
    fn check_total(&self, more: u64) -> Result<(), ModelError> {
        match self.count().checked_add(more) {
            Some(total) if total <= MAX_TOTAL_COUNT => Ok(()),
            _ => Err(ModelError::InvalidValue {
                kind: Kind::Histogram,
                reason: format!(
                    "histogram count would exceed {MAX_TOTAL_COUNT} (has {}, adding {more})",
                    self.count()
                ),
            }),
        }
    }

    /// Number of recorded samples.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Highest value (units) equivalent to the largest sample; 0 if empty.
    fn max_units(&self) -> u64 {
        match self.counts.len() {
            0 => 0,
            len => self
                .geo
                .highest_equivalent(self.geo.value_for(u64::from(self.base) + len as u64 - 1)),
        }
    }

    /// Lowest value equivalent to the smallest sample; NaN if empty.
    pub fn min(&self) -> f64 {
        if self.is_empty() {
            f64::NAN
        } else {
            self.geo.value_for(u64::from(self.base)) as f64 / Self::SCALE
        }
    }

    /// Highest value equivalent to the largest sample; NaN if empty.
    pub fn max(&self) -> f64 {
        if self.is_empty() {
            f64::NAN
        } else {
            self.max_units() as f64 / Self::SCALE
        }
    }

    /// Mean of the samples (from bucket midpoints); NaN if empty.
    pub fn mean(&self) -> f64 {
        if self.is_empty() {
            return f64::NAN;
        }
        let (geo, base, total) = (self.geo, u64::from(self.base), self.total as f64);
        // The same sum, in the same order, as HdrHistogram's `mean`.
        let sum = with_counts!(&self.counts, v => {
            v.iter().enumerate().fold(0.0f64, |acc, (i, &c)| {
                let c = Count::wide(c);
                if c == 0 {
                    return acc;
                }
                let mid = geo.median_equivalent(geo.value_for(base + i as u64));
                acc + mid as f64 * c as f64 / total
            })
        });
        sum / Self::SCALE
    }

    /// Value at quantile `q` (clamped to 0..=1): the highest value equivalent to the
    /// smallest sample `v` such that at least `ceil(q * count)` samples are `<= v`.
    /// NaN if empty or `q` is NaN.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.is_empty() || q.is_nan() {
            return f64::NAN;
        }
        let q = q.clamp(0.0, 1.0);
        // HdrHistogram's `value_at_quantile`. Above 2^53 the float product may round
        // past the total, where no bucket would be found: the largest sample is the
        // answer then.
        let target = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let found = with_counts!(&self.counts, v => {
            let mut seen = 0u64;
            v.iter().position(|&c| {
                seen += Count::wide(c);
                seen >= target
            })
        });
        let units = found.map_or(0, |i| {
            let value = self.geo.value_for(u64::from(self.base) + i as u64);
            if q == 0.0 {
                self.geo.lowest_equivalent(value)
            } else {
                self.geo.highest_equivalent(value)
            }
        });
        units as f64 / Self::SCALE
    }

    /// The non-empty buckets, lowest first: `(lowest, highest, count)`, the
    /// smallest and largest value each bucket stands for (both inclusive), in
    /// the recorded unit.
    pub fn buckets(&self) -> Vec<(f64, f64, u64)> {
        let (geo, base) = (self.geo, u64::from(self.base));
        with_counts!(&self.counts, v => {
            v.iter()
                .enumerate()
                .filter_map(|(i, &c)| {
                    let c = Count::wide(c);
                    (c != 0).then(|| {
                        let value = geo.value_for(base + i as u64);
                        let low = geo.lowest_equivalent(value) as f64 / Self::SCALE;
                        let high = geo.highest_equivalent(value) as f64 / Self::SCALE;
                        (low, high, c)
                    })
                })
                .collect()
        })
    }

    /// Heap memory of the counts window (allocated capacity), in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.counts.heap_bytes()
    }

    /// Serialises in the HdrHistogram V2 format (uncompressed), which any HdrHistogram
    /// implementation can read: the bytes the HdrHistogram library writes for the same
    /// content and range.
    pub fn to_v2_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_v2(&mut out);
        out
    }

    /// Appends the V2 bytes of [`Hist::to_v2_bytes`] to `out`.
    pub fn write_v2(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&V2_COOKIE.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // payload length, set below
        out.extend_from_slice(&0u32.to_be_bytes()); // normalising index offset
        out.extend_from_slice(&u32::from(self.sigfig()).to_be_bytes());
        out.extend_from_slice(&1u64.to_be_bytes()); // lowest discernible value
        out.extend_from_slice(&self.high.to_be_bytes());
        out.extend_from_slice(&1.0f64.to_be_bytes()); // integer to double ratio
        let payload_at = out.len();
        if self.is_empty() {
            // The library writes the counts up to the index of `max()`, 0 when empty.
            out.push(0);
        } else {
            // Written into a slice sized for the worst case. Each bucket of the window is
            // a count (at most 2, 3, 5 or 9 bytes by the column's width), a single zero
            // (1 byte), or one of at least two zeros written as one run (at most 4 bytes,
            // indices being below 2^23); one more run precedes the window.
            let count_bytes = [2, 3, 5, 9][usize::from(self.counts.width())];
            let len = self.counts.len();
            out.resize(payload_at + count_bytes * len + 4 * (len / 2 + 2), 0);
            let buf = &mut out[payload_at..];
            let (mut at, mut next, base) = (0usize, 0u32, self.base);
            with_counts!(&self.counts, v => {
                for (i, &c) in v.iter().enumerate() {
                    let c = Count::wide(c);
                    if c == 0 {
                        continue;
                    }
                    let index = base + i as u32;
                    let zeros = index - next;
                    if zeros == 1 {
                        at += 1; // a single zero is written as a count (buf is zeroed)
                    } else if zeros > 1 {
                        at += put_varint(&mut buf[at..], zig_zag(-i64::from(zeros)));
                    }
                    // Counts are <= i64::MAX by the total invariant; most fit one byte.
                    let encoded = c << 1;
                    if encoded < 0x80 {
                        buf[at] = encoded as u8;
                        at += 1;
                    } else {
                        at += put_varint(&mut buf[at..], encoded);
                    }
                    next = index + 1;
                }
            });
            out.truncate(payload_at + at);
        }
        // The payload of a histogram is far below 4 GiB (at most 11 bytes per bucket).
        let payload_len = (out.len() - payload_at) as u32;
        out[start + 4..start + 8].copy_from_slice(&payload_len.to_be_bytes());
    }

    /// Reads V2 bytes written by [`Hist::to_v2_bytes`] (or any HdrHistogram with lowest
    /// discernible value 1 and 1..=5 significant digits). The result auto-resizes like a
    /// fresh histogram. Garbage is rejected with [`ModelError::Decode`], never a panic.
    pub fn from_v2_bytes(bytes: &[u8]) -> Result<Hist, ModelError> {
        decode_v2(bytes).map_err(|reason| ModelError::Decode(format!("histogram: {reason}")))
    }
}

fn zig_zag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

/// Writes the HdrHistogram varint of `value` (see [`read_varint`]) at the start of `buf`,
/// which has room for 9 bytes; returns the bytes written.
fn put_varint(buf: &mut [u8], mut value: u64) -> usize {
    for (i, b) in buf.iter_mut().take(8).enumerate() {
        if value < 0x80 {
            *b = value as u8;
            return i + 1;
        }
        *b = (value as u8 & 0x7f) | 0x80;
        value >>= 7;
    }
    if let Some(b) = buf.get_mut(8) {
        *b = value as u8; // the 9th byte carries all 8 remaining bits
    }
    9
}

/// Calls `f` with each number of a V2 counts payload (zig-zag decoded), in order. Fails on
/// a truncated varint or when `f` fails.
fn for_each_number(
    payload: &[u8],
    mut f: impl FnMut(i64) -> Result<(), String>,
) -> Result<(), String> {
    let mut at = 0;
    while let Some(&first) = payload.get(at) {
        let encoded = if first < 0x80 {
            // Most counts and short zero runs fit one byte.
            at += 1;
            u64::from(first)
        } else {
            let (encoded, used) = read_varint(payload.get(at..).unwrap_or_default())
                .ok_or("truncated varint in counts")?;
            at += used;
            encoded
        };
        f(((encoded >> 1) as i64) ^ -((encoded & 1) as i64))?;
    }
    Ok(())
}

/// Decodes and validates a V2 histogram without trusting anything it declares.
///
/// Checks: exact length, cookie, no normalising offset, 1..=5 digits, lowest value 1,
/// bounded range, integer-to-double ratio 1, well-formed varints, no `i64::MIN`, a total
/// count within `i64::MAX`, and no count at an index beyond the dense array the declared
/// range implies (what the HdrHistogram library rejects). A first pass validates and finds
/// the window and the widest count, so the window is allocated once, at its exact size.
fn decode_v2(bytes: &[u8]) -> Result<Hist, String> {
    let (geo, high, payload) = v2_header(bytes)?;
    // Below 2^23 since high <= 2^50.
    let index_limit = geo.len_for_high(high);
    let scan = scan_v2_payload(payload, index_limit)?;
    let (base, counts) = match scan.window {
        None => (0, Counts::W8(Vec::new())),
        Some((first, last)) => (
            first as u32,
            fill_v2_window(payload, first, last, scan.widest)?,
        ),
    };
    Ok(Hist {
        base,
        counts,
        total: scan.total,
        high,
        top: geo.top_for_high(high),
        geo,
    })
}

/// Checks the V2 header and returns the geometry it declares, its highest
/// trackable value and the payload after it.
fn v2_header(bytes: &[u8]) -> Result<(Geometry, u64, &[u8]), String> {
    if bytes.len() < V2_HEADER_LEN {
        return Err(format!(
            "{} bytes is shorter than the {V2_HEADER_LEN}-byte header",
            bytes.len()
        ));
    }
    let be_u32 = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[at..at + 4]);
        u32::from_be_bytes(b)
    };
    let be_u64 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let cookie = be_u32(0);
    if cookie != V2_COOKIE {
        return Err(format!(
            "cookie {cookie:#010x} is not an uncompressed v2 histogram"
        ));
    }
    let payload_len = be_u32(4) as usize;
    if payload_len != bytes.len() - V2_HEADER_LEN {
        return Err(format!(
            "payload length {payload_len} does not match the {} bytes present",
            bytes.len() - V2_HEADER_LEN
        ));
    }
    if be_u32(8) != 0 {
        return Err("normalising index offsets are not supported".into());
    }
    let digits = be_u32(12);
    if !(1..=5).contains(&digits) {
        return Err(format!(
            "significant digits must be between 1 and 5, got {digits}"
        ));
    }
    let low = be_u64(16);
    if low != 1 {
        return Err(format!("lowest discernible value must be 1, got {low}"));
    }
    let high = be_u64(24);
    if !(2..=MAX_TRACKABLE_UNITS).contains(&high) {
        return Err(format!("highest trackable value {high} is out of range"));
    }
    if f64::from_bits(be_u64(32)) != 1.0 {
        return Err("integer to double conversion ratio must be 1".into());
    }
    // Checked 1..=5 above.
    Ok((Geometry::new(digits as u8), high, &bytes[V2_HEADER_LEN..]))
}

/// What the validating first pass over a V2 payload found.
struct V2Scan {
    /// First and last index with a non-zero count; `None` when empty.
    window: Option<(u64, u64)>,
    /// Sum of the counts.
    total: u64,
    /// The largest single count, which decides the counts' width.
    widest: u64,
}

/// Pass 1: validates every number of the payload and finds the window and
/// the widest count, so the window is allocated once, at its exact size.
fn scan_v2_payload(payload: &[u8], index_limit: u64) -> Result<V2Scan, String> {
    let (mut index, mut total, mut widest) = (0u64, 0u64, 0u64);
    let mut window: Option<(u64, u64)> = None;
    for_each_number(payload, |n| {
        if n == i64::MIN {
            return Err("zero run length out of range".into());
        }
        if n < 0 {
            // Zero runs past the end are harmless (the library accepts them) but bounded.
            index = index
                .checked_add(n.unsigned_abs())
                .ok_or("zero runs overflow the index")?;
            return Ok(());
        }
        if n > 0 {
            if index >= index_limit {
                return Err(format!(
                    "count at index {index} is beyond the {index_limit} buckets of the declared range"
                ));
            }
            total = total
                .checked_add(n as u64)
                .filter(|t| *t <= MAX_TOTAL_COUNT)
                .ok_or("total count exceeds i64::MAX")?;
            widest = widest.max(n as u64);
            window = Some(window.map_or((index, index), |(first, _)| (first, index)));
        }
        index = index.checked_add(1).ok_or("index overflow")?;
        Ok(())
    })?;
    Ok(V2Scan {
        window,
        total,
        widest,
    })
}

/// Pass 2: the counts of the window `first..=last` (the payload is known to
/// be well formed now). Indices are below the index limit, < 2^23.
fn fill_v2_window(payload: &[u8], first: u64, last: u64, widest: u64) -> Result<Counts, String> {
    let mut counts = Counts::zeros(width_for(widest), (last - first + 1) as usize);
    let mut index = 0u64;
    with_counts!(&mut counts, v => for_each_number(payload, |n| {
        if n < 0 {
            index = index.saturating_add(n.unsigned_abs());
            return Ok(());
        }
        if n > 0
            && let Some(c) = index.checked_sub(first).and_then(|i| v.get_mut(i as usize))
        {
            *c = Count::narrow(n as u64);
        }
        index = index.saturating_add(1);
        Ok(())
    }))?;
    Ok(counts)
}

/// The HdrHistogram varint: little-endian groups of 7 bits with a continuation bit, except
/// that a 9th byte contributes all 8 of its bits. Returns the value and bytes used.
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(9) {
        if i == 8 {
            return Some((value | (u64::from(b) << 56), 9));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

impl PartialEq for Hist {
    /// Equal when the recorded content is: same digits, same total, same count in every
    /// bucket. The column width and the dense-equivalent range are irrelevant.
    fn eq(&self, other: &Hist) -> bool {
        self.sigfig() == other.sigfig()
            && self.count() == other.count()
            && (self.is_empty() || self.base == other.base)
            && self.counts.same_values(&other.counts)
    }
}

impl fmt::Debug for Hist {
    /// A summary; the buckets are far too many to print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hist")
            .field("sigfig", &self.sigfig())
            .field("count", &self.count())
            .field("min", &self.min())
            .field("max", &self.max())
            .field("heap_bytes", &self.heap_bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(sigfig: u8, values: &[f64]) -> Hist {
        let mut h = Hist::new(sigfig).unwrap();
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn new_accepts_one_to_five_digits() {
        for s in 1..=5 {
            assert_eq!(Hist::new(s).unwrap().sigfig(), s);
        }
        assert!(matches!(Hist::new(0), Err(ModelError::InvalidValue { .. })));
        assert!(matches!(Hist::new(6), Err(ModelError::InvalidValue { .. })));
    }

    #[test]
    fn buckets_cover_every_recorded_value_once() {
        let values = [0.5, 0.5, 3.0, 250.0, 251.0, 9000.0];
        let h = hist(2, &values);
        let buckets = h.buckets();
        assert_eq!(buckets.iter().map(|b| b.2).sum::<u64>(), 6);
        assert!(buckets.windows(2).all(|w| w[0].1 < w[1].0), "{buckets:?}");
        for v in values {
            let holding = buckets.iter().filter(|b| b.0 <= v && v <= b.1).count();
            assert_eq!(holding, 1, "{v} in {buckets:?}");
        }
        assert!(Hist::new(2).unwrap().buckets().is_empty());
    }

    #[test]
    fn empty_histogram_reports_nan() {
        let h = Hist::new(2).unwrap();
        assert_eq!(h.count(), 0);
        assert!(h.is_empty());
        assert!(h.min().is_nan());
        assert!(h.max().is_nan());
        assert!(h.mean().is_nan());
        assert!(h.quantile(0.5).is_nan());
    }

    #[test]
    fn records_with_three_decimal_places() {
        let h = hist(3, &[0.001, 0.0014, 1.5, 100.0]);
        assert_eq!(h.count(), 4);
        assert_eq!(h.min(), 0.001);
        assert_eq!(h.quantile(0.0), 0.001);
        assert_eq!(h.quantile(0.5), 0.001); // 0.0014 rounds to 0.001
        assert_eq!(h.quantile(0.75), 1.5);
        assert!((h.max() - 100.0).abs() <= 100.0 * 1e-3);
        // Zero is recordable and is the minimum.
        let h = hist(2, &[0.0, 5.0]);
        assert_eq!(h.min(), 0.0);
    }

    #[test]
    fn invalid_values_are_refused() {
        let mut h = Hist::new(2).unwrap();
        for bad in [-0.5, f64::NAN, f64::INFINITY, Hist::MAX_VALUE * 1.01] {
            assert!(matches!(
                h.record(bad),
                Err(ModelError::InvalidValue {
                    kind: Kind::Histogram,
                    ..
                })
            ));
        }
        assert!(h.record(Hist::MAX_VALUE).is_ok());
        assert_eq!(h.count(), 1);
    }

    #[test]
    fn record_n_of_zero_changes_nothing() {
        let mut h = hist(2, &[3.0]);
        h.record_n(1000.0, 0).unwrap();
        assert_eq!(h, hist(2, &[3.0]));
        assert!(h.max() < 4.0);
    }

    #[test]
    fn total_count_is_capped_at_i64_max() {
        let mut h = Hist::new(2).unwrap();
        h.record_n(1.0, MAX_TOTAL_COUNT).unwrap();
        let before = h.clone();
        assert!(h.record(1.0).is_err());
        assert!(h.merge(&before).is_err());
        assert_eq!(h, before);
        // Still serialisable at the cap.
        assert_eq!(Hist::from_v2_bytes(&h.to_v2_bytes()).unwrap(), h);
    }

    #[test]
    fn live_state_stays_small() {
        let mut h = Hist::new(2).unwrap();
        assert_eq!(h.heap_bytes(), 0);
        for i in 1..=1000 {
            h.record(f64::from(i)).unwrap(); // 1 ms .. 1 s
        }
        // Three decades at two digits: about 1 300 one-byte counts.
        assert!(h.heap_bytes() < 2048, "{}", h.heap_bytes());
        // Counts widen only as far as they must.
        h.record_n(500.0, 1_000_000).unwrap();
        assert!(h.heap_bytes() < 8192, "{}", h.heap_bytes());
    }

    #[test]
    fn merge_refuses_other_precision_and_leaves_self_unchanged() {
        let mut a = hist(2, &[1.0, 2.0]);
        let b = hist(3, &[1.0]);
        let before = a.clone();
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
    fn equality_ignores_array_size() {
        // `a` grows in one step, `b` grows gradually and through merges.
        let a = hist(2, &[1e6, 1.0, 500.0]);
        let mut b = hist(2, &[1.0]);
        b.merge(&hist(2, &[500.0])).unwrap();
        b.merge(&hist(2, &[1e6])).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, hist(2, &[1e6, 1.0]));
        assert_ne!(hist(2, &[1.0]), hist(3, &[1.0]));
    }

    #[test]
    fn merged_min_max_match_single_node() {
        let mut a = hist(2, &[7.5, 900.0]);
        a.merge(&hist(2, &[0.25, 12.0])).unwrap();
        let all = hist(2, &[7.5, 900.0, 0.25, 12.0]);
        assert_eq!(a.min(), all.min());
        assert_eq!(a.max(), all.max());
        assert_eq!(a.mean(), all.mean());
    }

    #[test]
    fn v2_roundtrip_preserves_content_and_auto_resize() {
        for sigfig in 1..=5 {
            let h = hist(sigfig, &[0.0, 0.5, 12.5, 12.5, 980.0, 1e9]);
            let bytes = h.to_v2_bytes();
            let mut back = Hist::from_v2_bytes(&bytes).unwrap();
            assert_eq!(back, h);
            assert_eq!(back.sigfig(), sigfig);
            assert_eq!(back.quantile(0.99), h.quantile(0.99));
            // Still auto-resizing: a larger value than anything seen is accepted.
            back.record(Hist::MAX_VALUE).unwrap();
            assert_eq!(back.count(), 7);
        }
        let empty = Hist::new(2).unwrap();
        assert_eq!(Hist::from_v2_bytes(&empty.to_v2_bytes()).unwrap(), empty);
    }

    #[test]
    fn largest_value_fits_the_decoder_bound() {
        for sigfig in 1..=5 {
            let h = hist(sigfig, &[Hist::MAX_VALUE]);
            assert!(h.high <= MAX_TRACKABLE_UNITS, "sigfig {sigfig}: {}", h.high);
            assert_eq!(Hist::from_v2_bytes(&h.to_v2_bytes()).unwrap(), h);
        }
    }

    #[test]
    fn max_v2_len_bounds_the_fullest_histogram() {
        for sigfig in 1..=2u8 {
            let geo = Geometry::new(sigfig);
            let top = geo.index_for((Hist::MAX_VALUE * Hist::SCALE) as u64);
            // Every bucket non-zero, with counts as large as the total allows.
            let count = MAX_TOTAL_COUNT / (top + 1);
            let mut h = Hist::new(sigfig).unwrap();
            for index in 0..=top {
                let value = geo.value_for(index) as f64 / Hist::SCALE;
                h.record_n(value.min(Hist::MAX_VALUE), count).unwrap();
            }
            let (len, max) = (h.to_v2_bytes().len(), Hist::max_v2_len(sigfig));
            assert!(
                len <= max && len * 10 >= max * 8,
                "sigfig {sigfig}: {len} of {max}"
            );
        }
        assert!(Hist::max_v2_len(2) < 60_000);
        assert!(Hist::max_v2_len(5) < 64 << 20);
    }

    #[test]
    fn v2_garbage_is_rejected() {
        let good = hist(2, &[1.0, 2.0, 3.0]).to_v2_bytes();
        let reject = |bytes: &[u8]| {
            assert!(matches!(
                Hist::from_v2_bytes(bytes),
                Err(ModelError::Decode(_))
            ))
        };
        reject(&[]);
        reject(&good[..good.len() - 1]);
        reject(&good[..V2_HEADER_LEN - 1]);
        let mut longer = good.clone();
        longer.push(0);
        reject(&longer);
        for (at, value) in [
            (0, 0u8),
            (11, 1),
            (15, 0),
            (15, 6),
            (23, 2),
            (24, 0xff),
            (32, 0),
        ] {
            let mut bad = good.clone();
            bad[at] = value;
            reject(&bad);
        }
        // Declared payload length far beyond the bytes present must not allocate it.
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        reject(&bad);
        // A zero run of i64::MIN (zig-zag u64::MAX).
        let mut bad = good[..V2_HEADER_LEN].to_vec();
        bad.extend_from_slice(&[0xff; 9]);
        bad[4..8].copy_from_slice(&9u32.to_be_bytes());
        reject(&bad);
        // Counts summing past i64::MAX.
        let mut bad = good[..V2_HEADER_LEN].to_vec();
        let big = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]; // zig-zag i64::MAX
        bad.extend_from_slice(&big);
        bad.extend_from_slice(&big);
        bad[4..8].copy_from_slice(&18u32.to_be_bytes());
        reject(&bad);
        // Counts beyond the declared range.
        let mut bad = good[..V2_HEADER_LEN].to_vec();
        bad.extend_from_slice(&[0x81, 0x80, 0x80, 0x01, 0x02]); // skip ~1M zeros, then count 1
        bad[4..8].copy_from_slice(&5u32.to_be_bytes());
        reject(&bad);
    }

    #[test]
    fn varint_reader_matches_the_format() {
        assert_eq!(read_varint(&[0x05]), Some((5, 1)));
        assert_eq!(read_varint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(read_varint(&[0xff; 9]), Some((u64::MAX, 9)));
        assert_eq!(read_varint(&[0x80]), None);
        assert_eq!(read_varint(&[]), None);
    }

    #[test]
    fn quantiles_of_counts_beyond_float_precision_stay_within_min_and_max() {
        // A total above 2^53 rounds up as a float: q = 1 once asked for one sample more
        // than the histogram holds and answered 0.
        let mut h = Hist::new(5).unwrap();
        h.record_n(0.054, 162_129_260_167_822_143).unwrap();
        assert_eq!(h.quantile(1.0), h.max());
        assert_eq!(h.quantile(0.999), h.max());
        let back = Hist::from_v2_bytes(&h.to_v2_bytes()).unwrap();
        assert_eq!(back.quantile(1.0), back.max());
        assert!(back.max() > 0.0);
    }

    #[test]
    fn debug_is_a_summary() {
        let s = format!("{:?}", hist(2, &[1.0]));
        assert!(s.starts_with("Hist { sigfig: 2, count: 1"), "{s}");
    }
}
