//! The evaluator: at each [`Alarms::tick`], every rule's window of minute
//! points is merged per alarm instance, compared with the threshold, and the
//! instances that start firing or resolve are recorded — state, history,
//! event and notifications — in one store transaction per round of windows.
//!
//! A tick runs in named steps: [`window_end`] (which minute the window ends
//! at, or wait), [`windows_to_evaluate`] (that window, after any skipped
//! since the last tick), `evaluate_instances` (one [`InstanceEvaluation`] per
//! instance), [`transition_of`] (fire, resolve or nothing, silences
//! included), `Alarms::transition` (what a transition records) and
//! `Alarms::record` (the one transaction, then the evaluator's memory).

use std::collections::{BTreeMap, HashMap, HashSet};

use strata_model::{MINUTE_MS, Step, minute_start};
use strata_store::{
    AlarmKey, AlarmRecord, AlarmState, AlarmUpdate, Event, EventKind, Notification,
    NotificationKind, Resolution, StoreError,
};

use super::alertmanager::{self, AlertPoint};
use super::rules::Rule;
use super::{Alarms, notify};
use crate::api::query::{QueryError, merged_groups};
use crate::context::now_ms;
use crate::core::sources::Watermarks;
use crate::core::stats::Stats;

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
pub(crate) struct EvalState {
    /// Every stored alarm state, as last committed.
    pub(crate) states: BTreeMap<AlarmKey, AlarmState>,
    /// Per rule, the newest minute evaluated: a window never moves back
    /// (after a restart until the first commit, or when a source without a
    /// watermark becomes expected, completeness falls behind).
    pub(super) newest_evaluated: HashMap<String, i64>,
    /// Rules whose field is not a value of their metric's kind, warned once.
    pub(super) misconfigured: HashSet<String>,
    /// When each firing instance of a rule with Alertmanagers is next posted
    /// to them again; absent: at once (as after a restart).
    pub(super) resend_at: HashMap<AlarmKey, i64>,
}

impl EvalState {
    /// The memory of a node that restored `states` from its store.
    pub(crate) fn restored(states: BTreeMap<AlarmKey, AlarmState>) -> EvalState {
        EvalState {
            states,
            ..EvalState::default()
        }
    }
}

/// What one evaluation found for one alarm instance.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct InstanceEvaluation {
    /// Evaluated points that breach.
    breaches: u32,
    /// The newest evaluated point: (minute, value).
    newest: Option<(i64, f64)>,
    /// The newest breaching point: (minute, value).
    newest_breach: Option<(i64, f64)>,
}

impl InstanceEvaluation {
    /// Counts one evaluated point (points come oldest first).
    fn add_point(&mut self, rule: &Rule, minute_ms: i64, value: f64) {
        self.newest = Some((minute_ms, value));
        if rule.config.op.breaches(value, rule.config.threshold) {
            self.breaches += 1;
            self.newest_breach = Some((minute_ms, value));
        }
    }
}

/// One alarm instance changing state: what [`transition_of`] decided and
/// `Alarms::transition` records.
#[derive(Debug, PartialEq)]
pub(crate) struct Transition {
    key: AlarmKey,
    /// `true`: it starts firing; `false`: it resolves.
    pub(super) firing: bool,
    /// The minute point that decided it, and its value (NaN when undefined).
    minute_ms: i64,
    value: f64,
    /// When the tick ran, by the alarm clock.
    now_ms: i64,
    /// When it last fired: now when it fires, kept when it resolves.
    last_fired_ms: Option<i64>,
    /// When the firing this transition starts or ends began (an alert's
    /// `startsAt`), and its value (what an alert's labels are rendered with).
    starts_ms: i64,
    fired_value: f64,
}

/// What one tick records, in one store transaction.
#[derive(Default)]
pub(super) struct Changes {
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

impl Alarms {
    /// Evaluates every rule as of `now_ms` and records the transitions.
    /// Each rule evaluates the window ending at the newest minute complete
    /// here and, when completeness jumped several minutes since its last
    /// evaluation (a source came back after a while), first the windows
    /// ending at each minute it skipped, oldest first, so
    /// no breach goes unseen ([`windows_to_evaluate`]). Windows are recorded
    /// round by round (one store transaction per round), each round seeing
    /// what the one before fired or resolved. Errors reading one rule's data
    /// are reported in [`TickOutcome::errors`] and skip only that rule; an
    /// error recording the transitions is returned, and the next tick finds
    /// them again.
    pub fn tick(&self, now_ms: i64) -> Result<TickOutcome, StoreError> {
        let mut eval = self.eval.lock();
        let watermarks = self.pipeline.watermarks();
        let mut out = TickOutcome::default();
        let mut plans = Vec::new();
        for rule in &self.rules {
            let c = &rule.config;
            let Some(newest) = window_end(c.include_incomplete, now_ms, watermarks.forwarded())
            else {
                out.waiting += 1;
                continue;
            };
            let windows = windows_to_evaluate(eval.newest_evaluated.get(&c.name).copied(), newest);
            if !windows.is_empty() && self.field_applies(rule, &mut eval.misconfigured) {
                plans.push((rule, windows));
            }
        }
        let rounds = plans.iter().map(|(_, w)| w.len()).max().unwrap_or(0);
        for round in 0..rounds {
            let mut changes = Changes::default();
            let mut evaluated_minutes = Vec::new();
            for (rule, windows) in &plans {
                let Some(&newest) = windows.get(round) else {
                    continue;
                };
                match self.evaluate_rule(rule, &eval, &watermarks, newest, now_ms, &mut changes) {
                    Ok(()) => evaluated_minutes.push((rule.config.name.clone(), newest)),
                    Err(error) => out.errors.push(error),
                }
            }
            self.record(&mut eval, changes, &mut out)?;
            for (rule, newest) in evaluated_minutes {
                eval.newest_evaluated.insert(rule, newest);
            }
        }
        out.errors.dedup();
        let mut status = self.status.lock();
        // The system clock: "last evaluated" in the health check.
        status.last_tick_ms = Some(crate::context::now_ms());
        status.last_errors.clone_from(&out.errors);
        Ok(out)
    }

    /// One rule's window ending at minute `newest`: its instances'
    /// evaluations, their transitions, and the resolved states no longer
    /// worth keeping. `Err` names the rule and why its data could not be read.
    fn evaluate_rule(
        &self,
        rule: &Rule,
        eval: &EvalState,
        watermarks: &Watermarks,
        newest: i64,
        now_ms: i64,
        changes: &mut Changes,
    ) -> Result<(), String> {
        let c = &rule.config;
        let mut evaluations = match self.evaluate_instances(rule, watermarks, newest) {
            Ok(evaluations) => evaluations,
            Err(e) => {
                tracing::warn!(alarm = %c.name, error = %e, "alarm rule not evaluated");
                return Err(format!("{}: {e}", c.name));
            }
        };
        // A firing instance without any point now has nothing breaching.
        for (key, state) in rule_states(&eval.states, &c.name) {
            if state.firing {
                evaluations.entry(key.clone()).or_default();
            }
        }
        for (key, evaluation) in evaluations {
            let current = eval.states.get(&key);
            if let Some(t) = transition_of(rule, key, &evaluation, current, newest, now_ms) {
                self.transition(rule, t, changes);
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
        Ok(())
    }

    /// Whether the rule's field is a value of its metric's kind (or the
    /// metric is not known yet); warns once per rule when it is not.
    pub(super) fn field_applies(&self, rule: &Rule, misconfigured: &mut HashSet<String>) -> bool {
        let c = &rule.config;
        match self.ctx.store.metric_kind(&c.metric) {
            Some(kind) if !kind.value_fields().contains(&c.field.as_str()) => {
                if misconfigured.insert(c.name.clone()) {
                    tracing::warn!(
                        alarm = %c.name, metric = %c.metric, %kind, field = %c.field,
                        "alarm rule not evaluated: its field is not a value of the metric's kind"
                    );
                }
                false
            }
            _ => true,
        }
    }

    /// Merges the rule's window ending at minute `newest` per instance and
    /// evaluates each point that counts (complete ones, unless the rule
    /// includes incomplete minutes).
    pub(super) fn evaluate_instances(
        &self,
        rule: &Rule,
        watermarks: &Watermarks,
        newest: i64,
    ) -> Result<BTreeMap<AlarmKey, InstanceEvaluation>, QueryError> {
        let c = &rule.config;
        let oldest = newest - (i64::from(c.period_minutes) - 1) * MINUTE_MS;
        let groups = merged_groups(
            &*self.ctx.store,
            &rule.selector,
            Some(&c.group_by),
            Resolution::Minute,
            Step::Minute,
            oldest,
            newest + MINUTE_MS,
        )?;
        let mut evaluations: BTreeMap<AlarmKey, InstanceEvaluation> = BTreeMap::new();
        for (mut group, points) in groups {
            group.sort();
            let evaluation = evaluations
                .entry(AlarmKey {
                    rule: c.name.clone(),
                    group,
                })
                .or_default();
            for (minute, state) in points {
                if !c.include_incomplete && !watermarks.completeness(minute + MINUTE_MS).complete {
                    continue;
                }
                let value = state
                    .values(1)
                    .into_iter()
                    .find(|(name, _)| *name == c.field)
                    .map_or(f64::NAN, |(_, v)| v);
                evaluation.add_point(rule, minute, value);
            }
        }
        Ok(evaluations)
    }

    /// Adds one transition to `changes`: the instance's new state, its
    /// history record, an event, one notification per webhook and one per
    /// Alertmanager.
    pub(super) fn transition(&self, rule: &Rule, t: Transition, changes: &mut Changes) {
        let c = &rule.config;
        let body =
            notify::notification_body(&self.node_id, rule, &t.key, t.firing, t.minute_ms, t.value);
        let queued_ms = now_ms();
        for url in &c.webhooks {
            changes.notifications.push(Notification {
                url: url.clone(),
                body: body.clone(),
                created_ms: queued_ms,
                kind: NotificationKind::Webhook,
            });
        }
        if !rule.alertmanagers.is_empty() {
            let point = AlertPoint {
                value: t.value,
                minute_ms: t.minute_ms,
                fired_value: t.fired_value,
                starts_ms: t.starts_ms,
                ends_ms: (!t.firing).then_some(t.now_ms),
            };
            let body = alertmanager::post_body(&[self.alert(rule, &t.key.group, &point)]);
            for url in &rule.alertmanagers {
                changes.notifications.push(Notification {
                    url: url.clone(),
                    body: body.clone(),
                    created_ms: queued_ms,
                    kind: NotificationKind::Alertmanager,
                });
            }
        }
        let message = format!(
            "alarm {} {}: {} {} = {} (threshold {} {}) in minute {}",
            rule.instance_name(&t.key.group),
            if t.firing { "firing" } else { "resolved" },
            c.metric,
            c.field,
            t.value,
            c.op,
            c.threshold,
            t.minute_ms,
        );
        let kind = if t.firing {
            EventKind::AlarmFired
        } else {
            EventKind::AlarmResolved
        };
        changes.events.push(Event::new(t.now_ms, kind, message));
        changes.history.push(AlarmRecord {
            ts_ms: t.now_ms,
            key: t.key.clone(),
            firing: t.firing,
            value: t.value,
            minute_ms: t.minute_ms,
        });
        changes.states.push(AlarmState {
            key: t.key,
            firing: t.firing,
            since_ms: t.now_ms,
            last_fired_ms: t.last_fired_ms,
            value: t.value,
            minute_ms: t.minute_ms,
        });
    }

    /// Records a tick's changes in one store transaction, then applies them
    /// to the evaluator's memory, the counters and `out`, and rings the
    /// sender when notifications were queued. On a store error nothing is
    /// applied: the next tick finds the same transitions again.
    pub(super) fn record(
        &self,
        eval: &mut EvalState,
        changes: Changes,
        out: &mut TickOutcome,
    ) -> Result<(), StoreError> {
        if !changes.is_empty() {
            let update = AlarmUpdate {
                states: &changes.states,
                clear: &changes.clear,
                history: &changes.history,
                notifications: &changes.notifications,
                events: &changes.events,
            };
            if let Err(e) = self.ctx.store.update_alarms(update) {
                tracing::error!(error = %e, transitions = changes.history.len(), "alarm transitions not recorded; retried at the next evaluation");
                self.status.lock().last_errors = vec![format!("recording transitions: {e}")];
                return Err(e);
            }
        }
        for key in &changes.clear {
            eval.states.remove(key);
            eval.resend_at.remove(key);
        }
        let stats = &self.ctx.stats;
        let resend_ms = self.settings.alertmanager.resend_ms();
        for state in changes.states {
            if state.firing {
                out.fired += 1;
                Stats::add(&stats.alarms_fired_total, 1);
                // Just posted: the next post is one interval on.
                let next = alertmanager::next_resend_ms(state.since_ms, state.since_ms, resend_ms);
                eval.resend_at.insert(state.key.clone(), next);
            } else {
                out.resolved += 1;
                Stats::add(&stats.alarms_resolved_total, 1);
                eval.resend_at.remove(&state.key);
            }
            eval.states.insert(state.key.clone(), state);
        }
        for event in &changes.events {
            tracing::info!(kind = %event.kind, "{}", event.message);
        }
        if !changes.notifications.is_empty() {
            let _ = self.doorbell.try_send(());
        }
        Ok(())
    }

    /// Deletes alarm history older than the retention of the alarm events.
    pub(super) fn apply_history_retention(&self) {
        let keep_ms = self.pipeline.settings().retention.alarm_history_ms();
        let before = (self.settings.clock)().saturating_sub(keep_ms);
        match self.ctx.store.delete_alarm_history_before(before) {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "alarm history retention"),
            Err(e) => tracing::warn!(error = %e, "alarm history retention failed"),
        }
    }
}

/// Windows skipped since the last evaluation that a tick catches up on, at
/// most: completeness that jumped further (a source back after hours) has
/// the older windows skipped, with a warning.
const MAX_CATCH_UP_WINDOWS: i64 = 60;

/// The windows a rule evaluates when its newest window ends at `newest` and
/// it last evaluated up to `done`: every one after `done`, oldest first, or
/// the window at `done` again when nothing is newer; only `newest` before
/// the first evaluation; nothing when it already evaluated further.
pub(crate) fn windows_to_evaluate(done: Option<i64>, newest: i64) -> Vec<i64> {
    let Some(done) = done else {
        return vec![newest];
    };
    if done >= newest {
        return if done == newest {
            vec![newest]
        } else {
            Vec::new()
        };
    }
    let mut first = done + MINUTE_MS;
    if (newest - first) / MINUTE_MS > MAX_CATCH_UP_WINDOWS {
        first = newest - MAX_CATCH_UP_WINDOWS * MINUTE_MS;
        tracing::warn!(
            skipped_from_ms = done,
            skipped_to_ms = first,
            "alarm windows skipped: completeness jumped further than the evaluator catches up"
        );
    }
    (0..=(newest - first) / MINUTE_MS)
        .map(|i| first + i * MINUTE_MS)
        .collect()
}

/// The newest minute a rule's window ends at, as of `now_ms`: the current
/// minute when it includes incomplete minutes, else the newest minute whose
/// end both `now_ms` and the node's completeness `horizon` have passed.
/// `None` while nothing is complete at this node (the rule waits).
pub(crate) fn window_end(include_incomplete: bool, now_ms: i64, horizon: i64) -> Option<i64> {
    if include_incomplete {
        Some(minute_start(now_ms))
    } else if horizon <= 0 {
        None
    } else {
        Some(minute_start(now_ms.min(horizon)) - MINUTE_MS)
    }
}

/// What `evaluation` means for the instance `key` in state `current`: it
/// fires when at least `count` points breach and it is not firing nor
/// silenced, resolves when fewer breach and it was firing, else nothing.
/// `newest` (the window's end) stands in for a point when there is none.
pub(crate) fn transition_of(
    rule: &Rule,
    key: AlarmKey,
    evaluation: &InstanceEvaluation,
    current: Option<&AlarmState>,
    newest: i64,
    now_ms: i64,
) -> Option<Transition> {
    let was_firing = current.is_some_and(|s| s.firing);
    let last_fired = current.and_then(|s| s.last_fired_ms);
    let fires = evaluation.breaches >= rule.config.count;
    let (firing, (minute_ms, value), last_fired_ms) = if fires && !was_firing {
        if rule.silenced(last_fired, now_ms) {
            tracing::debug!(alarm = %rule.config.name, group = ?key.group, "breach within the silence: not fired");
            return None;
        }
        let point = evaluation.newest_breach.unwrap_or((newest, f64::NAN));
        (true, point, Some(now_ms))
    } else if !fires && was_firing {
        let point = evaluation.newest.unwrap_or((newest, f64::NAN));
        (false, point, last_fired)
    } else {
        return None;
    };
    let (starts_ms, fired_value) = match current {
        Some(state) if !firing => (state.since_ms, state.value),
        _ => (now_ms, value),
    };
    Some(Transition {
        key,
        firing,
        minute_ms,
        value,
        now_ms,
        last_fired_ms,
        starts_ms,
        fired_value,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AlarmConfig;

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

    #[test]
    fn skipped_windows_are_caught_up_oldest_first_within_a_bound() {
        let m = MINUTE_MS;
        assert_eq!(windows_to_evaluate(None, 10 * m), vec![10 * m]);
        assert_eq!(windows_to_evaluate(Some(10 * m), 10 * m), vec![10 * m]);
        assert_eq!(
            windows_to_evaluate(Some(8 * m), 10 * m),
            vec![9 * m, 10 * m]
        );
        assert!(windows_to_evaluate(Some(11 * m), 10 * m).is_empty());
        let far = windows_to_evaluate(Some(0), 1000 * m);
        assert_eq!(far.len() as i64, MAX_CATCH_UP_WINDOWS + 1);
        assert_eq!(windows_to_evaluate(Some(0), 61 * m).len(), 61);
        assert_eq!(far.first(), Some(&((1000 - MAX_CATCH_UP_WINDOWS) * m)));
        assert_eq!(far.last(), Some(&(1000 * m)));
    }

    #[test]
    fn the_window_ends_at_the_newest_complete_minute() {
        let now = 10 * MINUTE_MS + 5_000;
        assert_eq!(window_end(true, now, 0), Some(10 * MINUTE_MS));
        assert_eq!(window_end(false, now, 0), None);
        assert_eq!(window_end(false, now, now), Some(9 * MINUTE_MS));
        assert_eq!(
            window_end(false, now, 7 * MINUTE_MS + 1),
            Some(6 * MINUTE_MS)
        );
    }

    #[test]
    fn transitions_fire_resolve_and_respect_the_silence() {
        let rule = Rule::compile(
            &AlarmConfig {
                name: "r".into(),
                count: 2,
                period_minutes: 3,
                silence_minutes: 5,
                threshold: 1.0,
                ..AlarmConfig::default()
            },
            &alertmanager::AlertmanagerSettings::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let key = AlarmKey {
            rule: "r".into(),
            group: Vec::new(),
        };
        let mut evaluation = InstanceEvaluation::default();
        for (minute, value) in [(0, 2.0), (MINUTE_MS, 0.5), (2 * MINUTE_MS, 3.0)] {
            evaluation.add_point(&rule, minute, value);
        }
        let now = 10 * MINUTE_MS;
        let fired = transition_of(&rule, key.clone(), &evaluation, None, 0, now);
        assert_eq!(
            fired,
            Some(Transition {
                key: key.clone(),
                firing: true,
                minute_ms: 2 * MINUTE_MS,
                value: 3.0,
                now_ms: now,
                last_fired_ms: Some(now),
                starts_ms: now,
                fired_value: 3.0,
            })
        );
        let state = |firing: bool, last_fired_ms: i64| AlarmState {
            key: key.clone(),
            firing,
            since_ms: last_fired_ms,
            last_fired_ms: Some(last_fired_ms),
            value: 3.0,
            minute_ms: 0,
        };
        // Already firing: nothing new.
        let firing = state(true, now);
        assert_eq!(
            transition_of(&rule, key.clone(), &evaluation, Some(&firing), 0, now),
            None
        );
        // Resolved a minute ago, fired within the silence: not fired again.
        let resolved = state(false, now - MINUTE_MS);
        assert_eq!(
            transition_of(&rule, key.clone(), &evaluation, Some(&resolved), 0, now),
            None
        );
        // Nothing breaching any more: resolves at the newest point, keeping
        // when it last fired.
        let quiet = InstanceEvaluation {
            newest: Some((2 * MINUTE_MS, 0.0)),
            ..InstanceEvaluation::default()
        };
        let resolved = transition_of(&rule, key.clone(), &quiet, Some(&firing), 0, now);
        // An alert's resolution starts when it fired, with the value that
        // fired it.
        assert_eq!(
            resolved.map(|t| (
                t.firing,
                t.minute_ms,
                t.last_fired_ms,
                t.starts_ms,
                t.fired_value
            )),
            Some((false, 2 * MINUTE_MS, Some(now), now, 3.0))
        );
    }
}
