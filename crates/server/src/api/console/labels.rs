//! `GET /api/v1/labels?metric=NAME`: the label names of a metric's series
//! and the values each takes, sorted, for the console's explorer:
//!
//! ```json
//! {"status":"success","data":{"metric":"http_latency_ms","kind":"histogram","series":6,
//!  "labels":{"cloud":["aws","gcp"],"service":["cart","checkout","search"]},"truncated":[]}}
//! ```
//!
//! At most [`MAX_VALUES`] values are listed per label; `truncated` names the
//! labels that have more. An unknown metric is a 404; a missing `metric`, a
//! 400.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::{Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use strata_model::SeriesKey;

use crate::ApiState;
use crate::api::json::{error, refusal};
use crate::api::request_id;
use crate::status::Class;

/// Most values listed per label.
pub const MAX_VALUES: usize = 1000;

/// The handler of `GET /api/v1/labels`.
pub(crate) async fn labels(
    State(node): State<Arc<ApiState>>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    if let Some(unknown) = params.keys().find(|k| *k != "metric") {
        return refusal(
            Class::Invalid,
            format!("unknown parameter {unknown:?}: only metric is known"),
        );
    }
    let Some(metric) = params.get("metric").cloned() else {
        return refusal(Class::Invalid, "missing parameter metric");
    };
    let store = node.ctx.store.clone();
    let read = request_id::spawn_blocking(move || {
        let kind = store.metric_kind(&metric)?;
        Some((metric.clone(), kind, store.series_of(&metric)))
    })
    .await;
    match read {
        Ok(Some((metric, kind, series))) => {
            let (labels, truncated) = label_values(&series);
            let data = json!({
                "metric": metric,
                "kind": kind.as_str(),
                "series": series.len(),
                "labels": labels,
                "truncated": truncated,
            });
            axum::Json(json!({"status": "success", "data": data})).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "no such metric"),
        Err(e) => refusal(Class::Internal, format!("reading the series failed: {e}")),
    }
}

/// Each label's distinct values (at most [`MAX_VALUES`]), and the labels
/// that had more.
fn label_values(series: &[Arc<SeriesKey>]) -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut truncated = BTreeSet::new();
    for key in series {
        for (name, value) in key.labels() {
            let values = labels.entry(name.to_owned()).or_default();
            if values.len() < MAX_VALUES {
                values.insert(value.to_owned());
            } else if !values.contains(value) {
                truncated.insert(name.to_owned());
            }
        }
    }
    (labels, truncated.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(labels: &[(&str, &str)]) -> Arc<SeriesKey> {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Arc::new(SeriesKey::new("m", labels).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn values_are_distinct_and_sorted_per_label() {
        let series = [
            key(&[("cloud", "gcp"), ("service", "search")]),
            key(&[("cloud", "aws"), ("service", "search")]),
            key(&[("cloud", "aws")]),
        ];
        let (labels, truncated) = label_values(&series);
        assert_eq!(
            serde_json::to_value(&labels).unwrap_or_default(),
            json!({"cloud": ["aws", "gcp"], "service": ["search"]})
        );
        assert!(truncated.is_empty());
    }

    #[test]
    fn values_beyond_the_bound_are_reported_not_listed() {
        let series: Vec<_> = (0..=MAX_VALUES)
            .map(|i| key(&[("pod", &format!("p{i:05}"))]))
            .collect();
        let (labels, truncated) = label_values(&series);
        assert_eq!(labels["pod"].len(), MAX_VALUES);
        assert_eq!(truncated, vec!["pod".to_string()]);
    }
}
