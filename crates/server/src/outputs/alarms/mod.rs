//! Alarm rules (DESIGN §6): which minute points breach, when an alarm
//! instance fires or resolves, and notifications to webhooks and
//! Alertmanagers delivered at least once.
//!
//! # Rules
//! A rule (`[[alarm]]`, [`AlarmConfig`]) watches one value `field` of one
//! `metric`, over the series its `match` labels select. With `group_by`,
//! each distinct combination of those labels is one *alarm instance*;
//! without, every matching series is merged into one instance. At each
//! evaluation the rule looks at the newest `period_minutes` minute points:
//! per instance and minute the minute buckets are merged (with
//! [`crate::api::query::merged_groups`], as a query with `step=minute` does) and
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
//! notification per webhook and per Alertmanager, and an `alarm_fired` /
//! `alarm_resolved` event — in one store transaction
//! ([`strata_store::Store::update_alarms`]), so a restart neither repeats a
//! transition nor loses its notifications. A firing instance is also posted
//! again to its Alertmanagers every `alarms.alertmanager_resend_s`, through
//! the same outbox ([`alertmanager`]). The sender
//! thread POSTs the outbox oldest first, deletes an entry only once the
//! webhook answered 2xx, and retries a failed one with exponential backoff
//! (`min_backoff` doubling to `max_backoff`, with jitter), across restarts.
//! Per webhook URL, notifications go out in order: a later one waits while
//! an earlier one is being retried, so a receiver never sees a "resolved"
//! before its "firing". The outbox is capped (`outbox_max`); past the cap the
//! oldest entries are dropped, counted and logged.
//!
//! # Threads
//! - `alarm-eval`: evaluates every rule ([`Alarms::tick`]) as soon as a
//!   minute is complete at this node, at least once a minute, and again
//!   when late data lands in a minute it has already evaluated (`schedule`);
//!   queues the Alertmanager re-sends that are due; also applies the
//!   history's retention.
//! - `alarm-notify`: delivers the outbox with a blocking HTTP client
//!   (`http://` or `https://`), woken when a transition queues notifications.
//!
//! Both are stopped by [`AlarmThreads::stop`] after the node's final commit;
//! what is still queued stays in the outbox for the next start.
//!
//! # Layout
//! - `mod.rs`: [`Alarms`] (start, threads, health checks, what the API reads).
//! - [`rules`]: [`Op`], the compiled rule, [`AlarmSettings`].
//! - [`evaluate`]: [`Alarms::tick`] in named steps.
//! - `schedule`: the evaluator thread (when a tick is due) and the
//!   re-evaluation of minutes that received late data.
//! - [`notify`]: the sender thread (outbox, delivery, backoff) and the
//!   webhook notification body.
//! - [`alertmanager`]: the alerts posted to Alertmanagers, their re-send
//!   schedule, and what the sender completes when it sends them.
//! - [`template`]: the `{{ $value }}` / `{{ $labels.x }}` templates of a
//!   rule's `labels` and `annotations`.
//!
//! `GET /api/v1/alarms` is rendered by [`crate::api::alarms`] from
//! [`Alarms::firing`], [`Alarms::history`] and [`Alarms::rules`].

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use crossbeam_channel as cb;
use parking_lot::Mutex;
use strata_store::{AlarmKey, AlarmRecord, AlarmState, AlarmUpdate, Store, StoreError};

use crate::config::AlarmConfig;
use crate::context::{Context, now_ms};
use crate::core::health::Health;
use crate::core::pipeline::Pipeline;

pub mod alertmanager;
pub mod evaluate;
pub mod notify;
pub mod rules;
mod schedule;
pub mod template;

pub use evaluate::TickOutcome;
pub use rules::{AlarmSettings, Op};

use evaluate::EvalState;
use rules::Rule;

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
    /// `(…/api/v2/alerts URL, alert identity)` of every alert queued for an
    /// Alertmanager as of the sender's last pass: its re-send is not queued
    /// again while one waits.
    pending_alerts: HashSet<(String, String)>,
}

/// The node's alarm rules, their evaluation and their notifications.
pub struct Alarms {
    /// Named in every notification.
    node_id: String,
    rules: Vec<Rule>,
    /// Store and counters.
    ctx: Arc<Context>,
    /// Watermarks (completeness), flush interval and retention.
    pipeline: Arc<Pipeline>,
    settings: AlarmSettings,
    /// Held for a whole evaluation: the thread's ticks and a caller's never
    /// interleave.
    eval: Mutex<EvalState>,
    /// Rung (never blocking) when notifications were queued, so the sender
    /// picks them up at once instead of at its next timer.
    doorbell: cb::Sender<()>,
    status: Mutex<Status>,
    /// The HTTP listener as bound: the base of alerts' links when
    /// `http.external_url` is not set.
    http_addr: OnceLock<SocketAddr>,
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
            .map(|r| Rule::compile(r, &settings.alertmanager))
            .collect::<Result<Vec<Rule>, String>>()
            .map_err(anyhow::Error::msg)?;
        let store = &pipeline.context().store;
        let states = restore_states(&**store, &rules)?;
        let firing = states.values().filter(|s| s.firing).count();
        let queued = store.outbox_len()?;
        let (doorbell, doorbell_rx) = cb::bounded(1);
        let alarms = Arc::new(Alarms {
            node_id: node_id.to_owned(),
            rules,
            ctx: pipeline.context().clone(),
            pipeline,
            settings,
            eval: Mutex::new(EvalState::restored(states)),
            doorbell,
            status: Mutex::new(Status {
                pending: usize::try_from(queued).unwrap_or(usize::MAX),
                ..Status::default()
            }),
            http_addr: OnceLock::new(),
        });
        if alarms.rules.is_empty() && queued == 0 {
            return Ok((alarms, None));
        }
        let (stop, stop_rx) = cb::bounded::<()>(0);
        let handles = alarms.spawn_threads(&stop_rx, doorbell_rx, queued)?;
        tracing::info!(
            rules = alarms.rules.len(),
            firing,
            queued_notifications = queued,
            "alarms started"
        );
        Ok((alarms, Some(AlarmThreads { stop, handles })))
    }

    /// Starts the evaluator (when there are rules) and the sender, both
    /// stopped when `stop`'s sender is dropped.
    fn spawn_threads(
        self: &Arc<Self>,
        stop: &cb::Receiver<()>,
        doorbell: cb::Receiver<()>,
        queued: u64,
    ) -> std::io::Result<Vec<(&'static str, std::thread::JoinHandle<()>)>> {
        let mut handles = Vec::new();
        if !self.rules.is_empty() {
            let (a, stop) = (self.clone(), stop.clone());
            let handle = std::thread::Builder::new()
                .name("alarm-eval".into())
                .spawn(move || a.evaluate_loop(&stop))?;
            handles.push(("alarm-eval", handle));
        } else {
            tracing::warn!(
                queued,
                "no alarm rules configured, but notifications are queued: delivering them"
            );
        }
        let (a, stop) = (self.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("alarm-notify".into())
            .spawn(move || a.send_loop(&stop, &doorbell))?;
        handles.push(("alarm-notify", handle));
        Ok(handles)
    }

    /// Tells the alarms where the HTTP listener is bound: with
    /// `http.external_url` unset, the links alerts carry point there.
    pub fn http_bound(&self, addr: SocketAddr) {
        let _ = self.http_addr.set(addr);
    }

    /// The base of the links alerts carry: `http.external_url`, else
    /// `http://` and the HTTP listener as bound (as configured until then).
    pub(crate) fn link_base(&self) -> String {
        if let Some(url) = &self.settings.external_url {
            return url.trim_end_matches('/').to_owned();
        }
        match self.http_addr.get() {
            Some(addr) => format!("http://{addr}"),
            None => format!("http://{}", self.settings.http_listen),
        }
    }

    /// Whether any rule is configured.
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The configured rules, in config order.
    pub fn rules(&self) -> impl Iterator<Item = &AlarmConfig> {
        self.rules.iter().map(|r| &r.config)
    }

    /// Per rule, the newest minute its window has been evaluated up to
    /// (absent before its first evaluation).
    pub fn evaluated_through(&self) -> std::collections::HashMap<String, i64> {
        self.eval.lock().newest_evaluated.clone()
    }

    /// The firing alarm instances, as stored (blocks on the store).
    pub fn firing(&self) -> Result<Vec<AlarmState>, StoreError> {
        Ok(self
            .ctx
            .store
            .alarm_states()?
            .into_iter()
            .filter(|s| s.firing)
            .collect())
    }

    /// The newest `limit` alarm history records, newest first (blocks on
    /// the store).
    pub fn history(&self, limit: usize) -> Result<Vec<AlarmRecord>, StoreError> {
        self.ctx.store.alarm_history(limit)
    }

    /// Health check `rules`: how many rules and firing instances; Degraded
    /// when the last evaluation could not read or record something.
    pub fn rules_check(&self) -> (Health, String) {
        if self.rules.is_empty() {
            return (Health::Deactivated, "no [[alarm]] rules".into());
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
                Health::Ok,
                format!("{} rules, {firing}, {last}", self.rules.len()),
            )
        } else {
            (
                Health::Degraded,
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
    pub fn notifications_check(&self) -> (Health, String) {
        let status = self.status.lock();
        if self.rules.is_empty() && status.pending == 0 {
            return (Health::Deactivated, "no [[alarm]] rules".into());
        }
        let Some(oldest) = status.oldest_failing_ms else {
            return (
                Health::Ok,
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
            (Health::Degraded, detail)
        } else {
            (Health::Ok, detail)
        }
    }
}

/// The stored alarm states of the configured `rules`; the states of rules
/// no longer configured are deleted from the store.
fn restore_states(
    store: &dyn Store,
    rules: &[Rule],
) -> Result<BTreeMap<AlarmKey, AlarmState>, StoreError> {
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
    Ok(states)
}
