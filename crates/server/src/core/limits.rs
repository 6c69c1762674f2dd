//! What a client may send or ask, and the gRPC message limits of a node's
//! federation link.
//!
//! [`Limits`] is the `[limits]` section resolved at start (with the older
//! names `http.max_body_bytes` and `aggregation.max_future_s`): request and
//! body sizes, the size of a series' name and labels, and how much one query
//! may return. Every refusal names the key of the limit it hit, so an
//! operator knows what to raise and a client what it did wrong.
//! [`Limits::check_series`] runs on the wire strings of every series an input
//! receives (NDJSON, native gRPC, federation batches) before a key is built.
//!
//! [`MessageLimits`]: a federation batch larger than one message is sent in
//! parts (see docs/PROTOCOL.md), but one increment is never split: an
//! increment, its series named in full, must fit in one message of the smaller
//! of this node's `grpc.max_message_bytes` and its upstream's (announced in
//! the Welcome). Inputs refuse a series that could never fit, naming the
//! limit, instead of accepting what the forwarder could not send.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use strata_model::{Kind, SeriesKey};

/// What one request, series or query may hold, resolved from the config.
/// Each `*_key` field is the key the limit was set with (or its default's
/// key), which refusals name.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Largest ingest body, compressed or not (decompressed bodies are
    /// bounded by the same figure).
    pub max_body_bytes: usize,
    /// `limits.max_body_bytes`, or `http.max_body_bytes` when set by its older name.
    pub max_body_key: &'static str,
    /// A request body not received within this is cut with 408.
    pub body_read_timeout: Duration,
    /// Most NDJSON lines (native gRPC: points) in one ingest request.
    pub max_lines_per_request: usize,
    /// Most labels one series may carry.
    pub max_labels_per_series: usize,
    pub max_label_name_bytes: usize,
    pub max_label_value_bytes: usize,
    pub max_metric_name_bytes: usize,
    /// `limits.max_future_s`, or `aggregation.max_future_s` when set by its older name.
    pub max_future_key: &'static str,
    /// Most series one query may select.
    pub max_query_series: usize,
    /// Most points (series × steps) one query may answer with.
    pub max_query_points: usize,
}

/// The defaults of `[limits]` (docs/OPERATIONS.md lists them).
impl Default for Limits {
    fn default() -> Self {
        crate::config::Config::default().limits()
    }
}

/// At most `per_minute` reports (log lines, events) a minute of something a
/// peer can repeat at will; the rest are only counted, so that nobody can
/// flood the log or the event log.
#[derive(Debug)]
pub struct ReportBudget {
    per_minute: u32,
    /// The minute the budget is being spent in.
    minute: std::sync::atomic::AtomicI64,
    used: AtomicU32,
}

impl ReportBudget {
    pub const fn new(per_minute: u32) -> ReportBudget {
        ReportBudget {
            per_minute,
            minute: std::sync::atomic::AtomicI64::new(i64::MIN),
            used: AtomicU32::new(0),
        }
    }

    /// Whether one more report fits this minute's budget.
    pub fn take(&self, now_ms: i64) -> bool {
        let minute = now_ms.div_euclid(60_000);
        if self.minute.swap(minute, Ordering::Relaxed) != minute {
            self.used.store(0, Ordering::Relaxed);
        }
        self.used.fetch_add(1, Ordering::Relaxed) < self.per_minute
    }
}

/// At most this much of a name goes into an error message.
const SHOWN_BYTES: usize = 64;

/// `s` cut to [`SHOWN_BYTES`] at a character boundary, `...` marking the cut.
pub fn abbreviated(s: &str) -> String {
    if s.len() <= SHOWN_BYTES {
        return s.to_string();
    }
    let cut = (0..=SHOWN_BYTES)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}...", &s[..cut])
}

impl Limits {
    /// Checks a series as it came off the wire, before its key is built: the
    /// metric name's length, the number of labels, each label name's and
    /// value's length. The error names the metric (abbreviated) and the limit.
    pub fn check_series<'a>(
        &self,
        metric: &str,
        labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), String> {
        if metric.len() > self.max_metric_name_bytes {
            return Err(format!(
                "metric name {:?} is {} bytes, over limits.max_metric_name_bytes ({})",
                abbreviated(metric),
                metric.len(),
                self.max_metric_name_bytes
            ));
        }
        let metric = abbreviated(metric);
        if labels.len() > self.max_labels_per_series {
            return Err(format!(
                "metric {metric:?} has {} labels, over limits.max_labels_per_series ({})",
                labels.len(),
                self.max_labels_per_series
            ));
        }
        for (name, value) in labels {
            if name.len() > self.max_label_name_bytes {
                return Err(format!(
                    "label name {:?} of metric {metric:?} is {} bytes, over limits.max_label_name_bytes ({})",
                    abbreviated(name),
                    name.len(),
                    self.max_label_name_bytes
                ));
            }
            if value.len() > self.max_label_value_bytes {
                return Err(format!(
                    "label {:?} of metric {metric:?} has a value of {} bytes, over limits.max_label_value_bytes ({})",
                    abbreviated(name),
                    value.len(),
                    self.max_label_value_bytes
                ));
            }
        }
        Ok(())
    }
}

/// This node's message limit and, once known, its upstream's.
#[derive(Debug)]
pub struct MessageLimits {
    /// This node's `grpc.max_message_bytes`: bounds every message it sends or receives.
    own: usize,
    /// What the upstream announced in its last Welcome; 0 before one, or from an
    /// upstream that announces none.
    upstream: AtomicUsize,
    /// A histogram's largest state depends on its digits.
    histogram_sigfig: u8,
}

impl MessageLimits {
    pub fn new(own: usize, histogram_sigfig: u8) -> MessageLimits {
        MessageLimits {
            own,
            upstream: AtomicUsize::new(0),
            histogram_sigfig,
        }
    }

    /// This node's `grpc.max_message_bytes`.
    pub fn own(&self) -> usize {
        self.own
    }

    /// Records the limit the upstream announced (0: none).
    pub fn set_upstream(&self, bytes: usize) {
        self.upstream.store(bytes, Ordering::Relaxed);
    }

    /// The limit every message on the link must fit, and whose it is.
    pub fn link(&self) -> (usize, &'static str) {
        match self.upstream.load(Ordering::Relaxed) {
            up if up != 0 && up < self.own => (up, "the upstream's"),
            _ => (self.own, "this node's"),
        }
    }

    /// Checks that one increment of `series`, whatever its state grows to, fits in
    /// one message of the link; the error names the limit.
    pub fn check(&self, series: &SeriesKey, kind: Kind) -> Result<(), String> {
        let need = strata_proto::max_increment_message_len(series, kind, self.histogram_sigfig);
        let (limit, whose) = self.link();
        if need <= limit {
            return Ok(());
        }
        let mut name = series.to_string();
        if name.len() > 120 {
            let cut = (0..=117)
                .rev()
                .find(|&i| name.is_char_boundary(i))
                .unwrap_or(0);
            name.truncate(cut);
            name.push_str("...");
        }
        Err(format!(
            "series {name} needs up to {need} bytes in one message, over {whose} limit of {limit} bytes (grpc.max_message_bytes): it could never be forwarded"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(label_bytes: usize) -> SeriesKey {
        SeriesKey::new("requests", [("blob".to_string(), "x".repeat(label_bytes))])
            .expect("valid series")
    }

    #[test]
    fn a_report_budget_refills_every_minute() {
        let budget = ReportBudget::new(2);
        assert!(budget.take(0) && budget.take(1));
        assert!(!budget.take(59_999));
        assert!(budget.take(60_000));
    }

    fn check(limits: &Limits, metric: &str, labels: &[(&str, &str)]) -> Result<(), String> {
        limits.check_series(metric, labels.iter().copied())
    }

    #[test]
    fn every_series_limit_names_its_key() {
        let limits = Limits {
            max_labels_per_series: 2,
            max_label_name_bytes: 4,
            max_label_value_bytes: 8,
            max_metric_name_bytes: 10,
            ..Limits::default()
        };
        assert_eq!(check(&limits, "requests", &[("a", "12345678")]), Ok(()));
        let long_name = "m".repeat(100);
        for (metric, labels, key) in [
            (
                long_name.as_str(),
                vec![],
                "limits.max_metric_name_bytes (10)",
            ),
            (
                "req",
                vec![("a", "1"), ("b", "2"), ("c", "3")],
                "limits.max_labels_per_series (2)",
            ),
            (
                "req",
                vec![("abcde", "1")],
                "limits.max_label_name_bytes (4)",
            ),
            (
                "req",
                vec![("a", "123456789")],
                "limits.max_label_value_bytes (8)",
            ),
        ] {
            let err = check(&limits, metric, &labels).expect_err(key);
            assert!(err.contains(key), "{err}");
            assert!(err.len() < 200, "names are abbreviated: {err}");
        }
        let err = check(&limits, &long_name, &[]).unwrap_err();
        assert!(err.contains("is 100 bytes"), "{err}");
    }

    #[test]
    fn abbreviation_cuts_at_a_character_boundary() {
        assert_eq!(abbreviated("short"), "short");
        let s = "é".repeat(40);
        let a = abbreviated(&s);
        assert!(a.ends_with("...") && a.len() <= SHOWN_BYTES + 3, "{a}");
    }

    #[test]
    fn the_smaller_limit_of_the_link_decides() {
        let limits = MessageLimits::new(100_000, 2);
        assert_eq!(limits.link(), (100_000, "this node's"));
        assert!(limits.check(&series(90_000), Kind::Counter).is_ok());
        limits.set_upstream(65_536);
        let err = limits
            .check(&series(90_000), Kind::Counter)
            .expect_err("over the upstream's limit");
        assert!(
            err.contains("the upstream's limit of 65536 bytes (grpc.max_message_bytes)"),
            "{err}"
        );
        assert!(err.len() < 400, "the series is abbreviated: {err}");
        // A larger upstream does not raise this node's own limit.
        limits.set_upstream(1 << 30);
        assert_eq!(limits.link(), (100_000, "this node's"));
    }

    #[test]
    fn a_histogram_needs_room_for_its_largest_state() {
        let limits = MessageLimits::new(65_536, 2);
        assert!(limits.check(&series(1000), Kind::Histogram).is_ok());
        assert!(limits.check(&series(20_000), Kind::Counter).is_ok());
        assert!(limits.check(&series(20_000), Kind::Histogram).is_err());
    }
}
