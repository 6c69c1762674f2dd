//! Retention: deletes buckets past their retention per resolution, events
//! past the retention of their type, and expires series not updated within
//! their TTL (`[[expiry]]` rules, else `storage.series_ttl_s`).
//!
//! The commit writer calls `run_due` after every commit: the whole pass
//! (`apply`) runs at the first commit and then every minute; series expiry
//! alone runs more often when a TTL is short ([`Retention::expiry_interval`]),
//! so a series expires at most half its TTL (at most a minute) late.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::Regex;
use strata_model::SeriesKey;
use strata_store::{EventCutoffs, EventKind, Resolution};

use crate::config::{Config, ExpiryConfig};
use crate::context::Context;
use crate::core::stats::Stats;

/// How often the whole retention pass runs.
const FULL_PASS_EVERY: Duration = Duration::from_secs(60);

/// Shortest interval between two series expiry passes.
const MIN_EXPIRY_EVERY: Duration = Duration::from_secs(1);

/// Retention per step, for the event log and for idle series, in milliseconds.
#[derive(Clone, Debug)]
pub struct Retention {
    pub minute_ms: i64,
    pub hour_ms: i64,
    pub day_ms: i64,
    /// Events of every type without a retention of its own
    /// (`events.retention_days`).
    pub events_ms: i64,
    /// Event types with a retention of their own
    /// (`events.retention_days_by_type`).
    pub events_by_kind: BTreeMap<EventKind, i64>,
    /// Series no expiry rule matches expire when not updated for this long
    /// (DESIGN §5).
    pub series_ms: i64,
    /// `[[expiry]]`: series TTLs per metric and labels, first match wins.
    pub expiry: Arc<ExpiryRules>,
}

impl Retention {
    /// The configured retentions in milliseconds. Saturates rather than wraps,
    /// so no value, even one validation would refuse, turns into a negative
    /// retention that deletes everything.
    pub fn from_config(config: &Config) -> Self {
        use strata_model::time::{DAY_MS, HOUR_MS, MINUTE_MS, span_ms};
        let storage = &config.storage;
        Retention {
            minute_ms: span_ms(storage.retention_minutes, MINUTE_MS),
            hour_ms: span_ms(storage.retention_hours, HOUR_MS),
            day_ms: span_ms(storage.retention_days, DAY_MS),
            events_ms: span_ms(config.event_retention_days(), DAY_MS),
            events_by_kind: config
                .events
                .retention_days_by_type
                .iter()
                .filter_map(|(name, &days)| Some((EventKind::parse(name)?, span_ms(days, DAY_MS))))
                .collect(),
            series_ms: span_ms(storage.series_ttl_s, 1_000),
            expiry: Arc::new(ExpiryRules::from_config(&config.expiry)),
        }
    }

    /// Keeps everything (tests and benchmarks).
    pub fn forever() -> Self {
        let ms = i64::MAX / 4;
        Retention {
            minute_ms: ms,
            hour_ms: ms,
            day_ms: ms,
            events_ms: ms,
            events_by_kind: BTreeMap::new(),
            series_ms: ms,
            expiry: Arc::new(ExpiryRules::default()),
        }
    }

    /// Where event retention cuts at `now_ms`, per type.
    pub fn event_cutoffs(&self, now_ms: i64) -> EventCutoffs {
        EventCutoffs {
            default_before_ms: now_ms.saturating_sub(self.events_ms),
            by_kind: self
                .events_by_kind
                .iter()
                .map(|(&kind, &keep_ms)| (kind, now_ms.saturating_sub(keep_ms)))
                .collect(),
        }
    }

    /// How long the alarm history is kept: as long as the longest of the
    /// events it goes with (`alarm_fired`, `alarm_resolved`, or the default).
    pub fn alarm_history_ms(&self) -> i64 {
        [EventKind::AlarmFired, EventKind::AlarmResolved]
            .iter()
            .filter_map(|k| self.events_by_kind.get(k))
            .copied()
            .fold(self.events_ms, i64::max)
    }

    /// The TTL of one series: its first matching rule's, else `series_ms`.
    pub fn series_ttl_ms(&self, series: &SeriesKey) -> i64 {
        self.expiry
            .candidates(series.metric())
            .into_iter()
            .find(|r| r.matches_labels(series))
            .map_or(self.series_ms, |r| r.ttl_ms)
    }

    /// How often series expiry runs: every minute with the whole pass, or
    /// every half of the shortest TTL if that is sooner (at most every
    /// second).
    pub fn expiry_interval(&self) -> Duration {
        let shortest_ms = self
            .expiry
            .rules
            .iter()
            .map(|r| r.ttl_ms)
            .fold(self.series_ms, i64::min);
        let half = Duration::from_millis(u64::try_from(shortest_ms / 2).unwrap_or(0));
        half.clamp(MIN_EXPIRY_EVERY, FULL_PASS_EVERY)
    }

    /// The TTL `/api/v1/metrics` shows for `metric`: the one of its series
    /// no label-scoped rule takes, and the label-scoped rules before it.
    pub fn metric_expiry(&self, metric: &str) -> MetricExpiry<'_> {
        let mut by_labels = Vec::new();
        for rule in self.expiry.candidates(metric) {
            if rule.labels.is_empty() {
                return MetricExpiry {
                    series_ttl_s: rule.ttl_s,
                    rule: Some(rule),
                    by_labels,
                };
            }
            by_labels.push(rule);
        }
        MetricExpiry {
            series_ttl_s: u64::try_from(self.series_ms / 1_000).unwrap_or(0),
            rule: None,
            by_labels,
        }
    }
}

/// The series TTLs of one metric, as `/api/v1/metrics` lists them.
#[derive(Debug)]
pub struct MetricExpiry<'a> {
    /// TTL of its series no label-scoped rule takes, in seconds.
    pub series_ttl_s: u64,
    /// The rule `series_ttl_s` comes from; `None`: `storage.series_ttl_s`.
    pub rule: Option<&'a ExpiryRule>,
    /// Label-scoped rules that take some of its series first, in order.
    pub by_labels: Vec<&'a ExpiryRule>,
}

/// The `[[expiry]]` rules of a node, in file order.
#[derive(Debug, Default)]
pub struct ExpiryRules {
    rules: Vec<ExpiryRule>,
}

/// One `[[expiry]]` rule, ready to match.
#[derive(Debug)]
pub struct ExpiryRule {
    /// Its place in the config: `expiry[index]` names it in the API.
    pub index: usize,
    metric: MetricMatch,
    /// Exact label values a series must carry; empty: every series.
    pub labels: BTreeMap<String, String>,
    pub ttl_s: u64,
    ttl_ms: i64,
}

/// How a rule names its metric.
#[derive(Debug)]
enum MetricMatch {
    Name(String),
    /// Anchored: matches whole names only.
    Regex(Regex),
}

impl ExpiryRules {
    /// The rules of a validated config. A rule validation would refuse
    /// (only a config built in code can hold one) is left out and logged.
    pub fn from_config(rules: &[ExpiryConfig]) -> Self {
        let rules = rules
            .iter()
            .enumerate()
            .filter_map(|(index, r)| match ExpiryRule::new(index, r) {
                Ok(rule) => Some(rule),
                Err(e) => {
                    tracing::error!(rule = index, error = %e, "expiry rule left out");
                    None
                }
            })
            .collect();
        ExpiryRules { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules that can apply to series of `metric`, in order, up to the
    /// first without labels (which takes every series left).
    pub fn candidates(&self, metric: &str) -> Vec<&ExpiryRule> {
        let mut out = Vec::new();
        for rule in self.rules.iter().filter(|r| r.matches_metric(metric)) {
            out.push(rule);
            if rule.labels.is_empty() {
                break;
            }
        }
        out
    }
}

impl ExpiryRule {
    fn new(index: usize, r: &ExpiryConfig) -> Result<Self, String> {
        let metric = match (&r.metric, &r.metric_regex) {
            (Some(name), None) => MetricMatch::Name(name.clone()),
            (None, Some(pattern)) => MetricMatch::Regex(metric_regex(pattern)?),
            _ => return Err("needs exactly one of metric and metric_regex".into()),
        };
        let ttl_s = r
            .series_ttl_s
            .filter(|&s| s > 0)
            .ok_or("needs a series_ttl_s greater than 0")?;
        Ok(ExpiryRule {
            index,
            metric,
            labels: r.labels.clone(),
            ttl_s,
            ttl_ms: strata_model::time::span_ms(ttl_s, 1_000),
        })
    }

    /// `expiry[i]`: the rule's key in the config.
    pub fn key(&self) -> String {
        format!("expiry[{}]", self.index)
    }

    fn matches_metric(&self, metric: &str) -> bool {
        match &self.metric {
            MetricMatch::Name(name) => name == metric,
            MetricMatch::Regex(re) => re.is_match(metric),
        }
    }

    fn matches_labels(&self, series: &SeriesKey) -> bool {
        self.labels
            .iter()
            .all(|(name, value)| series.label(name) == Some(value.as_str()))
    }
}

/// `pattern` compiled to match whole metric names (as PromQL's `=~` does),
/// or why it does not compile, in one line.
pub fn metric_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        // The parser's message spans lines (the pattern, a caret, the error).
        let text = e.to_string();
        let reason = text
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("invalid")
            .trim_start_matches("error: ")
            .to_owned();
        format!("{pattern:?} is not a valid regular expression: {reason}")
    })
}

/// When the passes last ran; kept by the commit writer between calls to
/// [`run_due`].
#[derive(Debug, Default)]
pub(crate) struct LastRuns {
    full: Option<Instant>,
    expiry: Option<Instant>,
}

/// Runs what is due after a commit at `now_ms`: the whole pass at the first
/// call and then every minute, series expiry alone in between every
/// [`Retention::expiry_interval`].
pub(crate) fn run_due(ctx: &Context, r: &Retention, last: &mut LastRuns, now_ms: i64) {
    let now = Instant::now();
    let due = |at: Option<Instant>, every: Duration| at.is_none_or(|at| now - at >= every);
    if due(last.full, FULL_PASS_EVERY) {
        last.full = Some(now);
        last.expiry = Some(now);
        apply(ctx, r, now_ms);
    } else if due(last.expiry, r.expiry_interval()) {
        last.expiry = Some(now);
        expire_series(ctx, r, now_ms);
    }
}

/// Deletes buckets and events past their retention, and expires series
/// not updated within their TTL.
pub(crate) fn apply(ctx: &Context, r: &Retention, now_ms: i64) {
    let store = &ctx.store;
    for (resolution, keep_ms) in [
        (Resolution::Minute, r.minute_ms),
        (Resolution::Hour, r.hour_ms),
        (Resolution::Day, r.day_ms),
    ] {
        let before = resolution.bucket_start(now_ms.saturating_sub(keep_ms));
        match store.delete_before(resolution, before) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(deleted = n, %resolution, before_ms = before, "retention deleted old buckets")
            }
            Err(e) => tracing::warn!(error = %e, %resolution, "retention failed"),
        }
    }
    match store.delete_events(&r.event_cutoffs(now_ms)) {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, "retention deleted old events"),
        Err(e) => tracing::warn!(error = %e, "event retention failed"),
    }
    expire_series(ctx, r, now_ms);
    Stats::add(&ctx.stats.retention_runs_total, 1);
}

/// Series TTL (DESIGN §5): removes every series whose last update is older
/// than its TTL. The rules that can apply are looked up once per metric (the
/// store asks metric by metric), so a pass costs a few label comparisons
/// per series.
fn expire_series(ctx: &Context, r: &Retention, now_ms: i64) {
    let expired = if r.expiry.is_empty() {
        ctx.store.expire_series(now_ms.saturating_sub(r.series_ms))
    } else {
        let metric: RefCell<Option<(String, Vec<&ExpiryRule>)>> = RefCell::new(None);
        let idle_before = |series: &SeriesKey| {
            let mut cached = metric.borrow_mut();
            let rules = match &mut *cached {
                Some((name, rules)) if name == series.metric() => rules,
                slot => {
                    let rules = r.expiry.candidates(series.metric());
                    &mut slot.insert((series.metric().to_owned(), rules)).1
                }
            };
            let ttl_ms = rules
                .iter()
                .find(|rule| rule.matches_labels(series))
                .map_or(r.series_ms, |rule| rule.ttl_ms);
            now_ms.saturating_sub(ttl_ms)
        };
        ctx.store.expire_series_with(&idle_before)
    };
    match expired {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            expired = n,
            "series not updated within the series TTL expired"
        ),
        Err(e) => tracing::warn!(error = %e, "series expiry failed"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::atomic::Ordering;
    use strata_model::{Increment, State};
    use strata_store::{Commit, Event, MemoryStore, Store, StoreOptions};

    const DAY: i64 = 86_400_000;

    fn key(metric: &str, labels: &[(&str, &str)]) -> Arc<SeriesKey> {
        let labels = labels.iter().map(|(k, v)| ((*k).into(), (*v).into()));
        Arc::new(SeriesKey::new(metric, labels).unwrap())
    }

    fn commit(store: &dyn Store, now_ms: i64, series: &[&Arc<SeriesKey>], n: u64) {
        let increments: Vec<Increment> = series
            .iter()
            .map(|s| Increment {
                series: Arc::clone(s),
                bucket_ms: 0,
                state: State::Counter(n),
            })
            .collect();
        store
            .commit(Commit {
                increments: &increments,
                progress: &[],
                cursors: &[],
                spool_watermark_ms: None,
                now_ms,
            })
            .unwrap();
    }

    fn config(text: &str) -> Config {
        Config::from_toml(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn with_rules(rules: &str) -> Retention {
        let text =
            format!("[aggregation]\nallowed_lateness_s = 1\nwatermark_delay_ms = 0\n{rules}");
        Retention::from_config(&config(&text))
    }

    fn memory_ctx() -> (Arc<MemoryStore>, Context) {
        let store = Arc::new(MemoryStore::new(StoreOptions::default()));
        let ctx = Context::new("t", store.clone());
        (store, ctx)
    }

    #[test]
    fn retention_expires_series_idle_for_longer_than_the_ttl() {
        let retention = Retention {
            series_ms: 3_000,
            ..Retention::forever()
        };
        let (store, ctx) = memory_ctx();
        commit(&*store, 1_000, &[&key("req", &[("s", "old")])], 1);
        commit(&*store, 5_000, &[&key("req", &[("s", "new")])], 1);
        // Both updated within the TTL: nothing expires.
        apply(&ctx, &retention, 3_999);
        assert_eq!(store.series_count(), 2);
        apply(&ctx, &retention, 5_999);
        assert_eq!(store.series_of("req"), vec![key("req", &[("s", "new")])]);
    }

    #[test]
    fn the_first_matching_rule_sets_a_series_ttl() {
        let r = with_rules(
            r#"
            [storage]
            series_ttl_s = 1000
            [[expiry]]
            metric = "req"
            labels = { env = "dev" }
            series_ttl_s = 5
            [[expiry]]
            metric_regex = "req|debug_.*"
            series_ttl_s = 60
            [[expiry]]
            metric = "req"
            series_ttl_s = 7
            [[expiry]]
            metric_regex = "lat"
            labels = { env = "dev", az = "a" }
            series_ttl_s = 9
            "#,
        );
        let ttl = |metric, labels: &[(&str, &str)]| r.series_ttl_ms(&key(metric, labels)) / 1_000;
        assert_eq!(ttl("req", &[("env", "dev")]), 5);
        assert_eq!(ttl("req", &[("env", "dev"), ("x", "y")]), 5);
        // The regex rule comes before the later exact one: it wins.
        assert_eq!(ttl("req", &[("env", "prod")]), 60);
        assert_eq!(ttl("req", &[]), 60);
        assert_eq!(ttl("debug_x", &[]), 60);
        // Anchored: a name containing a match is not a match.
        assert_eq!(ttl("my_debug_x", &[]), 1000);
        assert_eq!(ttl("lat", &[("env", "dev"), ("az", "a")]), 9);
        assert_eq!(ttl("lat", &[("env", "dev")]), 1000);
        assert_eq!(ttl("lat", &[("env", "dev"), ("az", "b")]), 1000);
        assert_eq!(ttl("latency", &[("env", "dev"), ("az", "a")]), 1000);
    }

    #[test]
    fn the_metric_level_ttl_lists_the_label_rules_before_it() {
        let r = with_rules(
            r#"
            [[expiry]]
            metric = "req"
            labels = { env = "dev" }
            series_ttl_s = 5
            [[expiry]]
            metric_regex = "r.q"
            series_ttl_s = 60
            [[expiry]]
            metric = "req"
            labels = { env = "test" }
            series_ttl_s = 6
            "#,
        );
        let req = r.metric_expiry("req");
        assert_eq!(req.series_ttl_s, 60);
        assert_eq!(req.rule.map(ExpiryRule::key).as_deref(), Some("expiry[1]"));
        // The rule after the metric-level one can never apply: not listed.
        let keys: Vec<String> = req.by_labels.iter().map(|r| r.key()).collect();
        assert_eq!(keys, ["expiry[0]"]);
        let other = r.metric_expiry("other");
        assert_eq!(other.series_ttl_s, 2_592_000);
        assert!(other.rule.is_none() && other.by_labels.is_empty());
    }

    #[test]
    fn series_expire_by_their_rule_and_never_while_updated() {
        let r = with_rules(
            r#"
            [[expiry]]
            metric = "req"
            labels = { env = "dev" }
            series_ttl_s = 2
            "#,
        );
        let (store, ctx) = memory_ctx();
        let dev = key("req", &[("env", "dev")]);
        let hot = key("req", &[("env", "dev"), ("pod", "hot")]);
        let prod = key("req", &[("env", "prod")]);
        commit(&*store, 0, &[&dev, &hot, &prod], 5);
        // `hot` is updated every second, far beyond its TTL; `dev` never again.
        for now_ms in (1_000..=10_000).step_by(1_000) {
            commit(&*store, now_ms, &[&hot], 1);
            expire_series(&ctx, &r, now_ms);
        }
        let mut left = store.series_of("req");
        left.sort();
        assert_eq!(left, vec![hot.clone(), prod.clone()]);
        let read = |k: &SeriesKey| store.read_at(k, Resolution::Day, 0, DAY).unwrap();
        assert_eq!(read(&hot), vec![(0, State::Counter(15))]);
        // An expired series that comes back starts from nothing.
        commit(&*store, 11_000, &[&dev], 3);
        assert_eq!(read(&dev), vec![(0, State::Counter(3))]);
    }

    #[test]
    fn events_are_deleted_after_the_retention_of_their_type() {
        let r = Retention::from_config(&config(
            r#"
            [events]
            retention_days = 10
            [events.retention_days_by_type]
            alarm_fired = 365
            source_connected = 1
            "#,
        ));
        let (store, ctx) = memory_ctx();
        let now = 1_000 * DAY;
        let kinds = [
            EventKind::AlarmFired,
            EventKind::SourceConnected,
            EventKind::SpoolOverflow,
        ];
        let events: Vec<Event> = [2, 11, 366]
            .into_iter()
            .flat_map(|days| kinds.map(|k| Event::new(now - days * DAY, k, format!("{k} {days}"))))
            .collect();
        store.append_events(&events).unwrap();
        apply(&ctx, &r, now);
        let mut left: Vec<String> = store
            .events(i64::MIN, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["alarm_fired 11", "alarm_fired 2", "spool_overflow 2"]
        );
        // The alarm history follows the longest of the alarm events.
        assert_eq!(r.alarm_history_ms(), 365 * DAY);
        assert_eq!(Retention::forever().alarm_history_ms(), i64::MAX / 4);
    }

    #[test]
    fn storage_event_retention_days_is_the_default_under_its_old_name() {
        let r = Retention::from_config(&config("[storage]\nevent_retention_days = 3\n"));
        assert_eq!(r.events_ms, 3 * DAY);
        assert_eq!(
            Retention::from_config(&Config::default()).events_ms,
            30 * DAY
        );
        let cutoffs = r.event_cutoffs(10 * DAY);
        assert_eq!(cutoffs, EventCutoffs::uniform(7 * DAY));
    }

    #[test]
    fn expiry_runs_every_half_of_the_shortest_ttl_within_bounds() {
        let every = |rules: &str| with_rules(rules).expiry_interval();
        assert_eq!(every(""), FULL_PASS_EVERY);
        let rule = |ttl| format!("[[expiry]]\nmetric = \"m\"\nseries_ttl_s = {ttl}\n");
        assert_eq!(every(&rule(2)), Duration::from_secs(1));
        assert_eq!(every(&rule(1)), MIN_EXPIRY_EVERY);
        assert_eq!(every(&rule(30)), Duration::from_secs(15));
        assert_eq!(every(&rule(3600)), FULL_PASS_EVERY);
        let short_default = "[storage]\nseries_ttl_s = 4\n";
        assert_eq!(every(short_default), Duration::from_secs(2));
    }

    #[test]
    fn the_whole_pass_runs_first_then_once_a_minute() {
        let (store, ctx) = memory_ctx();
        let r = Retention {
            series_ms: 1_000,
            ..Retention::forever()
        };
        let mut last = LastRuns::default();
        commit(&*store, 0, &[&key("req", &[])], 1);
        run_due(&ctx, &r, &mut last, 5_000);
        assert_eq!(store.series_count(), 0);
        run_due(&ctx, &r, &mut last, 6_000);
        assert_eq!(ctx.stats.retention_runs_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_metric_regex_matches_whole_names_and_explains_itself_in_one_line() {
        let re = metric_regex("http_.*|rpc").unwrap();
        assert!(re.is_match("http_requests") && re.is_match("rpc"));
        assert!(!re.is_match("my_http_requests") && !re.is_match("rpc_total"));
        let err = metric_regex("(unclosed").unwrap_err();
        assert_eq!(
            err,
            "\"(unclosed\" is not a valid regular expression: unclosed group"
        );
    }

    #[test]
    fn configured_retentions_convert_to_ms_without_wrapping() {
        use crate::config::{MAX_RETENTION_S, StorageConfig};
        let largest = Config {
            storage: StorageConfig {
                retention_minutes: MAX_RETENTION_S / 60,
                retention_hours: MAX_RETENTION_S / 3600,
                retention_days: MAX_RETENTION_S / 86_400,
                event_retention_days: Some(MAX_RETENTION_S / 86_400),
                series_ttl_s: MAX_RETENTION_S,
                ..StorageConfig::default()
            },
            ..Config::default()
        };
        let r = Retention::from_config(&largest);
        for ms in [r.minute_ms, r.hour_ms, r.day_ms, r.events_ms, r.series_ms] {
            assert_eq!(ms, 3_153_600_000_000);
        }
        // Beyond what validation accepts: saturates instead of wrapping negative
        // (`10^16 s * 1000` used to become about -8.4e18 ms).
        let mut huge = Config::default();
        huge.storage.retention_days = 9_999_999_999_999;
        huge.storage.series_ttl_s = 10_000_000_000_000_000;
        huge.events.retention_days_by_type = [("alarm_fired".to_owned(), u64::MAX)].into();
        let r = Retention::from_config(&huge);
        assert_eq!((r.day_ms, r.series_ms), (i64::MAX, i64::MAX));
        assert_eq!(r.events_by_kind[&EventKind::AlarmFired], i64::MAX);
    }

    #[test]
    fn retention_with_the_largest_or_saturated_values_deletes_nothing() {
        use crate::config::{MAX_RETENTION_S, StorageConfig};
        let at = 1_763_800_020_000;
        let ninety_nine_years = 99 * 365 * DAY;
        for (storage, later) in [
            (
                StorageConfig {
                    retention_minutes: MAX_RETENTION_S / 60,
                    retention_hours: MAX_RETENTION_S / 3600,
                    retention_days: MAX_RETENTION_S / 86_400,
                    series_ttl_s: MAX_RETENTION_S,
                    ..StorageConfig::default()
                },
                at + ninety_nine_years,
            ),
            // Beyond the bounds: saturated, kept until the end of time.
            (
                StorageConfig {
                    retention_minutes: u64::MAX,
                    retention_hours: u64::MAX,
                    retention_days: 9_999_999_999_999,
                    event_retention_days: Some(u64::MAX),
                    series_ttl_s: 10_000_000_000_000_000,
                    ..StorageConfig::default()
                },
                strata_model::time::MAX_TS_MS,
            ),
        ] {
            let retention = Retention::from_config(&Config {
                storage: storage.clone(),
                ..Config::default()
            });
            let (store, ctx) = memory_ctx();
            let series = key("req", &[("s", "a")]);
            store
                .commit(Commit {
                    increments: &[Increment {
                        series: series.clone(),
                        bucket_ms: at,
                        state: State::Counter(7),
                    }],
                    progress: &[],
                    cursors: &[],
                    spool_watermark_ms: None,
                    now_ms: at,
                })
                .unwrap();
            // A day later, and as late as the retention reaches.
            for now_ms in [at + DAY, later] {
                apply(&ctx, &retention, now_ms);
            }
            assert_eq!(store.series_of("req"), vec![series.clone()], "{storage:?}");
            for resolution in [Resolution::Minute, Resolution::Hour, Resolution::Day] {
                let buckets = store.read_at(&series, resolution, 0, i64::MAX).unwrap();
                assert_eq!(buckets.len(), 1, "{resolution} {storage:?}");
            }
            assert_eq!(ctx.stats.retention_runs_total.load(Ordering::Relaxed), 2);
        }
    }
}
