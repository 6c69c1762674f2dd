//! Byte encodings of what the store keeps as opaque values: series keys,
//! spooled batches, event log entries, the alarm tables' keys and records,
//! and the records of a node's request log ([`RequestRecord`]).
//!
//! Both are length-prefixed (protobuf-style varints for lengths and counts,
//! fixed little-endian for timestamps) and start with a format version byte, so
//! the layout can change later without guessing. Metric state is encoded by
//! [`State::encode`] and embedded as a length-prefixed blob. Decoding never
//! panics: every read is bounds-checked and failures come back as a
//! [`DecodeError`] that the caller wraps with the table and key it was reading.

use std::sync::Arc;

use prost::encoding::{decode_varint, encode_varint};
use strata_model::codec::{kind_from_tag, kind_tag};
use strata_model::{Increment, SampleItem, SampleValue, SeriesKey, State};

use crate::{
    AlarmKey, AlarmRecord, AlarmState, DecodeError, Event, EventKind, Notification,
    NotificationKind, OutboxEntry, SpoolBatch,
};

/// Version byte at the start of every encoded series key.
const SERIES_KEY_V1: u8 = 1;
/// Version byte at the start of every encoded spool batch.
const SPOOL_BATCH_V1: u8 = 1;
/// Version byte at the start of every encoded event (the timestamp is in the
/// key, not here).
const EVENT_V1: u8 = 1;
/// Version byte at the start of every encoded alarm key, alarm state, alarm
/// history record and webhook outbox entry.
const ALARM_V1: u8 = 1;
/// Version byte of an outbox entry followed by its kind: version 1's layout,
/// then one byte, [`NotificationKind`] (0 webhook, 1 Alertmanager). Webhook
/// entries are still written as version 1, so entries written before
/// Alertmanager notifications existed, and webhook entries written since,
/// read the same.
const OUTBOX_V2: u8 = 2;
/// Version byte at the start of every encoded [`RequestRecord`].
const REQUEST_RECORD_V1: u8 = 1;

/// Appends `key` as: version, metric, label count, then each name and value.
pub(crate) fn encode_series_key(key: &SeriesKey, out: &mut Vec<u8>) {
    out.push(SERIES_KEY_V1);
    put_series_key(key, out);
}

/// Decodes what [`encode_series_key`] wrote.
pub(crate) fn decode_series_key(bytes: &[u8]) -> Result<SeriesKey, DecodeError> {
    let mut r = Reader::versioned(bytes, SERIES_KEY_V1, "series key")?;
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
        put_increment(inc, &mut state, out);
    }
}

/// Decodes what [`encode_spool_batch`] wrote.
pub(crate) fn decode_spool_batch(bytes: &[u8]) -> Result<SpoolBatch, DecodeError> {
    let mut r = Reader::versioned(bytes, SPOOL_BATCH_V1, "spool batch")?;
    let seq = r.varint()?;
    let watermark_ms = r.i64()?;
    let created_ms = r.i64()?;
    let count = r.len()?;
    // Each increment takes at least a few bytes, so a count larger than the
    // remaining input is corruption, not a reason to allocate.
    let mut increments = Vec::with_capacity(count.min(r.remaining()));
    for i in 0..count {
        let inc = r
            .increment()
            .map_err(|e| e.at(format_args!("increment {i}")))?;
        increments.push(inc);
    }
    r.finish()?;
    Ok(SpoolBatch {
        seq,
        watermark_ms,
        created_ms,
        increments,
    })
}

/// What a node's request log keeps of one request it acknowledged ahead of
/// the flush that merges it: the validated samples and states, exactly as
/// they were handed to the aggregator.
#[derive(Debug, Default, PartialEq)]
pub struct RequestRecord {
    pub samples: Vec<SampleItem>,
    pub increments: Vec<Increment>,
}

/// Encodes a [`RequestRecord`] of `samples` and `increments`.
///
/// Layout: version; the number of sample runs, then each run (consecutive
/// samples of one series, the same `Arc`) as series key, kind tag, apdex
/// threshold (`f64`), point count and each point as `ts_ms`, `bucket_ms`
/// (`i64`) and its value (tag 0 and an `f64`, or tag 1 false / 2 true);
/// then the number of increments and each as series key, `bucket_ms` and
/// state bytes, as in a spool batch.
pub fn encode_request_record(samples: &[SampleItem], increments: &[Increment], out: &mut Vec<u8>) {
    out.push(REQUEST_RECORD_V1);
    let runs: Vec<&[SampleItem]> = samples
        .chunk_by(|a, b| Arc::ptr_eq(&a.series, &b.series) && a.kind == b.kind)
        .collect();
    encode_varint(runs.len() as u64, out);
    for run in runs {
        let first = &run[0];
        put_series_key(&first.series, out);
        out.push(kind_tag(first.kind));
        out.extend_from_slice(&first.apdex_threshold.to_le_bytes());
        encode_varint(run.len() as u64, out);
        for s in run {
            out.extend_from_slice(&s.ts_ms.to_le_bytes());
            out.extend_from_slice(&s.bucket_ms.to_le_bytes());
            match s.value {
                SampleValue::Number(v) => {
                    out.push(0);
                    out.extend_from_slice(&v.to_le_bytes());
                }
                SampleValue::Flag(flag) => out.push(1 + u8::from(flag)),
            }
        }
    }
    encode_varint(increments.len() as u64, out);
    let mut state = Vec::new();
    for inc in increments {
        put_increment(inc, &mut state, out);
    }
}

/// Decodes what [`encode_request_record`] wrote. The samples of one run
/// share one series key `Arc`, as they did when encoded.
pub fn decode_request_record(bytes: &[u8]) -> Result<RequestRecord, DecodeError> {
    let mut r = Reader::versioned(bytes, REQUEST_RECORD_V1, "request record")?;
    let mut record = RequestRecord::default();
    let runs = r.len()?;
    for i in 0..runs {
        r.sample_run(&mut record.samples)
            .map_err(|e| e.at(format_args!("sample run {i}")))?;
    }
    let count = r.len()?;
    record.increments = Vec::with_capacity(count.min(r.remaining()));
    for i in 0..count {
        let inc = r
            .increment()
            .map_err(|e| e.at(format_args!("increment {i}")))?;
        record.increments.push(inc);
    }
    r.finish()?;
    Ok(record)
}

/// Appends an event's kind and message (its timestamp is part of the key).
pub(crate) fn encode_event(event: &Event, out: &mut Vec<u8>) {
    out.push(EVENT_V1);
    put_bytes(event.kind.as_str().as_bytes(), out);
    put_bytes(event.message.as_bytes(), out);
}

/// Decodes what [`encode_event`] wrote, for the event keyed at `ts_ms`.
pub(crate) fn decode_event(ts_ms: i64, bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut r = Reader::versioned(bytes, EVENT_V1, "event")?;
    let kind = r.string().map_err(|e| e.at("kind"))?;
    let message = r.string().map_err(|e| e.at("message"))?;
    r.finish()?;
    Ok(Event {
        ts_ms,
        // One event a newer build wrote must not make the log unreadable.
        kind: EventKind::parse(&kind).unwrap_or(EventKind::Unknown),
        message,
    })
}

/// Encodes an alarm instance's key (the alarm state table's key).
pub(crate) fn encode_alarm_key(key: &AlarmKey, out: &mut Vec<u8>) {
    out.push(ALARM_V1);
    put_alarm_key(key, out);
}

/// Decodes what [`encode_alarm_key`] wrote.
pub(crate) fn decode_alarm_key(bytes: &[u8]) -> Result<AlarmKey, DecodeError> {
    let mut r = Reader::versioned(bytes, ALARM_V1, "alarm key")?;
    let key = r.alarm_key()?;
    r.finish()?;
    Ok(key)
}

/// Encodes an alarm state without its key (which is the table's key).
pub(crate) fn encode_alarm_state(state: &AlarmState, out: &mut Vec<u8>) {
    out.push(ALARM_V1);
    out.push(u8::from(state.firing));
    out.extend_from_slice(&state.since_ms.to_le_bytes());
    match state.last_fired_ms {
        Some(at) => {
            out.push(1);
            out.extend_from_slice(&at.to_le_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&state.value.to_le_bytes());
    out.extend_from_slice(&state.minute_ms.to_le_bytes());
}

/// Decodes what [`encode_alarm_state`] wrote, for the state stored under `key`.
pub(crate) fn decode_alarm_state(key: AlarmKey, bytes: &[u8]) -> Result<AlarmState, DecodeError> {
    let mut r = Reader::versioned(bytes, ALARM_V1, "alarm state")?;
    let firing = r.flag()?;
    let since_ms = r.i64()?;
    let last_fired_ms = if r.flag()? { Some(r.i64()?) } else { None };
    let value = r.f64()?;
    let minute_ms = r.i64()?;
    r.finish()?;
    Ok(AlarmState {
        key,
        firing,
        since_ms,
        last_fired_ms,
        value,
        minute_ms,
    })
}

/// Encodes an alarm history record without its time (part of the table's key).
pub(crate) fn encode_alarm_record(record: &AlarmRecord, out: &mut Vec<u8>) {
    out.push(ALARM_V1);
    put_alarm_key(&record.key, out);
    out.push(u8::from(record.firing));
    out.extend_from_slice(&record.value.to_le_bytes());
    out.extend_from_slice(&record.minute_ms.to_le_bytes());
}

/// Decodes what [`encode_alarm_record`] wrote, for the record keyed at `ts_ms`.
pub(crate) fn decode_alarm_record(ts_ms: i64, bytes: &[u8]) -> Result<AlarmRecord, DecodeError> {
    let mut r = Reader::versioned(bytes, ALARM_V1, "alarm record")?;
    let key = r.alarm_key()?;
    let firing = r.flag()?;
    let value = r.f64()?;
    let minute_ms = r.i64()?;
    r.finish()?;
    Ok(AlarmRecord {
        ts_ms,
        key,
        firing,
        value,
        minute_ms,
    })
}

/// Encodes an outbox entry without its id (the table's key): a webhook
/// entry as version 1, any other as [`OUTBOX_V2`] with its kind at the end.
pub(crate) fn encode_outbox_entry(entry: &OutboxEntry, out: &mut Vec<u8>) {
    let n = &entry.notification;
    let webhook = n.kind == NotificationKind::Webhook;
    out.push(if webhook { ALARM_V1 } else { OUTBOX_V2 });
    put_bytes(n.url.as_bytes(), out);
    put_bytes(n.body.as_bytes(), out);
    out.extend_from_slice(&n.created_ms.to_le_bytes());
    encode_varint(u64::from(entry.attempts), out);
    out.extend_from_slice(&entry.next_attempt_ms.to_le_bytes());
    put_bytes(entry.last_error.as_bytes(), out);
    if !webhook {
        out.push(match n.kind {
            NotificationKind::Webhook => 0,
            NotificationKind::Alertmanager => 1,
        });
    }
}

/// Decodes what [`encode_outbox_entry`] wrote (either version), for the
/// entry stored as `id`.
pub(crate) fn decode_outbox_entry(id: u64, bytes: &[u8]) -> Result<OutboxEntry, DecodeError> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != ALARM_V1 && version != OUTBOX_V2 {
        return Err(DecodeError::Version {
            what: "outbox entry",
            found: version,
        });
    }
    let url = r.string().map_err(|e| e.at("url"))?;
    let body = r.string().map_err(|e| e.at("body"))?;
    let created_ms = r.i64()?;
    let attempts = r.varint()?;
    let attempts = u32::try_from(attempts).map_err(|_| DecodeError::TooLarge {
        what: "attempts",
        value: attempts,
    })?;
    let next_attempt_ms = r.i64()?;
    let last_error = r.string().map_err(|e| e.at("last error"))?;
    let kind = if version == ALARM_V1 {
        NotificationKind::Webhook
    } else {
        match r.u8()? {
            0 => NotificationKind::Webhook,
            1 => NotificationKind::Alertmanager,
            other => {
                return Err(DecodeError::TooLarge {
                    what: "notification kind",
                    value: u64::from(other),
                });
            }
        }
    };
    r.finish()?;
    Ok(OutboxEntry {
        id,
        notification: Notification {
            url,
            body,
            created_ms,
            kind,
        },
        attempts,
        next_attempt_ms,
        last_error,
    })
}

fn put_alarm_key(key: &AlarmKey, out: &mut Vec<u8>) {
    put_bytes(key.rule.as_bytes(), out);
    encode_varint(key.group.len() as u64, out);
    for (name, value) in &key.group {
        put_bytes(name.as_bytes(), out);
        put_bytes(value.as_bytes(), out);
    }
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

/// An increment as series key, `bucket_ms` and length-prefixed state bytes
/// (encoded through `state`, a reused buffer).
fn put_increment(inc: &Increment, state: &mut Vec<u8>, out: &mut Vec<u8>) {
    put_series_key(&inc.series, out);
    out.extend_from_slice(&inc.bucket_ms.to_le_bytes());
    state.clear();
    inc.state.encode(state);
    put_bytes(state, out);
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

    /// A reader past the version byte, which must be `version`.
    fn versioned(bytes: &'a [u8], version: u8, what: &'static str) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let found = r.u8()?;
        if found != version {
            return Err(DecodeError::Version { what, found });
        }
        Ok(r)
    }

    fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError::Truncated {
                needed: n,
                left: self.rest.len(),
            });
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        decode_varint(&mut self.rest).map_err(DecodeError::Varint)
    }

    /// A length or count: a varint that must fit in memory.
    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        usize::try_from(n).map_err(|_| DecodeError::Length(n))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        let mut head = [0u8; 8];
        head.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(head))
    }

    fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.i64()? as u64))
    }

    /// A byte that must be 0 (false) or 1 (true).
    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::Flag(other)),
        }
    }

    fn alarm_key(&mut self) -> Result<AlarmKey, DecodeError> {
        let rule = self.string().map_err(|e| e.at("rule"))?;
        let count = self.len()?;
        let mut group = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let name = self.string()?;
            let value = self.string()?;
            group.push((name, value));
        }
        Ok(AlarmKey { rule, group })
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(DecodeError::Utf8)
    }

    /// One run of samples of a [`RequestRecord`], appended to `out`.
    fn sample_run(&mut self, out: &mut Vec<SampleItem>) -> Result<(), DecodeError> {
        let series = Arc::new(self.series_key()?);
        let tag = self.u8()?;
        let kind = kind_from_tag(tag).ok_or_else(|| {
            DecodeError::Kind(strata_model::ModelError::Decode(format!(
                "unknown kind tag {tag}"
            )))
        })?;
        let apdex_threshold = self.f64()?;
        let count = self.len()?;
        // Each point takes at least 17 bytes: a larger count is corruption.
        out.reserve(count.min(self.remaining() / 17));
        for _ in 0..count {
            let ts_ms = self.i64()?;
            let bucket_ms = self.i64()?;
            let value = match self.u8()? {
                0 => SampleValue::Number(self.f64()?),
                flag @ (1 | 2) => SampleValue::Flag(flag == 2),
                other => return Err(DecodeError::Flag(other)),
            };
            State::validate_sample(kind, value).map_err(DecodeError::State)?;
            out.push(SampleItem {
                series: Arc::clone(&series),
                kind,
                bucket_ms,
                ts_ms,
                value,
                apdex_threshold,
            });
        }
        Ok(())
    }

    /// One increment as a spool batch or a request record holds it.
    fn increment(&mut self) -> Result<Increment, DecodeError> {
        let series = self.series_key()?;
        let bucket_ms = self.i64()?;
        let state_bytes = self.bytes()?;
        let state = State::decode(state_bytes)
            .map_err(|e| DecodeError::State(e).at(format_args!("{series}")))?;
        Ok(Increment {
            series: Arc::new(series),
            bucket_ms,
            state,
        })
    }

    fn series_key(&mut self) -> Result<SeriesKey, DecodeError> {
        let metric = self.string()?;
        let count = self.len()?;
        let mut labels = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let name = self.string()?;
            let value = self.string()?;
            labels.push((name, value));
        }
        SeriesKey::new(metric, labels).map_err(DecodeError::SeriesKey)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.rest.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use strata_model::Kind;

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

        assert_strict(&bytes, decode_spool_batch);
        let mut other_version = bytes;
        other_version[0] = 9;
        let err = decode_spool_batch(&other_version).unwrap_err();
        assert!(
            matches!(err, DecodeError::Version { found: 9, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("version 9"));
    }

    #[test]
    fn request_record_roundtrips_with_shared_keys_and_refuses_damage() {
        let a = Arc::new(key());
        let b = Arc::new(SeriesKey::new("ok_ratio", Vec::new()).unwrap());
        let sample = |series: &Arc<SeriesKey>, kind, ts_ms, value| SampleItem {
            series: Arc::clone(series),
            kind,
            bucket_ms: strata_model::minute_start(ts_ms),
            ts_ms,
            value,
            apdex_threshold: 0.25,
        };
        let samples = vec![
            sample(&a, Kind::Histogram, 1_000, SampleValue::Number(12.5)),
            sample(&a, Kind::Histogram, 61_000, SampleValue::Number(-0.0)),
            sample(&b, Kind::Percent, -5, SampleValue::Flag(true)),
            sample(&b, Kind::Percent, 7, SampleValue::Flag(false)),
            sample(&a, Kind::Histogram, 2_000, SampleValue::Number(1e12)),
        ];
        let increments = vec![Increment {
            series: Arc::clone(&b),
            bucket_ms: 60_000,
            state: State::Counter(3),
        }];
        let mut bytes = Vec::new();
        encode_request_record(&samples, &increments, &mut bytes);
        let back = decode_request_record(&bytes).unwrap();
        assert_eq!(back.samples, samples);
        assert_eq!(back.increments, increments);
        // One key per run: the run's samples share it, as the pipeline expects.
        assert!(Arc::ptr_eq(
            &back.samples[0].series,
            &back.samples[1].series
        ));
        assert!(!Arc::ptr_eq(
            &back.samples[1].series,
            &back.samples[4].series
        ));

        let mut empty = Vec::new();
        encode_request_record(&[], &[], &mut empty);
        assert_eq!(
            decode_request_record(&empty).unwrap(),
            RequestRecord::default()
        );
        assert_strict(&bytes, decode_request_record);
        // A value the kind does not take is refused, not handed on.
        let mut bad = Vec::new();
        let nan = sample(&a, Kind::Histogram, 1_000, SampleValue::Number(f64::NAN));
        encode_request_record(&[nan], &[], &mut bad);
        assert!(decode_request_record(&bad).is_err());
    }

    #[test]
    fn event_roundtrips_and_truncation_is_an_error() {
        let event = Event::new(-5, EventKind::SpoolOverflow, "dropped 2 batches, é");
        let mut bytes = Vec::new();
        encode_event(&event, &mut bytes);
        assert_eq!(decode_event(-5, &bytes).unwrap(), event);
        assert_strict(&bytes, |b| decode_event(0, b));
        bytes[0] = 2;
        let err = decode_event(0, &bytes).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn an_event_of_a_kind_this_build_does_not_know_still_decodes() {
        let mut bytes = vec![EVENT_V1];
        put_bytes(b"kind_of_a_newer_build", &mut bytes);
        put_bytes(b"it happened", &mut bytes);
        let event = decode_event(7, &bytes).unwrap();
        assert_eq!(
            event,
            Event::new(7, EventKind::Unknown, "it happened"),
            "listed, not refused"
        );
    }

    /// Every strict prefix and a one-byte extension of `bytes` must fail.
    fn assert_strict<T: std::fmt::Debug>(
        bytes: &[u8],
        decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
    ) {
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "prefix of {len}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        let err = decode(&longer).unwrap_err();
        assert!(matches!(err, DecodeError::Trailing(1)), "{err:?}");
        assert!(err.to_string().contains("trailing"));
    }

    #[test]
    fn alarm_records_roundtrip_and_truncation_is_an_error() {
        let key = AlarmKey {
            rule: "checkout-p99".into(),
            group: vec![("cloud".into(), "aws".into()), ("az".into(), "é".into())],
        };
        let mut bytes = Vec::new();
        encode_alarm_key(&key, &mut bytes);
        assert_eq!(decode_alarm_key(&bytes).unwrap(), key);
        assert_strict(&bytes, decode_alarm_key);

        for last_fired_ms in [None, Some(-3)] {
            let state = AlarmState {
                key: key.clone(),
                firing: true,
                since_ms: i64::MIN,
                last_fired_ms,
                value: 251.5,
                minute_ms: 60_000,
            };
            let mut bytes = Vec::new();
            encode_alarm_state(&state, &mut bytes);
            assert_eq!(decode_alarm_state(key.clone(), &bytes).unwrap(), state);
            assert_strict(&bytes, |b| decode_alarm_state(key.clone(), b));
        }

        let record = AlarmRecord {
            ts_ms: 7,
            key: key.clone(),
            firing: false,
            value: f64::NAN,
            minute_ms: -60_000,
        };
        let mut bytes = Vec::new();
        encode_alarm_record(&record, &mut bytes);
        let back = decode_alarm_record(7, &bytes).unwrap();
        assert!(back.value.is_nan());
        assert_eq!(
            (back.key, back.firing, back.minute_ms),
            (key, false, -60_000)
        );
        assert_strict(&bytes, |b| decode_alarm_record(7, b));

        let entry = OutboxEntry {
            id: 9,
            notification: Notification {
                url: "http://127.0.0.1:9099/hook".into(),
                body: "{\"alarm\":\"x\"}".into(),
                created_ms: 5,
                kind: NotificationKind::Webhook,
            },
            attempts: 3,
            next_attempt_ms: 1_000,
            last_error: "http status 500".into(),
        };
        let mut bytes = Vec::new();
        encode_outbox_entry(&entry, &mut bytes);
        assert_eq!(decode_outbox_entry(9, &bytes).unwrap(), entry);
        assert_strict(&bytes, |b| decode_outbox_entry(9, b));
        bytes[0] = 3;
        let err = decode_outbox_entry(9, &bytes).unwrap_err();
        assert!(err.to_string().contains("version 3"), "{err}");
    }

    #[test]
    fn outbox_entries_keep_their_kind_and_older_entries_read_as_webhooks() {
        let mut entry = OutboxEntry {
            id: 4,
            notification: Notification {
                url: "http://127.0.0.1:9093/api/v2/alerts".into(),
                body: "[]".into(),
                created_ms: 7,
                kind: NotificationKind::Alertmanager,
            },
            attempts: 1,
            next_attempt_ms: 2_000,
            last_error: String::new(),
        };
        let mut bytes = Vec::new();
        encode_outbox_entry(&entry, &mut bytes);
        assert_eq!((bytes[0], bytes.last()), (OUTBOX_V2, Some(&1)));
        assert_eq!(decode_outbox_entry(4, &bytes).unwrap(), entry);
        assert_strict(&bytes, |b| decode_outbox_entry(4, b));
        let last = bytes.len() - 1;
        bytes[last] = 9;
        let err = decode_outbox_entry(4, &bytes).unwrap_err();
        assert!(err.to_string().contains("notification kind 9"), "{err}");

        // Written by a build without kinds: version 1, nothing after the
        // last error.
        let mut old = vec![ALARM_V1];
        put_bytes(b"http://127.0.0.1:9099/hook", &mut old);
        put_bytes(b"{}", &mut old);
        old.extend_from_slice(&7i64.to_le_bytes());
        encode_varint(1, &mut old);
        old.extend_from_slice(&2_000i64.to_le_bytes());
        put_bytes(b"", &mut old);
        entry.notification.url = "http://127.0.0.1:9099/hook".into();
        entry.notification.body = "{}".into();
        entry.notification.kind = NotificationKind::Webhook;
        assert_eq!(decode_outbox_entry(4, &old).unwrap(), entry);
        // A webhook entry is still written that way.
        let mut bytes = Vec::new();
        encode_outbox_entry(&entry, &mut bytes);
        assert_eq!(bytes, old);
    }

    #[test]
    fn invalid_names_are_refused() {
        let mut bytes = vec![SERIES_KEY_V1];
        put_bytes(b"1bad", &mut bytes);
        encode_varint(0, &mut bytes);
        let err = decode_series_key(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::SeriesKey(_)), "{err:?}");
        assert!(err.to_string().contains("invalid series key"));
        // A huge count with nothing behind it is truncation, not an allocation.
        let mut bytes = vec![SERIES_KEY_V1];
        put_bytes(b"ok", &mut bytes);
        encode_varint(u64::from(u32::MAX), &mut bytes);
        assert!(decode_series_key(&bytes).is_err());
    }
}
