//! OTLP metrics to strata's kinds (docs/OTLP.md has the table).
//!
//! | OTLP                                   | strata                                  |
//! |----------------------------------------|-----------------------------------------|
//! | Sum, monotonic, integers               | `counter`                               |
//! | Sum, monotonic, doubles                | `sum`                                   |
//! | Sum, not monotonic, cumulative; Gauge  | `latest`                                |
//! | ExponentialHistogram                   | `exp_histogram`, as it is               |
//! | Histogram (explicit buckets)           | `exp_histogram`, each bucket at one value |
//! | Summary; Sum not monotonic, delta      | refused                                 |
//!
//! Cumulative points become deltas through the stream table
//! ([`crate::inputs::cumulative`]); delta points are merged as they come.
//! Labels are the point's attributes (names sanitised) and the resource
//! attributes the allow-list names; the other resource attributes are
//! dropped and counted.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogramDataPoint, HistogramDataPoint, Metric,
    NumberDataPoint, exponential_histogram_data_point, metric, number_data_point,
};
use strata_model::exp_hist::{Buckets, ExpHistParts};
use strata_model::{ExpHist, Kind, Latest, State, StateParams, Sum};

use crate::inputs::cumulative::{Increase, Report, Total};
use crate::inputs::points::{Point, Rejected, Value, explicit, state_of};

/// How the node maps what it receives.
#[derive(Clone, Debug)]
pub struct Mapping {
    /// Resource attribute → label name.
    pub resource_labels: BTreeMap<String, String>,
    /// Scale and bucket bound of the exponential histograms made from
    /// explicit buckets, and the bound of those received.
    pub params: StateParams,
    /// The node's id: the source of `latest` values.
    pub node_id: String,
}

/// A request's data points, converted.
#[derive(Debug, Default)]
pub struct Converted {
    pub points: Vec<Point>,
    pub rejected: Rejected,
    /// Resource attributes not on the allow-list (and attribute values that
    /// are arrays, maps or bytes), dropped.
    pub dropped_attributes: u64,
}

/// The data points of `request` in request order.
pub fn convert(request: ExportMetricsServiceRequest, mapping: &Mapping) -> Converted {
    let mut out = Converted::default();
    let mut ordinal = 0usize;
    for rm in request.resource_metrics {
        let resource = rm.resource.map(|r| r.attributes).unwrap_or_default();
        let mut base = Vec::new();
        let mut resource_id = Vec::new();
        for kv in &resource {
            let Some(value) = attribute_value(kv.value.as_ref()) else {
                out.dropped_attributes += 1;
                continue;
            };
            resource_id.push((kv.key.clone(), value.clone()));
            match mapping.resource_labels.get(&kv.key) {
                Some(label) if !value.is_empty() => base.push((label.clone(), value)),
                _ => out.dropped_attributes += 1,
            }
        }
        resource_id.sort();
        for sm in rm.scope_metrics {
            let scope = sm.scope.map(|s| (s.name, s.version)).unwrap_or_default();
            for m in sm.metrics {
                let at = Origin {
                    resource: &resource_id,
                    scope: &scope,
                    base: &base,
                };
                metric_points(m, &at, mapping, &mut ordinal, &mut out);
            }
        }
    }
    out
}

/// Where a metric came from: what its stream identity and labels start with.
struct Origin<'a> {
    resource: &'a [(String, String)],
    scope: &'a (String, String),
    /// Labels from the resource.
    base: &'a [(String, String)],
}

/// Converts the points of one metric.
fn metric_points(
    m: Metric,
    at: &Origin<'_>,
    mapping: &Mapping,
    ordinal: &mut usize,
    out: &mut Converted,
) {
    let name = metric_name(&m.name);
    let Some(data) = m.data else {
        return;
    };
    let points = match &data {
        metric::Data::Gauge(g) => g.data_points.len(),
        metric::Data::Sum(s) => s.data_points.len(),
        metric::Data::Histogram(h) => h.data_points.len(),
        metric::Data::ExponentialHistogram(h) => h.data_points.len(),
        metric::Data::Summary(s) => s.data_points.len(),
    };
    let first = *ordinal + 1;
    *ordinal += points;
    let Some(name) = name else {
        out.rejected.add(points as u64, || {
            format!("metric {:?}: not a usable metric name", m.name)
        });
        return;
    };
    let ctx = PointCtx { name: &name, at };
    let mut next = first;
    match data {
        metric::Data::Summary(_) => out.rejected.add(points as u64, || {
            format!("metric {name:?}: a Summary is refused: quantiles cannot be merged (export a histogram)")
        }),
        metric::Data::Gauge(g) => {
            for p in g.data_points {
                let l = ctx.labelled(&p.attributes, &mut next, out);
                ctx.push(out, l, gauge(&p, mapping));
            }
        }
        metric::Data::Sum(s) => {
            let temporality = temporality(s.aggregation_temporality);
            for p in s.data_points {
                let l = ctx.labelled(&p.attributes, &mut next, out);
                let v = sum(&p, s.is_monotonic, temporality, mapping, &l.identity);
                ctx.push(out, l, v);
            }
        }
        metric::Data::Histogram(h) => {
            let temporality = temporality(h.aggregation_temporality);
            for p in h.data_points {
                let l = ctx.labelled(&p.attributes, &mut next, out);
                let v = histogram(&p, temporality, mapping, &l.identity);
                ctx.push(out, l, v);
            }
        }
        metric::Data::ExponentialHistogram(h) => {
            let temporality = temporality(h.aggregation_temporality);
            for p in h.data_points {
                let l = ctx.labelled(&p.attributes, &mut next, out);
                let v = exponential(&p, temporality, mapping, &l.identity);
                ctx.push(out, l, v);
            }
        }
    }
}

/// A data point's labels and stream identity.
struct Labelled {
    ordinal: usize,
    labels: Vec<(String, String)>,
    identity: String,
}

/// What the points of one metric share.
struct PointCtx<'a> {
    name: &'a str,
    at: &'a Origin<'a>,
}

/// A converted point: its kind, time and value, or why it is refused;
/// `None` when there is nothing to merge (a point flagged as holding no
/// recorded value).
type Conversion = Option<Result<(Kind, Option<i64>, Value), String>>;

impl PointCtx<'_> {
    /// The resource's labels, then the point's attributes (which win over
    /// a resource label of the same name); how many attributes were dropped.
    fn labels(&self, attrs: &[KeyValue]) -> (Vec<(String, String)>, u64) {
        let mut dropped = 0;
        let mut merged: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for kv in attrs {
            let Some(value) = attribute_value(kv.value.as_ref()) else {
                dropped += 1;
                continue;
            };
            if value.is_empty() {
                continue;
            }
            merged
                .entry(label_name(&kv.key))
                .or_default()
                .push((kv.key.clone(), value));
        }
        let mut labels: Vec<(String, String)> = self
            .at
            .base
            .iter()
            .filter(|(name, _)| !merged.contains_key(name))
            .cloned()
            .collect();
        for (name, mut values) in merged {
            // Attributes that sanitise to one name: their values joined in
            // the order of their original names.
            values.sort();
            let joined: Vec<String> = values.into_iter().map(|(_, v)| v).collect();
            labels.push((name, joined.join(";")));
        }
        (labels, dropped)
    }

    /// The labels and stream identity of the point numbered `*next`, which
    /// moves on; dropped attributes are counted in `out`.
    fn labelled(&self, attrs: &[KeyValue], next: &mut usize, out: &mut Converted) -> Labelled {
        let (labels, dropped) = self.labels(attrs);
        out.dropped_attributes += dropped;
        let identity = self.identity(&labels);
        let ordinal = *next;
        *next += 1;
        Labelled {
            ordinal,
            labels,
            identity,
        }
    }

    /// The stream identity of a point: resource, scope, metric, labels.
    fn identity(&self, labels: &[(String, String)]) -> String {
        let mut sorted = labels.to_vec();
        sorted.sort();
        serde_json::json!([self.at.resource, self.at.scope, self.name, sorted]).to_string()
    }

    fn push(&self, out: &mut Converted, l: Labelled, conversion: Conversion) {
        match conversion {
            None => {}
            Some(Ok((kind, ts_ms, value))) => out.points.push(Point {
                ordinal: l.ordinal,
                metric: self.name.to_string(),
                kind,
                labels: l.labels,
                ts_ms,
                value,
            }),
            Some(Err(reason)) => out.rejected.add(1, || {
                format!("metric {:?}, data point {}: {reason}", self.name, l.ordinal)
            }),
        }
    }
}

/// `AggregationTemporality` of a metric; `None` when unspecified or unknown.
fn temporality(value: i32) -> Option<AggregationTemporality> {
    match AggregationTemporality::try_from(value) {
        Ok(AggregationTemporality::Unspecified) | Err(_) => None,
        Ok(t) => Some(t),
    }
}

/// OTLP's flag for a point that holds no recorded value (a staleness marker).
const NO_RECORDED_VALUE: u32 = 1;

/// A point's event time and its metric's temporality: `None` for a point
/// flagged as holding no recorded value (nothing to merge), an error when the
/// temporality is unspecified.
fn header(
    flags: u32,
    time_unix_nano: u64,
    temporality: Option<AggregationTemporality>,
) -> Option<Result<(Option<i64>, AggregationTemporality), String>> {
    if flags & NO_RECORDED_VALUE != 0 {
        return None;
    }
    Some(
        temporality
            .map(|t| (time_ms(time_unix_nano), t))
            .ok_or_else(|| "aggregation temporality is unspecified".to_string()),
    )
}

/// Event time in ms of a point's `time_unix_nano`; 0 means none.
fn time_ms(time_unix_nano: u64) -> Option<i64> {
    (time_unix_nano != 0).then(|| i64::try_from(time_unix_nano / 1_000_000).unwrap_or(i64::MAX))
}

fn number(p: &NumberDataPoint) -> Result<f64, String> {
    match p.value {
        Some(number_data_point::Value::AsDouble(v)) => Ok(v),
        Some(number_data_point::Value::AsInt(v)) => Ok(v as f64),
        None => Err("the data point has no value".into()),
    }
}

fn latest(value: f64, ts_ms: Option<i64>, mapping: &Mapping, now_ms: i64) -> Result<State, String> {
    if !value.is_finite() {
        return Err(format!("value {value} is not finite"));
    }
    Ok(State::Latest(Some(Latest {
        value,
        ts_ms: ts_ms.unwrap_or(now_ms),
        source: mapping.node_id.clone(),
    })))
}

/// A Gauge point → `latest`.
fn gauge(p: &NumberDataPoint, mapping: &Mapping) -> Conversion {
    if p.flags & NO_RECORDED_VALUE != 0 {
        return None;
    }
    let ts_ms = time_ms(p.time_unix_nano);
    Some(number(p).and_then(|v| {
        let state = latest(v, ts_ms, mapping, crate::context::now_ms())?;
        Ok((Kind::Latest, ts_ms, Value::State(state)))
    }))
}

/// A Sum point: monotonic → `counter` (ints) or `sum` (doubles);
/// cumulative non-monotonic → `latest`; delta non-monotonic refused.
fn sum(
    p: &NumberDataPoint,
    monotonic: bool,
    temporality: Option<AggregationTemporality>,
    mapping: &Mapping,
    identity: &str,
) -> Conversion {
    let (ts_ms, temporality) = match header(p.flags, p.time_unix_nano, temporality)? {
        Ok(header) => header,
        Err(e) => return Some(Err(e)),
    };
    let cumulative = temporality == AggregationTemporality::Cumulative;
    if !monotonic {
        if !cumulative {
            return Some(Err("a non-monotonic Sum with delta temporality is refused: its level cannot be rebuilt from deltas (export it cumulative)".into()));
        }
        return Some(number(p).and_then(|v| {
            let state = latest(v, ts_ms, mapping, crate::context::now_ms())?;
            Ok((Kind::Latest, ts_ms, Value::State(state)))
        }));
    }
    let total = match p.value {
        Some(number_data_point::Value::AsInt(v)) => match u64::try_from(v) {
            Ok(v) => Total::Int(v),
            Err(_) => return Some(Err(format!("a monotonic Sum went negative ({v})"))),
        },
        Some(number_data_point::Value::AsDouble(v)) if v.is_finite() && v >= 0.0 => Total::Float(v),
        Some(number_data_point::Value::AsDouble(v)) => {
            return Some(Err(format!(
                "a monotonic Sum must be finite and not negative, got {v}"
            )));
        }
        None => return Some(Err("the data point has no value".into())),
    };
    let kind = match total {
        Total::Int(_) => Kind::Counter,
        _ => Kind::Sum,
    };
    if cumulative {
        let report = Report {
            start_ns: p.start_time_unix_nano,
            time_ns: p.time_unix_nano,
            total,
        };
        let value = Value::Cumulative {
            identity: identity.to_string(),
            report,
        };
        return Some(Ok((kind, ts_ms, value)));
    }
    let increase = match total {
        Total::Int(v) => Increase::Int(v),
        Total::Float(v) => Increase::Float(v),
        _ => return None,
    };
    Some(state_of(increase, &[], &mapping.params).map(|s| (kind, ts_ms, Value::State(s))))
}

/// An explicit-bucket Histogram point → `exp_histogram`.
fn histogram(
    p: &HistogramDataPoint,
    temporality: Option<AggregationTemporality>,
    mapping: &Mapping,
    identity: &str,
) -> Conversion {
    let (ts_ms, temporality) = match header(p.flags, p.time_unix_nano, temporality)? {
        Ok(header) => header,
        Err(e) => return Some(Err(e)),
    };
    if p.bucket_counts.is_empty() {
        return Some(Err(
            "a histogram without buckets (count and sum only) cannot be merged as a distribution"
                .into(),
        ));
    }
    if temporality == AggregationTemporality::Cumulative {
        // Checked now, so that a refused layout never enters the table.
        if let Err(e) = explicit(
            &p.explicit_bounds,
            &p.bucket_counts,
            p.sum,
            None,
            None,
            &mapping.params,
        ) {
            return Some(Err(e));
        }
        let report = Report {
            start_ns: p.start_time_unix_nano,
            time_ns: p.time_unix_nano,
            total: Total::Explicit {
                bounds: p.explicit_bounds.clone(),
                counts: p.bucket_counts.clone(),
                sum: p.sum.unwrap_or(f64::NAN),
            },
        };
        let value = Value::Cumulative {
            identity: identity.to_string(),
            report,
        };
        return Some(Ok((Kind::ExpHistogram, ts_ms, value)));
    }
    Some(
        explicit(
            &p.explicit_bounds,
            &p.bucket_counts,
            p.sum,
            p.min,
            p.max,
            &mapping.params,
        )
        .map(|h| {
            (
                Kind::ExpHistogram,
                ts_ms,
                Value::State(State::ExpHistogram(Box::new(h))),
            )
        }),
    )
}

/// An ExponentialHistogram point → `exp_histogram`, as it is.
fn exponential(
    p: &ExponentialHistogramDataPoint,
    temporality: Option<AggregationTemporality>,
    mapping: &Mapping,
    identity: &str,
) -> Conversion {
    let (ts_ms, temporality) = match header(p.flags, p.time_unix_nano, temporality)? {
        Ok(header) => header,
        Err(e) => return Some(Err(e)),
    };
    let h = match exp_of(p, mapping) {
        Ok(h) => h,
        Err(e) => return Some(Err(e)),
    };
    let value = if temporality == AggregationTemporality::Cumulative {
        Value::Cumulative {
            identity: identity.to_string(),
            report: Report {
                start_ns: p.start_time_unix_nano,
                time_ns: p.time_unix_nano,
                total: Total::Exp(h),
            },
        }
    } else {
        Value::State(State::ExpHistogram(Box::new(h)))
    };
    Some(Ok((Kind::ExpHistogram, ts_ms, value)))
}

/// Most buckets one side of a received exponential histogram may carry
/// (the model's hard cap): more is refused before anything is allocated.
const MAX_RECEIVED_BUCKETS: usize = strata_model::exp_hist::MAX_MAX_BUCKETS as usize;

fn exp_of(p: &ExponentialHistogramDataPoint, mapping: &Mapping) -> Result<ExpHist, String> {
    let side = |b: &Option<exponential_histogram_data_point::Buckets>| -> Result<Buckets, String> {
        match b {
            None => Ok(Buckets::default()),
            Some(b) if b.bucket_counts.len() > MAX_RECEIVED_BUCKETS => Err(format!(
                "{} buckets on one side, more than {MAX_RECEIVED_BUCKETS}",
                b.bucket_counts.len()
            )),
            Some(b) => Ok(Buckets::new(b.offset, b.bucket_counts.clone())),
        }
    };
    let mut sum = Sum::default();
    // An absent sum is the sum of nothing known: 0 (OTLP omits it when
    // negative values were recorded and the exporter chose not to send it).
    sum.add(p.sum.unwrap_or(0.0)).map_err(|e| e.to_string())?;
    let parts = ExpHistParts {
        scale: p.scale,
        max_buckets: mapping.params.exp_histogram_max_buckets,
        zero_threshold: p.zero_threshold,
        zero_count: p.zero_count,
        positive: side(&p.positive)?,
        negative: side(&p.negative)?,
        count: p.count,
        sum,
        min: p.min.unwrap_or(f64::NAN),
        max: p.max.unwrap_or(f64::NAN),
    };
    ExpHist::from_parts_fitting(parts).map_err(|e| e.to_string())
}

/// An attribute value as a label value; `None` for arrays, maps and bytes,
/// which are dropped.
fn attribute_value(v: Option<&AnyValue>) -> Option<String> {
    match v.and_then(|v| v.value.as_ref())? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// An attribute name as a label name: every character outside
/// `[a-zA-Z0-9_]` becomes `_`, and a leading digit gets a `_` before it
/// (`http.route` → `http_route`, `2xx` → `_2xx`).
pub fn label_name(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A metric name as strata's: every character outside `[a-zA-Z0-9_:]`
/// becomes `_`, a leading digit gets a `_` before it; `None` when empty.
pub fn metric_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, ResourceMetrics, ScopeMetrics};

    fn attr(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn text(key: &str, value: &str) -> KeyValue {
        attr(key, any_value::Value::StringValue(value.into()))
    }

    fn mapping() -> Mapping {
        Mapping {
            resource_labels: BTreeMap::from([("service.name".into(), "service".into())]),
            params: StateParams::default(),
            node_id: "edge".into(),
        }
    }

    fn request(resource: Vec<KeyValue>, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn point(attributes: Vec<KeyValue>, value: number_data_point::Value) -> NumberDataPoint {
        NumberDataPoint {
            attributes,
            time_unix_nano: 1_763_800_000_000_000_000,
            value: Some(value),
            ..Default::default()
        }
    }

    fn metric(name: &str, data: metric::Data) -> Metric {
        Metric {
            name: name.into(),
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn names_are_sanitised_and_colliding_attributes_joined() {
        assert_eq!(label_name("http.route"), "http_route");
        assert_eq!(label_name("2xx"), "_2xx");
        assert_eq!(label_name(""), "_");
        assert_eq!(
            metric_name("http.server.duration").as_deref(),
            Some("http_server_duration")
        );
        assert_eq!(metric_name("9lives").as_deref(), Some("_9lives"));
        assert_eq!(metric_name(""), None);

        let gauge = metric::Data::Gauge(Gauge {
            data_points: vec![point(
                vec![
                    text("a.b", "1"),
                    text("a_b", "2"),
                    text("service", "from-point"),
                    attr("flag", any_value::Value::BoolValue(true)),
                    attr("list", any_value::Value::BytesValue(vec![1])),
                    text("empty", ""),
                ],
                number_data_point::Value::AsDouble(1.5),
            )],
        });
        let req = request(
            vec![text("service.name", "checkout"), text("host.name", "h1")],
            vec![metric("queue.depth", gauge)],
        );
        let out = convert(req, &mapping());
        assert_eq!(out.rejected.count, 0);
        // host.name (not on the list) and the bytes value are dropped.
        assert_eq!(out.dropped_attributes, 2);
        let p = &out.points[0];
        assert_eq!(p.metric, "queue_depth");
        assert_eq!(p.kind, Kind::Latest);
        let labels: Vec<(&str, &str)> = p
            .labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        // The point's `service` wins over the resource's; `a.b` and `a_b`
        // are joined in the order of their names.
        assert_eq!(
            labels,
            [("a_b", "1;2"), ("flag", "true"), ("service", "from-point")]
        );
    }

    #[test]
    fn sums_map_by_monotonicity_and_temporality() {
        let sum = |monotonic, temporality: AggregationTemporality, value| {
            metric::Data::Sum(opentelemetry_proto::tonic::metrics::v1::Sum {
                data_points: vec![point(Vec::new(), value)],
                aggregation_temporality: temporality as i32,
                is_monotonic: monotonic,
            })
        };
        use AggregationTemporality::{Cumulative, Delta, Unspecified};
        use number_data_point::Value::{AsDouble, AsInt};
        let req = request(
            Vec::new(),
            vec![
                metric("ints", sum(true, Delta, AsInt(4))),
                metric("doubles", sum(true, Cumulative, AsDouble(2.5))),
                metric("level", sum(false, Cumulative, AsInt(-3))),
                metric("updown", sum(false, Delta, AsInt(1))),
                metric("unknown", sum(true, Unspecified, AsInt(1))),
                metric("negative", sum(true, Cumulative, AsInt(-1))),
            ],
        );
        let out = convert(req, &mapping());
        let kinds: Vec<(&str, Kind)> = out
            .points
            .iter()
            .map(|p| (p.metric.as_str(), p.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("ints", Kind::Counter),
                ("doubles", Kind::Sum),
                ("level", Kind::Latest)
            ]
        );
        assert!(matches!(
            out.points[0].value,
            Value::State(State::Counter(4))
        ));
        assert!(matches!(out.points[1].value, Value::Cumulative { .. }));
        assert_eq!(out.rejected.count, 3);
        let message = out.rejected.message();
        for (name, why) in [
            ("updown", "delta"),
            ("unknown", "unspecified"),
            ("negative", "went negative"),
        ] {
            assert!(message.contains(name) && message.contains(why), "{message}");
        }
    }

    #[test]
    fn a_point_without_a_recorded_value_is_skipped_not_refused() {
        let mut p = point(Vec::new(), number_data_point::Value::AsDouble(1.0));
        p.flags = NO_RECORDED_VALUE;
        let gauge = metric::Data::Gauge(Gauge {
            data_points: vec![p],
        });
        let out = convert(request(Vec::new(), vec![metric("g", gauge)]), &mapping());
        assert!(out.points.is_empty());
        assert_eq!(out.rejected.count, 0);
    }
}
