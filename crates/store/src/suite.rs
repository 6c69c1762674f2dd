//! The behavioural suite every [`Store`] must pass, written once and run by
//! the `suite!` macro at the end against [`MemoryStore`] and [`RedbStore`]
//! (a new backend adds its own line there), followed by the tests only a
//! durable store can pass (reopen, crash).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use strata_model::{Hist, Increment, Kind, ModelError, SeriesKey, State};
use tempfile::TempDir;

use crate::{
    AlarmKey, AlarmRecord, AlarmState, AlarmUpdate, Commit, CommitOutcome, Cursor, Event,
    EventCutoffs, EventKind, EventQuery, MemoryStore, Notification, NotificationKind, RedbStore,
    Resolution, SourceProgress, SpoolStats, Store, StoreOptions,
};

const M: i64 = strata_model::MINUTE_MS;
const H: i64 = strata_model::time::HOUR_MS;
const D: i64 = strata_model::time::DAY_MS;

/// A store under test, with the directory it lives in (if any).
struct Fixture {
    store: Box<dyn Store>,
    _dir: Option<TempDir>,
}

type Open = dyn Fn(StoreOptions) -> Fixture;

fn memory(opts: StoreOptions) -> Fixture {
    Fixture {
        store: Box::new(MemoryStore::new(opts)),
        _dir: None,
    }
}

fn redb(opts: StoreOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    Fixture {
        store: Box::new(RedbStore::open(dir.path(), opts).unwrap()),
        _dir: Some(dir),
    }
}

fn key(metric: &str, labels: &[(&str, &str)]) -> Arc<SeriesKey> {
    let labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    Arc::new(SeriesKey::new(metric, labels).unwrap())
}

fn inc(series: &Arc<SeriesKey>, bucket_ms: i64, state: State) -> Increment {
    Increment {
        series: Arc::clone(series),
        bucket_ms,
        state,
    }
}

fn hist(sigfig: u8, values: &[f64]) -> State {
    let mut h = Hist::new(sigfig).unwrap();
    for &v in values {
        h.record(v).unwrap();
    }
    State::Histogram(Box::new(h))
}

fn progress(id: &str, seq: u64, watermark_ms: i64) -> SourceProgress {
    SourceProgress {
        source_id: id.to_owned(),
        epoch: 7,
        seq,
        watermark_ms,
        last_seen_ms: watermark_ms + 5,
    }
}

/// Commits increments only (no progress, no spool).
fn merge(store: &dyn Store, increments: &[Increment]) -> CommitOutcome {
    store
        .commit(Commit {
            increments,
            progress: &[],
            cursors: &[],
            spool_watermark_ms: None,
            now_ms: 0,
        })
        .unwrap()
}

/// Commits increments only, at commit time `now_ms`.
fn merge_at(store: &dyn Store, now_ms: i64, increments: &[Increment]) -> CommitOutcome {
    store
        .commit(Commit {
            increments,
            progress: &[],
            cursors: &[],
            spool_watermark_ms: None,
            now_ms,
        })
        .unwrap()
}

/// Commits increments and spools them with `watermark_ms`.
fn spool(store: &dyn Store, increments: &[Increment], watermark_ms: i64) -> CommitOutcome {
    store
        .commit(Commit {
            increments,
            progress: &[],
            cursors: &[],
            spool_watermark_ms: Some(watermark_ms),
            now_ms: watermark_ms + 1,
        })
        .unwrap()
}

/// Commits cursor writes only (no increments, no progress, no spool).
fn write_cursors(store: &dyn Store, cursors: &[Cursor]) -> CommitOutcome {
    store
        .commit(Commit {
            increments: &[],
            progress: &[],
            cursors,
            spool_watermark_ms: None,
            now_ms: 0,
        })
        .unwrap()
}

/// A stored cursor, as [`Store::cursors`] returns it.
fn stored(key: &str, value: &[u8]) -> (String, Vec<u8>) {
    (key.to_owned(), value.to_vec())
}

/// Every bucket of `k` at `resolution`, over all time.
fn read_all(s: &dyn Store, k: &SeriesKey, resolution: Resolution) -> Vec<(i64, State)> {
    s.read_at(k, resolution, i64::MIN, i64::MAX).unwrap()
}

/// What the buckets of `k` at `resolution` must be: its stored minutes merged
/// per bucket.
fn minutes_merged(s: &dyn Store, k: &SeriesKey, resolution: Resolution) -> Vec<(i64, State)> {
    let mut out: Vec<(i64, State)> = Vec::new();
    for (minute, state) in read_all(s, k, Resolution::Minute) {
        let start = resolution.bucket_start(minute);
        match out.last_mut() {
            Some((bucket, merged)) if *bucket == start => merged.merge(&state).unwrap(),
            _ => out.push((start, state)),
        }
    }
    out
}

fn event(ts_ms: i64, kind: EventKind, message: &str) -> Event {
    Event::new(ts_ms, kind, message)
}

fn messages(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.message.as_str()).collect()
}

fn epoch_is_non_zero_and_stable(open: &Open) {
    let f = open(StoreOptions::default());
    assert_ne!(f.store.epoch(), 0);
    assert_eq!(f.store.epoch(), f.store.epoch());
    assert_ne!(f.store.epoch(), open(StoreOptions::default()).store.epoch());
}

fn empty_store_reads_nothing(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    assert!(s.metrics().is_empty());
    assert_eq!(s.metric_kind("requests_total"), None);
    assert!(s.series_of("requests_total").is_empty());
    assert_eq!(s.series_count(), 0);
    assert!(
        s.read(&key("requests_total", &[]), i64::MIN, i64::MAX)
            .unwrap()
            .is_empty()
    );
    assert!(s.sources().is_empty());
    assert_eq!(s.source("eu"), None);
    assert!(s.spool_read(0, 10).unwrap().is_empty());
    assert_eq!(s.spool_stats(), SpoolStats::default());
    assert_eq!(s.delete_buckets_before(i64::MAX).unwrap(), 0);
    s.spool_ack(u64::MAX).unwrap();
    for r in Resolution::ALL {
        assert!(read_all(s, &key("requests_total", &[]), r).is_empty());
        assert_eq!(s.delete_before(r, i64::MAX).unwrap(), 0);
    }
    assert!(s.events(i64::MIN, 10).unwrap().is_empty());
    assert_eq!(s.delete_events_before(i64::MAX).unwrap(), 0);
    s.append_events(&[]).unwrap();
    assert!(s.events(i64::MIN, 10).unwrap().is_empty());
}

fn merges_across_commits(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let k = key("requests_total", &[("service", "checkout")]);
    merge(s, &[inc(&k, 0, State::Counter(2))]);
    merge(
        s,
        &[inc(&k, 0, State::Counter(3)), inc(&k, M, State::Counter(1))],
    );
    merge(s, &[inc(&k, 0, State::Counter(5))]);
    assert_eq!(
        s.read(&k, 0, 2 * M).unwrap(),
        vec![(0, State::Counter(10)), (M, State::Counter(1))]
    );
}

fn merges_within_one_commit(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let k = key("latency_ms", &[]);
    merge(s, &[inc(&k, 0, hist(2, &[1.0]))]);
    let outcome = merge(
        s,
        &[
            inc(&k, 0, hist(2, &[2.0])),
            inc(&k, 0, hist(2, &[3.0, 4.0])),
            // A new series merged twice in the commit that creates it.
            inc(&key("latency_ms", &[("az", "b")]), 0, hist(2, &[5.0])),
            inc(&key("latency_ms", &[("az", "b")]), 0, hist(2, &[6.0])),
        ],
    );
    assert!(outcome.merge_errors.is_empty());
    assert_eq!(
        s.read(&k, 0, M).unwrap(),
        vec![(0, hist(2, &[1.0, 2.0, 3.0, 4.0]))]
    );
    assert_eq!(
        s.read(&key("latency_ms", &[("az", "b")]), 0, M).unwrap(),
        vec![(0, hist(2, &[5.0, 6.0]))]
    );
    assert_eq!(s.series_count(), 2);
}

fn buckets_are_minutes(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let k = key("requests_total", &[]);
    merge(
        s,
        &[
            inc(&k, M + 1, State::Counter(1)),
            inc(&k, 2 * M - 1, State::Counter(1)),
        ],
    );
    assert_eq!(s.read(&k, 0, 10 * M).unwrap(), vec![(M, State::Counter(2))]);
}

fn read_range_is_half_open_and_ascending(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let k = key("requests_total", &[]);
    let other = key("requests_total", &[("service", "other")]);
    // Committed out of order, and with a neighbouring series on both sides of
    // the key space.
    merge(
        s,
        &[
            inc(&k, 3 * M, State::Counter(3)),
            inc(&other, 2 * M, State::Counter(99)),
            inc(&k, -M, State::Counter(9)),
            inc(&k, M, State::Counter(1)),
            inc(&k, 2 * M, State::Counter(2)),
        ],
    );
    let buckets = |from, to| -> Vec<i64> {
        s.read(&k, from, to)
            .unwrap()
            .into_iter()
            .map(|(b, _)| b)
            .collect()
    };
    assert_eq!(buckets(i64::MIN, i64::MAX), vec![-M, M, 2 * M, 3 * M]);
    assert_eq!(buckets(M, 3 * M), vec![M, 2 * M]);
    assert_eq!(buckets(M + 1, 3 * M + 1), vec![2 * M, 3 * M]);
    assert_eq!(buckets(0, M), Vec::<i64>::new());
    assert_eq!(buckets(3 * M, M), Vec::<i64>::new());
    assert_eq!(buckets(M, M), Vec::<i64>::new());
    assert_eq!(
        s.read(&other, 0, 10 * M).unwrap(),
        vec![(2 * M, State::Counter(99))]
    );
    assert!(
        s.read(&key("unknown_total", &[]), i64::MIN, i64::MAX)
            .unwrap()
            .is_empty()
    );
}

fn lists_series_and_metrics(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let a = key("requests_total", &[("service", "a")]);
    let b = key("requests_total", &[("service", "b")]);
    let l = key("latency_ms", &[("service", "a")]);
    merge(
        s,
        &[inc(&a, 0, State::Counter(1)), inc(&l, 0, State::Max(3.0))],
    );
    merge(
        s,
        &[inc(&b, 0, State::Counter(1)), inc(&a, M, State::Counter(1))],
    );

    let metrics: Vec<_> = s
        .metrics()
        .into_iter()
        .map(|m| (m.name, m.kind, m.series))
        .collect();
    assert_eq!(
        metrics,
        vec![
            ("latency_ms".to_owned(), Kind::Max, 1),
            ("requests_total".to_owned(), Kind::Counter, 2),
        ]
    );
    assert_eq!(s.metric_kind("requests_total"), Some(Kind::Counter));
    assert_eq!(s.metric_kind("latency_ms"), Some(Kind::Max));
    assert_eq!(s.metric_kind("nope"), None);
    let mut series = s.series_of("requests_total");
    series.sort();
    assert_eq!(series, vec![a, b]);
    assert_eq!(s.series_of("latency_ms"), vec![l]);
    assert!(s.series_of("nope").is_empty());
    assert_eq!(s.series_count(), 3);
}

fn upserts_progress(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let commit = |p: &[SourceProgress]| {
        s.commit(Commit {
            increments: &[],
            progress: p,
            cursors: &[],
            spool_watermark_ms: None,
            now_ms: 0,
        })
        .unwrap()
    };
    commit(&[progress("us", 1, 100), progress("eu", 4, 400)]);
    commit(&[progress("eu", 5, 500)]);
    commit(&[progress("ap", 1, 50)]);
    assert_eq!(
        s.sources(),
        vec![
            progress("ap", 1, 50),
            progress("eu", 5, 500),
            progress("us", 1, 100)
        ]
    );
    assert_eq!(s.source("eu"), Some(progress("eu", 5, 500)));
    assert_eq!(s.source("mars"), None);
    // A new epoch replaces the record whole, even with a lower seq.
    let restarted = SourceProgress {
        epoch: 8,
        ..progress("eu", 1, 600)
    };
    commit(std::slice::from_ref(&restarted));
    assert_eq!(s.source("eu"), Some(restarted));
}

fn cursors_commit_with_a_flush_and_read_back_by_prefix(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    assert_eq!(s.cursors("").unwrap(), vec![]);
    let k = key("requests_total", &[]);
    let out = s
        .commit(Commit {
            increments: &[inc(&k, 0, State::Counter(3))],
            progress: &[progress("eu", 1, 100)],
            cursors: &[
                Cursor::set("otlp/b", [2]),
                Cursor::set("prom/a", [3]),
                Cursor::set("otlp/a", vec![1, 0, 255]),
            ],
            spool_watermark_ms: Some(60_000),
            now_ms: 61_000,
        })
        .unwrap();
    assert_eq!(out.spool_seq, Some(1));
    assert_eq!(s.read(&k, 0, M).unwrap(), vec![(0, State::Counter(3))]);
    assert_eq!(s.source("eu"), Some(progress("eu", 1, 100)));
    assert_eq!(
        s.cursors("otlp/").unwrap(),
        vec![stored("otlp/a", &[1, 0, 255]), stored("otlp/b", &[2])]
    );
    assert_eq!(s.cursors("prom/").unwrap(), vec![stored("prom/a", &[3])]);
    assert_eq!(
        s.cursors("").unwrap(),
        vec![
            stored("otlp/a", &[1, 0, 255]),
            stored("otlp/b", &[2]),
            stored("prom/a", &[3])
        ]
    );
    // A whole key is a prefix of itself.
    assert_eq!(s.cursors("otlp/b").unwrap(), vec![stored("otlp/b", &[2])]);
    assert_eq!(s.cursors("statsd/").unwrap(), vec![]);
}

fn cursor_prefixes_do_not_leak(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    // Around "otlp/" in byte order: "otl", "otlp" and "otlp.a" sort before
    // it, "otlp0" ('/' + 1) and "otlpx/a" after every key it selects.
    write_cursors(
        s,
        &[
            Cursor::set("otlpx/a", [1]),
            Cursor::set("otlp0", [2]),
            Cursor::set("otlp/ü", [3]),
            Cursor::set("otlp", [4]),
            Cursor::set("otlp.a", [5]),
            Cursor::set("otlp/a", [6]),
            Cursor::set("otl", [7]),
        ],
    );
    assert_eq!(
        s.cursors("otlp/").unwrap(),
        vec![stored("otlp/a", &[6]), stored("otlp/ü", &[3])]
    );
    assert_eq!(s.cursors("otlpx").unwrap(), vec![stored("otlpx/a", &[1])]);
    let keys: Vec<String> = s
        .cursors("otlp")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        ["otlp", "otlp.a", "otlp/a", "otlp/ü", "otlp0", "otlpx/a"]
    );
    assert_eq!(s.cursors("").unwrap().len(), 7);
}

fn cursors_are_overwritten_and_deleted(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    write_cursors(
        s,
        &[
            Cursor::set("otlp/a", [1]),
            Cursor::set("otlp/b", [2]),
            Cursor::set("otlp/c", [3]),
        ],
    );
    write_cursors(
        s,
        &[
            Cursor::set("otlp/a", [10, 11]),
            Cursor::delete("otlp/b"),
            // Deleting a key that is not stored changes nothing.
            Cursor::delete("otlp/nope"),
        ],
    );
    assert_eq!(
        s.cursors("otlp/").unwrap(),
        vec![stored("otlp/a", &[10, 11]), stored("otlp/c", &[3])]
    );
    // Within one commit, the later write of a key wins.
    write_cursors(
        s,
        &[
            Cursor::set("otlp/a", [20]),
            Cursor::delete("otlp/a"),
            Cursor::delete("otlp/c"),
            Cursor::set("otlp/c", [30]),
            Cursor::set("otlp/d", [40]),
            Cursor::set("otlp/d", [41]),
            // An empty value is a value, not a delete.
            Cursor::set("otlp/e", []),
        ],
    );
    assert_eq!(
        s.cursors("otlp/").unwrap(),
        vec![
            stored("otlp/c", &[30]),
            stored("otlp/d", &[41]),
            stored("otlp/e", &[])
        ]
    );
}

fn a_cursors_only_commit_is_applied(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let out = write_cursors(s, &[Cursor::set("prom/x", [9])]);
    assert_eq!(out.spool_seq, None);
    assert_eq!(s.cursors("prom/").unwrap(), vec![stored("prom/x", &[9])]);
    // A commit of deletes alone is applied too.
    write_cursors(s, &[Cursor::delete("prom/x")]);
    assert_eq!(s.cursors("").unwrap(), vec![]);
    // Nothing else was written.
    assert_eq!(s.spool_stats(), SpoolStats::default());
    assert!(s.sources().is_empty());
    assert_eq!(s.series_count(), 0);
}

fn spool_appends_reads_and_acks(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let k = key("latency_ms", &[("service", "checkout")]);
    let first = [
        inc(&k, 0, hist(3, &[1.5, 700.0])),
        inc(&k, M, hist(3, &[2.0])),
    ];
    let out = spool(s, &first, 60_000);
    assert_eq!(out.spool_seq, Some(1));
    assert_eq!(out.spool_dropped, 0);
    // Not every commit forwards.
    assert_eq!(merge(s, &[inc(&k, M, hist(3, &[9.0]))]).spool_seq, None);
    assert_eq!(spool(s, &[], 120_000).spool_seq, Some(2));
    let third = [inc(&key("requests_total", &[]), 2 * M, State::Counter(4))];
    assert_eq!(spool(s, &third, 180_000).spool_seq, Some(3));

    let batches = s.spool_read(0, 10).unwrap();
    assert_eq!(
        batches.iter().map(|b| b.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(batches[0].watermark_ms, 60_000);
    assert_eq!(batches[0].created_ms, 60_001);
    assert_eq!(batches[0].increments, first.to_vec());
    assert!(batches[1].increments.is_empty());
    assert_eq!(batches[1].watermark_ms, 120_000);
    assert_eq!(batches[2].increments, third.to_vec());

    let stats = s.spool_stats();
    assert_eq!((stats.batches, stats.first_seq, stats.last_seq), (3, 1, 3));
    assert!(stats.bytes > 0);
    assert_eq!(stats.dropped_batches, 0);

    let seqs = |after, max| -> Vec<u64> {
        s.spool_read(after, max)
            .unwrap()
            .iter()
            .map(|b| b.seq)
            .collect()
    };
    assert_eq!(seqs(1, 10), vec![2, 3]);
    assert_eq!(seqs(0, 2), vec![1, 2]);
    assert_eq!(seqs(3, 10), Vec::<u64>::new());
    assert_eq!(seqs(0, 0), Vec::<u64>::new());
    assert_eq!(seqs(u64::MAX, 10), Vec::<u64>::new());

    s.spool_ack(2).unwrap();
    assert_eq!(seqs(0, 10), vec![3]);
    let after_ack = s.spool_stats();
    assert_eq!(
        (after_ack.batches, after_ack.first_seq, after_ack.last_seq),
        (1, 3, 3)
    );
    assert!(after_ack.bytes < stats.bytes && after_ack.bytes > 0);
    // Acking again, or below what is left, changes nothing.
    s.spool_ack(2).unwrap();
    s.spool_ack(0).unwrap();
    assert_eq!(s.spool_stats(), after_ack);

    s.spool_ack(3).unwrap();
    assert_eq!(
        s.spool_stats(),
        SpoolStats {
            batches: 0,
            bytes: 0,
            first_seq: 0,
            last_seq: 3,
            dropped_batches: 0
        }
    );
    assert!(s.spool_read(0, 10).unwrap().is_empty());
}

fn spool_seqs_stay_contiguous(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let mut seqs = Vec::new();
    for round in 0..4i64 {
        seqs.push(spool(s, &[], round * M).spool_seq.unwrap());
        seqs.push(spool(s, &[], round * M + 1).spool_seq.unwrap());
        // Acking everything, even past the end, never resets the sequence.
        s.spool_ack(u64::MAX).unwrap();
    }
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());
    assert_eq!(s.spool_stats().last_seq, 8);
    assert_eq!(spool(s, &[], 0).spool_seq, Some(9));
}

fn spool_cap_drops_oldest(open: &Open) {
    // Measure one batch, then cap the spool at three of them.
    let k = key("requests_total", &[("service", "checkout")]);
    let batch = [inc(&k, 0, State::Counter(1))];
    let one = {
        let f = open(StoreOptions::default());
        spool(&*f.store, &batch, 0);
        f.store.spool_stats().bytes
    };
    let f = open(StoreOptions {
        spool_max_bytes: 3 * one,
        ..StoreOptions::default()
    });
    let s = &*f.store;
    for i in 0..3 {
        assert_eq!(spool(s, &batch, i).spool_dropped, 0);
    }
    assert_eq!(s.spool_stats().bytes, 3 * one);
    let out = spool(s, &batch, 3);
    assert_eq!((out.spool_seq, out.spool_dropped), (Some(4), 1));
    let out = spool(s, &batch, 4);
    assert_eq!((out.spool_seq, out.spool_dropped), (Some(5), 1));
    let stats = s.spool_stats();
    assert_eq!(
        stats,
        SpoolStats {
            batches: 3,
            bytes: 3 * one,
            first_seq: 3,
            last_seq: 5,
            dropped_batches: 2
        }
    );
    let seqs: Vec<u64> = s.spool_read(0, 10).unwrap().iter().map(|b| b.seq).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    // Merged state is not affected by what the spool drops.
    assert_eq!(s.read(&k, 0, M).unwrap(), vec![(0, State::Counter(5))]);

    // A batch larger than the whole cap pushes out everything else but is kept.
    let big: Vec<Increment> = (0..20)
        .map(|i| {
            inc(
                &key("big_total", &[("i", &i.to_string())]),
                0,
                State::Counter(1),
            )
        })
        .collect();
    let out = spool(s, &big, 5);
    assert_eq!((out.spool_seq, out.spool_dropped), (Some(6), 3));
    let stats = s.spool_stats();
    assert_eq!((stats.batches, stats.first_seq, stats.last_seq), (1, 6, 6));
    assert_eq!(stats.dropped_batches, 5);
    assert!(stats.bytes > 3 * one);
    assert_eq!(s.spool_read(0, 10).unwrap()[0].increments, big);
}

fn merge_errors_skip_only_the_bad_increments(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let c = key("requests_total", &[]);
    let h = key("latency_ms", &[]);
    merge(
        s,
        &[inc(&c, 0, State::Counter(1)), inc(&h, 0, hist(2, &[1.0]))],
    );

    let wrong_kind_new_series = key("requests_total", &[("service", "x")]);
    let fresh = key("fresh_total", &[]);
    let increments = [
        // Kind differs from the metric's recorded kind, on a known and a new series.
        inc(&c, 0, State::Max(1.0)),
        inc(&wrong_kind_new_series, 0, State::Max(1.0)),
        // Histogram precision differs from the stored bucket.
        inc(&h, 0, hist(3, &[2.0])),
        // Good ones around them.
        inc(&c, 0, State::Counter(2)),
        inc(&h, 0, hist(2, &[3.0])),
        inc(&fresh, M, State::Counter(7)),
        // Kind differs from the kind this very commit fixed for a new metric.
        inc(&key("fresh_total", &[("a", "b")]), M, State::Max(2.0)),
    ];
    let out = s
        .commit(Commit {
            increments: &increments,
            progress: &[progress("eu", 1, 0)],
            cursors: &[],
            spool_watermark_ms: Some(0),
            now_ms: 0,
        })
        .unwrap();

    let errors: Vec<(String, ModelError)> = out.merge_errors;
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert_eq!(errors[0].0, c.to_string());
    assert_eq!(
        errors[0].1,
        ModelError::KindMismatch {
            expected: Kind::Counter,
            found: Kind::Max
        }
    );
    assert_eq!(errors[1].0, wrong_kind_new_series.to_string());
    assert_eq!(errors[2].0, h.to_string());
    assert!(matches!(errors[2].1, ModelError::PrecisionMismatch { .. }));
    assert!(matches!(errors[3].1, ModelError::KindMismatch { .. }));

    assert_eq!(s.read(&c, 0, M).unwrap(), vec![(0, State::Counter(3))]);
    assert_eq!(s.read(&h, 0, M).unwrap(), vec![(0, hist(2, &[1.0, 3.0]))]);
    assert_eq!(
        s.read(&fresh, 0, 2 * M).unwrap(),
        vec![(M, State::Counter(7))]
    );
    // Refused increments create no series and fix no kind.
    assert_eq!(s.series_count(), 3);
    assert_eq!(s.metric_kind("fresh_total"), Some(Kind::Counter));
    assert!(s.read(&wrong_kind_new_series, 0, M).unwrap().is_empty());
    // The rest of the commit went through: progress, and a spool batch of
    // exactly what merged.
    assert_eq!(s.source("eu"), Some(progress("eu", 1, 0)));
    let batch = &s.spool_read(0, 1).unwrap()[0];
    assert_eq!(
        batch.increments,
        vec![
            increments[3].clone(),
            increments[4].clone(),
            increments[5].clone()
        ]
    );
}

fn retention_deletes_old_buckets(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let a = key("requests_total", &[("service", "a")]);
    let b = key("latency_ms", &[]);
    merge(
        s,
        &[
            inc(&a, 0, State::Counter(1)),
            inc(&a, M, State::Counter(1)),
            inc(&a, 2 * M, State::Counter(1)),
            inc(&b, -M, State::Max(1.0)),
            inc(&b, 2 * M, State::Max(1.0)),
        ],
    );
    assert_eq!(s.delete_buckets_before(i64::MIN).unwrap(), 0);
    assert_eq!(s.delete_buckets_before(M).unwrap(), 2);
    assert_eq!(s.delete_buckets_before(M).unwrap(), 0);
    let buckets = |k| -> Vec<i64> {
        s.read(k, i64::MIN, i64::MAX)
            .unwrap()
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    };
    assert_eq!(buckets(&a), vec![M, 2 * M]);
    assert_eq!(buckets(&b), vec![2 * M]);
    // Series and kinds outlive their buckets; a new bucket merges from empty.
    assert_eq!(s.series_count(), 2);
    merge(s, &[inc(&a, 0, State::Counter(5))]);
    assert_eq!(s.read(&a, 0, M).unwrap(), vec![(0, State::Counter(5))]);
    assert_eq!(s.delete_buckets_before(i64::MAX).unwrap(), 4);
    assert!(buckets(&a).is_empty());
}

fn rollups_are_the_merge_of_their_minutes(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let c = key("requests_total", &[("service", "checkout")]);
    let h = key("latency_ms", &[("service", "checkout")]);
    // Minutes on both sides of an hour and of a day boundary, over several
    // commits, with several increments for one bucket in one commit.
    merge(
        s,
        &[
            inc(&c, D - 2 * M, State::Counter(1)),
            inc(&c, D - M + 5, State::Counter(2)),
            inc(&c, D - M, State::Counter(4)),
            inc(&h, D - 2 * M, hist(2, &[1.0, 2.0])),
        ],
    );
    merge(
        s,
        &[
            inc(&c, D, State::Counter(8)),
            inc(&c, D + H + 3 * M, State::Counter(16)),
            inc(&h, D + 1, hist(2, &[30.0])),
            inc(&h, D - M, hist(2, &[4.0])),
        ],
    );
    // Late increments into minutes already committed, one in the previous day.
    merge(
        s,
        &[
            inc(&c, D - 2 * M, State::Counter(32)),
            inc(&h, D - 2 * M + 7, hist(2, &[5.0])),
            inc(&c, D + 59 * M, State::Counter(64)),
        ],
    );

    assert_eq!(
        read_all(s, &c, Resolution::Hour),
        vec![
            (D - H, State::Counter(1 + 2 + 4 + 32)),
            (D, State::Counter(8 + 64)),
            (D + H, State::Counter(16)),
        ]
    );
    assert_eq!(
        read_all(s, &c, Resolution::Day),
        vec![(0, State::Counter(39)), (D, State::Counter(88))]
    );
    assert_eq!(
        read_all(s, &h, Resolution::Day),
        vec![(0, hist(2, &[1.0, 2.0, 4.0, 5.0])), (D, hist(2, &[30.0]))]
    );
    for k in [&c, &h] {
        for r in [Resolution::Hour, Resolution::Day] {
            assert_eq!(read_all(s, k, r), minutes_merged(s, k, r), "{k} {r}");
        }
    }
    assert_eq!(
        read_all(s, &c, Resolution::Minute),
        s.read(&c, i64::MIN, i64::MAX).unwrap()
    );

    // Ranges select bucket starts, half-open, not rounded.
    let starts = |r, from, to| -> Vec<i64> {
        s.read_at(&c, r, from, to)
            .unwrap()
            .into_iter()
            .map(|(b, _)| b)
            .collect()
    };
    assert_eq!(starts(Resolution::Hour, D - H, D + H), vec![D - H, D]);
    assert_eq!(
        starts(Resolution::Hour, D - H + 1, D + H + 1),
        vec![D, D + H]
    );
    assert_eq!(starts(Resolution::Day, 1, D), Vec::<i64>::new());
    assert_eq!(starts(Resolution::Day, D, D), Vec::<i64>::new());
    assert!(
        s.read_at(
            &key("unknown_total", &[]),
            Resolution::Day,
            i64::MIN,
            i64::MAX
        )
        .unwrap()
        .is_empty()
    );
}

fn a_refused_rollup_merge_skips_every_resolution(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let h = key("latency_ms", &[]);
    let precision = |error: &ModelError| matches!(error, ModelError::PrecisionMismatch { .. });
    merge(s, &[inc(&h, 0, hist(2, &[1.0]))]);
    // A new minute of another precision is taken (it is a minute of its
    // own), and folding minute 0 into its fresh hour and day is not refused.
    assert!(
        merge(s, &[inc(&h, M, hist(3, &[2.0]))])
            .merge_errors
            .is_empty()
    );
    // Minute 2H opens: folding minute M, its hour and day both refuse it.
    assert!(
        merge(s, &[inc(&h, 2 * H, hist(2, &[5.0]))])
            .merge_errors
            .is_empty()
    );
    let increments = [
        // Late, into a stored minute of another precision: refused by it.
        inc(&h, 0, hist(3, &[4.0])),
        // Late, into a new minute: the minute would take it, its hour
        // refuses it, so it goes nowhere.
        inc(&h, 2 * M, hist(3, &[3.0])),
        // Late, and taken by minute, hour and day.
        inc(&h, 3 * M, hist(2, &[6.0])),
    ];
    let out = s
        .commit(Commit {
            increments: &increments,
            progress: &[],
            cursors: &[],
            spool_watermark_ms: Some(0),
            now_ms: 0,
        })
        .unwrap();
    // Reported once each, and skipped at every resolution.
    assert_eq!(out.merge_errors.len(), 2, "{:?}", out.merge_errors);
    for (series, error) in &out.merge_errors {
        assert_eq!(series, &h.to_string());
        assert!(precision(error), "{error}");
    }
    assert_eq!(
        read_all(s, &h, Resolution::Minute),
        vec![
            (0, hist(2, &[1.0])),
            (M, hist(3, &[2.0])),
            (3 * M, hist(2, &[6.0])),
            (2 * H, hist(2, &[5.0]))
        ]
    );
    // Minute M is left out of its rollups, and only of them.
    assert_eq!(
        read_all(s, &h, Resolution::Hour),
        vec![(0, hist(2, &[1.0, 6.0])), (2 * H, hist(2, &[5.0]))]
    );
    assert_eq!(
        read_all(s, &h, Resolution::Day),
        vec![(0, hist(2, &[1.0, 6.0, 5.0]))]
    );
    assert_eq!(
        s.spool_read(0, 1).unwrap()[0].increments,
        vec![increments[2].clone()]
    );
    let events = s.events(i64::MIN, 10).unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    for (event, rollup) in events.iter().rev().zip(["hour", "day"]) {
        assert_eq!(event.kind, EventKind::RollupRefused);
        let start = format!("minute {M} of {h} left out of its {rollup} rollup");
        assert!(event.message.starts_with(&start), "{event:?}");
    }

    // A new series' second minute of another precision is taken too, and
    // a read of its hour leaves it out as folding will.
    let fresh = key("latency_ms", &[("az", "b")]);
    let out = merge(
        s,
        &[
            inc(&fresh, 0, hist(2, &[1.0])),
            inc(&fresh, M, hist(3, &[1.0])),
        ],
    );
    assert!(out.merge_errors.is_empty());
    assert_eq!(read_all(s, &fresh, Resolution::Minute).len(), 2);
    for r in [Resolution::Hour, Resolution::Day] {
        assert_eq!(read_all(s, &fresh, r), vec![(0, hist(2, &[1.0]))], "{r}");
    }
}

/// Commits of counters at random minutes (in order, repeated, late, into
/// minutes retention deleted) with minute retention in between: every
/// resolution always reads what a model of the increments says.
fn rollups_match_a_model_in_any_order(open: &Open) {
    use std::collections::BTreeMap;
    use strata_model::bench_inputs::XorShift;
    let series = [
        key("a_total", &[]),
        key("b_total", &[]),
        key("c_total", &[("x", "1")]),
    ];
    for seed in 1..=12u64 {
        let f = open(StoreOptions::default());
        let s = &*f.store;
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ seed);
        // Per series and resolution, bucket start → sum.
        let mut model: Vec<[BTreeMap<i64, u64>; 3]> = vec![Default::default(); series.len()];
        let mut now_minute = 0i64;
        for round in 0..40 {
            now_minute += (rng.next_u64() % 3) as i64;
            let count = 1 + rng.next_u64() % 6;
            let increments: Vec<Increment> = (0..count)
                .map(|_| {
                    let k = (rng.next_u64() % series.len() as u64) as usize;
                    // Mostly the current minute or the one before, some late.
                    let back = match rng.next_u64() % 8 {
                        0 => rng.next_u64() % 90,
                        1..=3 => 1,
                        _ => 0,
                    } as i64;
                    let minute = (now_minute - back).max(0) * M;
                    let value = 1 + rng.next_u64() % 100;
                    for r in Resolution::ALL {
                        *model[k][r.index()]
                            .entry(r.bucket_start(minute))
                            .or_default() += value;
                    }
                    inc(&series[k], minute, State::Counter(value))
                })
                .collect();
            let out = merge(s, &increments);
            assert!(out.merge_errors.is_empty(), "{:?}", out.merge_errors);
            if rng.next_u64().is_multiple_of(8) {
                let before = (now_minute - (rng.next_u64() % 30) as i64) * M;
                s.delete_before(Resolution::Minute, before).unwrap();
                for m in &mut model {
                    m[Resolution::Minute.index()].retain(|&at, _| at >= before);
                }
            }
            for (k, expected) in series.iter().zip(&model) {
                for r in Resolution::ALL {
                    let read: Vec<_> = read_all(s, k, r)
                        .into_iter()
                        .map(|(at, state)| match state {
                            State::Counter(n) => (at, n),
                            other => panic!("{other:?}"),
                        })
                        .collect();
                    let expected: Vec<_> =
                        expected[r.index()].iter().map(|(&a, &n)| (a, n)).collect();
                    assert_eq!(read, expected, "seed {seed} round {round} {k} {r}");
                }
            }
        }
    }
}

/// A reader of hours never sees a minute twice (in its hour and as the open
/// minute) nor misses one, while every commit folds the previous minute.
/// Minute `i` holds 2^i, so a read is `2^c - 1` exactly when it holds the
/// first `c` minutes once each.
fn hour_reads_are_whole_while_minutes_fold(open: &Open) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let k = key("requests_total", &[]);
    let committed = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for minute in 0..60 {
                merge(s, &[inc(&k, minute * M, State::Counter(1 << minute))]);
                committed.store(minute as u64 + 1, Ordering::SeqCst);
            }
        });
        while !writer.is_finished() {
            let before = committed.load(Ordering::SeqCst);
            let read = s.read_at(&k, Resolution::Hour, 0, H).unwrap();
            let after = committed.load(Ordering::SeqCst);
            let n = match read.as_slice() {
                [] => 0,
                [(0, State::Counter(n))] => *n,
                other => panic!("{other:?}"),
            };
            assert!((n + 1).is_power_of_two(), "{n:b}: a minute counted twice");
            // The commit in flight may be visible before it is counted.
            let minutes = u64::from((n + 1).trailing_zeros());
            assert!(
                before <= minutes && minutes <= after + 1,
                "{before} {minutes} {after}"
            );
        }
        writer.join().unwrap();
    });
    assert_eq!(
        s.read_at(&k, Resolution::Hour, 0, H).unwrap(),
        vec![(0, State::Counter((1 << 60) - 1))]
    );
}

/// Series are found by key whichever `Arc` carries it, and the `Arc` of an
/// expired series leaves no trace: keys made after it (very likely at its
/// freed address) are new series.
fn series_are_found_by_key_whatever_arc_carries_it(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let first = key("requests_total", &[("az", "a")]);
    let equal = key("requests_total", &[("az", "a")]);
    assert!(!Arc::ptr_eq(&first, &equal));
    merge_at(s, 1, &[inc(&first, 0, State::Counter(1))]);
    merge_at(
        s,
        1,
        &[
            inc(&equal, 0, State::Counter(2)),
            inc(&first, 0, State::Counter(4)),
        ],
    );
    assert_eq!(s.series_count(), 1);
    assert_eq!(
        read_all(s, &equal, Resolution::Minute),
        vec![(0, State::Counter(7))]
    );
    assert_eq!(s.expire_series(2).unwrap(), 1);
    drop((first, equal));
    for i in 0..50 {
        let other = key("requests_total", &[("az", &format!("b{i}"))]);
        merge_at(s, 3, &[inc(&other, 0, State::Counter(1))]);
        assert_eq!(
            read_all(s, &other, Resolution::Minute),
            vec![(0, State::Counter(1))]
        );
    }
    assert_eq!(s.series_count(), 50);
    assert!(
        read_all(
            s,
            &key("requests_total", &[("az", "a")]),
            Resolution::Minute
        )
        .is_empty()
    );
}

fn retention_is_per_resolution(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let k = key("requests_total", &[]);
    merge(
        s,
        &[
            inc(&k, 0, State::Counter(1)),
            inc(&k, M, State::Counter(2)),
            inc(&k, H, State::Counter(4)),
            inc(&k, D + M, State::Counter(8)),
        ],
    );
    // Minute retention (old and new API alike) leaves hours and days intact.
    assert_eq!(s.delete_buckets_before(H).unwrap(), 2);
    assert_eq!(s.delete_before(Resolution::Minute, D).unwrap(), 1);
    assert_eq!(
        read_all(s, &k, Resolution::Minute),
        vec![(D + M, State::Counter(8))]
    );
    assert_eq!(
        read_all(s, &k, Resolution::Hour),
        vec![
            (0, State::Counter(3)),
            (H, State::Counter(4)),
            (D, State::Counter(8))
        ]
    );
    assert_eq!(
        read_all(s, &k, Resolution::Day),
        vec![(0, State::Counter(7)), (D, State::Counter(8))]
    );

    // A late increment into a deleted minute starts that minute from empty
    // but still adds to its hour and day.
    merge(s, &[inc(&k, M, State::Counter(16))]);
    assert_eq!(
        s.read_at(&k, Resolution::Minute, 0, H).unwrap(),
        vec![(M, State::Counter(16))]
    );
    assert_eq!(
        s.read_at(&k, Resolution::Hour, 0, H).unwrap(),
        vec![(0, State::Counter(19))]
    );
    assert_eq!(
        s.read_at(&k, Resolution::Day, 0, D).unwrap(),
        vec![(0, State::Counter(23))]
    );

    // Hour retention leaves days (and minutes) alone; the boundary is kept.
    assert_eq!(s.delete_before(Resolution::Hour, H).unwrap(), 1);
    assert_eq!(s.delete_before(Resolution::Hour, H).unwrap(), 0);
    assert_eq!(
        read_all(s, &k, Resolution::Hour),
        vec![(H, State::Counter(4)), (D, State::Counter(8))]
    );
    assert_eq!(read_all(s, &k, Resolution::Minute).len(), 2);
    assert_eq!(s.delete_before(Resolution::Day, D).unwrap(), 1);
    assert_eq!(
        read_all(s, &k, Resolution::Day),
        vec![(D, State::Counter(8))]
    );
    assert_eq!(read_all(s, &k, Resolution::Hour).len(), 2);
    // Day D holds only the open minute D + M so far: minute retention folds
    // it (and deletes the minutes), then day retention has it to delete.
    assert_eq!(s.delete_before(Resolution::Day, i64::MAX).unwrap(), 0);
    assert_eq!(
        read_all(s, &k, Resolution::Day),
        vec![(D, State::Counter(8))]
    );
    assert_eq!(s.delete_before(Resolution::Minute, i64::MAX).unwrap(), 2);
    assert_eq!(
        read_all(s, &k, Resolution::Day),
        vec![(D, State::Counter(8))]
    );
    assert_eq!(s.delete_before(Resolution::Day, i64::MAX).unwrap(), 1);
    assert!(read_all(s, &k, Resolution::Day).is_empty());
    assert_eq!(s.series_count(), 1);
}

fn events_are_listed_newest_first(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    s.append_events(&[
        event(300, EventKind::SourceConnected, "c"),
        event(100, EventKind::SourceConnected, "a"),
        event(200, EventKind::AlarmFired, "b"),
    ])
    .unwrap();
    s.append_events(&[event(400, EventKind::AlarmResolved, "d")])
        .unwrap();
    assert_eq!(
        s.events(i64::MIN, 10).unwrap(),
        vec![
            event(400, EventKind::AlarmResolved, "d"),
            event(300, EventKind::SourceConnected, "c"),
            event(200, EventKind::AlarmFired, "b"),
            event(100, EventKind::SourceConnected, "a"),
        ]
    );
    // The limit keeps the newest; since is inclusive.
    assert_eq!(messages(&s.events(i64::MIN, 2).unwrap()), vec!["d", "c"]);
    assert_eq!(messages(&s.events(200, 10).unwrap()), vec!["d", "c", "b"]);
    assert_eq!(messages(&s.events(201, 1).unwrap()), vec!["d"]);
    assert!(s.events(401, 10).unwrap().is_empty());
    assert!(s.events(i64::MIN, 0).unwrap().is_empty());

    // Equal timestamps, within one append and across appends, never replace
    // each other; the last appended is listed first.
    s.append_events(&[
        event(200, EventKind::SourceDisconnected, "b2"),
        event(200, EventKind::SourceDisconnected, "b3"),
    ])
    .unwrap();
    s.append_events(&[event(200, EventKind::SourceDisconnected, "b4")])
        .unwrap();
    assert_eq!(
        messages(&s.events(200, 10).unwrap()),
        vec!["d", "c", "b4", "b3", "b2", "b"]
    );
    assert_eq!(
        messages(&s.events(i64::MIN, 10).unwrap()[2..5]),
        vec!["b4", "b3", "b2"]
    );
    assert_eq!(s.events(i64::MIN, usize::MAX).unwrap().len(), 7);
}

fn event_retention(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let events: Vec<Event> = [-5, 0, 10, 10, 20]
        .into_iter()
        .enumerate()
        .map(|(i, ts)| event(ts, EventKind::SourceRefused, &i.to_string()))
        .collect();
    s.append_events(&events).unwrap();
    assert_eq!(s.delete_events_before(i64::MIN).unwrap(), 0);
    assert_eq!(s.delete_events_before(10).unwrap(), 2);
    assert_eq!(s.delete_events_before(10).unwrap(), 0);
    assert_eq!(
        messages(&s.events(i64::MIN, 10).unwrap()),
        vec!["4", "3", "2"]
    );
    // New events after retention still never collide with the kept ones.
    s.append_events(&[event(10, EventKind::SourceRefused, "5")])
        .unwrap();
    assert_eq!(
        messages(&s.events(i64::MIN, 10).unwrap()),
        vec!["4", "5", "3", "2"]
    );
    assert_eq!(s.delete_events_before(i64::MAX).unwrap(), 4);
    assert!(s.events(i64::MIN, 10).unwrap().is_empty());
}

fn events_are_queried_by_range_and_kind(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    s.append_events(&[
        event(100, EventKind::SourceConnected, "a"),
        event(200, EventKind::AlarmFired, "b"),
        event(200, EventKind::SourceConnected, "c"),
        event(300, EventKind::AlarmResolved, "d"),
        event(400, EventKind::SourceConnected, "e"),
    ])
    .unwrap();
    let query = |from_ms, to_ms, kinds: &[EventKind], limit| {
        let q = EventQuery {
            from_ms,
            to_ms,
            kinds: kinds.to_vec(),
            limit,
        };
        messages(&s.query_events(&q).unwrap())
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let connected = [EventKind::SourceConnected];
    assert_eq!(query(i64::MIN, None, &[], 10), ["e", "d", "c", "b", "a"]);
    assert_eq!(query(i64::MIN, None, &connected, 10), ["e", "c", "a"]);
    // `to` is exclusive, `from` inclusive; the limit keeps the newest matches.
    assert_eq!(query(200, Some(400), &[], 10), ["d", "c", "b"]);
    assert_eq!(query(100, Some(400), &connected, 1), ["c"]);
    assert_eq!(
        query(
            i64::MIN,
            None,
            &[EventKind::AlarmFired, EventKind::AlarmResolved],
            10
        ),
        ["d", "b"]
    );
    assert!(query(i64::MIN, None, &[EventKind::SpoolOverflow], 10).is_empty());
    assert!(query(300, Some(300), &[], 10).is_empty());
    assert!(query(400, Some(100), &[], 10).is_empty());
    assert!(query(i64::MIN, None, &[], 0).is_empty());
    assert_eq!(query(i64::MIN, Some(i64::MAX), &[], usize::MAX).len(), 5);
}

fn event_retention_per_kind(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let kinds = [
        EventKind::AlarmFired,
        EventKind::SourceConnected,
        EventKind::SpoolOverflow,
    ];
    let events: Vec<Event> = [10, 20, 30]
        .into_iter()
        .flat_map(|ts| kinds.map(|k| event(ts, k, &format!("{k}@{ts}"))))
        .collect();
    s.append_events(&events).unwrap();
    // Alarms kept longer, connections shorter than the rest.
    let cutoffs = EventCutoffs {
        default_before_ms: 20,
        by_kind: [(EventKind::AlarmFired, 0), (EventKind::SourceConnected, 31)].into(),
    };
    assert_eq!(s.delete_events(&cutoffs).unwrap(), 4);
    assert_eq!(s.delete_events(&cutoffs).unwrap(), 0);
    assert_eq!(
        messages(&s.events(i64::MIN, 10).unwrap()),
        vec![
            "spool_overflow@30",
            "alarm_fired@30",
            "spool_overflow@20",
            "alarm_fired@20",
            "alarm_fired@10",
        ]
    );
    // A cutoff of its own that equals the default is one range.
    let same = EventCutoffs {
        default_before_ms: 25,
        by_kind: [(EventKind::AlarmFired, 25)].into(),
    };
    assert_eq!(s.delete_events(&same).unwrap(), 3);
    assert_eq!(
        messages(&s.events(i64::MIN, 10).unwrap()),
        vec!["spool_overflow@30", "alarm_fired@30"]
    );
    // New events after retention still never collide with the kept ones.
    s.append_events(&[event(30, EventKind::AlarmFired, "new")])
        .unwrap();
    assert_eq!(
        messages(&s.events(30, 10).unwrap()),
        vec!["new", "spool_overflow@30", "alarm_fired@30"]
    );
}

fn spool_overflow_appends_an_event(open: &Open) {
    let f = open(StoreOptions {
        spool_max_bytes: 1,
        ..StoreOptions::default()
    });
    let s = &*f.store;
    let commit = |now_ms| {
        s.commit(Commit {
            increments: &[],
            progress: &[],
            cursors: &[],
            spool_watermark_ms: Some(0),
            now_ms,
        })
        .unwrap()
    };
    // The first batch alone is over the cap but kept: nothing dropped.
    assert_eq!(commit(1_000).spool_dropped, 0);
    assert!(s.events(i64::MIN, 10).unwrap().is_empty());
    assert_eq!(commit(2_000).spool_dropped, 1);
    let events = s.events(i64::MIN, 10).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].ts_ms, 2_000);
    assert_eq!(events[0].kind, EventKind::SpoolOverflow);
    assert!(
        events[0]
            .message
            .contains("dropped 1 oldest batch, seq 1..=1"),
        "{}",
        events[0].message
    );

    // Several batches dropped by one commit make one event naming them all.
    let f = open(StoreOptions::default());
    let s2 = &*f.store;
    for i in 0..3 {
        spool(s2, &[], i);
    }
    let one = s2.spool_stats().bytes / 3;
    let f = open(StoreOptions {
        spool_max_bytes: 3 * one,
        ..StoreOptions::default()
    });
    let s2 = &*f.store;
    for i in 0..3 {
        spool(s2, &[], i);
    }
    let big: Vec<Increment> = (0..10)
        .map(|i| inc(&key("big_total", &[]), i * M, State::Counter(1)))
        .collect();
    let out = s2
        .commit(Commit {
            increments: &big,
            progress: &[],
            cursors: &[],
            spool_watermark_ms: Some(3),
            now_ms: 77,
        })
        .unwrap();
    assert_eq!(out.spool_dropped, 3);
    let events = s2.events(i64::MIN, 10).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].ts_ms, events[0].kind.as_str()),
        (77, "spool_overflow")
    );
    assert!(
        events[0]
            .message
            .contains("dropped 3 oldest batches, seq 1..=3"),
        "{}",
        events[0].message
    );
    assert!(
        events[0].message.contains(&format!("{} bytes", 3 * one)),
        "{}",
        events[0].message
    );
}

fn readers_run_alongside_a_writer(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let k = key("requests_total", &[]);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for i in 0..50 {
                let out = s
                    .commit(Commit {
                        increments: &[inc(&k, 0, State::Counter(1))],
                        progress: &[progress("eu", i + 1, 0)],
                        cursors: &[],
                        spool_watermark_ms: Some(0),
                        now_ms: 0,
                    })
                    .unwrap();
                assert_eq!(out.spool_seq, Some(i + 1));
            }
        });
        // Every snapshot a reader sees is a whole commit: the count never
        // goes backwards.
        let mut last = 0;
        while !writer.is_finished() {
            if let Some((_, State::Counter(n))) = s.read(&k, 0, M).unwrap().first() {
                assert!(*n >= last);
                last = *n;
            }
            let _ = s.spool_read(0, 100).unwrap();
            let _ = s.sources();
            let _ = s.metrics();
        }
        writer.join().unwrap();
    });
    assert_eq!(s.read(&k, 0, M).unwrap(), vec![(0, State::Counter(50))]);
    assert_eq!(s.source("eu").map(|p| p.seq), Some(50));
    assert_eq!(s.spool_stats().batches, 50);
}

fn idle_series_expire_with_their_buckets(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let a = key("requests_total", &[("service", "a")]);
    let b = key("requests_total", &[("service", "b")]);
    let o = key("other_total", &[]);
    merge_at(
        s,
        100,
        &[
            inc(&a, 0, State::Counter(1)),
            inc(&a, H + M, State::Counter(2)),
            inc(&o, 0, State::Counter(3)),
        ],
    );
    merge_at(s, 200, &[inc(&b, 0, State::Counter(4))]);
    // A refused increment is no update of its series; a commit with an
    // earlier clock does not move a stamp back.
    let refused = merge_at(s, 300, &[inc(&a, 0, hist(2, &[1.0]))]);
    assert_eq!(refused.merge_errors.len(), 1);
    merge_at(s, 50, &[inc(&b, M, State::Counter(1))]);

    assert_eq!(s.expire_series(100).unwrap(), 0, "strictly before");
    assert_eq!(s.expire_series(150).unwrap(), 2);
    assert_eq!(s.series_count(), 1);
    assert_eq!(s.series_of("requests_total"), vec![Arc::clone(&b)]);
    let metrics: Vec<_> = s
        .metrics()
        .into_iter()
        .map(|m| (m.name, m.series))
        .collect();
    assert_eq!(metrics, vec![("requests_total".to_owned(), 1)]);
    assert_eq!(s.metric_kind("other_total"), None);
    for r in Resolution::ALL {
        assert!(read_all(s, &a, r).is_empty(), "{r}");
        assert!(read_all(s, &o, r).is_empty(), "{r}");
        assert!(!read_all(s, &b, r).is_empty(), "{r}");
    }
    assert_eq!(s.expire_series(150).unwrap(), 0);

    // The same key comes back as a new series with nothing of the old one;
    // the forgotten metric takes any kind.
    merge_at(
        s,
        400,
        &[inc(&a, 0, State::Counter(7)), inc(&o, 0, hist(2, &[2.0]))],
    );
    assert_eq!(
        read_all(s, &a, Resolution::Minute),
        vec![(0, State::Counter(7))]
    );
    assert_eq!(
        read_all(s, &a, Resolution::Day),
        vec![(0, State::Counter(7))]
    );
    assert_eq!(s.metric_kind("other_total"), Some(Kind::Histogram));
    assert_eq!(s.series_count(), 3);
    assert_eq!(s.expire_series(401).unwrap(), 3);
    assert!(s.metrics().is_empty());
    assert_eq!(s.series_count(), 0);
}

fn series_expire_each_by_their_own_time(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let short = key("requests_total", &[("env", "dev")]);
    let long = key("requests_total", &[("env", "prod")]);
    let other = key("other_total", &[]);
    merge_at(
        s,
        100,
        &[
            inc(&short, 0, State::Counter(1)),
            inc(&long, 0, State::Counter(2)),
            inc(&other, 0, State::Counter(3)),
        ],
    );
    let asked = std::sync::Mutex::new(Vec::new());
    // `dev` series idle since before 150 expire, the rest since before 50.
    let idle_before = |k: &SeriesKey| {
        asked.lock().unwrap().push(k.to_string());
        if k.label("env") == Some("dev") {
            150
        } else {
            50
        }
    };
    assert_eq!(s.expire_series_with(&idle_before).unwrap(), 1);
    let mut asked = asked.into_inner().unwrap();
    asked.sort();
    assert_eq!(
        asked,
        [
            "other_total",
            "requests_total{env=\"dev\"}",
            "requests_total{env=\"prod\"}"
        ],
        "each series asked about once"
    );
    assert_eq!(s.series_of("requests_total"), vec![Arc::clone(&long)]);
    assert!(read_all(s, &short, Resolution::Day).is_empty());
    // A series updated again is kept by its new stamp, however old its
    // first sample.
    merge_at(s, 300, &[inc(&long, M, State::Counter(1))]);
    assert_eq!(s.expire_series_with(&|_| 200).unwrap(), 1);
    assert_eq!(s.metric_kind("other_total"), None);
    assert_eq!(
        read_all(s, &long, Resolution::Minute),
        vec![(0, State::Counter(2)), (M, State::Counter(1))]
    );
}

fn alarm_key(rule: &str, group: &[(&str, &str)]) -> AlarmKey {
    AlarmKey {
        rule: rule.to_owned(),
        group: group
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn alarm_state(key: &AlarmKey, firing: bool, since_ms: i64) -> AlarmState {
    AlarmState {
        key: key.clone(),
        firing,
        since_ms,
        last_fired_ms: firing.then_some(since_ms),
        value: 251.5,
        minute_ms: since_ms - M,
    }
}

fn record(ts_ms: i64, key: &AlarmKey, firing: bool) -> AlarmRecord {
    AlarmRecord {
        ts_ms,
        key: key.clone(),
        firing,
        value: 3.5,
        minute_ms: ts_ms - M,
    }
}

fn notification(url: &str, created_ms: i64) -> Notification {
    Notification {
        url: url.to_owned(),
        body: format!("{{\"created\":{created_ms}}}"),
        created_ms,
        kind: NotificationKind::Webhook,
    }
}

fn alarm_states_are_upserted_and_cleared(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    assert!(s.alarm_states().unwrap().is_empty());
    assert!(s.update_alarms(AlarmUpdate::default()).unwrap().is_empty());
    let eu = alarm_key("p99", &[("cloud", "eu")]);
    let us = alarm_key("p99", &[("cloud", "us")]);
    let all = alarm_key("errors", &[]);
    let states = [
        alarm_state(&us, true, 10),
        alarm_state(&eu, false, 20),
        alarm_state(&all, true, 30),
    ];
    s.update_alarms(AlarmUpdate {
        states: &states,
        ..AlarmUpdate::default()
    })
    .unwrap();
    let mut sorted = states.to_vec();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(s.alarm_states().unwrap(), sorted);

    let resolved = AlarmState {
        last_fired_ms: Some(10),
        ..alarm_state(&us, false, 40)
    };
    s.update_alarms(AlarmUpdate {
        states: std::slice::from_ref(&resolved),
        clear: &[all.clone(), alarm_key("unknown", &[])],
        ..AlarmUpdate::default()
    })
    .unwrap();
    assert_eq!(
        s.alarm_states().unwrap(),
        vec![alarm_state(&eu, false, 20), resolved]
    );
}

fn alarm_history_is_newest_first_with_retention(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let k = alarm_key("p99", &[]);
    assert!(s.alarm_history(10).unwrap().is_empty());
    s.update_alarms(AlarmUpdate {
        history: &[record(100, &k, true), record(300, &k, false)],
        ..AlarmUpdate::default()
    })
    .unwrap();
    // Equal times never overwrite each other: last appended first.
    s.update_alarms(AlarmUpdate {
        history: &[record(200, &k, true), record(200, &k, false)],
        ..AlarmUpdate::default()
    })
    .unwrap();
    let listed: Vec<_> = s
        .alarm_history(10)
        .unwrap()
        .iter()
        .map(|r| (r.ts_ms, r.firing))
        .collect();
    assert_eq!(
        listed,
        vec![(300, false), (200, false), (200, true), (100, true)]
    );
    assert_eq!(s.alarm_history(1).unwrap(), vec![record(300, &k, false)]);
    assert!(s.alarm_history(0).unwrap().is_empty());
    assert_eq!(s.delete_alarm_history_before(200).unwrap(), 1);
    assert_eq!(s.delete_alarm_history_before(200).unwrap(), 0);
    assert_eq!(s.alarm_history(10).unwrap().len(), 3);
}

fn outbox_keeps_notifications_until_deleted(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    assert!(s.outbox(10).unwrap().is_empty());
    assert_eq!(s.outbox_len().unwrap(), 0);
    let ids = s
        .update_alarms(AlarmUpdate {
            notifications: &[
                notification("http://a/hook", 1),
                notification("http://b/hook", 1),
            ],
            ..AlarmUpdate::default()
        })
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
    let queued = s.outbox(10).unwrap();
    assert_eq!(queued.len(), 2);
    assert_eq!(s.outbox_len().unwrap(), 2);
    assert_eq!(queued[0].id, ids[0]);
    assert_eq!(queued[0].notification, notification("http://a/hook", 1));
    assert_eq!(
        (
            queued[0].attempts,
            queued[0].next_attempt_ms,
            queued[0].last_error.as_str()
        ),
        (0, 0, "")
    );
    assert_eq!(s.outbox(1).unwrap(), queued[..1].to_vec());

    assert!(s.outbox_retry(ids[0], 2, 5_000, "http status 500").unwrap());
    assert!(!s.outbox_retry(999, 1, 1, "gone").unwrap());
    let retried = &s.outbox(10).unwrap()[0];
    assert_eq!(
        (
            retried.attempts,
            retried.next_attempt_ms,
            retried.last_error.as_str()
        ),
        (2, 5_000, "http status 500")
    );
    assert_eq!(retried.notification, notification("http://a/hook", 1));

    assert!(s.outbox_delete(ids[0]).unwrap());
    assert!(!s.outbox_delete(ids[0]).unwrap());
    assert_eq!(s.outbox_len().unwrap(), 1);
    assert!(s.outbox_delete(ids[1]).unwrap());
    // Ids are never reused, also once the outbox is empty; an entry keeps
    // its kind, also across a retry.
    let alertmanager = Notification {
        kind: NotificationKind::Alertmanager,
        ..notification("http://am:9093/api/v2/alerts", 2)
    };
    let next = s
        .update_alarms(AlarmUpdate {
            notifications: &[notification("http://a/hook", 2), alertmanager.clone()],
            ..AlarmUpdate::default()
        })
        .unwrap();
    assert!(next[0] > ids[1], "{next:?} after {ids:?}");
    assert!(s.outbox_retry(next[1], 1, 9, "refused").unwrap());
    let queued = s.outbox(10).unwrap();
    assert_eq!(queued[1].notification, alertmanager);
    assert_eq!(queued[0].notification.kind, NotificationKind::Webhook);
}

fn an_alarm_update_is_applied_whole(open: &Open) {
    let f = open(StoreOptions::default());
    let s = &*f.store;
    let k = alarm_key("p99", &[("cloud", "eu")]);
    let ids = s
        .update_alarms(AlarmUpdate {
            states: &[alarm_state(&k, true, 120)],
            clear: &[],
            history: &[record(120, &k, true)],
            notifications: &[notification("http://a/hook", 120)],
            events: &[event(120, EventKind::AlarmFired, "p99 fired")],
        })
        .unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(s.alarm_states().unwrap(), vec![alarm_state(&k, true, 120)]);
    assert_eq!(s.alarm_history(10).unwrap(), vec![record(120, &k, true)]);
    assert_eq!(s.outbox(10).unwrap()[0].id, ids[0]);
    let events = s.events(i64::MIN, 10).unwrap();
    assert_eq!(events, vec![event(120, EventKind::AlarmFired, "p99 fired")]);
    // Alarm events share the log's ids with the others.
    s.append_events(&[event(120, EventKind::SourceConnected, "later")])
        .unwrap();
    assert_eq!(
        messages(&s.events(i64::MIN, 10).unwrap()),
        vec!["later", "p99 fired"]
    );
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory_store {
            $( #[test] fn $case() { super::$case(&super::memory) } )*
        }
        mod redb_store {
            $( #[test] fn $case() { super::$case(&super::redb) } )*
        }
    };
}

suite!(
    epoch_is_non_zero_and_stable,
    empty_store_reads_nothing,
    merges_across_commits,
    merges_within_one_commit,
    buckets_are_minutes,
    read_range_is_half_open_and_ascending,
    lists_series_and_metrics,
    upserts_progress,
    cursors_commit_with_a_flush_and_read_back_by_prefix,
    cursor_prefixes_do_not_leak,
    cursors_are_overwritten_and_deleted,
    a_cursors_only_commit_is_applied,
    spool_appends_reads_and_acks,
    spool_seqs_stay_contiguous,
    spool_cap_drops_oldest,
    merge_errors_skip_only_the_bad_increments,
    retention_deletes_old_buckets,
    readers_run_alongside_a_writer,
    rollups_are_the_merge_of_their_minutes,
    a_refused_rollup_merge_skips_every_resolution,
    rollups_match_a_model_in_any_order,
    series_are_found_by_key_whatever_arc_carries_it,
    hour_reads_are_whole_while_minutes_fold,
    retention_is_per_resolution,
    events_are_listed_newest_first,
    event_retention,
    events_are_queried_by_range_and_kind,
    event_retention_per_kind,
    spool_overflow_appends_an_event,
    idle_series_expire_with_their_buckets,
    series_expire_each_by_their_own_time,
    alarm_states_are_upserted_and_cleared,
    alarm_history_is_newest_first_with_retention,
    outbox_keeps_notifications_until_deleted,
    an_alarm_update_is_applied_whole,
);

/// Durability: what only [`RedbStore`] promises.
mod durable {
    use super::*;
    use crate::redb::schema::{
        BUCKETS, BUCKETS_DAY, BUCKETS_HOUR, INPUT_CURSORS, META, META_FORMAT_VERSION, SERIES_OPEN,
        SERIES_SEEN, SPOOL,
    };
    use redb::{ReadableDatabase, ReadableTable};

    /// Fills a store with one of everything.
    fn populate(s: &dyn Store) {
        let a = key("requests_total", &[("service", "a")]);
        let h = key("latency_ms", &[("service", "a")]);
        s.commit(Commit {
            increments: &[
                inc(&a, 0, State::Counter(3)),
                inc(&h, M, hist(3, &[1.0, 250.0])),
            ],
            progress: &[progress("eu", 4, 400), progress("us", 9, 900)],
            cursors: &[
                Cursor::set("otlp/a", [1, 2]),
                Cursor::set("prom/b", [3]),
                Cursor::set("prom/gone", [4]),
            ],
            spool_watermark_ms: Some(60_000),
            now_ms: 61_000,
        })
        .unwrap();
        spool(s, &[inc(&a, M, State::Counter(1))], 120_000);
        spool(s, &[], 180_000);
        s.spool_ack(1).unwrap();
        write_cursors(s, &[Cursor::delete("prom/gone")]);
        // A late increment into an old minute of another hour and day.
        merge(
            s,
            &[
                inc(&a, -M, State::Counter(5)),
                inc(&a, 0, State::Counter(1)),
            ],
        );
        // The newest event does not carry the highest id.
        s.append_events(&[event(500, EventKind::AlarmFired, "first")])
            .unwrap();
        s.append_events(&[
            event(100, EventKind::SourceConnected, "second"),
            event(100, EventKind::SourceConnected, "third"),
        ])
        .unwrap();
        // Alarms: a firing and a resolved instance, their history, and two
        // queued notifications, one of which already failed once.
        let p99 = alarm_key("p99", &[("service", "a")]);
        let errors = alarm_key("errors", &[]);
        let ids = s
            .update_alarms(AlarmUpdate {
                states: &[
                    alarm_state(&p99, true, 600),
                    alarm_state(&errors, false, 500),
                ],
                history: &[record(500, &errors, true), record(600, &p99, true)],
                notifications: &[
                    notification("http://a/hook", 600),
                    notification("http://b/hook", 600),
                ],
                ..AlarmUpdate::default()
            })
            .unwrap();
        s.outbox_retry(ids[0], 1, 2_000, "connection refused")
            .unwrap();
    }

    /// Everything a reader can observe, for before/after comparisons.
    fn snapshot(s: &dyn Store) -> String {
        let mut out = format!("epoch {}\n", s.epoch());
        for m in s.metrics() {
            let mut series = s.series_of(&m.name);
            series.sort();
            for k in series {
                for r in Resolution::ALL {
                    // Encoded: every bucket of a histogram, not its summary.
                    let buckets: Vec<_> = read_all(s, &k, r)
                        .into_iter()
                        .map(|(at, state)| {
                            let mut bytes = Vec::new();
                            state.encode(&mut bytes);
                            (at, bytes)
                        })
                        .collect();
                    out += &format!("{} {} {k} {r} {buckets:?}\n", m.name, m.kind);
                }
            }
        }
        out += &format!("{:?}\n", s.events(i64::MIN, usize::MAX).unwrap());
        out += &format!("{:?}\n{:?}\n", s.sources(), s.spool_stats());
        out += &format!("{:?}\n", s.cursors("").unwrap());
        out += &format!("{:?}\n", s.spool_read(0, 100).unwrap());
        out += &format!("{:?}\n", s.alarm_states().unwrap());
        out += &format!("{:?}\n", s.alarm_history(100).unwrap());
        out += &format!("{:?}\n", s.outbox(100).unwrap());
        out
    }

    /// The cursors [`populate`] leaves.
    fn populated_cursors() -> Vec<(String, Vec<u8>)> {
        vec![stored("otlp/a", &[1, 2]), stored("prom/b", &[3])]
    }

    /// The rows of a table keyed by series id, ascending, each value read by `value`.
    fn rows<V: redb::Value + 'static, T>(
        s: &RedbStore,
        table: redb::TableDefinition<u64, V>,
        value: impl Fn(redb::AccessGuard<'_, V>) -> T,
    ) -> Vec<(u64, T)> {
        let txn = s.backend.db.begin_read().unwrap();
        let table = txn.open_table(table).unwrap();
        table
            .iter()
            .unwrap()
            .map(|entry| {
                let (id, v) = entry.unwrap();
                (id.value(), value(v))
            })
            .collect()
    }

    /// Ids in the series table, ascending.
    fn series_ids(s: &RedbStore) -> Vec<u64> {
        let rows = rows(s, crate::redb::schema::SERIES, |_| ());
        rows.into_iter().map(|(id, ())| id).collect()
    }

    #[test]
    fn series_stamps_and_retired_ids_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = key("requests_total", &[("service", "a")]);
        let b = key("requests_total", &[("service", "b")]);
        let c = key("requests_total", &[("service", "c")]);
        {
            let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
            merge_at(&s, 100_000, &[inc(&a, 0, State::Counter(1))]);
            merge_at(&s, 200_000, &[inc(&b, 0, State::Counter(1))]);
            merge_at(&s, 50_000, &[inc(&c, 0, State::Counter(1))]);
            assert_eq!(series_ids(&s), vec![1, 2, 3]);
            // In memory the stamps are exact. The newest series expires:
            // its id must stay retired.
            assert_eq!(s.expire_series(60_000).unwrap(), 1);
        }
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.series_count(), 2);
        assert!(read_all(&s, &c, Resolution::Minute).is_empty());
        // a's stamp (100 s) survived rounded up to its minute's end: never
        // earlier than the update, at most a minute later.
        assert_eq!(s.expire_series(120_000).unwrap(), 0, "never early");
        assert_eq!(s.expire_series(121_000).unwrap(), 1, "a's stamp survived");
        assert_eq!(s.series_of("requests_total"), vec![Arc::clone(&b)]);
        merge_at(&s, 300_000, &[inc(&c, 0, State::Counter(5))]);
        assert_eq!(series_ids(&s), vec![2, 4]);
        drop(s);
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(
            read_all(&s, &c, Resolution::Hour),
            vec![(0, State::Counter(5))]
        );
        merge_at(&s, 300_000, &[inc(&a, 0, State::Counter(1))]);
        assert_eq!(series_ids(&s), vec![2, 4, 5]);
        // b: 200 s, stored as 240 s.
        assert_eq!(s.expire_series(250_000).unwrap(), 1, "only b is idle");
    }

    /// The stamps in the series-seen table: by series id.
    fn durable_stamps(s: &RedbStore) -> Vec<(u64, i64)> {
        rows(s, SERIES_SEEN, |at| at.value())
    }

    /// A series' durable stamp is its last update rounded up to a minute,
    /// moved only forward, whatever the order of the commits' clocks.
    #[test]
    fn durable_stamps_round_up_to_the_minute_and_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let a = key("requests_total", &[("service", "a")]);
        let b = key("requests_total", &[("service", "b")]);
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        // (commit time, series updated, durable stamps of a and b after it; 0: none)
        type Step<'a> = (i64, &'a [&'a Arc<SeriesKey>], [i64; 2]);
        let steps: [Step; 6] = [
            (61_000, &[&a], [120_000, 0]),
            (119_999, &[&a, &b], [120_000, 120_000]),
            (120_000, &[&a], [120_000, 120_000]),
            (120_001, &[&b], [120_000, 180_000]),
            // An earlier clock moves nothing back.
            (30_000, &[&a, &b], [120_000, 180_000]),
            (-5, &[&b], [120_000, 180_000]),
        ];
        for (now_ms, series, want) in steps {
            let incs: Vec<_> = series
                .iter()
                .map(|k| inc(k, 0, State::Counter(1)))
                .collect();
            merge_at(&s, now_ms, &incs);
            let got: Vec<i64> = durable_stamps(&s).into_iter().map(|(_, at)| at).collect();
            let want: Vec<i64> = want.into_iter().filter(|&at| at != 0).collect();
            assert_eq!(got, want, "after a commit at {now_ms}");
        }
        drop(s);
        // Reopened, the exact stamps are gone and the rounded ones decide.
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.expire_series(120_000).unwrap(), 0);
        assert_eq!(s.expire_series(120_001).unwrap(), 1);
        assert_eq!(s.series_of("requests_total"), vec![Arc::clone(&b)]);
    }

    /// A spool ack is committed without a sync of its own: a process that
    /// dies right after it loses it (the batch is sent again, and the
    /// upstream acknowledges it without merging it again), and the next
    /// commit makes it durable. The test runs itself again as the process
    /// that dies (`STRATA_STORE_CRASH_DIR` names its store).
    #[test]
    fn spool_acks_are_made_durable_by_the_next_commit() {
        const DIR: &str = "STRATA_STORE_CRASH_DIR";
        const STEP: &str = "STRATA_STORE_CRASH_STEP";
        let a = key("requests_total", &[("service", "a")]);
        if let (Ok(dir), Ok(step)) = (std::env::var(DIR), std::env::var(STEP)) {
            let s = RedbStore::open(std::path::Path::new(&dir), StoreOptions::default()).unwrap();
            if step == "ack" {
                spool(&s, &[inc(&a, M, State::Counter(1))], 120_000);
                spool(&s, &[inc(&a, 2 * M, State::Counter(1))], 180_000);
                s.spool_ack(1).unwrap();
            } else {
                s.spool_ack(2).unwrap();
                spool(&s, &[inc(&a, 3 * M, State::Counter(1))], 240_000);
            }
            // Dies as a SIGKILL would leave it: no destructor runs.
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let died = |step: &str| {
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "suite::durable::spool_acks_are_made_durable_by_the_next_commit",
                ])
                .env(DIR, dir.path())
                .env(STEP, step)
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(!status.success(), "the {step} child was to die");
            let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
            let seqs: Vec<u64> = s.spool_read(0, 10).unwrap().iter().map(|b| b.seq).collect();
            seqs
        };
        assert_eq!(died("ack"), [1, 2], "the ack was lost with the process");
        assert_eq!(
            died("ack then commit"),
            [3],
            "the commit after the ack kept it"
        );
    }

    #[test]
    fn outbox_and_history_ids_continue_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
            let ids = s
                .update_alarms(AlarmUpdate {
                    notifications: &[notification("http://a/hook", 1)],
                    ..AlarmUpdate::default()
                })
                .unwrap();
            assert!(s.outbox_delete(ids[0]).unwrap());
            ids[0]
        };
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        let k = alarm_key("p99", &[]);
        let next = s
            .update_alarms(AlarmUpdate {
                history: &[record(5, &k, true)],
                notifications: &[notification("http://a/hook", 2)],
                ..AlarmUpdate::default()
            })
            .unwrap();
        assert!(next[0] > first);
        assert_eq!(s.alarm_history(10).unwrap(), vec![record(5, &k, true)]);
    }

    /// Overwrites the stored bytes of one bucket, as a corrupt page or an
    /// older version that stored a NaN sum would have left them.
    fn poison(s: &RedbStore, r: Resolution, id: u64, bucket: i64, bytes: &[u8]) {
        let txn = s.backend.db.begin_write().unwrap();
        txn.open_table(crate::redb::schema::bucket_table(r))
            .unwrap()
            .insert((id, bucket), bytes)
            .unwrap();
        txn.commit().unwrap();
    }

    /// An event whose bytes do not decode has the default cutoff of a
    /// retention per kind: it never outlives the log's retention.
    #[test]
    fn an_undecodable_event_goes_at_the_default_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        s.append_events(&[
            event(5, EventKind::AlarmFired, "kept"),
            event(6, EventKind::SpoolOverflow, "old"),
        ])
        .unwrap();
        {
            let txn = s.backend.db.begin_write().unwrap();
            txn.open_table(crate::redb::schema::EVENTS)
                .unwrap()
                .insert((7, 99), &[0xEE, 1, 2][..])
                .unwrap();
            txn.commit().unwrap();
        }
        let cutoffs = EventCutoffs {
            default_before_ms: 10,
            by_kind: [(EventKind::AlarmFired, 0)].into(),
        };
        assert_eq!(s.delete_events(&cutoffs).unwrap(), 2);
        assert_eq!(messages(&s.events(i64::MIN, 10).unwrap()), vec!["kept"]);
    }

    /// A sum whose total is NaN: what +inf merged with -inf used to store.
    fn nan_sum_bytes() -> Vec<u8> {
        let mut bytes = vec![1, 2];
        bytes.extend_from_slice(&f64::NAN.to_le_bytes());
        bytes.extend_from_slice(&0f64.to_le_bytes());
        bytes
    }

    fn sum(v: f64) -> State {
        let mut s = State::empty(Kind::Sum, &strata_model::StateParams::default());
        s.record(strata_model::SampleValue::Number(v), 0, "t")
            .unwrap();
        s
    }

    #[test]
    fn an_unreadable_state_is_quarantined_and_stops_no_commit() {
        let dir = tempfile::tempdir().unwrap();
        let boom = key("boom", &[]);
        let other = key("requests_total", &[]);
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        merge(&s, &[inc(&boom, 0, sum(1.0))]);
        // Minute M opens: minute 0 is folded into hour and day 0.
        merge(&s, &[inc(&boom, M, sum(4.0))]);
        let id = series_ids(&s)[0];
        poison(&s, Resolution::Minute, id, M, &nan_sum_bytes());
        poison(&s, Resolution::Hour, id, 0, b"garbage");
        assert_eq!(s.quarantined(), 0);

        // Minute 2M opens: folding minute M meets both.
        let outcome = s
            .commit(Commit {
                increments: &[
                    inc(&boom, 2 * M, sum(2.0)),
                    inc(&other, 0, State::Counter(7)),
                ],
                progress: &[],
                cursors: &[],
                spool_watermark_ms: None,
                now_ms: 5_000,
            })
            .unwrap();
        assert_eq!(outcome.quarantined, 2);
        assert!(outcome.merge_errors.is_empty());
        assert_eq!(s.quarantined(), 2);
        // The unreadable buckets start afresh; the readable day keeps both.
        assert_eq!(
            read_all(&s, &boom, Resolution::Minute),
            vec![(0, sum(1.0)), (2 * M, sum(2.0))]
        );
        assert_eq!(read_all(&s, &boom, Resolution::Hour), vec![(0, sum(2.0))]);
        assert_eq!(read_all(&s, &boom, Resolution::Day), vec![(0, sum(3.0))]);
        assert_eq!(
            read_all(&s, &other, Resolution::Minute),
            vec![(0, State::Counter(7))]
        );
        let events = s.events(i64::MIN, 10).unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(
            events
                .iter()
                .all(|e| e.kind == EventKind::StateQuarantined && e.ts_ms == 5_000)
        );
        assert!(
            events.iter().any(|e| e.message.contains("NaN")),
            "{events:?}"
        );
        // Both sets of bytes are kept as they were, and counted after a reopen.
        drop(s);
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.quarantined(), 2);
        let txn = s.backend.db.begin_read().unwrap();
        let table = txn.open_table(crate::redb::schema::QUARANTINE).unwrap();
        assert_eq!(
            table.get(("buckets", id, M)).unwrap().unwrap().value(),
            nan_sum_bytes().as_slice()
        );
        assert_eq!(
            table.get(("buckets_hour", id, 0)).unwrap().unwrap().value(),
            b"garbage".as_slice()
        );
    }

    #[test]
    fn a_read_skips_and_quarantines_an_unreadable_state() {
        let dir = tempfile::tempdir().unwrap();
        let boom = key("boom", &[]);
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        merge(&s, &[inc(&boom, 0, sum(1.0)), inc(&boom, M, sum(2.0))]);
        poison(
            &s,
            Resolution::Minute,
            series_ids(&s)[0],
            0,
            &nan_sum_bytes(),
        );
        assert_eq!(read_all(&s, &boom, Resolution::Minute), vec![(M, sum(2.0))]);
        assert_eq!(s.quarantined(), 1);
        let events = s.events(i64::MIN, 10).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventKind::StateQuarantined);
        // Moved, not met again.
        assert_eq!(read_all(&s, &boom, Resolution::Minute), vec![(M, sum(2.0))]);
        assert_eq!(s.quarantined(), 1);
    }

    /// Makes the file of `s` what a store of format `version` left:
    /// `strip` deletes what that format did not have, in the transaction
    /// that records the version.
    fn make_format(s: &RedbStore, version: u64, strip: impl FnOnce(&redb::WriteTransaction)) {
        let txn = s.backend.db.begin_write().unwrap();
        strip(&txn);
        txn.open_table(META)
            .unwrap()
            .insert(META_FORMAT_VERSION, version)
            .unwrap();
        txn.commit().unwrap();
    }

    /// The format version the file of `s` records.
    fn format_of(s: &RedbStore) -> u64 {
        let txn = s.backend.db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        meta.get(META_FORMAT_VERSION).unwrap().unwrap().value()
    }

    #[test]
    fn a_format_3_file_has_every_minute_folded_and_opens_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("requests_total", &[]);
        let expected = {
            let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
            merge(
                &s,
                &[inc(&k, 0, State::Counter(1)), inc(&k, M, State::Counter(2))],
            );
            // What format 3 left: every minute in its hour and day.
            s.fold_open_before(i64::MAX).unwrap();
            let expected = snapshot(&s);
            make_format(&s, 3, |txn| {
                txn.delete_table(SERIES_OPEN).unwrap();
            });
            expected
        };
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(snapshot(&s), expected);
        assert_eq!(format_of(&s), 4);
        // A stored minute is late; a new one opens and reads in its hour.
        merge(
            &s,
            &[
                inc(&k, M, State::Counter(4)),
                inc(&k, 2 * M, State::Counter(8)),
            ],
        );
        assert_eq!(
            read_all(&s, &k, Resolution::Hour),
            vec![(0, State::Counter(15))]
        );
        drop(s);
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(
            read_all(&s, &k, Resolution::Day),
            vec![(0, State::Counter(15))]
        );
        assert_eq!(
            read_all(&s, &k, Resolution::Minute),
            vec![
                (0, State::Counter(1)),
                (M, State::Counter(6)),
                (2 * M, State::Counter(8))
            ]
        );
    }

    #[test]
    fn a_format_2_file_gets_every_series_stamped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("requests_total", &[]);
        let before_upgrade = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let expected = {
            let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
            // Stamped long ago: without the upgrade's stamp it would expire.
            merge_at(&s, 1, &[inc(&k, 0, State::Counter(1))]);
            let expected = snapshot(&s);
            make_format(&s, 2, |txn| {
                txn.delete_table(SERIES_SEEN).unwrap();
            });
            expected
        };
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(snapshot(&s), expected);
        assert_eq!(format_of(&s), 4);
        assert_eq!(s.expire_series(before_upgrade).unwrap(), 0);
        assert_eq!(s.series_count(), 1);
        assert_eq!(s.expire_series(i64::MAX).unwrap(), 1);
    }

    #[test]
    fn reopen_restores_everything() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
            populate(&s);
            snapshot(&s)
        };
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(snapshot(&s), before);
        assert_eq!(s.series_count(), 2);
        assert_eq!(s.cursors("").unwrap(), populated_cursors());
        let a = key("requests_total", &[("service", "a")]);
        assert_eq!(
            read_all(&s, &a, Resolution::Hour),
            vec![(-H, State::Counter(5)), (0, State::Counter(5))]
        );
        assert_eq!(
            read_all(&s, &a, Resolution::Day),
            vec![(-D, State::Counter(5)), (0, State::Counter(5))]
        );
        assert_eq!(
            messages(&s.events(i64::MIN, 10).unwrap()),
            vec!["first", "third", "second"]
        );
        assert_eq!(
            s.spool_stats(),
            SpoolStats {
                batches: 2,
                bytes: s.spool_stats().bytes,
                first_seq: 2,
                last_seq: 3,
                dropped_batches: 0
            }
        );

        // It carries on where it stopped: merges onto restored buckets (at
        // every resolution), the next seq, no duplicate series ids, event ids
        // after every earlier one.
        let b = key("requests_total", &[("service", "b")]);
        let out = spool(
            &s,
            &[inc(&a, 0, State::Counter(2)), inc(&b, 0, State::Counter(1))],
            0,
        );
        assert_eq!(out.spool_seq, Some(4));
        assert_eq!(s.read(&a, 0, M).unwrap(), vec![(0, State::Counter(6))]);
        assert_eq!(
            s.read_at(&a, Resolution::Day, 0, D).unwrap(),
            vec![(0, State::Counter(7))]
        );
        assert_eq!(s.series_count(), 3);
        s.append_events(&[event(100, EventKind::SourceConnected, "fourth")])
            .unwrap();
        assert_eq!(
            messages(&s.events(i64::MIN, 10).unwrap()),
            vec!["first", "fourth", "third", "second"]
        );
        drop(s);
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.series_count(), 3);
        assert_eq!(s.read(&b, 0, M).unwrap(), vec![(0, State::Counter(1))]);
        assert_eq!(
            s.read_at(&b, Resolution::Hour, 0, H).unwrap(),
            vec![(0, State::Counter(1))]
        );
        assert_eq!(s.events(i64::MIN, 10).unwrap().len(), 4);
    }

    #[test]
    fn cursors_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
            write_cursors(
                &s,
                &[
                    Cursor::set("otlp/b", [2]),
                    Cursor::set("otlp/a", [1]),
                    Cursor::set("prom/c", [3]),
                ],
            );
            write_cursors(&s, &[Cursor::delete("prom/c")]);
        }
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(
            s.cursors("").unwrap(),
            vec![stored("otlp/a", &[1]), stored("otlp/b", &[2])]
        );
        write_cursors(&s, &[Cursor::set("otlp/a", [9])]);
        drop(s);
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(
            s.cursors("otlp/").unwrap(),
            vec![stored("otlp/a", &[9]), stored("otlp/b", &[2])]
        );
    }

    /// A file written before input cursors existed has no `input_cursors`
    /// table: it opens as it was, with no cursors, and takes them from then
    /// on.
    #[test]
    fn a_file_without_the_cursor_table_opens_with_no_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
            populate(&s);
            let expected = snapshot(&s).replace(&format!("{:?}", populated_cursors()), "[]");
            let txn = s.backend.db.begin_write().unwrap();
            assert!(txn.delete_table(INPUT_CURSORS).unwrap());
            txn.commit().unwrap();
            expected
        };
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.cursors("").unwrap(), vec![]);
        assert_eq!(snapshot(&s), expected);
        write_cursors(&s, &[Cursor::set("otlp/a", [1])]);
        drop(s);
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.cursors("").unwrap(), vec![stored("otlp/a", &[1])]);
    }

    /// Cursors are written in the commit's transaction: when a part written
    /// after them fails, the commit leaves no cursor (and nothing else)
    /// changed.
    #[test]
    fn a_failed_commit_leaves_cursors_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        let k = key("requests_total", &[]);
        write_cursors(
            &s,
            &[Cursor::set("otlp/a", [1]), Cursor::set("otlp/b", [2])],
        );
        // A `spool` table of another type: opening it in the commit fails,
        // after the cursors were written into the transaction.
        let sabotage = |def: redb::TableDefinition<u64, u64>| {
            let txn = s.backend.db.begin_write().unwrap();
            assert!(txn.delete_table(def).unwrap());
            txn.open_table(def).unwrap();
            txn.commit().unwrap();
        };
        sabotage(redb::TableDefinition::new("spool"));
        let flush = || {
            s.commit(Commit {
                increments: &[inc(&k, 0, State::Counter(3))],
                progress: &[progress("eu", 1, 100)],
                cursors: &[
                    Cursor::set("otlp/a", [10]),
                    Cursor::delete("otlp/b"),
                    Cursor::set("otlp/c", [30]),
                ],
                spool_watermark_ms: Some(60_000),
                now_ms: 61_000,
            })
        };
        let err = flush().unwrap_err();
        assert!(err.to_string().contains("spool"), "{err}");
        let before = vec![stored("otlp/a", &[1]), stored("otlp/b", &[2])];
        assert_eq!(s.cursors("").unwrap(), before);
        assert_eq!(s.series_count(), 0);
        assert_eq!(s.source("eu"), None);
        assert_eq!(s.spool_stats(), SpoolStats::default());

        // With the table restored, the same flush goes through whole.
        {
            let txn = s.backend.db.begin_write().unwrap();
            assert!(txn.delete_table(SPOOL).unwrap());
            txn.open_table(SPOOL).unwrap();
            txn.commit().unwrap();
        }
        assert_eq!(flush().unwrap().spool_seq, Some(1));
        assert_eq!(
            s.cursors("").unwrap(),
            vec![stored("otlp/a", &[10]), stored("otlp/c", &[30])]
        );
        assert_eq!(s.read(&k, 0, M).unwrap(), vec![(0, State::Counter(3))]);
    }

    #[test]
    fn spool_overflow_event_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let opts = || StoreOptions {
            spool_max_bytes: 1,
            ..StoreOptions::default()
        };
        {
            let s = RedbStore::open(dir.path(), opts()).unwrap();
            spool(&s, &[], 0);
            spool(&s, &[], 1);
        }
        let s = RedbStore::open(dir.path(), opts()).unwrap();
        let events = s.events(i64::MIN, 10).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].ts_ms, events[0].kind.as_str()),
            (2, "spool_overflow")
        );
        spool(&s, &[], 2);
        assert_eq!(s.events(i64::MIN, 10).unwrap().len(), 2);
    }

    #[test]
    fn a_format_1_file_gets_its_rollups_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let c = key("requests_total", &[]);
        let h = key("latency_ms", &[]);
        let expected = {
            let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
            merge(
                &s,
                &[
                    inc(&c, -M, State::Counter(1)),
                    inc(&c, 0, State::Counter(2)),
                    inc(&c, M, State::Counter(4)),
                    inc(&c, H + M, State::Counter(8)),
                    inc(&c, D, State::Counter(16)),
                    inc(&h, 0, hist(2, &[1.0])),
                    inc(&h, M, hist(2, &[2.0, 3.0])),
                    inc(&h, 2 * H, hist(2, &[4.0])),
                ],
            );
            let expected = snapshot(&s);
            // Make it what a format 1 store left: minutes only (every one
            // of them folded, as no format before 4 had open minutes).
            make_format(&s, 1, |txn| {
                txn.delete_table(BUCKETS_HOUR).unwrap();
                txn.delete_table(BUCKETS_DAY).unwrap();
                txn.delete_table(SERIES_OPEN).unwrap();
            });
            expected
        };
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(snapshot(&s), expected);
        for k in [&c, &h] {
            for r in [Resolution::Hour, Resolution::Day] {
                assert!(!read_all(&s, k, r).is_empty());
                assert_eq!(read_all(&s, k, r), minutes_merged(&s, k, r), "{k} {r}");
            }
        }
        // Upgraded once: the next open finds format 4 and changes nothing.
        drop(s);
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(snapshot(&s), expected);
    }

    #[test]
    fn last_seq_survives_an_empty_spool() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
            spool(&s, &[], 0);
            spool(&s, &[], 1);
            s.spool_ack(2).unwrap();
        }
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.spool_stats().last_seq, 2);
        assert_eq!(s.spool_stats().batches, 0);
        assert_eq!(spool(&s, &[], 2).spool_seq, Some(3));
    }

    #[test]
    fn dropped_batches_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let opts = || StoreOptions {
            spool_max_bytes: 1,
            ..StoreOptions::default()
        };
        {
            let s = RedbStore::open(dir.path(), opts()).unwrap();
            for i in 0..4 {
                spool(&s, &[], i);
            }
            assert_eq!(s.spool_stats().dropped_batches, 3);
        }
        let s = RedbStore::open(dir.path(), opts()).unwrap();
        let stats = s.spool_stats();
        assert_eq!(
            (stats.batches, stats.first_seq, stats.dropped_batches),
            (1, 4, 3)
        );
        assert_eq!(spool(&s, &[], 5).spool_dropped, 1);
        assert_eq!(s.spool_stats().dropped_batches, 4);
    }

    #[test]
    fn committed_data_survives_a_drop_without_close() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("requests_total", &[]);
        let epoch;
        {
            let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
            epoch = s.epoch();
            spool(&s, &[inc(&k, 0, State::Counter(1))], 0);
            // A write that never commits, left in flight when the store goes
            // away without any shutdown step.
            let in_flight = s.backend.db.begin_write().unwrap();
            {
                let mut buckets = in_flight.open_table(BUCKETS).unwrap();
                buckets.insert((1, M), [0xffu8; 3].as_slice()).unwrap();
            }
            drop(s);
            drop(in_flight);
        }
        let s = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.epoch(), epoch);
        assert_eq!(s.read(&k, 0, M).unwrap(), vec![(0, State::Counter(1))]);
        assert_eq!(s.spool_stats().last_seq, 1);
        assert_eq!(s.spool_read(0, 10).unwrap().len(), 1);
    }

    #[test]
    fn epoch_is_kept_per_directory() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let e1 = RedbStore::open(one.path(), StoreOptions::default())
            .unwrap()
            .epoch();
        let e2 = RedbStore::open(two.path(), StoreOptions::default())
            .unwrap()
            .epoch();
        assert_ne!(e1, e2);
        let again = RedbStore::open(one.path(), StoreOptions::default())
            .unwrap()
            .epoch();
        assert_eq!(again, e1);
    }

    #[test]
    fn creates_the_data_dir_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let s = RedbStore::open(&nested, StoreOptions::default()).unwrap();
        assert_eq!(s.path(), nested.join("strata.redb"));
        assert!(nested.join("strata.redb").is_file());
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("strata.redb"),
            b"not a database, not at all",
        )
        .unwrap();
        let err = RedbStore::open(dir.path(), StoreOptions::default()).unwrap_err();
        assert!(err.to_string().contains("strata.redb"), "{err}");
    }

    #[test]
    fn second_open_of_a_live_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _live = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(RedbStore::open(dir.path(), StoreOptions::default()).is_err());
    }
}
