//! Mergeable latency histograms.
//!
//! [`Hist`] wraps an auto-resizing HdrHistogram of `u64` counts. Float samples are
//! recorded in fixed units of `1 / SCALE` (three decimal places), so a histogram merged
//! from any number of tiers has exactly the buckets it would have had if every sample had
//! been recorded at one node: the relative error of every percentile is bounded by the
//! significant digits (`10^-sigfig`) plus one unit, and does not grow with merging.
//!
//! Reported values follow HdrHistogram: percentiles and `max` are the highest value
//! equivalent to the bucket holding them, `min` the lowest, `mean` uses bucket midpoints.

use std::fmt;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

use crate::error::ModelError;
use crate::kind::Kind;

/// An HDR histogram of non-negative floats with 3 decimal places of unit resolution.
#[derive(Clone)]
pub struct Hist {
    /// Counts in units of `1 / SCALE`. Lowest discernible value 1 and auto-resize on, so
    /// the counts array covers only up to the largest value seen and stays small.
    ///
    /// Invariant: the total count is at most `i64::MAX`, so every bucket count fits the
    /// V2 wire format and [`Hist::to_v2_bytes`] cannot fail.
    inner: Histogram<u64>,
}

/// Largest total count a histogram may hold (the V2 format stores counts as `i64`).
const MAX_TOTAL_COUNT: u64 = i64::MAX as u64;

/// Largest `highest trackable value` accepted from V2 bytes: a histogram holding
/// [`Hist::MAX_VALUE`] resizes to at most `2^50 - 1` units. The bound stops a forged header
/// from making the decoder allocate a huge dense counts array.
const MAX_TRACKABLE_UNITS: u64 = 1 << 50;

/// Cookie of an uncompressed V2 histogram (`0x1c849303 | 0x10`).
const V2_COOKIE: u32 = 0x1c84_9313;
/// Bytes of the V2 header before the counts payload.
const V2_HEADER_LEN: usize = 40;

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
        let inner = Histogram::new(sigfig).map_err(|e| ModelError::InvalidValue {
            kind: Kind::Histogram,
            reason: format!("cannot create histogram: {e:?}"),
        })?;
        Ok(Hist { inner })
    }

    /// Significant decimal digits kept; only histograms with equal digits merge.
    pub fn sigfig(&self) -> u8 {
        self.inner.sigfig()
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
        // In range by `check_value`: at most 10^15 units.
        let units = (value * Self::SCALE).round() as u64;
        self.inner
            .record_n(units, count)
            .map_err(|e| ModelError::InvalidValue {
                kind: Kind::Histogram,
                reason: format!("cannot record histogram value {value}: {e:?}"),
            })
    }

    /// Adds every count of `other` (bucket-wise, lossless). Refuses histograms with other
    /// significant digits. On error `self` is unchanged.
    pub fn merge(&mut self, other: &Hist) -> Result<(), ModelError> {
        self.check_merge(other)?;
        if other.inner.is_empty() {
            return Ok(());
        }
        self.inner
            .add(&other.inner)
            .map_err(|e| ModelError::InvalidValue {
                kind: Kind::Histogram,
                reason: format!("cannot merge histograms: {e:?}"),
            })
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
        if other.inner.is_empty() {
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
        self.inner.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Lowest value equivalent to the smallest sample; NaN if empty.
    pub fn min(&self) -> f64 {
        if self.is_empty() {
            f64::NAN
        } else {
            self.inner.min() as f64 / Self::SCALE
        }
    }

    /// Highest value equivalent to the largest sample; NaN if empty.
    pub fn max(&self) -> f64 {
        if self.is_empty() {
            f64::NAN
        } else {
            self.inner.max() as f64 / Self::SCALE
        }
    }

    /// Mean of the samples (from bucket midpoints); NaN if empty.
    pub fn mean(&self) -> f64 {
        if self.is_empty() {
            f64::NAN
        } else {
            self.inner.mean() / Self::SCALE
        }
    }

    /// Value at quantile `q` (clamped to 0..=1): the highest value equivalent to the
    /// smallest sample `v` such that at least `ceil(q * count)` samples are `<= v`.
    /// NaN if empty or `q` is NaN.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.is_empty() || q.is_nan() {
            return f64::NAN;
        }
        self.inner.value_at_quantile(q.clamp(0.0, 1.0)) as f64 / Self::SCALE
    }

    /// Approximate heap memory of the counts array, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.inner.distinct_values() * std::mem::size_of::<u64>()
    }

    /// Serialises in the HdrHistogram V2 format (uncompressed), which any HdrHistogram
    /// implementation can read.
    pub fn to_v2_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // The only failures are a count above i64::MAX (excluded by the type's invariant)
        // and I/O errors, which writing to a Vec does not have.
        if let Err(e) = V2Serializer::new().serialize(&self.inner, &mut out) {
            unreachable!("serialising a histogram into memory failed: {e:?}");
        }
        out
    }

    /// Reads V2 bytes written by [`Hist::to_v2_bytes`] (or any HdrHistogram with lowest
    /// discernible value 1 and 1..=5 significant digits). The result auto-resizes like a
    /// fresh histogram. Garbage is rejected with [`ModelError::Decode`], never a panic.
    pub fn from_v2_bytes(bytes: &[u8]) -> Result<Hist, ModelError> {
        check_v2(bytes).map_err(|reason| ModelError::Decode(format!("histogram: {reason}")))?;
        let mut reader = bytes;
        let mut inner: Histogram<u64> = Deserializer::new()
            .deserialize(&mut reader)
            .map_err(|e| ModelError::Decode(format!("histogram: {e}")))?;
        inner.auto(true);
        Ok(Hist { inner })
    }
}

/// Validates a V2 histogram before handing it to the library deserializer, which trusts
/// its input in ways that matter for untrusted bytes: it allocates the declared payload
/// length and a counts array for the declared range up front, and negates the decoded
/// zero-run length (a debug-build overflow panic for `i64::MIN`).
///
/// Checks: exact length, cookie, no normalising offset, 1..=5 digits, lowest value 1,
/// bounded range, integer-to-double ratio 1, well-formed varints, no `i64::MIN`, and a
/// total count within `i64::MAX`.
fn check_v2(bytes: &[u8]) -> Result<(), String> {
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

    let mut payload = &bytes[V2_HEADER_LEN..];
    let mut total: u64 = 0;
    while !payload.is_empty() {
        let (encoded, used) = read_varint(payload).ok_or("truncated varint in counts")?;
        payload = &payload[used..];
        // zig-zag decode
        let n = ((encoded >> 1) as i64) ^ -((encoded & 1) as i64);
        if n == i64::MIN {
            return Err("zero run length out of range".into());
        }
        if n > 0 {
            total = total
                .checked_add(n as u64)
                .filter(|t| *t <= MAX_TOTAL_COUNT)
                .ok_or("total count exceeds i64::MAX")?;
        }
    }
    Ok(())
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
    /// bucket. The size of the counts array (how far each side happened to resize) is
    /// irrelevant.
    fn eq(&self, other: &Hist) -> bool {
        self.sigfig() == other.sigfig()
            && self.count() == other.count()
            && self
                .inner
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .eq(other
                    .inner
                    .iter_recorded()
                    .map(|v| (v.value_iterated_to(), v.count_at_value())))
    }
}

impl fmt::Debug for Hist {
    /// A summary; the counts array is far too long to print.
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
        let empty = h.heap_bytes();
        assert!(empty <= 4096, "{empty}");
        for i in 1..=1000 {
            h.record(f64::from(i)).unwrap(); // 1 ms .. 1 s
        }
        assert!(h.heap_bytes() < 20_000, "{}", h.heap_bytes());
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
            assert!(
                h.inner.high() <= MAX_TRACKABLE_UNITS,
                "sigfig {sigfig}: {}",
                h.inner.high()
            );
            assert_eq!(Hist::from_v2_bytes(&h.to_v2_bytes()).unwrap(), h);
        }
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
    fn debug_is_a_summary() {
        let s = format!("{:?}", hist(2, &[1.0]));
        assert!(s.starts_with("Hist { sigfig: 2, count: 1"), "{s}");
    }
}
