//! Vector selectors over the store: which metrics a selector names (a
//! stored metric, or a component of one by its suffix, such as
//! `latency_count`), which of their series its matchers take, and their
//! minute buckets over the span a query reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::VectorSelector;
use strata_model::{Kind, MINUTE_MS, SeriesKey, State};
use strata_store::{Resolution, Store};

use super::value::{EvalError, Labels, NAME, hist_sum, unsupported};
use crate::api::query::QueryLimits;

/// A quantity of a stored state that a suffixed name selects as a series of
/// its own (`latency_count`, `checkout_ok_total`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Count,
    Sum,
    Matched,
    Total,
    Satisfied,
    Tolerating,
}

/// The suffixes each kind answers, and the component each selects.
fn components(kind: Kind) -> &'static [(&'static str, Component)] {
    use Component::*;
    match kind {
        Kind::Histogram | Kind::ExpHistogram | Kind::Avg => &[("_count", Count), ("_sum", Sum)],
        Kind::Percent => &[("_matched", Matched), ("_total", Total)],
        Kind::Apdex => &[
            ("_satisfied", Satisfied),
            ("_tolerating", Tolerating),
            ("_total", Total),
        ],
        _ => &[],
    }
}

impl Component {
    /// The kind a component series has: a count is a counter, a sum a sum.
    pub fn kind(self) -> Kind {
        if self == Component::Sum {
            Kind::Sum
        } else {
            Kind::Counter
        }
    }

    /// This component of `state`, as a counter or sum state (additive, so
    /// it merges over time and across series exactly).
    fn project(self, state: &State) -> Option<State> {
        use Component::*;
        let sum = |v: f64| {
            State::Sum(strata_model::Sum {
                sum: v,
                compensation: 0.0,
            })
        };
        Some(match (self, state) {
            (Count, State::Histogram(h)) => State::Counter(h.count()),
            (Sum, State::Histogram(h)) => sum(hist_sum(h)),
            (Count, State::ExpHistogram(h)) => State::Counter(h.count()),
            (Sum, State::ExpHistogram(h)) => State::Sum(h.sum()),
            (Count, State::Avg(a)) => State::Counter(a.count),
            (Sum, State::Avg(a)) => State::Sum(a.sum),
            (Matched, State::Percent { matched, .. }) => State::Counter(*matched),
            (Total, State::Percent { total, .. }) => State::Counter(*total),
            (Satisfied, State::Apdex(a)) => State::Counter(a.satisfied),
            (Tolerating, State::Apdex(a)) => State::Counter(a.tolerating),
            (Total, State::Apdex(a)) => State::Counter(a.total),
            _ => return None,
        })
    }
}

/// What a metric name stands for: a stored metric, or a component of one.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// The name as selected (the `__name__` of the answer).
    pub name: String,
    /// The stored metric read.
    pub metric: String,
    /// The stored metric's kind.
    pub stored_kind: Kind,
    pub component: Option<Component>,
}

impl Resolved {
    /// The kind of the series as selected.
    pub fn kind(&self) -> Kind {
        self.component.map_or(self.stored_kind, Component::kind)
    }
}

/// What `name` stands for in `store`, if anything.
pub fn resolve(store: &dyn Store, name: &str) -> Option<Resolved> {
    if let Some(kind) = store.metric_kind(name) {
        return Some(Resolved {
            name: name.into(),
            metric: name.into(),
            stored_kind: kind,
            component: None,
        });
    }
    // `x_count` of a histogram `x`, …; the longest base that resolves wins.
    name.char_indices().rev().find_map(|(at, c)| {
        if c != '_' || at == 0 {
            return None;
        }
        let (base, suffix) = name.split_at(at);
        let kind = store.metric_kind(base)?;
        let component = components(kind)
            .iter()
            .find(|(s, _)| *s == suffix)
            .map(|(_, c)| *c)?;
        Some(Resolved {
            name: name.into(),
            metric: base.into(),
            stored_kind: kind,
            component: Some(component),
        })
    })
}

/// The label matchers of a selector, the name's included (as `__name__`).
fn matchers_of(vs: &VectorSelector) -> Result<Vec<Matcher>, EvalError> {
    if !vs.matchers.or_matchers.is_empty() {
        return unsupported("`or` inside a selector's braces is not supported");
    }
    let mut all = vs.matchers.matchers.clone();
    if let Some(name) = &vs.name {
        all.push(Matcher::new(MatchOp::Equal, NAME, name));
    }
    Ok(all)
}

/// The names a selector's `__name__` matchers take: the one it names with
/// `=`, else every stored metric whose name they all match (components are
/// selected by their exact name only).
fn names_of(store: &dyn Store, matchers: &[Matcher]) -> Vec<String> {
    let on_name: Vec<&Matcher> = matchers.iter().filter(|m| m.name == NAME).collect();
    if let Some(m) = on_name.iter().find(|m| matches!(m.op, MatchOp::Equal)) {
        let name = m.value.clone();
        return if on_name.iter().all(|m| m.is_match(&name)) {
            vec![name]
        } else {
            Vec::new()
        };
    }
    store
        .metrics()
        .into_iter()
        .map(|m| m.name)
        .filter(|name| on_name.iter().all(|m| m.is_match(name)))
        .collect()
}

/// One selected series.
pub struct Selected {
    pub labels: Labels,
    pub resolved: Resolved,
    pub key: Arc<SeriesKey>,
}

/// The series `vs` selects, counted against `limits.max_series` before
/// any bucket is read.
pub fn select(
    store: &dyn Store,
    vs: &VectorSelector,
    limits: QueryLimits,
) -> Result<Vec<Selected>, EvalError> {
    let matchers = matchers_of(vs)?;
    let on_labels: Vec<&Matcher> = matchers.iter().filter(|m| m.name != NAME).collect();
    let mut out = Vec::new();
    for name in names_of(store, &matchers) {
        let Some(resolved) = resolve(store, &name) else {
            continue;
        };
        for key in store.series_of(&resolved.metric) {
            if !on_labels
                .iter()
                .all(|m| m.is_match(key.label(&m.name).unwrap_or("")))
            {
                continue;
            }
            let mut labels: Labels = key.label_pairs().into_iter().collect();
            labels.insert(NAME.into(), resolved.name.clone());
            out.push(Selected {
                labels,
                resolved: resolved.clone(),
                key,
            });
            if out.len() > limits.max_series {
                return unsupported(format!(
                    "the selector {vs} matches more than {} series, over limits.max_query_series: narrow it with label matchers",
                    limits.max_series
                ));
            }
        }
    }
    Ok(out)
}

/// A selected series with its minute buckets (by start) over a span.
pub struct Fetched {
    pub labels: Labels,
    pub kind: Kind,
    pub buckets: BTreeMap<i64, State>,
}

/// The minute buckets starting in `from..to` of every series `vs` selects
/// (components projected); `points` counts the buckets held, against
/// `limits.max_points`.
pub fn fetch(
    store: &dyn Store,
    vs: &VectorSelector,
    from: i64,
    to: i64,
    limits: QueryLimits,
    points: &mut usize,
) -> Result<Vec<Fetched>, EvalError> {
    let from = from.div_euclid(MINUTE_MS) * MINUTE_MS;
    let mut out = Vec::new();
    for sel in select(store, vs, limits)? {
        let read = store
            .read_at(&sel.key, Resolution::Minute, from, to)
            .map_err(|e| EvalError::Internal(format!("store: {e}")))?;
        let mut buckets = BTreeMap::new();
        for (start, state) in read {
            let state = match sel.resolved.component {
                None => state,
                Some(c) => match c.project(&state) {
                    Some(s) => s,
                    None => continue,
                },
            };
            buckets.insert(start, state);
        }
        *points += buckets.len();
        if *points > limits.max_points {
            return unsupported(format!(
                "the query reads more than {} minute buckets, over limits.max_query_points: shorten the range or narrow the selectors",
                limits.max_points
            ));
        }
        out.push(Fetched {
            labels: sel.labels,
            kind: sel.resolved.kind(),
            buckets,
        });
    }
    Ok(out)
}
