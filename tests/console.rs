//! The web console (docs/CONSOLE.md) in a real browser: headless Chromium
//! (Debian package `chromium`, installed by this test when missing) loads
//! each page of a running topology and the test reads the DOM it rendered.
//!
//! The topology is a small federation of real processes: `aws` (an edge)
//! and `eu` (a regional tier fed by the edge `eu-edge-1`) forward to
//! `global`, which has an alarm rule. The pages must show what the JSON API
//! says — the sources and their lag, the tiers below the middle tier, the
//! merged p99 per cloud and overall with the exact figures of
//! `/api/v1/query`, the firing alarm, the events, the health checks — and
//! the browser must log no script error. Screenshots of every page are
//! written to `target/tmp/console/`.
//!
//! Chromium is driven with command-line flags only: `--dump-dom` after a
//! `--virtual-time-budget` (the page's fetches and timers run, then the DOM
//! is printed), polled with a deadline until the data is there.

mod util;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use util::*;

// ---------------------------------------------------------------------------
// The browser

/// A headless Chromium with a profile of its own (runs one at a time).
struct Browser {
    bin: PathBuf,
    profile: tempfile::TempDir,
}

/// What one page load left: the DOM as Chromium serialised it, and its log.
struct Page {
    url: String,
    dom: String,
    log: String,
}

/// Where the screenshots of a test run go.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).expect("creating the screenshot directory");
    dir
}

impl Browser {
    fn new() -> Browser {
        Browser {
            bin: installed("chromium", "chromium"),
            profile: tempfile::tempdir().expect("a browser profile directory"),
        }
    }

    /// Runs Chromium with `args` after the common flags; its stdout and
    /// stderr. Fails the test if it runs longer than [`DEADLINE`].
    fn run(&self, args: &[String]) -> (String, String) {
        let mut child = Command::new(&self.bin)
            .args([
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                // The HTTPS node of the token test has a self-signed certificate.
                "--ignore-certificate-errors",
                "--hide-scrollbars",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=6000",
            ])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting chromium");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for chromium") {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium {args:?} still running after {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (out, err) = (
            out.join().expect("stdout reader"),
            err.join().expect("stderr reader"),
        );
        assert!(
            status.success(),
            "chromium {args:?} exited {status}:\n{err}"
        );
        (out, err)
    }

    /// Loads `url` at 1280×800, lets its scripts run, and returns its DOM.
    fn load(&self, url: &str) -> Page {
        let (dom, log) = self.run(&[
            "--window-size=1280,800".to_string(),
            "--dump-dom".to_string(),
            url.to_string(),
        ]);
        Page {
            url: url.to_string(),
            dom,
            log,
        }
    }

    /// Loads `url` until `check` finds what it waits for in the page (and
    /// the page logged no script error); returns the page and what `check`
    /// returned.
    fn wait<T>(
        &self,
        url: &str,
        what: &str,
        mut check: impl FnMut(&Page) -> Result<T, String>,
    ) -> (Page, T) {
        wait_for(&format!("{what} at {url}"), |last| {
            let page = self.load(url);
            page.assert_no_script_errors();
            match check(&page) {
                Ok(found) => Some((page, found)),
                Err(why) => {
                    *last = why;
                    None
                }
            }
        })
    }

    /// Writes a PNG of `url` at `width`×`height` to the screenshot directory.
    fn screenshot(&self, url: &str, name: &str, (width, height): (u32, u32)) -> PathBuf {
        let path = screenshot_dir().join(format!("{name}.png"));
        let _ = std::fs::remove_file(&path);
        self.run(&[
            format!("--window-size={width},{height}"),
            format!("--screenshot={}", path.display()),
            url.to_string(),
        ]);
        let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{} is not a screenshot ({} bytes)",
            path.display(),
            png.len()
        );
        path
    }
}

impl Page {
    /// The page's own error list (uncaught errors, rejected promises,
    /// console.error) is empty and the browser logged no uncaught error.
    fn assert_no_script_errors(&self) {
        let listed = self.inner("ol", "id", "console-errors");
        assert_eq!(
            listed.as_deref(),
            Some(""),
            "{}: the page listed script errors (or has no error list)",
            self.url
        );
        let uncaught: Vec<&str> = self
            .log
            .lines()
            .filter(|l| l.contains("Uncaught") || l.contains("SyntaxError"))
            .collect();
        assert!(uncaught.is_empty(), "{}: {uncaught:#?}", self.url);
    }

    /// The attributes of every `<tag …>` whose `attr` is set.
    fn elements(&self, tag: &str, attr: &str) -> Vec<BTreeMap<String, String>> {
        start_tags(&self.dom, tag)
            .into_iter()
            .filter(|a| a.contains_key(attr))
            .collect()
    }

    /// The markup inside the first `<tag attr="value">`, up to its first
    /// `</tag>` (enough for elements without nested ones of their kind).
    fn inner(&self, tag: &str, attr: &str, value: &str) -> Option<String> {
        let open = format!("<{tag} {attr}=\"{value}\"");
        let start = self.dom.find(&open)?;
        let body = start + self.dom[start..].find('>')? + 1;
        let end = body + self.dom[body..].find(&format!("</{tag}>"))?;
        Some(self.dom[body..end].to_string())
    }
}

/// The attributes of each start tag `<tag …>` in `html`, entities decoded.
fn start_tags(html: &str, tag: &str) -> Vec<BTreeMap<String, String>> {
    let open = format!("<{tag}");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&open) {
        rest = &rest[at + open.len()..];
        if !rest.starts_with([' ', '>', '/']) {
            continue;
        }
        let (attrs, after) = attributes(rest);
        out.push(attrs);
        rest = after;
    }
    out
}

/// Parses `name="value"` pairs up to the `>` that ends a start tag.
fn attributes(mut s: &str) -> (BTreeMap<String, String>, &str) {
    let mut attrs = BTreeMap::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('>') {
            return (attrs, after);
        }
        if let Some(after) = s.strip_prefix("/>") {
            return (attrs, after);
        }
        let name_end = s.find(['=', ' ', '>']).unwrap_or(s.len());
        let name = s[..name_end].to_string();
        s = &s[name_end..];
        if let Some(after) = s.strip_prefix("=\"") {
            let end = after.find('"').expect("a closed attribute value");
            attrs.insert(name, decode(&after[..end]));
            s = &after[end + 1..];
        } else {
            attrs.insert(name, String::new());
        }
        if s.is_empty() {
            return (attrs, s);
        }
    }
}

fn decode(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

// ---------------------------------------------------------------------------
// The topology

const RULE: &str = r#"
[[alarm]]
name = "latency-p99"
metric = "http_latency_ms"
group_by = ["cloud"]
field = "p99"
op = ">"
threshold = 200.0
period_minutes = 5
count = 1
"#;

struct Topology {
    global: Node,
    eu: Node,
    aws: Node,
    eu_edge: Node,
}

fn start_topology(root: &Path) -> Topology {
    let global = Node::start(
        NodeConfig::new(root, "global")
            .downstream("aws")
            .downstream("eu")
            .raw(RULE),
    );
    let eu = Node::start(
        NodeConfig::new(root, "eu")
            .upstream(&global)
            .downstream("eu-edge-1"),
    );
    let aws = Node::start(NodeConfig::new(root, "aws").upstream(&global));
    let eu_edge = Node::start(NodeConfig::new(root, "eu-edge-1").upstream(&eu));
    Topology {
        global,
        eu,
        aws,
        eu_edge,
    }
}

/// Latency samples of one cloud at `ts_ms`, for two services, and a counter.
fn traffic(
    cloud: &str,
    median: f64,
    sigma: f64,
    n: usize,
    ts_ms: i64,
    rng: &mut Rng,
) -> Vec<Value> {
    let mut lines = Vec::new();
    for i in 0..n {
        let service = if i % 3 == 0 { "search" } else { "checkout" };
        let latency = (rng.log_normal(median, sigma) * 1000.0).round() / 1000.0;
        let labels = [("cloud", cloud), ("service", service)];
        lines.push(sample(
            "http_latency_ms",
            "histogram",
            &labels,
            ts_ms + i as i64,
            json!(latency),
        ));
    }
    lines.push(sample(
        "http_requests",
        "counter",
        &[("cloud", cloud)],
        ts_ms,
        json!(n),
    ));
    lines
}

/// The p99 of `http_latency_ms` over `[from, to)` at `node`, per `group_by`
/// (`""`: merged): label value of `cloud` (or `merged`) → (minute → p99, complete).
fn p99s(
    node: &Node,
    group_by: &str,
    from: i64,
    to: i64,
    step: &str,
) -> BTreeMap<String, BTreeMap<i64, (f64, bool)>> {
    let data = query(
        node,
        &[
            ("q", "http_latency_ms"),
            ("from", &from.to_string()),
            ("to", &to.to_string()),
            ("step", step),
            ("group_by", group_by),
        ],
    );
    let mut out = BTreeMap::new();
    for series in data["series"].as_array().expect("series") {
        let key = series["labels"]["cloud"]
            .as_str()
            .map_or("merged".to_string(), |c| format!("cloud={c}"));
        let points = series["points"]
            .as_array()
            .expect("points")
            .iter()
            .filter_map(|p| {
                Some((
                    p["ts_ms"].as_i64()?,
                    (p["value"]["p99"].as_f64()?, p["complete"].as_bool()?),
                ))
            })
            .collect();
        out.insert(key, points);
    }
    out
}

fn number(attrs: &BTreeMap<String, String>, name: &str) -> f64 {
    let text = attrs
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {attrs:?}"));
    text.parse()
        .unwrap_or_else(|e| panic!("{name}={text:?} in {attrs:?}: {e}"))
}

// ---------------------------------------------------------------------------
// The pages

/// The topology page: every source with its lag, the middle tier with the
/// edge behind it; the middle tier's own page shows its upstream link.
fn topology_page(browser: &Browser, t: &Topology) {
    let url = t.global.url("/#/topology");
    let (page, rows) = browser.wait(&url, "both sources, and eu-edge-1 behind eu", |page| {
        let rows = page.elements("tr", "data-source");
        let below = page.elements("tr", "data-node");
        let ids: Vec<&str> = rows.iter().map(|r| r["data-source"].as_str()).collect();
        let behind = below
            .iter()
            .any(|r| r["data-node"] == "eu-edge-1" && r["data-via"] == "eu");
        let lags_known = rows.iter().all(|r| !r["data-lag-ms"].is_empty());
        if ids == ["aws", "eu"] && behind && lags_known {
            Ok(rows)
        } else {
            Err(format!("sources {ids:?}, below {below:?}"))
        }
    });
    for row in &rows {
        assert_eq!(row["data-connected"], "true", "{row:?}");
        assert_eq!(row["data-expired"], "false", "{row:?}");
        let lag = number(row, "data-lag-ms");
        assert!((0.0..60_000.0).contains(&lag), "{row:?}");
    }
    // The lag figure is coloured by its size.
    for cell in page.elements("td", "data-lag-ms") {
        let lag = number(&cell, "data-lag-ms");
        let tone = if lag <= 10_000.0 { "ok" } else { "warn" };
        assert_eq!(cell["class"], format!("num lag {tone}"), "{cell:?}");
    }
    let upstream = t.eu.url("/#/topology");
    browser.wait(&upstream, "eu's upstream link and its source", |page| {
        let link = page.elements("span", "data-upstream-connected");
        let acked = page.elements("span", "data-acked-seq");
        let sources = page.elements("tr", "data-source");
        let ok = link
            .first()
            .is_some_and(|l| l["data-upstream-connected"] == "true")
            && acked
                .first()
                .is_some_and(|a| number(a, "data-acked-seq") > 0.0)
            && sources.len() == 1
            && sources[0]["data-source"] == "eu-edge-1";
        if ok {
            Ok(())
        } else {
            Err(format!(
                "link {link:?}, acked {acked:?}, sources {sources:?}"
            ))
        }
    });
}

/// The chart's points, by series key (`cloud=aws`, `merged`): ts → attributes.
fn chart_points(page: &Page) -> BTreeMap<String, BTreeMap<i64, BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, BTreeMap<i64, BTreeMap<String, String>>> = BTreeMap::new();
    for point in page.elements("circle", "data-series") {
        let ts = number(&point, "data-ts") as i64;
        out.entry(point["data-series"].clone())
            .or_default()
            .insert(ts, point);
    }
    out
}

/// The default explore view of the global tier: p99 of the top metric per
/// cloud and merged, each complete point equal to the query API's.
fn explore_page(browser: &Browser, t: &Topology, minutes: &[i64], rng: &mut Rng) {
    let url = t.global.url("/#/explore");
    let keys = ["cloud=aws", "cloud=gcp", "merged"];
    // A fresh sample keeps the current minute open.
    ingest_ok(&t.aws, &traffic("aws", 40.0, 0.3, 3, now_ms(), rng), true);
    let (page, points) = browser.wait(&url, "the p99 per cloud and merged, with an open minute", |page| {
        let points = chart_points(page);
        let shown: Vec<&str> = points.keys().map(String::as_str).collect();
        let all_complete = keys.iter().all(|k| {
            minutes.iter().all(|minute| {
                points
                    .get(*k)
                    .and_then(|p| p.get(minute))
                    .is_some_and(|p| p["data-complete"] == "true")
            })
        });
        let open = page
            .elements("circle", "data-complete")
            .iter()
            .any(|c| c["data-complete"] == "false");
        if shown == keys && all_complete && open {
            Ok(points)
        } else {
            // Whenever this runs, the current minute gets a point again.
            ingest_ok(&t.aws, &traffic("aws", 40.0, 0.3, 3, now_ms(), rng), true);
            Err(format!("series {shown:?}, every minute sent complete: {all_complete}, an open point: {open}"))
        }
    });
    let chart = &page.elements("div", "data-metric")[0];
    assert_eq!(chart["data-metric"], "http_latency_ms", "{chart:?}");
    assert_eq!(chart["data-field"], "p99", "{chart:?}");
    assert_eq!(chart["data-group"], "cloud", "{chart:?}");
    // Every complete minute is the API's figure, exactly.
    let (first, end) = (minutes[0], minutes[minutes.len() - 1] + 60_000);
    let api: BTreeMap<String, BTreeMap<i64, (f64, bool)>> = ["cloud", ""]
        .into_iter()
        .flat_map(|g| p99s(&t.global, g, first, end, "minute"))
        .collect();
    assert_eq!(
        api.keys().collect::<Vec<_>>(),
        keys.iter().collect::<Vec<_>>()
    );
    for (key, by_minute) in &api {
        assert_eq!(by_minute.len(), minutes.len(), "{key}: {by_minute:?}");
        for (minute, (p99, complete)) in by_minute {
            assert!(complete, "{key} at {minute}");
            let shown = &points[key][minute];
            assert_eq!(number(shown, "data-value"), *p99, "{key}: {shown:?}");
            assert_eq!(shown["class"], "pt", "{key}: {shown:?}");
        }
    }
    for point in points.values().flat_map(|p| p.values()) {
        let open = point["data-complete"] == "false";
        assert_eq!(point["class"] == "pt open", open, "{point:?}");
    }
    // The merged p99 over the whole range, under the chart.
    browser.wait(
        &url,
        "the merged p99 over the range equal to the API's",
        |page| {
            let cells = page.elements("td", "data-range");
            let merged = cells
                .iter()
                .find(|c| c["data-series"] == "merged")
                .ok_or(format!("no merged range cell in {cells:?}"))?;
            let (from, to) = (
                number(merged, "data-from") as i64,
                number(merged, "data-to") as i64,
            );
            let api = p99s(&t.global, "", from, to, "all");
            let expected = api["merged"].values().next().map(|(v, _)| *v);
            let shown = number(merged, "data-value");
            if expected == Some(shown) {
                Ok(())
            } else {
                Err(format!(
                    "shown {shown}, the API says {expected:?} over {from}..{to}"
                ))
            }
        },
    );
}

/// The alarms page lists the instance the API says is firing.
fn alarms_page(browser: &Browser, t: &Topology) {
    let active = wait_for("latency-p99 to fire for cloud=gcp", |last| {
        let (status, v) = get_json(&t.global.url("/api/v1/alarms"));
        assert_eq!(status, 200, "{v}");
        *last = v["data"]["active"].to_string();
        v["data"]["active"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["group"]["cloud"] == "gcp").cloned())
    });
    let url = t.global.url("/#/alarms");
    let (_, row) = browser.wait(&url, "the firing alarm's row", |page| {
        page.elements("tr", "data-alarm")
            .into_iter()
            .find(|r| {
                r.get("data-state").is_some_and(|s| s == "firing")
                    && r.get("data-group").is_some_and(|g| g == "cloud=gcp")
                    && r.contains_key("data-value")
            })
            .ok_or_else(|| format!("rows {:?}", page.elements("tr", "data-alarm")))
    });
    assert_eq!(row["data-alarm"], "latency-p99");
    assert_eq!(
        number(&row, "data-value"),
        active["value"].as_f64().expect("a value")
    );
}

/// The events page filtered by type lists only that type.
fn events_page(browser: &Browser, t: &Topology) {
    let url = t.global.url("/#/events?type=alarm_fired");
    let (_, kinds) = browser.wait(&url, "alarm_fired events only", |page| {
        let kinds: Vec<String> = page
            .elements("tr", "data-kind")
            .into_iter()
            .map(|r| r["data-kind"].clone())
            .collect();
        if kinds.is_empty() {
            Err("no event row".to_string())
        } else {
            Ok(kinds)
        }
    });
    assert!(kinds.iter().all(|k| k == "alarm_fired"), "{kinds:?}");
    let (_, all) = browser.wait(
        &t.global.url("/#/events"),
        "source_connected events",
        |page| {
            let rows = page.elements("tr", "data-kind");
            if rows.iter().any(|r| r["data-kind"] == "source_connected") {
                Ok(rows.len())
            } else {
                Err(format!("{rows:?}"))
            }
        },
    );
    assert!(
        all > kinds.len(),
        "every type lists more than alarm_fired alone"
    );
}

/// The health page shows every component of `/health` with its status.
fn health_page(browser: &Browser, t: &Topology) {
    let url = t.global.url("/#/health");
    browser.wait(
        &url,
        "every component with the status /health gives",
        |page| {
            let (_, health) = get_json(&t.global.url("/health"));
            let expected: BTreeMap<String, String> = health["components"]
                .as_object()
                .expect("components")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let shown: BTreeMap<String, String> = page
                .elements("section", "data-component")
                .into_iter()
                .map(|s| (s["data-component"].clone(), s["data-status"].clone()))
                .collect();
            let checks = page.elements("tr", "data-check").len();
            if shown == expected && checks >= expected.len() {
                Ok(())
            } else {
                Err(format!("shown {shown:?}, /health {expected:?}"))
            }
        },
    );
}

/// Minutes of history the test sends, the newest being the previous minute.
const MINUTES: i64 = 5;

/// Sends `MINUTES` minutes of latency to both clouds, ending with the
/// minute starting at `base`, and waits until the global tier calls every
/// one of them complete.
fn send_history(t: &Topology, base: i64, rng: &mut Rng) -> Vec<i64> {
    let minutes: Vec<i64> = (0..MINUTES)
        .rev()
        .map(|back| base - back * 60_000)
        .collect();
    for (i, minute) in minutes.iter().enumerate() {
        // A slower minute now and then, so the lines have a shape.
        let slow = if i % 2 == 1 { 1.6 } else { 1.0 };
        ingest_ok(
            &t.aws,
            &traffic("aws", 40.0 * slow, 0.3, 60, *minute, rng),
            true,
        );
        ingest_ok(
            &t.eu_edge,
            &traffic("gcp", 90.0 * slow, 0.8, 60, *minute, rng),
            true,
        );
    }
    wait_for(
        "every minute sent complete at global for both clouds",
        |last| {
            let by_cloud = p99s(&t.global, "cloud", minutes[0], base + 60_000, "minute");
            *last = format!("{by_cloud:?}");
            let done = ["cloud=aws", "cloud=gcp"].iter().all(|k| {
                by_cloud.get(*k).is_some_and(|m| {
                    minutes
                        .iter()
                        .all(|minute| m.get(minute).is_some_and(|(_, complete)| *complete))
                })
            });
            done.then_some(())
        },
    );
    minutes
}

#[test]
fn console_pages_show_the_topology_merged_percentiles_and_alarms() {
    let root = tempfile::tempdir().expect("tempdir");
    let browser = Browser::new();
    let t = start_topology(root.path());
    let mut rng = Rng::new(7);
    let minutes = send_history(&t, base_minute_ms(), &mut rng);
    topology_page(&browser, &t);
    explore_page(&browser, &t, &minutes, &mut rng);
    alarms_page(&browser, &t);
    events_page(&browser, &t);
    health_page(&browser, &t);
    for page in ["topology", "explore", "alarms", "events", "health"] {
        let path = browser.screenshot(&t.global.url(&format!("/#/{page}")), page, (1280, 800));
        eprintln!("screenshot: {}", path.display());
    }
    browser.screenshot(&t.global.url("/#/explore"), "explore-phone", (390, 844));
    browser.screenshot(&t.global.url("/#/topology"), "topology-phone", (390, 844));
}

/// With `http.token`, over HTTPS as over HTTP: the page and its assets load
/// without the token and ask for it; every data call needs it.
#[test]
fn the_console_loads_without_the_token_and_its_data_needs_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let node = Node::start(
        NodeConfig::new(root.path(), "guarded").set("http", "token = \"console-secret\""),
    );
    let call = |path: &str, token: Option<&str>| {
        let mut request = agent().get(&node.url(path));
        if let Some(token) = token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let response = request.call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
        response.status().as_u16()
    };
    for public in [
        "/",
        "/console/app.js",
        "/console/console.css",
        "/console/pages/explore.js",
    ] {
        assert_eq!(call(public, None), 200, "{public}");
    }
    for data in [
        "/api/v1/status",
        "/api/v1/labels?metric=x",
        "/api/v1/sources",
        "/api/v1/query?q=x",
    ] {
        assert_eq!(call(data, None), 401, "{data}");
        assert_eq!(call(data, Some("wrong")), 401, "{data}");
    }
    assert_eq!(call("/api/v1/status", Some("console-secret")), 200);
    // Only the console's own files are public, not whatever is under its path.
    assert_eq!(call("/console/nope.js", None), 401);
    assert_eq!(call("/console/nope.js", Some("console-secret")), 404);

    let browser = Browser::new();
    let https = https_node(root.path());
    for url in [
        node.url("/#/topology"),
        format!("https://{}/#/explore", https.http),
    ] {
        browser.wait(&url, "the token form", |page| {
            let form = page.elements("form", "id");
            let asks = form
                .iter()
                .any(|f| f["id"] == "token-form" && !f.contains_key("hidden"));
            let main = page.elements("main", "data-state");
            let state = main.first().map(|m| m["data-state"].clone());
            if asks && state.as_deref() == Some("token-required") {
                Ok(())
            } else {
                Err(format!("form {form:?}, main {main:?}"))
            }
        });
    }
}

/// A node serving HTTPS with a self-signed certificate, and a token.
fn https_node(root: &Path) -> Node {
    let key = rcgen::KeyPair::generate().expect("a key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("a certificate");
    let (cert_file, key_file) = (root.join("console.crt"), root.join("console.key"));
    std::fs::write(&cert_file, cert.pem()).expect("writing the certificate");
    std::fs::write(&key_file, key.serialize_pem()).expect("writing the key");
    let quoted = |p: &Path| serde_json::to_string(&p.to_string_lossy()).expect("strings serialize");
    Node::start(
        NodeConfig::new(root, "secure")
            .set("http", "token = \"console-secret\"")
            .set("http", &format!("tls_cert_file = {}", quoted(&cert_file)))
            .set("http", &format!("tls_key_file = {}", quoted(&key_file))),
    )
}

/// `strata demo` prints the global tier's console URL first, and serves it.
#[test]
fn demo_prints_the_console_url_first() {
    let mut child = Command::new(strata_bin())
        .args(["demo", "--duration-s", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning strata demo");
    let first = first_stdout_line(&mut child)
        .recv_timeout(DEADLINE)
        .expect("the demo's first line");
    let url = first
        .strip_prefix("console: ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("first line {first:?}"));
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with('/'),
        "{first}"
    );
    let (status, body) = get_text(url);
    assert_eq!(status, 200);
    assert!(body.contains("console/app.js"), "{body}");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the demo") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("strata demo --duration-s 5 still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the demo exited {status}");
}
