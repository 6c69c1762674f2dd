//! Alarm rules (DESIGN §6): which minute points breach, when an alarm
//! instance fires or resolves, and webhook notifications delivered at least
//! once.
//!
//! # Rules
//! A rule (`[[alarm]]`, [`AlarmConfig`]) watches one value `field` of one
//! `metric`, over the series its `match` labels select. With `group_by`,
//! each distinct combination of those labels is one *alarm instance*;
//! without, every matching series is merged into one instance. At each
//! evaluation the rule looks at the newest `period_minutes` minute points:
//! per instance and minute the minute buckets are merged (with
//! [`crate::query::merged_groups`], as a query with `step=minute` does) and
//! the field is derived from the merged state, so a p99 is always the p99 of
//! every sample. A point *breaches* when `value op threshold` holds; an
//! undefined value (a p99 of nothing) and a minute without data never
//! breach.
//!
//! The window ends at the newest minute that is *complete* at this node
//! (every expected source's watermark and this node's own commits have
//! passed its end), and only complete points count; with
//! `include_incomplete = true` the window ends at the current minute and
//! every point counts. An instance *fires* when at least `count` points of
//! its window breach, and *resolves* when fewer do. Once it has fired, it
//! does not fire again for `silence_minutes` (a breach within the silence is
//! ignored; the instance stays resolved).
//!
//! # Notifications
//! Each transition is recorded — alarm state, history record, one outbox
//! notification per webhook, and an `alarm_fired` / `alarm_resolved` event
//! — in one store transaction ([`strata_store::Store::update_alarms`]), so a restart
//! neither repeats a transition nor loses its notifications. The sender
//! thread POSTs the outbox oldest first, deletes an entry only once the
//! webhook answered 2xx, and retries a failed one with exponential backoff
//! (`min_backoff` doubling to `max_backoff`, with jitter), across restarts.
//! Per webhook URL, notifications go out in order: a later one waits while
//! an earlier one is being retried, so a receiver never sees a "resolved"
//! before its "firing". The outbox is capped (`outbox_max`); past the cap the
//! oldest entries are dropped, counted and logged.
//!
//! # Threads
//! - `alarm-eval`: evaluates every rule once at start (as soon as this node
//!   has committed once) and then every minute, shortly after the minute
//!   boundary ([`Alarms::tick`]); also applies the history's retention.
//! - `alarm-notify`: delivers the outbox with a blocking HTTP client (plain
//!   `http://` only), woken when a transition queues notifications.
//!
//! Both are stopped by [`AlarmThreads::stop`] after the node's final commit;
//! what is still queued stays in the outbox for the next start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel as cb;
use parking_lot::Mutex;
use promql_parser::label::{MatchOp, Matcher};
use rand::Rng;
use serde_json::{Map, Value, json};
use strata_model::{MINUTE_MS, Step, minute_start};
use strata_store::{
    AlarmKey, AlarmRecord, AlarmState, AlarmUpdate, Event, Notification, OutboxEntry, Resolution,
};

use crate::config::AlarmConfig;
use crate::pipeline::{Pipeline, now_ms};
use crate::query::{Selector, merged_groups};
use crate::stats::Stats;

/// Kind of the event recorded when an alarm instance fires.
pub const EVENT_FIRED: &str = "alarm_fired";
/// Kind of the event recorded when an alarm instance resolves.
pub const EVENT_RESOLVED: &str = "alarm_resolved";
/// Kind of the event recorded when the outbox cap drops notifications.
pub const EVENT_DROPPED: &str = "alarm_notifications_dropped";

/// "Now" in milliseconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

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
}

impl Default for AlarmSettings {
    fn default() -> Self {
        AlarmSettings {
            clock: Arc::new(now_ms),
            evaluation_delay: Duration::from_secs(2),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            outbox_max: 10_000,
            degraded_after: Duration::from_secs(300),
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
            .finish_non_exhaustive()
    }
}

/// A rule's comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Op {
    /// Parses `>`, `>=`, `<`, `<=`, `==`, `!=`.
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            _ => return None,
        })
    }

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

/// A rule ready to evaluate.
struct Rule {
    config: AlarmConfig,
    op: Op,
    /// The metric and the `match` labels as equality matchers.
    selector: Selector,
}

impl Rule {
    fn compile(config: &AlarmConfig) -> anyhow::Result<Rule> {
        let op = Op::parse(&config.op)
            .ok_or_else(|| anyhow::anyhow!("alarm {}: unknown op {:?}", config.name, config.op))?;
        let matchers = config
            .matchers
            .iter()
            .map(|(name, value)| Matcher::new(MatchOp::Equal, name, value))
            .collect();
        Ok(Rule {
            config: config.clone(),
            op,
            selector: Selector {
                metric: config.metric.clone(),
                matchers,
            },
        })
    }

    fn silence_ms(&self) -> i64 {
        i64::from(self.config.silence_minutes) * MINUTE_MS
    }

    /// Whether an instance that last fired at `last_fired_ms` is silenced at `now_ms`.
    fn silenced(&self, last_fired_ms: Option<i64>, now_ms: i64) -> bool {
        last_fired_ms.is_some_and(|at| now_ms.saturating_sub(at) < self.silence_ms())
    }
}

/// What one evaluation found for one alarm instance.
#[derive(Debug, Default)]
struct Verdict {
    /// Evaluated points that breach.
    breaches: u32,
    /// The newest evaluated point: (minute, value).
    newest: Option<(i64, f64)>,
    /// The newest breaching point: (minute, value).
    newest_breach: Option<(i64, f64)>,
}

/// What one [`Alarms::tick`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TickOutcome {
    /// Instances that started firing.
    pub fired: usize,
    /// Instances that resolved.
    pub resolved: usize,
    /// Rules not evaluated because nothing is complete at this node yet (no
    /// commit since start, or an expected source that never sent a watermark).
    pub waiting: usize,
    /// Rules that could not be evaluated (store read or merge errors).
    pub errors: Vec<String>,
}

/// The evaluator's memory between ticks.
#[derive(Default)]
struct EvalState {
    /// Every stored alarm state, as last committed.
    states: BTreeMap<AlarmKey, AlarmState>,
    /// Per rule, the newest minute evaluated: a window never moves back
    /// (after a restart until the first commit, or when a source without a
    /// watermark becomes expected, completeness falls behind).
    newest_evaluated: HashMap<String, i64>,
    /// Rules whose field is not a value of their metric's kind, warned once.
    misconfigured: HashSet<String>,
}

/// What the health check and the API show of the evaluator and the sender.
#[derive(Debug, Default)]
struct Status {
    /// System time of the last evaluation, and its errors.
    last_tick_ms: Option<i64>,
    last_errors: Vec<String>,
    /// Queued notifications as of the sender's last pass.
    pending: usize,
    /// Creation time of the oldest queued notification that has failed.
    oldest_failing_ms: Option<i64>,
    last_delivery_error: Option<String>,
}

/// Health of the alarm component, as the health endpoint maps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmHealth {
    Ok,
    Deactivated,
    Degraded,
}

/// The node's alarm rules, their evaluation and their notifications.
pub struct Alarms {
    /// Named in every notification.
    node_id: String,
    rules: Vec<Rule>,
    /// Store, watermarks (completeness), stats and retention.
    pipeline: Arc<Pipeline>,
    settings: AlarmSettings,
    /// Held for a whole evaluation: the thread's ticks and a caller's never
    /// interleave.
    eval: Mutex<EvalState>,
    /// Rung (never blocking) when notifications were queued, so the sender
    /// picks them up at once instead of at its next timer.
    doorbell: cb::Sender<()>,
    status: Mutex<Status>,
}

/// The running evaluator and sender threads.
pub struct AlarmThreads {
    /// Dropped to stop both threads.
    stop: cb::Sender<()>,
    handles: Vec<(&'static str, std::thread::JoinHandle<()>)>,
}

impl AlarmThreads {
    /// Stops both threads: the evaluator at once, the sender after the
    /// delivery in progress (bounded by the request timeout). Queued
    /// notifications stay in the outbox.
    pub fn stop(self) {
        drop(self.stop);
        for (name, handle) in self.handles {
            if handle.join().is_err() {
                tracing::error!(thread = name, "alarm thread panicked");
            }
        }
    }
}

impl Alarms {
    /// Compiles the rules, restores the alarm states from the store (and
    /// deletes those of rules no longer configured), and starts the
    /// evaluator when there are rules and the sender when there are rules
    /// or queued notifications. Blocks on the store: call it from a blocking
    /// thread.
    pub fn start(
        node_id: &str,
        rules: &[AlarmConfig],
        pipeline: Arc<Pipeline>,
        settings: AlarmSettings,
    ) -> anyhow::Result<(Arc<Alarms>, Option<AlarmThreads>)> {
        let rules = rules
            .iter()
            .map(Rule::compile)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let store = &pipeline.store;
        let names: HashSet<&str> = rules.iter().map(|r| r.config.name.as_str()).collect();
        let mut states = BTreeMap::new();
        let mut stale = Vec::new();
        for state in store.alarm_states()? {
            if names.contains(state.key.rule.as_str()) {
                states.insert(state.key.clone(), state);
            } else {
                stale.push(state.key);
            }
        }
        if !stale.is_empty() {
            store.update_alarms(AlarmUpdate {
                clear: &stale,
                ..AlarmUpdate::default()
            })?;
            tracing::info!(
                states = stale.len(),
                "alarm states of rules no longer configured deleted"
            );
        }
        let firing = states.values().filter(|s| s.firing).count();
        let queued = store.outbox_len()?;
        let (doorbell, doorbell_rx) = cb::bounded(1);
        let alarms = Arc::new(Alarms {
            node_id: node_id.to_owned(),
            rules,
            pipeline,
            settings,
            eval: Mutex::new(EvalState {
                states,
                ..EvalState::default()
            }),
            doorbell,
            status: Mutex::new(Status {
                pending: usize::try_from(queued).unwrap_or(usize::MAX),
                ..Status::default()
            }),
        });
        if alarms.rules.is_empty() && queued == 0 {
            return Ok((alarms, None));
        }
        let (stop, stop_rx) = cb::bounded::<()>(0);
        let mut handles = Vec::new();
        if !alarms.rules.is_empty() {
            let a = alarms.clone();
            let stop_rx = stop_rx.clone();
            let handle = std::thread::Builder::new()
                .name("alarm-eval".into())
                .spawn(move || a.evaluate_loop(&stop_rx))?;
            handles.push(("alarm-eval", handle));
        } else {
            tracing::warn!(
                queued,
                "no alarm rules configured, but notifications are queued: delivering them"
            );
        }
        let a = alarms.clone();
        let handle = std::thread::Builder::new()
            .name("alarm-notify".into())
            .spawn(move || a.send_loop(&stop_rx, &doorbell_rx))?;
        handles.push(("alarm-notify", handle));
        tracing::info!(
            rules = alarms.rules.len(),
            firing,
            queued_notifications = queued,
            "alarms started"
        );
        Ok((alarms, Some(AlarmThreads { stop, handles })))
    }

    /// Whether any rule is configured.
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Evaluates every rule as of `now_ms` and records the transitions (one
    /// store transaction for all of them). Errors reading one rule's data
    /// are reported in [`TickOutcome::errors`] and skip only that rule; an
    /// error recording the transitions is returned, and the next tick finds
    /// them again.
    pub fn tick(&self, now_ms: i64) -> Result<TickOutcome, strata_store::StoreError> {
        let mut eval = self.eval.lock();
        let store = &*self.pipeline.store;
        let watermarks = self.pipeline.watermarks();
        let horizon = watermarks.forwarded();
        let mut out = TickOutcome::default();
        let mut changes = Changes::default();
        let mut evaluated_minutes = Vec::new();

        for rule in &self.rules {
            let c = &rule.config;
            let newest = if c.include_incomplete {
                minute_start(now_ms)
            } else if horizon <= 0 {
                out.waiting += 1;
                continue;
            } else {
                // The newest minute whose end both `now` and the node's
                // completeness horizon have passed.
                minute_start(now_ms.min(horizon)) - MINUTE_MS
            };
            if eval
                .newest_evaluated
                .get(&c.name)
                .is_some_and(|&done| done > newest)
            {
                continue;
            }
            if let Some(kind) = store.metric_kind(&c.metric)
                && !kind.value_fields().contains(&c.field.as_str())
            {
                if eval.misconfigured.insert(c.name.clone()) {
                    tracing::warn!(
                        alarm = %c.name, metric = %c.metric, %kind, field = %c.field,
                        "alarm rule not evaluated: its field is not a value of the metric's kind"
                    );
                }
                continue;
            }
            let oldest = newest - (i64::from(c.period_minutes) - 1) * MINUTE_MS;
            let groups = match merged_groups(
                store,
                &rule.selector,
                Some(&c.group_by),
                Resolution::Minute,
                Step::Minute,
                oldest,
                newest + MINUTE_MS,
            ) {
                Ok(groups) => groups,
                Err(e) => {
                    tracing::warn!(alarm = %c.name, error = %e, "alarm rule not evaluated");
                    out.errors.push(format!("{}: {e}", c.name));
                    continue;
                }
            };

            let mut verdicts: BTreeMap<AlarmKey, Verdict> = BTreeMap::new();
            for (mut group, points) in groups {
                group.sort();
                let verdict = verdicts
                    .entry(AlarmKey {
                        rule: c.name.clone(),
                        group,
                    })
                    .or_default();
                for (minute, state) in points {
                    if !c.include_incomplete
                        && !watermarks.completeness(minute + MINUTE_MS).complete
                    {
                        continue;
                    }
                    let value = state
                        .values(1)
                        .into_iter()
                        .find(|(name, _)| *name == c.field)
                        .map_or(f64::NAN, |(_, v)| v);
                    verdict.newest = Some((minute, value));
                    if rule.op.breaches(value, c.threshold) {
                        verdict.breaches += 1;
                        verdict.newest_breach = Some((minute, value));
                    }
                }
            }
            // A firing instance without any point now has nothing breaching.
            for (key, state) in rule_states(&eval.states, &c.name) {
                if state.firing {
                    verdicts.entry(key.clone()).or_default();
                }
            }

            for (key, verdict) in verdicts {
                let current = eval.states.get(&key);
                let was_firing = current.is_some_and(|s| s.firing);
                let last_fired = current.and_then(|s| s.last_fired_ms);
                let fires = verdict.breaches >= c.count;
                if fires && !was_firing {
                    if rule.silenced(last_fired, now_ms) {
                        tracing::debug!(alarm = %c.name, group = ?key.group, "breach within the silence: not fired");
                        continue;
                    }
                    let (minute, value) = verdict.newest_breach.unwrap_or((newest, f64::NAN));
                    self.transition(
                        rule,
                        key,
                        true,
                        minute,
                        value,
                        now_ms,
                        Some(now_ms),
                        &mut changes,
                    );
                } else if !fires && was_firing {
                    let (minute, value) = verdict.newest.unwrap_or((newest, f64::NAN));
                    self.transition(
                        rule,
                        key,
                        false,
                        minute,
                        value,
                        now_ms,
                        last_fired,
                        &mut changes,
                    );
                }
            }
            // Resolved instances past their silence carry nothing worth keeping.
            for (key, state) in rule_states(&eval.states, &c.name) {
                if !state.firing
                    && !rule.silenced(state.last_fired_ms, now_ms)
                    && !changes.states.iter().any(|s| s.key == *key)
                {
                    changes.clear.push(key.clone());
                }
            }
            evaluated_minutes.push((c.name.clone(), newest));
        }

        if !changes.is_empty() {
            let update = AlarmUpdate {
                states: &changes.states,
                clear: &changes.clear,
                history: &changes.history,
                notifications: &changes.notifications,
                events: &changes.events,
            };
            if let Err(e) = store.update_alarms(update) {
                tracing::error!(error = %e, transitions = changes.history.len(), "alarm transitions not recorded; retried at the next evaluation");
                self.status.lock().last_errors = vec![format!("recording transitions: {e}")];
                return Err(e);
            }
        }
        for key in &changes.clear {
            eval.states.remove(key);
        }
        let stats = &self.pipeline.stats;
        for state in changes.states {
            if state.firing {
                out.fired += 1;
                Stats::add(&stats.alarms_fired_total, 1);
            } else {
                out.resolved += 1;
                Stats::add(&stats.alarms_resolved_total, 1);
            }
            eval.states.insert(state.key.clone(), state);
        }
        for event in &changes.events {
            tracing::info!(kind = %event.kind, "{}", event.message);
        }
        for (rule, newest) in evaluated_minutes {
            eval.newest_evaluated.insert(rule, newest);
        }
        if !changes.notifications.is_empty() {
            let _ = self.doorbell.try_send(());
        }
        let mut status = self.status.lock();
        status.last_tick_ms = Some(crate::pipeline::now_ms());
        status.last_errors.clone_from(&out.errors);
        Ok(out)
    }

    /// Adds one transition of `key` to `changes`: its new state, history
    /// record, event and one notification per webhook.
    #[allow(clippy::too_many_arguments)]
    fn transition(
        &self,
        rule: &Rule,
        key: AlarmKey,
        firing: bool,
        minute_ms: i64,
        value: f64,
        now_ms: i64,
        last_fired_ms: Option<i64>,
        changes: &mut Changes,
    ) {
        let c = &rule.config;
        let state_name = if firing { "firing" } else { "resolved" };
        let group: Map<String, Value> = key
            .group
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let body = json!({
            "alarm": c.name,
            "state": state_name,
            "group": group,
            "value": value,
            "threshold": c.threshold,
            "op": rule.op.as_str(),
            "ts_ms": minute_ms,
            "node": self.node_id,
            "metric": c.metric,
            "field": c.field,
        })
        .to_string();
        let queued_ms = crate::pipeline::now_ms();
        for url in &c.webhooks {
            changes.notifications.push(Notification {
                url: url.clone(),
                body: body.clone(),
                created_ms: queued_ms,
            });
        }
        let labels: Vec<String> = key
            .group
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        let instance = if labels.is_empty() {
            c.name.clone()
        } else {
            format!("{}{{{}}}", c.name, labels.join(","))
        };
        let message = format!(
            "alarm {instance} {state_name}: {} {} = {value} (threshold {} {}) in minute {minute_ms}",
            c.metric,
            c.field,
            rule.op.as_str(),
            c.threshold,
        );
        changes.events.push(Event::new(
            now_ms,
            if firing { EVENT_FIRED } else { EVENT_RESOLVED },
            message,
        ));
        changes.history.push(AlarmRecord {
            ts_ms: now_ms,
            key: key.clone(),
            firing,
            value,
            minute_ms,
        });
        changes.states.push(AlarmState {
            key,
            firing,
            since_ms: now_ms,
            last_fired_ms,
            value,
            minute_ms,
        });
    }

    /// The evaluator thread: a tick at start (retried every second until
    /// something is complete), then one per minute.
    fn evaluate_loop(&self, stop: &cb::Receiver<()>) {
        let flush = self.pipeline.settings().flush_interval;
        let delay = self.settings.evaluation_delay + flush;
        let mut history_retention: Option<Instant> = None;
        loop {
            let waiting = match self.tick((self.settings.clock)()) {
                Ok(outcome) => outcome.waiting > 0,
                Err(_) => false,
            };
            if history_retention.is_none_or(|at| at.elapsed() >= Duration::from_secs(3600)) {
                history_retention = Some(Instant::now());
                let keep_ms = self.pipeline.settings().retention.events_ms;
                let before = (self.settings.clock)().saturating_sub(keep_ms);
                match self.pipeline.store.delete_alarm_history_before(before) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "alarm history retention"),
                    Err(e) => tracing::warn!(error = %e, "alarm history retention failed"),
                }
            }
            let wait = if waiting {
                Duration::from_secs(1)
            } else {
                let now = now_ms();
                let next = minute_start(now) + MINUTE_MS;
                Duration::from_millis(u64::try_from(next - now).unwrap_or(0)) + delay
            };
            match stop.recv_timeout(wait) {
                Err(cb::RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(cb::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// The sender thread: delivers the outbox, oldest first and in order per
    /// URL, until stopped.
    fn send_loop(&self, stop: &cb::Receiver<()>, doorbell: &cb::Receiver<()>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.settings.request_timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let store = &*self.pipeline.store;
        let mut queue: Vec<OutboxEntry> = Vec::new();
        let mut reload = true;
        loop {
            if reload {
                match self.load_outbox() {
                    Ok(entries) => {
                        queue = entries;
                        reload = false;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "alarm outbox not readable; retrying");
                        match stop.recv_timeout(Duration::from_secs(1)) {
                            Err(cb::RecvTimeoutError::Timeout) => continue,
                            _ => return,
                        }
                    }
                }
            }
            // Per URL, only the oldest entry may go: a later one waits while
            // an earlier one is retried.
            let mut blocked: HashSet<String> = HashSet::new();
            let mut i = 0;
            while i < queue.len() {
                let entry = &mut queue[i];
                let url = &entry.notification.url;
                if blocked.contains(url) || entry.next_attempt_ms > now_ms() {
                    blocked.insert(url.clone());
                    i += 1;
                    continue;
                }
                if !matches!(stop.try_recv(), Err(cb::TryRecvError::Empty)) {
                    return;
                }
                match deliver(&agent, &entry.notification) {
                    Ok(()) => {
                        Stats::add(&self.pipeline.stats.alarm_notifications_sent_total, 1);
                        tracing::debug!(id = entry.id, %url, attempts = entry.attempts + 1, "alarm notification delivered");
                        if let Err(e) = store.outbox_delete(entry.id) {
                            // Delivered but still queued: it goes again (at least once).
                            tracing::warn!(id = entry.id, error = %e, "delivered notification not removed from the outbox");
                            reload = true;
                        }
                        queue.remove(i);
                    }
                    Err(error) => {
                        Stats::add(&self.pipeline.stats.alarm_notifications_failed_total, 1);
                        entry.attempts = entry.attempts.saturating_add(1);
                        let delay = backoff(
                            entry.attempts,
                            self.settings.min_backoff,
                            self.settings.max_backoff,
                        );
                        entry.next_attempt_ms = now_ms()
                            .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                        entry.last_error.clone_from(&error);
                        tracing::warn!(
                            id = entry.id, %url, attempts = entry.attempts, %error,
                            retry_in_ms = delay.as_millis() as u64,
                            "alarm notification not delivered; will retry"
                        );
                        if let Err(e) = store.outbox_retry(
                            entry.id,
                            entry.attempts,
                            entry.next_attempt_ms,
                            &entry.last_error,
                        ) {
                            tracing::warn!(id = entry.id, error = %e, "retry of a notification not recorded");
                        }
                        self.status.lock().last_delivery_error = Some(error);
                        blocked.insert(url.clone());
                        i += 1;
                    }
                }
            }
            {
                let mut status = self.status.lock();
                status.pending = queue.len();
                status.oldest_failing_ms = queue
                    .iter()
                    .filter(|e| e.attempts > 0)
                    .map(|e| e.notification.created_ms)
                    .min();
                if queue.is_empty() {
                    status.last_delivery_error = None;
                }
            }
            // Sleep until the first URL's oldest entry is due (the entries
            // behind it wait for it, whatever their own time), or a minute.
            let now = now_ms();
            let mut heads: HashSet<&str> = HashSet::new();
            let due_in_ms = queue
                .iter()
                .filter(|e| heads.insert(e.notification.url.as_str()))
                .map(|e| e.next_attempt_ms.saturating_sub(now))
                .min()
                .unwrap_or(60_000);
            let wait = if reload {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(u64::try_from(due_in_ms.clamp(0, 60_000)).unwrap_or(0))
            };
            cb::select! {
                recv(stop) -> _ => return,
                recv(doorbell) -> _ => reload = true,
                default(wait) => {}
            }
        }
    }

    /// Reads the outbox, first dropping the oldest entries beyond the cap.
    fn load_outbox(&self) -> Result<Vec<OutboxEntry>, strata_store::StoreError> {
        let store = &*self.pipeline.store;
        let cap = self.settings.outbox_max;
        let len = store.outbox_len()?;
        if len > cap {
            let excess = usize::try_from(len - cap).unwrap_or(usize::MAX);
            let oldest = store.outbox(excess)?;
            for entry in &oldest {
                store.outbox_delete(entry.id)?;
            }
            Stats::add(
                &self.pipeline.stats.alarm_notifications_dropped_total,
                oldest.len() as u64,
            );
            tracing::warn!(
                dropped = oldest.len(),
                outbox_max = cap,
                "alarm outbox over its cap: oldest notifications dropped"
            );
            store.append_events(&[Event::new(
                now_ms(),
                EVENT_DROPPED,
                format!(
                    "alarm outbox over its cap of {cap}: dropped the {} oldest notifications",
                    oldest.len()
                ),
            )])?;
        }
        store.outbox(usize::try_from(cap).unwrap_or(usize::MAX))
    }

    /// The `data` of `GET /api/v1/alarms`: firing instances (with their
    /// rule's metric, field, op and threshold) and the newest `limit`
    /// history records.
    pub fn api_data(&self, limit: usize) -> Result<Value, strata_store::StoreError> {
        let store = &*self.pipeline.store;
        let rules: HashMap<&str, &Rule> = self
            .rules
            .iter()
            .map(|r| (r.config.name.as_str(), r))
            .collect();
        let group_json = |key: &AlarmKey| -> Value {
            Value::Object(
                key.group
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            )
        };
        let active: Vec<Value> = store
            .alarm_states()?
            .into_iter()
            .filter(|s| s.firing)
            .map(|s| {
                let mut item = json!({
                    "alarm": s.key.rule,
                    "group": group_json(&s.key),
                    "since_ms": s.since_ms,
                    "value": s.value,
                    "ts_ms": s.minute_ms,
                });
                if let Some(rule) = rules.get(s.key.rule.as_str()) {
                    item["metric"] = json!(rule.config.metric);
                    item["field"] = json!(rule.config.field);
                    item["op"] = json!(rule.op.as_str());
                    item["threshold"] = json!(rule.config.threshold);
                }
                item
            })
            .collect();
        let history: Vec<Value> = store
            .alarm_history(limit)?
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
        Ok(json!({"active": active, "history": history}))
    }

    /// Health check `rules`: how many rules and firing instances; Degraded
    /// when the last evaluation could not read or record something.
    pub fn rules_check(&self) -> (AlarmHealth, String) {
        if self.rules.is_empty() {
            return (AlarmHealth::Deactivated, "no [[alarm]] rules".into());
        }
        let firing = self
            .eval
            .try_lock()
            .map(|e| e.states.values().filter(|s| s.firing).count());
        let status = self.status.lock();
        let firing = firing.map_or_else(|| "evaluating".to_owned(), |n| format!("{n} firing"));
        let last = status.last_tick_ms.map_or_else(
            || "not evaluated yet".to_owned(),
            |at| format!("last evaluated {} ms ago", now_ms() - at),
        );
        if status.last_errors.is_empty() {
            (
                AlarmHealth::Ok,
                format!("{} rules, {firing}, {last}", self.rules.len()),
            )
        } else {
            (
                AlarmHealth::Degraded,
                format!(
                    "{} rules, {firing}, {last}; errors: {}",
                    self.rules.len(),
                    status.last_errors.join("; ")
                ),
            )
        }
    }

    /// Health check `notifications`: Degraded when a notification has been
    /// failing for longer than `degraded_after` since it was queued.
    pub fn notifications_check(&self) -> (AlarmHealth, String) {
        let status = self.status.lock();
        if self.rules.is_empty() && status.pending == 0 {
            return (AlarmHealth::Deactivated, "no [[alarm]] rules".into());
        }
        let Some(oldest) = status.oldest_failing_ms else {
            return (
                AlarmHealth::Ok,
                format!("{} notifications queued", status.pending),
            );
        };
        let failing_ms = now_ms().saturating_sub(oldest);
        let error = status.last_delivery_error.as_deref().unwrap_or("unknown");
        let detail = format!(
            "{} notifications queued; the oldest failing was queued {failing_ms} ms ago; last error: {error}",
            status.pending
        );
        let degraded_ms =
            i64::try_from(self.settings.degraded_after.as_millis()).unwrap_or(i64::MAX);
        if failing_ms > degraded_ms {
            (AlarmHealth::Degraded, detail)
        } else {
            (AlarmHealth::Ok, detail)
        }
    }
}

/// What one tick records, in one store transaction.
#[derive(Default)]
struct Changes {
    states: Vec<AlarmState>,
    clear: Vec<AlarmKey>,
    history: Vec<AlarmRecord>,
    notifications: Vec<Notification>,
    events: Vec<Event>,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.states.is_empty()
            && self.clear.is_empty()
            && self.history.is_empty()
            && self.notifications.is_empty()
            && self.events.is_empty()
    }
}

/// The states of one rule's instances.
fn rule_states<'a>(
    states: &'a BTreeMap<AlarmKey, AlarmState>,
    rule: &'a str,
) -> impl Iterator<Item = (&'a AlarmKey, &'a AlarmState)> + 'a {
    let from = AlarmKey {
        rule: rule.to_owned(),
        group: Vec::new(),
    };
    states
        .range(from..)
        .take_while(move |(k, _)| k.rule == rule)
}

/// Delay before attempt `attempts + 1` of a delivery: `min` doubled per
/// failure after the first, at most `max`, less up to 20% jitter so that
/// many notifications to one receiver do not retry in step.
fn backoff(attempts: u32, min: Duration, max: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    let delay = min.saturating_mul(1u32 << doublings).min(max);
    delay.mul_f64(rand::rng().random_range(0.8..=1.0))
}

/// POSTs one notification; Ok only for a 2xx answer.
fn deliver(agent: &ureq::Agent, n: &Notification) -> Result<(), String> {
    match agent
        .post(&n.url)
        .header("Content-Type", "application/json")
        .send(n.body.as_str())
    {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("http status {}", resp.status().as_u16())),
        Err(e) => Err(e.to_string()),
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
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(300));
        for (attempts, full) in [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (u32::MAX, 300)] {
            let d = backoff(attempts, min, max);
            let full = Duration::from_secs(full);
            assert!(d <= full && d >= full.mul_f64(0.8), "{attempts}: {d:?}");
        }
    }

    #[test]
    fn rule_states_lists_only_that_rule() {
        let key = |rule: &str, v: &str| AlarmKey {
            rule: rule.into(),
            group: vec![("g".into(), v.into())],
        };
        let mut states = BTreeMap::new();
        for k in [key("a", "1"), key("ab", "1"), key("b", "1"), key("b", "2")] {
            states.insert(
                k.clone(),
                AlarmState {
                    key: k,
                    firing: true,
                    since_ms: 0,
                    last_fired_ms: None,
                    value: 0.0,
                    minute_ms: 0,
                },
            );
        }
        let listed: Vec<_> = rule_states(&states, "b").map(|(k, _)| k.clone()).collect();
        assert_eq!(listed, vec![key("b", "1"), key("b", "2")]);
        assert_eq!(rule_states(&states, "a").count(), 1);
    }
}
