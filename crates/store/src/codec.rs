//! Byte encodings of what the store keeps as opaque values: series keys,
//! spooled batches and event log entries.
//!
//! Both are length-prefixed (protobuf-style varints for lengths and counts,
//! fixed little-endian for timestamps) and start with a format version byte, so
//! the layout can change later without guessing. Metric state is encoded by
//! [`State::encode`] and embedded as a length-prefixed blob. Decoding never
//! panics: every read is bounds-checked and failures come back as a message that
//! the caller wraps with the table and key it was reading.

use std::sync::Arc;

use prost::encoding::{decode_varint, encode_varint};
use strata_model::{Increment, SeriesKey, State};

use crate::{Event, SpoolBatch};

/// Version byte at the start of every encoded series key.
const SERIES_KEY_V1: u8 = 1;
/// Version byte at the start of every encoded spool batch.
const SPOOL_BATCH_V1: u8 = 1;
/// Version byte at the start of every encoded event (the timestamp is in the
/// key, not here).
const EVENT_V1: u8 = 1;

/// Appends `key` as: version, metric, label count, then each name and value.
pub(crate) fn encode_series_key(key: &SeriesKey, out: &mut Vec<u8>) {
    out.push(SERIES_KEY_V1);
    put_series_key(key, out);
}

/// Decodes what [`encode_series_key`] wrote.
pub(crate) fn decode_series_key(bytes: &[u8]) -> Result<SeriesKey, String> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != SERIES_KEY_V1 {
        return Err(format!("unknown series key format version {version}"));
    }
    let key = r.series_key()?;
    r.finish()?;
    Ok(key)
}

/// Encodes one outgoing batch; `increments` are the ones the commit merged.
pub(crate) fn encode_spool_batch(
    seq: u64,
    watermark_ms: i64,
    created_ms: i64,
    increments: &[&Increment],
    out: &mut Vec<u8>,
) {
    out.push(SPOOL_BATCH_V1);
    encode_varint(seq, out);
    out.extend_from_slice(&watermark_ms.to_le_bytes());
    out.extend_from_slice(&created_ms.to_le_bytes());
    encode_varint(increments.len() as u64, out);
    let mut state = Vec::new();
    for inc in increments {
        put_series_key(&inc.series, out);
        out.extend_from_slice(&inc.bucket_ms.to_le_bytes());
        state.clear();
        inc.state.encode(&mut state);
        put_bytes(&state, out);
    }
}

/// Decodes what [`encode_spool_batch`] wrote.
pub(crate) fn decode_spool_batch(bytes: &[u8]) -> Result<SpoolBatch, String> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != SPOOL_BATCH_V1 {
        return Err(format!("unknown spool batch format version {version}"));
    }
    let seq = r.varint()?;
    let watermark_ms = r.i64()?;
    let created_ms = r.i64()?;
    let count = r.len()?;
    // Each increment takes at least a few bytes, so a count larger than the
    // remaining input is corruption, not a reason to allocate.
    let mut increments = Vec::with_capacity(count.min(r.remaining()));
    for i in 0..count {
        let series = r.series_key().map_err(|e| format!("increment {i}: {e}"))?;
        let bucket_ms = r.i64().map_err(|e| format!("increment {i}: {e}"))?;
        let state_bytes = r.bytes().map_err(|e| format!("increment {i}: {e}"))?;
        let state = State::decode(state_bytes)
            .map_err(|e| format!("increment {i} ({series}): state: {e}"))?;
        increments.push(Increment {
            series: Arc::new(series),
            bucket_ms,
            state,
        });
    }
    r.finish()?;
    Ok(SpoolBatch {
        seq,
        watermark_ms,
        created_ms,
        increments,
    })
}

/// Appends an event's kind and message (its timestamp is part of the key).
pub(crate) fn encode_event(event: &Event, out: &mut Vec<u8>) {
    out.push(EVENT_V1);
    put_bytes(event.kind.as_bytes(), out);
    put_bytes(event.message.as_bytes(), out);
}

/// Decodes what [`encode_event`] wrote, for the event keyed at `ts_ms`.
pub(crate) fn decode_event(ts_ms: i64, bytes: &[u8]) -> Result<Event, String> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != EVENT_V1 {
        return Err(format!("unknown event format version {version}"));
    }
    let kind = r.string().map_err(|e| format!("kind: {e}"))?;
    let message = r.string().map_err(|e| format!("message: {e}"))?;
    r.finish()?;
    Ok(Event {
        ts_ms,
        kind,
        message,
    })
}

fn put_series_key(key: &SeriesKey, out: &mut Vec<u8>) {
    put_bytes(key.metric().as_bytes(), out);
    let labels = key.labels();
    encode_varint(labels.len() as u64, out);
    for (name, value) in labels {
        put_bytes(name.as_bytes(), out);
        put_bytes(value.as_bytes(), out);
    }
}

fn put_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A bounds-checked cursor over an encoded value.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn u8(&mut self) -> Result<u8, String> {
        let (&first, rest) = self.rest.split_first().ok_or("truncated: missing byte")?;
        self.rest = rest;
        Ok(first)
    }

    fn varint(&mut self) -> Result<u64, String> {
        decode_varint(&mut self.rest).map_err(|e| format!("bad varint: {e}"))
    }

    /// A length or count: a varint that must fit in memory.
    fn len(&mut self) -> Result<usize, String> {
        let n = self.varint()?;
        usize::try_from(n).map_err(|_| format!("length {n} does not fit in memory"))
    }

    fn i64(&mut self) -> Result<i64, String> {
        let Some((head, rest)) = self.rest.split_first_chunk::<8>() else {
            return Err("truncated: missing 8-byte integer".to_owned());
        };
        self.rest = rest;
        Ok(i64::from_le_bytes(*head))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.len()?;
        if n > self.rest.len() {
            return Err(format!(
                "truncated: field of {n} bytes, {} left",
                self.rest.len()
            ));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn string(&mut self) -> Result<String, String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "invalid utf-8 in string".to_owned())
    }

    fn series_key(&mut self) -> Result<SeriesKey, String> {
        let metric = self.string()?;
        let count = self.len()?;
        let mut labels = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let name = self.string()?;
            let value = self.string()?;
            labels.push((name, value));
        }
        SeriesKey::new(metric, labels).map_err(|e| format!("invalid series key: {e}"))
    }

    fn finish(&self) -> Result<(), String> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.rest.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key() -> SeriesKey {
        let labels =
            [("service", "checkout"), ("az", "é-1")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        SeriesKey::new("http_latency_ms", labels).unwrap()
    }

    #[test]
    fn series_key_roundtrips() {
        let mut bytes = Vec::new();
        encode_series_key(&key(), &mut bytes);
        assert_eq!(decode_series_key(&bytes).unwrap(), key());
    }

    #[test]
    fn every_truncation_or_extension_is_an_error_not_a_panic() {
        let inc = Increment {
            series: Arc::new(key()),
            bucket_ms: -60_000,
            state: State::Counter(u64::MAX),
        };
        let mut bytes = Vec::new();
        encode_spool_batch(300, i64::MIN, i64::MAX, &[&inc, &inc], &mut bytes);
        let batch = decode_spool_batch(&bytes).unwrap();
        assert_eq!(
            (batch.seq, batch.watermark_ms, batch.created_ms),
            (300, i64::MIN, i64::MAX)
        );
        assert_eq!(batch.increments, vec![inc.clone(), inc]);

        for len in 0..bytes.len() {
            assert!(
                decode_spool_batch(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            decode_spool_batch(&longer)
                .unwrap_err()
                .contains("trailing")
        );
        let mut other_version = bytes;
        other_version[0] = 9;
        assert!(
            decode_spool_batch(&other_version)
                .unwrap_err()
                .contains("version 9")
        );
    }

    #[test]
    fn event_roundtrips_and_truncation_is_an_error() {
        let event = Event::new(-5, "spool_overflow", "dropped 2 batches, é");
        let mut bytes = Vec::new();
        encode_event(&event, &mut bytes);
        assert_eq!(decode_event(-5, &bytes).unwrap(), event);
        for len in 0..bytes.len() {
            assert!(decode_event(0, &bytes[..len]).is_err(), "prefix of {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_event(0, &longer).unwrap_err().contains("trailing"));
        bytes[0] = 2;
        assert!(decode_event(0, &bytes).unwrap_err().contains("version 2"));
    }

    #[test]
    fn invalid_names_are_refused() {
        let mut bytes = vec![SERIES_KEY_V1];
        put_bytes(b"1bad", &mut bytes);
        encode_varint(0, &mut bytes);
        assert!(
            decode_series_key(&bytes)
                .unwrap_err()
                .contains("invalid series key")
        );
        // A huge count with nothing behind it is truncation, not an allocation.
        let mut bytes = vec![SERIES_KEY_V1];
        put_bytes(b"ok", &mut bytes);
        encode_varint(u64::from(u32::MAX), &mut bytes);
        assert!(decode_series_key(&bytes).is_err());
    }
}
