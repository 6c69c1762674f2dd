//! Fuzz entry points for the store's byte encodings; not part of the API.
//!
//! The fuzz targets under `fuzz/` and the stable smoke test call [`store_codec`] with
//! arbitrary bytes. It returns quietly whatever the input, and panics only when a
//! property of a decoder is broken: decoding never panics; whatever decodes holds only
//! valid series keys and valid states; and it round-trips (its encoding decodes to the
//! same value, and encoding that again gives the same bytes).
//!
//! [`encodings`] gives one valid encoding of each kind of record, with the selector
//! byte [`store_codec`] expects in front: seeds for the corpus and for structured
//! mutations in tests.

use std::sync::Arc;

use strata_model::{Increment, Kind, SampleValue, SeriesKey, State, StateParams};

use crate::codec::{
    decode_alarm_key, decode_alarm_record, decode_alarm_state, decode_event, decode_outbox_entry,
    decode_series_key, decode_spool_batch, encode_alarm_key, encode_alarm_record,
    encode_alarm_state, encode_event, encode_outbox_entry, encode_series_key, encode_spool_batch,
};
use crate::{AlarmKey, AlarmRecord, AlarmState, Event, EventKind, Notification, OutboxEntry};

/// What the first byte of a [`store_codec`] input selects (modulo the count).
const RECORDS: [&str; 7] = [
    "series key",
    "spool batch",
    "event",
    "alarm key",
    "alarm state",
    "alarm record",
    "outbox entry",
];

/// Decodes `bytes[1..]` as the record `bytes[0]` selects, and checks what decodes.
pub fn store_codec(bytes: &[u8]) {
    let Some((&select, rest)) = bytes.split_first() else {
        return;
    };
    let Some(encoded) = reencode(usize::from(select) % RECORDS.len(), rest) else {
        return;
    };
    let again = reencode(usize::from(select) % RECORDS.len(), &encoded).unwrap_or_else(|| {
        panic!(
            "re-encoded {} does not decode",
            RECORDS[usize::from(select) % RECORDS.len()]
        )
    });
    assert_eq!(again, encoded, "re-encoding is not canonical");
}

/// Decodes `bytes` as record `which`, checks it, and returns its encoding; `None`
/// when it does not decode.
fn reencode(which: usize, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match which {
        0 => encode_series_key(&decode_series_key(bytes).ok()?, &mut out),
        1 => {
            let batch = decode_spool_batch(bytes).ok()?;
            for inc in &batch.increments {
                check_increment(inc);
            }
            let incs: Vec<&Increment> = batch.increments.iter().collect();
            encode_spool_batch(
                batch.seq,
                batch.watermark_ms,
                batch.created_ms,
                &incs,
                &mut out,
            );
        }
        2 => encode_event(&decode_event(0, bytes).ok()?, &mut out),
        3 => encode_alarm_key(&decode_alarm_key(bytes).ok()?, &mut out),
        4 => encode_alarm_state(&decode_alarm_state(alarm_key(), bytes).ok()?, &mut out),
        5 => encode_alarm_record(&decode_alarm_record(0, bytes).ok()?, &mut out),
        _ => encode_outbox_entry(&decode_outbox_entry(0, bytes).ok()?, &mut out),
    }
    Some(out)
}

/// A decoded increment names a valid series and holds a valid state.
fn check_increment(inc: &Increment) {
    if let Err(e) = inc.state.validate() {
        panic!("spooled increment of {} is invalid: {e}", inc.series);
    }
    let labels = inc.series.label_pairs();
    match SeriesKey::new(inc.series.metric(), labels) {
        Ok(key) => assert_eq!(&key, &*inc.series, "series key is not normalised"),
        Err(e) => panic!("spooled series {} is invalid: {e}", inc.series),
    }
}

fn alarm_key() -> AlarmKey {
    AlarmKey {
        rule: "checkout-p99".into(),
        group: vec![("cloud".into(), "aws".into()), ("az".into(), "é".into())],
    }
}

/// One valid encoding of every record kind, each behind its selector byte.
pub fn encodings() -> Vec<Vec<u8>> {
    let key = SeriesKey::new(
        "http_latency_ms",
        [("service", "checkout"), ("cloud", "aws")].map(|(k, v)| (k.into(), v.into())),
    );
    let Ok(key) = key else {
        return Vec::new();
    };
    let series = Arc::new(key.clone());
    let params = StateParams::default();
    let increments: Vec<Increment> = Kind::ALL
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            let mut state = State::empty(kind, &params);
            let value = match kind {
                Kind::Percent => SampleValue::Flag(true),
                _ => SampleValue::Number(12.5 * i as f64),
            };
            // Every kind records this sample; a failure only leaves the state empty.
            let _ = state.record(value, 1_000, "edge");
            Increment {
                series: series.clone(),
                bucket_ms: 60_000 * i as i64,
                state,
            }
        })
        .collect();
    let mut all: Vec<Vec<u8>> = vec![Vec::new(); RECORDS.len()];
    encode_series_key(&key, &mut all[0]);
    let incs: Vec<&Increment> = increments.iter().collect();
    encode_spool_batch(7, 120_000, 130_000, &incs, &mut all[1]);
    let event = Event::new(5, EventKind::SpoolOverflow, "dropped 2 batches");
    encode_event(&event, &mut all[2]);
    encode_alarm_key(&alarm_key(), &mut all[3]);
    let state = AlarmState {
        key: alarm_key(),
        firing: true,
        since_ms: 60_000,
        last_fired_ms: Some(120_000),
        value: 251.5,
        minute_ms: 60_000,
    };
    encode_alarm_state(&state, &mut all[4]);
    let record = AlarmRecord {
        ts_ms: 0,
        key: alarm_key(),
        firing: false,
        value: 3.5,
        minute_ms: -60_000,
    };
    encode_alarm_record(&record, &mut all[5]);
    let entry = OutboxEntry {
        id: 0,
        notification: Notification {
            url: "http://127.0.0.1:9099/hook".into(),
            body: "{\"alarm\":\"x\"}".into(),
            created_ms: 5,
            kind: crate::NotificationKind::Alertmanager,
        },
        attempts: 3,
        next_attempt_ms: 1_000,
        last_error: "http status 500".into(),
    };
    encode_outbox_entry(&entry, &mut all[6]);
    for (select, bytes) in all.iter_mut().enumerate() {
        bytes.insert(0, select as u8);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_decodes_and_every_truncation_is_refused_quietly() {
        let seeds = encodings();
        assert_eq!(seeds.len(), RECORDS.len());
        for seed in &seeds {
            let which = usize::from(seed[0]);
            assert!(reencode(which, &seed[1..]).is_some(), "{}", RECORDS[which]);
            store_codec(seed);
            for len in 0..seed.len() {
                store_codec(&seed[..len]);
            }
        }
    }
}
