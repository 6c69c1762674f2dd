//! The sender: delivers the alarm outbox to webhooks and Alertmanagers, at
//! least once.
//!
//! The `alarm-notify` thread loads the outbox (dropping the oldest entries
//! past `outbox_max`), POSTs every entry that is due — oldest first, and per
//! URL only the oldest, so a receiver never sees a "resolved" before its
//! "firing" — deletes an entry once its webhook answered 2xx, and reschedules
//! a failed one with exponential backoff and jitter. It then sleeps until the
//! next entry is due, a doorbell from the evaluator, or stop. Also here: what
//! a notification's body says ([`notification_body`]).
//!
//! Webhooks are `http://` or `https://`; an `https://` one is verified against
//! its rule's `webhook_ca_file`, else the system's roots (`Clients`). So are
//! Alertmanagers, against `alarms.alertmanager_ca_file`. An Alertmanager
//! post is completed when it is sent: its firing alerts get their `endsAt`
//! ([`alertmanager::complete_at_send`]).

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crossbeam_channel as cb;
use rand::Rng;
use serde_json::{Map, Value, json};
use strata_store::{
    AlarmKey, Event, EventKind, Notification, NotificationKind, OutboxEntry, StoreError,
};

use super::Alarms;
use super::alertmanager::{self, AlertmanagerSettings};
use super::rules::Rule;
use crate::context::now_ms;
use crate::core::stats::Stats;

/// Longest the sender sleeps with nothing due.
const IDLE_WAIT_MS: i64 = 60_000;

/// Why a delivery pass ended.
enum Pass {
    /// The node is stopping.
    Stopped,
    /// Every due entry was tried; `reload`: the queue in memory no longer
    /// matches the outbox (a delivered entry could not be deleted).
    Done { reload: bool },
}

impl Alarms {
    /// The sender thread: delivers the outbox, oldest first and in order per
    /// URL, until stopped.
    pub(super) fn send_loop(&self, stop: &cb::Receiver<()>, doorbell: &cb::Receiver<()>) {
        let clients = Clients::new(
            &self.rules,
            &self.settings.alertmanager,
            self.settings.request_timeout,
        );
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
            match self.deliver_due(&clients, &mut queue, stop) {
                Pass::Stopped => return,
                Pass::Done { reload: stale } => reload |= stale,
            }
            self.publish_queue(&queue);
            let wait = if reload {
                Duration::from_secs(1)
            } else {
                next_due_in(&queue, now_ms())
            };
            cb::select! {
                recv(stop) -> _ => return,
                recv(doorbell) -> _ => reload = true,
                default(wait) => {}
            }
        }
    }

    /// Tries every entry that is due, in order; per URL, only the oldest
    /// entry may go: a later one waits while an earlier one is retried.
    fn deliver_due(
        &self,
        clients: &Clients,
        queue: &mut Vec<OutboxEntry>,
        stop: &cb::Receiver<()>,
    ) -> Pass {
        let mut reload = false;
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
                return Pass::Stopped;
            }
            let valid_for_ms = self.settings.alertmanager.valid_for_ms();
            let delivered = clients
                .for_notification(&entry.notification)
                .and_then(|agent| deliver(agent, &entry.notification, valid_for_ms));
            match delivered {
                Ok(()) => {
                    reload |= !self.delivered(entry);
                    queue.remove(i);
                }
                Err(error) => {
                    blocked.insert(url.clone());
                    self.failed(entry, error);
                    i += 1;
                }
            }
        }
        Pass::Done { reload }
    }

    /// Counts a delivered entry and deletes it from the outbox; `false` when
    /// it could not be deleted (it will go again: at least once).
    fn delivered(&self, entry: &OutboxEntry) -> bool {
        Stats::add(&self.ctx.stats.alarm_notifications_sent_total, 1);
        tracing::debug!(id = entry.id, url = %entry.notification.url, attempts = entry.attempts + 1, "alarm notification delivered");
        match self.ctx.store.outbox_delete(entry.id) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(id = entry.id, error = %e, "delivered notification not removed from the outbox");
                false
            }
        }
    }

    /// Counts a failed attempt and schedules the next one, in memory and in
    /// the outbox (so the backoff survives a restart).
    fn failed(&self, entry: &mut OutboxEntry, error: String) {
        Stats::add(&self.ctx.stats.alarm_notifications_failed_total, 1);
        entry.attempts = entry.attempts.saturating_add(1);
        let delay = backoff(
            entry.attempts,
            self.settings.min_backoff,
            self.settings.max_backoff,
        );
        entry.next_attempt_ms =
            now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        entry.last_error.clone_from(&error);
        tracing::warn!(
            id = entry.id, url = %entry.notification.url, attempts = entry.attempts, %error,
            retry_in_ms = delay.as_millis() as u64,
            "alarm notification not delivered; will retry"
        );
        if let Err(e) = self.ctx.store.outbox_retry(
            entry.id,
            entry.attempts,
            entry.next_attempt_ms,
            &entry.last_error,
        ) {
            tracing::warn!(id = entry.id, error = %e, "retry of a notification not recorded");
        }
        self.status.lock().last_delivery_error = Some(error);
    }

    /// What the `notifications` health check shows: queue length and the
    /// oldest failing entry; and for the re-sends, which alerts wait for
    /// which Alertmanager.
    fn publish_queue(&self, queue: &[OutboxEntry]) {
        let pending_alerts = queue
            .iter()
            .filter(|e| e.notification.kind == NotificationKind::Alertmanager)
            .flat_map(|e| {
                let url = &e.notification.url;
                alertmanager::identities_in(&e.notification.body)
                    .into_iter()
                    .map(move |id| (url.clone(), id))
            })
            .collect();
        let mut status = self.status.lock();
        status.pending_alerts = pending_alerts;
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

    /// Reads the outbox, first dropping the oldest entries beyond the cap.
    pub(super) fn load_outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let store = &*self.ctx.store;
        let cap = self.settings.outbox_max;
        let len = store.outbox_len()?;
        if len > cap {
            let excess = usize::try_from(len - cap).unwrap_or(usize::MAX);
            let oldest = store.outbox(excess)?;
            for entry in &oldest {
                store.outbox_delete(entry.id)?;
            }
            Stats::add(
                &self.ctx.stats.alarm_notifications_dropped_total,
                oldest.len() as u64,
            );
            tracing::warn!(
                dropped = oldest.len(),
                outbox_max = cap,
                "alarm outbox over its cap: oldest notifications dropped"
            );
            store.append_events(&[Event::new(
                now_ms(),
                EventKind::AlarmNotificationsDropped,
                format!(
                    "alarm outbox over its cap of {cap}: dropped the {} oldest notifications",
                    oldest.len()
                ),
            )])?;
        }
        store.outbox(usize::try_from(cap).unwrap_or(usize::MAX))
    }
}

/// The JSON body POSTed to every webhook of `rule` when the instance `key`
/// fires or resolves (docs/OPERATIONS.md shows it).
pub(super) fn notification_body(
    node_id: &str,
    rule: &Rule,
    key: &AlarmKey,
    firing: bool,
    minute_ms: i64,
    value: f64,
) -> String {
    let c = &rule.config;
    let group: Map<String, Value> = key
        .group
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "alarm": c.name,
        "state": if firing { "firing" } else { "resolved" },
        "group": group,
        "value": value,
        "threshold": c.threshold,
        "op": c.op.as_str(),
        "ts_ms": minute_ms,
        "node": node_id,
        "metric": c.metric,
        "field": c.field,
    })
    .to_string()
}

/// How long to sleep before the first URL's oldest entry is due (the
/// entries behind it wait for it, whatever their own time), at most a
/// minute.
fn next_due_in(queue: &[OutboxEntry], now_ms: i64) -> Duration {
    let mut heads: HashSet<&str> = HashSet::new();
    let due_in_ms = queue
        .iter()
        .filter(|e| heads.insert(e.notification.url.as_str()))
        .map(|e| e.next_attempt_ms.saturating_sub(now_ms))
        .min()
        .unwrap_or(IDLE_WAIT_MS);
    Duration::from_millis(u64::try_from(due_in_ms.clamp(0, IDLE_WAIT_MS)).unwrap_or(0))
}

/// Delay before attempt `attempts + 1` of a delivery: `min` doubled per
/// failure after the first, at most `max`, less up to 20% jitter so that
/// many notifications to one receiver do not retry in step.
fn backoff(attempts: u32, min: Duration, max: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    let delay = min.saturating_mul(1u32 << doublings).min(max);
    delay.mul_f64(rand::rng().random_range(0.8..=1.0))
}

/// The sender's HTTP clients, all on the node's TLS provider: for the
/// `https://` webhooks of a rule with `webhook_ca_file`, one trusting that
/// file's CAs; for `https://` Alertmanagers with `alarms.alertmanager_ca_file`,
/// one trusting that file's; for other `https://` URLs one trusting the
/// system's roots (read at its first use); and one for `http://`.
struct Clients {
    /// Webhook URL → the client trusting its rule's CA file, or why there is none.
    by_url: HashMap<String, Result<ureq::Agent, String>>,
    /// The client trusting `alarms.alertmanager_ca_file` (or why there is
    /// none); absent without one.
    alertmanager: Option<Result<ureq::Agent, String>>,
    /// For `https://` URLs of rules without a CA file (and of rules no longer
    /// configured whose notifications are still queued).
    system: OnceCell<ureq::Agent>,
    plain: ureq::Agent,
    timeout: Duration,
}

impl Clients {
    fn new(rules: &[Rule], alertmanager: &AlertmanagerSettings, timeout: Duration) -> Clients {
        let mut by_url = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let Some(ca_file) = &rule.config.webhook_ca_file else {
                continue;
            };
            let key = format!("alarm[{i}].webhook_ca_file");
            let client = crate::net::tls::http_client_tls(&key, Some(ca_file))
                .map(|tls| agent(timeout, tls))
                .map_err(|e| e.to_string());
            if let Err(e) = &client {
                tracing::error!(rule = %rule.config.name, error = %e, "webhook CA file not usable: its https webhooks cannot be delivered");
            }
            for url in rule.config.webhooks.iter().filter(|u| is_https(u)) {
                by_url.entry(url.clone()).or_insert_with(|| client.clone());
            }
        }
        let alertmanager = alertmanager.ca_file.as_ref().map(|ca_file| {
            let client = crate::net::tls::http_client_tls("alarms.alertmanager_ca_file", Some(ca_file))
                .map(|tls| agent(timeout, tls))
                .map_err(|e| e.to_string());
            if let Err(e) = &client {
                tracing::error!(error = %e, "Alertmanager CA file not usable: https Alertmanagers cannot be sent to");
            }
            client
        });
        Clients {
            by_url,
            alertmanager,
            system: OnceCell::new(),
            plain: agent(timeout, crate::net::tls::http_client_tls_with(Vec::new())),
            timeout,
        }
    }

    /// The client for `n`, or why it cannot be sent.
    fn for_notification(&self, n: &Notification) -> Result<&ureq::Agent, String> {
        let url = n.url.as_str();
        let own = match n.kind {
            NotificationKind::Webhook => self.by_url.get(url),
            NotificationKind::Alertmanager => self.alertmanager.as_ref(),
        };
        if !is_https(url) {
            return Ok(&self.plain);
        }
        if let Some(client) = own {
            return client.as_ref().map_err(Clone::clone);
        }
        Ok(self.system.get_or_init(|| {
            let tls = crate::net::tls::http_client_tls("system roots", None)
                .unwrap_or_else(|_| crate::net::tls::http_client_tls_with(Vec::new()));
            agent(self.timeout, tls)
        }))
    }
}

fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

fn agent(timeout: Duration, tls: ureq::tls::TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .into()
}

/// Longest part of an Alertmanager's refusal quoted in the error.
const MAX_ANSWER_CHARS: usize = 200;

/// POSTs one notification; Ok only for a 2xx answer. An Alertmanager post
/// is completed first (its firing alerts' `endsAt`: `valid_for_ms` from
/// now), and its refusal quotes what the Alertmanager answered.
fn deliver(agent: &ureq::Agent, n: &Notification, valid_for_ms: i64) -> Result<(), String> {
    let body = match n.kind {
        NotificationKind::Webhook => n.body.clone(),
        NotificationKind::Alertmanager => {
            alertmanager::complete_at_send(&n.body, now_ms(), valid_for_ms)
        }
    };
    match agent
        .post(&n.url)
        .header("Content-Type", "application/json")
        .send(body.as_str())
    {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(mut resp) if n.kind == NotificationKind::Alertmanager => {
            let status = resp.status().as_u16();
            let answer = resp
                .body_mut()
                .with_config()
                .limit(16 * 1024)
                .read_to_string()
                .unwrap_or_default();
            let answer: String = answer.trim().chars().take(MAX_ANSWER_CHARS).collect();
            Err(format!("http status {status}: {answer}"))
        }
        Ok(resp) => Err(format!("http status {}", resp.status().as_u16())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_sender_waits_for_the_oldest_entry_of_each_url() {
        let entry = |id: u64, url: &str, next_attempt_ms: i64| OutboxEntry {
            id,
            notification: Notification {
                url: url.into(),
                body: String::new(),
                created_ms: 0,
                kind: strata_store::NotificationKind::Webhook,
            },
            attempts: 1,
            next_attempt_ms,
            last_error: String::new(),
        };
        assert_eq!(next_due_in(&[], 0), Duration::from_secs(60));
        // The second entry of `a` is due sooner, but waits behind the first.
        let queue = [
            entry(1, "a", 5_000),
            entry(2, "a", 1_000),
            entry(3, "b", 3_000),
        ];
        assert_eq!(next_due_in(&queue, 0), Duration::from_secs(3));
        assert_eq!(next_due_in(&queue, 10_000), Duration::ZERO);
        assert_eq!(
            next_due_in(&[entry(1, "a", 1_000_000)], 0),
            Duration::from_secs(60)
        );
    }
}
