//! Shared helpers of the end-to-end tests: real `strata` processes on
//! loopback, their configs, HTTP calls, and polling with a deadline.
//!
//! Every node listens on `127.0.0.1:0` and the tests read the bound addresses
//! from the one `{"event":"listening",...}` line the process prints. A
//! [`Node`] kills its process when dropped, so a failing test leaks nothing,
//! and prints the tail of the node's log when the test is panicking.
//!
//! Nothing here sleeps "long enough": [`wait_for`] polls a condition until it
//! holds or a deadline passes, and the tests then assert exact numbers.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// How long any single condition may take to hold before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Flush interval of every test node: keeps the tests fast.
pub const FLUSH_INTERVAL_MS: u64 = 200;

/// Path of the binary under test.
pub fn strata_bin() -> &'static str {
    env!("CARGO_BIN_EXE_strata")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Start of the previous UTC minute: every sample of a test is stamped inside
/// `[base, base + 60 s)`, well within the default allowed lateness (600 s).
pub fn base_minute_ms() -> i64 {
    let now = now_ms();
    now - now.rem_euclid(60_000) - 60_000
}

/// Query range covering the previous and the current minute.
pub fn range_of(base: i64) -> (String, String) {
    (base.to_string(), (base + 120_000).to_string())
}

/// What one node's TOML says.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: String,
    pub data_dir: PathBuf,
    pub http_listen: String,
    pub grpc_listen: String,
    /// `(endpoint, token)` of the upstream tier.
    pub upstream: Option<(String, String)>,
    /// `(id, token)` of every declared downstream source.
    pub downstream: Vec<(String, String)>,
    /// Extra arguments of `strata run`, e.g. `--grace-s 2`.
    pub run_args: Vec<String>,
    /// Extra `key = value` lines per section (`"grpc"`, `"storage"`, …), see
    /// [`NodeConfig::set`].
    pub extra: Vec<(String, String)>,
    /// Extra environment variables of the process, see [`NodeConfig::env`].
    pub env: Vec<(String, String)>,
    /// TOML appended as it is, e.g. `[[alarm]]` tables, see [`NodeConfig::raw`].
    pub raw: String,
    /// `storage.request_log`: off unless a test asks for it
    /// ([`NodeConfig::request_log`]), so that a query right after a
    /// `wait=commit` answer sees the samples, which most tests check.
    pub request_log: bool,
    /// `aggregation.flush_interval_ms`: [`FLUSH_INTERVAL_MS`] unless set
    /// ([`NodeConfig::flush_interval_ms`]).
    pub flush_interval_ms: u64,
}

/// The token a source named `id` presents (and its upstream expects).
pub fn token_of(id: &str) -> String {
    format!("{id}-secret")
}

impl NodeConfig {
    /// A node with its data in `root/<id>` (or `root/<id>-<n>` via [`NodeConfig::data_dir`]).
    pub fn new(root: &Path, id: &str) -> NodeConfig {
        NodeConfig {
            id: id.to_string(),
            data_dir: root.join(id),
            http_listen: "127.0.0.1:0".into(),
            grpc_listen: "127.0.0.1:0".into(),
            upstream: None,
            downstream: Vec::new(),
            run_args: Vec::new(),
            extra: Vec::new(),
            env: Vec::new(),
            raw: String::new(),
            request_log: false,
            flush_interval_ms: FLUSH_INTERVAL_MS,
        }
    }

    /// Flushes every `ms` instead of every [`FLUSH_INTERVAL_MS`].
    pub fn flush_interval_ms(mut self, ms: u64) -> NodeConfig {
        self.flush_interval_ms = ms;
        self
    }

    /// Answers `wait=commit` from the request log (the product's default):
    /// durable at once, merged by the next flush.
    pub fn request_log(mut self) -> NodeConfig {
        self.request_log = true;
        self
    }

    /// Appends `toml` to the config as it is (after every section).
    pub fn raw(mut self, toml: &str) -> NodeConfig {
        self.raw += toml;
        self.raw.push('\n');
        self
    }

    /// Adds `line` (`key = value`, TOML) to `section` of the config, e.g.
    /// `.set("grpc", "max_message_bytes = 65536")`.
    pub fn set(mut self, section: &str, line: &str) -> NodeConfig {
        self.extra.push((section.to_string(), line.to_string()));
        self
    }

    /// Sets an environment variable of the node's process, e.g. the debug
    /// builds' fault-injection hook `STRATA_FAULT_INJECT`.
    pub fn env(mut self, name: &str, value: &str) -> NodeConfig {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// The extra lines of `section`, each ending in a newline.
    fn extra_lines(&self, section: &str) -> String {
        self.extra
            .iter()
            .filter(|(s, _)| s == section)
            .map(|(_, line)| format!("{line}\n"))
            .collect()
    }

    /// Forwards to `upstream` with this node's token.
    pub fn upstream(mut self, upstream: &Node) -> NodeConfig {
        self.upstream = Some((format!("http://{}", upstream.grpc), token_of(&self.id)));
        self
    }

    /// Forwards to `upstream` over TLS (`https://`), verifying its
    /// certificate against the PEM CA file `ca_file`.
    pub fn upstream_https(mut self, upstream: &Node, ca_file: &Path) -> NodeConfig {
        self.upstream = Some((format!("https://{}", upstream.grpc), token_of(&self.id)));
        let ca = serde_json::to_string(&ca_file.to_string_lossy()).expect("strings serialize");
        self.set("upstream", &format!("ca_file = {ca}"))
    }

    /// Accepts a downstream source named `id`.
    pub fn downstream(mut self, id: &str) -> NodeConfig {
        self.downstream.push((id.to_string(), token_of(id)));
        self
    }

    /// Seconds `strata run` waits for upstream acks at shutdown.
    pub fn grace_s(mut self, seconds: u64) -> NodeConfig {
        self.run_args
            .extend(["--grace-s".to_string(), seconds.to_string()]);
        self
    }

    pub fn data_dir(mut self, dir: PathBuf) -> NodeConfig {
        self.data_dir = dir;
        self
    }

    pub fn to_toml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("strings serialize");
        let mut sections: Vec<(&str, String)> = vec![
            (
                "node",
                format!(
                    "id = {}\ndata_dir = {}\n",
                    q(&self.id),
                    q(&self.data_dir.to_string_lossy())
                ),
            ),
            ("http", format!("listen = {}\n", q(&self.http_listen))),
            ("grpc", format!("listen = {}\n", q(&self.grpc_listen))),
            (
                "aggregation",
                format!("flush_interval_ms = {}\n", self.flush_interval_ms),
            ),
            (
                "storage",
                format!("engine = \"redb\"\nrequest_log = {}\n", self.request_log),
            ),
        ];
        if let Some((endpoint, token)) = &self.upstream {
            sections.push((
                "upstream",
                format!(
                    "endpoint = {}\ntoken = {}\nmin_backoff_ms = 50\nmax_backoff_ms = 500\n",
                    q(endpoint),
                    q(token)
                ),
            ));
        }
        for (section, _) in &self.extra {
            if !sections.iter().any(|(s, _)| s == section) {
                sections.push((section, String::new()));
            }
        }
        let mut t = String::new();
        for (section, body) in &sections {
            t += &format!("[{section}]\n{body}{}\n", self.extra_lines(section));
        }
        for (id, token) in &self.downstream {
            t += &format!("[[downstream]]\nid = {}\ntoken = {}\n\n", q(id), q(token));
        }
        t += &self.raw;
        t
    }
}

/// Runs `strata query ARGS`: whether it succeeded, its stdout and stderr.
pub fn strata_query(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(strata_bin())
        .arg("query")
        .args(args)
        .output()
        .expect("running strata query");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first line `child` prints on its piped stdout (its `listening` line),
/// delivered once printed; the sender is dropped if stdout closes first (the
/// process is exiting). Keeps draining stdout so the child never blocks on a
/// full pipe.
pub fn first_stdout_line(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    rx
}

/// A running `strata run` process; killed (SIGKILL) when dropped.
pub struct Node {
    pub id: String,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// `otlp.listen` as bound, when the config has an `[otlp]` table.
    pub otlp_grpc: Option<SocketAddr>,
    pub config: NodeConfig,
    child: Option<Child>,
    config_path: PathBuf,
    log_path: PathBuf,
}

impl Node {
    /// Writes the config next to the data dir and starts the process; returns
    /// once it has reported its addresses.
    pub fn start(config: NodeConfig) -> Node {
        let parent = config
            .data_dir
            .parent()
            .expect("data_dir has a parent")
            .to_path_buf();
        let name = config
            .data_dir
            .file_name()
            .expect("data_dir has a name")
            .to_string_lossy()
            .to_string();
        let config_path = parent.join(format!("{name}.toml"));
        let log_path = parent.join(format!("{name}.log"));
        let mut node = Node {
            id: config.id.clone(),
            http: "0.0.0.0:0".parse().expect("valid address"),
            grpc: "0.0.0.0:0".parse().expect("valid address"),
            otlp_grpc: None,
            config,
            child: None,
            config_path,
            log_path,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    /// Starts the process and reads its addresses; `Err` if it exited
    /// without reporting them (its log is in the message).
    fn try_spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "{} is already running", self.id);
        std::fs::write(&self.config_path, self.config.to_toml()).expect("writing the node config");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("opening the node log");
        let mut cmd = Command::new(strata_bin());
        cmd.args(["run", "--config"])
            .arg(&self.config_path)
            .args(&self.config.run_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .env("NO_COLOR", "1")
            .envs(self.config.env.iter().map(|(k, v)| (k, v)));
        if std::env::var_os("STRATA_LOG").is_none() {
            cmd.env("STRATA_LOG", "info,strata_server=debug");
        }
        let mut child = cmd.spawn().expect("spawning strata");
        let rx = first_stdout_line(&mut child);
        self.child = Some(child);
        let line = match rx.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let mut child = self.child.take().expect("just spawned");
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not report its addresses (exit status {status:?}); log:\n{}",
                    self.id,
                    self.log_tail(60)
                ));
            }
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad listening line {line:?}: {e}"));
        assert_eq!(v["event"], "listening", "{line}");
        assert_eq!(v["node"], self.id.as_str(), "{line}");
        self.http = v["http"]
            .as_str()
            .expect("http address")
            .parse()
            .expect("http socket address");
        self.grpc = v["grpc"]
            .as_str()
            .expect("grpc address")
            .parse()
            .expect("grpc socket address");
        self.otlp_grpc = v["otlp_grpc"]
            .as_str()
            .map(|a| a.parse().expect("otlp_grpc socket address"));
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (graceful shutdown); the process stays owned by this guard.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGHUP: the node re-reads its TLS certificates.
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// Freezes the process (SIGSTOP): its sockets stay open, nothing is read.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Waits for the process to exit by itself with status 0, failing the test
    /// (with the log tail) otherwise.
    pub fn wait_clean_exit(&mut self, timeout: Duration) {
        let status = self.wait_exit(timeout);
        assert!(
            status.success(),
            "{} exited with {status}; log:\n{}",
            self.id,
            self.log_tail(40)
        );
    }

    /// Waits for the process to exit by itself, failing the test after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("node is running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {timeout:?}; log:\n{}",
                    self.id,
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the stopped process again with the same config: same data
    /// dir, and the ports of its config (0 picks new ones).
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Starts the stopped process again on the very addresses it reported
    /// before (others point at them) and the same data dir.
    pub fn restart_same_ports(&mut self) {
        self.config.http_listen = self.http.to_string();
        self.config.grpc_listen = self.grpc.to_string();
        let (http, grpc) = (self.http, self.grpc);
        // The kernel may hold the ports for a moment after a crash: retry a few times.
        let mut attempts = 0;
        while let Err(e) = self.try_spawn() {
            attempts += 1;
            assert!(attempts < 20, "{e}");
            eprintln!(
                "restarting {} on its ports failed (attempt {attempts}), retrying",
                self.id
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        assert_eq!(
            (self.http, self.grpc),
            (http, grpc),
            "{} came back on other ports",
            self.id
        );
    }

    /// The whole stderr log of the node (every run of it).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Prometheus text of `/metrics`.
    pub fn prometheus(&self) -> String {
        let (status, body) = get_text(&self.url("/metrics"));
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Value of an unlabelled-but-for-`node` sample in `/metrics`.
    pub fn prom(&self, name: &str) -> f64 {
        let text = self.prometheus();
        prom_value(&text, name, &self.id)
            .unwrap_or_else(|| panic!("{name} missing from /metrics of {}:\n{text}", self.id))
    }

    /// `/api/v1/sources` data, by source id.
    pub fn sources(&self) -> Vec<Value> {
        let (status, v) = get_json(&self.url("/api/v1/sources"));
        assert_eq!(status, 200, "{v}");
        v["data"]
            .as_array()
            .expect("sources data is an array")
            .clone()
    }

    pub fn source(&self, id: &str) -> Option<Value> {
        self.sources().into_iter().find(|s| s["id"] == id)
    }

    /// Spooled batches not yet acknowledged by the upstream.
    pub fn spool_batches(&self) -> f64 {
        self.prom("strata_spool_batches")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let running = self.child.is_some();
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- log of node {} (was {}) -----\n{}\n----- end of log of {} -----",
                self.id,
                if running { "running" } else { "stopped" },
                self.log_tail(80),
                self.id
            );
        }
    }
}

/// The HTTP client of the tests: 4xx/5xx are answers, not errors.
pub fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(new_agent)
}

/// A fresh HTTP client with the same settings as [`agent`]: no pooled
/// connection to a process that has been killed since survives into it.
pub fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .proxy(None)
        .build()
        .into()
}

pub fn get_text(url: &str) -> (u16, String) {
    let mut resp = agent()
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {url}: reading body: {e}"));
    (status, body)
}

pub fn get_json(url: &str) -> (u16, Value) {
    let (status, body) = get_text(url);
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {url}: {status} {body:?} is not JSON: {e}"));
    (status, v)
}

/// One NDJSON sample line.
pub fn sample(
    metric: &str,
    kind: &str,
    labels: &[(&str, &str)],
    ts_ms: i64,
    value: Value,
) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let mut s = json!({"metric": metric, "kind": kind, "labels": labels, "ts_ms": ts_ms});
    if !value.is_null() {
        s["value"] = value;
    }
    s
}

pub fn ndjson(lines: &[Value]) -> String {
    let mut body = String::new();
    for l in lines {
        body += &l.to_string();
        body.push('\n');
    }
    body
}

/// Posts a raw body to `/api/v1/ingest`; returns the status and the JSON answer.
pub fn ingest_raw(node: &Node, body: &str, wait_commit: bool) -> (u16, Value) {
    let url = node.url(if wait_commit {
        "/api/v1/ingest?wait=commit"
    } else {
        "/api/v1/ingest"
    });
    let mut resp = agent()
        .post(&url)
        .send(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("POST {url}: reading body: {e}"));
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("POST {url}: {status} {text:?} is not JSON: {e}"));
    (status, v)
}

/// Posts samples and requires `200 {"accepted": N}` with every line accepted.
pub fn ingest_ok(node: &Node, lines: &[Value], wait_commit: bool) {
    let (status, v) = ingest_raw(node, &ndjson(lines), wait_commit);
    assert_eq!(status, 200, "ingest into {} answered {v}", node.id);
    assert_eq!(
        v["accepted"],
        lines.len(),
        "ingest into {} answered {v}",
        node.id
    );
}

/// `GET /api/v1/query` with the given parameters: status and JSON answer.
pub fn query_raw(node: &Node, params: &[(&str, &str)]) -> (u16, Value) {
    let url = node.url("/api/v1/query");
    let mut resp = agent()
        .get(&url)
        .query_pairs(params.iter().copied())
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {url}: reading body: {e}"));
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {url} {params:?}: {status} {text:?}: {e}"));
    (status, v)
}

/// A successful query's `data`.
pub fn query(node: &Node, params: &[(&str, &str)]) -> Value {
    let (status, v) = query_raw(node, params);
    assert_eq!(status, 200, "query {params:?} on {}: {v}", node.id);
    assert_eq!(
        v["status"], "success",
        "query {params:?} on {}: {v}",
        node.id
    );
    v["data"].clone()
}

/// `selector` merged into one point over `[base, base + 2 min)`: its value
/// object, or `None` when there is no data at all.
pub fn merged_value(node: &Node, selector: &str, base: i64) -> Option<Value> {
    let (from, to) = range_of(base);
    let data = query(
        node,
        &[
            ("q", selector),
            ("from", &from),
            ("to", &to),
            ("step", "all"),
            ("group_by", ""),
        ],
    );
    let series = data["series"].as_array().expect("series array");
    match series.len() {
        0 => None,
        1 => {
            let points = series[0]["points"].as_array().expect("points array");
            assert_eq!(points.len(), 1, "step=all gives one point: {data}");
            Some(points[0]["value"].clone())
        }
        n => panic!("group_by= gave {n} series: {data}"),
    }
}

/// `selector` merged into one point over every minute from `from_ms` to two
/// minutes from now: its value object, or `None` without data.
pub fn merged_since(node: &Node, selector: &str, from_ms: i64) -> Option<Value> {
    let data = query(
        node,
        &[
            ("q", selector),
            ("from", &from_ms.to_string()),
            ("to", &(now_ms() + 120_000).to_string()),
            ("step", "all"),
            ("group_by", ""),
        ],
    );
    let point = data["series"].as_array()?.first()?["points"]
        .as_array()?
        .first()?;
    Some(point["value"].clone())
}

/// Installs Debian `packages` with apt (through sudo when not root), as the
/// test command does for the real components a test needs; whether apt
/// succeeded. Tries without `apt-get update` first.
pub fn apt_install(packages: &[&str]) -> bool {
    let list = packages.join(" ");
    let install = format!(
        "apt-get install -y --no-install-recommends {list} \
         || (apt-get update && apt-get install -y --no-install-recommends {list})"
    );
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let mut cmd = if root {
        let mut c = Command::new("sh");
        c.args(["-c", &install]);
        c
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "sh", "-c", &install]);
        c
    };
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success())
}

/// The path of `command`, installing Debian `package` with apt when it is
/// missing; fails naming the package when it cannot be installed (a test
/// never skips for want of a component).
pub fn installed(command: &str, package: &str) -> PathBuf {
    let found = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {command}")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    };
    if let Some(path) = found() {
        return path;
    }
    apt_install(&[package]);
    found().unwrap_or_else(|| {
        panic!("this test needs {command}: apt-get install {package} (Debian package)")
    })
}

/// Total of a counter over `[base, base + 2 min)`, 0 when there is no data.
pub fn counter_total(node: &Node, selector: &str, base: i64) -> u64 {
    merged_value(node, selector, base).map_or(0, |v| {
        v["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("count in {v}"))
    })
}

/// Value of `name{node="<node>"...}` in a Prometheus text body.
pub fn prom_value(text: &str, name: &str, node: &str) -> Option<f64> {
    let prefix = format!("{name}{{node=\"{node}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `DEADLINE`
/// with `what` and the last thing `check` reported through `last`.
pub fn wait_for<T>(what: &str, mut check: impl FnMut(&mut String) -> Option<T>) -> T {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(v) = check(&mut last) {
            return v;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out after {DEADLINE:?} waiting for {what}; last seen: {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Highest seq of `source` that `upstream` has committed (0 if unknown).
pub fn committed_seq(upstream: &Node, source: &str) -> u64 {
    upstream
        .source(source)
        .and_then(|s| s["committed_seq"].as_u64())
        .unwrap_or(0)
}

/// Waits until every batch `edge` had spooled when called is committed at
/// `upstream`, plus `more` later batches.
///
/// Waiting for `strata_spool_batches` to read 0 is not enough: a forwarding
/// node spools a batch at every flush (it carries the watermark), so with
/// both flush timers at 200 ms the spool is empty only in the short gap
/// between the upstream's ack and the next flush, and never if the two timers
/// are in an unlucky phase. Instead: the spool holds the seqs after the last
/// ack, and an ack never runs ahead of the upstream's committed seq, so
/// everything spooled now is committed once the upstream's committed seq
/// (read after the spool size) has grown by the spool size.
pub fn wait_forwarded(edge: &Node, upstream: &Node, more: u64) {
    let spooled = edge.spool_batches();
    assert!(
        spooled >= 0.0 && spooled.fract() == 0.0,
        "strata_spool_batches {spooled}"
    );
    let start = committed_seq(upstream, &edge.id);
    let target = start + spooled as u64 + more;
    wait_for(
        &format!(
            "{} to commit {}'s spool (seq {target})",
            upstream.id, edge.id
        ),
        |last| {
            let now = committed_seq(upstream, &edge.id);
            *last = format!("committed_seq {now} (was {start}, {spooled} batches were spooled)");
            (now >= target).then_some(())
        },
    );
}

/// Waits until `upstream` has committed at least `more` further batches
/// from `source` than it had when called: later flushes went through.
pub fn wait_more_batches(upstream: &Node, source: &str, more: u64) {
    let start = committed_seq(upstream, source);
    wait_for(
        &format!("{more} more batches from {source} at {}", upstream.id),
        |last| {
            let now = committed_seq(upstream, source);
            *last = format!("committed_seq {now} (started at {start})");
            (now >= start + more).then_some(())
        },
    );
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Log-normal with the given median and sigma (Box-Muller).
    pub fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * z).exp()
    }
}

/// The exact quantile of raw samples: the smallest sample `v` with at least
/// `ceil(q * n)` samples `<= v` (what HdrHistogram approximates).
pub fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty());
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Asserts `got` is within 1% (+0.001 absolute) of `exact`.
pub fn assert_close(what: &str, got: f64, exact: f64) {
    let tolerance = exact.abs() * 0.01 + 0.001;
    assert!(
        (got - exact).abs() <= tolerance,
        "{what}: got {got}, exact {exact} (tolerance {tolerance})"
    );
}

/// Float field of a JSON value object.
pub fn f(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("field {field} is not a number in {v}"))
}

/// Integer field of a JSON value object.
pub fn u(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("field {field} is not an unsigned integer in {v}"))
}

/// Writes `config` beside its data dir as `<name>-<suffix>.toml` and returns the path.
pub fn write_config(config: &NodeConfig, suffix: &str) -> PathBuf {
    let parent = config.data_dir.parent().expect("data_dir has a parent");
    std::fs::create_dir_all(parent).expect("creating the config dir");
    let name = config
        .data_dir
        .file_name()
        .expect("data_dir has a name")
        .to_string_lossy();
    let path = parent.join(format!("{name}-{suffix}.toml"));
    std::fs::write(&path, config.to_toml()).expect("writing the config");
    path
}

/// `strata check-config` of `config`: whether it passed, and stdout + stderr.
pub fn check_config_of(config: &NodeConfig) -> (bool, String) {
    let path = write_config(config, "check");
    let out = Command::new(strata_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("running strata check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `strata run` of a config it must refuse: waits (up to `DEADLINE`) for the
/// process to exit and returns its status and stdout + stderr. A process
/// still running at the deadline is killed and the test fails.
pub fn run_refused(config: &NodeConfig) -> (ExitStatus, String) {
    let path = write_config(config, "run");
    let mut child = Command::new(strata_bin())
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .spawn()
        .expect("spawning strata");
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("strata run accepted {} and kept running", path.display());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("waiting for strata: {e}"),
        }
    };
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut text)
            .expect("reading strata stdout");
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut text)
            .expect("reading strata stderr");
    }
    (status, text)
}

/// A federation stream driven by hand, as a (possibly hostile) downstream
/// source would: Hello, then whatever batches the test forges.
pub struct FedStream {
    rt: tokio::runtime::Runtime,
    tx: tokio::sync::mpsc::Sender<strata_proto::v1::SourceMessage>,
    rx: tonic::Streaming<strata_proto::v1::UpstreamMessage>,
    /// What the upstream answered the Hello with.
    pub welcome: strata_proto::v1::Welcome,
}

impl FedStream {
    /// Opens a stream to `upstream` as `source_id` with `epoch` and `token`;
    /// `Err` with the status if the upstream refuses it.
    pub fn open(
        upstream: &Node,
        source_id: &str,
        epoch: u64,
        token: &str,
    ) -> Result<FedStream, tonic::Status> {
        use strata_proto::v1::{self, source_message, upstream_message};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a test runtime");
        let endpoint = format!("http://{}", upstream.grpc);
        let (tx, rx_out) = tokio::sync::mpsc::channel(16);
        let hello = v1::SourceMessage {
            msg: Some(source_message::Msg::Hello(v1::Hello {
                source_id: source_id.into(),
                epoch,
                token: token.into(),
            })),
        };
        let (rx, first) = rt.block_on(async {
            let mut client = v1::federation_client::FederationClient::connect(endpoint)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            tx.send(hello).await.expect("the request stream is open");
            let out = tokio_stream::wrappers::ReceiverStream::new(rx_out);
            let mut rx = client.stream(out).await?.into_inner();
            let first = tokio::time::timeout(DEADLINE, rx.message())
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("no welcome"))??;
            Ok::<_, tonic::Status>((rx, first))
        })?;
        let welcome = match first.and_then(|m| m.msg) {
            Some(upstream_message::Msg::Welcome(w)) => w,
            other => panic!("expected a welcome, got {other:?}"),
        };
        Ok(FedStream {
            rt,
            tx,
            rx,
            welcome,
        })
    }

    /// Sends one batch.
    pub fn send(&mut self, batch: strata_proto::v1::Batch) {
        let msg = strata_proto::v1::SourceMessage {
            msg: Some(strata_proto::v1::source_message::Msg::Batch(batch)),
        };
        self.rt
            .block_on(self.tx.send(msg))
            .expect("the request stream is open");
    }

    /// The upstream's next message (`Ok(None)`: the stream ended cleanly;
    /// `Err`: the status that ended it). No answer within [`DEADLINE`] fails
    /// the test.
    pub fn recv(
        &mut self,
    ) -> Result<Option<strata_proto::v1::upstream_message::Msg>, tonic::Status> {
        let rx = &mut self.rx;
        self.rt.block_on(async {
            match tokio::time::timeout(DEADLINE, rx.message()).await {
                Ok(m) => m.map(|m| m.and_then(|m| m.msg)),
                Err(_) => panic!("no answer from the upstream within {DEADLINE:?}"),
            }
        })
    }
}

/// One forwarded increment of `state` for `metric` (no labels) in the minute
/// starting at `bucket_ms`, as a batch with `seq`.
pub fn forged_batch(
    seq: u64,
    metric: &str,
    bucket_ms: i64,
    state: strata_proto::v1::state::Kind,
) -> strata_proto::v1::Batch {
    use strata_proto::v1;
    v1::Batch {
        seq,
        watermark_ms: bucket_ms,
        series: vec![v1::SeriesIncrements {
            metric: metric.into(),
            buckets: vec![v1::BucketState {
                bucket_ms,
                state: Some(v1::State { kind: Some(state) }),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
