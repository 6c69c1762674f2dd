//! Remote-write series to strata's kinds (docs/REMOTE_WRITE.md has the table).
//!
//! Remote write 1.0 carries samples without their type; the type comes
//! from the request's metadata (Prometheus sends it every minute, remembered
//! by the receiver), else from the series' shape and name:
//!
//! | series | strata |
//! |---|---|
//! | native histogram | `exp_histogram`, cumulative → deltas |
//! | `x_bucket{le}` family (with `+Inf`), its `x_sum` | `exp_histogram` named `x`, each bucket at one value, cumulative → deltas |
//! | counter (metadata `counter`, or a name ending `_total`), `x_sum`, `x_count` not absorbed in a family | `sum`, cumulative → deltas |
//! | `x{quantile}` (a summary's quantiles) | refused |
//! | anything else (gauges) | `latest` |

use std::collections::{BTreeMap, HashMap};

use strata_model::exp_hist::{Buckets, ExpHistParts, MAX_MAX_BUCKETS};
use strata_model::{ExpHist, Kind, Latest, State, StateParams, Sum};

use super::prompb::{self, BucketSpan, WriteRequest, histogram, metric_type};
use crate::inputs::cumulative::{Report, Total};
use crate::inputs::points::{Point, Rejected, Value};

/// Prometheus' staleness marker: a NaN with this bit pattern ends a series;
/// it carries no value and is skipped.
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// A request's points, converted.
#[derive(Debug, Default)]
pub struct Converted {
    pub points: Vec<Point>,
    pub rejected: Rejected,
}

/// What a series is, as far as this request and the metadata tell.
enum Shape {
    Native,
    Bucket { base: String, le: f64 },
    Part { base: String, sum: bool },
    Quantile,
    Counter,
    Gauge,
}

/// One classic histogram at one timestamp: its buckets' cumulative counts by
/// upper bound, its sum, the ordinals of its samples.
#[derive(Default)]
struct Family {
    buckets: Vec<(f64, f64)>,
    sum: Option<f64>,
    ordinals: Vec<usize>,
}

/// (base name, labels without `le`, timestamp).
type FamilyKey = (String, Vec<(String, String)>, i64);

/// The request's series as points; `types` maps a metric family to its
/// `MetricType` (from this and earlier requests' metadata).
pub fn convert(
    request: WriteRequest,
    types: &HashMap<String, i32>,
    params: &StateParams,
    node_id: &str,
) -> Converted {
    let mut out = Converted::default();
    let mut families: BTreeMap<FamilyKey, Family> = BTreeMap::new();
    let mut parts = Vec::new();
    let mut ordinal = 0usize;
    for ts in request.timeseries {
        let first = ordinal + 1;
        ordinal += ts.samples.len() + ts.histograms.len();
        let Some((name, labels)) = split_name(ts.labels) else {
            out.rejected.add((ordinal + 1 - first) as u64, || {
                format!("sample {first}: a series without __name__")
            });
            continue;
        };
        let mut next = first;
        let shape_of = shape(&name, &labels, !ts.histograms.is_empty(), types);
        match shape_of {
            Shape::Native => {
                for h in &ts.histograms {
                    let point = native_point(&name, &labels, h, params, next);
                    push(&mut out, point, &name, next);
                    next += 1;
                }
            }
            Shape::Quantile => out.rejected.add(ts.samples.len() as u64, || {
                format!("metric {name:?}: a summary's quantiles are refused: they cannot be merged (use a histogram)")
            }),
            Shape::Bucket { base, le } => {
                let without_le: Vec<_> = labels.into_iter().filter(|(n, _)| n != "le").collect();
                for s in &ts.samples {
                    if !is_stale(s.value) {
                        let family = families
                            .entry((base.clone(), without_le.clone(), s.timestamp))
                            .or_default();
                        family.buckets.push((le, s.value));
                        family.ordinals.push(next);
                    }
                    next += 1;
                }
            }
            Shape::Part { base, sum } => parts.push((base, name, labels, sum, ts.samples, next)),
            Shape::Counter | Shape::Gauge => {
                let counter = matches!(shape_of, Shape::Counter);
                for (at, s) in (next..).zip(&ts.samples) {
                    if is_stale(s.value) {
                        continue;
                    }
                    let point = if counter {
                        counter_point(&name, &labels, s, at)
                    } else {
                        gauge_point(&name, &labels, s, node_id, at)
                    };
                    push(&mut out, point, &name, at);
                }
            }
        }
    }
    absorb_parts(&mut out, &mut families, parts, types);
    for ((base, labels, timestamp), family) in families {
        let n = family.ordinals.len() as u64;
        match classic_point(&base, labels, timestamp, &family, params) {
            Ok(point) => out.points.push(point),
            Err(e) => out
                .rejected
                .add(n, || format!("histogram {base:?} at {timestamp}: {e}")),
        }
    }
    out
}

/// `x_sum` and `x_count` series: a family of this request takes its sum
/// (its count is its `+Inf` bucket); the others are counters, unless the
/// metadata says `x` is a histogram (its buckets are in another request).
#[allow(clippy::type_complexity)]
fn absorb_parts(
    out: &mut Converted,
    families: &mut BTreeMap<FamilyKey, Family>,
    parts: Vec<(
        String,
        String,
        Vec<(String, String)>,
        bool,
        Vec<prompb::Sample>,
        usize,
    )>,
    types: &HashMap<String, i32>,
) {
    for (base, name, labels, sum, samples, first) in parts {
        for (next, s) in (first..).zip(&samples) {
            if is_stale(s.value) {
                continue;
            }
            let key = (base.clone(), labels.clone(), s.timestamp);
            if let Some(family) = families.get_mut(&key) {
                if sum {
                    family.sum = Some(s.value);
                }
            } else if types.get(&base) == Some(&metric_type::HISTOGRAM) {
                out.rejected.add(1, || {
                    format!("metric {name:?}, sample {next}: the buckets of histogram {base:?} are not in this request (raise queue_config.max_samples_per_send)")
                });
            } else {
                push(out, counter_point(&name, &labels, s, next), &name, next);
            }
        }
    }
}

fn push(out: &mut Converted, point: Result<Point, String>, name: &str, ordinal: usize) {
    match point {
        Ok(p) => out.points.push(p),
        Err(e) => out
            .rejected
            .add(1, || format!("metric {name:?}, sample {ordinal}: {e}")),
    }
}

fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN
}

/// The series' name and its other labels, sorted; `None` without a name.
fn split_name(labels: Vec<prompb::Label>) -> Option<(String, Vec<(String, String)>)> {
    let mut name = None;
    let mut rest = Vec::with_capacity(labels.len());
    for l in labels {
        if l.name == "__name__" {
            name = Some(l.value);
        } else if !l.value.is_empty() {
            rest.push((l.name, l.value));
        }
    }
    rest.sort();
    name.filter(|n| !n.is_empty()).map(|n| (n, rest))
}

fn shape(
    name: &str,
    labels: &[(String, String)],
    native: bool,
    types: &HashMap<String, i32>,
) -> Shape {
    if native {
        return Shape::Native;
    }
    let label = |n: &str| labels.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    if let (Some(base), Some(Ok(le))) = (name.strip_suffix("_bucket"), label("le").map(parse_le)) {
        return Shape::Bucket {
            base: base.to_string(),
            le,
        };
    }
    if label("quantile").is_some() || types.get(name) == Some(&metric_type::SUMMARY) {
        return Shape::Quantile;
    }
    for (suffix, sum) in [("_sum", true), ("_count", false)] {
        if let Some(base) = name.strip_suffix(suffix) {
            return Shape::Part {
                base: base.to_string(),
                sum,
            };
        }
    }
    match types.get(name) {
        Some(&metric_type::COUNTER) => Shape::Counter,
        Some(&metric_type::GAUGE) => Shape::Gauge,
        _ if name.ends_with("_total") => Shape::Counter,
        _ => Shape::Gauge,
    }
}

/// An `le` label value: a float, `+Inf` included.
fn parse_le(le: &str) -> Result<f64, String> {
    match le {
        "+Inf" | "Inf" | "inf" => Ok(f64::INFINITY),
        _ => le.parse::<f64>().map_err(|e| format!("le {le:?}: {e}")),
    }
}

fn ts_ms(timestamp: i64) -> Option<i64> {
    (timestamp != 0).then_some(timestamp)
}

fn time_ns(timestamp: i64) -> u64 {
    u64::try_from(timestamp)
        .unwrap_or(0)
        .saturating_mul(1_000_000)
}

/// The stream identity of a series: what it is, its name, its labels.
fn identity(what: &str, name: &str, labels: &[(String, String)]) -> String {
    serde_json::json!([what, name, labels]).to_string()
}

/// A counter sample: a cumulative float total, counted as `sum`.
fn counter_point(
    name: &str,
    labels: &[(String, String)],
    s: &prompb::Sample,
    ordinal: usize,
) -> Result<Point, String> {
    if !(s.value.is_finite() && s.value >= 0.0) {
        return Err(format!(
            "a counter must be finite and not negative, got {}",
            s.value
        ));
    }
    Ok(Point {
        ordinal,
        metric: name.to_string(),
        kind: Kind::Sum,
        labels: labels.to_vec(),
        ts_ms: ts_ms(s.timestamp),
        value: Value::Cumulative {
            identity: identity("counter", name, labels),
            report: Report {
                start_ns: 0,
                time_ns: time_ns(s.timestamp),
                total: Total::Float(s.value),
            },
        },
    })
}

/// A gauge sample: `latest`.
fn gauge_point(
    name: &str,
    labels: &[(String, String)],
    s: &prompb::Sample,
    node_id: &str,
    ordinal: usize,
) -> Result<Point, String> {
    if !s.value.is_finite() {
        return Err(format!("value {} is not finite", s.value));
    }
    let ts = ts_ms(s.timestamp);
    let state = State::Latest(Some(Latest {
        value: s.value,
        ts_ms: ts.unwrap_or_else(crate::context::now_ms),
        source: node_id.to_string(),
    }));
    Ok(Point {
        ordinal,
        metric: name.to_string(),
        kind: Kind::Latest,
        labels: labels.to_vec(),
        ts_ms: ts,
        value: Value::State(state),
    })
}

/// A classic histogram at one timestamp: per-bucket counts from the
/// cumulative `le` counts, as an explicit-bucket report.
fn classic_point(
    base: &str,
    labels: Vec<(String, String)>,
    timestamp: i64,
    family: &Family,
    params: &StateParams,
) -> Result<Point, String> {
    let mut buckets = family.buckets.clone();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|(le, _)| *le != f64::INFINITY) {
        return Err("no +Inf bucket in this request: the family is incomplete (raise queue_config.max_samples_per_send)".into());
    }
    let mut bounds = Vec::with_capacity(buckets.len());
    let mut counts = Vec::with_capacity(buckets.len());
    let mut below = 0.0f64;
    for (i, (le, cumulative)) in buckets.iter().enumerate() {
        if !(cumulative.is_finite() && *cumulative >= below && cumulative.fract() == 0.0) {
            return Err(format!(
                "bucket le={le}: count {cumulative} is not a whole number at least the count below it ({below})"
            ));
        }
        if i + 1 < buckets.len() {
            if i > 0 && bounds.last() == Some(le) {
                return Err(format!("bucket le={le} appears twice"));
            }
            bounds.push(*le);
        }
        counts.push((cumulative - below) as u64);
        below = *cumulative;
    }
    let sum = family.sum.unwrap_or(f64::NAN);
    // Checked now, so that a refused layout never enters the stream table.
    crate::inputs::points::explicit(
        &bounds,
        &counts,
        sum.is_finite().then_some(sum),
        None,
        None,
        params,
    )?;
    let ordinal = family.ordinals.first().copied().unwrap_or(0);
    let stream = identity("classic", base, &labels);
    Ok(Point {
        ordinal,
        metric: base.to_string(),
        kind: Kind::ExpHistogram,
        labels,
        ts_ms: ts_ms(timestamp),
        value: Value::Cumulative {
            identity: stream,
            report: Report {
                start_ns: 0,
                time_ns: time_ns(timestamp),
                total: Total::Explicit {
                    bounds,
                    counts,
                    sum,
                },
            },
        },
    })
}

/// A native histogram: `exp_histogram`, cumulative.
fn native_point(
    name: &str,
    labels: &[(String, String)],
    h: &prompb::Histogram,
    params: &StateParams,
    ordinal: usize,
) -> Result<Point, String> {
    let exp = native(h, params)?;
    Ok(Point {
        ordinal,
        metric: name.to_string(),
        kind: Kind::ExpHistogram,
        labels: labels.to_vec(),
        ts_ms: ts_ms(h.timestamp),
        value: Value::Cumulative {
            identity: identity("native", name, labels),
            report: Report {
                start_ns: 0,
                time_ns: time_ns(h.timestamp),
                total: Total::Exp(exp),
            },
        },
    })
}

/// A whole count given as an integer or a float.
fn whole(v: f64, what: &str) -> Result<u64, String> {
    if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(63) {
        Ok(v as u64)
    } else {
        Err(format!("{what} {v} is not a whole number"))
    }
}

fn native(h: &prompb::Histogram, params: &StateParams) -> Result<ExpHist, String> {
    if !h.positive_counts.is_empty() || !h.negative_counts.is_empty() {
        return Err(
            "float native histograms (counts as floats) are refused: only integer counts are exact"
                .into(),
        );
    }
    let count = match h.count {
        Some(histogram::Count::CountInt(c)) => c,
        Some(histogram::Count::CountFloat(c)) => whole(c, "count")?,
        None => 0,
    };
    let zero_count = match h.zero_count {
        Some(histogram::ZeroCount::ZeroCountInt(c)) => c,
        Some(histogram::ZeroCount::ZeroCountFloat(c)) => whole(c, "zero count")?,
        None => 0,
    };
    let mut sum = Sum::default();
    sum.add(h.sum).map_err(|e| e.to_string())?;
    let parts = ExpHistParts {
        scale: h.schema,
        max_buckets: params.exp_histogram_max_buckets,
        zero_threshold: h.zero_threshold,
        zero_count,
        positive: dense(&h.positive_spans, &h.positive_deltas)?,
        negative: dense(&h.negative_spans, &h.negative_deltas)?,
        count,
        sum,
        min: f64::NAN,
        max: f64::NAN,
    };
    ExpHist::from_parts_fitting(parts).map_err(|e| e.to_string())
}

/// Spans and delta-encoded counts as a dense side. A Prometheus bucket
/// index `i` covers `(base^(i-1), base^i]`, OpenTelemetry's `i - 1`.
fn dense(spans: &[BucketSpan], deltas: &[i64]) -> Result<Buckets, String> {
    let Some(first) = spans.first() else {
        return if deltas.is_empty() {
            Ok(Buckets::default())
        } else {
            Err("bucket counts without spans".into())
        };
    };
    let start = i64::from(first.offset);
    let mut counts: Vec<u64> = Vec::new();
    let mut index = start;
    let mut running: i64 = 0;
    let mut deltas = deltas.iter();
    for (i, span) in spans.iter().enumerate() {
        if i > 0 {
            index = index.saturating_add(i64::from(span.offset));
        }
        if index < start || index - start > i64::from(MAX_MAX_BUCKETS) {
            return Err(format!("buckets span more than {MAX_MAX_BUCKETS} indices"));
        }
        counts.resize((index - start) as usize, 0);
        for _ in 0..span.length {
            let Some(d) = deltas.next() else {
                return Err("spans name more buckets than there are counts".into());
            };
            running = running.checked_add(*d).ok_or("bucket count overflows")?;
            let c = u64::try_from(running)
                .map_err(|_| format!("bucket count {running} is negative"))?;
            counts.push(c);
            if counts.len() > MAX_MAX_BUCKETS as usize {
                return Err(format!("buckets span more than {MAX_MAX_BUCKETS} indices"));
            }
        }
        index = start + counts.len() as i64;
    }
    if deltas.next().is_some() {
        return Err("more counts than the spans name".into());
    }
    let offset =
        i32::try_from(start - 1).map_err(|_| format!("bucket offset {start} is out of range"))?;
    Ok(Buckets::new(offset, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(offset: i32, length: u32) -> BucketSpan {
        BucketSpan { offset, length }
    }

    #[test]
    fn spans_and_deltas_become_a_dense_side_one_index_down() -> Result<(), String> {
        // Buckets 2, 3 (counts 1, 3), a gap of 2, bucket 6 (count 2).
        let b = dense(&[span(2, 2), span(2, 1)], &[1, 2, -1])?;
        assert_eq!(b.offset(), 1);
        assert_eq!(b.counts(), &[1, 3, 0, 0, 2]);
        assert!(dense(&[span(0, 2)], &[1]).is_err());
        assert!(dense(&[span(0, 1)], &[1, 1]).is_err());
        assert!(dense(&[span(0, 2)], &[1, -2]).is_err());
        assert!(dense(&[span(0, 1), span(i32::MAX, 1)], &[1, 1]).is_err());
        Ok(())
    }

    #[test]
    fn a_classic_family_needs_its_inf_bucket_and_whole_cumulative_counts() {
        let params = StateParams::default();
        let family = |buckets: Vec<(f64, f64)>| Family {
            buckets,
            sum: Some(4.0),
            ordinals: vec![1],
        };
        let ok = classic_point(
            "lat",
            Vec::new(),
            1,
            &family(vec![(f64::INFINITY, 3.0), (1.0, 1.0)]),
            &params,
        );
        match ok.map(|p| p.value) {
            Ok(Value::Cumulative { report, .. }) => assert_eq!(
                report.total,
                Total::Explicit {
                    bounds: vec![1.0],
                    counts: vec![1, 2],
                    sum: 4.0
                }
            ),
            other => panic!("{other:?}"),
        }
        assert!(classic_point("lat", Vec::new(), 1, &family(vec![(1.0, 1.0)]), &params).is_err());
        assert!(
            classic_point(
                "lat",
                Vec::new(),
                1,
                &family(vec![(1.0, 2.0), (f64::INFINITY, 1.0)]),
                &params
            )
            .is_err()
        );
    }
}
