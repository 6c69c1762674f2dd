//! A federation stream's messages, decoded into increments as the receiver does.

use std::sync::Arc;

use prost::Message as _;
use strata_model::time::in_range;
use strata_model::{Increment, Kind, SampleValue, SeriesKey, State, StateParams, minute_start};
use strata_proto::v1::{self, source_message};
use strata_proto::{KnownSeries, SeriesRefs, decode_batch, encode_batch};

use crate::inputs::delivery::{Incoming, Verdict, verdict};

/// Decodes `bytes` twice: as one `SourceMessage` (one gRPC message), and as a
/// stream of length-delimited `SourceMessage`s sharing their series definitions
/// (one federation stream). Checks that every increment decoded names a valid
/// series, holds a valid state in a minute bucket of the accepted time range, and
/// round-trips through [`encode_batch`]; and that the receiver's seq decisions
/// ([`verdict`]) stay consistent over the stream's seqs.
pub fn federation(bytes: &[u8]) {
    if let Ok(message) = v1::SourceMessage::decode(bytes) {
        receive(&mut KnownSeries::default(), &message);
    }
    let mut stream = bytes;
    let mut known = KnownSeries::default();
    let mut seqs = Seqs::default();
    while !stream.is_empty() {
        let Ok(message) = v1::SourceMessage::decode_length_delimited(&mut stream) else {
            break;
        };
        if let Some(source_message::Msg::Batch(batch)) = &message.msg {
            seqs.judge(batch);
        }
        if !receive(&mut known, &message) {
            break;
        }
    }
}

/// What the receiver does with one message: learn the series a batch defines,
/// then decode it. `false` when the stream would end (definitions out of order).
fn receive(known: &mut KnownSeries, message: &v1::SourceMessage) -> bool {
    let Some(source_message::Msg::Batch(batch)) = &message.msg else {
        return true;
    };
    if known.learn(batch).is_err() {
        return false;
    }
    if let Ok(increments) = known.decode(batch) {
        for inc in &increments {
            check_increment(inc);
        }
        let again = decode_batch(&encode_batch(batch.seq, batch.watermark_ms, &increments))
            .unwrap_or_else(|e| panic!("re-encoded batch does not decode: {e}"));
        // The encoding groups a series' increments together: the same
        // increments, possibly in another order.
        assert_eq!(
            canonical(again),
            canonical(increments),
            "increments changed through the wire"
        );
    }
    true
}

/// Increments in an order that does not depend on how they were grouped.
fn canonical(mut increments: Vec<Increment>) -> Vec<Increment> {
    increments.sort_by_cached_key(|inc| format!("{:?}", (&inc.series, inc.bucket_ms, &inc.state)));
    increments
}

/// A decoded increment is one the aggregator can hold.
fn check_increment(inc: &Increment) {
    if let Err(e) = inc.state.validate() {
        panic!("decoded increment of {} is invalid: {e}", inc.series);
    }
    let b = inc.bucket_ms;
    assert!(
        in_range(b) && minute_start(b) == b,
        "bucket {b} of {} is not a minute of the accepted range",
        inc.series
    );
    let labels = inc.series.label_pairs();
    match SeriesKey::new(inc.series.metric(), labels) {
        Ok(key) => assert_eq!(&key, &*inc.series, "series key is not normalised"),
        Err(e) => panic!("decoded series {} is invalid: {e}", inc.series),
    }
}

/// The receiver's view of one stream's seqs, every accepted batch committed at once.
#[derive(Default)]
struct Seqs {
    committed: u64,
    judged: bool,
}

impl Seqs {
    fn judge(&mut self, batch: &v1::Batch) {
        let incoming = Incoming {
            seq: batch.seq,
            follows_dropped: batch.follows_dropped,
            first_on_stream: !std::mem::replace(&mut self.judged, true),
        };
        match verdict(self.committed, self.committed, incoming) {
            Verdict::Duplicate => assert!(batch.seq <= self.committed),
            Verdict::Accept { lost } => {
                assert_eq!(
                    batch.seq.checked_sub(lost),
                    Some(self.committed + 1),
                    "accepted seq {} after {}, {lost} lost",
                    batch.seq,
                    self.committed
                );
                self.committed = batch.seq;
            }
            Verdict::OutOfOrder { expected } => assert_eq!(expected, self.committed + 1),
            Verdict::Refused(_) => assert!(batch.seq > self.committed),
        }
    }
}

/// Valid encodings to start from: one batch of every kind as one message, and a
/// stream of three batches naming series by ref, each length-delimited.
pub fn federation_seeds() -> Vec<Vec<u8>> {
    let params = StateParams::default();
    let key = |service: &str, kind: Kind| {
        let labels = [("service".to_string(), service.to_string())];
        SeriesKey::new(format!("m_{}", kind.as_str()), labels).map(Arc::new)
    };
    let mut increments = Vec::new();
    for (i, kind) in Kind::ALL.into_iter().enumerate() {
        let Ok(series) = key("checkout", kind) else {
            continue;
        };
        let mut state = State::empty(kind, &params);
        let value = match kind {
            Kind::Percent => SampleValue::Flag(true),
            _ => SampleValue::Number(12.0 + i as f64),
        };
        // Every kind records this sample; a failure only leaves the state empty.
        let _ = state.record(value, 1_000, "edge");
        increments.push(Increment {
            series,
            bucket_ms: 60_000 * i as i64,
            state,
        });
    }
    let whole = v1::SourceMessage {
        msg: Some(source_message::Msg::Batch(encode_batch(
            1,
            120_000,
            &increments,
        ))),
    };
    let mut refs = SeriesRefs::default();
    let mut stream = Vec::new();
    for seq in 1..=3u64 {
        let part = &increments[..increments.len().min(2 + seq as usize)];
        let message = v1::SourceMessage {
            msg: Some(source_message::Msg::Batch(refs.encode(seq, 0, part))),
        };
        // Writing into a Vec cannot fail.
        let _ = message.encode_length_delimited(&mut stream);
    }
    vec![whole.encode_to_vec(), stream]
}
