//! [`Event`]: one entry of the node's event log.

/// A notable event (source connected or refused, alarm fired or resolved,
/// spool overflow), kept in the store's event log with its own retention.
///
/// The log is keyed by `ts_ms` and an id the store assigns on append, so
/// events with equal timestamps never replace each other and are listed in
/// the order they were appended.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// When it happened, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// What happened, as a short `snake_case` tag such as
    /// [`Event::SPOOL_OVERFLOW`].
    pub kind: String,
    /// Human-readable details.
    pub message: String,
}

impl Event {
    /// Kind of the event a commit appends when it drops spool batches at the
    /// spool cap.
    pub const SPOOL_OVERFLOW: &'static str = "spool_overflow";
    /// Kind of the event appended when a stored state could not be read and
    /// was moved to the quarantine table (see [`crate::Store::quarantined`]).
    pub const STATE_QUARANTINED: &'static str = "state_quarantined";

    pub fn new(ts_ms: i64, kind: impl Into<String>, message: impl Into<String>) -> Self {
        Event {
            ts_ms,
            kind: kind.into(),
            message: message.into(),
        }
    }
}
