//! Series identity: a metric name plus a sorted label set.

use std::fmt;

use crate::error::ModelError;

/// One time series: a metric name and its labels, validated and normalised so that two
/// keys naming the same series compare (and hash) equal.
///
/// Normalisation follows Prometheus: labels with an empty value are dropped, the rest are
/// sorted by name, and a label name may appear only once.
///
/// Held compactly, because every tier keeps one per series it knows: the metric name and
/// each label's name and value back to back in one string, and where each part ends in a
/// second allocation (two allocations and 32 bytes, where a `String` and a vector of
/// string pairs took two allocations per label more and 48 bytes).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    /// The metric name (which matches `[a-zA-Z_:][a-zA-Z0-9_:]*`), then each label's name
    /// and value, sorted by name, names unique and valid, values non-empty: the canonical
    /// form that makes derived equality mean "same series".
    text: Box<str>,
    /// Where each part of `text` ends: the metric name, then each label's name and value.
    ends: Box<[u32]>,
}

impl SeriesKey {
    /// Validates and normalises a series key.
    ///
    /// ```
    /// use strata_model::SeriesKey;
    /// let key = SeriesKey::new(
    ///     "http_latency_ms",
    ///     [("service".to_string(), "checkout".to_string()), ("az".to_string(), String::new())],
    /// )
    /// .unwrap();
    /// assert_eq!(key.to_string(), r#"http_latency_ms{service="checkout"}"#);
    /// assert!(SeriesKey::new("1bad", []).is_err());
    /// ```
    pub fn new(
        metric: impl AsRef<str>,
        labels: impl IntoIterator<Item = (String, String)>,
    ) -> Result<SeriesKey, ModelError> {
        Self::build(metric.as_ref(), labels)
    }

    /// [`SeriesKey::new`] of borrowed label names and values (nothing is
    /// copied but into the key).
    pub fn from_strs<'a>(
        metric: &str,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<SeriesKey, ModelError> {
        Self::build(metric, labels)
    }

    fn build<N: AsRef<str>, V: AsRef<str>>(
        metric: &str,
        labels: impl IntoIterator<Item = (N, V)>,
    ) -> Result<SeriesKey, ModelError> {
        if !is_valid_metric_name(metric) {
            return Err(ModelError::InvalidName(format!(
                "metric name {metric:?} must match [a-zA-Z_:][a-zA-Z0-9_:]*"
            )));
        }
        let mut labels: Vec<(N, V)> = labels.into_iter().collect();
        for (name, _) in &labels {
            let name = name.as_ref();
            if !is_valid_label_name(name) {
                return Err(ModelError::InvalidName(format!(
                    "label name {name:?} of metric {metric:?} must match [a-zA-Z_][a-zA-Z0-9_]*"
                )));
            }
        }
        // Stable sort, so the duplicate check below sees every repeated name (including
        // one whose value is empty) next to its twin.
        labels.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        if let Some(pair) = labels
            .windows(2)
            .find(|pair| pair[0].0.as_ref() == pair[1].0.as_ref())
        {
            return Err(ModelError::InvalidName(format!(
                "label name {:?} appears more than once in metric {metric:?}",
                pair[0].0.as_ref()
            )));
        }
        let labels = labels
            .iter()
            .map(|(name, value)| (name.as_ref(), value.as_ref()))
            .filter(|(_, value)| !value.is_empty());
        Self::pack(metric, labels)
    }

    /// The key of validated, sorted parts.
    fn pack<'a>(
        metric: &str,
        labels: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Result<SeriesKey, ModelError> {
        let (mut len, mut count) = (metric.len(), 0);
        for (name, value) in labels.clone() {
            len += name.len() + value.len();
            count += 1;
        }
        let Ok(_) = u32::try_from(len) else {
            return Err(ModelError::InvalidName(format!(
                "series of metric {metric:?} is {len} bytes long, more than 4 GiB"
            )));
        };
        let mut text = String::with_capacity(len);
        let mut ends = Vec::with_capacity(1 + 2 * count);
        // Each end is at most `len`, which fits.
        let mut push = |part: &str| {
            text.push_str(part);
            ends.push(text.len() as u32);
        };
        push(metric);
        for (name, value) in labels {
            push(name);
            push(value);
        }
        Ok(SeriesKey {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        })
    }

    /// Part `i` of the text: 0 the metric name, then each label's name and value.
    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    /// The metric name.
    pub fn metric(&self) -> &str {
        self.part(0)
    }

    /// The labels as (name, value), sorted by name, without empty values.
    pub fn labels(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone + '_ {
        (0..self.label_count()).map(|i| self.label_at(i))
    }

    /// The labels as owned (name, value) pairs, sorted by name.
    pub fn label_pairs(&self) -> Vec<(String, String)> {
        self.labels()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    /// How many labels the series has.
    pub fn label_count(&self) -> usize {
        self.ends.len() / 2
    }

    /// Label `i` (in name order) as (name, value).
    fn label_at(&self, i: usize) -> (&str, &str) {
        (self.part(1 + 2 * i), self.part(2 + 2 * i))
    }

    /// The value of one label, if the series has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        let (mut low, mut high) = (0, self.label_count());
        while low < high {
            let mid = low + (high - low) / 2;
            let (n, value) = self.label_at(mid);
            match n.cmp(name) {
                std::cmp::Ordering::Equal => return Some(value),
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
            }
        }
        None
    }

    /// A 64-bit hash that is the same in every process and every run (FNV-1a over the
    /// metric, then each label name and value, each preceded by a `0xff` byte, which never
    /// occurs in UTF-8). Used to pick shards and carrier partitions.
    pub fn hash64(&self) -> u64 {
        let mut h = Fnv1a::new();
        h.write(self.metric().as_bytes());
        for i in 1..self.ends.len() {
            h.write(&[0xff]);
            h.write(self.part(i).as_bytes());
        }
        h.finish()
    }
}

/// By metric name, then by labels in name order (each by name, then value): keys sort by
/// metric.
impl Ord for SeriesKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.metric()
            .cmp(other.metric())
            .then_with(|| self.labels().cmp(other.labels()))
    }
}

impl PartialOrd for SeriesKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeriesKey")
            .field("metric", &self.metric())
            .field("labels", &self.labels().collect::<Vec<_>>())
            .finish()
    }
}

impl fmt::Display for SeriesKey {
    /// `metric{a="x",b="y"}`, or just `metric` without labels; label values are escaped as
    /// in the Prometheus text format (`\\`, `\"`, `\n`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.metric())?;
        if self.label_count() == 0 {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, (name, value)) in self.labels().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}=\"")?;
            for c in value.chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '"' => f.write_str("\\\"")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// 64-bit FNV-1a; chosen over `std`'s hashers because its output is specified and stable.
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Fnv1a {
        Fnv1a(Self::OFFSET_BASIS)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_are_sorted_and_empty_values_dropped() {
        let key = SeriesKey::new("m", labels(&[("b", "2"), ("a", "1"), ("c", "")])).unwrap();
        assert!(key.labels().eq([("a", "1"), ("b", "2")]));
        assert_eq!(key.label("a"), Some("1"));
        assert_eq!(key.label("c"), None);
        assert_eq!(key.label("z"), None);
        assert_eq!(key.metric(), "m");
    }

    #[test]
    fn label_order_does_not_change_identity() {
        let a = SeriesKey::new("m", labels(&[("x", "1"), ("y", "2")])).unwrap();
        let b = SeriesKey::new("m", labels(&[("y", "2"), ("x", "1")])).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.hash64(), b.hash64());
        let c = SeriesKey::new("m", labels(&[("x", "1"), ("y", "2"), ("z", "")])).unwrap();
        assert_eq!(a, c);
    }

    #[test]
    fn names_are_validated() {
        for good in ["a", "_", ":", "http_latency_ms", "ns:sub:metric_1", "A9"] {
            assert!(SeriesKey::new(good, []).is_ok(), "{good}");
        }
        for bad in ["", "1a", "a-b", "a b", "é", "a.b"] {
            let err = SeriesKey::new(bad, []).unwrap_err();
            assert!(
                matches!(&err, ModelError::InvalidName(msg) if msg.contains(&format!("{bad:?}")))
            );
        }
        for bad in ["", "1a", "a:b", "a-b"] {
            let err = SeriesKey::new("m", labels(&[(bad, "v")])).unwrap_err();
            assert!(
                matches!(&err, ModelError::InvalidName(msg) if msg.contains(&format!("{bad:?}")))
            );
        }
    }

    #[test]
    fn duplicate_label_names_are_rejected() {
        let err = SeriesKey::new("m", labels(&[("a", "1"), ("b", "x"), ("a", "2")])).unwrap_err();
        assert!(matches!(&err, ModelError::InvalidName(msg) if msg.contains("\"a\"")));
        // A duplicate is an error even when one of the twins has an empty value.
        assert!(SeriesKey::new("m", labels(&[("a", ""), ("a", "2")])).is_err());
    }

    #[test]
    fn display_formats_like_prometheus() {
        assert_eq!(SeriesKey::new("up", []).unwrap().to_string(), "up");
        let key = SeriesKey::new("m", labels(&[("b", "y"), ("a", "x")])).unwrap();
        assert_eq!(key.to_string(), r#"m{a="x",b="y"}"#);
        let key = SeriesKey::new("m", labels(&[("a", "q\"\\\n")])).unwrap();
        assert_eq!(key.to_string(), r#"m{a="q\"\\\n"}"#);
    }

    #[test]
    fn hash64_is_stable_and_separates_fields() {
        // Pinned values: the hash picks shards, so changing it reshuffles state.
        assert_eq!(
            SeriesKey::new("a", []).unwrap().hash64(),
            0xaf63_dc4c_8601_ec8c
        );
        let ab = SeriesKey::new("m", labels(&[("ab", "c")])).unwrap();
        let a_bc = SeriesKey::new("m", labels(&[("a", "bc")])).unwrap();
        assert_ne!(ab.hash64(), a_bc.hash64());
        let m = SeriesKey::new("ma", []).unwrap();
        let m_a = SeriesKey::new("m", labels(&[("a", "x")])).unwrap();
        assert_ne!(m.hash64(), m_a.hash64());
    }

    /// A metric name and labels, each part short and from a small alphabet, so that
    /// keys often share metrics, label names and prefixes.
    fn parts() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
        let label = ("[ab_]{1,2}", "[ab\"é]{0,3}");
        ("[ab:]{1,2}", prop::collection::vec(label, 0..4))
    }

    /// What a key stands for: its metric and its labels as the normalisation leaves them.
    fn normalised(metric: &str, labels: &[(String, String)]) -> (String, Vec<(String, String)>) {
        let mut labels = labels.to_vec();
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        labels.retain(|(_, v)| !v.is_empty());
        (metric.to_owned(), labels)
    }

    proptest! {
        /// The packed key reads back its parts, and compares as the pair of its metric
        /// and label list would: equal exactly when they are, in the same order.
        #[test]
        fn packed_keys_read_and_compare_as_their_parts(a in parts(), b in parts()) {
            let (Ok(ka), Ok(kb)) = (SeriesKey::new(a.0.clone(), a.1.clone()),
                SeriesKey::new(b.0.clone(), b.1.clone())) else {
                // Duplicate label names: refused, as tested above.
                return Ok(());
            };
            let (na, nb) = (normalised(&a.0, &a.1), normalised(&b.0, &b.1));
            prop_assert_eq!(ka.metric(), na.0.as_str());
            prop_assert_eq!(ka.label_pairs(), na.1.clone());
            prop_assert_eq!(ka.label_count(), na.1.len());
            for (name, value) in &na.1 {
                prop_assert_eq!(ka.label(name), Some(value.as_str()));
            }
            prop_assert_eq!(ka.label("zz"), None);
            prop_assert_eq!(ka == kb, na == nb);
            prop_assert_eq!(ka.cmp(&kb), na.cmp(&nb));
            if ka == kb {
                prop_assert_eq!(ka.hash64(), kb.hash64());
            }
        }
    }

    #[test]
    fn keys_order_by_metric_then_labels() {
        let a = SeriesKey::new("a", labels(&[("z", "1")])).unwrap();
        let b = SeriesKey::new("b", []).unwrap();
        let a2 = SeriesKey::new("a", labels(&[("z", "2")])).unwrap();
        assert!(a < b);
        assert!(a < a2);
    }
}
