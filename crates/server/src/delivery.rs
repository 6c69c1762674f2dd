//! The delivery protocol's decisions, free of I/O (DESIGN §4).
//!
//! The federation receiver and the forwarder call these functions; the
//! model-based test below drives them through lost, duplicated and reordered
//! batches and acks and crashes of either side, against a reference that
//! counts exactly.
//!
//! Receiver, per source: `committed` is the highest seq durable in the store
//! (restored on restart), `received` the highest seq handed to the
//! aggregator (equal to `committed` after a restart). A new stream is welcomed
//! only once `received == committed`, with `committed` as the resume point.
//!
//! Sender: the spool holds every batch not yet acknowledged; after the
//! welcome it drops the batches the upstream has and sends the rest in order.

/// What the receiver does with one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Already committed: ack it again, merge nothing.
    Duplicate,
    /// The next batch: merge it, ack after commit.
    Accept,
    /// A gap or a repeat of an uncommitted batch: end the stream so the
    /// source resumes from the committed seq.
    OutOfOrder { expected: u64 },
}

/// Judges batch `seq` given the source's committed and received seqs.
/// `follows_dropped` marks the first batch after the source's spool dropped
/// batches at its cap: a gap before it is accepted (those batches are gone).
pub fn verdict(committed: u64, received: u64, seq: u64, follows_dropped: bool) -> Verdict {
    if seq <= committed {
        Verdict::Duplicate
    } else if seq == received + 1 || (follows_dropped && seq > received + 1) {
        Verdict::Accept
    } else {
        Verdict::OutOfOrder {
            expected: received + 1,
        }
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
    use std::collections::{BTreeMap, VecDeque};

    #[test]
    fn verdicts() {
        assert_eq!(verdict(5, 5, 3, false), Verdict::Duplicate);
        assert_eq!(verdict(5, 5, 5, false), Verdict::Duplicate);
        assert_eq!(verdict(5, 5, 6, false), Verdict::Accept);
        assert_eq!(verdict(5, 7, 8, false), Verdict::Accept);
        assert_eq!(verdict(5, 7, 7, false), Verdict::OutOfOrder { expected: 8 });
        assert_eq!(verdict(5, 7, 9, false), Verdict::OutOfOrder { expected: 8 });
        assert_eq!(verdict(5, 5, 9, true), Verdict::Accept);
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
        // Upstream: volatile (merged, not yet committed).
        received: u64,
        pending: Vec<(u64, u64)>,
        acks_to_send: Vec<u64>,
        // Network of the current stream (reordering allowed by `pick`).
        to_upstream: VecDeque<(u64, u64, bool)>,
        to_source: VecDeque<u64>,
        connected: bool,
        // Reference: every value ever produced, by seq.
        produced: BTreeMap<u64, u64>,
    }

    impl World {
        fn connect(&mut self) {
            // A new stream is welcomed only when nothing is in flight.
            if self.received != self.committed {
                self.commit();
            }
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

        fn receive(&mut self, seq: u64, v: u64, follows_dropped: bool) -> bool {
            match verdict(self.committed, self.received, seq, follows_dropped) {
                Verdict::Duplicate => {
                    self.to_source.push_back(seq);
                    true
                }
                Verdict::Accept => {
                    self.received = seq;
                    self.pending.push((seq, v));
                    true
                }
                Verdict::OutOfOrder { .. } => false,
            }
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
            }
            // Invariant at every step: nothing counted twice.
            let reference: u64 = self.produced.range(..=self.committed).map(|(_, v)| v).sum();
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

        /// Random loss, duplication and reordering of batches and acks, and
        /// crashes of either side: the upstream's total equals the reference
        /// at every step (never double) and, once faults stop, exactly.
        #[test]
        fn delivery_is_exactly_once_in_effect(steps in prop::collection::vec(step(), 1..300)) {
            let mut world = World::default();
            for s in &steps {
                world.apply(s);
            }
            world.settle();
            let expected: u64 = world.produced.values().sum();
            prop_assert_eq!(world.total, expected);
            prop_assert_eq!(world.committed, world.last_seq);
        }
    }
}
