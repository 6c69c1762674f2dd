//! The delivery protocol's decisions, free of I/O (DESIGN §4).
//!
//! The federation receiver and the forwarder call these functions; the
//! model-based test below drives them through lost, duplicated and reordered
//! batches and acks, spool drops at the cap, crashes of either side and forged
//! batches, against a reference that counts exactly.
//!
//! Receiver, per source: `committed` is the highest seq durable in the store
//! (restored on restart), `received` the highest seq handed to the
//! aggregator (equal to `committed` after a restart). A new stream is welcomed
//! only once `received == committed`, with `committed` as the resume point.
//!
//! Sender: the spool holds every batch not yet acknowledged; after the
//! welcome it drops the batches the upstream has and sends the rest in order.
//!
//! What a batch's seq may be (docs/PROTOCOL.md, "Sequence rules"): at or
//! below `committed` (a resend: acked again, merged no second time), or
//! exactly `received + 1`. The one exception is the first batch of a stream
//! flagged `follows_dropped`: the sender's spool dropped the batches between
//! the welcome's `committed` and it at its cap, so it may skip up to
//! [`MAX_DROPPED_GAP`] seqs. No seq is ever above [`MAX_SEQ`]. Anything else
//! ends the stream and merges nothing, so no stream can move a source's
//! committed seq past what the source itself will send.

/// The highest seq a batch may carry. A source spools at most one batch per
/// flush (at least 10 ms apart), so 2^48 is 89 000 years of flushes; a seq
/// above it can only be forged, and refusing it keeps every seq arithmetic
/// far from overflow.
pub const MAX_SEQ: u64 = 1 << 48;

/// The most seqs one `follows_dropped` batch may skip: more batches than a
/// spool can drop in one outage (2^32 flushes are 497 days at the minimum
/// 10 ms flush interval, 136 years at the default 1 s).
pub const MAX_DROPPED_GAP: u64 = 1 << 32;

/// What the receiver knows about one incoming batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub seq: u64,
    /// The sender says its spool dropped the batches before this one.
    pub follows_dropped: bool,
    /// No batch has been judged on this stream before this one.
    pub first_on_stream: bool,
}

/// What the receiver does with one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Already committed: ack it again, merge nothing.
    Duplicate,
    /// The next batch: merge it, ack after commit. `lost` seqs before it
    /// were dropped by the source's spool at its cap (0: none).
    Accept { lost: u64 },
    /// A gap or a repeat of an uncommitted batch: end the stream so the
    /// source resumes from the committed seq.
    OutOfOrder { expected: u64 },
    /// A seq no correct source sends: end the stream, merge nothing.
    Refused(Refusal),
}

/// Why a seq is refused outright.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("seq {seq} is above the largest seq a source can reach ({MAX_SEQ})")]
    BeyondMaxSeq { seq: u64 },
    #[error(
        "seq {seq} skips {gap} seqs after {received} but is not the first batch of its stream: only a stream's first batch may follow dropped batches"
    )]
    GapMidStream { seq: u64, received: u64, gap: u64 },
    #[error(
        "seq {seq} skips {gap} seqs after {received}, more than a spool can drop ({MAX_DROPPED_GAP})"
    )]
    GapTooLarge { seq: u64, received: u64, gap: u64 },
}

/// Judges one batch given the source's committed and received seqs.
pub fn verdict(committed: u64, received: u64, batch: Incoming) -> Verdict {
    let seq = batch.seq;
    if seq <= committed {
        return Verdict::Duplicate;
    }
    if seq > MAX_SEQ {
        return Verdict::Refused(Refusal::BeyondMaxSeq { seq });
    }
    // `received` may exceed MAX_SEQ only in a record written before the
    // limit existed (the receiver resets such a record at the Hello).
    let expected = received.saturating_add(1);
    if seq == expected {
        return Verdict::Accept { lost: 0 };
    }
    if seq < expected || !batch.follows_dropped {
        return Verdict::OutOfOrder { expected };
    }
    let gap = seq - expected;
    if !batch.first_on_stream {
        Verdict::Refused(Refusal::GapMidStream { seq, received, gap })
    } else if gap > MAX_DROPPED_GAP {
        Verdict::Refused(Refusal::GapTooLarge { seq, received, gap })
    } else {
        Verdict::Accept { lost: gap }
    }
}

/// The sender's view of one stream: what was sent and acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendWindow {
    /// Highest seq the upstream acknowledged (on this stream or before).
    pub acked: u64,
    /// Highest seq sent on this stream.
    pub sent: u64,
    /// Nothing sent on this stream yet.
    fresh: bool,
}

/// An upstream answer that cannot be right.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("upstream committed seq {committed} but this node only ever spooled {spooled}")]
    AheadOfSpool { committed: u64, spooled: u64 },
    #[error("ack for seq {seq} never sent (sent up to {sent})")]
    AckNotSent { seq: u64, sent: u64 },
}

impl SendWindow {
    /// A stream welcomed with the upstream's committed seq.
    pub fn resume(
        committed: u64,
        acked_before: u64,
        spooled: u64,
    ) -> Result<SendWindow, WindowError> {
        if committed > spooled {
            return Err(WindowError::AheadOfSpool { committed, spooled });
        }
        Ok(SendWindow {
            acked: acked_before.max(committed),
            sent: committed,
            fresh: true,
        })
    }

    /// How many more batches may be sent now.
    pub fn room(&self, max_inflight: usize) -> usize {
        let inflight = self.sent.saturating_sub(self.acked) as usize;
        max_inflight.saturating_sub(inflight)
    }

    /// Records that `seq` (the next spooled batch) is being sent; returns the
    /// batch's `follows_dropped` flag.
    pub fn on_send(&mut self, seq: u64) -> bool {
        let follows_dropped = self.fresh && seq != self.sent + 1;
        self.fresh = false;
        self.sent = seq;
        follows_dropped
    }

    /// Records an ack; returns the newly acknowledged seq, if it advanced.
    pub fn on_ack(&mut self, seq: u64) -> Result<Option<u64>, WindowError> {
        if seq > self.sent {
            return Err(WindowError::AckNotSent {
                seq,
                sent: self.sent,
            });
        }
        if seq > self.acked {
            self.acked = seq;
            Ok(Some(seq))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet, VecDeque};

    fn first(seq: u64, follows_dropped: bool) -> Incoming {
        Incoming {
            seq,
            follows_dropped,
            first_on_stream: true,
        }
    }

    fn later(seq: u64, follows_dropped: bool) -> Incoming {
        Incoming {
            first_on_stream: false,
            ..first(seq, follows_dropped)
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(5, 5, later(3, false)), Verdict::Duplicate);
        assert_eq!(verdict(5, 5, later(5, false)), Verdict::Duplicate);
        assert_eq!(verdict(5, 5, later(5, true)), Verdict::Duplicate);
        assert_eq!(verdict(5, 5, later(6, false)), Verdict::Accept { lost: 0 });
        assert_eq!(verdict(5, 7, later(8, false)), Verdict::Accept { lost: 0 });
        assert_eq!(
            verdict(5, 7, later(7, false)),
            Verdict::OutOfOrder { expected: 8 }
        );
        assert_eq!(
            verdict(5, 7, later(9, false)),
            Verdict::OutOfOrder { expected: 8 }
        );
        assert_eq!(verdict(5, 5, first(9, true)), Verdict::Accept { lost: 3 });
        assert_eq!(
            verdict(5, 5, first(9, false)),
            Verdict::OutOfOrder { expected: 6 }
        );
    }

    #[test]
    fn a_gap_must_be_the_first_batch_of_its_stream_and_bounded() {
        assert_eq!(
            verdict(5, 7, later(9, true)),
            Verdict::Refused(Refusal::GapMidStream {
                seq: 9,
                received: 7,
                gap: 1
            })
        );
        let largest = 5 + 1 + MAX_DROPPED_GAP;
        assert_eq!(
            verdict(5, 5, first(largest, true)),
            Verdict::Accept {
                lost: MAX_DROPPED_GAP
            }
        );
        assert_eq!(
            verdict(5, 5, first(largest + 1, true)),
            Verdict::Refused(Refusal::GapTooLarge {
                seq: largest + 1,
                received: 5,
                gap: MAX_DROPPED_GAP + 1
            })
        );
    }

    #[test]
    fn the_poisoning_seq_is_refused_whatever_its_flags() {
        let poison = u64::MAX - 1;
        for batch in [
            first(poison, true),
            later(poison, true),
            first(poison, false),
        ] {
            assert_eq!(
                verdict(5, 5, batch),
                Verdict::Refused(Refusal::BeyondMaxSeq { seq: poison })
            );
        }
        assert_eq!(
            verdict(0, 0, first(MAX_SEQ + 1, true)),
            Verdict::Refused(Refusal::BeyondMaxSeq { seq: MAX_SEQ + 1 })
        );
        // A record poisoned before the limit existed does not overflow.
        assert_eq!(
            verdict(u64::MAX, u64::MAX, first(7, true)),
            Verdict::Duplicate
        );
        assert_eq!(
            verdict(3, u64::MAX, later(7, false)),
            Verdict::OutOfOrder { expected: u64::MAX }
        );
    }

    #[test]
    fn window() {
        let mut w = SendWindow::resume(3, 1, 10).unwrap();
        assert_eq!(w.acked, 3);
        assert_eq!(w.room(4), 4);
        assert!(!w.on_send(4));
        assert!(!w.on_send(5));
        assert_eq!(w.room(4), 2);
        assert_eq!(w.on_ack(4), Ok(Some(4)));
        assert_eq!(w.on_ack(4), Ok(None));
        assert!(w.on_ack(9).is_err());
        assert!(SendWindow::resume(11, 0, 10).is_err());
        let mut w = SendWindow::resume(3, 3, 10).unwrap();
        assert!(
            w.on_send(7),
            "a gap right after the welcome means the spool dropped batches"
        );
    }

    /// One step of the simulated world.
    #[derive(Clone, Debug)]
    enum Step {
        /// The source flushes a batch carrying `value` into its spool.
        Produce(u8),
        /// The source sends what its window allows.
        Send,
        /// The network delivers (or drops / duplicates / reorders) a message.
        DeliverBatch {
            pick: u8,
            drop: bool,
            dup: bool,
        },
        DeliverAck {
            pick: u8,
            drop: bool,
            dup: bool,
        },
        /// The upstream commits what it merged so far and queues acks.
        Commit,
        /// The stream breaks; in-flight messages are lost.
        Disconnect,
        /// The upstream crashes: uncommitted merges are lost.
        CrashUpstream,
        /// The source crashes: its window state is lost, its spool is not.
        CrashSource,
        /// The source's spool reaches its cap and drops its oldest batch
        /// (never the newest), whether or not it was sent.
        SpoolDrop,
        /// While the source is disconnected, a client holding its token and
        /// epoch opens a stream and sends a batch no correct source sends.
        Forge {
            kind: u8,
            by: u8,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => any::<u8>().prop_map(Step::Produce),
            3 => Just(Step::Send),
            4 => (any::<u8>(), prop::bool::weighted(0.1), prop::bool::weighted(0.1))
                .prop_map(|(pick, drop, dup)| Step::DeliverBatch { pick, drop, dup }),
            3 => (any::<u8>(), prop::bool::weighted(0.1), prop::bool::weighted(0.1))
                .prop_map(|(pick, drop, dup)| Step::DeliverAck { pick, drop, dup }),
            2 => Just(Step::Commit),
            1 => Just(Step::Disconnect),
            1 => Just(Step::CrashUpstream),
            1 => Just(Step::CrashSource),
            1 => Just(Step::SpoolDrop),
            1 => (any::<u8>(), any::<u8>()).prop_map(|(kind, by)| Step::Forge { kind, by }),
        ]
    }

    /// Durable and volatile state of both sides.
    #[derive(Default)]
    struct World {
        // Source: durable spool and last seq.
        spool: BTreeMap<u64, u64>,
        last_seq: u64,
        // Source: volatile.
        window: Option<SendWindow>,
        acked: u64,
        // Upstream: durable.
        committed: u64,
        total: u64,
        /// Times each seq was merged into `total`.
        merged: BTreeMap<u64, u32>,
        // Upstream: volatile (merged, not yet committed).
        received: u64,
        pending: Vec<(u64, u64)>,
        acks_to_send: Vec<u64>,
        /// No batch judged yet on the current stream.
        first_on_stream: bool,
        // Network of the current stream (reordering allowed by `pick`).
        to_upstream: VecDeque<(u64, u64, bool)>,
        to_source: VecDeque<u64>,
        connected: bool,
        // Reference: every value ever produced, by seq, and the seqs the
        // source's spool dropped at its cap.
        produced: BTreeMap<u64, u64>,
        dropped: BTreeSet<u64>,
    }

    impl World {
        /// A new stream reaches the upstream: welcomed once nothing is in flight.
        fn open_stream(&mut self) {
            if self.received != self.committed {
                self.commit();
            }
            self.first_on_stream = true;
        }

        fn connect(&mut self) {
            self.open_stream();
            let w = SendWindow::resume(self.committed, self.acked, self.last_seq).expect("welcome");
            self.spool.retain(|s, _| *s > w.acked);
            self.acked = w.acked;
            self.window = Some(w);
            self.connected = true;
        }

        fn disconnect(&mut self) {
            self.connected = false;
            self.window = None;
            self.to_upstream.clear();
            self.to_source.clear();
            self.acks_to_send.clear();
        }

        fn commit(&mut self) {
            for (seq, v) in self.pending.drain(..) {
                self.total += v;
                *self.merged.entry(seq).or_default() += 1;
                self.committed = seq;
                if self.connected {
                    self.acks_to_send.push(seq);
                }
            }
            self.to_source.extend(self.acks_to_send.drain(..));
        }

        fn send(&mut self) {
            if !self.connected {
                self.connect();
            }
            let Some(w) = self.window.as_mut() else {
                return;
            };
            let room = w.room(4);
            let batches: Vec<(u64, u64)> = self
                .spool
                .range(w.sent + 1..)
                .take(room)
                .map(|(s, v)| (*s, *v))
                .collect();
            for (seq, v) in batches {
                let follows_dropped = w.on_send(seq);
                self.to_upstream.push_back((seq, v, follows_dropped));
            }
        }

        /// The receiver judges one batch of the current stream; false ends it.
        fn receive(&mut self, seq: u64, v: u64, follows_dropped: bool) -> bool {
            let incoming = Incoming {
                seq,
                follows_dropped,
                first_on_stream: self.first_on_stream,
            };
            self.first_on_stream = false;
            match verdict(self.committed, self.received, incoming) {
                Verdict::Duplicate => {
                    self.to_source.push_back(seq);
                    true
                }
                Verdict::Accept { lost } => {
                    // A gap only ever skips batches the source's spool dropped.
                    for s in self.received + 1..seq {
                        assert!(
                            self.dropped.contains(&s),
                            "gap skipped seq {s}, never dropped"
                        );
                    }
                    assert_eq!(lost, seq - self.received - 1);
                    self.received = seq;
                    self.pending.push((seq, v));
                    true
                }
                Verdict::OutOfOrder { .. } | Verdict::Refused(_) => false,
            }
        }

        /// A forged batch on the attacker's own stream: it must be refused
        /// and change nothing at the upstream.
        fn forge(&mut self, kind: u8, by: u8) {
            self.disconnect();
            self.open_stream();
            let by = u64::from(by);
            let before = (self.committed, self.received, self.pending.len());
            let forged = match kind % 4 {
                0 => Some((MAX_SEQ + 1 + by, true)),
                1 => Some((u64::MAX - 1 - by, by % 2 == 0)),
                2 => Some((self.received + 2 + MAX_DROPPED_GAP + by, true)),
                // A gap after a first (duplicate) batch: only with something to duplicate.
                _ => (self.committed > 0).then(|| {
                    assert!(self.receive(self.committed, 0, false), "a resend is acked");
                    (self.received + 2 + by, true)
                }),
            };
            if let Some((seq, follows_dropped)) = forged {
                assert!(
                    !self.receive(seq, 1_000_000, follows_dropped),
                    "forged seq {seq} (follows_dropped {follows_dropped}) was accepted"
                );
            }
            assert_eq!(before, (self.committed, self.received, self.pending.len()));
            self.disconnect();
        }

        fn apply(&mut self, step: &Step) {
            match step {
                Step::Produce(v) => {
                    self.last_seq += 1;
                    self.spool.insert(self.last_seq, u64::from(*v));
                    self.produced.insert(self.last_seq, u64::from(*v));
                }
                Step::Send => self.send(),
                Step::DeliverBatch { pick, drop, dup } => {
                    if self.to_upstream.is_empty() {
                        return;
                    }
                    let i = usize::from(*pick) % self.to_upstream.len();
                    let Some((seq, v, fd)) = self.to_upstream.remove(i) else {
                        return;
                    };
                    if *dup {
                        self.to_upstream.push_back((seq, v, fd));
                    }
                    if !*drop && !self.receive(seq, v, fd) {
                        self.disconnect();
                    }
                }
                Step::DeliverAck { pick, drop, dup } => {
                    if self.to_source.is_empty() {
                        return;
                    }
                    let i = usize::from(*pick) % self.to_source.len();
                    let Some(seq) = self.to_source.remove(i) else {
                        return;
                    };
                    if *dup {
                        self.to_source.push_back(seq);
                    }
                    if *drop {
                        return;
                    }
                    if let Some(w) = self.window.as_mut() {
                        match w.on_ack(seq) {
                            Ok(Some(a)) => {
                                self.acked = a;
                                self.spool.retain(|s, _| *s > a);
                            }
                            Ok(None) => {}
                            Err(_) => self.disconnect(),
                        }
                    }
                }
                Step::Commit => self.commit(),
                Step::Disconnect => self.disconnect(),
                Step::CrashUpstream => {
                    self.disconnect();
                    self.pending.clear();
                    self.received = self.committed;
                }
                Step::CrashSource => {
                    self.disconnect();
                    // Restart: acked is what the spool says (batches before it are gone).
                    self.acked = self.spool.keys().next().map_or(self.last_seq, |s| s - 1);
                }
                Step::SpoolDrop => {
                    if self.spool.len() > 1
                        && let Some((seq, _)) = self.spool.pop_first()
                    {
                        self.dropped.insert(seq);
                    }
                }
                Step::Forge { kind, by } => self.forge(*kind, *by),
            }
            self.check();
        }

        /// At every step: no batch counted twice, and the total is exactly
        /// the batches merged.
        fn check(&self) {
            if let Some((seq, n)) = self.merged.iter().find(|(_, n)| **n > 1) {
                panic!("seq {seq} merged {n} times");
            }
            let reference: u64 = self.merged.keys().map(|s| self.produced[s]).sum();
            assert_eq!(
                self.total, reference,
                "committed total diverged at seq {}",
                self.committed
            );
        }

        /// No more faults: run until everything is delivered.
        fn settle(&mut self) {
            for _ in 0..10_000 {
                if self.committed == self.last_seq && self.spool.is_empty() {
                    return;
                }
                let before = (self.committed, self.acked);
                self.send();
                while let Some((seq, v, fd)) = self.to_upstream.pop_front() {
                    if !self.receive(seq, v, fd) {
                        self.disconnect();
                        break;
                    }
                }
                self.commit();
                while let Some(seq) = self.to_source.pop_front() {
                    if let Some(w) = self.window.as_mut()
                        && let Ok(Some(a)) = w.on_ack(seq)
                    {
                        self.acked = a;
                        self.spool.retain(|s, _| *s > a);
                    }
                }
                if (self.committed, self.acked) == before {
                    // A batch or ack was lost in transit: the forwarder's ack
                    // timeout ends the stream and the next one resumes.
                    self.disconnect();
                }
            }
            panic!(
                "did not settle: committed {} of {}",
                self.committed, self.last_seq
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Random loss, duplication and reordering of batches and acks,
        /// spool drops at the cap, crashes of either side and forged batches:
        /// at every step no batch is counted twice and the upstream's total
        /// is exactly what it merged; once faults stop, every batch the spool
        /// did not drop is merged exactly once, and a forged seq never moved
        /// the upstream.
        #[test]
        fn delivery_is_exactly_once_in_effect(steps in prop::collection::vec(step(), 1..300)) {
            let mut world = World::default();
            for s in &steps {
                world.apply(s);
            }
            world.settle();
            world.check();
            prop_assert_eq!(world.committed, world.last_seq);
            for (seq, value) in &world.produced {
                let merged = world.merged.get(seq).copied().unwrap_or(0);
                prop_assert!(
                    merged == 1 || (merged == 0 && world.dropped.contains(seq)),
                    "seq {} (value {}) merged {} times, dropped: {}",
                    seq, value, merged, world.dropped.contains(seq)
                );
            }
        }
    }
}
