//! `GET /api/v1/events?type=…&from=…&to=…&limit=…`: the event log, newest
//! first, filtered by event type and time (docs/OPERATIONS.md, "Events").
//!
//! - `type`: one or more event types (`EventKind` names), repeated
//!   (`type=a&type=b`) or comma-separated (`type=a,b`); absent: every type.
//! - `from`, `to`: epoch ms, `now`, or relative (`-1h`); the events listed
//!   have `from <= ts_ms < to`. `from` defaults to `-1d`, `to` to no bound.
//!   `since` is the older name of `from`.
//! - `limit`: 1 to 10 000, default 100; the newest events are kept.
//!
//! A bad parameter, a repeated one or an unknown one is a 400 whose JSON
//! names it, in its message and in `parameter`.

use std::sync::Arc;

use axum::extract::{Query as QueryParams, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strata_store::{EventKind, EventQuery};

use crate::ApiState;
use crate::api::json::{answer, refusal};
use crate::api::query::parse_time_param;
use crate::api::request_id;
use crate::context::now_ms;
use crate::status::Class;

/// Most events one answer lists.
pub const MAX_LIMIT: usize = 10_000;

/// Events one answer lists when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 100;

/// The parameters the endpoint knows.
const PARAMETERS: [&str; 5] = ["type", "from", "to", "since", "limit"];

/// A parameter the endpoint refuses, and why.
#[derive(Debug, PartialEq, Eq)]
struct BadParameter {
    parameter: String,
    message: String,
}

impl BadParameter {
    fn new(parameter: &str, message: impl Into<String>) -> Self {
        BadParameter {
            parameter: parameter.to_owned(),
            message: message.into(),
        }
    }
}

/// The handler of `GET /api/v1/events`.
pub(crate) async fn list(
    State(node): State<Arc<ApiState>>,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
) -> Response {
    let query = match parse(&params, now_ms()) {
        Ok(query) => query,
        Err(bad) => {
            let body = json!({
                "status": "error",
                "error": format!("parameter {}: {}", bad.parameter, bad.message),
                "parameter": bad.parameter,
            });
            return answer(Class::Invalid, body);
        }
    };
    let store = node.ctx.store.clone();
    match request_id::spawn_blocking(move || store.query_events(&query)).await {
        Ok(Ok(list)) => {
            let data: Vec<Value> = list
                .into_iter()
                .map(|e| json!({"ts_ms": e.ts_ms, "kind": e.kind.as_str(), "message": e.message}))
                .collect();
            axum::Json(json!({"status": "success", "data": data})).into_response()
        }
        Ok(Err(e)) => refusal(Class::Internal, format!("reading events: {e}")),
        Err(e) => refusal(Class::Internal, format!("reading events: {e}")),
    }
}

/// The query the parameters ask for, with relative times taken from
/// `now_ms`.
fn parse(params: &[(String, String)], now_ms: i64) -> Result<EventQuery, BadParameter> {
    let mut kinds = Vec::new();
    let mut types_given = false;
    let (mut from, mut to, mut since, mut limit) = (None, None, None, None);
    for (name, value) in params {
        let once = |slot: &Option<&str>| match slot {
            Some(_) => Err(BadParameter::new(name, "given more than once")),
            None => Ok(Some(value.as_str())),
        };
        match name.as_str() {
            "type" => {
                types_given = true;
                add_kinds(value, &mut kinds)?;
            }
            "from" => from = once(&from)?,
            "to" => to = once(&to)?,
            "since" => since = once(&since)?,
            "limit" => limit = once(&limit)?,
            other => {
                return Err(BadParameter::new(
                    other,
                    format!("unknown; known: {}", PARAMETERS.join(", ")),
                ));
            }
        }
    }
    if types_given && kinds.is_empty() {
        return Err(BadParameter::new("type", "names no event type"));
    }
    let time = |name: &str, value: &str| {
        parse_time_param(name, value, now_ms).map_err(|e| {
            // The query module's message starts with `parameter NAME: ` already.
            let prefix = format!("parameter {name}: ");
            let message = e.0.strip_prefix(&prefix).unwrap_or(&e.0).to_owned();
            BadParameter::new(name, message)
        })
    };
    let from_ms = match (from, since) {
        (Some(_), Some(_)) => {
            return Err(BadParameter::new(
                "since",
                "cannot be combined with from (since is its older name)",
            ));
        }
        (Some(v), None) => time("from", v)?,
        (None, Some(v)) => time("since", v)?,
        (None, None) => time("from", "-1d")?,
    };
    let to_ms = to.map(|v| time("to", v)).transpose()?;
    if let Some(to_ms) = to_ms
        && to_ms <= from_ms
    {
        return Err(BadParameter::new(
            "to",
            format!("{to_ms} must be after from ({from_ms})"),
        ));
    }
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                BadParameter::new(
                    "limit",
                    format!("{v:?} is not a number from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    Ok(EventQuery {
        from_ms,
        to_ms,
        kinds,
        limit,
    })
}

/// Adds the event types of one `type` value (comma-separated, spaces
/// around names ignored) to `kinds`, each once.
fn add_kinds(value: &str, kinds: &mut Vec<EventKind>) -> Result<(), BadParameter> {
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(kind) = EventKind::parse(name) else {
            let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(BadParameter::new(
                "type",
                format!("unknown event type {name:?}; known: {}", known.join(", ")),
            ));
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW: i64 = 1_763_800_000_000;

    /// `a=1&b=2`, split as axum's query extractor hands it over (the tests
    /// need no percent-decoding).
    fn parsed(query: &str) -> Result<EventQuery, BadParameter> {
        let params: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        parse(&params, NOW)
    }

    fn refused(query: &str) -> (String, String) {
        let bad = parsed(query).unwrap_err();
        (bad.parameter, bad.message)
    }

    #[test]
    fn defaults_are_the_last_day_every_type_and_100_events() {
        assert_eq!(
            parsed("").unwrap(),
            EventQuery {
                from_ms: NOW - 86_400_000,
                to_ms: None,
                kinds: vec![],
                limit: 100,
            }
        );
    }

    #[test]
    fn types_are_repeated_or_comma_separated_each_once() {
        let q = parsed("type=alarm_fired,source_connected&type=alarm_fired&type= spool_overflow")
            .unwrap();
        assert_eq!(
            q.kinds,
            [
                EventKind::AlarmFired,
                EventKind::SourceConnected,
                EventKind::SpoolOverflow
            ]
        );
        let q = parsed("from=1000&to=2000&limit=10000").unwrap();
        assert_eq!((q.from_ms, q.to_ms, q.limit), (1000, Some(2000), 10_000));
        assert_eq!(parsed("since=-1h").unwrap().from_ms, NOW - 3_600_000);
    }

    #[test]
    fn every_bad_parameter_is_named() {
        for (query, parameter, starts) in [
            (
                "type=alarm_fird",
                "type",
                "unknown event type \"alarm_fird\"; known: source_connected,",
            ),
            ("type=unknown", "type", "unknown event type \"unknown\""),
            ("type=,", "type", "names no event type"),
            ("from=yesterday", "from", "bad time"),
            ("to=-1x", "to", "bad time"),
            ("since=-9223372036854775807d", "since", ""),
            ("from=1000&to=1000", "to", "1000 must be after from (1000)"),
            ("from=1&since=2", "since", "cannot be combined with from"),
            ("from=1&from=2", "from", "given more than once"),
            ("limit=0", "limit", "\"0\" is not a number from 1 to 10000"),
            ("limit=10001", "limit", "\"10001\" is not a number"),
            ("limit=many", "limit", "\"many\" is not a number"),
            (
                "kind=alarm_fired",
                "kind",
                "unknown; known: type, from, to, since, limit",
            ),
        ] {
            let (got_parameter, message) = refused(query);
            assert_eq!(got_parameter, parameter, "{query}: {message}");
            assert!(message.starts_with(starts), "{query}: {message}");
            assert!(!message.starts_with("parameter "), "{query}: {message}");
        }
    }
}
