//! What the store keeps for alarms: each alarm instance's state, the history
//! of its transitions, and the outbox of notifications (to webhooks and to
//! Alertmanagers) not yet delivered.
//!
//! The store knows nothing of rules or webhooks: these are records the alarm
//! evaluator writes and reads back. [`AlarmUpdate`] is applied in one
//! transaction, so a transition, its history record, its notifications and
//! its event are durable together or not at all: a crash can neither lose a
//! queued notification of a recorded transition nor record a notification
//! for a transition that did not happen.

use crate::Event;

/// One alarm instance: a rule and, when the rule groups by labels, one group
/// of label values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlarmKey {
    /// The rule's name.
    pub rule: String,
    /// The group's labels, sorted by name; empty when the rule merges
    /// everything into one instance.
    pub group: Vec<(String, String)>,
}

/// Where one alarm instance stands; kept so that a restart neither forgets
/// a firing alarm nor notifies its firing twice.
#[derive(Clone, Debug, PartialEq)]
pub struct AlarmState {
    pub key: AlarmKey,
    /// Whether the instance is firing.
    pub firing: bool,
    /// When it last changed between firing and resolved (evaluation time, ms).
    pub since_ms: i64,
    /// When it last fired, for `silence_minutes`; `None` if it never fired.
    pub last_fired_ms: Option<i64>,
    /// The value that made it change (NaN when undefined).
    pub value: f64,
    /// The minute that value belongs to.
    pub minute_ms: i64,
}

/// One transition of an alarm instance, kept in the alarm history.
#[derive(Clone, Debug, PartialEq)]
pub struct AlarmRecord {
    /// When it was evaluated (ms); the history is ordered by it.
    pub ts_ms: i64,
    pub key: AlarmKey,
    /// `true`: it fired; `false`: it resolved.
    pub firing: bool,
    /// The value that made it change (NaN when undefined).
    pub value: f64,
    /// The minute that value belongs to.
    pub minute_ms: i64,
}

/// A notification to deliver: one POST of `body` to `url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub url: String,
    /// The request body (JSON): as sent to a webhook; for an Alertmanager,
    /// the sender completes it when sending (see [`NotificationKind`]).
    pub body: String,
    /// When it was queued (ms).
    pub created_ms: i64,
    /// What receives it, which decides how it is sent.
    pub kind: NotificationKind,
}

/// What a [`Notification`] goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NotificationKind {
    /// A rule's webhook: the body is POSTed as it is.
    #[default]
    Webhook,
    /// An Alertmanager's `/api/v2/alerts`: the body is an array of alerts,
    /// and the sender sets the `endsAt` of those without one (firing
    /// alerts) from the time of sending.
    Alertmanager,
}

/// A queued [`Notification`] with its delivery record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Assigned by the store on queueing; increasing, never reused.
    pub id: u64,
    pub notification: Notification,
    /// Failed delivery attempts so far.
    pub attempts: u32,
    /// Not to be tried again before this time (ms); 0 for a new entry.
    pub next_attempt_ms: i64,
    /// Why the last attempt failed; empty for a new entry.
    pub last_error: String,
}

/// Changes of the alarm tables, applied in one transaction by
/// [`crate::Store::update_alarms`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AlarmUpdate<'a> {
    /// Upserted by key.
    pub states: &'a [AlarmState],
    /// States deleted (e.g. of rules no longer configured); unknown keys are
    /// ignored.
    pub clear: &'a [AlarmKey],
    /// Appended to the alarm history.
    pub history: &'a [AlarmRecord],
    /// Queued in the outbox, in order.
    pub notifications: &'a [Notification],
    /// Appended to the event log.
    pub events: &'a [Event],
}

impl AlarmUpdate<'_> {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
            && self.clear.is_empty()
            && self.history.is_empty()
            && self.notifications.is_empty()
            && self.events.is_empty()
    }
}
