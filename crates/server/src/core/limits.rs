//! The gRPC message limits of a node's federation link, and the check that
//! keeps every admitted increment forwardable.
//!
//! A federation batch larger than one message is sent in parts (see
//! docs/PROTOCOL.md), but one increment is never split: an increment, its
//! series named in full, must fit in one message of the smaller of this node's
//! `grpc.max_message_bytes` and its upstream's (announced in the Welcome).
//! Inputs refuse a series that could never fit, naming the limit, instead of
//! accepting what the forwarder could not send.

use std::sync::atomic::{AtomicUsize, Ordering};

use strata_model::{Kind, SeriesKey};

/// This node's message limit and, once known, its upstream's.
#[derive(Debug)]
pub struct MessageLimits {
    /// This node's `grpc.max_message_bytes`: bounds every message it sends or receives.
    own: usize,
    /// What the upstream announced in its last Welcome; 0 before one, or from an
    /// upstream that announces none.
    upstream: AtomicUsize,
    /// A histogram's largest state depends on its digits.
    histogram_sigfig: u8,
}

impl MessageLimits {
    pub fn new(own: usize, histogram_sigfig: u8) -> MessageLimits {
        MessageLimits {
            own,
            upstream: AtomicUsize::new(0),
            histogram_sigfig,
        }
    }

    /// This node's `grpc.max_message_bytes`.
    pub fn own(&self) -> usize {
        self.own
    }

    /// Records the limit the upstream announced (0: none).
    pub fn set_upstream(&self, bytes: usize) {
        self.upstream.store(bytes, Ordering::Relaxed);
    }

    /// The limit every message on the link must fit, and whose it is.
    pub fn link(&self) -> (usize, &'static str) {
        match self.upstream.load(Ordering::Relaxed) {
            up if up != 0 && up < self.own => (up, "the upstream's"),
            _ => (self.own, "this node's"),
        }
    }

    /// Checks that one increment of `series`, whatever its state grows to, fits in
    /// one message of the link; the error names the limit.
    pub fn check(&self, series: &SeriesKey, kind: Kind) -> Result<(), String> {
        let need = strata_proto::max_increment_message_len(series, kind, self.histogram_sigfig);
        let (limit, whose) = self.link();
        if need <= limit {
            return Ok(());
        }
        let mut name = series.to_string();
        if name.len() > 120 {
            let cut = (0..=117)
                .rev()
                .find(|&i| name.is_char_boundary(i))
                .unwrap_or(0);
            name.truncate(cut);
            name.push_str("...");
        }
        Err(format!(
            "series {name} needs up to {need} bytes in one message, over {whose} limit of {limit} bytes (grpc.max_message_bytes): it could never be forwarded"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(label_bytes: usize) -> SeriesKey {
        SeriesKey::new("requests", [("blob".to_string(), "x".repeat(label_bytes))])
            .expect("valid series")
    }

    #[test]
    fn the_smaller_limit_of_the_link_decides() {
        let limits = MessageLimits::new(100_000, 2);
        assert_eq!(limits.link(), (100_000, "this node's"));
        assert!(limits.check(&series(90_000), Kind::Counter).is_ok());
        limits.set_upstream(65_536);
        let err = limits
            .check(&series(90_000), Kind::Counter)
            .expect_err("over the upstream's limit");
        assert!(
            err.contains("the upstream's limit of 65536 bytes (grpc.max_message_bytes)"),
            "{err}"
        );
        assert!(err.len() < 400, "the series is abbreviated: {err}");
        // A larger upstream does not raise this node's own limit.
        limits.set_upstream(1 << 30);
        assert_eq!(limits.link(), (100_000, "this node's"));
    }

    #[test]
    fn a_histogram_needs_room_for_its_largest_state() {
        let limits = MessageLimits::new(65_536, 2);
        assert!(limits.check(&series(1000), Kind::Histogram).is_ok());
        assert!(limits.check(&series(20_000), Kind::Counter).is_ok());
        assert!(limits.check(&series(20_000), Kind::Histogram).is_err());
    }
}
