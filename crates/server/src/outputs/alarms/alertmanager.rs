//! Alerts for Alertmanager: what strata POSTs to `<url>/api/v2/alerts`
//! (Alertmanager's v2 API, an array of *postable alerts*), when it sends
//! them again, and what the sender completes at the time of sending.
//!
//! # An alert
//! One alarm instance is one alert:
//! - `labels` (its identity in Alertmanager): `alertname` (the rule's name),
//!   `node` (this node's id), `severity` (the rule's, default `warning`), the
//!   instance's group labels (a group label named `node` or `severity` takes
//!   their place), then the rule's `labels`, templated ([`super::template`]);
//!   a label that renders empty is left out, as Prometheus does. Labels are
//!   rendered with the value that fired the instance, so its firing, its
//!   re-sends and its resolution are one alert.
//! - `annotations`: `value` (of the post: the breaching value while firing,
//!   the newest one when resolved), `threshold`, `bucket` (that value's
//!   minute, RFC 3339), `complete`, `sources` and `expected_sources` (that
//!   minute's completeness at this node), then the rule's `annotations`,
//!   templated with the post's value.
//! - `startsAt`: when the instance fired; `endsAt`: the resolve time in the
//!   post that resolves it. A firing post is stored without `endsAt`: the
//!   sender sets it to the time of sending plus four re-send intervals
//!   ([`complete_at_send`]), as Prometheus does, so a post delivered late
//!   (after retries, after a restart) still keeps the alert up rather than
//!   ending it at once.
//! - `generatorURL`: this node's query of the rule ([`generator_url`]).
//!
//! # Re-sending
//! Alertmanager ends an alert at its `endsAt` unless told again, so every
//! firing instance is posted again every `alarms.alertmanager_resend_s`, on
//! the slots `since + n × resend` of its persisted state ([`next_resend_ms`]).
//! After a restart, every firing instance is due at once (the node does not
//! know how long it was down) — once the node has committed, so that the
//! completeness it reports is known again — then on its slots again: the schedule is
//! derived from the alarm states the store keeps, with nothing stored of
//! its own. A re-send to an Alertmanager that still has a post of that alert
//! waiting in the outbox is skipped (that post carries a fresh `endsAt` when
//! it goes), so an unreachable Alertmanager does not fill the outbox.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value, json};
use strata_model::MINUTE_MS;
use strata_store::{AlarmState, AlarmUpdate, Notification, NotificationKind};

use super::Alarms;
use super::rules::Rule;
use crate::config::AlarmConfig;
use crate::core::sources::Completeness;

/// Labels strata sets itself: a rule's `labels` cannot name them.
pub const RESERVED_LABELS: [&str; 3] = ["alertname", "severity", "node"];

/// Annotations strata sets itself: a rule's `annotations` cannot name them.
pub const BUILTIN_ANNOTATIONS: [&str; 6] = [
    "value",
    "threshold",
    "bucket",
    "complete",
    "sources",
    "expected_sources",
];

/// A firing alert's `endsAt` is this many re-send intervals after it is sent.
pub const ENDS_AT_RESENDS: u32 = 4;

/// Most alerts in one re-send post; more make several posts.
pub const MAX_ALERTS_PER_POST: usize = 64;

/// The path appended to an Alertmanager's base URL.
pub const ALERTS_PATH: &str = "/api/v2/alerts";

/// The node's Alertmanager settings (`[alarms]`).
#[derive(Clone, Debug, PartialEq)]
pub struct AlertmanagerSettings {
    /// Base URLs every rule sends to unless it names its own.
    pub urls: Vec<String>,
    /// How often a firing alert is sent again.
    pub resend: Duration,
    /// CA file `https://` Alertmanagers are verified against.
    pub ca_file: Option<PathBuf>,
}

impl Default for AlertmanagerSettings {
    fn default() -> Self {
        AlertmanagerSettings {
            urls: Vec::new(),
            resend: Duration::from_secs(crate::config::DEFAULT_ALERTMANAGER_RESEND_S),
            ca_file: None,
        }
    }
}

impl AlertmanagerSettings {
    /// How long after it is sent a firing alert ends unless sent again.
    pub fn valid_for_ms(&self) -> i64 {
        let ms = i64::try_from(self.resend.as_millis()).unwrap_or(i64::MAX);
        ms.saturating_mul(i64::from(ENDS_AT_RESENDS))
    }

    pub fn resend_ms(&self) -> i64 {
        i64::try_from(self.resend.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    }
}

/// `base` + `/api/v2/alerts` (a trailing `/` of `base` is dropped).
pub fn alerts_url(base: &str) -> String {
    format!("{}{ALERTS_PATH}", base.trim_end_matches('/'))
}

/// What one alert says beyond its rule.
pub(crate) struct AlertFacts<'a> {
    /// This node's id (`node` label).
    pub node_id: &'a str,
    /// The instance's group labels, sorted by name.
    pub group: &'a [(String, String)],
    /// The value of this post, and the minute it belongs to.
    pub value: f64,
    pub minute_ms: i64,
    /// That minute's completeness at this node.
    pub completeness: Completeness,
    /// The value that fired the instance (its labels are rendered with it).
    pub fired_value: f64,
    /// When it fired (`startsAt`).
    pub starts_ms: i64,
    /// When it resolved (`endsAt`); `None` while firing.
    pub ends_ms: Option<i64>,
    /// The alert's `generatorURL`.
    pub generator_url: &'a str,
}

/// The point an alert reports, and the instance's firing.
pub(crate) struct AlertPoint {
    /// The value of this post, and its minute.
    pub value: f64,
    pub minute_ms: i64,
    /// The value that fired the instance, and when.
    pub fired_value: f64,
    pub starts_ms: i64,
    /// When it resolved; `None` while firing.
    pub ends_ms: Option<i64>,
}

impl Alarms {
    /// The alert of instance `group` of `rule` reporting `point`, with the
    /// completeness of its minute now and this node's query as its link.
    pub(crate) fn alert(
        &self,
        rule: &Rule,
        group: &[(String, String)],
        point: &AlertPoint,
    ) -> Value {
        let generator = generator_url(&self.link_base(), &rule.config);
        let completeness = self
            .pipeline
            .watermarks()
            .completeness(point.minute_ms.saturating_add(MINUTE_MS));
        postable_alert(
            rule,
            &AlertFacts {
                node_id: &self.node_id,
                group,
                value: point.value,
                minute_ms: point.minute_ms,
                completeness,
                fired_value: point.fired_value,
                starts_ms: point.starts_ms,
                ends_ms: point.ends_ms,
                generator_url: &generator,
            },
        )
    }
}

impl Alarms {
    /// Queues, as of `now_ms` (the alarm clock), the re-sends that are due:
    /// each firing instance whose slot has come (every one after a start)
    /// is posted again to each of its rule's Alertmanagers that has no post
    /// of it waiting, many alerts to one Alertmanager gathered in posts of
    /// at most [`MAX_ALERTS_PER_POST`]; the instance's next slot follows. The
    /// posts are queued in one store transaction; one that cannot be is
    /// logged, and the next slot tries again.
    pub(super) fn resend_due(&self, now_ms: i64) {
        // Before the first commit after a start, no minute is complete here
        // yet: the alerts would say so of the minutes that fired them.
        if self.rules.iter().all(|r| r.alertmanagers.is_empty())
            || self.pipeline.last_commit_ms() == 0
        {
            return;
        }
        let mut eval = self.eval.lock();
        let due: Vec<AlarmState> = eval
            .states
            .values()
            .filter(|s| s.firing && eval.resend_at.get(&s.key).is_none_or(|at| *at <= now_ms))
            .cloned()
            .collect();
        if due.is_empty() {
            return;
        }
        let pending = self.status.lock().pending_alerts.clone();
        let rules: HashMap<&str, &Rule> = self
            .rules
            .iter()
            .map(|r| (r.config.name.as_str(), r))
            .collect();
        let resend_ms = self.settings.alertmanager.resend_ms();
        let mut posts: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        let mut waiting = 0usize;
        for state in &due {
            let next = next_resend_ms(state.since_ms, now_ms, resend_ms);
            eval.resend_at.insert(state.key.clone(), next);
            let Some(rule) = rules.get(state.key.rule.as_str()) else {
                continue;
            };
            let group = &state.key.group;
            let id = identity(&labels(rule, &self.node_id, group, state.value));
            let point = AlertPoint {
                value: state.value,
                minute_ms: state.minute_ms,
                fired_value: state.value,
                starts_ms: state.since_ms,
                ends_ms: None,
            };
            let mut alert = None;
            for url in &rule.alertmanagers {
                if pending.contains(&(url.clone(), id.clone())) {
                    waiting += 1;
                    continue;
                }
                let alert = alert.get_or_insert_with(|| self.alert(rule, group, &point));
                posts.entry(url.as_str()).or_default().push(alert.clone());
            }
        }
        drop(eval);
        self.queue_posts(&posts, waiting);
    }

    /// Queues the re-send `posts` (alerts by Alertmanager URL).
    fn queue_posts(&self, posts: &BTreeMap<&str, Vec<Value>>, waiting: usize) {
        let created_ms = crate::context::now_ms();
        let notifications: Vec<Notification> = posts
            .iter()
            .flat_map(|(url, alerts)| {
                alerts
                    .chunks(MAX_ALERTS_PER_POST)
                    .map(move |chunk| Notification {
                        url: (*url).to_owned(),
                        body: post_body(chunk),
                        created_ms,
                        kind: NotificationKind::Alertmanager,
                    })
            })
            .collect();
        if notifications.is_empty() {
            if waiting > 0 {
                tracing::debug!(
                    waiting,
                    "Alertmanager re-sends skipped: earlier posts of them still queued"
                );
            }
            return;
        }
        let alerts: usize = posts.values().map(Vec::len).sum();
        let update = AlarmUpdate {
            notifications: &notifications,
            ..AlarmUpdate::default()
        };
        match self.ctx.store.update_alarms(update) {
            Ok(_) => {
                tracing::debug!(
                    alerts,
                    posts = notifications.len(),
                    waiting,
                    "firing alerts queued again for Alertmanager"
                );
                let _ = self.doorbell.try_send(());
            }
            Err(e) => {
                tracing::warn!(error = %e, alerts, "Alertmanager re-sends not queued; tried again at their next slot");
            }
        }
    }
}

/// The alert's labels: its identity in Alertmanager.
pub(crate) fn labels(
    rule: &Rule,
    node_id: &str,
    group: &[(String, String)],
    fired_value: f64,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert("node".to_owned(), node_id.to_owned());
    labels.insert("severity".to_owned(), rule.config.severity.clone());
    for (name, value) in group {
        labels.insert(name.clone(), value.clone());
    }
    labels.insert("alertname".to_owned(), rule.config.name.clone());
    for (name, template) in &rule.labels {
        let value = template.render(fired_value, group);
        if !value.is_empty() {
            labels.insert(name.clone(), value);
        }
    }
    labels
}

/// The identity of an alert by its labels, as the sender and the re-sends
/// compare them.
pub(crate) fn identity(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_default()
}

/// One postable alert (Alertmanager's `postableAlert`).
pub(crate) fn postable_alert(rule: &Rule, facts: &AlertFacts<'_>) -> Value {
    let c = &rule.config;
    let labels = labels(rule, facts.node_id, facts.group, facts.fired_value);
    let mut annotations = Map::new();
    let mut annotate = |name: &str, value: String| {
        annotations.insert(name.to_owned(), Value::String(value));
    };
    annotate("value", format!("{}", facts.value));
    annotate("threshold", format!("{}", c.threshold));
    annotate("bucket", rfc3339(facts.minute_ms));
    annotate("complete", facts.completeness.complete.to_string());
    annotate("sources", facts.completeness.sources.to_string());
    annotate(
        "expected_sources",
        facts.completeness.expected_sources.to_string(),
    );
    for (name, template) in &rule.annotations {
        annotate(name, template.render(facts.value, facts.group));
    }
    let mut alert = json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(facts.starts_ms),
        "generatorURL": facts.generator_url,
    });
    if let Some(ends_ms) = facts.ends_ms {
        alert["endsAt"] = Value::String(rfc3339(ends_ms));
    }
    alert
}

/// The body of one post: the alerts as a JSON array.
pub(crate) fn post_body(alerts: &[Value]) -> String {
    Value::Array(alerts.to_vec()).to_string()
}

/// What the sender POSTs for a stored body: each alert without `endsAt`
/// (a firing one) gets `now_ms + valid_for_ms`. A body that is not an array
/// of alerts (none is stored so) goes as it is.
pub(crate) fn complete_at_send(body: &str, now_ms: i64, valid_for_ms: i64) -> String {
    let Ok(Value::Array(mut alerts)) = serde_json::from_str::<Value>(body) else {
        return body.to_owned();
    };
    let ends_at = rfc3339(now_ms.saturating_add(valid_for_ms));
    for alert in &mut alerts {
        if let Value::Object(fields) = alert
            && !fields.contains_key("endsAt")
        {
            fields.insert("endsAt".to_owned(), Value::String(ends_at.clone()));
        }
    }
    Value::Array(alerts).to_string()
}

/// The identities of the alerts in a stored body (see [`identity`]).
pub(crate) fn identities_in(body: &str) -> Vec<String> {
    let Ok(Value::Array(alerts)) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    alerts
        .iter()
        .filter_map(|a| {
            serde_json::from_value::<BTreeMap<String, String>>(a["labels"].clone()).ok()
        })
        .map(|labels| identity(&labels))
        .collect()
}

/// The first re-send slot of an instance firing since `since_ms` that is
/// after `now_ms`: `since_ms + n × resend_ms`, `n ≥ 1`.
pub fn next_resend_ms(since_ms: i64, now_ms: i64, resend_ms: i64) -> i64 {
    let resend_ms = resend_ms.max(1);
    let elapsed = now_ms.saturating_sub(since_ms).max(0);
    let n = elapsed / resend_ms + 1;
    since_ms.saturating_add(n.saturating_mul(resend_ms))
}

/// This node's query of `rule`, on `base` (`http.external_url`, or the HTTP
/// listener): its selector (metric and `match`), `group_by`, per minute over
/// the last 15 minutes or its window, if longer.
pub fn generator_url(base: &str, rule: &AlarmConfig) -> String {
    let mut selector = rule.metric.clone();
    if !rule.matchers.is_empty() {
        let matchers: Vec<String> = rule
            .matchers
            .iter()
            .map(|(name, value)| format!("{name}=\"{}\"", promql_escape(value)))
            .collect();
        selector = format!("{selector}{{{}}}", matchers.join(","));
    }
    let minutes = rule.period_minutes.max(15);
    format!(
        "{}/api/v1/query?q={}&from=-{minutes}m&step=minute&group_by={}",
        base.trim_end_matches('/'),
        percent_encode(&selector),
        percent_encode(&rule.group_by.join(",")),
    )
}

/// A PromQL string's content: `\`, `"` and line breaks escaped.
fn promql_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `ms` since the Unix epoch as RFC 3339 in UTC, to the millisecond:
/// `2025-11-22T08:27:00.000Z`.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AlarmConfig;

    const M: i64 = 60_000;

    fn rule() -> Rule {
        let config = AlarmConfig {
            name: "checkout-p99".into(),
            metric: "http_latency_ms".into(),
            matchers: [("service".to_owned(), "check\"out".to_owned())].into(),
            group_by: vec!["cloud".into()],
            field: "p99".into(),
            threshold: 250.0,
            severity: "page".into(),
            labels: [
                ("team".to_owned(), "payments".to_owned()),
                ("where".to_owned(), "{{ $labels.cloud }}".to_owned()),
                ("gone".to_owned(), "{{ $labels.region }}".to_owned()),
            ]
            .into(),
            annotations: [(
                "summary".to_owned(),
                "p99 {{ $value }} ms in {{ $labels.cloud }}".to_owned(),
            )]
            .into(),
            ..AlarmConfig::default()
        };
        match Rule::compile(&config, &AlertmanagerSettings::default()) {
            Ok(rule) => rule,
            Err(e) => panic!("{e}"),
        }
    }

    fn facts<'a>(group: &'a [(String, String)], ends_ms: Option<i64>) -> AlertFacts<'a> {
        AlertFacts {
            node_id: "global",
            group,
            value: 612.5,
            minute_ms: 1_763_800_020_000,
            completeness: Completeness {
                complete: true,
                sources: 2,
                expected_sources: 3,
            },
            fired_value: 700.0,
            starts_ms: 1_763_800_085_250,
            ends_ms,
            generator_url: "http://strata:13000/api/v1/query?q=x",
        }
    }

    #[test]
    fn a_firing_alert_carries_labels_annotations_and_no_end() {
        let group = [("cloud".to_owned(), "aws".to_owned())];
        let alert = postable_alert(&rule(), &facts(&group, None));
        assert_eq!(
            alert,
            json!({
                "labels": {
                    "alertname": "checkout-p99",
                    "cloud": "aws",
                    "node": "global",
                    "severity": "page",
                    "team": "payments",
                    "where": "aws",
                },
                "annotations": {
                    "value": "612.5",
                    "threshold": "250",
                    "bucket": "2025-11-22T08:27:00.000Z",
                    "complete": "true",
                    "sources": "2",
                    "expected_sources": "3",
                    "summary": "p99 612.5 ms in aws",
                },
                "startsAt": "2025-11-22T08:28:05.250Z",
                "generatorURL": "http://strata:13000/api/v1/query?q=x",
            })
        );
    }

    #[test]
    fn a_resolved_alert_ends_at_the_resolve_time_with_the_same_labels() {
        let group = [("cloud".to_owned(), "aws".to_owned())];
        let rule = rule();
        let firing = postable_alert(&rule, &facts(&group, None));
        let resolved = postable_alert(&rule, &facts(&group, Some(1_763_800_200_000)));
        assert_eq!(resolved["endsAt"], "2025-11-22T08:30:00.000Z");
        assert_eq!(resolved["startsAt"], firing["startsAt"]);
        assert_eq!(resolved["labels"], firing["labels"]);
    }

    #[test]
    fn group_labels_take_the_place_of_node_and_severity() {
        let group = [
            ("cloud".to_owned(), "gcp".to_owned()),
            ("node".to_owned(), "edge-7".to_owned()),
        ];
        let labels = labels(&rule(), "global", &group, 1.0);
        assert_eq!(labels["node"], "edge-7");
        assert_eq!(labels["alertname"], "checkout-p99");
        assert!(!labels.contains_key("gone"), "{labels:?}");
        let identity = identity(&labels);
        let body = post_body(&[json!({"labels": labels})]);
        assert_eq!(identities_in(&body), vec![identity]);
        assert!(identities_in("{\"alarm\":\"x\"}").is_empty());
    }

    #[test]
    fn labels_use_the_firing_value_and_annotations_the_posts() {
        let mut config = rule().config;
        config.labels = [("level".to_owned(), "{{ $value }}".to_owned())].into();
        let rule = match Rule::compile(&config, &AlertmanagerSettings::default()) {
            Ok(rule) => rule,
            Err(e) => panic!("{e}"),
        };
        let alert = postable_alert(&rule, &facts(&[], Some(0)));
        assert_eq!(alert["labels"]["level"], "700");
        assert_eq!(alert["annotations"]["value"], "612.5");
        assert_eq!(alert["annotations"]["summary"], "p99 612.5 ms in ");
    }

    #[test]
    fn the_sender_sets_the_end_of_firing_alerts_only() {
        let body = post_body(&[
            json!({"labels": {"alertname": "a"}, "startsAt": "x"}),
            json!({"labels": {"alertname": "b"}, "endsAt": "2025-11-22T08:30:00.000Z"}),
        ]);
        let sent = complete_at_send(&body, 1_763_800_200_000, 240_000);
        let sent: Value = serde_json::from_str(&sent).unwrap_or_default();
        assert_eq!(sent[0]["endsAt"], "2025-11-22T08:34:00.000Z");
        assert_eq!(sent[1]["endsAt"], "2025-11-22T08:30:00.000Z");
        assert_eq!(complete_at_send("not json", 0, 1), "not json");
    }

    #[test]
    fn re_sends_fall_on_the_slots_of_the_firing_time() {
        let since = 10 * M + 5_000;
        let resend = M;
        assert_eq!(next_resend_ms(since, since, resend), since + M);
        assert_eq!(next_resend_ms(since, since + M - 1, resend), since + M);
        assert_eq!(next_resend_ms(since, since + M, resend), since + 2 * M);
        // After a long stop, the next slot after now, not every missed one.
        assert_eq!(
            next_resend_ms(since, since + 90 * M + 1, resend),
            since + 91 * M
        );
        // A clock behind the firing time, and a zero interval.
        assert_eq!(next_resend_ms(since, since - 5 * M, resend), since + M);
        assert_eq!(next_resend_ms(since, since, 0), since + 1);
        let settings = AlertmanagerSettings::default();
        assert_eq!(settings.resend_ms(), 60_000);
        assert_eq!(settings.valid_for_ms(), 240_000);
    }

    #[test]
    fn the_generator_url_is_the_rules_query() {
        let mut config = rule().config;
        assert_eq!(
            generator_url("http://127.0.0.1:13000/", &config),
            "http://127.0.0.1:13000/api/v1/query?q=http_latency_ms%7Bservice%3D%22check%5C%22out%22%7D&from=-15m&step=minute&group_by=cloud"
        );
        config.matchers.clear();
        config.group_by = vec!["cloud".into(), "az".into()];
        config.period_minutes = 30;
        assert_eq!(
            generator_url("https://strata.example.com/p", &config),
            "https://strata.example.com/p/api/v1/query?q=http_latency_ms&from=-30m&step=minute&group_by=cloud%2Caz"
        );
        assert_eq!(
            alerts_url("http://am:9093/"),
            "http://am:9093/api/v2/alerts"
        );
        assert_eq!(alerts_url("http://am:9093"), "http://am:9093/api/v2/alerts");
    }

    /// An Alertmanager stand-in: answers `status` and keeps every body.
    #[derive(Default)]
    struct Receiver {
        status: std::sync::atomic::AtomicU16,
        bodies: parking_lot::Mutex<Vec<(u16, Value)>>,
    }

    async fn receive(
        axum::extract::State(r): axum::extract::State<std::sync::Arc<Receiver>>,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        let status = r.status.load(std::sync::atomic::Ordering::SeqCst);
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        r.bodies.lock().push((status, body));
        axum::http::StatusCode::from_u16(status).unwrap_or_default()
    }

    async fn poll(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A tier whose only rule sends to `am`, with the alarm clock at `clock`.
    async fn tier(am: &str, clock: i64) -> crate::RunningTier {
        let mut c = crate::Config::default();
        c.node.id = "edge-1".into();
        c.storage.engine = crate::config::StorageEngine::Memory;
        c.http.listen = "127.0.0.1:0".into();
        c.grpc.listen = "127.0.0.1:0".into();
        c.aggregation.flush_interval_ms = 50;
        c.aggregation.shards = 1;
        c.alarms.alertmanager_urls = vec![am.to_owned()];
        c.alarm = vec![AlarmConfig {
            name: "lat".into(),
            metric: "lat".into(),
            field: "max".into(),
            threshold: 100.0,
            group_by: vec!["service".into()],
            // Firing through every window that holds its minute.
            period_minutes: 3,
            ..AlarmConfig::default()
        }];
        let options = crate::StartOptions {
            alarms: super::super::AlarmSettings {
                clock: std::sync::Arc::new(move || clock),
                min_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(50),
                ..super::super::AlarmSettings::default()
            },
            ..crate::StartOptions::default()
        };
        crate::start_with(c, options).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn firing_alerts_are_re_sent_on_their_slots_and_not_piled_up() {
        let receiver = std::sync::Arc::new(Receiver::default());
        receiver
            .status
            .store(200, std::sync::atomic::Ordering::SeqCst);
        let app = axum::Router::new()
            .route("/api/v2/alerts", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let am = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let m0 = strata_model::minute_start(crate::now_ms()) - 5 * M;
        let fired_at = m0 + M + 1_000;
        // The evaluator thread's clock stays at the firing time: the test
        // calls the re-sends itself, at chosen times.
        let tier = tier(&am, fired_at).await;
        let url = format!("http://{}/api/v1/ingest?wait=commit", tier.http_addr);
        let line = json!({"metric": "lat", "kind": "max", "labels": {"service": "checkout"},
                          "ts_ms": m0 + 1_000, "value": 250.0});
        tokio::task::spawn_blocking(move || ureq::post(&url).send(format!("{line}\n")))
            .await
            .unwrap()
            .unwrap();
        // The evaluator fires it (its minute is complete), at its clock.
        let alarms = tier.api.alarms.clone();
        let store = tier.api.ctx.store.clone();
        let bodies = || receiver.bodies.lock().clone();
        poll("the firing post", || bodies().len() == 1).await;
        // The receiver has the body before the notifier, answered, deletes
        // its outbox entry: wait for that before counting what is queued.
        let delivered = || store.outbox_len().is_ok_and(|n| n == 0);
        poll("the firing post delivered", delivered).await;
        let first = bodies()[0].1[0].clone();
        assert_eq!(first["startsAt"], rfc3339(fired_at), "{first}");
        assert!(first["endsAt"].is_string(), "set when sent: {first}");

        // Not before its slot; at it, the same alert again.
        alarms.resend_due(fired_at + M - 1);
        assert_eq!(store.outbox_len().unwrap(), 0);
        alarms.resend_due(fired_at + M);
        poll("the re-send", || bodies().len() == 2).await;
        poll("the re-send delivered", delivered).await;
        let again = &bodies()[1].1;
        assert_eq!(again.as_array().map(Vec::len), Some(1), "{again}");
        assert_eq!(
            (
                &again[0]["labels"],
                &again[0]["startsAt"],
                &again[0]["annotations"]
            ),
            (&first["labels"], &first["startsAt"], &first["annotations"])
        );
        alarms.resend_due(fired_at + 2 * M - 1);
        assert_eq!(store.outbox_len().unwrap(), 0, "one post per slot");

        // Alertmanager refuses: the waiting post is retried, and the slots
        // that pass meanwhile queue nothing more.
        receiver
            .status
            .store(500, std::sync::atomic::Ordering::SeqCst);
        alarms.resend_due(fired_at + 2 * M);
        poll("a refused re-send", || {
            bodies().iter().any(|(s, _)| *s == 500)
        })
        .await;
        poll("the waiting alert known", || {
            !alarms.status.lock().pending_alerts.is_empty()
        })
        .await;
        alarms.resend_due(fired_at + 3 * M);
        alarms.resend_due(fired_at + 4 * M);
        assert_eq!(store.outbox_len().unwrap(), 1, "not piled up");
        receiver
            .status
            .store(200, std::sync::atomic::Ordering::SeqCst);
        poll("the waiting post delivered", delivered).await;
        poll("no alert waiting", || {
            alarms.status.lock().pending_alerts.is_empty()
        })
        .await;
        let answered = bodies().into_iter().filter(|(s, _)| *s == 200).count();
        assert_eq!(answered, 3);
        alarms.resend_due(fired_at + 5 * M);
        poll("the next slot's re-send", || {
            bodies().iter().filter(|(s, _)| *s == 200).count() == 4
        })
        .await;
        tier.shutdown(Duration::from_secs(5)).await.unwrap();
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_763_800_085_250), "2025-11-22T08:28:05.250Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }
}
