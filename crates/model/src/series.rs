//! Series identity: a metric name plus a sorted label set.

use std::fmt;

use crate::error::ModelError;

/// One time series: a metric name and its labels, validated and normalised so that two
/// keys naming the same series compare (and hash) equal.
///
/// Normalisation follows Prometheus: labels with an empty value are dropped, the rest are
/// sorted by name, and a label name may appear only once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    /// Matches `[a-zA-Z_:][a-zA-Z0-9_:]*`; compared first so keys sort by metric.
    metric: String,
    /// Sorted by name, names unique and valid, values non-empty: the canonical form that
    /// makes derived equality mean "same series".
    labels: Vec<(String, String)>,
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
        metric: impl Into<String>,
        labels: impl IntoIterator<Item = (String, String)>,
    ) -> Result<SeriesKey, ModelError> {
        let metric = metric.into();
        if !is_valid_metric_name(&metric) {
            return Err(ModelError::InvalidName(format!(
                "metric name {metric:?} must match [a-zA-Z_:][a-zA-Z0-9_:]*"
            )));
        }
        let mut labels: Vec<(String, String)> = labels.into_iter().collect();
        for (name, _) in &labels {
            if !is_valid_label_name(name) {
                return Err(ModelError::InvalidName(format!(
                    "label name {name:?} of metric {metric:?} must match [a-zA-Z_][a-zA-Z0-9_]*"
                )));
            }
        }
        // Stable sort, so the duplicate check below sees every repeated name (including
        // one whose value is empty) next to its twin.
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = labels.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(ModelError::InvalidName(format!(
                "label name {:?} appears more than once in metric {metric:?}",
                pair[0].0
            )));
        }
        labels.retain(|(_, value)| !value.is_empty());
        Ok(SeriesKey { metric, labels })
    }

    /// The metric name.
    pub fn metric(&self) -> &str {
        &self.metric
    }

    /// The labels, sorted by name, without empty values.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    /// The value of one label, if the series has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.labels[i].1.as_str())
    }

    /// A 64-bit hash that is the same in every process and every run (FNV-1a over the
    /// metric, then each label name and value, each preceded by a `0xff` byte, which never
    /// occurs in UTF-8). Used to pick shards and carrier partitions.
    pub fn hash64(&self) -> u64 {
        let mut h = Fnv1a::new();
        h.write(self.metric.as_bytes());
        for (name, value) in &self.labels {
            h.write(&[0xff]);
            h.write(name.as_bytes());
            h.write(&[0xff]);
            h.write(value.as_bytes());
        }
        h.finish()
    }
}

impl fmt::Display for SeriesKey {
    /// `metric{a="x",b="y"}`, or just `metric` without labels; label values are escaped as
    /// in the Prometheus text format (`\\`, `\"`, `\n`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.metric)?;
        if self.labels.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, (name, value)) in self.labels.iter().enumerate() {
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
        assert_eq!(key.labels(), &labels(&[("a", "1"), ("b", "2")])[..]);
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

    #[test]
    fn keys_order_by_metric_then_labels() {
        let a = SeriesKey::new("a", labels(&[("z", "1")])).unwrap();
        let b = SeriesKey::new("b", []).unwrap();
        let a2 = SeriesKey::new("a", labels(&[("z", "2")])).unwrap();
        assert!(a < b);
        assert!(a < a2);
    }
}
