//! The command line: `strata query` prints a table, `strata demo` runs a
//! whole topology and exits (DESIGN §8).

mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use util::*;

#[test]
fn query_prints_a_table_of_series() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::new(dir.path(), "solo"));
    let base = base_minute_ms();
    let mut lines = Vec::new();
    for i in 0..37 {
        lines.push(sample(
            "cli_latency_ms",
            "histogram",
            &[("service", "checkout")],
            base + i,
            json!(10.0 + i as f64),
        ));
    }
    for i in 0..5 {
        lines.push(sample(
            "cli_latency_ms",
            "histogram",
            &[("service", "search")],
            base + i,
            json!(200.0),
        ));
    }
    ingest_ok(&node, &lines, true);
    let addr = format!("http://{}", node.http);
    let (from, to) = range_of(base);

    let (ok, stdout, stderr) = strata_query(&[
        "cli_latency_ms",
        "--addr",
        &addr,
        "--from",
        &from,
        "--to",
        &to,
        "--step",
        "all",
    ]);
    assert!(ok, "strata query failed: {stderr}");
    let header = stdout.lines().next().unwrap_or_default();
    for column in ["labels", "complete", "count", "p50", "p99"] {
        assert!(header.contains(column), "no {column} column: {stdout}");
    }
    let row = |label: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(label))
            .unwrap_or_else(|| panic!("no row for {label}:\n{stdout}"))
            .to_string()
    };
    let cells = |row: &str| row.split_whitespace().map(String::from).collect::<Vec<_>>();
    // Value fields are the last columns, `count` first among them (the
    // time and completeness cells hold spaces, so count from the end).
    let count_col = header
        .split_whitespace()
        .position(|c| c == "count")
        .unwrap();
    let value_fields = header.split_whitespace().count() - count_col;
    let checkout = cells(&row("service=checkout"));
    assert_eq!(checkout[checkout.len() - value_fields], "37", "{stdout}");
    let search = cells(&row("service=search"));
    assert_eq!(search[search.len() - value_fields], "5", "{stdout}");

    // --group-by '' merges everything into one row.
    let (ok, stdout, stderr) = strata_query(&[
        "cli_latency_ms",
        "--addr",
        &addr,
        "--from",
        &from,
        "--to",
        &to,
        "--step",
        "all",
        "--group-by",
        "",
    ]);
    assert!(ok, "{stderr}");
    let merged = stdout
        .lines()
        .find(|l| l.starts_with("{}"))
        .unwrap_or_else(|| panic!("no merged row:\n{stdout}"));
    let merged = cells(merged);
    assert_eq!(merged[merged.len() - value_fields], "42", "{stdout}");

    // --json prints the API answer.
    let (ok, stdout, stderr) = strata_query(&[
        "cli_latency_ms{service=\"search\"}",
        "--addr",
        &addr,
        "--from",
        &from,
        "--to",
        &to,
        "--step",
        "all",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(
        v["data"]["series"][0]["points"][0]["value"]["count"], 5,
        "{v}"
    );

    // A bad selector fails with the server's message.
    let (ok, _, stderr) = strata_query(&["rate(cli_latency_ms[5m])", "--addr", &addr]);
    assert!(!ok);
    assert!(stderr.contains("vector selector"), "{stderr}");

    // `host:port` without a scheme means http.
    let bare = node.http.to_string();
    let (ok, stdout, stderr) = strata_query(&[
        "cli_latency_ms{service=\"search\"}",
        "--addr",
        &bare,
        "--from",
        &from,
        "--to",
        &to,
        "--step",
        "all",
        "--json",
    ]);
    assert!(ok, "--addr {bare}: {stderr}");
    assert!(stdout.contains("\"count\": 5"), "{stdout}");
}

/// `--addr https://…` is used as given: the request goes out over TLS (it
/// opens with a handshake record), never as plain http, and a server that
/// does not complete the handshake is an error naming the address.
#[test]
fn query_uses_an_https_address_as_given() {
    use std::io::Read as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a listener");
    let port = listener.local_addr().expect("listener address").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut first = [0u8; 4];
            let n = conn.read(&mut first).unwrap_or(0);
            let _ = tx.send(first[..n].to_vec());
        }
    });
    let addr = format!("https://127.0.0.1:{port}");
    let (ok, _, stderr) = strata_query(&["m", "--addr", &addr, "--json"]);
    assert!(!ok, "no TLS server listens at {addr}");
    let received = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    assert!(
        !received.starts_with(b"GET"),
        "an https address was queried over plain http"
    );
    // A TLS client opens with a handshake record.
    assert_eq!(received.first(), Some(&0x16), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}

/// Runs `strata <args>` to its end (at most `limit`); its status, stdout and stderr.
fn run_to_end(args: &[&str], limit: Duration) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(strata_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning strata");
    // Drain both pipes on threads so the child never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for strata") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("strata {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |h: std::thread::JoinHandle<String>| h.join().expect("reading a pipe");
    (status, read(out), read(err))
}

#[test]
fn demo_runs_and_exits() {
    let (status, stdout, stderr) =
        run_to_end(&["demo", "--duration-s", "8"], Duration::from_secs(60));
    assert!(
        status.success(),
        "demo exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("global (merged HDR)"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// Runs `strata bench` with `args` to its end and returns the figures of its
/// last line, after checking that it succeeded and found the totals exact.
fn bench_figures(args: &[&str]) -> serde_json::Value {
    let (status, stdout, stderr) = run_to_end(args, Duration::from_secs(120));
    assert!(
        status.success(),
        "bench exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    let figures: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {stdout}"));
    assert_eq!(figures["exact"], json!(true), "{figures}");
    figures
}

/// `strata bench --global-only` with 2 sources of 300 series for 3 s, and
/// `extra` arguments: its figures.
fn global_only_bench(extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "--global-only",
        "--edges",
        "2",
        "--series",
        "300",
        "--duration",
        "3",
    ];
    args.extend_from_slice(extra);
    bench_figures(&args)
}

/// `strata bench --global-only` plays its sources over the federation
/// protocol against a real global, durable, and finds the global's totals
/// equal to what it acknowledged: 2 sources × 300 series × 10 samples per
/// acknowledged batch.
#[test]
fn bench_global_only_streams_exact_batches_to_a_global() {
    let figures = global_only_bench(&[]);
    assert_eq!(figures["global_only"], json!(true), "{figures}");
    assert!(figures["flush_every_ms"].is_null(), "{figures}");
    // Whole batches only: each acknowledged batch is 300 increments of 10 samples.
    let samples = figures["samples"].as_u64().unwrap();
    assert!(samples > 0 && samples.is_multiple_of(3_000), "{figures}");
    let increments = figures["increments_per_s_global"].as_f64().unwrap();
    assert!(increments > 0.0, "{figures}");
    assert!(figures["freshness_p50_ms"].is_null(), "{figures}");
}

/// With `--flush-every-ms` each played source sends one flush per interval,
/// as an edge does, however many it may have in flight: over 3 s at 1 s, 2
/// to 5 flushes of 300 increments of 10 samples per source (the first at
/// once), where 8 in flight unpaced are acknowledged by every commit of the
/// global, several times as many.
#[test]
fn bench_global_only_paces_flushes_at_the_interval() {
    let figures = global_only_bench(&["--concurrency", "8", "--flush-every-ms", "1000"]);
    assert_eq!(figures["flush_every_ms"], json!(1000), "{figures}");
    let samples = figures["samples"].as_u64().unwrap();
    let flushes = samples / 3_000;
    assert_eq!(flushes * 3_000, samples, "{figures}");
    assert!(
        (2 * 2..=2 * 5).contains(&flushes),
        "{flushes} flushes: {figures}"
    );
}

/// The node's log lines, each parsed as one JSON object.
fn json_log_lines(node: &Node) -> Vec<serde_json::Value> {
    node.log()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn json_logs_are_one_object_per_line_by_flag_or_variable() {
    let dir = tempfile::tempdir().unwrap();
    let mut by_flag = NodeConfig::new(dir.path(), "flag");
    by_flag
        .run_args
        .extend(["--log-format".into(), "json".into()]);
    let by_variable = NodeConfig::new(dir.path(), "variable").env("STRATA_LOG_FORMAT", "json");
    for config in [by_flag, by_variable] {
        let mut node = Node::start(config);
        node.sigterm();
        node.wait_clean_exit(DEADLINE);
        let lines = json_log_lines(&node);
        let started = lines
            .iter()
            .find(|l| l["fields"]["message"] == "tier started")
            .unwrap_or_else(|| panic!("no tier started line: {lines:?}"));
        assert_eq!(started["level"], "INFO");
        assert_eq!(started["fields"]["node"], node.id.as_str());
        assert!(started["timestamp"].is_string(), "{started}");
        assert!(lines.iter().any(|l| l["fields"]["message"] == "stopped"));
    }
    // Text stays the default: no line of a plain node parses as JSON.
    let mut plain = Node::start(NodeConfig::new(dir.path(), "plain"));
    plain.sigterm();
    plain.wait_clean_exit(DEADLINE);
    let log = plain.log();
    assert!(log.contains("tier started"), "{log}");
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()),
        "{log}"
    );
}
