//! The node's own pipeline figures (DESIGN §6) and their Prometheus text
//! exposition.
//!
//! Plain atomic counters, bumped on the data path with relaxed ordering. The
//! flush loop turns their growth since the previous flush into ordinary
//! `strata_*` counter samples of this node (so they are stored and forwarded
//! upward like any metric), and `/metrics` renders their totals in the
//! Prometheus text format through an [`Exposition`], beside the latency
//! histograms of [`Latencies`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::latency::{BUCKET_BOUNDS_S, HistogramSnapshot, Latencies};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $field:ident ),* $(,)?) => {
        /// Monotonic pipeline counters of one node, and its latency histograms.
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[doc = $doc])* pub $field: AtomicU64, )*
            /// Request and commit latencies, on `/metrics` only.
            pub latency: Latencies,
        }

        impl Stats {
            /// `(name, value)` of every counter, names without the `strata_` prefix.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($field), self.$field.load(Ordering::Relaxed)), )*]
            }

            /// `(name, help)` of every counter, in [`Stats::snapshot`]'s
            /// order: the help is its doc comment.
            const HELP: &'static [(&'static str, &'static str)] =
                &[$( (stringify!($field), concat!($($doc, " "),*)), )*];
        }
    };
}

counters! {
    /// Samples accepted by the ingest APIs.
    ingest_samples_total,
    /// Ingest requests accepted.
    ingest_requests_total,
    /// Ingest requests rejected as invalid (nothing of them merged).
    ingest_rejected_requests_total,
    /// Ingest requests refused because the node was busy (429/503, RESOURCE_EXHAUSTED).
    ingest_busy_total,
    /// OTLP export requests received (gRPC and HTTP).
    otlp_requests_total,
    /// OTLP data points merged.
    otlp_data_points_total,
    /// OTLP data points refused (reported in the partial success; nothing of them merged).
    otlp_rejected_data_points_total,
    /// OTLP resource attributes not on `otlp.resource_labels`, and attribute values that are arrays, maps or bytes, dropped.
    otlp_dropped_attributes_total,
    /// Prometheus remote-write requests received.
    remote_write_requests_total,
    /// Remote-write samples and native histograms merged.
    remote_write_samples_total,
    /// Remote-write samples refused (summary quantiles, incomplete histogram families, invalid values; nothing of them merged).
    remote_write_rejected_samples_total,
    /// Samples rejected for being older than the allowed lateness (part of rejected requests).
    late_samples_total,
    /// Samples rejected for being further ahead of the node's clock than `aggregation.max_future_s`.
    future_samples_total,
    /// Federation batches merged from downstream sources.
    federation_batches_total,
    /// Increments merged from downstream sources.
    federation_increments_total,
    /// Batches received again after being committed: acknowledged, not merged.
    federation_duplicates_total,
    /// Increments from downstream this node could not merge (kind, precision or apdex threshold conflicts).
    federation_refused_increments_total,
    /// Malformed federation batches rejected whole.
    federation_rejected_batches_total,
    /// Federation streams refused (bad token, unknown id, id already connected).
    federation_refused_streams_total,
    /// Federation streams ended for a message over `grpc.max_message_bytes` or a
    /// batch in parts over `grpc.max_batch_bytes`.
    federation_oversized_messages_total,
    /// Federation batches refused for their seq (out of order, a gap not
    /// accounted for by dropped batches, a seq beyond any source's reach): the
    /// stream ends, nothing of the batch is merged.
    federation_refused_seqs_total,
    /// Flushes committed to the store.
    flushes_total,
    /// Increments committed to the store.
    committed_increments_total,
    /// Samples and increments the aggregator or the store could not merge: kind,
    /// precision or apdex threshold conflicts, and results a state cannot hold (a float
    /// total past ±f64::MAX, a count past u64::MAX). Each is refused alone.
    merge_errors_total,
    /// Batches sent upstream (including resends).
    forward_batches_sent_total,
    /// Batches acknowledged by the upstream.
    forward_batches_acked_total,
    /// Batches the upstream rejected as malformed.
    forward_batches_rejected_total,
    /// Batches sent in several parts because they were larger than one message.
    forward_batches_split_total,
    /// Increments left out of a forwarded batch because even alone they did not fit
    /// in one message of the upstream's limit (each also logged, and an event).
    forward_oversized_increments_total,
    /// Spooled batches dropped because the spool reached its cap.
    spool_dropped_batches_total,
    /// Upstream connections established.
    forward_connects_total,
    /// Store commits that failed (flush commits and request-log writes).
    store_errors_total,
    /// Request-log records handed to the aggregator again at start: requests
    /// acknowledged before a stop whose flush had not committed them.
    request_log_replayed_total,
    /// Request-log records found unreadable at start and dropped (each also
    /// logged as an error).
    request_log_unreadable_total,
    /// Stored states found unreadable and moved to quarantine (each also an event).
    quarantined_states_total,
    /// Retention passes (bucket, event and series TTL deletion): at the first commit, then every minute.
    retention_runs_total,
    /// Alarm instances that started firing.
    alarms_fired_total,
    /// Firing alarm instances that resolved.
    alarms_resolved_total,
    /// Webhook notifications delivered (answered 2xx).
    alarm_notifications_sent_total,
    /// Webhook delivery attempts that failed (each is retried with backoff).
    alarm_notifications_failed_total,
    /// Queued notifications dropped because the outbox reached its cap.
    alarm_notifications_dropped_total,
    /// HTTP requests refused (401) for a missing or wrong bearer token (`http.token`, `http.ingest_token`).
    http_unauthorized_total,
    /// Native gRPC pushes refused (UNAUTHENTICATED) for a missing or wrong bearer token.
    grpc_unauthorized_total,
    /// Ingest requests, federation batches and queries refused for a `[limits]` limit
    /// (each answered naming the limit; cardinality refusals also per source in
    /// `strata_cardinality_refusals_total`).
    limit_refusals_total,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What a metric family is, for its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    /// Only ever grows (until the process restarts); its name ends `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative `_bucket{le=…}` samples, `_sum` and `_count`.
    Histogram,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// A sample value: counts stay exact integers, the rest are floats.
#[derive(Clone, Copy, Debug)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

/// Builds a Prometheus text exposition (format 0.0.4): each family opens
/// with `# HELP` and `# TYPE`, and its samples follow it, together.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    /// Families opened so far: one opened twice is a bug of the caller.
    families: Vec<String>,
}

impl Exposition {
    /// Opens a family: its `# HELP` and `# TYPE` lines. Its samples must
    /// follow before the next family opens.
    pub fn family(&mut self, name: &str, kind: MetricType, help: &str) {
        debug_assert!(
            !self.families.iter().any(|f| f == name),
            "metric family {name} rendered twice"
        );
        debug_assert!(
            kind != MetricType::Counter || name.ends_with("_total"),
            "counter {name} does not end with _total"
        );
        self.families.push(name.to_owned());
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(&help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample line: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        match value.into() {
            Value::Int(v) => {
                let _ = writeln!(self.out, "{v}");
            }
            Value::Float(v) => {
                let _ = writeln!(self.out, "{}", format_float(v));
            }
        }
    }

    /// The samples of one histogram: cumulative `_bucket`s up to `+Inf`,
    /// `_sum` (seconds) and `_count`, under the family `name`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (i, count) in h.cumulative.iter().enumerate() {
            let le = BUCKET_BOUNDS_S
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| format_float(*b));
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, *count);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum_s);
        self.sample(&format!("{name}_count"), labels, h.count());
    }

    /// The text, ready to serve.
    pub fn finish(self) -> String {
        self.out
    }
}

impl Stats {
    /// Renders every counter as `strata_<name>{node="…"}` and the latency
    /// histograms as `strata_*_duration_seconds`.
    pub fn render(&self, node: &str, out: &mut Exposition) {
        let node_label = [("node", node)];
        for ((name, value), (_, help)) in self.snapshot().into_iter().zip(Stats::HELP) {
            let full = format!("strata_{name}");
            out.family(&full, MetricType::Counter, help);
            out.sample(&full, &node_label, value);
        }
        let l = &self.latency;
        let name = "strata_ingest_request_duration_seconds";
        out.family(
            name,
            MetricType::Histogram,
            "Time to answer an ingest request, from its arrival to its answer \
             (with wait=commit, the commit included), by protocol.",
        );
        for (protocol, h) in [("http", &l.ingest_http), ("grpc", &l.ingest_grpc)] {
            out.histogram(
                name,
                &[("node", node), ("protocol", protocol)],
                &h.snapshot(),
            );
        }
        let node_histograms = [
            (
                "strata_flush_commit_duration_seconds",
                "Time of one store commit transaction of flushed increments (each attempt).",
                &l.flush_commit,
            ),
            (
                "strata_request_log_commit_duration_seconds",
                "Time of one request-log transaction: the wait=commit requests waiting, written together.",
                &l.request_log_commit,
            ),
            (
                "strata_query_duration_seconds",
                "Time to answer a query on /api/v1/query.",
                &l.query,
            ),
        ];
        for (name, help, h) in node_histograms {
            out.family(name, MetricType::Histogram, help);
            out.histogram(name, &node_label, &h.snapshot());
        }
    }
}

/// A float as the exposition format writes it: `+Inf`, `-Inf`, `NaN`.
fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        v.to_string()
    }
}

/// A label value escaped: backslash, double quote and line feed.
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Help text escaped: backslash and line feed.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A strict reader of the text this module writes, for tests: checks the
/// rules Prometheus relies on and returns the samples.
#[cfg(test)]
pub(crate) mod check {
    use std::collections::HashMap;

    /// One sample line: family-level name, labels in order, value.
    #[derive(Debug)]
    pub(crate) struct Sample {
        pub name: String,
        pub labels: Vec<(String, String)>,
        pub value: f64,
    }

    /// Parses `text`, failing on a sample outside its family, a family
    /// without `# HELP` and `# TYPE` or opened twice, a counter not ending
    /// `_total`, or a histogram whose buckets are not cumulative or whose
    /// `+Inf` bucket is not its `_count`.
    pub(crate) fn exposition(text: &str) -> Result<Vec<Sample>, String> {
        let mut samples = Vec::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut current: Option<(String, String)> = None; // (family, type)
        let mut help_of: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default().to_owned();
                if types.contains_key(&name) {
                    return Err(format!("family {name} opened twice"));
                }
                help_of = Some(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
                if help_of.as_deref() != Some(name) {
                    return Err(format!("TYPE of {name} without HELP just before it"));
                }
                if kind == "counter" && !name.ends_with("_total") {
                    return Err(format!("counter {name} does not end with _total"));
                }
                types.insert(name.to_owned(), kind.to_owned());
                current = Some((name.to_owned(), kind.to_owned()));
            } else {
                let sample = parse_sample(line)?;
                let (family, kind) = current
                    .as_ref()
                    .ok_or(format!("sample before any family: {line}"))?;
                let expected: Vec<String> = match kind.as_str() {
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .map(|s| format!("{family}{s}"))
                        .collect(),
                    _ => vec![family.clone()],
                };
                if !expected.contains(&sample.name) {
                    return Err(format!(
                        "{} is not a sample of family {family}",
                        sample.name
                    ));
                }
                samples.push(sample);
            }
        }
        for (family, kind) in &types {
            if kind == "histogram" {
                histogram_consistent(family, &samples)?;
            }
        }
        Ok(samples)
    }

    fn parse_sample(line: &str) -> Result<Sample, String> {
        let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("bad value in {line}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or(format!("unclosed labels: {line}"))?;
                (
                    name,
                    parse_labels(body).map_err(|e| format!("{e}: {line}"))?,
                )
            }
        };
        let valid = |c: char, first: bool| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
        };
        if name.is_empty() || !name.chars().enumerate().all(|(i, c)| valid(c, i == 0)) {
            return Err(format!("bad metric name in {line}"));
        }
        Ok(Sample {
            name: name.to_owned(),
            labels,
            value,
        })
    }

    fn parse_labels(body: &str) -> Result<Vec<(String, String)>, String> {
        let mut labels = Vec::new();
        let mut chars = body.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if chars.next() != Some('"') {
                return Err(format!("label {key} value not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape \\{other:?}")),
                    },
                    Some('"') => break,
                    Some('\n') => return Err("raw line feed in a label value".into()),
                    Some(c) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            labels.push((key, value));
            match chars.next() {
                Some(',') | None => {}
                Some(c) => return Err(format!("{c:?} after a label value")),
            }
        }
        Ok(labels)
    }

    /// Every series of histogram `family`: ascending `le`, cumulative
    /// counts, a `+Inf` bucket equal to `_count`, and a `_sum`.
    fn histogram_consistent(family: &str, samples: &[Sample]) -> Result<(), String> {
        let others = |s: &Sample| -> Vec<(String, String)> {
            s.labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect()
        };
        let mut series: Vec<Vec<(String, String)>> = Vec::new();
        for s in samples
            .iter()
            .filter(|s| s.name == format!("{family}_count"))
        {
            series.push(s.labels.clone());
        }
        if series.is_empty() {
            return Err(format!("histogram {family} has no _count"));
        }
        for labels in series {
            let of = |suffix: &str| {
                samples
                    .iter()
                    .filter(|s| s.name == format!("{family}{suffix}") && others(s) == labels)
                    .collect::<Vec<_>>()
            };
            let count = of("_count")[0].value;
            if of("_sum").len() != 1 {
                return Err(format!("{family}{labels:?}: no single _sum"));
            }
            let buckets = of("_bucket");
            let mut last = (f64::NEG_INFINITY, 0.0);
            for b in &buckets {
                let le = b
                    .labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .ok_or("bucket without le")?;
                let le = match le.1.as_str() {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().map_err(|_| format!("bad le {v}"))?,
                };
                if le <= last.0 || b.value < last.1 {
                    return Err(format!(
                        "{family}{labels:?}: buckets not ascending/cumulative"
                    ));
                }
                last = (le, b.value);
            }
            if last.0 != f64::INFINITY || last.1 != count {
                return Err(format!(
                    "{family}{labels:?}: +Inf bucket {last:?} is not _count {count}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rendered(stats: &Stats, node: &str) -> String {
        let mut out = Exposition::default();
        stats.render(node, &mut out);
        out.family("strata_queue_depth", MetricType::Gauge, "items queued");
        out.sample(
            "strata_queue_depth",
            &[("node", node), ("carrier", "ingest")],
            3u64,
        );
        out.family("strata_source_lag_ms", MetricType::Gauge, "lag");
        out.sample("strata_source_lag_ms", &[("source", "a")], f64::NAN);
        out.finish()
    }

    #[test]
    fn renders_counters_and_gauges() {
        let stats = Stats::default();
        Stats::add(&stats.ingest_samples_total, 5);
        let text = rendered(&stats, "eu");
        assert!(
            text.contains("strata_ingest_samples_total{node=\"eu\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("strata_queue_depth{node=\"eu\",carrier=\"ingest\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("strata_source_lag_ms{source=\"a\"} NaN\n"),
            "{text}"
        );
    }

    #[test]
    fn every_family_has_help_and_type_and_counters_end_total() {
        let stats = Stats::default();
        let text = rendered(&stats, "eu");
        let samples = check::exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for (name, _) in stats.snapshot() {
            assert!(
                text.contains(&format!("# TYPE strata_{name} counter\n")),
                "{name}: {text}"
            );
        }
        let help = text
            .lines()
            .find(|l| l.starts_with("# HELP strata_late_samples_total "))
            .expect("help of late_samples_total");
        assert_eq!(
            help,
            "# HELP strata_late_samples_total Samples rejected for being older than the \
             allowed lateness (part of rejected requests)."
        );
        assert!(
            samples.len() > stats.snapshot().len() + 4 * 16,
            "{}",
            samples.len()
        );
    }

    #[test]
    fn histograms_are_cumulative_and_inf_is_the_count() {
        let stats = Stats::default();
        for ms in [0, 1, 3, 30, 300, 3000, 30_000] {
            stats.latency.query.observe(Duration::from_millis(ms));
        }
        stats.latency.ingest_grpc.observe(Duration::from_millis(2));
        let text = rendered(&stats, "eu");
        check::exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let q =
            |le: &str| format!("strata_query_duration_seconds_bucket{{node=\"eu\",le=\"{le}\"}}");
        assert!(text.contains(&format!("{} 1\n", q("0.0005"))), "{text}");
        assert!(text.contains(&format!("{} 3\n", q("0.005"))), "{text}");
        assert!(text.contains(&format!("{} 6\n", q("10"))), "{text}");
        assert!(text.contains(&format!("{} 7\n", q("+Inf"))), "{text}");
        assert!(text.contains("strata_query_duration_seconds_count{node=\"eu\"} 7\n"));
        assert!(
            text.contains("strata_query_duration_seconds_sum{node=\"eu\"} 33.334\n"),
            "{text}"
        );
        assert!(text.contains(
            "strata_ingest_request_duration_seconds_count{node=\"eu\",protocol=\"grpc\"} 1\n"
        ));
        assert!(text.contains(
            "strata_ingest_request_duration_seconds_count{node=\"eu\",protocol=\"http\"} 0\n"
        ));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let stats = Stats::default();
        let node = "a\\b\"c\nd";
        let text = rendered(&stats, node);
        assert!(
            text.contains("strata_flushes_total{node=\"a\\\\b\\\"c\\nd\"} 0\n"),
            "{text}"
        );
        let samples = check::exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(samples[0].labels, [("node".to_owned(), node.to_owned())]);
        let mut out = Exposition::default();
        out.family("x_total", MetricType::Counter, "a \\ b\nc");
        assert!(out.finish().starts_with("# HELP x_total a \\\\ b c\n"));
    }

    #[test]
    fn the_checker_refuses_what_prometheus_refuses() {
        let bad = [
            "# HELP a_total x\n# TYPE a_total counter\na_total 1\na_total 2x\n",
            "x 1\n",
            "# HELP a x\n# TYPE a counter\na 1\n",
            "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
            "# HELP g x\n# TYPE g gauge\ng{a=\"b\\q\"} 1\n",
            "# HELP g x\n# TYPE g gauge\ng 1\n# HELP g x\n# TYPE g gauge\n",
        ];
        for text in bad {
            assert!(check::exposition(text).is_err(), "accepted:\n{text}");
        }
    }
}
