#!/usr/bin/env python3
"""Side-by-side run: Prometheus federation, vmagent + VictoriaMetrics, strata.

One run, all systems at once, fed the very same samples by two load
generators (one per region, see loadgen.py), each playing the region's
instrumented application with every system's client in it:

  prometheus-default  2 regional Prometheus (scrape every 5 s) + 1 global
                      Prometheus scraping their /federate (every 5 s);
                      Prometheus' default histogram buckets
  prometheus-fine     the same, on the tuned 36-bucket layout
  vm-default          1 vmagent per region (scrape every 5 s, remote write)
                      into one VictoriaMetrics; default buckets
  vm-fine             the same, on the tuned layout
  strata              1 strata edge per region (NDJSON ingest) → 1 global
  strata-otlp         the same topology, fed by the OpenTelemetry Python SDK
                      (exponential histogram, cumulative) exporting over
                      OTLP/gRPC every 5 s, aligned to the tick clock

The scrapers read prometheus_client's exposition (Prometheus with ?by=prom,
vmagent with ?by=vm, so the load generator knows who scraped).

Measured per system, all in the same run: freshness (delay until a sample
shows in the global tier's request counter, polled during the first phase of
the load), CPU seconds per million samples generated (over the rest of the
load, while nothing queries them) of all its processes (pipeline) and of its
client's work inside the load generators (client: observe/record calls,
rendering the scrapes it is served, building and sending NDJSON or OTLP, as
loadgen.py measures it and answers on GET /client-cpu), peak RSS (VmHWM
summed over its processes), and the error of the global p99 per service per
full minute against the exact p99 of the raw samples (queried at the end).

Writes bench/results/compare-<UTC time>.json and docs/perf-compare.svg and
prints a summary table. Only talks to 127.0.0.1; every process it starts is
stopped by pid before it exits.
"""

import argparse
import bisect
import datetime as dt
import importlib.metadata
import importlib.util
import json
import math
import os
import pickle
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import chart  # noqa: E402

SCRAPE_S = 5
POLL_S = 0.25
FRESH_MARGIN_S = 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROM_P99 = "histogram_quantile(0.99, sum by (service, le) (increase(http_latency_ms_bucket[1m])))"
PROM_TOTAL = "sum by (region) (http_requests_total)"
SYSTEMS = ["prometheus-default", "prometheus-fine", "vm-default", "vm-fine", "strata", "strata-otlp"]
STRATA_SYSTEMS = ("strata", "strata-otlp")
LABELS = {
    "prometheus-default": "Prometheus federation, default buckets",
    "prometheus-fine": "Prometheus federation, tuned buckets",
    "vm-default": "vmagent + VictoriaMetrics, default buckets",
    "vm-fine": "vmagent + VictoriaMetrics, tuned buckets",
    "strata": "strata (HDR, 2 significant digits)",
    "strata-otlp": "strata, OpenTelemetry SDK exporting every 5 s",
}
# The Python packages the load generators use (bench/compare/requirements.txt).
PY_PACKAGES = ["prometheus_client", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-grpc", "grpcio"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def get_json(url, timeout=10):
    return json.loads(http_get(url, timeout))


class Proc:
    def __init__(self, system, name, argv, workdir, capture_stdout=False):
        self.system, self.name = system, name
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            argv, cwd=workdir, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else self.log, stderr=self.log,
            start_new_session=True)
        self.pid = self.popen.pid

    def cpu_s(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            return float("nan")

    def status_kb(self, key):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
            except ProcessLookupError:
                pass
        self.log.close()


class Topology:
    """Starts every process; knows each system's query endpoint."""

    def __init__(self, workdir, strata_bin, services, rate, start, stop, linger):
        self.workdir = workdir
        self.procs = []
        self.endpoints = {}       # system -> base URL of its global tier
        self.strata_edges = {}    # strata system -> [addresses of the edge of each region]
        self.loadgens = []
        self.lg_ports = [free_port(), free_port()]
        self.strata_bin = strata_bin
        self.args = (services, rate, start, stop, linger)

    def add(self, *a, **kw):
        p = Proc(*a, **kw)
        self.procs.append(p)
        return p

    def system_procs(self, system):
        return [p for p in self.procs if p.system == system]

    def write(self, name, text):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    # -- strata -----------------------------------------------------------
    def strata_node(self, system, name, extra, otlp=""):
        """Starts one node. The extra OTLP listeners (127.0.0.1:4317/4318 by
        default) are off, so several nodes fit on one machine; OTLP/gRPC
        stays on the node's grpc.listen."""
        data = os.path.join(self.workdir, name)
        cfg = self.write(f"{name}.toml", (
            f'[node]\nid = "{name}"\ndata_dir = "{data}"\n'
            '[http]\nlisten = "127.0.0.1:0"\n[grpc]\nlisten = "127.0.0.1:0"\n'
            '[aggregation]\nflush_interval_ms = 1000\nhistogram_significant_digits = 2\n'
            '[storage]\nengine = "redb"\n'
            '[otlp]\nlisten = ""\nhttp_listen = ""\n' + otlp + extra))
        p = self.add(system, name, [self.strata_bin, "run", "--config", cfg],
                     self.workdir, capture_stdout=True)
        line = p.popen.stdout.readline().decode()
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            raise RuntimeError(f"{name} did not report its addresses: {line!r}; see {p.log_path}") from None
        # Keep draining stdout so the node never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in p.popen.stdout], daemon=True).start()
        return ev

    def start_strata(self, system):
        """2 edges → 1 global. strata-otlp's edges map no resource attribute
        to a label (an empty [otlp.resource_labels] replaces the default
        "service.name" → service), so its labels are the points' own
        attributes, service and region, as in the NDJSON row."""
        downstream = "".join(f'[[downstream]]\nid = "{system}-edge-r{r}"\ntoken = "t{r}"\n' for r in (0, 1))
        g = self.strata_node(system, f"{system}-global", downstream)
        self.endpoints[system] = f"http://{g['http']}"
        otlp = "[otlp.resource_labels]\n" if system == "strata-otlp" else ""
        self.strata_edges[system] = []
        for r in (0, 1):
            e = self.strata_node(system, f"{system}-edge-r{r}",
                                 f'[upstream]\nendpoint = "http://{g["grpc"]}"\ntoken = "t{r}"\n', otlp)
            self.strata_edges[system].append(e)

    # -- Prometheus -------------------------------------------------------
    def start_prometheus(self, layout):
        system = f"prometheus-{layout}"
        regional_ports = []
        for r in (0, 1):
            port = free_port()
            regional_ports.append(port)
            cfg = self.write(f"{system}-r{r}.yml", f"""
global:
  scrape_interval: {SCRAPE_S}s
  scrape_timeout: {SCRAPE_S - 1}s
  external_labels:
    region: r{r}
scrape_configs:
  - job_name: app
    metrics_path: /metrics/{layout}
    params:
      by: [prom]
    static_configs:
      - targets: ["127.0.0.1:{self.lg_ports[r]}"]
""")
            self.prometheus(system, f"{system}-r{r}", cfg, port)
        port = free_port()
        targets = ", ".join(f'"127.0.0.1:{p}"' for p in regional_ports)
        cfg = self.write(f"{system}-global.yml", f"""
global:
  scrape_interval: {SCRAPE_S}s
  scrape_timeout: {SCRAPE_S - 1}s
scrape_configs:
  - job_name: federate
    honor_labels: true
    metrics_path: /federate
    params:
      'match[]': ['{{__name__=~"http_.*"}}']
    static_configs:
      - targets: [{targets}]
""")
        self.prometheus(system, f"{system}-global", cfg, port)
        self.endpoints[system] = f"http://127.0.0.1:{port}"

    def prometheus(self, system, name, cfg, port):
        self.add(system, name, [
            "prometheus", f"--config.file={cfg}",
            f"--storage.tsdb.path={os.path.join(self.workdir, name)}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1d", "--log.level=warn"], self.workdir)
        self.ready_urls.append(f"http://127.0.0.1:{port}/-/ready")

    # -- vmagent + VictoriaMetrics ---------------------------------------
    def start_vm(self, layout):
        system = f"vm-{layout}"
        port = free_port()
        self.add(system, f"{system}-victoria-metrics", [
            "victoria-metrics", f"-storageDataPath={os.path.join(self.workdir, system + '-vm')}",
            f"-httpListenAddr=127.0.0.1:{port}", "-retentionPeriod=1d",
            "-loggerLevel=WARN"], self.workdir)
        self.endpoints[system] = f"http://127.0.0.1:{port}"
        self.ready_urls.append(f"http://127.0.0.1:{port}/health")
        for r in (0, 1):
            name = f"{system}-vmagent-r{r}"
            cfg = self.write(f"{name}.yml", f"""
global:
  scrape_interval: {SCRAPE_S}s
  scrape_timeout: {SCRAPE_S - 1}s
scrape_configs:
  - job_name: app
    metrics_path: /metrics/{layout}
    params:
      by: [vm]
    static_configs:
      - targets: ["127.0.0.1:{self.lg_ports[r]}"]
        labels:
          region: r{r}
""")
            aport = free_port()
            self.add(system, name, [
                "vmagent", f"-promscrape.config={cfg}",
                f"-remoteWrite.url=http://127.0.0.1:{port}/api/v1/write",
                f"-remoteWrite.tmpDataPath={os.path.join(self.workdir, name)}",
                f"-httpListenAddr=127.0.0.1:{aport}", "-loggerLevel=WARN"], self.workdir)
            self.ready_urls.append(f"http://127.0.0.1:{aport}/health")

    def start_all(self):
        self.ready_urls = []
        for system in STRATA_SYSTEMS:
            self.start_strata(system)
        for layout in ("default", "fine"):
            self.start_prometheus(layout)
            self.start_vm(layout)
        services, rate, start, stop, linger = self.args
        for r in (0, 1):
            out = os.path.join(self.workdir, f"loadgen-r{r}.pickle")
            p = self.add("loadgen", f"loadgen-r{r}", [
                sys.executable, os.path.join(HERE, "loadgen.py"), "--region", str(r),
                "--port", str(self.lg_ports[r]), "--edge", self.strata_edges["strata"][r]["http"],
                "--otlp-edge", self.strata_edges["strata-otlp"][r]["grpc"],
                "--services", str(services), "--rate", str(rate), "--start", str(start),
                "--stop", str(stop), "--linger", str(linger), "--out", out], self.workdir)
            self.loadgens.append((p, out))
        self.ready_urls += [f"http://127.0.0.1:{p}/metrics/default" for p in self.lg_ports]
        deadline = time.time() + 60
        pending = list(self.ready_urls)
        while pending and time.time() < deadline:
            for p in self.procs:
                if not p.alive():
                    raise RuntimeError(f"{p.name} exited early; see {p.log_path}")
            still = []
            for url in pending:
                try:
                    http_get(url, timeout=2)
                except OSError:
                    still.append(url)
            pending = still
            if pending:
                time.sleep(0.5)
        if pending:
            raise RuntimeError(f"not ready after 60 s: {pending}")

    def stop_all(self):
        for p in reversed(self.procs):
            p.stop()


# -- queries ---------------------------------------------------------------

def prom_query(base, query, at=None, nocache=False):
    params = {"query": query}
    if at is not None:
        params["time"] = f"{at:.3f}"
    if nocache:
        params["nocache"] = "1"
    v = get_json(f"{base}/api/v1/query?{urllib.parse.urlencode(params)}")
    if v.get("status") != "success":
        raise RuntimeError(f"{base}: {v}")
    return v["data"]["result"]


def strata_query(base, q, **params):
    params = {"q": q, **params}
    v = get_json(f"{base}/api/v1/query?{urllib.parse.urlencode(params)}")
    if v.get("status") != "success":
        raise RuntimeError(f"{base}: {v}")
    return v["data"]["series"]


def region_totals(system, base, from_ms):
    """Requests per region the global tier shows now."""
    if system in STRATA_SYSTEMS:
        out = {}
        for s in strata_query(base, "http_requests", group_by="region", step="all",
                              **{"from": str(from_ms), "to": "now"}):
            pts = s["points"]
            if pts:
                out[s["labels"].get("region", "")] = int(pts[0]["value"]["count"] or 0)
        return out
    res = prom_query(base, PROM_TOTAL, nocache=system.startswith("vm"))
    return {r["metric"].get("region", ""): int(float(r["value"][1])) for r in res}


def poll_freshness(system, base, from_ms, stop, out):
    """Polls the global tier's request counters every POLL_S; records
    (time the query was sent, {region: total})."""
    next_t = time.time()
    while not stop.is_set():
        sent = time.time()
        try:
            out.append((sent, region_totals(system, base, from_ms)))
        except Exception as e:  # noqa: BLE001 — a failed poll is just a gap
            out.append((sent, None))
            if len(out) < 5:
                log(f"{system}: poll failed: {e}")
        next_t += POLL_S
        stop.wait(max(0.0, next_t - time.time()))


def freshness(polls, timelines, cutoff_s):
    """Per-sample delay from emission (tick time) to first visibility at the
    global tier, for the samples emitted before cutoff_s. A tick is visible
    once the region's total covers it whole; the moment is taken as the
    midpoint between the poll that first showed it and the poll before.
    Returns (delays weighted per sample as [(delay_s, count)], samples
    emitted before the cutoff that no poll showed)."""
    delays, unseen = [], 0
    for region, tl in timelines.items():
        tl = [t for t in tl if t[0] < cutoff_s * 1000]
        cums = [c for _, c in tl]
        done = 0
        prev_sent = None
        for sent, totals in polls:
            if totals is None:
                continue
            v = totals.get(region, 0)
            upto = bisect.bisect_right(cums, v)
            if upto > done:
                seen_at = sent if prev_sent is None else (prev_sent + sent) / 2
                for i in range(done, upto):
                    n = cums[i] - (cums[i - 1] if i else 0)
                    delays.append((seen_at - tl[i][0] / 1000, n))
                done = upto
            prev_sent = sent
        unseen += (cums[-1] - (cums[done - 1] if done else 0)) if cums else 0
    return delays, unseen


def weighted_quantile(pairs, q):
    pairs = sorted(pairs)
    total = sum(n for _, n in pairs)
    if total == 0:
        return float("nan")
    need = math.ceil(q * total)
    acc = 0
    for v, n in pairs:
        acc += n
        if acc >= need:
            return v
    return pairs[-1][0]


def quantile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[max(1, math.ceil(q * len(values))) - 1]


def estimates(system, base, minutes):
    """{(minute_ms, service): p99} from the system's global tier."""
    out = {}
    if system in STRATA_SYSTEMS:
        for s in strata_query(base, "http_latency_ms", group_by="service", step="minute",
                              **{"from": str(minutes[0]), "to": str(minutes[-1] + 60000)}):
            for p in s["points"]:
                if p["ts_ms"] in minutes and p["value"].get("p99") is not None:
                    out[(p["ts_ms"], s["labels"]["service"])] = float(p["value"]["p99"])
        return out
    for m in minutes:
        for r in prom_query(base, PROM_P99, at=(m + 60000) / 1000, nocache=system.startswith("vm")):
            v = float(r["value"][1])
            if math.isfinite(v):
                out[(m, r["metric"]["service"])] = v
    return out


def self_metric(base, name):
    try:
        text = http_get(f"{base}/metrics").decode()
    except OSError:
        return None
    total = None
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total = (total or 0) + float(line.rsplit(" ", 1)[1])
    return total


def machine_busy_s():
    """CPU seconds the whole machine has spent busy (not idle/iowait) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK


def du_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def loadgen_total(ports):
    """Requests the load generators have emitted so far (their own counters)."""
    total = 0
    for port in ports:
        for line in http_get(f"http://127.0.0.1:{port}/metrics/default").decode().splitlines():
            if line.startswith("http_requests_total{"):
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


def cum_before(timeline, t_s):
    """Cumulative requests of a region emitted at ticks before t_s."""
    i = bisect.bisect_left([ts for ts, _ in timeline], t_s * 1000)
    return timeline[i - 1][1] if i else 0


def sleep_until(t, topo, note=None, every=20):
    while True:
        left = t - time.time()
        if left <= 0:
            return
        time.sleep(min(left, every))
        for p in topo.procs:   # the load generators too: they run until the load stops
            if not p.alive():
                raise RuntimeError(f"{p.name} died; see {p.log_path}")
        if note and t - time.time() > 1:
            log(note())


def client_cpu(ports):
    """Client CPU seconds so far, summed over the load generators:
    {"systems": {system: s}, "parts": {part: s}, "system_parts": {system: [part]}}."""
    out = {"systems": {}, "parts": {}, "system_parts": {}}
    for port in ports:
        v = get_json(f"http://127.0.0.1:{port}/client-cpu")
        for key in ("systems", "parts"):
            for k, x in v[key].items():
                out[key][k] = out[key].get(k, 0.0) + x
        out["system_parts"] = v["system_parts"]
    return out


def owns_dir(system, name):
    """Whether the work-dir entry `name` is one of `system`'s data directories
    (named after its processes: "strata-…" but not "strata-otlp-…" for strata)."""
    if not name.startswith(system + "-"):
        return False
    return not any(o != system and o.startswith(system + "-") and name.startswith(o + "-")
                   for o in SYSTEMS)


class Run:
    """The timeline of one run (epoch seconds) and what is measured along it:
       start ........ load begins (after start-up of every process)
       first_minute . first full UTC minute: minutes first_minute … +N are scored for p99
       fresh_end .... freshness polling runs from start to here (end of the first scored minute)
       cpu_t0 … stop  CPU window: steady load, no queries running
       stop ......... load ends, 10 s into the minute after the last scored one
       then drain: wait until every global tier shows every request (≤ drain_max)"""

    boot_s = 25
    drain_max = 90

    def __init__(self, scored_minutes):
        self.start = time.time() + self.boot_s
        self.first_minute = math.ceil(self.start / 60) * 60
        self.stop = self.first_minute + scored_minutes * 60 + 10
        self.fresh_end = self.first_minute + 60
        # Samples emitted in the last FRESH_MARGIN_S of the polling are not scored
        # for freshness (a system gets at least that long to show each sample).
        self.fresh_cutoff = self.fresh_end - FRESH_MARGIN_S
        self.cpu_t0 = self.fresh_end + 2
        self.minutes = [int((self.first_minute + 60 * i) * 1000) for i in range(scored_minutes)]
        self.from_ms = self.minutes[0] - 120000


def measure_freshness(topo, run):
    """Phase 1: polls every global tier every POLL_S until fresh_end."""
    polls = {s: [] for s in SYSTEMS}
    stop_ev = threading.Event()
    threads = [threading.Thread(target=poll_freshness,
                                args=(s, topo.endpoints[s], run.from_ms, stop_ev, polls[s]),
                                daemon=True) for s in SYSTEMS]
    for t in threads:
        t.start()
    log("load running; measuring freshness")

    def totals_note():
        last = {s: polls[s][-1][1] if polls[s] else None for s in SYSTEMS}
        return "global totals: " + ", ".join(
            f"{s}={sum(v.values()) if v else '?'}" for s, v in last.items())
    sleep_until(run.fresh_end, topo, totals_note, every=15)
    stop_ev.set()
    for t in threads:
        t.join()
    return polls


def cpu_reading(topo):
    """Every process's CPU, the load generators' client CPU, the machine's."""
    return {"procs": {p.name: p.cpu_s() for p in topo.procs},
            "client": client_cpu(topo.lg_ports),
            "busy": machine_busy_s(), "self": sum(os.times()[:2]), "t": time.time()}


def measure_cpu(topo, run):
    """Phase 2: CPU over steady load with no queries."""
    sleep_until(run.cpu_t0, topo)
    c0 = cpu_reading(topo)
    log(f"measuring CPU until {dt.datetime.fromtimestamp(run.stop):%H:%M:%S} (no queries)")
    sleep_until(run.stop, topo, lambda: f"{run.stop - time.time():.0f} s of load left", every=30)
    return c0, cpu_reading(topo)


def drain(topo, run, t_end):
    """Phase 3: waits until every global tier shows every generated request."""
    want = loadgen_total(topo.lg_ports)
    drained = {}
    deadline = time.time() + run.drain_max
    while len(drained) < len(SYSTEMS) and time.time() < deadline:
        for s in SYSTEMS:
            if s not in drained:
                try:
                    if sum(region_totals(s, topo.endpoints[s], run.from_ms).values()) >= want:
                        drained[s] = time.time() - t_end
                except Exception:  # noqa: BLE001 — retried until the deadline
                    pass
        time.sleep(0.5)
    log(f"drained: {', '.join(f'{s} {v:.1f}s' for s, v in drained.items())}"
        + (f"; NOT drained within {run.drain_max}s: {sorted(set(SYSTEMS) - set(drained))}"
           if len(drained) < len(SYSTEMS) else ""))
    return drained


def stop_loadgens(topo):
    for p, _ in topo.loadgens:
        p.popen.send_signal(signal.SIGTERM)
    for p, _ in topo.loadgens:
        p.popen.wait(timeout=60)
    gen = []
    for _, out in topo.loadgens:
        with open(out, "rb") as f:
            gen.append(pickle.load(f))
    return gen


def exact_p99(gen, minutes):
    """Exact global p99 per (minute, service) from the raw samples of both
    regions, and the number of samples behind each."""
    exact, counts = {}, {}
    for m in minutes:
        for name in gen[0]["names"]:
            vals = array("d")
            for g in gen:
                raw = g["raw"].get((m, name))
                if raw:
                    vals.frombytes(raw)
            if vals:
                srt = sorted(vals)
                exact[(m, name)] = srt[math.ceil(0.99 * len(srt)) - 1]
                counts[(m, name)] = len(srt)
    return exact, counts


def p99_errors(system, base, minutes, exact):
    est = estimates(system, base, minutes)
    errs = [(est[k] - x) / x for k, x in exact.items() if k in est]
    abs_errs = [abs(e) for e in errs]
    return {
        "p99_error_median": quantile(abs_errs, 0.5),
        "p99_error_p90": quantile(abs_errs, 0.9),
        "p99_error_max": max(abs_errs, default=float("nan")),
        "p99_error_mean_signed": statistics.fmean(errs) if errs else float("nan"),
        "p99_points": len(errs),
        "p99_points_missing": sum(1 for k in exact if k not in est),
    }


def cpu_figures(system, procs, c0, c1, samples):
    """Pipeline CPU (the system's processes) and client CPU (its work in the
    load generators) over the CPU window, per million samples."""
    cpu = {p.name: c1["procs"][p.name] - c0["procs"][p.name] for p in procs}
    parts = c1["client"]["system_parts"].get(system, [])
    client = {k: c1["client"]["parts"].get(k, 0.0) - c0["client"]["parts"].get(k, 0.0) for k in parts}
    per_m = samples / 1e6
    window = c1["t"] - c0["t"]
    return {
        "cpu_s": sum(cpu.values()),
        "cpu_s_by_process": cpu,
        "cpu_s_per_million_samples": sum(cpu.values()) / per_m,
        "cpu_cores_avg": sum(cpu.values()) / window,
        "client_cpu_s": sum(client.values()),
        "client_cpu_s_by_part": client,
        "client_cpu_s_per_million_samples": sum(client.values()) / per_m,
        "client_cpu_cores_avg": sum(client.values()) / window,
        "total_cpu_s_per_million_samples": (sum(cpu.values()) + sum(client.values())) / per_m,
    }


def score(system, topo, run, m):
    """Every figure of one system (m: what the run measured)."""
    base = topo.endpoints[system]
    procs = topo.system_procs(system)
    delays, unseen = freshness(m["polls"][system], m["timelines"], run.fresh_cutoff)
    final = region_totals(system, base, run.from_ms)
    r = {
        "label": LABELS[system],
        "processes": [p.name for p in procs],
        **cpu_figures(system, procs, m["c0"], m["c1"], m["cpu_samples"]),
        "peak_rss_bytes": sum(m["hwm"][p.name] for p in procs),
        "peak_rss_bytes_by_process": {p.name: m["hwm"][p.name] for p in procs},
        "freshness_p50_s": weighted_quantile(delays, 0.5),
        "freshness_p99_s": weighted_quantile(delays, 0.99),
        "freshness_max_s": max((d for d, _ in delays), default=float("nan")),
        "freshness_samples": sum(n for _, n in delays),
        "freshness_samples_unseen": unseen,
        "drain_s": m["drained"].get(system),
        **p99_errors(system, base, run.minutes, m["exact"]),
        "global_requests_total": sum(final.values()),
        "global_requests_exact": sum(final.values()) == m["total"],
        "disk_bytes": sum(du_bytes(os.path.join(topo.workdir, d)) for d in os.listdir(topo.workdir)
                          if owns_dir(system, d) and os.path.isdir(os.path.join(topo.workdir, d))),
    }
    if system.startswith("prometheus"):
        r["tsdb_samples_appended"] = sum(
            self_metric(f"http://127.0.0.1:{_port(topo, p)}",
                        "prometheus_tsdb_head_samples_appended_total") or 0
            for p in procs)
    elif system.startswith("vm"):
        r["tsdb_samples_appended"] = self_metric(base, "vm_rows_added_to_storage_total")
    if not r["global_requests_exact"]:
        log(f"{system}: the global tier shows {r['global_requests_total']} requests, "
            f"{m['total']} were generated")
    return r


def build_doc(a, topo, run, m, results):
    c0, c1 = m["c0"], m["c1"]
    lg_names = [p.name for p, _ in topo.loadgens]
    lg_client = sum(c1["client"]["parts"].values()) - sum(c0["client"]["parts"].values())
    return {
        "started_utc": dt.datetime.fromtimestamp(run.start, dt.timezone.utc).isoformat(),
        "machine": {
            "cpus": os.cpu_count(), "kernel": os.uname().release,
            "busy_cpu_s_in_cpu_window": c1["busy"] - c0["busy"],
            # Anything else running on the machine meanwhile (builds, tests…).
            "other_cpu_s_in_cpu_window": (c1["busy"] - c0["busy"]) - (c1["self"] - c0["self"]) - sum(
                c1["procs"][n] - c0["procs"][n] for n in c0["procs"]),
            "loadavg_at_end": os.getloadavg()[0],
        },
        "versions": {**versions(a.strata), "strata_rev": a.strata_rev},
        "workload": {
            "regions": 2, "services": a.services, "rate_per_region": a.rate,
            "tick_ms": 200, "scrape_interval_s": SCRAPE_S, "otlp_export_interval_s": 5,
            "freshness_poll_s": POLL_S,
            "scored_minutes_utc": [dt.datetime.fromtimestamp(x / 1000, dt.timezone.utc)
                                   .strftime("%H:%M") for x in run.minutes],
            "samples_total": m["total"],
            "samples_in_scored_minutes": sum(m["counts"].values()),
            "samples_per_service_minute_min": min(m["counts"].values()),
            "load_s": run.stop - run.start,
            "freshness_window_s": run.fresh_end - run.start,
            "freshness_scored_emitted_before_s": run.fresh_cutoff - run.start,
            "cpu_window_s": c1["t"] - c0["t"],
            "samples_in_cpu_window": m["cpu_samples"],
            "loadgen_cpu_s_in_cpu_window": sum(c1["procs"][n] - c0["procs"][n] for n in lg_names),
            # Of which the clients' work (each part once; a part can be charged to two systems).
            "loadgen_client_cpu_s_in_cpu_window": lg_client,
            "loadgen_stats": [g["stats"] for g in m["gen"]],
            "service_minute_pairs": len(m["exact"]),
        },
        "systems": results,
    }


def write_results(a, run, doc):
    os.makedirs(a.out_dir, exist_ok=True)
    stamp = dt.datetime.fromtimestamp(run.start, dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = os.path.join(a.out_dir, f"compare-{stamp}.json")
    with open(out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.makedirs(os.path.dirname(os.path.abspath(a.chart)), exist_ok=True)
    chart.write_svg(doc, a.chart)
    print_table(doc)
    log(f"wrote {out} and {a.chart}")


def measure(topo, run):
    """Runs the load through the phases; returns what was measured."""
    topo.start_all()
    log(f"{len(topo.procs)} processes up")
    if time.time() > run.start:
        raise RuntimeError("start-up took longer than the boot allowance")
    sleep_until(run.start, topo)
    m = {"polls": measure_freshness(topo, run)}
    m["c0"], m["c1"] = measure_cpu(topo, run)
    m["drained"] = drain(topo, run, m["c1"]["t"])
    m["hwm"] = {p.name: p.status_kb("VmHWM") * 1024 for p in topo.procs}
    gen = m["gen"] = stop_loadgens(topo)
    m["total"] = sum(g["total"] for g in gen)
    m["timelines"] = {f"r{g['region']}": g["timeline"] for g in gen}
    m["cpu_samples"] = sum(cum_before(tl, m["c1"]["t"]) - cum_before(tl, m["c0"]["t"])
                           for tl in m["timelines"].values())
    log(f"generated {m['total']} samples ({m['cpu_samples']} in the CPU window); "
        f"loadgen stats: {[g['stats'] for g in gen]}")
    m["exact"], m["counts"] = exact_p99(gen, run.minutes)
    return m


def check_packages():
    missing = [p for p in ("prometheus_client", "opentelemetry.sdk.metrics",
                           "opentelemetry.exporter.otlp.proto.grpc.metric_exporter")
               if not _importable(p)]
    if missing:
        raise SystemExit(f"{sys.executable} lacks {', '.join(missing)}: run bench/compare.sh, which "
                         "installs bench/compare/requirements.txt into target/bench-venv")


def _importable(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=int, default=4,
                    help="full minutes of load scored (1–30; 1 is a smoke test, its CPU window is 8 s)")
    ap.add_argument("--services", type=int, default=20)
    ap.add_argument("--rate", type=float, default=2000.0, help="requests/s per region")
    ap.add_argument("--strata", default=os.path.join(REPO, "target", "release", "strata"))
    ap.add_argument("--strata-rev", default=os.environ.get("STRATA_REV"),
                    help="the commit the strata binary was built from (recorded in the results)")
    ap.add_argument("--out-dir", default=os.path.join(REPO, "bench", "results"))
    ap.add_argument("--chart", default=os.path.join(REPO, "docs", "perf-compare.svg"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs, data)")
    a = ap.parse_args()
    if not 1 <= a.minutes <= 30:
        raise SystemExit("--minutes must be 1–30")
    check_packages()
    a.strata = os.path.abspath(a.strata)   # the processes run in the work directory

    # SIGTERM (or SIGHUP) ends the run through the same clean-up as an error.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda n, _: sys.exit(128 + n))
    workdir = tempfile.mkdtemp(prefix="strata-compare-")
    run = Run(a.minutes)
    topo = Topology(workdir, a.strata, a.services, a.rate, run.start, run.stop, run.drain_max + 30)
    log(f"work dir {workdir}; load {dt.datetime.fromtimestamp(run.start):%H:%M:%S} → "
        f"{dt.datetime.fromtimestamp(run.stop):%H:%M:%S}, {a.rate:g} req/s per region, "
        f"{a.services} services, {a.minutes} scored minutes")
    failed = True
    try:
        m = measure(topo, run)
        results = {s: score(s, topo, run, m) for s in SYSTEMS}
        write_results(a, run, build_doc(a, topo, run, m, results))
        failed = False
    finally:
        topo.stop_all()
        if a.keep or failed:
            log(f"kept {workdir} (configs, logs, data)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _port(topo, proc):
    # The Prometheus listen port is in its argv.
    for arg in proc.popen.args:
        if arg.startswith("--web.listen-address="):
            return arg.rsplit(":", 1)[1]
    raise KeyError(proc.name)


def versions(strata_bin):
    def first_line(argv):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    def py_version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None
    return {
        "prometheus": first_line(["prometheus", "--version"]),
        "victoria-metrics": first_line(["dpkg-query", "-W", "-f=${Version}", "victoria-metrics"]),
        "strata": first_line([strata_bin, "--version"]),
        "python": sys.version.split()[0],
        **{p: py_version(p) for p in PY_PACKAGES},
    }


def print_table(doc):
    w = doc["workload"]
    print()
    print(f"{w['samples_total']:,} samples in {w['load_s']:.0f} s "
          f"({w['samples_total'] / w['load_s']:,.0f}/s), {w['services']} services × 2 regions, "
          f"{len(w['scored_minutes_utc'])} scored minutes; CPU window {w['cpu_window_s']:.0f} s "
          f"({w['samples_in_cpu_window']:,} samples; the load generators used "
          f"{w['loadgen_cpu_s_in_cpu_window']:.1f} s, of which {w['loadgen_client_cpu_s_in_cpu_window']:.1f} s "
          "client work, charged below)")
    print("CPU: seconds per million samples, client (in the application) + pipeline = total")
    hdr = (f"{'system':46} {'client':>7} {'pipeline':>8} {'total':>7} {'peak RSS':>9} {'fresh p50':>9} "
           f"{'fresh p99':>9} {'p99 err med':>11} {'p90':>7} {'max':>7}")
    print(hdr)
    print("-" * len(hdr))
    for r in doc["systems"].values():
        print(f"{r['label']:46} {r['client_cpu_s_per_million_samples']:7.2f} "
              f"{r['cpu_s_per_million_samples']:8.2f} {r['total_cpu_s_per_million_samples']:7.2f} "
              f"{r['peak_rss_bytes'] / 2**20:7.0f}Mi {r['freshness_p50_s']:8.2f}s "
              f"{r['freshness_p99_s']:8.2f}s {100 * r['p99_error_median']:10.2f}% "
              f"{100 * r['p99_error_p90']:6.2f}% {100 * r['p99_error_max']:6.1f}%")
    print()


if __name__ == "__main__":
    main()
