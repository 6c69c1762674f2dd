//! Live view of the downstream sources that forward to this node.
//!
//! The federation receiver and the commit writer share one [`SourceLive`] per
//! source: the receiver advances `received` as it hands batches to the
//! aggregator, the writer advances `committed` once a flush holding them is in
//! the store. A reconnecting source is welcomed only when both are equal, so a
//! batch still in flight from its previous stream can never be merged twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use strata_store::SourceProgress;
use tokio::sync::watch;

use crate::config::DownstreamConfig;

/// How the API and the event log name an epoch: 8 hex digits of a hash of
/// it. Two different fingerprints are two different epochs, yet the
/// fingerprint leaves 32 of the epoch's 64 bits unknown: together with the
/// source's token the epoch is what continues its stream (PROTOCOL.md), so
/// it is never shown whole outside the logs.
pub fn epoch_fingerprint(epoch: u64) -> String {
    // FNV-1a over the little-endian bytes, folded to 32 bits: fixed across
    // versions, unlike std's hashers.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in epoch.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", (h ^ (h >> 32)) as u32)
}

/// One downstream source.
#[derive(Debug)]
pub struct SourceLive {
    pub id: String,
    /// Epoch of the source's durable state the counters below refer to.
    epoch: AtomicU64,
    /// Highest seq handed to the aggregator.
    received: AtomicU64,
    /// Highest seq committed to the store; watched by a reconnecting stream.
    committed: watch::Sender<u64>,
    /// The source's watermark as of its highest committed batch.
    pub watermark_ms: AtomicI64,
    pub last_seen_ms: AtomicI64,
    /// Set while a stream holds the id, so a second stream claiming it is refused.
    connected: AtomicBool,
    pub batches: AtomicU64,
    pub increments: AtomicU64,
    pub duplicates: AtomicU64,
    /// Increments that came in for a minute already complete here.
    pub late_after_complete: AtomicU64,
    /// Serialises epoch changes against the stream that owns the id.
    epoch_lock: Mutex<()>,
}

impl SourceLive {
    fn new(id: &str, progress: Option<&SourceProgress>) -> Self {
        let (committed, _) = watch::channel(progress.map_or(0, |p| p.seq));
        SourceLive {
            id: id.to_string(),
            epoch: AtomicU64::new(progress.map_or(0, |p| p.epoch)),
            received: AtomicU64::new(progress.map_or(0, |p| p.seq)),
            committed,
            watermark_ms: AtomicI64::new(progress.map_or(0, |p| p.watermark_ms)),
            last_seen_ms: AtomicI64::new(progress.map_or(0, |p| p.last_seen_ms)),
            connected: AtomicBool::new(false),
            batches: AtomicU64::new(0),
            increments: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            late_after_complete: AtomicU64::new(0),
            epoch_lock: Mutex::new(()),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    pub fn set_received(&self, seq: u64) {
        self.received.store(seq, Ordering::Release);
    }

    pub fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Called by the commit writer once `seq` (of `epoch`) is durable.
    pub fn mark_committed(&self, epoch: u64, seq: u64, watermark_ms: i64) {
        if epoch != self.epoch() {
            return;
        }
        self.committed.send_if_modified(|c| {
            if seq > *c {
                *c = seq;
                true
            } else {
                false
            }
        });
        self.watermark_ms.fetch_max(watermark_ms, Ordering::AcqRel);
    }

    /// Waits until every batch handed to the aggregator is committed.
    pub async fn drained(&self) {
        let mut rx = self.committed.subscribe();
        let _ = rx.wait_for(|c| *c >= self.received()).await;
    }

    /// Switches to a new epoch (the source lost its durable state): its seqs restart.
    /// Only valid while nothing is in flight.
    pub fn reset_epoch(&self, epoch: u64) {
        let _g = self.epoch_lock.lock();
        self.epoch.store(epoch, Ordering::Release);
        self.received.store(0, Ordering::Release);
        self.committed.send_replace(0);
    }

    /// Claims the id for one stream; `None` if another stream holds it.
    pub fn claim(self: &Arc<Self>) -> Option<Claim> {
        self.connected
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Claim(self.clone()))
    }
}

/// Holds a source's id for one stream; releases it when dropped.
#[derive(Debug)]
pub struct Claim(Arc<SourceLive>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.connected.store(false, Ordering::Release);
    }
}

/// Every source this node knows: declared in config or restored from the store.
///
/// Expected sources (those completeness waits for) are the declared ones plus
/// any source the store remembers that is no longer declared but was seen
/// within `source_ttl_ms`: a decommissioned region stops blocking
/// completeness once it has been silent that long.
#[derive(Debug)]
pub struct Sources {
    declared: Vec<DownstreamConfig>,
    live: RwLock<HashMap<String, Arc<SourceLive>>>,
    source_ttl_ms: i64,
}

impl Sources {
    pub fn new(
        declared: Vec<DownstreamConfig>,
        restored: Vec<SourceProgress>,
        source_ttl_ms: i64,
    ) -> Self {
        let mut live = HashMap::new();
        for d in &declared {
            let p = restored.iter().find(|p| p.source_id == d.id);
            live.insert(d.id.clone(), Arc::new(SourceLive::new(&d.id, p)));
        }
        for p in &restored {
            live.entry(p.source_id.clone())
                .or_insert_with(|| Arc::new(SourceLive::new(&p.source_id, Some(p))));
        }
        Sources {
            declared,
            live: RwLock::new(live),
            source_ttl_ms,
        }
    }

    /// The token a source must present, if it is declared.
    pub fn token_of(&self, id: &str) -> Option<&str> {
        self.declared
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.token.as_str())
    }

    pub fn get(&self, id: &str) -> Option<Arc<SourceLive>> {
        self.live.read().get(id).cloned()
    }

    /// Sources whose watermarks decide completeness, sorted by id.
    pub fn expected(&self) -> Vec<Arc<SourceLive>> {
        self.expected_at(crate::context::now_ms())
    }

    fn expected_at(&self, now_ms: i64) -> Vec<Arc<SourceLive>> {
        let live = self.live.read();
        let mut out: Vec<_> = live
            .values()
            .filter(|s| {
                self.token_of(&s.id).is_some()
                    || now_ms - s.last_seen_ms.load(Ordering::Relaxed) <= self.source_ttl_ms
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn all(&self) -> Vec<Arc<SourceLive>> {
        let mut v: Vec<_> = self.live.read().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

/// Completeness of one query point (DESIGN §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completeness {
    pub complete: bool,
    pub sources: usize,
    pub expected_sources: usize,
}

/// How far this node and its expected sources have flushed, for completeness.
#[derive(Clone, Debug)]
pub struct Watermarks {
    /// Instant up to which this node has committed everything it saw itself.
    pub own_ms: i64,
    /// Watermark of each expected downstream source.
    pub sources: Vec<i64>,
}

impl Watermarks {
    /// Whether everything up to `end_ms` is in: every expected source's
    /// watermark and this node's own flush have passed it. A node with no
    /// downstream sources counts itself as its one source.
    pub fn completeness(&self, end_ms: i64) -> Completeness {
        if self.sources.is_empty() {
            let done = self.own_ms >= end_ms;
            return Completeness {
                complete: done,
                sources: usize::from(done),
                expected_sources: 1,
            };
        }
        let sources = self.sources.iter().filter(|w| **w >= end_ms).count();
        Completeness {
            complete: sources == self.sources.len() && self.own_ms >= end_ms,
            sources,
            expected_sources: self.sources.len(),
        }
    }

    /// The watermark this node forwards: it has everything before it from
    /// itself and from every expected source.
    pub fn forwarded(&self) -> i64 {
        self.sources.iter().copied().fold(self.own_ms, i64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completeness_needs_every_expected_source() {
        let w = Watermarks {
            own_ms: 200,
            sources: vec![150, 90],
        };
        assert_eq!(
            w.completeness(100),
            Completeness {
                complete: false,
                sources: 1,
                expected_sources: 2
            }
        );
        assert_eq!(
            w.completeness(90),
            Completeness {
                complete: true,
                sources: 2,
                expected_sources: 2
            }
        );
        assert_eq!(w.forwarded(), 90);
        let edge = Watermarks {
            own_ms: 200,
            sources: vec![],
        };
        assert!(edge.completeness(200).complete);
        assert!(!edge.completeness(201).complete);
        assert_eq!(edge.forwarded(), 200);
    }

    fn progress(id: &str, last_seen_ms: i64) -> SourceProgress {
        SourceProgress {
            source_id: id.into(),
            epoch: 1,
            seq: 4,
            watermark_ms: 10,
            last_seen_ms,
        }
    }

    #[test]
    fn undeclared_sources_expire_after_the_ttl() {
        let declared = vec![DownstreamConfig {
            id: "eu".into(),
            token: "t".into(),
        }];
        let s = Sources::new(
            declared,
            vec![progress("eu", 0), progress("retired", 1_000)],
            500,
        );
        let ids = |v: Vec<Arc<SourceLive>>| v.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(s.expected_at(1_400)), ["eu", "retired"]);
        assert_eq!(ids(s.expected_at(1_501)), ["eu"]);
        assert_eq!(s.get("retired").unwrap().committed(), 4);
        assert!(
            s.token_of("retired").is_none(),
            "an undeclared source cannot connect"
        );
    }

    #[test]
    fn epoch_fingerprints_are_stable_and_do_not_show_the_epoch() {
        let epoch = 0x0123_4567_89ab_cdef_u64;
        let f = epoch_fingerprint(epoch);
        assert_eq!(f, epoch_fingerprint(epoch));
        assert_eq!(f.len(), 8);
        assert_ne!(f, epoch_fingerprint(epoch + 1));
        assert!(!format!("{epoch}{epoch:x}").contains(&f));
    }

    #[test]
    fn a_second_claim_is_refused_until_the_first_is_dropped() {
        let s = Arc::new(SourceLive::new("a", None));
        let first = s.claim().unwrap();
        assert!(s.claim().is_none());
        drop(first);
        assert!(s.claim().is_some());
    }

    #[test]
    fn committed_only_moves_forward_within_the_epoch() {
        let s = SourceLive::new("a", None);
        s.reset_epoch(7);
        s.mark_committed(7, 3, 10);
        s.mark_committed(7, 2, 5);
        assert_eq!(s.committed(), 3);
        s.mark_committed(8, 9, 10);
        assert_eq!(s.committed(), 3);
        assert_eq!(s.watermark_ms.load(Ordering::Relaxed), 10);
    }
}
