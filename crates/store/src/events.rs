//! [`Event`]: one entry of the node's event log, [`EventKind`], what
//! happened, and the two ways the log is selected: [`EventQuery`] (what
//! [`crate::Store::query_events`] lists) and [`EventCutoffs`] (what
//! [`crate::Store::delete_events`] deletes, per kind).

use std::collections::BTreeMap;

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
    /// What happened.
    pub kind: EventKind,
    /// Human-readable details.
    pub message: String,
}

impl Event {
    pub fn new(ts_ms: i64, kind: EventKind, message: impl Into<String>) -> Self {
        Event {
            ts_ms,
            kind,
            message: message.into(),
        }
    }
}

/// What an [`Event`] records. Stored, and shown by the HTTP API, as its
/// `snake_case` name ([`EventKind::as_str`]).
///
/// Every kind any part of strata records is here, so the log's vocabulary
/// is in one place: a new kind is a new variant, with its name in
/// [`EventKind::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `source_connected`: a downstream's federation stream was accepted;
    /// the message names the epoch (by fingerprint) and the seq it resumes
    /// after.
    SourceConnected,
    /// `source_disconnected`: a downstream's stream ended, closed by the
    /// source or ended here (the message says why).
    SourceDisconnected,
    /// `source_refused`: a downstream's stream was refused at its hello
    /// (unknown source, bad token, over the source limit…).
    SourceRefused,
    /// `source_new_epoch`: a downstream came back with another epoch: it lost
    /// its durable state, and its seqs start over.
    SourceNewEpoch,
    /// `source_seq_reset`: a downstream's committed seq was beyond any real
    /// seq (only a forged one gets there); its counting restarts at 0.
    SourceSeqReset,
    /// `batch_seq_refused`: a federation batch was refused for its seq
    /// (nothing of it merged); its stream was ended.
    BatchSeqRefused,
    /// `increments_refused`: increments of a federation batch could not be
    /// merged here (kind, precision or threshold mismatch, limits); the rest
    /// of the batch was.
    IncrementsRefused,
    /// `increments_oversized`: increments too large for one message to the
    /// upstream were left out of a forwarded batch.
    IncrementsOversized,
    /// `commit_failed`: a flush could not be committed to the store and was
    /// lost; the node stopped committing until restarted.
    CommitFailed,
    /// `spool_overflow`: a commit dropped the oldest spool batches at the
    /// spool cap (`spool_max_bytes`); appended by that commit.
    SpoolOverflow,
    /// `state_quarantined`: a stored bucket state could not be read and was
    /// moved to quarantine (see [`crate::Store::quarantined`]); its bucket
    /// started afresh.
    StateQuarantined,
    /// `rollup_refused`: folding a minute into its hour or day rollup was
    /// refused (a histogram precision or apdex threshold that changed within
    /// the hour or day); the minute is kept at minute resolution, the rollup
    /// as it was.
    RollupRefused,
    /// `alarm_fired`: an alarm instance started firing.
    AlarmFired,
    /// `alarm_resolved`: a firing alarm instance resolved.
    AlarmResolved,
    /// `alarm_notifications_dropped`: the alarm outbox went over its cap and
    /// its oldest notifications were dropped undelivered.
    AlarmNotificationsDropped,
    /// `cardinality_limited`: a source brought new series or metrics beyond
    /// `limits.max_series_per_source` or `limits.max_metrics_per_source`;
    /// its request or batch was refused. At most one per source and minute
    /// (every refusal is counted on `/metrics`).
    CardinalityLimited,
    /// A kind this build does not know, read back from a log a newer build
    /// wrote to (after a downgrade): listed as `unknown`, so that one such
    /// event never makes the log unreadable. Never recorded by this build.
    Unknown,
}

impl EventKind {
    /// Every kind this build records.
    pub const ALL: [EventKind; 16] = [
        EventKind::SourceConnected,
        EventKind::SourceDisconnected,
        EventKind::SourceRefused,
        EventKind::SourceNewEpoch,
        EventKind::SourceSeqReset,
        EventKind::BatchSeqRefused,
        EventKind::IncrementsRefused,
        EventKind::IncrementsOversized,
        EventKind::CommitFailed,
        EventKind::SpoolOverflow,
        EventKind::StateQuarantined,
        EventKind::RollupRefused,
        EventKind::AlarmFired,
        EventKind::AlarmResolved,
        EventKind::AlarmNotificationsDropped,
        EventKind::CardinalityLimited,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SourceConnected => "source_connected",
            EventKind::SourceDisconnected => "source_disconnected",
            EventKind::SourceRefused => "source_refused",
            EventKind::SourceNewEpoch => "source_new_epoch",
            EventKind::SourceSeqReset => "source_seq_reset",
            EventKind::BatchSeqRefused => "batch_seq_refused",
            EventKind::IncrementsRefused => "increments_refused",
            EventKind::IncrementsOversized => "increments_oversized",
            EventKind::CommitFailed => "commit_failed",
            EventKind::SpoolOverflow => "spool_overflow",
            EventKind::StateQuarantined => "state_quarantined",
            EventKind::RollupRefused => "rollup_refused",
            EventKind::AlarmFired => "alarm_fired",
            EventKind::AlarmResolved => "alarm_resolved",
            EventKind::AlarmNotificationsDropped => "alarm_notifications_dropped",
            EventKind::CardinalityLimited => "cardinality_limited",
            EventKind::Unknown => "unknown",
        }
    }

    /// The kind named `name` ([`EventKind::as_str`]), if this build records
    /// it.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Which events [`crate::Store::query_events`] lists: those with
/// `from_ms <= ts_ms < to_ms`, of the given kinds, newest first, at most
/// `limit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventQuery {
    /// Oldest timestamp listed (inclusive), ms since the Unix epoch.
    pub from_ms: i64,
    /// Events at or after this are left out; `None`: no upper bound.
    pub to_ms: Option<i64>,
    /// Only events of these kinds; empty: every kind (also
    /// [`EventKind::Unknown`]).
    pub kinds: Vec<EventKind>,
    /// Most events listed; the newest are kept.
    pub limit: usize,
}

impl EventQuery {
    /// Every event with `ts_ms >= since_ms`, at most `limit`.
    pub fn since(since_ms: i64, limit: usize) -> Self {
        EventQuery {
            from_ms: since_ms,
            to_ms: None,
            kinds: Vec::new(),
            limit,
        }
    }

    /// Whether the query lists an event of `kind` at `ts_ms` (the limit
    /// aside).
    pub fn matches(&self, ts_ms: i64, kind: EventKind) -> bool {
        ts_ms >= self.from_ms
            && self.to_ms.is_none_or(|to| ts_ms < to)
            && (self.kinds.is_empty() || self.kinds.contains(&kind))
    }
}

/// How far event retention reaches, per kind: [`crate::Store::delete_events`]
/// deletes every event whose `ts_ms` is before its kind's cutoff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventCutoffs {
    /// The cutoff of every kind not in `by_kind`, and of events whose kind
    /// this build does not know ([`EventKind::Unknown`]) or whose stored
    /// bytes do not decode.
    pub default_before_ms: i64,
    /// Kinds with a cutoff of their own.
    pub by_kind: BTreeMap<EventKind, i64>,
}

impl EventCutoffs {
    /// The same cutoff for every kind.
    pub fn uniform(before_ms: i64) -> Self {
        EventCutoffs {
            default_before_ms: before_ms,
            by_kind: BTreeMap::new(),
        }
    }

    /// The cutoff of `kind`: its events before it are deleted.
    pub fn before_ms(&self, kind: EventKind) -> i64 {
        self.by_kind
            .get(&kind)
            .copied()
            .unwrap_or(self.default_before_ms)
    }

    /// Whether an event of `kind` at `ts_ms` is deleted.
    pub fn deletes(&self, ts_ms: i64, kind: EventKind) -> bool {
        ts_ms < self.before_ms(kind)
    }

    /// The latest cutoff: no event at or after it is deleted, so a backend
    /// looks only at events before it.
    pub fn latest_ms(&self) -> i64 {
        self.by_kind
            .values()
            .copied()
            .fold(self.default_before_ms, i64::max)
    }

    /// Whether every kind has the same cutoff: then the deletion is one
    /// range of timestamps, whatever the kinds.
    pub fn is_uniform(&self) -> bool {
        self.by_kind.values().all(|&c| c == self.default_before_ms)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_back_from_its_name() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        let mut names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EventKind::ALL.len(), "names are unique");
        assert_eq!(EventKind::parse("unknown"), None);
        assert_eq!(EventKind::parse("Source_Connected"), None);
    }

    #[test]
    fn a_query_matches_its_half_open_range_and_its_kinds() {
        let mut q = EventQuery::since(100, 10);
        assert!(q.matches(100, EventKind::Unknown));
        assert!(q.matches(i64::MAX, EventKind::AlarmFired));
        assert!(!q.matches(99, EventKind::AlarmFired));
        q.to_ms = Some(200);
        assert!(q.matches(199, EventKind::AlarmFired));
        assert!(!q.matches(200, EventKind::AlarmFired));
        q.kinds = vec![EventKind::AlarmFired, EventKind::SourceConnected];
        assert!(q.matches(150, EventKind::SourceConnected));
        assert!(!q.matches(150, EventKind::AlarmResolved));
        assert!(!q.matches(150, EventKind::Unknown));
    }

    #[test]
    fn cutoffs_fall_back_to_the_default_and_know_their_latest() {
        let uniform = EventCutoffs::uniform(50);
        assert!(uniform.is_uniform());
        assert_eq!(uniform.latest_ms(), 50);
        let cutoffs = EventCutoffs {
            default_before_ms: 50,
            by_kind: BTreeMap::from([
                (EventKind::AlarmFired, 10),
                (EventKind::SourceConnected, 90),
            ]),
        };
        assert!(!cutoffs.is_uniform());
        assert_eq!(cutoffs.latest_ms(), 90);
        assert_eq!(cutoffs.before_ms(EventKind::Unknown), 50);
        assert!(cutoffs.deletes(49, EventKind::SpoolOverflow));
        assert!(!cutoffs.deletes(50, EventKind::SpoolOverflow));
        assert!(!cutoffs.deletes(10, EventKind::AlarmFired));
        assert!(cutoffs.deletes(89, EventKind::SourceConnected));
        let same = EventCutoffs {
            default_before_ms: 50,
            by_kind: BTreeMap::from([(EventKind::AlarmFired, 50)]),
        };
        assert!(same.is_uniform());
    }
}
