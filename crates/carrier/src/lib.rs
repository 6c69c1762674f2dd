//! strata's DataCarrier: a bounded, partitioned hand-off queue between the threads that
//! produce work (the aggregator's flush) and the threads that do it (store writer,
//! federation forwarder, alarm evaluator), in the pattern of Apache SkyWalking's
//! DataCarrier.
//!
//! A carrier has N partitions, each a bounded crossbeam channel drained by its own OS
//! thread. Producers pick a partition by key hash, so everything about one series lands on
//! one consumer, in order, and that consumer needs no lock on its own state. A consumer
//! blocks for the first item, then takes whatever else is queued (up to `bulk_max`) and
//! handles it in one call. When a partition is full the carrier's [`Strategy`] decides:
//! `blocking` makes the producer wait (backpressure), `drop_if_full` hands the item back.
//! Waits, drops, timeouts and queue depth are counted, never silent.
//!
//! Main types:
//! - [`Carrier`]: the cloneable producer handle (`produce`, `produce_to`,
//!   `produce_timeout`, `stats`, `close`).
//! - [`Consumer`]: what runs on each partition thread (`consume` a bulk, `on_stop` once).
//! - [`CarrierThreads`]: owns the consumer threads; `join` after `close`.
//! - [`ConsumerPanic`], [`PanicHook`]: a consumer that panicked stops its
//!   partition and is reported to the hook given to
//!   [`Carrier::start_with_panic_hook`].
//! - [`CarrierConfig`], [`Strategy`], [`Produced`], [`CarrierStats`], [`CarrierError`].
//!
//! Shutdown: [`Carrier::close`] works while other clones are still alive. Every item
//! reported [`Produced::Sent`] is consumed before `on_stop`, and a producer blocked on a
//! full partition is released by the close instead of holding it up; `carrier.rs`
//! explains how.
//!
//! # Layout
//! - `config.rs`: [`Strategy`], [`CarrierConfig`] and its validation, [`CarrierError`].
//! - `carrier.rs`: [`Carrier`] (producing, routing, stats, close), [`Produced`],
//!   [`CarrierStats`].
//! - `consumer.rs`: the [`Consumer`] trait, the partition thread loop, [`CarrierThreads`].
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use strata_carrier::{Carrier, CarrierConfig, Produced, Strategy};
//!
//! let total = Arc::new(AtomicU64::new(0));
//! let config = CarrierConfig {
//!     name: "flush".to_owned(),
//!     partitions: 2,
//!     capacity: 64,
//!     strategy: Strategy::Blocking,
//!     bulk_max: 16,
//! };
//! let (carrier, threads) = Carrier::start(config, |_partition| {
//!     let total = Arc::clone(&total);
//!     move |items: &mut Vec<u64>| {
//!         for value in items.drain(..) {
//!             total.fetch_add(value, Ordering::Relaxed);
//!         }
//!     }
//! })?;
//!
//! for value in 1..=100u64 {
//!     let key_hash = value; // normally the series hash
//!     assert!(carrier.produce(key_hash, value).is_sent());
//! }
//! carrier.close();
//! threads.join(); // everything queued is consumed before the threads exit
//!
//! assert_eq!(total.load(Ordering::Relaxed), 5050);
//! assert_eq!(carrier.stats().consumed, 100);
//! assert!(matches!(carrier.produce(1, 1), Produced::Closed(1)));
//! # Ok::<(), strata_carrier::CarrierError>(())
//! ```

mod carrier;
mod config;
mod consumer;

#[cfg(test)]
mod tests;

pub use carrier::{Carrier, CarrierStats, Produced};
pub use config::{CarrierConfig, CarrierError, ParseStrategyError, Strategy};
pub use consumer::{CarrierThreads, Consumer, ConsumerPanic, PanicHook};
