//! What an alarm rule is once loaded: its comparison ([`Op`]), the compiled
//! [`Rule`] the evaluator runs (the `[[alarm]]` config plus its selector,
//! Alertmanagers and templates), and the evaluator's and sender's tunables
//! ([`AlarmSettings`]).

use std::time::Duration;

use promql_parser::label::{MatchOp, Matcher};
use serde::{Deserialize, Serialize};
use strata_model::MINUTE_MS;

use super::alertmanager::{AlertmanagerSettings, alerts_url};
use super::template::Template;
use crate::api::query::Selector;
use crate::config::{AlarmConfig, Config};
use crate::context::{Clock, system_clock};

/// Tunables of the evaluator and the sender; [`Default`] is what a node runs
/// with. Tests inject a [`Clock`] to evaluate chosen minutes.
#[derive(Clone)]
pub struct AlarmSettings {
    /// "Now" for evaluation windows, silences and the history's times.
    /// Default: the system clock. Delivery backoff always uses the system
    /// clock.
    pub clock: Clock,
    /// How long after a minute boundary (plus one flush interval) the
    /// evaluator runs, so that the flush completing the minute is committed.
    pub evaluation_delay: Duration,
    /// Delay before the first retry of a failed delivery; doubled per
    /// further failure up to `max_backoff`, less up to 20% jitter.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Bound on one webhook request: connect, send and answer.
    pub request_timeout: Duration,
    /// Most notifications kept in the outbox; past it the oldest are dropped.
    pub outbox_max: u64,
    /// How long the oldest failing notification may have waited before the
    /// `alarms` health component reports Degraded.
    pub degraded_after: Duration,
    /// `[alarms]`: the Alertmanagers rules send to, how often a firing alert
    /// is sent again, their CA file.
    pub alertmanager: AlertmanagerSettings,
    /// The base of the links alerts carry (`http.external_url`); absent:
    /// `http://` and the HTTP listener as bound
    /// ([`super::Alarms::http_bound`]), or `http_listen` until it is.
    pub external_url: Option<String>,
    /// `http.listen` as configured.
    pub http_listen: String,
}

impl AlarmSettings {
    /// These settings with what the node's config says: `[alarms]` and the
    /// base of its links.
    pub fn with_config(self, config: &Config) -> AlarmSettings {
        let a = &config.alarms;
        AlarmSettings {
            alertmanager: AlertmanagerSettings {
                urls: a.alertmanager_urls.clone(),
                resend: Duration::from_secs(a.alertmanager_resend_s),
                ca_file: a.alertmanager_ca_file.clone(),
            },
            external_url: config.http.external_url.clone(),
            http_listen: config.http.listen.clone(),
            ..self
        }
    }
}

impl Default for AlarmSettings {
    fn default() -> Self {
        AlarmSettings {
            clock: system_clock(),
            evaluation_delay: Duration::from_secs(2),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            outbox_max: 10_000,
            degraded_after: Duration::from_secs(300),
            alertmanager: AlertmanagerSettings::default(),
            external_url: None,
            http_listen: crate::config::HttpConfig::default().listen,
        }
    }
}

impl std::fmt::Debug for AlarmSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlarmSettings")
            .field("evaluation_delay", &self.evaluation_delay)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("request_timeout", &self.request_timeout)
            .field("outbox_max", &self.outbox_max)
            .field("degraded_after", &self.degraded_after)
            .field("alertmanager", &self.alertmanager)
            .field("external_url", &self.external_url)
            .field("http_listen", &self.http_listen)
            .finish_non_exhaustive()
    }
}

/// A rule's comparison: `alarm.op` in the config, `op` in notifications and
/// in `/api/v1/alarms`.
///
/// The spellings are listed once, in the serde attributes: the config
/// deserializes them (an unknown one is refused naming `alarm[i].op` and
/// every allowed spelling), [`Op::parse`] goes through the same derive, and
/// a test checks that [`Op::as_str`] gives them back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    /// Parses `>`, `>=`, `<`, `<=`, `==`, `!=`.
    pub fn parse(s: &str) -> Option<Op> {
        let name = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s);
        Op::deserialize(name).ok()
    }

    /// The spelling in configs, notifications and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    /// Whether `value op threshold` holds; an undefined (NaN) value never
    /// breaches, whatever the op.
    pub fn breaches(self, value: f64, threshold: f64) -> bool {
        if value.is_nan() {
            return false;
        }
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Eq => value == threshold,
            Op::Ne => value != threshold,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule ready to evaluate.
pub(crate) struct Rule {
    /// The `[[alarm]]` section as configured: names, field, threshold, window.
    pub(crate) config: AlarmConfig,
    /// The metric and the `match` labels as equality matchers.
    pub(crate) selector: Selector,
    /// Where its alerts go: each Alertmanager's `…/api/v2/alerts`, from the
    /// rule's `alertmanager_urls`, else the node's.
    pub(crate) alertmanagers: Vec<String>,
    /// Its `labels` and `annotations`, parsed, by name.
    pub(crate) labels: Vec<(String, Template)>,
    pub(crate) annotations: Vec<(String, Template)>,
}

impl Rule {
    /// Compiles `config`, with the node's Alertmanagers `node` for a rule
    /// without its own. `Err` names the template key that does not parse
    /// (the config check refuses it first).
    pub(crate) fn compile(
        config: &AlarmConfig,
        node: &AlertmanagerSettings,
    ) -> Result<Rule, String> {
        let matchers = config
            .matchers
            .iter()
            .map(|(name, value)| Matcher::new(MatchOp::Equal, name, value))
            .collect();
        let templates = |table: &str, entries: &std::collections::BTreeMap<String, String>| {
            entries
                .iter()
                .map(|(name, text)| {
                    Template::parse(text)
                        .map(|t| (name.clone(), t))
                        .map_err(|e| format!("alarm {:?} {table}.{name}: {e}", config.name))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok(Rule {
            config: config.clone(),
            selector: Selector {
                metric: config.metric.clone(),
                matchers,
            },
            alertmanagers: config
                .alertmanager_urls
                .as_ref()
                .unwrap_or(&node.urls)
                .iter()
                .map(|base| alerts_url(base))
                .collect(),
            labels: templates("labels", &config.labels)?,
            annotations: templates("annotations", &config.annotations)?,
        })
    }

    /// How long after firing an instance stays silenced.
    fn silence_ms(&self) -> i64 {
        i64::from(self.config.silence_minutes) * MINUTE_MS
    }

    /// Whether an instance that last fired at `last_fired_ms` is silenced at `now_ms`.
    pub(crate) fn silenced(&self, last_fired_ms: Option<i64>, now_ms: i64) -> bool {
        last_fired_ms.is_some_and(|at| now_ms.saturating_sub(at) < self.silence_ms())
    }

    /// `name` or `name{label="value",…}`: one alarm instance in events and logs.
    pub(crate) fn instance_name(&self, group: &[(String, String)]) -> String {
        let labels: Vec<String> = group.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        if labels.is_empty() {
            self.config.name.clone()
        } else {
            format!("{}{{{}}}", self.config.name, labels.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_compare_and_nan_never_breaches() {
        for (op, below, equal, above) in [
            (">", false, false, true),
            (">=", false, true, true),
            ("<", true, false, false),
            ("<=", true, true, false),
            ("==", false, true, false),
            ("!=", true, false, true),
        ] {
            let parsed = Op::parse(op).unwrap_or_else(|| panic!("{op} parses"));
            assert_eq!(parsed.as_str(), op);
            assert_eq!(
                [1.0, 2.0, 3.0].map(|v| parsed.breaches(v, 2.0)),
                [below, equal, above],
                "{op}"
            );
            assert!(!parsed.breaches(f64::NAN, 2.0), "{op} NaN");
        }
        assert_eq!(Op::parse("=>"), None);
    }

    #[test]
    fn op_spellings_agree_between_serde_and_as_str() {
        for op in [Op::Gt, Op::Ge, Op::Lt, Op::Le, Op::Eq, Op::Ne] {
            assert_eq!(
                serde_json::to_value(op).ok(),
                Some(serde_json::Value::from(op.as_str()))
            );
            assert_eq!(Op::parse(op.as_str()), Some(op));
        }
    }
}
