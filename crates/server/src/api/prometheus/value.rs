//! What PromQL expressions evaluate to over merged state, and how answers
//! are written in Prometheus' JSON form.
//!
//! An element of an instant vector keeps its mergeable [`State`] for as long
//! as it can — through selectors, `rate`/`increase` and the aggregations that
//! merge — so that `sum by (service) (rate(lat[5m]))` of histograms is one
//! merged histogram and a quantile of it is the quantile of every
//! observation. It becomes a float when an operation needs a number
//! ([`Val::number`]).

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};
use strata_model::{Kind, State};

use crate::status::{Class, Classify};

/// A series' labels, `__name__` included when it has a name.
pub type Labels = BTreeMap<String, String>;

/// The metric-name label.
pub const NAME: &str = "__name__";

/// Why an expression could not be answered, in Prometheus' error types.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The request or expression is malformed (400, `bad_data`).
    #[error("{0}")]
    BadData(String),
    /// Well-formed but not answerable: an unsupported construct, a
    /// histogram where a number is needed, a limit (422, `execution`).
    #[error("{0}")]
    Execution(String),
    /// The store could not be read (500, `internal`).
    #[error("{0}")]
    Internal(String),
}

impl EvalError {
    /// Prometheus' `errorType` of this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            EvalError::BadData(_) => "bad_data",
            EvalError::Execution(_) => "execution",
            EvalError::Internal(_) => "internal",
        }
    }
}

impl Classify for EvalError {
    fn class(&self) -> Class {
        match self {
            EvalError::BadData(_) => Class::Invalid,
            EvalError::Execution(_) => Class::OverLimit,
            EvalError::Internal(_) => Class::Internal,
        }
    }
}

/// Shorthand for an [`EvalError::Execution`] result.
pub fn unsupported<T>(what: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError::Execution(what.into()))
}

/// The value of one vector element.
#[derive(Debug, Clone)]
pub enum Val {
    Float(f64),
    /// A merged state; its additive quantities (a counter's count, a
    /// histogram's counts and sum) are multiplied by `scale` (`1/seconds`
    /// after `rate`, `1/n` after `avg`).
    State {
        state: State,
        scale: f64,
    },
}

impl Val {
    pub fn state(state: State) -> Val {
        Val::State { state, scale: 1.0 }
    }

    /// Whether this is a histogram state.
    pub fn is_histogram(&self) -> bool {
        matches!(
            self,
            Val::State {
                state: State::Histogram(_) | State::ExpHistogram(_),
                ..
            }
        )
    }

    /// The number this element stands for: a float as it is, a state by its
    /// kind (docs/PROMQL.md "Kinds"); a histogram is not a number.
    pub fn number(&self) -> Result<f64, EvalError> {
        let (state, scale) = match self {
            Val::Float(v) => return Ok(*v),
            Val::State { state, scale } => (state, *scale),
        };
        let empty_nan = |empty: bool, v: f64| if empty { f64::NAN } else { v };
        Ok(match state {
            State::Counter(c) => *c as f64 * scale,
            State::Sum(s) => s.value() * scale,
            State::Avg(a) => a.avg(),
            State::Max(m) => empty_nan(*m == f64::NEG_INFINITY, *m),
            State::Min(m) => empty_nan(*m == f64::INFINITY, *m),
            State::Latest(l) => l.as_ref().map_or(f64::NAN, |l| l.value),
            State::Percent { matched, total } => {
                empty_nan(*total == 0, *matched as f64 * 100.0 / *total as f64)
            }
            State::Apdex(a) => a.score(),
            State::Histogram(_) | State::ExpHistogram(_) => {
                return unsupported(
                    "a histogram is not a number here: use histogram_quantile, histogram_count, histogram_sum or histogram_avg",
                );
            }
        })
    }
}

/// Whether a kind's merge adds what it holds, so that a window of it can be
/// summed over time (`increase`) and divided by time (`rate`).
pub fn additive(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Counter | Kind::Sum | Kind::Histogram | Kind::ExpHistogram
    )
}

/// One element of an instant vector.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: Labels,
    pub val: Val,
}

/// One series of a range vector: its points, oldest first (ms).
#[derive(Debug, Clone)]
pub struct RangeSeries {
    pub labels: Labels,
    pub points: Vec<(i64, Val)>,
}

/// What an expression evaluates to at one time.
#[derive(Debug, Clone)]
pub enum Value {
    Scalar(f64),
    Str(String),
    Vector(Vec<Sample>),
    Matrix(Vec<RangeSeries>),
}

impl Value {
    /// Prometheus' name of the value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::Str(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// A float as Prometheus writes it: shortest round-trip digits, `+Inf`,
/// `-Inf`, `NaN`.
pub fn float_str(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A time in ms as Prometheus writes it: seconds, a JSON number with up to
/// three decimals.
pub fn time_json(ms: i64) -> Json {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

/// `[time, "value"]`, or for a histogram `[time, {count, sum, buckets}]`
/// (the second item of `histogram`/`histograms`). Which key it goes under is
/// [`point_key`]'s.
pub fn point_json(ms: i64, val: &Val) -> Result<Json, EvalError> {
    match val {
        Val::State {
            state: State::Histogram(_) | State::ExpHistogram(_),
            ..
        } => Ok(json!([time_json(ms), histogram_json(val)])),
        other => Ok(json!([time_json(ms), float_str(other.number()?)])),
    }
}

/// Whether `val` is written under `histogram(s)` rather than `value(s)`.
pub fn point_key(val: &Val) -> bool {
    val.is_histogram()
}

/// A histogram state in Prometheus' native-histogram JSON form: count, sum
/// and `[boundary_rule, lower, upper, count]` buckets (rule 0: (lower,
/// upper]; 1: [lower, upper); 3: [lower, upper]).
fn histogram_json(val: &Val) -> Json {
    let Val::State { state, scale } = val else {
        return Json::Null;
    };
    let s = |v: f64| float_str(v * scale);
    let mut buckets = Vec::new();
    let (count, sum) = match state {
        State::Histogram(h) => {
            for (low, high, n) in h.buckets() {
                buckets.push(json!([3, float_str(low), float_str(high), s(n as f64)]));
            }
            (h.count(), hist_sum(h))
        }
        State::ExpHistogram(h) => {
            use strata_model::exp_hist::lower_bound;
            let scale_of = h.scale();
            let neg = h.negative();
            for (i, &n) in neg.counts().iter().enumerate().rev() {
                if n > 0 {
                    let index = neg.offset() + i as i32;
                    let (lo, hi) = (
                        lower_bound(index, scale_of),
                        lower_bound(index + 1, scale_of),
                    );
                    buckets.push(json!([1, float_str(-hi), float_str(-lo), s(n as f64)]));
                }
            }
            if h.zero_count() > 0 {
                let t = h.zero_threshold();
                buckets.push(json!([
                    3,
                    float_str(-t),
                    float_str(t),
                    s(h.zero_count() as f64)
                ]));
            }
            let pos = h.positive();
            for (i, &n) in pos.counts().iter().enumerate() {
                if n > 0 {
                    let index = pos.offset() + i as i32;
                    let (lo, hi) = (
                        lower_bound(index, scale_of),
                        lower_bound(index + 1, scale_of),
                    );
                    buckets.push(json!([0, float_str(lo), float_str(hi), s(n as f64)]));
                }
            }
            (h.count(), h.sum().value())
        }
        _ => return Json::Null,
    };
    json!({"count": s(count as f64), "sum": s(sum), "buckets": buckets})
}

/// The sum of an HDR histogram's observations as it knows it: the mean of
/// its bucket midpoints times the count (0 when empty).
pub fn hist_sum(h: &strata_model::Hist) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.mean() * h.count() as f64
    }
}

/// Labels as a JSON object.
pub fn labels_json(labels: &Labels) -> Json {
    Json::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_model::{SampleValue, StateParams};

    #[test]
    fn floats_and_times_are_written_as_prometheus_does() {
        assert_eq!(float_str(2.0), "2");
        assert_eq!(float_str(0.1), "0.1");
        assert_eq!(float_str(f64::INFINITY), "+Inf");
        assert_eq!(float_str(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float_str(f64::NAN), "NaN");
        assert_eq!(time_json(1_700_000_000_000), json!(1_700_000_000));
        assert_eq!(time_json(1_700_000_000_500), json!(1_700_000_000.5));
    }

    #[test]
    fn states_are_numbers_by_kind_and_histograms_are_not() {
        let p = StateParams::default();
        let mut c = State::empty(Kind::Counter, &p);
        c.record(SampleValue::Number(6.0), 0, "s").unwrap();
        let v = Val::State {
            state: c,
            scale: 0.5,
        };
        assert_eq!(v.number(), Ok(3.0));
        let mut h = State::empty(Kind::Histogram, &p);
        h.record(SampleValue::Number(5.0), 0, "s").unwrap();
        let h = Val::state(h);
        assert!(h.is_histogram());
        assert!(matches!(h.number(), Err(EvalError::Execution(_))));
        let j = point_json(60_000, &h).unwrap();
        assert_eq!(j[0], json!(60));
        assert_eq!(j[1]["count"], "1");
        assert_eq!(j[1]["buckets"].as_array().unwrap().len(), 1);
        assert_eq!(j[1]["buckets"][0][3], "1");
    }
}
