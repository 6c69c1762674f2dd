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
//!   so each series is named once per batch; on a federation stream,
//!   [`SeriesRefs`] / [`KnownSeries`] name each series once per stream and refer
//!   to it by number after that. `State` and `Kind` convert both ways.
//! - batch parts: [`SeriesRefs::encode_parts`] cuts a batch too large for one message
//!   into parts sharing its seq; [`max_increment_message_len`] is what one increment
//!   alone needs, so inputs can refuse what could never be forwarded.
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

use prost::Message as _;
use strata_model::{
    Apdex, Avg, ExpHist, Hist, Increment, Kind, Latest, ModelError, SeriesKey, State, Sum,
};

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
    #[error("series ref {0} was not defined on this stream")]
    UnknownSeriesRef(u32),
    #[error("series ref {0} was defined as an invalid series")]
    InvalidSeriesRef(u32),
    #[error(
        "series {series}: bucket_ms {bucket_ms} is not the start of a UTC minute between years 1 and 9999"
    )]
    Bucket { series: String, bucket_ms: i64 },
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
            Kind::ExpHistogram => v1::Kind::ExpHistogram,
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
        Ok(v1::Kind::ExpHistogram) => Kind::ExpHistogram,
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
            State::ExpHistogram(h) => W::ExpHistogram(h.to_payload()),
        };
        v1::State { kind: Some(kind) }
    }
}

impl TryFrom<&v1::State> for State {
    type Error = ConvertError;

    /// Refuses what [`State::validate`] refuses (NaN or infinite totals, an average of
    /// no samples with a sum, an infinite apdex threshold, ...): a forged state never
    /// reaches a merge.
    fn try_from(wire: &v1::State) -> Result<Self, Self::Error> {
        use v1::state::Kind as W;
        let state = match wire
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
            W::Percent(p) => State::Percent {
                matched: p.matched,
                total: p.total,
            },
            W::Apdex(a) => State::Apdex(Apdex {
                satisfied: a.satisfied,
                tolerating: a.tolerating,
                total: a.total,
                threshold: a.threshold,
            }),
            W::Histogram(bytes) => State::Histogram(Box::new(Hist::from_v2_bytes(bytes)?)),
            W::ExpHistogram(bytes) => State::ExpHistogram(Box::new(ExpHist::from_payload(bytes)?)),
        };
        state.validate()?;
        Ok(state)
    }
}

fn labels_to_wire(key: &SeriesKey) -> Vec<v1::Label> {
    key.labels()
        .map(|(name, value)| v1::Label {
            name: name.to_owned(),
            value: value.to_owned(),
        })
        .collect()
}

/// Builds a series key from wire fields, validating names.
pub fn series_from_wire(metric: &str, labels: &[v1::Label]) -> Result<SeriesKey, ConvertError> {
    SeriesKey::from_strs(
        metric,
        labels.iter().map(|l| (l.name.as_str(), l.value.as_str())),
    )
    .map_err(|source| ConvertError::Series {
        series: metric.to_string(),
        source,
    })
}

/// Encodes one outgoing batch, naming each series once.
pub fn encode_batch(seq: u64, watermark_ms: i64, increments: &[Increment]) -> v1::Batch {
    encode(seq, watermark_ms, increments, None)
}

/// Decodes every increment of a batch that interns no series; any invalid part
/// fails the whole batch.
pub fn decode_batch(batch: &v1::Batch) -> Result<Vec<Increment>, ConvertError> {
    KnownSeries::default().decode(batch)
}

fn encode(
    seq: u64,
    watermark_ms: i64,
    increments: &[Increment],
    refs: Option<&mut SeriesRefs>,
) -> v1::Batch {
    // No limit: always exactly one part, nothing oversized.
    let mut parts = encode_parts(seq, watermark_ms, increments, usize::MAX, refs);
    parts.batches.pop().unwrap_or_default()
}

/// Room a message needs besides its series entries: the `SourceMessage` and `Batch`
/// framing, `seq`, `watermark_ms`, `follows_dropped`, `part` and `more_parts` at their
/// largest (38 bytes), rounded up.
pub const BATCH_OVERHEAD: usize = 64;

/// Upper bound of an encoded `State` of any kind but histogram (the largest, a `latest`
/// naming a 64-character source, is 90 bytes).
const MAX_FIXED_STATE_LEN: usize = 96;

/// Encoded length of a length-delimited field (tag below 16) of `len` bytes.
fn field_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Encoded length of a `series_ref` field (absent when 0).
fn ref_len(series_ref: u32) -> usize {
    match series_ref {
        0 => 0,
        r => 1 + prost::encoding::encoded_len_varint(u64::from(r)),
    }
}

/// Encoded length of a `SeriesIncrements` naming `series` in full, before its buckets.
fn named_entry_len(series: &SeriesKey, series_ref: u32) -> usize {
    let labels: usize = series
        .labels()
        .map(|(name, value)| field_len(field_len(name.len()) + field_len(value.len())))
        .sum();
    field_len(series.metric().len()) + labels + ref_len(series_ref)
}

/// Upper bound of the message carrying one increment of `series` alone, the series
/// named in full and its state as large as `kind` allows (a histogram of
/// `histogram_sigfig` digits: [`Hist::max_v2_len`]; an exponential histogram at the
/// largest bucket bound any tier may configure: [`ExpHist::MAX_PAYLOAD_LEN`]). An
/// increment is forwardable
/// through any link whose smaller `max_message_bytes` is at least this.
pub fn max_increment_message_len(series: &SeriesKey, kind: Kind, histogram_sigfig: u8) -> usize {
    let state = match kind {
        Kind::Histogram => field_len(Hist::max_v2_len(histogram_sigfig)),
        // A forwarded state keeps the bound of the tier that made it: the largest one.
        Kind::ExpHistogram => field_len(ExpHist::MAX_PAYLOAD_LEN),
        _ => MAX_FIXED_STATE_LEN,
    };
    // `bucket_ms` (at most 11 bytes) and the state.
    let bucket = 11 + field_len(state);
    BATCH_OVERHEAD + field_len(named_entry_len(series, u32::MAX) + field_len(bucket))
}

/// One outgoing batch cut into parts that each fit one message (see
/// [`SeriesRefs::encode_parts`]).
#[derive(Debug, Default)]
pub struct Parts {
    /// In sending order, numbered and flagged (`part`, `more_parts`): one for a batch
    /// that fits whole, or that carries no increments.
    pub batches: Vec<v1::Batch>,
    /// Increments left out because even alone they do not fit in one message.
    pub oversized: Vec<Oversized>,
}

/// An increment too large for one message even alone.
#[derive(Clone, Debug, PartialEq)]
pub struct Oversized {
    pub series: Arc<SeriesKey>,
    pub bucket_ms: i64,
    /// The message it alone would need.
    pub bytes: usize,
}

/// Cuts `increments` into batches whose `SourceMessage` encodes to at most
/// `max_message_bytes`, grouping each part's increments by series. A series whose
/// buckets do not fit in one part goes on in the next (by ref once defined). With
/// `refs`, series are interned: a ref is defined only by an entry actually sent, so an
/// oversized increment left out never leaves a gap in the numbering.
fn encode_parts(
    seq: u64,
    watermark_ms: i64,
    increments: &[Increment],
    max_message_bytes: usize,
    mut refs: Option<&mut SeriesRefs>,
) -> Parts {
    let groups = group_by_series(increments);
    let budget = max_message_bytes.saturating_sub(BATCH_OVERHEAD);
    let mut out = Parts::default();
    // Finished parts, then the one being filled.
    let mut cut: Vec<Vec<v1::SeriesIncrements>> = Vec::new();
    let mut part: Vec<v1::SeriesIncrements> = Vec::new();
    let mut part_len = 0usize;
    for (series, buckets) in groups {
        // The series' entry in the current part and its length.
        let mut entry: Option<(v1::SeriesIncrements, usize)> = None;
        for bucket in buckets {
            let bucket_len = field_len(bucket.encoded_len());
            if let Some((open, len)) = entry.as_mut() {
                let grown = field_len(*len + bucket_len) - field_len(*len);
                if part_len + grown <= budget {
                    open.buckets.push(bucket);
                    *len += bucket_len;
                    part_len += grown;
                    continue;
                }
            }
            if let Some((open, _)) = entry.take() {
                // The part is full: the series goes on in the next one.
                part.push(open);
                cut.push(std::mem::take(&mut part));
                part_len = 0;
            }
            let (series_ref, named, header_len) = entry_header(series, refs.as_deref());
            let need = field_len(header_len + bucket_len);
            if part_len + need > budget && !part.is_empty() {
                cut.push(std::mem::take(&mut part));
                part_len = 0;
            }
            if need > budget {
                out.oversized.push(Oversized {
                    series: series.clone(),
                    bucket_ms: bucket.bucket_ms,
                    bytes: need.saturating_add(BATCH_OVERHEAD),
                });
                continue;
            }
            if named
                && series_ref > 0
                && let Some(refs) = refs.as_deref_mut()
            {
                refs.refs.insert(series.clone(), series_ref);
            }
            let open = v1::SeriesIncrements {
                buckets: vec![bucket],
                ..series_entry(series, series_ref, named)
            };
            entry = Some((open, header_len + bucket_len));
            part_len += need;
        }
        if let Some((open, _)) = entry {
            part.push(open);
        }
    }
    if !part.is_empty() || cut.is_empty() {
        cut.push(part);
    }
    out.batches = numbered_parts(seq, watermark_ms, cut);
    out
}

/// The increments' buckets grouped by series, in order of first appearance.
fn group_by_series(increments: &[Increment]) -> Vec<(&Arc<SeriesKey>, Vec<v1::BucketState>)> {
    let mut index: HashMap<&SeriesKey, usize> = HashMap::new();
    let mut groups: Vec<(&Arc<SeriesKey>, Vec<v1::BucketState>)> = Vec::new();
    for inc in increments {
        let slot = *index.entry(&*inc.series).or_insert_with(|| {
            groups.push((&inc.series, Vec::new()));
            groups.len() - 1
        });
        groups[slot].1.push(v1::BucketState {
            bucket_ms: inc.bucket_ms,
            state: Some(v1::State::from(&inc.state)),
        });
    }
    groups
}

/// How a new entry of `series` names it: `(series_ref, named, header length)`
/// — by ref if the stream defined it, else by name (and defining the next ref
/// when interning).
fn entry_header(series: &SeriesKey, refs: Option<&SeriesRefs>) -> (u32, bool, usize) {
    let (series_ref, named) = match refs {
        Some(refs) => match refs.refs.get(series) {
            Some(&r) => (r, false),
            None => (refs.next_ref(), true),
        },
        None => (0, true),
    };
    let header_len = if named {
        named_entry_len(series, series_ref)
    } else {
        ref_len(series_ref)
    };
    (series_ref, named, header_len)
}

/// An entry of `series` with no buckets yet, named in full or by ref.
fn series_entry(series: &SeriesKey, series_ref: u32, named: bool) -> v1::SeriesIncrements {
    v1::SeriesIncrements {
        metric: if named {
            series.metric().to_string()
        } else {
            String::new()
        },
        labels: if named {
            labels_to_wire(series)
        } else {
            Vec::new()
        },
        buckets: Vec::new(),
        series_ref,
    }
}

/// The parts of one seq, numbered from 0, all but the last flagged `more_parts`.
fn numbered_parts(
    seq: u64,
    watermark_ms: i64,
    cut: Vec<Vec<v1::SeriesIncrements>>,
) -> Vec<v1::Batch> {
    let n = cut.len();
    cut.into_iter()
        .enumerate()
        .map(|(i, series)| v1::Batch {
            seq,
            watermark_ms,
            series,
            follows_dropped: false,
            part: i as u32,
            more_parts: i + 1 < n,
        })
        .collect()
}

/// Most series one federation stream defines (refs `1..=MAX_SERIES_REFS`); past it the
/// sender names further series in full. Bounds the receiver's table per stream.
pub const MAX_SERIES_REFS: u32 = 1 << 22;

/// The sending side of series interning on one federation stream: a series is
/// named in full the first time the stream carries it, then by a number. Create one
/// per stream; a new stream starts afresh.
#[derive(Debug)]
pub struct SeriesRefs {
    refs: HashMap<Arc<SeriesKey>, u32>,
    /// Most refs to hand out: [`MAX_SERIES_REFS`] (lower in tests).
    limit: u32,
}

impl Default for SeriesRefs {
    fn default() -> Self {
        SeriesRefs {
            refs: HashMap::new(),
            limit: MAX_SERIES_REFS,
        }
    }
}

impl SeriesRefs {
    /// Encodes one outgoing batch on this stream: each series is named once per
    /// stream, then referred to by number.
    pub fn encode(&mut self, seq: u64, watermark_ms: i64, increments: &[Increment]) -> v1::Batch {
        encode(seq, watermark_ms, increments, Some(self))
    }

    /// [`SeriesRefs::encode`] cut into parts whose `SourceMessage` each encodes to at
    /// most `max_message_bytes` (see `Batch.part` in the protocol). Increments that do
    /// not fit even alone are left out and listed in [`Parts::oversized`]; a series is
    /// defined by the part that first carries it.
    pub fn encode_parts(
        &mut self,
        seq: u64,
        watermark_ms: i64,
        increments: &[Increment],
        max_message_bytes: usize,
    ) -> Parts {
        encode_parts(seq, watermark_ms, increments, max_message_bytes, Some(self))
    }

    /// Series defined on this stream so far.
    pub fn len(&self) -> usize {
        self.refs.len()
    }

    /// Whether no series was defined yet.
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// The ref the next new series is defined as; 0 when none is left (it is named in
    /// full).
    fn next_ref(&self) -> u32 {
        match u32::try_from(self.refs.len() + 1) {
            Ok(next) if next <= self.limit => next,
            _ => 0,
        }
    }
}

/// The receiving side of series interning on one federation stream: the series the
/// stream defined, by ref. Create one per stream; [`KnownSeries::learn`] must see
/// every batch of the stream in order, duplicates included.
#[derive(Debug, Default)]
pub struct KnownSeries {
    /// Ref `n` at index `n - 1`; `None` for a definition that named no valid series
    /// (batches using it are rejected, naming the problem).
    defined: Vec<Option<Arc<SeriesKey>>>,
}

/// A stream whose series definitions are out of order: the sender and receiver no
/// longer agree on what a ref means, so the stream must end.
#[derive(Debug, thiserror::Error)]
#[error("series definition {found} out of order: expected {expected}")]
pub struct RefOutOfOrder {
    pub expected: u64,
    pub found: u32,
}

impl KnownSeries {
    /// Records the series `batch` defines.
    pub fn learn(&mut self, batch: &v1::Batch) -> Result<(), RefOutOfOrder> {
        for s in &batch.series {
            if s.series_ref == 0 || s.metric.is_empty() {
                continue;
            }
            let expected = self.defined.len() as u64 + 1;
            if u64::from(s.series_ref) != expected || s.series_ref > MAX_SERIES_REFS {
                return Err(RefOutOfOrder {
                    expected,
                    found: s.series_ref,
                });
            }
            self.defined
                .push(series_from_wire(&s.metric, &s.labels).ok().map(Arc::new));
        }
        Ok(())
    }

    /// Series defined on this stream so far.
    pub fn len(&self) -> usize {
        self.defined.len()
    }

    /// Whether no series was defined yet.
    pub fn is_empty(&self) -> bool {
        self.defined.is_empty()
    }

    /// The series `s` names, through its ref when it has one.
    fn series(&self, s: &v1::SeriesIncrements) -> Result<Arc<SeriesKey>, ConvertError> {
        if s.series_ref == 0 {
            return Ok(Arc::new(series_from_wire(&s.metric, &s.labels)?));
        }
        match self.defined.get(s.series_ref as usize - 1) {
            Some(Some(series)) => Ok(series.clone()),
            // Defined, but not as a valid series: the definition names the problem.
            Some(None) if !s.metric.is_empty() => Err(series_from_wire(&s.metric, &s.labels)
                .err()
                .unwrap_or(ConvertError::InvalidSeriesRef(s.series_ref))),
            Some(None) => Err(ConvertError::InvalidSeriesRef(s.series_ref)),
            None => Err(ConvertError::UnknownSeriesRef(s.series_ref)),
        }
    }

    /// Decodes every increment of a batch, after [`KnownSeries::learn`] saw it; any
    /// invalid part (an unknown ref too) fails the whole batch.
    pub fn decode(&self, batch: &v1::Batch) -> Result<Vec<Increment>, ConvertError> {
        let mut out = Vec::with_capacity(batch.series.iter().map(|s| s.buckets.len()).sum());
        for s in &batch.series {
            let series = self.series(s)?;
            for b in &s.buckets {
                // A bucket no node makes: apart from its own bucket, it would land
                // where bucket arithmetic (`bucket_ms + 60_000`) overflows.
                if !is_minute_bucket(b.bucket_ms) {
                    return Err(ConvertError::Bucket {
                        series: series.to_string(),
                        bucket_ms: b.bucket_ms,
                    });
                }
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
}

/// Whether `bucket_ms` starts a UTC minute within the accepted time range
/// ([`strata_model::time::in_range`]).
fn is_minute_bucket(bucket_ms: i64) -> bool {
    strata_model::time::in_range(bucket_ms) && strata_model::minute_start(bucket_ms) == bucket_ms
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
    fn buckets_that_do_not_start_a_minute_of_the_accepted_range_are_refused() {
        use strata_model::time::{MAX_TS_MS, MIN_TS_MS};
        let s = key("requests", "checkout");
        for bucket_ms in [
            60_008,
            -1,
            i64::MAX,
            i64::MIN,
            MAX_TS_MS,
            MIN_TS_MS - 60_000,
        ] {
            let batch = encode_batch(1, 0, &[counter_at(&s, bucket_ms)]);
            let err = decode_batch(&batch).unwrap_err();
            assert!(
                matches!(err, ConvertError::Bucket { bucket_ms: b, .. } if b == bucket_ms),
                "{bucket_ms}: {err}"
            );
            assert!(
                err.to_string().contains("not the start of a UTC minute"),
                "{err}"
            );
        }
        let first = strata_model::minute_start(MAX_TS_MS);
        for bucket_ms in [0, -60_000, MIN_TS_MS, first] {
            let incs = [counter_at(&s, bucket_ms)];
            assert_eq!(decode_batch(&encode_batch(1, 0, &incs)).unwrap(), incs);
        }
    }

    fn counter_at(series: &Arc<SeriesKey>, bucket_ms: i64) -> Increment {
        Increment {
            series: series.clone(),
            bucket_ms,
            state: State::Counter(1),
        }
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

    fn counter(series: &Arc<SeriesKey>, n: u64) -> Increment {
        Increment {
            series: series.clone(),
            bucket_ms: 60_000,
            state: State::Counter(n),
        }
    }

    /// What a receiver makes of `batch`: learn, then decode.
    fn receive(known: &mut KnownSeries, batch: &v1::Batch) -> Result<Vec<Increment>, ConvertError> {
        known.learn(batch).unwrap();
        known.decode(batch)
    }

    #[test]
    fn a_series_is_named_once_per_stream() {
        let (a, b, c) = (
            key("requests", "checkout"),
            key("requests", "cart"),
            key("latency", "checkout"),
        );
        let mut refs = SeriesRefs::default();
        let mut known = KnownSeries::default();
        let first = vec![counter(&a, 1), counter(&b, 2)];
        let second = vec![counter(&b, 3), counter(&c, 4), counter(&a, 5)];
        let w1 = refs.encode(1, 0, &first);
        let w2 = refs.encode(2, 0, &second);
        // The first batch names both; the second names only the new series.
        let named = |w: &v1::Batch| w.series.iter().filter(|s| !s.metric.is_empty()).count();
        assert_eq!((named(&w1), named(&w2)), (2, 1));
        assert!(w2.series.iter().all(|s| s.series_ref > 0));
        assert_eq!(receive(&mut known, &w1).unwrap(), first);
        assert_eq!(receive(&mut known, &w2).unwrap(), second);
        assert_eq!((refs.len(), known.len()), (3, 3));
        // Refs mean nothing on another stream.
        let w3 = refs.encode(3, 0, &first);
        assert_eq!(named(&w3), 0);
        assert!(matches!(
            receive(&mut KnownSeries::default(), &w3),
            Err(ConvertError::UnknownSeriesRef(1))
        ));
    }

    #[test]
    fn definitions_out_of_order_end_the_stream() {
        let a = key("requests", "checkout");
        let mut refs = SeriesRefs::default();
        let w1 = refs.encode(1, 0, &[counter(&a, 1)]);
        let mut known = KnownSeries::default();
        known.learn(&w1).unwrap();
        // The same definition again (ref 1 when 2 is next).
        let err = known.learn(&w1).unwrap_err();
        assert_eq!((err.expected, err.found), (2, 1));
    }

    #[test]
    fn an_invalid_definition_rejects_the_batches_using_it() {
        let mut known = KnownSeries::default();
        let bad = v1::Batch {
            seq: 1,
            watermark_ms: 0,
            series: vec![v1::SeriesIncrements {
                metric: "bad name!".into(),
                labels: vec![],
                buckets: vec![],
                series_ref: 1,
            }],
            ..v1::Batch::default()
        };
        let err = receive(&mut known, &bad).unwrap_err().to_string();
        assert!(err.contains("bad name!"), "{err}");
        let mut later = bad.clone();
        later.series[0].metric.clear();
        let err = known.decode(&later).unwrap_err().to_string();
        assert_eq!(err, "series ref 1 was defined as an invalid series");
    }

    /// The `SourceMessage` carrying `batch`, as the forwarder sends it.
    fn message_len(batch: &v1::Batch) -> usize {
        v1::SourceMessage {
            msg: Some(v1::source_message::Msg::Batch(batch.clone())),
        }
        .encoded_len()
    }

    /// What a receiver reassembles from `parts`, checking their numbering.
    fn receive_parts(known: &mut KnownSeries, parts: &[v1::Batch]) -> Vec<Increment> {
        let mut out = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            assert_eq!((p.part, p.more_parts), (i as u32, i + 1 < parts.len()));
            out.extend(receive(known, p).unwrap());
        }
        out
    }

    #[test]
    fn a_large_batch_is_cut_into_parts_that_each_fit() {
        let limit = 4096;
        // 300 series of 3 minutes each, grouped by series as a flush produces them.
        let incs: Vec<_> = (0..300)
            .flat_map(|i| {
                let s = key("requests", &format!("service-{i:04}"));
                (0..3).map(move |m| Increment {
                    series: s.clone(),
                    bucket_ms: m * 60_000,
                    state: State::Counter(i as u64 + 1),
                })
            })
            .collect();
        let mut refs = SeriesRefs::default();
        let mut known = KnownSeries::default();
        let parts = refs.encode_parts(9, 77, &incs, limit);
        assert!(parts.oversized.is_empty());
        assert!(parts.batches.len() > 3, "{} parts", parts.batches.len());
        for p in &parts.batches {
            assert!(message_len(p) <= limit, "part of {} bytes", message_len(p));
            assert_eq!((p.seq, p.watermark_ms), (9, 77));
        }
        assert_eq!(receive_parts(&mut known, &parts.batches), incs);
        // Each series was defined once, by the part that first carried it.
        assert_eq!((refs.len(), known.len()), (300, 300));
        // The next batch refers to them by number, in fewer parts.
        let again = refs.encode_parts(10, 78, &incs, limit);
        assert!(again.batches.len() < parts.batches.len());
        assert_eq!(receive_parts(&mut known, &again.batches), incs);
    }

    #[test]
    fn a_series_with_many_buckets_goes_on_in_the_next_part() {
        let s = key("requests", "checkout");
        let incs: Vec<_> = (0..2000)
            .map(|m| Increment {
                series: s.clone(),
                bucket_ms: m * 60_000,
                state: State::Counter(1),
            })
            .collect();
        let mut refs = SeriesRefs::default();
        let parts = refs.encode_parts(1, 0, &incs, 2048);
        assert!(parts.batches.len() > 2);
        let named = parts
            .batches
            .iter()
            .flat_map(|p| &p.series)
            .filter(|e| !e.metric.is_empty())
            .count();
        assert_eq!(named, 1, "defined once, then by ref");
        for p in &parts.batches {
            assert!(message_len(p) <= 2048);
        }
        assert_eq!(
            receive_parts(&mut KnownSeries::default(), &parts.batches),
            incs
        );
        // Without refs every part names it again.
        let plain = encode_parts(1, 0, &incs, 2048, None);
        assert_eq!(
            receive_parts(&mut KnownSeries::default(), &plain.batches),
            incs
        );
    }

    #[test]
    fn an_increment_too_large_alone_is_left_out_without_a_gap_in_refs() {
        let huge =
            Arc::new(SeriesKey::new("requests", [("blob".to_string(), "x".repeat(5000))]).unwrap());
        let (a, b) = (key("requests", "a"), key("requests", "b"));
        let incs = vec![counter(&a, 1), counter(&huge, 2), counter(&b, 3)];
        let mut refs = SeriesRefs::default();
        let parts = refs.encode_parts(1, 0, &incs, 4096);
        assert_eq!(parts.oversized.len(), 1);
        assert_eq!(parts.oversized[0].series, huge);
        assert!(parts.oversized[0].bytes > 4096);
        assert!(parts.oversized[0].bytes <= max_increment_message_len(&huge, Kind::Counter, 2));
        let mut known = KnownSeries::default();
        assert_eq!(
            receive_parts(&mut known, &parts.batches),
            vec![counter(&a, 1), counter(&b, 3)]
        );
        assert_eq!(refs.len(), 2);
        // Nothing at all: one empty part still carries the seq and watermark.
        let empty = refs.encode_parts(2, 5, &[], 4096);
        assert_eq!(empty.batches.len(), 1);
        assert!(!empty.batches[0].more_parts);
    }

    #[test]
    fn the_bound_of_one_increment_covers_its_encoding() {
        let params = StateParams::default();
        let s = key("latency", "checkout");
        for kind in Kind::ALL {
            let mut state = State::empty(kind, &params);
            let value = match kind {
                Kind::Percent => SampleValue::Flag(true),
                _ => SampleValue::Number(1e9),
            };
            state.record(value, i64::MIN, &"n".repeat(64)).unwrap();
            let inc = Increment {
                series: s.clone(),
                bucket_ms: i64::MIN,
                state,
            };
            let mut refs = SeriesRefs::default();
            let batch = refs
                .encode_parts(u64::MAX, i64::MIN, &[inc], usize::MAX)
                .batches;
            let mut whole = batch[0].clone();
            whole.follows_dropped = true;
            whole.part = u32::MAX;
            let bound = max_increment_message_len(&s, kind, params.histogram_sigfig);
            assert!(
                message_len(&whole) <= bound,
                "{kind}: {} > {bound}",
                message_len(&whole)
            );
        }
    }

    #[test]
    fn refs_run_out_into_full_names() {
        let mut refs = SeriesRefs {
            limit: 2,
            ..SeriesRefs::default()
        };
        let incs: Vec<_> = (0..3)
            .map(|i| counter(&key("requests", &format!("s{i}")), 1))
            .collect();
        let w = refs.encode(1, 0, &incs);
        let sent: Vec<_> = w.series.iter().map(|s| s.series_ref).collect();
        assert_eq!(sent, [1, 2, 0]);
        assert_eq!(w.series[2].metric, "requests");
        let mut known = KnownSeries::default();
        assert_eq!(receive(&mut known, &w).unwrap(), incs);
        // Still by number, or in full, in the next batch.
        let w = refs.encode(2, 0, &incs);
        let named = w.series.iter().filter(|s| !s.metric.is_empty()).count();
        assert_eq!(named, 1);
        assert_eq!(receive(&mut known, &w).unwrap(), incs);
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
