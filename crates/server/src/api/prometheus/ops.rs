//! Aggregations, binary operators and the histogram and label functions of
//! strata's PromQL (docs/PROMQL.md).
//!
//! `sum` and `avg` merge states where the merged state is the aggregate's
//! meaning: counters, sums and histograms add; `avg`, `percent` and `apdex`
//! series merge into the weighted average, ratio or score of everything
//! they hold (never an average of averages). `latest`, `max` and `min`
//! series, and plain numbers, aggregate as numbers, as in Prometheus.

use std::collections::{BTreeMap, HashMap};

use promql_parser::label::MatchOp;
use promql_parser::parser::{
    AggregateExpr, BinaryExpr, Expr, LabelModifier, VectorMatchCardinality,
};
use strata_model::{Kind, State};

use super::eval::without_name;
use super::value::{EvalError, Labels, NAME, Sample, Val, Value, additive, hist_sum, unsupported};

/// Refuses a vector holding one label set twice (after a name was dropped).
pub fn check_unique(v: &[Sample], what: &str) -> Result<(), EvalError> {
    let mut seen = std::collections::HashSet::new();
    for s in v {
        if !seen.insert(&s.labels) {
            return unsupported(format!(
                "{what}: the result holds the label set {:?} twice (vector cannot contain metrics with the same labelset)",
                s.labels
            ));
        }
    }
    Ok(())
}

/// `labels` under `by`/`on` (those kept) or `without`/`ignoring` (those
/// and the metric name dropped).
fn kept(labels: &Labels, modifier: &LabelModifier) -> Labels {
    let listed = |k: &String| modifier.labels().labels.iter().any(|l| l == k);
    labels
        .iter()
        .filter(|(k, _)| match modifier {
            LabelModifier::Include(_) => listed(k),
            LabelModifier::Exclude(_) => k.as_str() != NAME && !listed(k),
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The grouping key of `labels` under `by`/`without` (none: one group).
fn group_key(labels: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    modifier.map_or_else(Labels::new, |m| kept(labels, m))
}

/// An aggregation over `inner` (`param` evaluated: topk's k).
pub fn aggregate(
    agg: &AggregateExpr,
    param: Option<Value>,
    inner: Vec<Sample>,
) -> Result<Vec<Sample>, EvalError> {
    let op = agg.op.to_string();
    let modifier = agg.modifier.as_ref();
    if op == "topk" || op == "bottomk" {
        let k = match param {
            Some(Value::Scalar(k)) => k,
            _ => return Err(EvalError::BadData(format!("{op} expects a scalar k"))),
        };
        return top(op == "topk", k, modifier, inner);
    }
    if !matches!(op.as_str(), "sum" | "avg" | "count" | "min" | "max") {
        return unsupported(format!(
            "aggregation {op} is not supported by strata's PromQL (docs/PROMQL.md lists what is)"
        ));
    }
    let mut groups: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
    for s in inner {
        groups
            .entry(group_key(&s.labels, modifier))
            .or_default()
            .push(s);
    }
    groups
        .into_iter()
        .map(|(labels, members)| {
            let val = match op.as_str() {
                "sum" => merge_or_add(members, false)?,
                "avg" => merge_or_add(members, true)?,
                "count" => Val::Float(members.len() as f64),
                _ => extreme(op == "max", &members)?,
            };
            Ok(Sample { labels, val })
        })
        .collect()
}

/// Whether `sum`/`avg` merge states of this kind (rather than add numbers).
fn merges(kind: Kind) -> bool {
    !matches!(kind, Kind::Latest | Kind::Max | Kind::Min)
}

/// `sum` (or `avg`) of a group: merged states when every member is a state
/// of one kind that merges, and of one scale; numbers otherwise.
fn merge_or_add(members: Vec<Sample>, avg: bool) -> Result<Val, EvalError> {
    let n = members.len() as f64;
    let mergeable = match members.first().map(|s| &s.val) {
        Some(Val::State { state, scale }) if merges(state.kind()) => {
            let (kind, scale) = (state.kind(), *scale);
            members.iter().all(|m| {
                matches!(&m.val, Val::State { state, scale: s } if state.kind() == kind && *s == scale)
            })
        }
        _ => false,
    };
    if mergeable {
        let mut it = members.into_iter();
        let Some(Sample {
            val: Val::State { mut state, scale },
            ..
        }) = it.next()
        else {
            return Ok(Val::Float(f64::NAN));
        };
        for m in it {
            if let Val::State { state: other, .. } = m.val {
                state
                    .merge(&other)
                    .map_err(|e| EvalError::Execution(format!("cannot merge the group: {e}")))?;
            }
        }
        // avg of an additive kind is its sum over n; the others already are
        // the weighted average of everything merged.
        let scale = if avg && additive(state.kind()) {
            scale / n
        } else {
            scale
        };
        return Ok(Val::State { state, scale });
    }
    let mut total = 0.0;
    for m in &members {
        total += m.val.number()?;
    }
    Ok(Val::Float(if avg { total / n } else { total }))
}

fn extreme(max: bool, members: &[Sample]) -> Result<Val, EvalError> {
    let mut best: Option<f64> = None;
    for m in members {
        let x = m.val.number()?;
        best = Some(match best {
            None => x,
            Some(b) if b.is_nan() => x,
            Some(b) if x.is_nan() => b,
            Some(b) => {
                if max {
                    b.max(x)
                } else {
                    b.min(x)
                }
            }
        });
    }
    Ok(Val::Float(best.unwrap_or(f64::NAN)))
}

/// `topk`/`bottomk`: the `k` largest (smallest) elements of each group,
/// with their own labels.
fn top(
    largest: bool,
    k: f64,
    modifier: Option<&LabelModifier>,
    inner: Vec<Sample>,
) -> Result<Vec<Sample>, EvalError> {
    if k.is_nan() || k < 1.0 {
        return Ok(Vec::new());
    }
    let k = if k >= usize::MAX as f64 {
        usize::MAX
    } else {
        k as usize
    };
    let mut groups: BTreeMap<Labels, Vec<(f64, Sample)>> = BTreeMap::new();
    for s in inner {
        let x = s.val.number()?;
        groups
            .entry(group_key(&s.labels, modifier))
            .or_default()
            .push((x, s));
    }
    let mut out = Vec::new();
    for (_, mut members) in groups {
        // NaN sorts last either way, as in Prometheus.
        members.sort_by(|(a, _), (b, _)| {
            let (a, b) = if largest { (b, a) } else { (a, b) };
            match (a.is_nan(), b.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ => a.total_cmp(b),
            }
        });
        out.extend(members.into_iter().take(k).map(|(_, s)| s));
    }
    Ok(out)
}

/// `a op b` on numbers; comparisons give 1 or 0.
fn apply(op: &str, a: f64, b: f64) -> Result<f64, EvalError> {
    let truth = |c: bool| if c { 1.0 } else { 0.0 };
    Ok(match op {
        "+" => a + b,
        "-" => a - b,
        "*" => a * b,
        "/" => a / b,
        "%" => a % b,
        "^" => a.powf(b),
        "atan2" => a.atan2(b),
        "==" => truth(a == b),
        "!=" => truth(a != b),
        ">" => truth(a > b),
        "<" => truth(a < b),
        ">=" => truth(a >= b),
        "<=" => truth(a <= b),
        other => return unsupported(format!("operator {other} is not supported")),
    })
}

fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

/// One element of `vector op scalar` (or `scalar op vector`, `swapped`).
fn with_scalar(
    op: &str,
    keep: bool,
    s: Sample,
    x: f64,
    swapped: bool,
) -> Result<Option<Sample>, EvalError> {
    let v = s.val.number()?;
    let (a, b) = if swapped { (x, v) } else { (v, x) };
    let r = apply(op, a, b)?;
    Ok(if is_comparison(op) && !keep {
        // A filter keeps the element as it is (the vector side's value).
        (r == 1.0).then_some(s)
    } else {
        Some(Sample {
            labels: without_name(s.labels),
            val: Val::Float(r),
        })
    })
}

/// A binary expression on evaluated operands.
pub fn binary(b: &BinaryExpr, lhs: Value, rhs: Value) -> Result<Value, EvalError> {
    let op = b.op.to_string();
    if b.op.is_set_operator() {
        return unsupported(format!("the set operator {op} is not supported"));
    }
    let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
    match (lhs, rhs) {
        (Value::Scalar(a), Value::Scalar(c)) => apply(&op, a, c).map(Value::Scalar),
        (Value::Vector(v), Value::Scalar(x)) => {
            let out = v
                .into_iter()
                .map(|s| with_scalar(&op, return_bool, s, x, false))
                .filter_map(Result::transpose)
                .collect::<Result<Vec<_>, _>>()?;
            check_unique(&out, &op)?;
            Ok(Value::Vector(out))
        }
        (Value::Scalar(x), Value::Vector(v)) => {
            let out = v
                .into_iter()
                .map(|s| with_scalar(&op, return_bool, s, x, true))
                .filter_map(Result::transpose)
                .collect::<Result<Vec<_>, _>>()?;
            check_unique(&out, &op)?;
            Ok(Value::Vector(out))
        }
        (Value::Vector(l), Value::Vector(r)) => {
            vectors(b, &op, return_bool, l, r).map(Value::Vector)
        }
        (l, r) => Err(EvalError::BadData(format!(
            "operator {op} is not defined between a {} and a {}",
            l.type_name(),
            r.type_name()
        ))),
    }
}

/// The labels two elements are matched on, under `on`/`ignoring` (none:
/// all but the metric name).
fn match_key(labels: &Labels, matching: Option<&LabelModifier>) -> Labels {
    matching.map_or_else(|| without_name(labels.clone()), |m| kept(labels, m))
}

/// `vector op vector`, one-to-one.
fn vectors(
    b: &BinaryExpr,
    op: &str,
    return_bool: bool,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
) -> Result<Vec<Sample>, EvalError> {
    let modifier = b.modifier.as_ref();
    if modifier.is_some_and(|m| !matches!(m.card, VectorMatchCardinality::OneToOne)) {
        return unsupported(
            "group_left and group_right are not supported: only one-to-one matching",
        );
    }
    let matching = modifier.and_then(|m| m.matching.as_ref());
    let mut right: HashMap<Labels, Sample> = HashMap::new();
    for s in rhs {
        let key = match_key(&s.labels, matching);
        if right.insert(key, s).is_some() {
            return unsupported(format!(
                "{op}: several elements on the right match one label set: matching must be one-to-one"
            ));
        }
    }
    let mut used = std::collections::HashSet::new();
    let mut out = Vec::new();
    for l in lhs {
        let key = match_key(&l.labels, matching);
        let Some(r) = right.get(&key) else { continue };
        if !used.insert(key.clone()) {
            return unsupported(format!(
                "{op}: several elements on the left match one label set: matching must be one-to-one"
            ));
        }
        let value = apply(op, l.val.number()?, r.val.number()?)?;
        let labels = match matching {
            Some(LabelModifier::Include(_)) => key,
            _ => without_name(l.labels.clone()),
        };
        if is_comparison(op) && !return_bool {
            if value == 1.0 {
                out.push(Sample {
                    labels: l.labels,
                    val: l.val,
                });
            }
        } else {
            out.push(Sample {
                labels,
                val: Val::Float(value),
            });
        }
    }
    check_unique(&out, op)?;
    Ok(out)
}

/// `histogram_quantile(φ, v)`: the quantile of each element's (merged)
/// histogram.
pub fn histogram_quantile(phi: f64, v: Vec<Sample>) -> Result<Vec<Sample>, EvalError> {
    let mut out = Vec::new();
    for s in v {
        let q = match &s.val {
            Val::State {
                state: State::Histogram(h),
                ..
            } => quantile(phi, |q| h.quantile(q)),
            Val::State {
                state: State::ExpHistogram(h),
                ..
            } => quantile(phi, |q| h.quantile(q)),
            _ if s.labels.contains_key("le") => {
                return unsupported(
                    "histogram_quantile over le buckets: strata keeps whole histograms, so use histogram_quantile(0.99, sum by (…) (rate(metric[5m]))) on the histogram metric itself",
                );
            }
            _ => {
                return unsupported(format!(
                    "histogram_quantile needs histograms; {:?} is not one",
                    s.labels
                ));
            }
        };
        out.push(Sample {
            labels: without_name(s.labels),
            val: Val::Float(q),
        });
    }
    check_unique(&out, "histogram_quantile")?;
    Ok(out)
}

/// Prometheus' answers outside 0..=1: −Inf below, +Inf above, NaN for NaN.
fn quantile(phi: f64, of: impl Fn(f64) -> f64) -> f64 {
    if phi.is_nan() {
        f64::NAN
    } else if phi < 0.0 {
        f64::NEG_INFINITY
    } else if phi > 1.0 {
        f64::INFINITY
    } else {
        of(phi)
    }
}

/// `histogram_count`, `histogram_sum`, `histogram_avg`.
pub fn histogram_field(name: &str, v: Vec<Sample>) -> Result<Vec<Sample>, EvalError> {
    let mut out = Vec::new();
    for s in v {
        let Val::State { state, scale } = &s.val else {
            return unsupported(format!(
                "{name} needs histograms; {:?} is a number",
                s.labels
            ));
        };
        let (count, sum) = match state {
            State::Histogram(h) => (h.count() as f64, hist_sum(h)),
            State::ExpHistogram(h) => (h.count() as f64, h.sum().value()),
            other => {
                return unsupported(format!(
                    "{name} needs histograms; {:?} is a {} series",
                    s.labels,
                    other.kind().as_str()
                ));
            }
        };
        let x = match name {
            "histogram_count" => count * scale,
            "histogram_sum" => sum * scale,
            _ => sum / count,
        };
        out.push(Sample {
            labels: without_name(s.labels),
            val: Val::Float(x),
        });
    }
    check_unique(&out, name)?;
    Ok(out)
}

/// `label_replace(v, dst, replacement, src, regex)`.
pub fn label_replace(
    v: Vec<Sample>,
    dst: &str,
    replacement: &str,
    src: &str,
    regex: &str,
) -> Result<Vec<Sample>, EvalError> {
    let re = regex::Regex::new(&format!("^(?s:{regex})$")).map_err(|e| {
        EvalError::BadData(format!(
            "label_replace: invalid regular expression {regex:?}: {e}"
        ))
    })?;
    if !is_label_name(dst) {
        return Err(EvalError::BadData(format!(
            "label_replace: invalid destination label name {dst:?}"
        )));
    }
    let mut out = Vec::with_capacity(v.len());
    for mut s in v {
        let value = s.labels.get(src).cloned().unwrap_or_default();
        if let Some(caps) = re.captures(&value) {
            let mut to = String::new();
            caps.expand(replacement, &mut to);
            if to.is_empty() {
                s.labels.remove(dst);
            } else {
                s.labels.insert(dst.to_string(), to);
            }
        }
        out.push(s);
    }
    check_unique(&out, "label_replace")?;
    Ok(out)
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `absent(v)`: empty when `v` has elements, else one element of value 1
/// with the labels its selector fixes by equality.
pub fn absent(arg: &Expr, v: &[Sample]) -> Vec<Sample> {
    if !v.is_empty() {
        return Vec::new();
    }
    let mut labels = Labels::new();
    let vs = match arg {
        Expr::VectorSelector(vs) => Some(vs),
        Expr::MatrixSelector(ms) => Some(&ms.vs),
        _ => None,
    };
    if let Some(vs) = vs {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for m in &vs.matchers.matchers {
            *seen.entry(m.name.as_str()).or_default() += 1;
        }
        for m in &vs.matchers.matchers {
            if m.name != NAME
                && matches!(m.op, MatchOp::Equal)
                && seen.get(m.name.as_str()) == Some(&1)
            {
                labels.insert(m.name.clone(), m.value.clone());
            }
        }
    }
    vec![Sample {
        labels,
        val: Val::Float(1.0),
    }]
}
