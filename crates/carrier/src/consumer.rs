//! The consuming side: the [`Consumer`] trait, the loop each partition thread runs, and
//! [`CarrierThreads`], which owns those threads until they are joined.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, select};

use crate::carrier::{LaneCounters, Never};

/// Processes the items of one partition, on that partition's own thread.
///
/// Any `FnMut(&mut Vec<T>) + Send + 'static` closure is a consumer with a no-op
/// [`on_stop`](Consumer::on_stop).
pub trait Consumer<T>: Send + 'static {
    /// Called on the partition's own thread with 1..=bulk_max items drained in FIFO order;
    /// the Vec is reused, consume must leave it empty or it is cleared after the call.
    fn consume(&mut self, items: &mut Vec<T>);

    /// Called once after the partition's channel is closed and fully drained.
    fn on_stop(&mut self) {}
}

impl<T, F> Consumer<T> for F
where
    F: FnMut(&mut Vec<T>) + Send + 'static,
{
    fn consume(&mut self, items: &mut Vec<T>) {
        self(items)
    }
}

/// How long a stopping consumer waits for new items between checks that no producer is
/// still inside a `produce` call. Only reached in the short window right after `close`.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// Everything one partition thread needs. It deliberately holds no `Sender`, so the data
/// channel disconnects when the last [`Carrier`](crate::Carrier) handle is dropped.
pub(crate) struct PartitionWorker<T, C> {
    /// The user's consumer for this partition.
    pub(crate) consumer: C,
    /// The partition's queue.
    pub(crate) rx: Receiver<T>,
    /// Never carries a message; it disconnects when the carrier is closed (or dropped),
    /// which is what wakes a consumer waiting on an empty queue.
    pub(crate) close_rx: Receiver<Never>,
    /// Where `consumed` is counted, and where producers still inside `produce` are
    /// announced so the final drain can wait for them.
    pub(crate) counters: Arc<LaneCounters>,
    /// Upper bound on one `consume` call.
    pub(crate) bulk_max: usize,
}

impl<T, C: Consumer<T>> PartitionWorker<T, C> {
    /// The thread body: consume until closed, drain what is left, then `on_stop`.
    pub(crate) fn run(mut self) {
        let mut batch = Vec::with_capacity(self.bulk_max.min(1024));

        // Running: block for the first item, then take whatever else is already queued.
        loop {
            let first = select! {
                recv(self.rx) -> item => match item {
                    Ok(item) => item,
                    // Every producer handle is gone and the queue is empty.
                    Err(_) => break,
                },
                recv(self.close_rx) -> _ => break,
            };
            batch.push(first);
            self.deliver(&mut batch);
        }

        // Stopping: `closed` is set, so no new producer gets past its check, but one may
        // still be inside `produce` (its item possibly about to land in the queue). Keep
        // draining until the partition has no producer in flight, then drain once more.
        loop {
            let quiet = self.counters.in_flight.load(Ordering::SeqCst) == 0;
            while let Ok(item) = self.rx.try_recv() {
                batch.push(item);
                self.deliver(&mut batch);
            }
            if quiet {
                break;
            }
            match self.rx.recv_timeout(DRAIN_POLL) {
                Ok(item) => {
                    batch.push(item);
                    self.deliver(&mut batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }

        self.consumer.on_stop();
    }

    /// Tops `batch` up from the queue without blocking, hands it to the consumer, and
    /// leaves it empty for reuse.
    fn deliver(&mut self, batch: &mut Vec<T>) {
        while batch.len() < self.bulk_max {
            match self.rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        self.consumer.consume(batch);
        batch.clear();
        self.counters.consumed.fetch_add(n, Ordering::Relaxed);
    }
}

/// Owns a carrier's consumer threads.
///
/// Dropping it without [`join`](CarrierThreads::join) detaches the threads: they still
/// stop on their own once the carrier is closed or every producer handle is dropped.
#[must_use = "join the consumer threads after closing the carrier"]
pub struct CarrierThreads {
    /// The carrier's name, for the log line of a thread that panicked.
    pub(crate) name: String,
    /// One handle per partition, in partition order.
    pub(crate) handles: Vec<JoinHandle<()>>,
}

impl CarrierThreads {
    /// Waits for every consumer thread to finish. A thread that panicked is logged with
    /// `tracing::error!` and does not stop the others from being joined.
    ///
    /// The threads finish only after [`Carrier::close`](crate::Carrier::close) (or after
    /// every producer handle is dropped), so call that first.
    pub fn join(self) {
        for (partition, handle) in self.handles.into_iter().enumerate() {
            if let Err(payload) = handle.join() {
                tracing::error!(
                    carrier = %self.name,
                    partition,
                    panic = panic_message(payload.as_ref()),
                    "carrier consumer thread panicked"
                );
            }
        }
    }
}

impl fmt::Debug for CarrierThreads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CarrierThreads")
            .field("name", &self.name)
            .field("threads", &self.handles.len())
            .finish()
    }
}

/// A consumer that panicked, as reported to the carrier's panic hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerPanic {
    /// The carrier's configured name.
    pub carrier: String,
    pub partition: usize,
    /// The panic's message, when it has one.
    pub message: String,
}

/// Called on the consumer's own thread after its consumer panicked; see
/// [`Carrier::start_with_panic_hook`](crate::Carrier::start_with_panic_hook).
pub type PanicHook = std::sync::Arc<dyn Fn(&ConsumerPanic) + Send + Sync>;

/// The text of a panic payload, when it has one.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}
