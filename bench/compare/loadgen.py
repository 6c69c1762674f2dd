#!/usr/bin/env python3
"""Load generator for one region of the side-by-side comparison.

Every TICK_MS (aligned to the wall clock) it draws, for each of K services,
that service's share of the region's request rate as log-normal latencies
(parameters differ per region and per service), and then hands the very same
samples to each system's client, as an instrumented application would:

1. ``prometheus_client``: one CollectorRegistry per bucket layout, each with
   the histogram ``http_latency_ms{service}`` (``default``: Prometheus'
   default buckets, in ms; ``fine``: exponential buckets tuned to these
   distributions) and the counter ``http_requests_total{service}``, served on
   ``/metrics/default`` and ``/metrics/fine`` with ``generate_latest``
   (``_created`` series disabled, so the scrapers see the same series as
   with a hand-written exposition). Scrapers say who they are with
   ``?by=prom`` or ``?by=vm``;
2. strata's NDJSON ingest: the tick's lines (one histogram line per sample,
   one counter line per service, ``ts_ms`` = tick time), queued for a
   separate thread that posts them to the region's strata edge (``POST
   /api/v1/ingest``);
3. the OpenTelemetry Python SDK: a Counter ``http_requests`` and a Histogram
   ``http_latency_ms`` (attributes ``service`` and ``region``; base-2
   exponential aggregation, ``max_size=160``; cumulative temporality, the
   SDK default), exported over OTLP/gRPC to the region's strata-otlp edge
   every 5 s (see "Export alignment");
4. memory: the raw values per (minute, service) so the exact p99 can be
   computed afterwards, and a timeline of (tick time, cumulative requests)
   for the freshness measurement.

Export alignment. An OTLP data point carries the time it was *collected*,
and strata attributes the increment since the previous export to that
time's minute. The SDK's own timer (PeriodicExportingMetricReader every 5 s)
runs free of the tick clock, so an export collected at 12:01:00.3 would put
the samples of 12:00:55.4–12:00:59.8 into minute 12:01. Instead the reader is
created with an interval that never fires, and the tick loop calls
``MeterProvider.force_flush()`` right after the last tick of each 5-second
window of the tick clock (the ticks at …4.8 s and …9.8 s), so each
collection is time-stamped a few milliseconds after its window's last
samples, in the same minute. ``force_flush`` collects synchronously, in the
tick loop; the exporter given to the reader hands the collected batch to a
sender thread that makes the gRPC call, because the edge answers an export
only once it is committed (up to a flush interval, ~1 s) and holding the tick
loop that long would delay every system's samples — as the SDK's own reader
thread keeps exports off an application's request path. Every exported data
point's time is checked against its window's minute
(``otlp_points_outside_minute``, ``otlp_collect_lag_max_ms`` in the stats);
ticks that start late right after an export are counted in
``late_ticks_after_export``.

Client CPU. Each client's own work is timed with ``time.thread_time()`` in
the thread that does it: the observe/inc calls per layout; each scrape's
rendering and sending, per layout and scraper; the building of the NDJSON
lines and the poster thread's posting; the SDK's add/record calls, the
collection in ``force_flush`` and the sender thread's export. gRPC's C-core
threads (timer, event engine, …) are not Python threads: the threads of
``/proc/self/task`` that appear once the exporter exists and whose name is not
the interpreter's (looked for at every tick and after every export; one
that starts and ends between two looks is missed) are taken as the
exporter's, and their utime + stime is charged to strata-otlp too, with the
SDK reader's idle timer thread. A system is charged the parts its
application would run (SYSTEM_PARTS): prometheus-default the default
layout's observe calls and Prometheus' scrapes of it, vm-default the same
observe calls and vmagent's scrapes, and so on. The drawing of the samples
and the bookkeeping of item 4 are charged to nobody. ``GET /client-cpu``
answers the cumulative seconds per part and per system.

It serves ``/metrics/*`` from start-up (all zeros before the load starts),
generates between ``--start`` and ``--stop`` (epoch seconds), keeps serving
the final counters until SIGTERM or ``--linger`` seconds after the stop,
writes everything to ``--out`` (pickle) and exits. All of it stops by itself.
"""

import argparse
import http.client
import json
import math
import os
import pickle
import queue
import random
import signal
import threading
import time
import urllib.parse
from array import array
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    import prometheus_client
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import Histogram as OtelHistogram
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter, MetricExportResult, PeriodicExportingMetricReader)
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource
except ImportError as e:
    raise SystemExit(f"loadgen.py needs the packages of bench/compare/requirements.txt ({e}); "
                     "run it through bench/compare.sh, which installs them into target/bench-venv")

TICK_MS = 200
EXPORT_EVERY_MS = 5000
# The SDK reader's own timer: never fires within a run (exports are driven by the tick loop).
NEVER_MS = 10 * 24 * 3600 * 1000
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Prometheus' default buckets (.005 … 10 s), in milliseconds.
DEFAULT_BUCKETS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]
# "Tuned" layout: 36 exponential buckets, factor 1.2, from 10 ms to ~5.9 s —
# what an operator who knows these latencies would configure.
FINE_BUCKETS = [round(10 * 1.2**i, 3) for i in range(36)]
LAYOUTS = {"default": DEFAULT_BUCKETS, "fine": FINE_BUCKETS}

# Which parts of the client work each system is charged with.
SYSTEM_PARTS = {
    "prometheus-default": ["observe_default", "scrape_default_prom"],
    "prometheus-fine": ["observe_fine", "scrape_fine_prom"],
    "vm-default": ["observe_default", "scrape_default_vm"],
    "vm-fine": ["observe_fine", "scrape_fine_vm"],
    "strata": ["ndjson_build", "ndjson_post"],
    "strata-otlp": ["otlp_record", "otlp_collect", "otlp_send", "otlp_threads"],
}

SERVICES = [
    "checkout", "cart", "search", "catalog", "payment", "auth", "profile",
    "inventory", "shipping", "pricing", "reviews", "recommend", "notify",
    "orders", "billing", "media", "gateway", "session", "ledger", "export",
]


def service_names(k):
    return [SERVICES[i] if i < len(SERVICES) else f"svc{i:03d}" for i in range(k)]


def distribution(region, i):
    """(weight, mu, sigma) of service i in region `region` (0 or 1)."""
    median = 12.0 * 1.17**i                      # 12 ms … ~240 ms for K=20
    sigma = 0.35 + 0.05 * (i % 7)                # 0.35 … 0.65
    weight = 0.4 + 1.2 * ((i * 7) % 11) / 10     # uneven traffic per service
    if region == 1:                              # the other cloud: slower, wider, other mix
        median *= 0.8 + 0.15 * (i % 5)
        sigma += 0.2
        weight = 0.4 + 1.2 * ((i * 3 + 5) % 11) / 10
    return weight, math.log(median), sigma


class ClientCpu:
    """Cumulative CPU seconds of each client's own work, per part."""

    def __init__(self):
        self.lock = threading.Lock()
        self.parts = {p: 0.0 for parts in SYSTEM_PARTS.values() for p in parts}
        self.threads = None   # ExporterThreads, once the SDK exists

    def add(self, part, seconds):
        with self.lock:
            self.parts[part] = self.parts.get(part, 0.0) + seconds

    def snapshot(self):
        with self.lock:
            parts = dict(self.parts)
        if self.threads is not None:
            parts["otlp_threads"] = self.threads.seconds()
        return {"parts": parts, "system_parts": SYSTEM_PARTS,
                "systems": {s: sum(parts.get(p, 0.0) for p in ps) for s, ps in SYSTEM_PARTS.items()}}


def task_ids():
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def read_task(tid, name):
    try:
        with open(f"/proc/self/task/{tid}/{name}") as f:
            return f.read()
    except OSError:
        return None


class ExporterThreads:
    """The threads the OTLP exporter brings to the process (gRPC's C-core
    threads; they are not Python threads, so thread_time cannot see them),
    and their CPU from /proc/self/task/<tid>/stat."""

    def __init__(self, before):
        self.before = before
        self.python_comm = read_task(threading.main_thread().native_id, "comm")
        self.checked = set()
        self.ticks = {}       # tid -> last utime + stime read (kept when the thread ends)
        self.comm = {}        # tid -> thread name
        self.lock = threading.Lock()

    def add(self, tid):
        with self.lock:
            self.ticks.setdefault(tid, 0)
            self.comm.setdefault(tid, (read_task(tid, "comm") or "?").strip())

    def discover(self):
        """Adds the threads that appeared since `before` and are not Python's."""
        for tid in task_ids() - self.before - self.checked:
            self.checked.add(tid)
            comm = read_task(tid, "comm")
            if comm is not None and comm != self.python_comm:
                self.add(tid)

    def seconds(self):
        with self.lock:
            for tid in self.ticks:
                stat = read_task(tid, "stat")
                if stat:
                    f = stat.rsplit(")", 1)[1].split()
                    self.ticks[tid] = int(f[11]) + int(f[12])
            return sum(self.ticks.values()) / CLK_TCK

    def names(self):
        """{thread name: how many}"""
        with self.lock:
            names = list(self.comm.values())
        return {n: names.count(n) for n in sorted(set(names))}


class PromClient:
    """prometheus_client, one registry per bucket layout."""

    def __init__(self, names, cpu):
        prometheus_client.disable_created_metrics()
        self.cpu = cpu
        self.registries, self.children = {}, {}
        for layout, buckets in LAYOUTS.items():
            reg = prometheus_client.CollectorRegistry(auto_describe=False)
            hist = prometheus_client.Histogram(
                "http_latency_ms", "Request latency in milliseconds.", ["service"],
                buckets=buckets, registry=reg)
            # Exposed as http_requests_total (the library appends _total).
            reqs = prometheus_client.Counter("http_requests", "Requests served.", ["service"],
                                             registry=reg)
            self.registries[layout] = reg
            self.children[layout] = [(hist.labels(n), reqs.labels(n)) for n in names]

    def observe(self, drawn):
        for layout, children in self.children.items():
            t0 = time.thread_time()
            for i, vals in drawn:
                hist, reqs = children[i]
                for v in vals:
                    hist.observe(v)
                reqs.inc(len(vals))
            self.cpu.add(f"observe_{layout}", time.thread_time() - t0)

    def render(self, layout):
        return prometheus_client.generate_latest(self.registries[layout])


class QueuedExporter(MetricExporter):
    """Takes the batch the SDK collected and hands it to a sender thread,
    which exports it with the OTLP/gRPC exporter, in order."""

    def __init__(self, inner, cpu, stats, threads):
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self.inner, self.cpu, self.stats, self.threads = inner, cpu, stats, threads
        self.last = None
        self.q = queue.Queue()
        self.thread = threading.Thread(target=self._send, name="otlp-sender", daemon=True)
        self.thread.start()

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        self.last = metrics_data
        self.q.put(metrics_data)
        return MetricExportResult.SUCCESS

    def _send(self):
        while True:
            batch = self.q.get()
            if batch is None:
                return
            t0 = time.thread_time()
            ok = self.inner.export(batch) is MetricExportResult.SUCCESS
            self.cpu.add("otlp_send", time.thread_time() - t0)
            self.stats["otlp_exports" if ok else "otlp_export_failures"] += 1
            self.threads.discover()

    def force_flush(self, timeout_millis=10_000):
        return True

    def close(self, timeout_s):
        """Sends what is queued (within timeout_s), then closes the channel."""
        self.q.put(None)
        self.thread.join(timeout=max(1.0, timeout_s))
        self.inner.shutdown()

    def shutdown(self, timeout_millis=30_000, **kwargs):
        pass  # close() does it; the SDK is not shut down (that would export once more)


class OtelClient:
    """The OpenTelemetry SDK of the region's application."""

    def __init__(self, names, region, endpoint, cpu, stats):
        self.cpu, self.stats = cpu, stats
        self.threads = ExporterThreads(task_ids())
        exporter = OTLPMetricExporter(endpoint=f"http://{endpoint}", insecure=True)
        self.sender = QueuedExporter(exporter, cpu, stats, self.threads)
        reader = PeriodicExportingMetricReader(self.sender, export_interval_millis=NEVER_MS)
        # The reader's own timer thread (a Python thread, idle here) is the SDK's too.
        self.threads.add(reader._daemon_thread.native_id)
        self.threads.discover()
        cpu.threads = self.threads
        self.provider = MeterProvider(
            resource=Resource.create({"service.name": "bench-app"}), metric_readers=[reader],
            views=[View(instrument_type=OtelHistogram,
                        aggregation=ExponentialBucketHistogramAggregation(max_size=160))],
            shutdown_on_exit=False)
        meter = self.provider.get_meter("strata-bench")
        self.requests = meter.create_counter("http_requests", description="Requests served.")
        self.latency = meter.create_histogram(
            "http_latency_ms", unit="ms", description="Request latency in milliseconds.")
        self.attrs = [{"service": n, "region": f"r{region}"} for n in names]

    def record(self, drawn):
        t0 = time.thread_time()
        for i, vals in drawn:
            attrs = self.attrs[i]
            for v in vals:
                self.latency.record(v, attrs)
            self.requests.add(len(vals), attrs)
        self.cpu.add("otlp_record", time.thread_time() - t0)

    def export(self, last_tick_ms):
        """Collects now (the batch goes to the sender thread) and checks that
        every point's time lies in the minute of the window's last tick."""
        self.sender.last = None
        t0 = time.thread_time()
        self.provider.force_flush()
        self.cpu.add("otlp_collect", time.thread_time() - t0)
        self.check_times(self.sender.last, last_tick_ms)

    def check_times(self, batch, last_tick_ms):
        st = self.stats
        st["otlp_collections"] += 1
        if batch is None:
            return
        minute = last_tick_ms - last_tick_ms % 60000
        for rm in batch.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        t_ms = p.time_unix_nano / 1e6
                        st["otlp_points"] += 1
                        st["otlp_collect_lag_max_ms"] = max(st["otlp_collect_lag_max_ms"],
                                                            round(t_ms - last_tick_ms, 1))
                        if not minute <= t_ms < minute + 60000:
                            st["otlp_points_outside_minute"] += 1

    def close(self, timeout_s):
        self.sender.close(timeout_s)


class Region:
    def __init__(self, region, k, rate):
        self.region = region
        self.names = service_names(k)
        dists = [distribution(region, i) for i in range(k)]
        total_w = sum(d[0] for d in dists)
        self.per_tick = [rate * d[0] / total_w * TICK_MS / 1000 for d in dists]
        self.params = [(d[1], d[2]) for d in dists]
        self.carry = [0.0] * k
        self.raw = {}          # (minute_ms, service) -> array('d')
        self.timeline = []     # (tick_ms, cumulative requests of the region)
        self.total = 0

    def draw(self, ts_ms, rng):
        """Draws one tick's samples: [(service index, values)]; keeps the raw
        values and the timeline."""
        minute = ts_ms - ts_ms % 60000
        drawn = []
        for i, name in enumerate(self.names):
            want = self.per_tick[i] + self.carry[i]
            n = int(want)
            self.carry[i] = want - n
            if n == 0:
                continue
            mu, sigma = self.params[i]
            vals = [round(rng.lognormvariate(mu, sigma), 3) for _ in range(n)]
            drawn.append((i, vals))
            self.raw.setdefault((minute, name), array("d")).extend(vals)
            self.total += n
        self.timeline.append((ts_ms, self.total))
        return drawn

    def ndjson(self, ts_ms, drawn):
        """The NDJSON body for strata, or None."""
        lines = []
        region = f"r{self.region}"
        for i, vals in drawn:
            labels = f'{{"service":"{self.names[i]}","region":"{region}"}}'
            head = f'{{"metric":"http_latency_ms","kind":"histogram","labels":{labels},"ts_ms":{ts_ms},"value":'
            lines.extend(f"{head}{v}}}" for v in vals)
            lines.append(
                f'{{"metric":"http_requests","kind":"counter","labels":{labels},"ts_ms":{ts_ms},"value":{len(vals)}}}')
        return "\n".join(lines) + "\n" if lines else None


def serve(prom, cpu, port):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/client-cpu":
                self.reply(json.dumps(cpu.snapshot()).encode(), "application/json")
                return
            layout = {"/metrics/default": "default", "/metrics/fine": "fine"}.get(url.path)
            if layout is None:
                self.send_error(404)
                return
            by = urllib.parse.parse_qs(url.query).get("by", [""])[0]
            t0 = time.thread_time()
            self.reply(prom.render(layout), prometheus_client.CONTENT_TYPE_LATEST)
            if by in ("prom", "vm"):
                cpu.add(f"scrape_{layout}_{by}", time.thread_time() - t0)

        def reply(self, body, ctype):
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def poster(edge, q, stats, cpu, deadline):
    """Posts queued NDJSON bodies to the strata edge, in order, retrying on busy."""
    host, port = edge.split(":")
    conn = None
    while True:
        body = q.get()
        if body is None:
            return
        t0 = time.thread_time()
        while time.time() < deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=10)
                conn.request("POST", "/api/v1/ingest", body=body.encode(),
                             headers={"Content-Type": "application/x-ndjson"})
                resp = conn.getresponse()
                text = resp.read()
                if resp.status == 200:
                    stats["posted"] += 1
                    break
                stats["busy" if resp.status in (429, 503) else "errors"] += 1
                if resp.status not in (429, 503):
                    stats["last_error"] = text[:300].decode(errors="replace")
                    break
                time.sleep(0.05)
            except (OSError, http.client.HTTPException) as e:
                stats["errors"] += 1
                stats["last_error"] = repr(e)
                conn = None
                time.sleep(0.1)
        cpu.add("ndjson_post", time.thread_time() - t0)


def run_ticks(a, region, prom, otel, q, stats, cpu, done):
    """The tick loop: draws each tick's samples and feeds every client."""
    rng = random.Random(a.seed * 1000 + a.region)
    tick = int(math.ceil(a.start * 1000 / TICK_MS)) * TICK_MS
    stop_ms = int(a.stop * 1000)
    exported, after_export = True, False
    while tick < stop_ms and not done.is_set():
        delay = tick / 1000 - time.time()
        if delay > 0:
            time.sleep(delay)
        else:
            if delay < -TICK_MS / 1000:
                stats["late_ticks"] += 1
            if after_export:
                stats["late_ticks_after_export"] += 1
        drawn = region.draw(tick, rng)
        t0 = time.thread_time()
        body = region.ndjson(tick, drawn)
        cpu.add("ndjson_build", time.thread_time() - t0)
        if body:
            q.put(body)
        prom.observe(drawn)
        otel.record(drawn)
        otel.threads.discover()   # bookkeeping, charged to nobody
        exported = after_export = False
        if (tick + TICK_MS) % EXPORT_EVERY_MS == 0:   # the last tick of its 5 s window
            otel.export(tick)
            exported = after_export = True
        tick += TICK_MS
    if not exported:   # stopped early, inside a window
        otel.export(tick - TICK_MS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--region", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--edge", required=True, help="host:port of the strata edge's HTTP API")
    ap.add_argument("--otlp-edge", required=True,
                    help="host:port of the strata-otlp edge's gRPC listener")
    ap.add_argument("--services", type=int, default=20)
    ap.add_argument("--rate", type=float, default=2000.0, help="requests/s of this region")
    ap.add_argument("--start", type=float, required=True, help="epoch s")
    ap.add_argument("--stop", type=float, required=True, help="epoch s")
    ap.add_argument("--linger", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.stop - a.start > 3600 or a.stop < a.start:
        raise SystemExit("refusing a load longer than an hour")

    stats = {"posted": 0, "busy": 0, "errors": 0, "late_ticks": 0, "late_ticks_after_export": 0,
             "otlp_collections": 0, "otlp_exports": 0, "otlp_export_failures": 0, "otlp_points": 0,
             "otlp_points_outside_minute": 0, "otlp_collect_lag_max_ms": 0.0}
    cpu = ClientCpu()
    region = Region(a.region, a.services, a.rate)
    prom = PromClient(region.names, cpu)
    q = queue.Queue()
    post_thread = threading.Thread(
        target=poster, args=(a.edge, q, stats, cpu, a.stop + a.linger), daemon=True)
    post_thread.start()
    otel = OtelClient(region.names, a.region, a.otlp_edge, cpu, stats)
    srv = serve(prom, cpu, a.port)   # ready once every client is
    print(f"loadgen r{a.region}: serving 127.0.0.1:{a.port}", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    run_ticks(a, region, prom, otel, q, stats, cpu, done)
    q.put(None)
    post_thread.join(timeout=max(1.0, a.stop + a.linger - time.time()))
    otel.close(a.stop + a.linger - time.time())
    stats["otlp_exporter_threads"] = otel.threads.names()
    # Keep serving the final counters until told to quit (SIGTERM) or --linger ends.
    done.wait(max(0.0, a.stop + a.linger - time.time()))
    srv.shutdown()
    with open(a.out, "wb") as f:
        pickle.dump({"region": a.region, "names": region.names, "total": region.total,
                     "raw": {k: v.tobytes() for k, v in region.raw.items()},
                     "timeline": region.timeline, "stats": stats, "client_cpu": cpu.snapshot(),
                     "rate": a.rate, "services": a.services}, f)
    print(f"loadgen r{a.region}: {region.total} samples, {stats}", flush=True)


if __name__ == "__main__":
    main()
