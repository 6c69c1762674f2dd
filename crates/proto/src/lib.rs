//! Wire protocol of strata: the generated gRPC code for federation and native
//! ingest, and the conversions between wire messages and `strata-model` types.
//!
//! Protocol types stay in this crate: the rest of the workspace speaks
//! `strata_model` and crosses the boundary only through the functions and
//! `TryFrom` conversions here, so a malformed message becomes a [`ConvertError`]
//! naming the problem instead of a panic deep in the pipeline.
//!
//! # Layout
//! - [`v1`]: generated messages, `federation_client`/`federation_server`,
//!   `ingest_client`/`ingest_server` (from `proto/strata/v1/*.proto`).
//! - conversions: [`encode_batch`] / [`decode_batch`] group increments by series
//!   so each series is named once per batch; `State` and `Kind` convert both ways.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use strata_model::{Increment, SeriesKey, State};
//! let series = Arc::new(SeriesKey::new("requests", [("service".to_string(), "checkout".to_string())]).unwrap());
//! let incs = vec![Increment { series, bucket_ms: 60_000, state: State::Counter(3) }];
//! let batch = strata_proto::encode_batch(7, 120_000, &incs);
//! assert_eq!(strata_proto::decode_batch(&batch).unwrap(), incs);
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use strata_model::{Apdex, Avg, Hist, Increment, Kind, Latest, ModelError, SeriesKey, State, Sum};

/// Generated code for package `strata.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("strata.v1");
}

/// A wire message that does not describe a valid model value.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("unknown kind {0}")]
    UnknownKind(i32),
    #[error("series {series}: {source}")]
    Series { series: String, source: ModelError },
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<Kind> for v1::Kind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Counter => v1::Kind::Counter,
            Kind::Sum => v1::Kind::Sum,
            Kind::Avg => v1::Kind::Avg,
            Kind::Max => v1::Kind::Max,
            Kind::Min => v1::Kind::Min,
            Kind::Latest => v1::Kind::Latest,
            Kind::Percent => v1::Kind::Percent,
            Kind::Apdex => v1::Kind::Apdex,
            Kind::Histogram => v1::Kind::Histogram,
        }
    }
}

/// Reads the `kind` field of a message (an `i32` on the wire).
pub fn kind_from_wire(raw: i32) -> Result<Kind, ConvertError> {
    Ok(match v1::Kind::try_from(raw) {
        Ok(v1::Kind::Counter) => Kind::Counter,
        Ok(v1::Kind::Sum) => Kind::Sum,
        Ok(v1::Kind::Avg) => Kind::Avg,
        Ok(v1::Kind::Max) => Kind::Max,
        Ok(v1::Kind::Min) => Kind::Min,
        Ok(v1::Kind::Latest) => Kind::Latest,
        Ok(v1::Kind::Percent) => Kind::Percent,
        Ok(v1::Kind::Apdex) => Kind::Apdex,
        Ok(v1::Kind::Histogram) => Kind::Histogram,
        Ok(v1::Kind::Unspecified) | Err(_) => return Err(ConvertError::UnknownKind(raw)),
    })
}

fn sum_to_wire(s: &Sum) -> v1::SumState {
    v1::SumState {
        sum: s.sum,
        compensation: s.compensation,
    }
}

fn sum_from_wire(s: Option<&v1::SumState>) -> Sum {
    s.map(|s| Sum {
        sum: s.sum,
        compensation: s.compensation,
    })
    .unwrap_or_default()
}

impl From<&State> for v1::State {
    fn from(state: &State) -> Self {
        use v1::state::Kind as W;
        let kind = match state {
            State::Counter(n) => W::Counter(*n),
            State::Sum(s) => W::Sum(sum_to_wire(s)),
            State::Avg(a) => W::Avg(v1::AvgState {
                sum: Some(sum_to_wire(&a.sum)),
                count: a.count,
            }),
            State::Max(v) => W::Max(*v),
            State::Min(v) => W::Min(*v),
            State::Latest(None) => W::Latest(v1::LatestState::default()),
            State::Latest(Some(l)) => W::Latest(v1::LatestState {
                present: true,
                value: l.value,
                ts_ms: l.ts_ms,
                source: l.source.clone(),
            }),
            State::Percent { matched, total } => W::Percent(v1::PercentState {
                matched: *matched,
                total: *total,
            }),
            State::Apdex(a) => W::Apdex(v1::ApdexState {
                satisfied: a.satisfied,
                tolerating: a.tolerating,
                total: a.total,
                threshold: a.threshold,
            }),
            State::Histogram(h) => W::Histogram(h.to_v2_bytes()),
        };
        v1::State { kind: Some(kind) }
    }
}

impl TryFrom<&v1::State> for State {
    type Error = ConvertError;

    fn try_from(wire: &v1::State) -> Result<Self, Self::Error> {
        use v1::state::Kind as W;
        Ok(
            match wire
                .kind
                .as_ref()
                .ok_or(ConvertError::Missing("state.kind"))?
            {
                W::Counter(n) => State::Counter(*n),
                W::Sum(s) => State::Sum(sum_from_wire(Some(s))),
                W::Avg(a) => State::Avg(Avg {
                    sum: sum_from_wire(a.sum.as_ref()),
                    count: a.count,
                }),
                W::Max(v) => State::Max(*v),
                W::Min(v) => State::Min(*v),
                W::Latest(l) if !l.present => State::Latest(None),
                W::Latest(l) => State::Latest(Some(Latest {
                    value: l.value,
                    ts_ms: l.ts_ms,
                    source: l.source.clone(),
                })),
                W::Percent(p) => {
                    if p.matched > p.total {
                        return Err(ConvertError::Model(ModelError::InvalidValue {
                            kind: Kind::Percent,
                            reason: format!("matched {} exceeds total {}", p.matched, p.total),
                        }));
                    }
                    State::Percent {
                        matched: p.matched,
                        total: p.total,
                    }
                }
                W::Apdex(a) => {
                    if a.satisfied.saturating_add(a.tolerating) > a.total
                        || a.threshold.is_nan()
                        || a.threshold < 0.0
                    {
                        return Err(ConvertError::Model(ModelError::InvalidValue {
                            kind: Kind::Apdex,
                            reason: "satisfied + tolerating exceeds total or threshold invalid"
                                .into(),
                        }));
                    }
                    State::Apdex(Apdex {
                        satisfied: a.satisfied,
                        tolerating: a.tolerating,
                        total: a.total,
                        threshold: a.threshold,
                    })
                }
                W::Histogram(bytes) => State::Histogram(Hist::from_v2_bytes(bytes)?),
            },
        )
    }
}

fn labels_to_wire(key: &SeriesKey) -> Vec<v1::Label> {
    key.labels()
        .iter()
        .map(|(name, value)| v1::Label {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

/// Builds a series key from wire fields, validating names.
pub fn series_from_wire(metric: &str, labels: &[v1::Label]) -> Result<SeriesKey, ConvertError> {
    SeriesKey::new(
        metric,
        labels.iter().map(|l| (l.name.clone(), l.value.clone())),
    )
    .map_err(|source| ConvertError::Series {
        series: metric.to_string(),
        source,
    })
}

/// Encodes one outgoing batch, naming each series once.
pub fn encode_batch(seq: u64, watermark_ms: i64, increments: &[Increment]) -> v1::Batch {
    let mut index: HashMap<&SeriesKey, usize> = HashMap::new();
    let mut series: Vec<v1::SeriesIncrements> = Vec::new();
    for inc in increments {
        let slot = *index.entry(&*inc.series).or_insert_with(|| {
            series.push(v1::SeriesIncrements {
                metric: inc.series.metric().to_string(),
                labels: labels_to_wire(&inc.series),
                buckets: Vec::new(),
            });
            series.len() - 1
        });
        series[slot].buckets.push(v1::BucketState {
            bucket_ms: inc.bucket_ms,
            state: Some(v1::State::from(&inc.state)),
        });
    }
    v1::Batch {
        seq,
        watermark_ms,
        series,
        follows_dropped: false,
    }
}

/// Decodes every increment of a batch; any invalid part fails the whole batch.
pub fn decode_batch(batch: &v1::Batch) -> Result<Vec<Increment>, ConvertError> {
    let mut out = Vec::with_capacity(batch.series.iter().map(|s| s.buckets.len()).sum());
    for s in &batch.series {
        let series = Arc::new(series_from_wire(&s.metric, &s.labels)?);
        for b in &s.buckets {
            let wire = b
                .state
                .as_ref()
                .ok_or(ConvertError::Missing("bucket.state"))?;
            let state = State::try_from(wire).map_err(|e| match e {
                ConvertError::Model(source) => ConvertError::Series {
                    series: series.to_string(),
                    source,
                },
                other => other,
            })?;
            out.push(Increment {
                series: series.clone(),
                bucket_ms: b.bucket_ms,
                state,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_model::{SampleValue, StateParams};

    fn key(metric: &str, service: &str) -> Arc<SeriesKey> {
        Arc::new(SeriesKey::new(metric, [("service".to_string(), service.to_string())]).unwrap())
    }

    #[test]
    fn every_kind_roundtrips_through_the_wire() {
        let params = StateParams::default();
        let mut incs = Vec::new();
        for (i, kind) in Kind::ALL.iter().enumerate() {
            let mut state = State::empty(*kind, &params);
            let value = match kind {
                Kind::Percent => SampleValue::Flag(true),
                _ => SampleValue::Number(12.0),
            };
            state.record(value, 1_000, "edge").unwrap();
            incs.push(Increment {
                series: key(kind.as_str(), "a"),
                bucket_ms: i as i64 * 60_000,
                state,
            });
            incs.push(Increment {
                series: key(kind.as_str(), "b"),
                bucket_ms: 0,
                state: State::empty(*kind, &params),
            });
        }
        let batch = encode_batch(3, 99, &incs);
        assert_eq!(batch.series.len(), incs.len());
        assert_eq!(decode_batch(&batch).unwrap(), incs);
    }

    #[test]
    fn a_series_is_named_once_per_batch() {
        let s = key("requests", "checkout");
        let incs: Vec<_> = (0..5)
            .map(|i| Increment {
                series: s.clone(),
                bucket_ms: i * 60_000,
                state: State::Counter(1),
            })
            .collect();
        let batch = encode_batch(1, 0, &incs);
        assert_eq!(batch.series.len(), 1);
        assert_eq!(batch.series[0].buckets.len(), 5);
    }

    #[test]
    fn malformed_states_are_rejected_whole() {
        let mut batch = encode_batch(
            1,
            0,
            &[Increment {
                series: key("requests", "checkout"),
                bucket_ms: 0,
                state: State::Counter(1),
            }],
        );
        batch.series[0].buckets[0].state = Some(v1::State {
            kind: Some(v1::state::Kind::Histogram(vec![1, 2, 3])),
        });
        let err = decode_batch(&batch).unwrap_err().to_string();
        assert!(err.contains("requests"), "{err}");

        batch.series[0].buckets[0].state = None;
        assert!(matches!(
            decode_batch(&batch),
            Err(ConvertError::Missing(_))
        ));

        batch.series[0].buckets[0].state = Some(v1::State { kind: None });
        assert!(decode_batch(&batch).is_err());

        batch.series[0].metric = "bad metric".into();
        assert!(decode_batch(&batch).is_err());
    }

    #[test]
    fn percent_with_more_matches_than_total_is_invalid() {
        let wire = v1::State {
            kind: Some(v1::state::Kind::Percent(v1::PercentState {
                matched: 3,
                total: 2,
            })),
        };
        assert!(State::try_from(&wire).is_err());
    }

    #[test]
    fn unknown_kinds_are_rejected() {
        assert!(kind_from_wire(0).is_err());
        assert!(kind_from_wire(42).is_err());
        for kind in Kind::ALL {
            assert_eq!(kind_from_wire(v1::Kind::from(kind) as i32).unwrap(), kind);
        }
    }
}
