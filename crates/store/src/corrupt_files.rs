//! Store files damaged outside strata: refused with a clear error at open,
//! never a panic, never silently replaced by a new store.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use strata_model::{Increment, SeriesKey, State};

use crate::{Commit, RedbStore, SourceProgress, Store, StoreOptions};

const FILE: &str = RedbStore::FILE_NAME;

/// A store with a few hundred series, bucket states, source progress and a
/// spool, closed cleanly; returns its epoch.
fn write_some_data(dir: &Path) -> u64 {
    let store = RedbStore::open(dir, StoreOptions::default()).unwrap();
    for round in 0..20i64 {
        let increments: Vec<Increment> = (0..40)
            .map(|i| Increment {
                series: Arc::new(
                    SeriesKey::new(
                        "requests",
                        [(
                            "instance".to_owned(),
                            format!("i-{}", (round * 40 + i) % 300),
                        )],
                    )
                    .unwrap(),
                ),
                bucket_ms: round * 60_000,
                state: State::Counter(u64::try_from(i).unwrap() + 1),
            })
            .collect();
        let progress = [SourceProgress {
            source_id: "edge".into(),
            epoch: 7,
            seq: u64::try_from(round).unwrap() + 1,
            watermark_ms: round * 60_000,
            last_seen_ms: round * 60_000,
        }];
        store
            .commit(Commit {
                increments: &increments,
                progress: &progress,
                cursors: &[],
                spool_watermark_ms: Some(round * 60_000),
                now_ms: round * 60_000,
            })
            .unwrap();
    }
    store.epoch()
}

#[test]
fn an_empty_file_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    write_some_data(dir.path());
    std::fs::File::create(dir.path().join(FILE)).unwrap();
    let err = RedbStore::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(err.is_unreadable(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("strata.redb") && text.contains("empty"),
        "{text}"
    );
    assert_eq!(std::fs::metadata(dir.path().join(FILE)).unwrap().len(), 0);
}

#[test]
fn a_file_that_is_not_a_store_is_unreadable_but_a_locked_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE), b"not a database, not at all").unwrap();
    let err = RedbStore::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(err.is_unreadable(), "{err}");

    let live = tempfile::tempdir().unwrap();
    let _open = RedbStore::open(live.path(), StoreOptions::default()).unwrap();
    let err = RedbStore::open(live.path(), StoreOptions::default()).unwrap_err();
    assert!(!err.is_unreadable(), "a lock is not damage: {err}");
    assert!(err.to_string().contains("another process"), "{err}");
}

#[test]
fn moving_a_store_aside_keeps_its_bytes_and_frees_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let epoch = write_some_data(dir.path());
    let bytes = std::fs::read(dir.path().join(FILE)).unwrap();
    let aside = RedbStore::move_aside(dir.path()).unwrap();
    assert!(
        aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("strata.redb.corrupt-"),
        "{}",
        aside.display()
    );
    assert_eq!(std::fs::read(&aside).unwrap(), bytes);
    let fresh = RedbStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_ne!(fresh.epoch(), epoch);
    assert_eq!(fresh.series_count(), 0);
}

/// Random bytes written over a real store file, many times: every open
/// either succeeds (the bytes hit unused space) or fails with an error
/// naming the file, and none panics (a panic would fail this test).
#[test]
fn random_bytes_in_the_file_never_make_open_panic() {
    let dir = tempfile::tempdir().unwrap();
    write_some_data(dir.path());
    let pristine = std::fs::read(dir.path().join(FILE)).unwrap();
    let mut rng = 0x005e_ed0f_c044_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut opened, mut refused) = (0, 0);
    for round in 0..200 {
        let mut bytes = pristine.clone();
        let len = bytes.len() as u64;
        // A few scattered bytes, or a run of garbage over one page.
        if round % 2 == 0 {
            for _ in 0..1 + next() % 8 {
                let at = usize::try_from(next() % len).unwrap();
                bytes[at] = u8::try_from(next() % 256).unwrap();
            }
        } else {
            let start = usize::try_from(next() % len).unwrap();
            let end = (start + 1 + usize::try_from(next() % 4096).unwrap()).min(bytes.len());
            for b in &mut bytes[start..end] {
                *b = u8::try_from(next() % 256).unwrap();
            }
        }
        let case = tempfile::tempdir().unwrap();
        std::fs::write(case.path().join(FILE), &bytes).unwrap();
        match RedbStore::open(case.path(), StoreOptions::default()) {
            Ok(store) => {
                opened += 1;
                // What it restored is readable.
                let _ = store.sources();
                let _ = store.spool_read(0, 100);
                for s in store.series_of("requests") {
                    let _ = store.read(&s, 0, i64::MAX);
                }
            }
            Err(e) => {
                refused += 1;
                assert!(e.to_string().contains("strata.redb"), "round {round}: {e}");
            }
        }
    }
    assert!(refused > 0, "no corruption was detected ({opened} opened)");
}
