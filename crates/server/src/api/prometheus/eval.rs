//! PromQL evaluated over minute buckets of mergeable state (docs/PROMQL.md).
//!
//! The minute bucket is strata's unit: a bucket holds what happened in its
//! minute (a counter's increase, a histogram of that minute's
//! observations). So a range `[5m]` evaluated at `t` is the buckets that
//! start in `[t − 5m, t)` — at a minute-aligned `t` the five whole minutes
//! ending at `t`; otherwise the last of them is the minute still filling —
//! and `increase` merges them, `rate` divides the merged state by the
//! range's seconds. A bare selector at `t` is the bucket of the minute
//! before `t` (a `latest` series: the newest value of the 5 minutes before
//! `t`, Prometheus' lookback). Ranges round up to whole minutes.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::SystemTime;

use promql_parser::parser::{
    AtModifier, Call, Expr, MatrixSelector, Offset, UnaryExpr, VectorSelector,
};
use strata_model::{Kind, MINUTE_MS, State};
use strata_store::Store;

use super::ops;
use super::select::{Fetched, fetch};
use super::value::{
    EvalError, Labels, NAME, RangeSeries, Sample, Val, Value, additive, unsupported,
};
use crate::api::query::QueryLimits;

/// Prometheus' lookback for a gauge (`latest`) selected bare.
const LATEST_LOOKBACK_MS: i64 = 5 * MINUTE_MS;

/// Evaluates expressions over a store for times in `start..=end`, reading
/// each selector's buckets once for all of them.
pub struct Engine<'a> {
    store: &'a dyn Store,
    limits: QueryLimits,
    start: i64,
    end: i64,
    cache: HashMap<(String, i64), Rc<Vec<Fetched>>>,
    points: usize,
}

impl<'a> Engine<'a> {
    /// An engine for evaluations at times from `start` to `end` (ms).
    pub fn new(store: &'a dyn Store, limits: QueryLimits, start: i64, end: i64) -> Engine<'a> {
        Engine {
            store,
            limits,
            start,
            end,
            cache: HashMap::new(),
            points: 0,
        }
    }

    /// The value of `expr` at `t` (ms).
    pub fn eval(&mut self, expr: &Expr, t: i64) -> Result<Value, EvalError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => self.unary(u, t),
            Expr::VectorSelector(vs) => self.instant(vs, t).map(Value::Vector),
            Expr::MatrixSelector(ms) => self.matrix(ms, t),
            Expr::Call(call) => self.call(call, t),
            Expr::Aggregate(agg) => {
                let param = match &agg.param {
                    Some(p) => Some(self.eval(p, t)?),
                    None => None,
                };
                let inner = self.eval_vector(&agg.expr, t, "an aggregation")?;
                ops::aggregate(agg, param, inner).map(Value::Vector)
            }
            Expr::Binary(b) => {
                let lhs = self.eval(&b.lhs, t)?;
                let rhs = self.eval(&b.rhs, t)?;
                ops::binary(b, lhs, rhs)
            }
            Expr::Subquery(_) => unsupported("subqueries are not supported"),
            Expr::Extension(_) => unsupported("this expression is not supported"),
        }
    }

    /// `expr` at `t`, which must be an instant vector (`what` names the
    /// place in errors).
    pub fn eval_vector(
        &mut self,
        expr: &Expr,
        t: i64,
        what: &str,
    ) -> Result<Vec<Sample>, EvalError> {
        match self.eval(expr, t)? {
            Value::Vector(v) => Ok(v),
            other => Err(EvalError::BadData(format!(
                "{what} expects an instant vector, got a {}",
                other.type_name()
            ))),
        }
    }

    fn eval_scalar(&mut self, expr: &Expr, t: i64, what: &str) -> Result<f64, EvalError> {
        match self.eval(expr, t)? {
            Value::Scalar(v) => Ok(v),
            other => Err(EvalError::BadData(format!(
                "{what} expects a scalar, got a {}",
                other.type_name()
            ))),
        }
    }

    fn eval_string(&mut self, expr: &Expr, t: i64, what: &str) -> Result<String, EvalError> {
        match self.eval(expr, t)? {
            Value::Str(s) => Ok(s),
            other => Err(EvalError::BadData(format!(
                "{what} expects a string, got a {}",
                other.type_name()
            ))),
        }
    }

    fn unary(&mut self, u: &UnaryExpr, t: i64) -> Result<Value, EvalError> {
        match self.eval(&u.expr, t)? {
            Value::Scalar(v) => Ok(Value::Scalar(-v)),
            Value::Vector(v) => v
                .into_iter()
                .map(|s| {
                    let x = s.val.number()?;
                    Ok(Sample {
                        labels: without_name(s.labels),
                        val: Val::Float(-x),
                    })
                })
                .collect::<Result<_, _>>()
                .map(Value::Vector),
            other => Err(EvalError::BadData(format!(
                "unary minus expects a scalar or an instant vector, got a {}",
                other.type_name()
            ))),
        }
    }

    /// The time a selector reads at when evaluated at `t` (`@`, `offset`).
    fn selector_time(&self, vs: &VectorSelector, t: i64) -> Result<i64, EvalError> {
        let base = match &vs.at {
            None => t,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(at)) => system_time_ms(at)?,
        };
        let offset = match &vs.offset {
            None => 0,
            Some(Offset::Pos(d)) => duration_ms(d)?,
            Some(Offset::Neg(d)) => -duration_ms(d)?,
        };
        Ok(base - offset)
    }

    /// The buckets of `vs` over every time it is read at, with `lookback`
    /// before them; read once per query.
    fn fetched(
        &mut self,
        vs: &VectorSelector,
        lookback: i64,
    ) -> Result<Rc<Vec<Fetched>>, EvalError> {
        let key = (vs.to_string(), lookback);
        if let Some(f) = self.cache.get(&key) {
            return Ok(f.clone());
        }
        let first = self.selector_time(vs, self.start)?;
        let last = self.selector_time(vs, self.end)?;
        let (first, last) = (first.min(last), first.max(last));
        let data = fetch(
            self.store,
            vs,
            first.saturating_sub(lookback),
            last,
            self.limits,
            &mut self.points,
        )?;
        let data = Rc::new(data);
        self.cache.insert(key, data.clone());
        Ok(data)
    }

    /// A bare selector at `t`: each series' bucket of the minute before `t`
    /// (for `latest`, the newest of the 5 minutes before `t`).
    fn instant(&mut self, vs: &VectorSelector, t: i64) -> Result<Vec<Sample>, EvalError> {
        let at = self.selector_time(vs, t)?;
        let data = self.fetched(vs, LATEST_LOOKBACK_MS)?;
        let mut out = Vec::new();
        for f in data.iter() {
            let lookback = if f.kind == Kind::Latest {
                LATEST_LOOKBACK_MS
            } else {
                MINUTE_MS
            };
            if let Some(state) = merged(f, at - lookback, at)? {
                out.push(Sample {
                    labels: f.labels.clone(),
                    val: Val::state(state),
                });
            }
        }
        Ok(out)
    }

    /// A range selector at `t`: each series' buckets starting in
    /// `[t − range, t)`, as points at each bucket's end.
    fn matrix(&mut self, ms: &MatrixSelector, t: i64) -> Result<Value, EvalError> {
        let range = range_ms(ms)?;
        let at = self.selector_time(&ms.vs, t)?;
        let data = self.fetched(&ms.vs, range)?;
        let series = data
            .iter()
            .filter_map(|f| {
                let points: Vec<(i64, Val)> = f
                    .buckets
                    .range(at - range..at)
                    .map(|(start, s)| (start + MINUTE_MS, Val::state(s.clone())))
                    .collect();
                (!points.is_empty()).then(|| RangeSeries {
                    labels: f.labels.clone(),
                    points,
                })
            })
            .collect();
        Ok(Value::Matrix(series))
    }

    /// `rate` and `increase`: each series' buckets in the window merged (and
    /// for `rate` divided by the window's seconds).
    fn over_window(&mut self, call: &Call, t: i64, per_second: bool) -> Result<Value, EvalError> {
        let name = call.func.name;
        let Some(Expr::MatrixSelector(ms)) = call.args.args.first().map(|a| a.as_ref()) else {
            return unsupported(format!(
                "{name}() takes a range selector such as x[5m] (subqueries are not supported)"
            ));
        };
        let range = range_ms(ms)?;
        let at = self.selector_time(&ms.vs, t)?;
        let data = self.fetched(&ms.vs, range)?;
        let mut out = Vec::new();
        for f in data.iter() {
            if !additive(f.kind) {
                return unsupported(format!(
                    "{name}() of a {} series ({}) is not defined: strata merges it by other means than adding; select it bare or aggregate it",
                    f.kind.as_str(),
                    f.labels.get(NAME).map_or("", String::as_str)
                ));
            }
            if let Some(state) = merged(f, at - range, at)? {
                let scale = if per_second {
                    1000.0 / range as f64
                } else {
                    1.0
                };
                out.push(Sample {
                    labels: without_name(f.labels.clone()),
                    val: Val::State { state, scale },
                });
            }
        }
        ops::check_unique(&out, name)?;
        Ok(Value::Vector(out))
    }

    fn call(&mut self, call: &Call, t: i64) -> Result<Value, EvalError> {
        let name = call.func.name;
        let args = &call.args.args;
        match name {
            "rate" => self.over_window(call, t, true),
            "increase" => self.over_window(call, t, false),
            "histogram_quantile" => {
                let phi =
                    self.eval_scalar(arg(args, 0)?, t, "histogram_quantile's first argument")?;
                let v = self.eval_vector(arg(args, 1)?, t, "histogram_quantile")?;
                ops::histogram_quantile(phi, v).map(Value::Vector)
            }
            "histogram_count" | "histogram_sum" | "histogram_avg" => {
                let v = self.eval_vector(arg(args, 0)?, t, name)?;
                ops::histogram_field(name, v).map(Value::Vector)
            }
            "label_replace" => {
                let v = self.eval_vector(arg(args, 0)?, t, name)?;
                let mut s = Vec::new();
                for (i, a) in args.iter().enumerate().skip(1) {
                    s.push(self.eval_string(
                        a,
                        t,
                        &format!("label_replace's argument {}", i + 2),
                    )?);
                }
                let [dst, replacement, src, regex] = s.as_slice() else {
                    return Err(EvalError::BadData("label_replace takes 5 arguments".into()));
                };
                ops::label_replace(v, dst, replacement, src, regex).map(Value::Vector)
            }
            "absent" => {
                let v = self.eval_vector(arg(args, 0)?, t, name)?;
                Ok(Value::Vector(ops::absent(arg(args, 0)?, &v)))
            }
            "vector" => {
                let x = self.eval_scalar(arg(args, 0)?, t, name)?;
                Ok(Value::Vector(vec![Sample {
                    labels: Labels::new(),
                    val: Val::Float(x),
                }]))
            }
            "scalar" => {
                let v = self.eval_vector(arg(args, 0)?, t, name)?;
                Ok(Value::Scalar(match v.as_slice() {
                    [one] => one.val.number()?,
                    _ => f64::NAN,
                }))
            }
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            other => unsupported(format!(
                "function {other}() is not supported by strata's PromQL (docs/PROMQL.md lists what is)"
            )),
        }
    }
}

/// Argument `i` of a call (the parser checked their number).
fn arg(args: &[Box<Expr>], i: usize) -> Result<&Expr, EvalError> {
    args.get(i)
        .map(|a| a.as_ref())
        .ok_or_else(|| EvalError::BadData(format!("missing argument {}", i + 1)))
}

/// The buckets of `f` starting in `from..to`, merged; `None` without any.
fn merged(f: &Fetched, from: i64, to: i64) -> Result<Option<State>, EvalError> {
    let mut acc: Option<State> = None;
    for state in f.buckets.range(from..to).map(|(_, s)| s) {
        match &mut acc {
            None => acc = Some(state.clone()),
            Some(a) => a
                .merge(state)
                .map_err(|e| EvalError::Execution(format!("cannot merge buckets: {e}")))?,
        }
    }
    Ok(acc)
}

/// Labels without the metric name (what functions and arithmetic return).
pub fn without_name(mut labels: Labels) -> Labels {
    labels.remove(NAME);
    labels
}

/// A range in ms, rounded up to whole minutes.
fn range_ms(ms: &MatrixSelector) -> Result<i64, EvalError> {
    let ms = duration_ms(&ms.range)?;
    Ok(((ms + MINUTE_MS - 1) / MINUTE_MS).max(1) * MINUTE_MS)
}

fn duration_ms(d: &std::time::Duration) -> Result<i64, EvalError> {
    i64::try_from(d.as_millis())
        .ok()
        .filter(|ms| *ms <= super::guard::MAX_DURATION_MS)
        .ok_or_else(|| EvalError::BadData(format!("duration {d:?} is too long")))
}

fn system_time_ms(at: &SystemTime) -> Result<i64, EvalError> {
    let ms = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_millis()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_millis()).unwrap_or(i128::MAX),
    };
    i64::try_from(ms)
        .ok()
        .filter(|ms| strata_model::time::in_range(*ms))
        .ok_or_else(|| EvalError::BadData("the @ time is outside years 1 to 9999".into()))
}
