//! The fuzz targets' checks, run on stable in a few seconds: over the committed
//! corpus (`fuzz/corpus/<target>/*`), over arbitrary bytes, and over valid
//! encodings with bytes flipped, inserted, removed or cut off. The fuzz targets
//! under `fuzz/` run the same functions for millions of inputs on nightly (see
//! docs/SECURITY.md); this keeps every finding fixed.
//!
//! `cargo test -p strata-server --test fuzz_smoke -- --ignored write_seed_corpus`
//! writes the structured seeds below into the corpus directories.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;
use strata_model::{Hist, Kind, SampleValue, State, StateParams};

type Check = fn(&[u8]);

/// Every fuzz target: its name under `fuzz/` and the function it runs.
const TARGETS: [(&str, Check); 7] = [
    ("ndjson", strata_server::fuzzing::ndjson),
    ("query", strata_server::fuzzing::query),
    ("federation_batch", strata_server::fuzzing::federation),
    ("state_codec", strata_model::fuzzing::state_codec),
    ("store_codec", strata_store::fuzzing::store_codec),
    ("pushed", strata_server::fuzzing::pushed),
    ("promql", strata_server::fuzzing::promql),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../fuzz/corpus/{target}"))
}

/// The committed corpus of `target`, in file name order.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(corpus_dir(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|path| Some((path.clone(), std::fs::read(&path).ok()?)))
        .collect()
}

fn ndjson_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"metric":"lat","kind":"histogram","labels":{"service":"checkout"},"value":12.5}"#,
        "{\"metric\":\"req\",\"kind\":\"counter\"}\r\n\n{\"metric\":\"ok\",\"kind\":\"percent\",\"value\":true}\n",
        r#"{"metric":"ap","kind":"apdex","value":120,"threshold":300,"labels":{"az":"é","b":""}}"#,
        r#"{"metric":"s","kind":"sum","value":-1e300,"ts_ms":1763800000123}
{"metric":"s","kind":"avg","value":2}"#,
        r#"{"metric":"m","kind":"max","value":9007199254740993}"#,
        r#"{"metric":"l","kind":"latest","value":1,"ts_ms":-9223372036854775808}"#,
        r#"{"metric":"n","kind":"min","value":0.5,"ts_ms":9223372036854775807}"#,
        "{\"metric\":\"a\",\"kind\":\"counter\"}\n{\"metric\":\"a\",\"kind\":\"sum\",\"value\":1}",
    ]
    .map(|s| s.as_bytes().to_vec())
    .to_vec()
}

fn query_seeds() -> Vec<Vec<u8>> {
    [
        "lat\n-15m\nnow\nminute\n",
        "lat{cloud=~\"a.*|gcp\",service!=\"x\"}\n-1h\nnow\nall\ncloud, service",
        "{__name__=\"req\",cloud!~\"az.+\"}\n1763790000000\n1763800000000\nhour\n",
        "req offset 5m\n-2d\n-1d\nday\n",
        "sum(rate(lat[5m]))\n-9223372036854775808\n253402300799999\nweek\n,",
    ]
    .map(|s| s.as_bytes().to_vec())
    .to_vec()
}

fn promql_seeds() -> Vec<Vec<u8>> {
    [
        "1+1",
        "histogram_quantile(0.99, sum by (cloud) (rate(lat[5m])))\n-3",
        "topk(2, sum without (service) (increase(req{cloud=~\"a.*\"}[10m]))) > bool 3",
        "label_replace(req, \"c\", \"$1\", \"cloud\", \"(.)(.*)\") / on (cloud) req offset 5m\n7",
        "absent(nope{a=\"b\"}) or vector(time())",
        "lat_count @ 1763799000 + -req[1e300]",
        "sum(histogram_count(increase(lat[30m]))) / scalar(count(req))\n30",
    ]
    .map(|s| s.as_bytes().to_vec())
    .to_vec()
}

fn state_seeds() -> Vec<Vec<u8>> {
    let params = StateParams::default();
    let mut seeds = Vec::new();
    for kind in Kind::ALL {
        let mut state = State::empty(kind, &params);
        seeds.push(state.to_bytes());
        let value = match kind {
            Kind::Percent => SampleValue::Flag(true),
            _ => SampleValue::Number(12.0),
        };
        state.record(value, 7, "edge").unwrap();
        seeds.push(state.to_bytes());
    }
    for sigfig in 1..=5 {
        let mut h = Hist::new(sigfig).unwrap();
        for v in seed_values(sigfig) {
            h.record_n(v, 300).unwrap();
        }
        seeds.push(h.to_v2_bytes());
    }
    seeds
}

/// Values for a seed histogram: wide at few digits; at 4 and 5 digits narrow, since
/// their window spans 2^17 buckets per power of two.
fn seed_values(sigfig: u8) -> Vec<f64> {
    if sigfig <= 3 {
        vec![0.0, 0.001, 3.5, 980.0, 1e9]
    } else {
        vec![1.0, 1.5, 2.5]
    }
}

/// Structured seeds of every target, by target name.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "ndjson" => ndjson_seeds(),
        "query" => query_seeds(),
        "federation_batch" => strata_server::fuzzing::federation_seeds(),
        "state_codec" => state_seeds(),
        "store_codec" => strata_store::fuzzing::encodings(),
        "pushed" => strata_server::fuzzing::pushed_seeds(),
        "promql" => promql_seeds(),
        other => panic!("no seeds for {other}"),
    }
}

#[test]
fn the_committed_corpus_passes_every_check() {
    // On a stack as large as the node's threads have (and libFuzzer's main
    // thread): the corpus holds selectors whose regexes nest as deep as
    // regex-syntax allows.
    let run = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(|| {
            for (target, check) in TARGETS {
                let files = corpus(target);
                assert!(
                    !files.is_empty(),
                    "no corpus for {target} in {}",
                    corpus_dir(target).display()
                );
                for (path, bytes) in files {
                    eprintln!("{target}: {}", path.display());
                    check(&bytes);
                }
            }
        })
        .expect("spawning the corpus thread");
    if let Err(panic) = run.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn every_truncation_of_every_seed_passes() {
    for (target, check) in TARGETS {
        for seed in seeds(target) {
            for len in 0..=seed.len() {
                check(&seed[..len]);
            }
        }
    }
}

/// Applies `edits` to `seed`: (position, byte, what) flips a bit, sets a byte,
/// inserts one or removes one.
fn mutate(seed: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for &(at, byte, what) in edits {
        let at = at % (out.len() + 1);
        match (what % 4, at < out.len()) {
            (0, true) => out[at] ^= 1 << (byte % 8),
            (1, true) => out[at] = byte,
            (2, true) => {
                out.remove(at);
            }
            _ => out.insert(at, byte),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 600,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/fuzz_smoke.txt"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_pass_every_check(bytes in vec(any::<u8>(), 0..256)) {
        for (_, check) in TARGETS {
            check(&bytes);
        }
    }

    #[test]
    fn mutated_seeds_pass_every_check(
        pick in any::<usize>(),
        edits in vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        for (target, check) in TARGETS {
            let seeds = seeds(target);
            let seed = &seeds[pick % seeds.len()];
            check(&mutate(seed, &edits));
        }
    }
}

/// Writes the structured seeds into `fuzz/corpus/<target>/seed-<n>`.
#[test]
#[ignore = "writes into the source tree; run by hand to refresh the seeds"]
fn write_seed_corpus() {
    for (target, _) in TARGETS {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seeds(target).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
}
