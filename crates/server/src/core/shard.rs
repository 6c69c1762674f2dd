//! The aggregator shards: each is the only writer of its delta map of
//! (series, minute) → state, fed through its partition of the ingest carrier,
//! and swaps the delta out when the flush asks.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel as cb;
use strata_carrier::Consumer;
use strata_model::{Increment, SeriesKey, State, StateParams};

use crate::core::fatal::fault;
use crate::core::stats::Stats;

pub use strata_model::SampleItem;

/// What travels through the ingest carrier to a shard.
pub enum ShardMsg {
    Samples(Vec<SampleItem>),
    Increments(Vec<Increment>),
    /// Swap out the delta and send it back.
    Flush(cb::Sender<Vec<Increment>>),
}

/// One aggregator shard: the only writer of its delta map.
pub(crate) struct Shard {
    index: usize,
    /// What changed since the last flush: the increment to hand on. A fast,
    /// randomly seeded hasher: keys come from outside but cannot be aimed.
    delta: HashMap<(Arc<SeriesKey>, i64), State, foldhash::fast::RandomState>,
    params: StateParams,
    /// Source name recorded by `latest` samples ingested here.
    source: String,
    stats: Arc<Stats>,
}

impl Shard {
    /// Shard `index` of a node named `source`, recording with `params`.
    pub(crate) fn new(
        index: usize,
        params: StateParams,
        source: String,
        stats: Arc<Stats>,
    ) -> Shard {
        Shard {
            index,
            delta: HashMap::default(),
            params,
            source,
            stats,
        }
    }
}

impl Consumer<ShardMsg> for Shard {
    fn consume(&mut self, items: &mut Vec<ShardMsg>) {
        for msg in items.drain(..) {
            match msg {
                ShardMsg::Samples(samples) => {
                    fault::check("shard", samples.iter().map(|s| s.series.metric()));
                    // Inputs hand over a series' samples together: the state
                    // is looked up once for each run of samples of one series
                    // (one `Arc`: the batch holds every key it points at) and
                    // one minute.
                    let mut samples = samples.into_iter().peekable();
                    while let Some(s) = samples.next() {
                        let params = StateParams {
                            apdex_threshold: s.apdex_threshold,
                            ..self.params
                        };
                        let (series, bucket_ms) = (Arc::as_ptr(&s.series), s.bucket_ms);
                        let state = self
                            .delta
                            .entry((s.series, s.bucket_ms))
                            .or_insert_with(|| State::empty(s.kind, &params));
                        let mut next = Some((s.value, s.ts_ms));
                        while let Some((value, ts_ms)) = next {
                            if let Err(e) = state.record(value, ts_ms, &self.source) {
                                // Inputs validate each sample, but only the state knows
                                // whether adding it overflows: that sample alone is refused.
                                Stats::add(&self.stats.merge_errors_total, 1);
                                tracing::warn!(shard = self.index, kind = %s.kind, bucket_ms, error = %e, "sample not recorded");
                            }
                            next = samples
                                .next_if(|n| {
                                    Arc::as_ptr(&n.series) == series && n.bucket_ms == bucket_ms
                                })
                                .map(|n| (n.value, n.ts_ms));
                        }
                    }
                }
                ShardMsg::Increments(incs) => {
                    for inc in incs {
                        match self.delta.entry((inc.series, inc.bucket_ms)) {
                            std::collections::hash_map::Entry::Vacant(v) => {
                                v.insert(inc.state);
                            }
                            std::collections::hash_map::Entry::Occupied(mut o) => {
                                if let Err(e) = o.get_mut().merge(&inc.state) {
                                    Stats::add(&self.stats.merge_errors_total, 1);
                                    tracing::error!(shard = self.index, series = %o.key().0, error = %e, "increment not merged");
                                }
                            }
                        }
                    }
                }
                ShardMsg::Flush(reply) => {
                    let out: Vec<Increment> = self
                        .delta
                        .drain()
                        .map(|((series, bucket_ms), state)| Increment {
                            series,
                            bucket_ms,
                            state,
                        })
                        .collect();
                    let _ = reply.send(out);
                }
            }
        }
    }
}
