//! A real Alertmanager (Debian package `prometheus-alertmanager`, installed
//! by this test when missing) receives a node's alarms: the alert appears
//! with exactly its labels and templated annotations, is grouped, is re-sent
//! while firing (also by a node restarted after the Alertmanager let it
//! lapse), and is resolved once the data stops breaching. A recording
//! receiver beside it sees the very posts, the resolving one included.
//!
//! Minutes complete at once (`watermark_delay_ms = 0`), and the breach is
//! sent into the previous minute, already complete: the rule fires within a
//! second. With `period_minutes = 2`, the instance stays firing until its
//! window no longer holds that minute — at least a minute, in which the
//! firing checks run — and then resolves, within two minutes.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata_server::outputs::alarms::alertmanager::rfc3339;
use util::*;

/// How long the instance may take to resolve: its window moves past the
/// breaching minute within two minutes of the breach.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(180);

/// The `prometheus-alertmanager` binary, installed with apt when missing.
fn alertmanager_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| installed("prometheus-alertmanager", "prometheus-alertmanager"))
}

/// An Alertmanager on loopback, clustering off, grouping by `alertname`
/// into a receiver that notifies nobody; killed when dropped.
struct Alertmanager {
    child: Child,
    /// `http://127.0.0.1:<port>`, as it reported binding.
    url: String,
}

impl Alertmanager {
    fn start(dir: &Path) -> Alertmanager {
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: \"null\"\n  group_by: [alertname]\n\
             receivers:\n  - name: \"null\"\n",
        )
        .expect("writing alertmanager.yml");
        let mut child = Command::new(alertmanager_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .arg("--cluster.listen-address=")
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting prometheus-alertmanager");
        let addr = listening_address(&mut child, &dir.join("alertmanager.log"));
        let am = Alertmanager {
            child,
            url: format!("http://{addr}"),
        };
        wait_for("Alertmanager to be ready", |last| {
            let (status, body) = get_text(&format!("{}/-/ready", am.url));
            *last = format!("{status} {body}");
            (status == 200).then_some(())
        });
        am
    }

    /// The active alerts (`GET /api/v2/alerts`: resolved ones are left out).
    fn alerts(&self) -> Vec<Value> {
        let (status, v) = get_json(&format!("{}/api/v2/alerts", self.url));
        assert_eq!(status, 200, "{v}");
        v.as_array().expect("an array of alerts").clone()
    }

    fn groups(&self) -> Vec<Value> {
        let (status, v) = get_json(&format!("{}/api/v2/alerts/groups", self.url));
        assert_eq!(status, 200, "{v}");
        v.as_array().expect("an array of groups").clone()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address from Alertmanager's `msg="Listening on" address=…` log line;
/// the rest of its log goes to `log`.
fn listening_address(child: &mut Child, log: &Path) -> String {
    let stderr = child.stderr.take().expect("piped stderr");
    let mut log = std::fs::File::create(log).expect("creating the Alertmanager log");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            if line.contains("msg=\"Listening on\"")
                && let Some(addr) = line.split("address=").nth(1)
            {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    rx.recv_timeout(DEADLINE)
        .expect("Alertmanager did not report its listening address")
}

/// A receiver on loopback that answers 200 to every POST and keeps each
/// body; stands beside the real Alertmanager to show what was posted.
fn recorder() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the recorder");
    let url = format!(
        "http://{}",
        listener.local_addr().expect("recorder address")
    );
    let posts = Arc::new(Mutex::new(Vec::new()));
    let kept = posts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if let Some((path, body)) = read_post(&mut stream) {
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                kept.lock()
                    .expect("recorded posts")
                    .push(json!({"path": path, "body": body}));
            }
        }
    });
    (url, posts)
}

/// One request's path and JSON body; `None` when the client went away.
fn read_post(stream: &mut impl Read) -> Option<(String, Value)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split_whitespace().nth(1)?.to_string();
    let length: usize = head
        .to_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some((path, serde_json::from_slice(&body).ok()?))
}

/// Polls like [`wait_for`], with its own deadline.
fn wait_within<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut(&mut String) -> Option<T>,
) -> T {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(v) = check(&mut last) {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}; last seen: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node's `GET /api/v1/alarms` data.
fn alarms(node: &Node) -> Value {
    let (status, v) = get_json(&node.url("/api/v1/alarms"));
    assert_eq!(status, 200, "{v}");
    v["data"].clone()
}

/// The alerts named `alertname` among `alerts`.
fn named<'a>(alerts: &'a [Value], alertname: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == alertname)
        .collect()
}

const RULES: &str = r#"
[[alarm]]
name = "checkout_latency"
metric = "lat"
field = "max"
op = ">"
threshold = 100.0
group_by = ["service"]
period_minutes = 2
count = 1
severity = "page"
labels = { team = "payments", where = "{{ $labels.service }}" }
annotations = { summary = "max {{ $value }} ms in {{ $labels.service }}", region = "[{{ $labels.region }}]" }

[[alarm]]
name = "quiet"
metric = "lat"
field = "max"
op = ">"
threshold = 1.0
alertmanager_urls = []
"#;

#[test]
fn alerts_reach_a_real_alertmanager_are_re_sent_across_a_restart_and_resolve() {
    let root = tempfile::tempdir().expect("tempdir");
    let am = Alertmanager::start(root.path());
    let (recorder_url, posts) = recorder();
    let mut node = Node::start(
        NodeConfig::new(root.path(), "global")
            .set("aggregation", "watermark_delay_ms = 0")
            .set(
                "alarms",
                &format!("alertmanager_urls = [\"{}\", \"{recorder_url}/\"]", am.url),
            )
            .set("alarms", "alertmanager_resend_s = 1")
            .raw(RULES),
    );

    // One instance breaches, the other does not.
    let base = base_minute_ms();
    ingest_ok(
        &node,
        &[
            sample(
                "lat",
                "max",
                &[("service", "checkout")],
                base + 1_000,
                json!(500.0),
            ),
            sample(
                "lat",
                "max",
                &[("service", "search")],
                base + 2_000,
                json!(5.0),
            ),
        ],
        true,
    );
    let alert = wait_for("the alert in Alertmanager", |last| {
        let alerts = am.alerts();
        *last = format!("{alerts:?}");
        named(&alerts, "checkout_latency")
            .first()
            .map(|a| (*a).clone())
    });
    assert_eq!(
        alert["labels"],
        json!({
            "alertname": "checkout_latency",
            "service": "checkout",
            "severity": "page",
            "node": "global",
            "team": "payments",
            "where": "checkout",
        }),
        "{alert}"
    );
    assert_eq!(
        alert["annotations"],
        json!({
            "value": "500",
            "threshold": "100",
            "bucket": rfc3339(base),
            "complete": "true",
            "sources": "1",
            "expected_sources": "1",
            "summary": "max 500 ms in checkout",
            "region": "[]",
        }),
        "{alert}"
    );
    assert_eq!(
        alert["generatorURL"],
        format!(
            "http://{}/api/v1/query?q=lat&from=-15m&step=minute&group_by=service",
            node.http
        ),
        "{alert}"
    );
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    assert_eq!(alert["receivers"], json!([{"name": "null"}]), "{alert}");
    let firing = alarms(&node)["active"].clone();
    let since_ms = firing
        .as_array()
        .and_then(|a| a.iter().find(|s| s["alarm"] == "checkout_latency"))
        .and_then(|s| s["since_ms"].as_i64())
        .unwrap_or_else(|| panic!("checkout_latency is not firing at the node: {firing}"));
    assert_eq!(alert["startsAt"], rfc3339(since_ms), "{alert}");
    // The rule with `alertmanager_urls = []` fired at the node, and went to
    // no Alertmanager; the instance below the threshold did not fire.
    assert!(
        firing
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["alarm"] == "quiet")),
        "{firing}"
    );
    let alerts = am.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");

    // Grouped by alertname into the null receiver.
    let groups = am.groups();
    let group = groups
        .iter()
        .find(|g| g["labels"] == json!({"alertname": "checkout_latency"}))
        .unwrap_or_else(|| panic!("no checkout_latency group: {groups:?}"));
    assert_eq!(group["receiver"]["name"], "null", "{group}");
    let grouped = group["alerts"].as_array().expect("alerts of the group");
    assert_eq!(grouped.len(), 1, "{group}");
    assert_eq!(grouped[0]["fingerprint"], alert["fingerprint"], "{group}");

    // Re-sent every second: Alertmanager sees it updated, its end moving on.
    let first_update = alert["updatedAt"].clone();
    wait_for("a re-send of the firing alert", |last| {
        let alerts = am.alerts();
        let a = named(&alerts, "checkout_latency")
            .first()
            .map(|a| (*a).clone());
        *last = format!("{a:?}");
        a.filter(|a| a["updatedAt"] != first_update && a["endsAt"] != alert["endsAt"])
    });

    // Stopped, the node no longer re-sends: Alertmanager lets the alert
    // lapse at its endsAt (4 s after the last post). Restarted, the node
    // posts it again at once, as the same firing (same startsAt).
    node.kill();
    wait_for("the alert to lapse while the node is down", |last| {
        let alerts = am.alerts();
        *last = format!("{alerts:?}");
        named(&alerts, "checkout_latency").is_empty().then_some(())
    });
    node.restart_same_ports();
    let again = wait_for("the alert again after the restart", |last| {
        let alerts = am.alerts();
        *last = format!("{alerts:?}");
        named(&alerts, "checkout_latency")
            .first()
            .map(|a| (*a).clone())
    });
    assert_eq!(again["labels"], alert["labels"], "{again}");
    assert_eq!(again["annotations"], alert["annotations"], "{again}");
    assert_eq!(again["startsAt"], alert["startsAt"], "{again}");
    let history = alarms(&node)["history"].clone();
    let fired: Vec<&Value> = history
        .as_array()
        .expect("history")
        .iter()
        .filter(|r| r["alarm"] == "checkout_latency")
        .collect();
    assert_eq!(fired.len(), 1, "fired once, not again: {history}");

    // The breach ends: the window moves past the breaching minute, the
    // instance resolves, and Alertmanager drops the alert from the active
    // ones. It cannot have lapsed instead: the node re-sends it every
    // second until it resolves.
    ingest_ok(
        &node,
        &[sample(
            "lat",
            "max",
            &[("service", "checkout")],
            now_ms(),
            json!(5.0),
        )],
        true,
    );
    wait_within("the alert to resolve", RESOLVE_DEADLINE, |last| {
        let alerts = am.alerts();
        *last = format!("{alerts:?}");
        named(&alerts, "checkout_latency").is_empty().then_some(())
    });
    let history = alarms(&node)["history"].clone();
    let resolved = history
        .as_array()
        .and_then(|h| {
            h.iter()
                .find(|r| r["alarm"] == "checkout_latency" && r["state"] == "resolved")
        })
        .unwrap_or_else(|| panic!("checkout_latency did not resolve at the node: {history}"))
        .clone();

    // What was posted: firing alerts with an end ahead of them, and a last
    // post ending the alert at the resolve time, with the resolving value.
    let resolve_ms = resolved["evaluated_ms"].as_i64().expect("evaluated_ms");
    let ours: Vec<Value> = wait_within("the resolving post", DEADLINE, |last| {
        let posts = posts.lock().expect("recorded posts").clone();
        *last = format!("{} posts", posts.len());
        let ours: Vec<Value> = posts
            .iter()
            .inspect(|p| assert_eq!(p["path"], "/api/v2/alerts", "{p}"))
            .flat_map(|p| p["body"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["labels"]["alertname"] == "checkout_latency")
            .collect();
        ours.last()
            .is_some_and(|a| a["endsAt"] == rfc3339(resolve_ms))
            .then_some(ours)
    });
    let end = ours.last().expect("the resolving post");
    assert_eq!(end["labels"], alert["labels"], "{end}");
    assert_eq!(end["startsAt"], alert["startsAt"], "{end}");
    assert_eq!(end["annotations"]["value"], "5", "{end}");
    assert_eq!(
        end["annotations"]["summary"], "max 5 ms in checkout",
        "{end}"
    );
    assert!(
        ours.len() >= 4,
        "firing, re-sends, after the restart, resolved: {ours:?}"
    );
    for a in &ours[..ours.len() - 1] {
        let ends = a["endsAt"].as_str().expect("a firing alert has its endsAt");
        assert!(
            ends > a["startsAt"].as_str().unwrap_or_default(),
            "ends after it starts: {a}"
        );
    }
    assert!(
        posts
            .lock()
            .expect("recorded posts")
            .iter()
            .flat_map(|p| p["body"].as_array().cloned().unwrap_or_default())
            .all(|a| a["labels"]["alertname"] == "checkout_latency"),
        "only the rule with Alertmanagers posts"
    );
}
