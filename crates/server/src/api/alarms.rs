//! The `data` of `GET /api/v1/alarms` (DESIGN §8): firing alarm instances,
//! each with its rule's metric, field, op and threshold, and the alarm
//! history, newest first, and each rule with the newest minute it has been
//! evaluated up to. Built from what [`Alarms`] exposes; the handler in
//! [`super::http`] wraps it in `{"status":"success","data":…}`.

use std::collections::HashMap;

use serde_json::{Value, json};
use strata_store::{AlarmKey, StoreError};

use crate::config::AlarmConfig;
use crate::outputs::alarms::Alarms;

/// `{"active": […], "history": […]}` with the newest `limit` history
/// records. Blocks on the store: call it from a blocking thread.
pub fn data(alarms: &Alarms, limit: usize) -> Result<Value, StoreError> {
    let rules: HashMap<&str, &AlarmConfig> = alarms.rules().map(|r| (r.name.as_str(), r)).collect();
    let active: Vec<Value> = alarms
        .firing()?
        .into_iter()
        .map(|s| {
            let mut item = json!({
                "alarm": s.key.rule,
                "group": group_json(&s.key),
                "since_ms": s.since_ms,
                "value": s.value,
                "ts_ms": s.minute_ms,
            });
            if let Some(rule) = rules.get(s.key.rule.as_str()) {
                item["metric"] = json!(rule.metric);
                item["field"] = json!(rule.field);
                item["op"] = json!(rule.op.as_str());
                item["threshold"] = json!(rule.threshold);
            }
            item
        })
        .collect();
    let history: Vec<Value> = alarms
        .history(limit)?
        .into_iter()
        .map(|r| {
            json!({
                "alarm": r.key.rule,
                "state": if r.firing { "firing" } else { "resolved" },
                "group": group_json(&r.key),
                "value": r.value,
                "ts_ms": r.minute_ms,
                "evaluated_ms": r.ts_ms,
            })
        })
        .collect();
    let evaluated = alarms.evaluated_through();
    let rules: Vec<Value> = alarms
        .rules()
        .map(|r| {
            json!({
                "alarm": r.name,
                "metric": r.metric,
                "field": r.field,
                "op": r.op.as_str(),
                "threshold": r.threshold,
                "evaluated_through_ms": evaluated.get(&r.name),
            })
        })
        .collect();
    Ok(json!({"active": active, "history": history, "rules": rules}))
}

/// An instance's group labels as a JSON object.
fn group_json(key: &AlarmKey) -> Value {
    Value::Object(
        key.group
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}
