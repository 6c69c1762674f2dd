//! What applications and Prometheus push: an OTLP export or a remote-write
//! request, decoded and converted into points as their receivers do.

use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    number_data_point,
};
use prost::Message as _;
use strata_model::StateParams;

use crate::inputs::otlp::convert::{Mapping, convert};
use crate::inputs::points::{Point, Value};
use crate::inputs::remote_write::{convert as rw, prompb};

/// The first byte chooses the protocol (even: OTLP protobuf, odd: remote
/// write), the rest is the request. Checks that conversion never panics,
/// that every state it makes is valid, that every point names a data point
/// of the request, and that OTLP labels have valid names.
pub fn pushed(bytes: &[u8]) {
    let Some((&which, body)) = bytes.split_first() else {
        return;
    };
    let params = StateParams::default();
    if which % 2 == 0 {
        let Ok(request) = ExportMetricsServiceRequest::decode(body) else {
            return;
        };
        let mapping = Mapping {
            resource_labels: BTreeMap::from([("service.name".into(), "service".into())]),
            params,
            node_id: "edge".into(),
        };
        let converted = convert(request, &mapping);
        for p in &converted.points {
            check_point(p);
            for (name, _) in &p.labels {
                let valid = strata_model::SeriesKey::new("m", [(name.clone(), "v".into())]);
                assert!(valid.is_ok(), "OTLP label name {name:?} is not valid");
            }
        }
    } else {
        let Ok(request) = prompb::WriteRequest::decode(body) else {
            return;
        };
        let converted = rw::convert(request, &HashMap::new(), &params, "edge");
        converted.points.iter().for_each(check_point);
    }
}

fn check_point(p: &Point) {
    assert!(p.ordinal >= 1, "point without its place in the request");
    match &p.value {
        Value::State(state) => {
            if let Err(e) = state.validate() {
                panic!("{} got an invalid state: {e}", p.metric);
            }
            assert_eq!(state.kind(), p.kind, "{}", p.metric);
        }
        Value::Cumulative { report, .. } => {
            if let crate::inputs::cumulative::Total::Exp(h) = &report.total {
                assert!(
                    h.validate().is_ok(),
                    "{} got an invalid histogram",
                    p.metric
                );
            }
        }
    }
}

/// Valid requests to start from: an OTLP export of every data point type
/// (byte 0) and a remote-write request with a counter, a gauge, a classic
/// histogram and a native one (byte 1).
pub fn pushed_seeds() -> Vec<Vec<u8>> {
    let mut a = vec![0u8];
    a.extend(otlp_seed().encode_to_vec());
    let mut b = vec![1u8];
    b.extend(remote_write_seed().encode_to_vec());
    vec![a, b]
}

/// An OTLP export: a cumulative counter, an explicit and a delta
/// exponential histogram.
fn otlp_seed() -> ExportMetricsServiceRequest {
    let attr = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    };
    let cumulative = AggregationTemporality::Cumulative as i32;
    let number = |v: i64| NumberDataPoint {
        attributes: vec![attr("http.route", "/pay")],
        start_time_unix_nano: 1,
        time_unix_nano: 1_763_800_000_000_000_000,
        value: Some(number_data_point::Value::AsInt(v)),
        ..Default::default()
    };
    let metrics = vec![
        Metric {
            name: "orders".into(),
            data: Some(metric::Data::Sum(Sum {
                data_points: vec![number(5)],
                aggregation_temporality: cumulative,
                is_monotonic: true,
            })),
            ..Default::default()
        },
        Metric {
            name: "latency".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    time_unix_nano: 1_763_800_000_000_000_000,
                    count: 3,
                    sum: Some(12.0),
                    bucket_counts: vec![1, 2, 0],
                    explicit_bounds: vec![1.0, 10.0],
                    ..Default::default()
                }],
                aggregation_temporality: cumulative,
            })),
            ..Default::default()
        },
        Metric {
            name: "latency.exp".into(),
            data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    time_unix_nano: 1_763_800_000_000_000_000,
                    count: 3,
                    sum: Some(7.0),
                    scale: 3,
                    zero_count: 1,
                    positive: Some(
                        opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets {
                            offset: 8,
                            bucket_counts: vec![1, 0, 1],
                        },
                    ),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Delta as i32,
            })),
            ..Default::default()
        },
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![attr("service.name", "checkout")],
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

/// A remote-write request: a counter, a gauge, a classic histogram family
/// and a native histogram.
fn remote_write_seed() -> prompb::WriteRequest {
    let label = |n: &str, v: &str| prompb::Label {
        name: n.into(),
        value: v.into(),
    };
    let series = |labels: Vec<prompb::Label>, value: f64| prompb::TimeSeries {
        labels,
        samples: vec![prompb::Sample {
            value,
            timestamp: 1_763_800_000_000,
        }],
        histograms: Vec::new(),
    };
    let mut timeseries = vec![
        series(
            vec![label("__name__", "orders_total"), label("job", "app")],
            10.0,
        ),
        series(vec![label("__name__", "queue_depth")], 7.0),
        series(
            vec![label("__name__", "lat_bucket"), label("le", "0.5")],
            2.0,
        ),
        series(
            vec![label("__name__", "lat_bucket"), label("le", "+Inf")],
            3.0,
        ),
        series(vec![label("__name__", "lat_sum")], 1.25),
    ];
    timeseries.push(prompb::TimeSeries {
        labels: vec![label("__name__", "native")],
        samples: Vec::new(),
        histograms: vec![prompb::Histogram {
            count: Some(prompb::histogram::Count::CountInt(3)),
            sum: 4.0,
            schema: 2,
            positive_spans: vec![prompb::BucketSpan {
                offset: 1,
                length: 2,
            }],
            positive_deltas: vec![1, 1],
            zero_count: Some(prompb::histogram::ZeroCount::ZeroCountInt(0)),
            timestamp: 1_763_800_000_000,
            ..Default::default()
        }],
    });
    prompb::WriteRequest {
        timeseries,
        metadata: Vec::new(),
    }
}
