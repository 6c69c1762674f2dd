//! Connection slots: the bound on a listener's connections, and which
//! connection makes room for a new one when the bound is reached.
//!
//! Every accepted connection takes a [`Slot`] until it closes. While fewer
//! than `max_connections` slots are taken, a new connection simply takes one.
//! At the bound, the *oldest connection that carries no request* is evicted
//! to make room: one still in its TLS handshake (or, on the gRPC port, before
//! its HTTP/2 preface), or an HTTP/1.1 connection between requests (idle
//! keep-alive, or still trickling a request's headers). A connection
//! serving a request, and an established gRPC connection, is never evicted;
//! when every slot is such a connection, the new one is closed at once.
//!
//! So idle or slow connections cannot lock a node out: the next client to
//! connect takes the place of the oldest of them, and a health check or a
//! query still gets in. An evicted connection is closed by its task as soon
//! as it sees the eviction; until then it is counted apart, and at most
//! `max_connections` of those are pending, so the sockets a listener holds
//! stay bounded (by twice the bound). When that many are pending (a burst
//! of connections), the accept loop waits for them to close — at most
//! [`EVICTION_WAIT`] — before taking the next connection.
//!
//! Eviction and the start of a request race for the same connection; each is
//! one compare-and-swap on the slot's state, so exactly one wins: an evicted
//! connection never starts a request, and a connection with a request in
//! progress is never evicted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// Before the connection is ready to serve: TLS handshake, HTTP/2 preface.
const PREPARING: u8 = 0;
/// Ready, no request in progress (HTTP/1.1 between requests).
const IDLE: u8 = 1;
/// A request is being served.
const BUSY: u8 = 2;
/// Handed to the gRPC server: multiplexed streams, never evicted.
const SERVED: u8 = 3;
/// Evicted (or the listener is stopping): close without serving anything.
const EVICTED: u8 = 4;

/// How long the accept loop waits for pending evictions to close before it
/// gives up on the new connection.
pub const EVICTION_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often at most a listener logs that it is at its bound.
const WARN_EVERY_MS: i64 = 10_000;

/// The slots of one listener.
pub struct Slots {
    /// `http` or `grpc`: names the listener in logs.
    listener: &'static str,
    /// `http.max_connections` / `grpc.max_connections`.
    max: usize,
    inner: Mutex<Inner>,
    /// Notified when an evicted connection closes.
    drained: tokio::sync::Notify,
    /// When the bound was last logged, so a flood logs once per interval.
    last_warned_ms: AtomicI64,
}

/// Why a new connection gets no slot.
#[derive(Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// Every connection is serving a request (or is an established gRPC
    /// connection): nothing can be evicted.
    Busy,
    /// As many evicted connections as the bound are still closing.
    Evicting,
}

#[derive(Default)]
struct Inner {
    /// Ids grow with time: the first entry is the oldest connection.
    next_id: u64,
    live: BTreeMap<u64, Arc<SlotState>>,
    /// Evicted connections whose task has not closed them yet.
    evicting: usize,
}

/// What a connection and its listener share.
pub struct SlotState {
    state: AtomicU8,
    /// Cancelled when the connection is evicted.
    evicted: CancellationToken,
}

/// A taken slot; dropping it (the connection closed) frees it.
pub struct Slot {
    id: u64,
    state: Arc<SlotState>,
    slots: Arc<Slots>,
}

impl Slots {
    pub fn new(listener: &'static str, max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            listener,
            max: max.max(1),
            inner: Mutex::new(Inner::default()),
            drained: tokio::sync::Notify::new(),
            last_warned_ms: AtomicI64::new(i64::MIN),
        })
    }

    /// A slot for a new connection, evicting the oldest connection without a
    /// request when the listener is at its bound, waiting (up to
    /// [`EVICTION_WAIT`]) while too many evicted connections are still
    /// closing. `Err` when the new connection must be closed.
    pub async fn admit_or_wait(self: &Arc<Self>) -> Result<Slot, NoSlot> {
        let deadline = tokio::time::Instant::now() + EVICTION_WAIT;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            match self.admit() {
                Err(NoSlot::Evicting) => {
                    if tokio::time::timeout_at(deadline, drained).await.is_err() {
                        return Err(NoSlot::Evicting);
                    }
                }
                admitted => return admitted,
            }
        }
    }

    /// A slot for a new connection, evicting the oldest connection without a
    /// request when the listener is at its bound.
    pub fn admit(self: &Arc<Self>) -> Result<Slot, NoSlot> {
        let mut inner = self.inner.lock();
        if inner.live.len() >= self.max {
            self.warn_at_bound(inner.live.len());
            if inner.evicting >= self.max {
                return Err(NoSlot::Evicting);
            }
            let victim = inner
                .live
                .iter()
                .find(|(_, s)| s.try_evict())
                .map(|(id, _)| *id)
                .ok_or(NoSlot::Busy)?;
            inner.live.remove(&victim);
            inner.evicting += 1;
            tracing::debug!(
                listener = self.listener,
                "connection limit reached: evicted the oldest connection without a request"
            );
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let state = Arc::new(SlotState {
            state: AtomicU8::new(PREPARING),
            evicted: CancellationToken::new(),
        });
        inner.live.insert(id, state.clone());
        Ok(Slot {
            id,
            state,
            slots: self.clone(),
        })
    }

    /// Connections holding a slot, and evicted ones not closed yet.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.live.len(), inner.evicting)
    }

    fn warn_at_bound(&self, live: usize) {
        let now = crate::context::now_ms();
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .last_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                listener = self.listener,
                connections = live,
                max_connections = self.max,
                "connection limit reached: new connections replace idle ones or are closed"
            );
        }
    }
}

impl SlotState {
    /// Marks the connection evicted if it carries no request.
    fn try_evict(&self) -> bool {
        for from in [PREPARING, IDLE] {
            if self
                .state
                .compare_exchange(from, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.evicted.cancel();
                return true;
            }
        }
        false
    }

    /// The connection is ready to serve HTTP/1.1 requests; `false` if it was
    /// evicted meanwhile.
    pub fn ready(&self) -> bool {
        self.state
            .compare_exchange(PREPARING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The connection is handed to the gRPC server for good; `false` if it
    /// was evicted meanwhile.
    pub fn served(&self) -> bool {
        self.state
            .compare_exchange(PREPARING, SERVED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A request starts; `false` if the connection was evicted (the request
    /// must not run).
    pub fn begin_request(&self) -> bool {
        self.state
            .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The request's answer is ready: the connection is idle again.
    pub fn end_request(&self) {
        let _ = self
            .state
            .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }

    /// At shutdown: an idle connection is closed at once (`true`); one with
    /// a request in progress finishes it first (`false`).
    pub fn close_if_idle(&self) -> bool {
        self.try_evict() || self.state.load(Ordering::Acquire) == EVICTED
    }

    /// Resolves when the connection is evicted.
    pub fn evicted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.evicted.cancelled()
    }
}

impl Slot {
    /// What the connection's task and its requests watch.
    pub fn state(&self) -> &Arc<SlotState> {
        &self.state
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.inner.lock();
        if inner.live.remove(&self.id).is_none() {
            inner.evicting = inner.evicting.saturating_sub(1);
            self.slots.drained.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_bound_the_oldest_connection_without_a_request_makes_room() {
        let slots = Slots::new("test", 3);
        let a = slots.admit().expect("room");
        let b = slots.admit().expect("room");
        let c = slots.admit().expect("room");
        // a serves a request, b is idle between requests, c is handshaking.
        assert!(a.state().ready() && a.state().begin_request());
        assert!(b.state().ready());
        let d = slots.admit().expect("b makes room");
        assert!(b.state().evicted.is_cancelled());
        assert!(!a.state().evicted.is_cancelled());
        assert!(
            !b.state().begin_request(),
            "an evicted connection serves nothing"
        );
        assert_eq!(slots.counts(), (3, 1));
        drop(b);
        assert_eq!(slots.counts(), (3, 0));
        // c (handshaking) is now the oldest evictable one.
        let e = slots.admit().expect("c makes room");
        assert!(c.state().evicted.is_cancelled());
        assert!(!c.state().ready());
        drop(c);
        // d is handed to the gRPC server: e (handshaking) goes instead.
        assert!(d.state().served());
        let f = slots.admit().expect("e makes room");
        assert!(e.state().evicted.is_cancelled());
        assert!(!d.state().evicted.is_cancelled());
        // a is busy, d and f are served: nothing can make room.
        assert!(f.state().served());
        assert_eq!(slots.admit().err(), Some(NoSlot::Busy));
        a.state().end_request();
        assert!(slots.admit().is_ok(), "a is idle again");
    }

    #[test]
    fn a_busy_connection_is_not_closed_at_shutdown_until_its_request_ends() {
        let slots = Slots::new("test", 2);
        let a = slots.admit().expect("room");
        assert!(a.state().ready() && a.state().begin_request());
        assert!(!a.state().close_if_idle());
        a.state().end_request();
        assert!(a.state().close_if_idle());
        assert!(a.state().close_if_idle(), "asking twice says the same");
    }

    #[test]
    fn pending_evictions_are_bounded() {
        let slots = Slots::new("test", 1);
        let mut kept = Vec::new();
        kept.push(slots.admit().expect("room"));
        // Each new connection evicts the previous one, which is not closed
        // yet: one pending eviction is the most allowed.
        kept.push(slots.admit().expect("evicts the first"));
        assert_eq!(
            slots.admit().err(),
            Some(NoSlot::Evicting),
            "two sockets for a bound of one"
        );
        kept.remove(0);
        assert!(slots.admit().is_ok());
    }

    #[tokio::test]
    async fn a_burst_waits_for_evicted_connections_to_close_then_gives_up() {
        let slots = Slots::new("test", 1);
        let first = slots.admit().expect("room");
        let second = slots.admit().expect("evicts the first");
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.admit_or_wait().await }
        });
        tokio::task::yield_now().await;
        drop(first);
        let third = waiting.await.expect("the waiter");
        assert!(third.is_ok(), "the first closed: room for a third");
        // `second` was evicted by the waiter and is still open: the next
        // connection waits for it, and gives up when it stays open.
        let started = std::time::Instant::now();
        assert_eq!(slots.admit_or_wait().await.err(), Some(NoSlot::Evicting));
        assert!(started.elapsed() >= EVICTION_WAIT);
        drop((second, third));
    }
}
