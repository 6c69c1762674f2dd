//! `GET /metrics` of a real node is what Prometheus reads: every family has
//! `# HELP` and `# TYPE`, counters end `_total`, label values are escaped,
//! histograms are cumulative with `+Inf` equal to `_count`, and the
//! latency, `process_*` and build figures match what the test did.
//!
//! The text is read by [`exposition::parse`], a strict reader of the text
//! format (0.0.4) that refuses what Prometheus refuses.

mod util;

use serde_json::Value;
use strata_proto::v1::{self, ingest_client::IngestClient};
use util::*;

/// HTTP ingest requests the test sends.
const HTTP_REQUESTS: usize = 3;
/// Native gRPC pushes the test sends.
const GRPC_REQUESTS: usize = 2;
/// Samples in each request.
const SAMPLES_PER_REQUEST: usize = 4;

#[test]
fn metrics_endpoint_is_valid_exposition_with_latencies_and_process_figures() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::start(NodeConfig::new(dir.path(), "metrics-node"));
    let base = base_minute_ms();

    for r in 0..HTTP_REQUESTS {
        let lines: Vec<Value> = (0..SAMPLES_PER_REQUEST)
            .map(|i| {
                let ts = base + (r * SAMPLES_PER_REQUEST + i) as i64;
                sample(
                    "self_metrics_test_total",
                    "counter",
                    &[("via", "http")],
                    ts,
                    Value::Null,
                )
            })
            .collect();
        // The last one waits for its commit: a flush was committed by then.
        ingest_ok(&node, &lines, r + 1 == HTTP_REQUESTS);
    }
    push_grpc(&node, base);
    // The one query of the test; every sample was committed before it.
    let sent = (HTTP_REQUESTS + GRPC_REQUESTS) * SAMPLES_PER_REQUEST;
    assert_eq!(
        counter_total(&node, "self_metrics_test_total", base),
        sent as u64
    );

    let (status, text) = get_text(&node.url("/metrics"));
    assert_eq!(status, 200, "{text}");
    let families = exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        exposition::value(&families, name, labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} missing from /metrics:\n{text}"))
    };
    let id = node.id.as_str();

    assert_eq!(
        value("strata_ingest_samples_total", &[("node", id)]),
        sent as f64
    );
    let ingest = "strata_ingest_request_duration_seconds_count";
    let http = value(ingest, &[("node", id), ("protocol", "http")]);
    let grpc = value(ingest, &[("node", id), ("protocol", "grpc")]);
    assert!(http >= HTTP_REQUESTS as f64, "http ingest count {http}");
    assert!(grpc >= GRPC_REQUESTS as f64, "grpc ingest count {grpc}");
    let commits = value(
        "strata_flush_commit_duration_seconds_count",
        &[("node", id)],
    );
    assert!(commits > 0.0, "no commit timed");
    let commit_sum = value("strata_flush_commit_duration_seconds_sum", &[("node", id)]);
    assert!(commit_sum > 0.0, "commits took no time: {commit_sum}");
    assert_eq!(
        value("strata_query_duration_seconds_count", &[("node", id)]),
        1.0,
        "one query was made"
    );

    assert!(value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(value("process_virtual_memory_bytes", &[]) > 0.0);
    assert!(value("process_open_fds", &[]) >= 3.0);
    assert!(value("process_max_fds", &[]) >= value("process_open_fds", &[]));
    assert!(value("process_cpu_seconds_total", &[]) >= 0.0);
    let started = value("process_start_time_seconds", &[]);
    let now_s = now_ms() as f64 / 1000.0;
    assert!(
        started <= now_s + 1.0 && started >= now_s - 3600.0,
        "process_start_time_seconds {started}, now {now_s}"
    );
    assert_eq!(
        value(
            "strata_build_info",
            &[("node", id), ("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

/// `GRPC_REQUESTS` native pushes, the last waiting for its commit.
fn push_grpc(node: &Node, base: i64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut client = IngestClient::connect(format!("http://{}", node.grpc))
            .await
            .expect("connecting to the native ingest");
        for r in 0..GRPC_REQUESTS {
            let points = (0..SAMPLES_PER_REQUEST)
                .map(|i| v1::Point {
                    ts_ms: base + 1000 + (r * SAMPLES_PER_REQUEST + i) as i64,
                    value: 1.0,
                })
                .collect();
            let request = v1::PushRequest {
                series: vec![v1::SeriesSamples {
                    metric: "self_metrics_test_total".into(),
                    kind: v1::Kind::Counter as i32,
                    labels: vec![v1::Label {
                        name: "via".into(),
                        value: "grpc".into(),
                    }],
                    points,
                    apdex_threshold: 0.0,
                }],
                wait_commit: r + 1 == GRPC_REQUESTS,
            };
            let answer = client.push(request).await.expect("native push accepted");
            assert_eq!(answer.into_inner().accepted, SAMPLES_PER_REQUEST as u64);
        }
    });
}

#[test]
fn the_reader_refuses_what_prometheus_refuses() {
    let good =
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 1 1700000000000\n";
    let families = exposition::parse(good).expect("valid text");
    assert_eq!(
        exposition::value(&families, "a_total", &[("x", "q\"\\\n")]),
        Some(1.0)
    );
    let bad = [
        ("no TYPE", "# HELP a_total A.\na_total 1\n"),
        ("no HELP", "# TYPE a_total counter\na_total 1\n"),
        (
            "counter without _total",
            "# HELP a A.\n# TYPE a counter\na 1\n",
        ),
        ("bad value", "# HELP g G.\n# TYPE g gauge\ng 1x\n"),
        (
            "bad escape",
            "# HELP g G.\n# TYPE g gauge\ng{a=\"\\q\"} 1\n",
        ),
        ("unquoted label", "# HELP g G.\n# TYPE g gauge\ng{a=b} 1\n"),
        (
            "duplicate series",
            "# HELP g G.\n# TYPE g gauge\ng 1\ng 2\n",
        ),
        (
            "family split",
            "# HELP g G.\n# TYPE g gauge\ng{a=\"1\"} 1\n# HELP h H.\n# TYPE h gauge\nh 1\ng{a=\"2\"} 1\n",
        ),
        (
            "buckets not cumulative",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        ),
        (
            "+Inf is not the count",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",
        ),
        (
            "no +Inf bucket",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        ),
    ];
    for (what, text) in bad {
        assert!(exposition::parse(text).is_err(), "{what} accepted:\n{text}");
    }
}

/// A strict reader of the Prometheus text exposition format (0.0.4).
mod exposition {
    use std::collections::{HashMap, HashSet};

    /// One metric family: its type and samples.
    #[derive(Debug, Default)]
    pub struct Family {
        pub kind: String,
        pub samples: Vec<Sample>,
    }

    /// Label names and values, in the order written.
    pub type Labels = Vec<(String, String)>;

    /// One sample line.
    #[derive(Debug)]
    pub struct Sample {
        pub name: String,
        pub labels: Labels,
        pub value: f64,
    }

    /// The value of the sample `name` whose labels are exactly `labels`
    /// (in any order).
    pub fn value(
        families: &HashMap<String, Family>,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<f64> {
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        families.values().flat_map(|f| &f.samples).find_map(|s| {
            let mut have = s.labels.clone();
            have.sort();
            (s.name == name && have == want).then_some(s.value)
        })
    }

    /// Reads the whole text; an error names the line and the rule it breaks.
    pub fn parse(text: &str) -> Result<HashMap<String, Family>, String> {
        let mut families: HashMap<String, Family> = HashMap::new();
        let mut helped: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut seen: HashSet<String> = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                check_name(name).map_err(at)?;
                if !helped.insert(name.to_owned()) {
                    return Err(at(format!("second HELP for {name}")));
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or_else(|| at("bad TYPE".into()))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(at(format!("unknown type {kind}")));
                }
                if !helped.contains(name) {
                    return Err(at(format!("TYPE of {name} without HELP")));
                }
                if families.contains_key(name) {
                    return Err(at(format!("second TYPE for {name}")));
                }
                if kind == "counter" && !name.ends_with("_total") {
                    return Err(at(format!("counter {name} does not end with _total")));
                }
                families.insert(
                    name.to_owned(),
                    Family {
                        kind: kind.to_owned(),
                        samples: Vec::new(),
                    },
                );
                current = Some(name.to_owned());
            } else if line.starts_with('#') || line.trim().is_empty() {
                continue;
            } else {
                let sample = parse_sample(line).map_err(at)?;
                let family = current
                    .as_deref()
                    .ok_or_else(|| at("sample before any TYPE".into()))?;
                if !belongs(family, &families[family].kind, &sample.name) {
                    return Err(at(format!("not a sample of the family {family} above it")));
                }
                let mut key = sample.labels.clone();
                key.sort();
                if !seen.insert(format!("{}{key:?}", sample.name)) {
                    return Err(at("duplicate series".into()));
                }
                families
                    .get_mut(family)
                    .expect("current family exists")
                    .samples
                    .push(sample);
            }
        }
        if let Some(name) = helped.iter().find(|h| !families.contains_key(*h)) {
            return Err(format!("HELP of {name} without TYPE"));
        }
        for (name, family) in &families {
            if family.kind == "histogram" {
                check_histogram(name, family)?;
            }
        }
        Ok(families)
    }

    /// Whether a sample named `sample` is one of `family`, of type `kind`.
    fn belongs(family: &str, kind: &str, sample: &str) -> bool {
        let suffixes: &[&str] = match kind {
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            _ => &[""],
        };
        suffixes
            .iter()
            .any(|s| sample.strip_suffix(s) == Some(family))
    }

    fn check_name(name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            });
        if ok {
            Ok(())
        } else {
            Err(format!("bad metric name {name:?}"))
        }
    }

    fn parse_sample(line: &str) -> Result<Sample, String> {
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return Err("no value".into()),
        };
        check_name(name)?;
        let (labels, rest) = match rest.strip_prefix('{') {
            Some(body) => parse_labels(body)?,
            None => (Vec::new(), rest),
        };
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or("no space before the value")?
            .split(' ');
        let value = parse_value(fields.next().unwrap_or_default())?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| format!("bad timestamp {ts:?}"))?;
        }
        if fields.next().is_some() {
            return Err("trailing fields".into());
        }
        Ok(Sample {
            name: name.to_owned(),
            labels,
            value,
        })
    }

    fn parse_value(v: &str) -> Result<f64, String> {
        match v {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ if v.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => {
                v.parse().map_err(|_| format!("bad value {v:?}"))
            }
            _ => Err(format!("bad value {v:?}")),
        }
    }

    /// Labels after `{`, up to and including `}`; returns what follows.
    fn parse_labels(body: &str) -> Result<(Labels, &str), String> {
        let mut labels = Vec::new();
        let mut rest = body;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                return Ok((labels, after));
            }
            let (key, after) = rest.split_once("=\"").ok_or("label value not quoted")?;
            check_name(key).map_err(|_| format!("bad label name {key:?}"))?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in a label value")),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            };
            labels.push((key.to_owned(), value));
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }

    /// Each series: `le` ascending, counts cumulative, a `+Inf` bucket equal
    /// to `_count`, one `_sum`.
    fn check_histogram(name: &str, family: &Family) -> Result<(), String> {
        let without_le = |s: &Sample| {
            let mut l: Vec<_> = s
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            l.sort();
            l
        };
        let counts: Vec<&Sample> = family
            .samples
            .iter()
            .filter(|s| s.name == format!("{name}_count"))
            .collect();
        if counts.is_empty() {
            return Err(format!("histogram {name} has no _count"));
        }
        for count in counts {
            let series = without_le(count);
            let of = |suffix: &str| -> Vec<&Sample> {
                family
                    .samples
                    .iter()
                    .filter(|s| s.name == format!("{name}{suffix}") && without_le(s) == series)
                    .collect()
            };
            if of("_sum").len() != 1 {
                return Err(format!("{name}{series:?}: not exactly one _sum"));
            }
            let mut last = (f64::NEG_INFINITY, 0.0);
            for b in of("_bucket") {
                let le = b
                    .labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .ok_or(format!("{name}_bucket without le"))?;
                let le = parse_value(&le.1)?;
                if le <= last.0 || b.value < last.1 {
                    return Err(format!(
                        "{name}{series:?}: buckets not ascending and cumulative"
                    ));
                }
                last = (le, b.value);
            }
            if last.0 != f64::INFINITY || last.1 != count.value {
                return Err(format!(
                    "{name}{series:?}: last bucket {last:?}, not +Inf equal to _count {}",
                    count.value
                ));
            }
        }
        Ok(())
    }
}
