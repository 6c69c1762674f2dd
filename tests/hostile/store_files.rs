//! Store files damaged outside strata, and panics in pipeline threads: a
//! store that cannot be read is refused at start with a clear error (exit 1,
//! never a panic's 101, never silently replaced), `--reset-store` moves it
//! aside, and a pipeline thread that panics stops the whole node with an
//! error exit instead of leaving it half alive.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::*;

const STORE: &str = "strata.redb";

/// Writes counters and histograms over two minutes into a node (its spool
/// too: it forwards to an upstream that is not there), and stops it
/// cleanly. Returns its config (without the upstream) and how many counter
/// samples it committed.
fn stopped_node_with_data(root: &Path) -> (NodeConfig, u64) {
    let mut config = NodeConfig::new(root, "edge").grace_s(0);
    config.upstream = Some(("http://127.0.0.1:9".into(), token_of("edge")));
    let mut node = Node::start(config);
    let base = base_minute_ms();
    let mut committed = 0;
    for r in 0..12i64 {
        let lines: Vec<Value> = (0..25i64)
            .flat_map(|i| {
                let ts = base + (r * 10_000 + i * 300) % 120_000;
                let service = format!("svc-{}", (r * 25 + i) % 40);
                [
                    sample(
                        "store_requests",
                        "counter",
                        &[("service", &service)],
                        ts,
                        json!(1),
                    ),
                    sample(
                        "store_latency_ms",
                        "histogram",
                        &[("service", &service)],
                        ts,
                        json!(1.5 + (i * r) as f64),
                    ),
                ]
            })
            .collect();
        ingest_ok(&node, &lines, true);
        committed += 25;
    }
    node.sigterm();
    node.wait_clean_exit(DEADLINE);
    let mut config = node.config.clone();
    config.upstream = None;
    (config, committed)
}

/// How a `strata run` on a damaged store went.
enum Start {
    /// It exited before serving.
    Refused(ExitStatus),
    /// It serves HTTP on this address.
    Serving(Child, SocketAddr),
}

/// Runs `strata run` with `config`, its stderr in `log`.
fn start(config: &Path, log: &Path) -> Start {
    let mut child = Command::new(strata_bin())
        .args(["run", "--grace-s", "0", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(log).expect("creating the log"))
        .env("NO_COLOR", "1")
        .spawn()
        .expect("spawning strata");
    match first_stdout_line(&mut child).recv_timeout(DEADLINE) {
        Ok(line) => {
            let v: Value = serde_json::from_str(&line).expect("listening line");
            let http = v["http"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .expect("http address");
            Start::Serving(child, http)
        }
        // Its stdout closed without a line: it is exiting.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Start::Refused(child.wait().expect("waiting for strata"))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("strata neither served nor exited within {DEADLINE:?}");
        }
    }
}

/// Waits (up to `DEADLINE`) for `child` to exit.
fn wait_exit(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("strata did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Files in `dir` moved aside by `--reset-store`.
fn moved_aside(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("reading the data dir")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("strata.redb.corrupt-"))
        })
        .collect()
}

#[test]
fn an_empty_store_file_is_refused_and_reset_store_moves_it_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, _) = stopped_node_with_data(dir.path());
    let store = config.data_dir.join(STORE);
    File::create(&store).expect("truncating the store");

    let (status, text) = run_refused(&config);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("strata.redb is empty") && text.contains("--reset-store"),
        "{text}"
    );
    assert_eq!(std::fs::metadata(&store).expect("store kept").len(), 0);
    assert!(moved_aside(&config.data_dir).is_empty());
    // A request log beside it, holding a record: which records the lost
    // store merged is lost with it, so the log goes aside too.
    let log_file = strata_store::RequestLogFile::open(&config.data_dir).expect("request log");
    log_file
        .write(&[b"record".to_vec()], &[], 0)
        .expect("a record");
    drop(log_file);

    // Asked explicitly, it keeps the file aside and starts a new store.
    let mut reset = config.clone();
    reset.run_args.push("--reset-store".into());
    let node = Node::start(reset);
    let aside = moved_aside(&node.config.data_dir);
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::metadata(&aside[0]).expect("aside").len(), 0);
    let log = node.log();
    assert!(
        log.contains("store unreadable: moved aside") && log.contains("moved_to="),
        "{log}"
    );
    assert!(
        log.contains("request log moved aside with the store"),
        "{log}"
    );
    let logs_aside: Vec<_> = std::fs::read_dir(&node.config.data_dir)
        .expect("reading the data dir")
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("request_log.redb.reset-"))
        .collect();
    assert_eq!(logs_aside.len(), 1, "{logs_aside:?}");
    assert_eq!(counter_total(&node, "store_requests", base_minute_ms()), 0);
    assert!(std::fs::metadata(&store).expect("new store").len() > 0);
}

/// Random bytes over a real store file, 40 times with a seeded generator
/// (`STRATA_CORRUPT_SEED` replays a run): every start either refuses with
/// exit 1 and an error naming the file, or serves queries and ingest and
/// stops cleanly. No start and no request panics.
#[test]
fn random_bytes_in_the_store_file_never_panic_the_node() {
    let seed = std::env::var("STRATA_CORRUPT_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("STRATA_CORRUPT_SEED is a number"))
        .unwrap_or(20_260_429);
    eprintln!("corruption seed {seed} (STRATA_CORRUPT_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, committed) = stopped_node_with_data(dir.path());
    let store = config.data_dir.join(STORE);
    let pristine = std::fs::read(&store).expect("reading the store");
    let config_path = write_config(&config, "corrupt");
    let log = dir.path().join("corrupt.log");
    let (mut refused, mut served) = (0, 0);
    for round in 0..40 {
        let mut bytes = pristine.clone();
        let len = bytes.len() as u64;
        let what = if round % 2 == 0 {
            let n = 1 + rng.below(8);
            for _ in 0..n {
                bytes[rng.below(len) as usize] = rng.below(256) as u8;
            }
            format!("{n} random bytes")
        } else {
            let start = rng.below(len) as usize;
            let end = (start + 1 + rng.below(4096) as usize).min(bytes.len());
            for b in &mut bytes[start..end] {
                *b = rng.below(256) as u8;
            }
            format!("random bytes over {start}..{end}")
        };
        std::fs::write(&store, &bytes).expect("writing the corrupt store");
        let context = |log: &str| format!("round {round} ({what}), seed {seed}; log:\n{log}");
        match start(&config_path, &log) {
            Start::Refused(status) => {
                refused += 1;
                let text = read(&log);
                assert_eq!(status.code(), Some(1), "{}", context(&text));
                assert!(
                    text.contains("error:") && text.contains(STORE),
                    "{}",
                    context(&text)
                );
                assert!(!text.contains("panicked"), "{}", context(&text));
            }
            Start::Serving(mut child, http) => {
                served += 1;
                let url = |path: &str| format!("http://{http}{path}");
                let (status, body) = get_text(&url(
                    "/api/v1/query?q=store_requests&from=-1h&step=all&group_by=",
                ));
                assert!(status == 200 || status >= 400, "{status} {body}");
                let line = sample("store_requests", "counter", &[], now_ms(), json!(1));
                let mut resp = agent()
                    .post(url("/api/v1/ingest?wait=commit"))
                    .send(ndjson(&[line]))
                    .expect("ingest answered");
                let status = resp.status().as_u16();
                let body = resp.body_mut().read_to_string().unwrap_or_default();
                assert_eq!(status, 200, "{body}; {}", context(&read(&log)));
                let kill = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status()
                    .expect("kill -TERM");
                assert!(kill.success());
                let status = wait_exit(&mut child);
                let text = read(&log);
                assert!(status.success(), "exit {status}; {}", context(&text));
                assert!(!text.contains("panicked"), "{}", context(&text));
            }
        }
    }
    eprintln!("{refused} refused, {served} served ({committed} samples in the store)");
    assert!(refused > 0, "no corruption was ever detected");
}

/// Each pipeline thread in turn is made to panic (the debug builds'
/// fault-injection hook): the node stops by itself with exit 1 and an error
/// line naming the thread, and a restart finds everything it committed.
#[test]
fn a_panic_in_a_pipeline_thread_stops_the_node_with_an_error_exit() {
    for point in ["shard", "flush", "commit"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = NodeConfig::new(dir.path(), "edge")
            .grace_s(2)
            .env("STRATA_FAULT_INJECT", &format!("panic:{point}"));
        let mut node = Node::start(config);
        let base = base_minute_ms();
        let lines: Vec<Value> = (0..10)
            .map(|i| sample("kept_requests", "counter", &[], base + i, json!(1)))
            .collect();
        ingest_ok(&node, &lines, true);

        let fault = sample("fault_injection_panic", "counter", &[], base, json!(1));
        let answer = agent()
            .post(node.url("/api/v1/ingest?wait=commit"))
            .send(ndjson(&[fault]))
            .map(|r| r.status().as_u16());
        // Accepted for processing, never committed.
        assert!(!matches!(answer, Ok(200) | Ok(400)), "{point}: {answer:?}");
        let status = node.wait_exit(DEADLINE);
        let log = node.log();
        assert_eq!(
            status.code(),
            Some(1),
            "{point}: exit {status}; log:\n{log}"
        );
        assert!(
            log.contains(&format!(
                "error: the node stopped because the {point} thread"
            )) && log.contains("stopping the node: a pipeline thread failed"),
            "{point}: log:\n{log}"
        );

        node.config.env.clear();
        node.restart();
        assert_eq!(
            counter_total(&node, "kept_requests", base),
            10,
            "{point}: committed samples survive"
        );
        let (status, body) = get_text(&node.url("/health"));
        assert_eq!(status, 200, "{point}: {body}");
    }
}
