#!/usr/bin/env python3
"""Load generator for one region of the side-by-side comparison.

Every TICK_MS (aligned to the wall clock) it draws, for each of K services,
that service's share of the region's request rate as log-normal latencies
(parameters differ per region and per service), and then, with the very same
samples:

1. adds them to cumulative Prometheus histograms served on
   ``/metrics/default`` (Prometheus' default buckets, in ms) and
   ``/metrics/fine`` (exponential buckets tuned to these distributions), both
   with the counter ``http_requests_total{service}``;
2. queues them for the region's strata edge as NDJSON (``POST
   /api/v1/ingest``, one histogram line per sample, one counter line per
   service and tick, ``ts_ms`` = tick time), posted by a separate thread;
3. keeps the raw values per (minute, service) so the exact p99 can be
   computed afterwards, and a timeline of (tick time, cumulative requests)
   for the freshness measurement.

It serves ``/metrics/*`` from start-up (all zeros before the load starts),
generates between ``--start`` and ``--stop`` (epoch seconds), keeps serving
the final counters until SIGTERM or ``--linger`` seconds after the stop,
writes everything to ``--out`` (pickle) and exits. All of it stops by itself.
"""

import argparse
import bisect
import http.client
import math
import pickle
import queue
import random
import signal
import threading
import time
from array import array
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TICK_MS = 200

# Prometheus' default buckets (.005 … 10 s), in milliseconds.
DEFAULT_BUCKETS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]
# "Tuned" layout: 36 exponential buckets, factor 1.2, from 10 ms to ~5.9 s —
# what an operator who knows these latencies would configure.
FINE_BUCKETS = [round(10 * 1.2**i, 3) for i in range(36)]

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


class Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v):
        self.counts[bisect.bisect_left(self.bounds, v)] += 1  # le is inclusive
        self.sum += v
        self.count += 1


def fmt_le(b):
    return repr(float(b)) if b != int(b) else f"{int(b)}"


class Region:
    def __init__(self, region, k, rate):
        self.region = region
        self.names = service_names(k)
        dists = [distribution(region, i) for i in range(k)]
        total_w = sum(d[0] for d in dists)
        self.per_tick = [rate * d[0] / total_w * TICK_MS / 1000 for d in dists]
        self.params = [(d[1], d[2]) for d in dists]
        self.carry = [0.0] * k
        self.lock = threading.Lock()
        self.hist = {"default": [Histogram(DEFAULT_BUCKETS) for _ in range(k)],
                     "fine": [Histogram(FINE_BUCKETS) for _ in range(k)]}
        self.requests = [0] * k
        self.raw = {}          # (minute_ms, service) -> array('d')
        self.timeline = []     # (tick_ms, cumulative requests of the region)
        self.total = 0

    def tick(self, ts_ms, rng):
        """Draws one tick's samples; returns the NDJSON body for strata."""
        minute = ts_ms - ts_ms % 60000
        lines = []
        region = f"r{self.region}"
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
            raw = self.raw.setdefault((minute, name), array("d"))
            raw.extend(vals)
            labels = f'{{"service":"{name}","region":"{region}"}}'
            head = f'{{"metric":"http_latency_ms","kind":"histogram","labels":{labels},"ts_ms":{ts_ms},"value":'
            lines.extend(f"{head}{v}}}" for v in vals)
            lines.append(
                f'{{"metric":"http_requests","kind":"counter","labels":{labels},"ts_ms":{ts_ms},"value":{n}}}')
        with self.lock:
            for i, vals in drawn:
                d, f = self.hist["default"][i], self.hist["fine"][i]
                for v in vals:
                    d.observe(v)
                    f.observe(v)
                self.requests[i] += len(vals)
                self.total += len(vals)
            self.timeline.append((ts_ms, self.total))
        return "\n".join(lines) + "\n" if lines else None

    def exposition(self, layout):
        out = ["# HELP http_latency_ms Request latency in milliseconds.",
               "# TYPE http_latency_ms histogram"]
        with self.lock:
            hists = [(h.bounds, list(h.counts), h.sum, h.count) for h in self.hist[layout]]
            reqs = list(self.requests)
        for name, (bounds, counts, s, c) in zip(self.names, hists):
            cum = 0
            for b, n in zip(bounds, counts):
                cum += n
                out.append(f'http_latency_ms_bucket{{service="{name}",le="{fmt_le(b)}"}} {cum}')
            out.append(f'http_latency_ms_bucket{{service="{name}",le="+Inf"}} {c}')
            out.append(f'http_latency_ms_sum{{service="{name}"}} {s!r}')
            out.append(f'http_latency_ms_count{{service="{name}"}} {c}')
        out.append("# HELP http_requests_total Requests served.")
        out.append("# TYPE http_requests_total counter")
        for name, n in zip(self.names, reqs):
            out.append(f'http_requests_total{{service="{name}"}} {n}')
        return ("\n".join(out) + "\n").encode()


def serve(region, port):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            layout = {"/metrics/default": "default", "/metrics/fine": "fine"}.get(self.path)
            if layout is None:
                self.send_error(404)
                return
            body = region.exposition(layout)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def poster(edge, q, stats, deadline):
    """Posts queued NDJSON bodies to the strata edge, in order, retrying on busy."""
    host, port = edge.split(":")
    conn = None
    while True:
        body = q.get()
        if body is None:
            return
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--region", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--edge", required=True, help="host:port of the strata edge's HTTP API")
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

    region = Region(a.region, a.services, a.rate)
    srv = serve(region, a.port)
    rng = random.Random(a.seed * 1000 + a.region)
    q = queue.Queue()
    stats = {"posted": 0, "busy": 0, "errors": 0, "late_ticks": 0}
    post_thread = threading.Thread(
        target=poster, args=(a.edge, q, stats, a.stop + a.linger), daemon=True)
    post_thread.start()
    print(f"loadgen r{a.region}: serving 127.0.0.1:{a.port}", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    tick = int(math.ceil(a.start * 1000 / TICK_MS)) * TICK_MS
    stop_ms = int(a.stop * 1000)
    while tick < stop_ms and not done.is_set():
        delay = tick / 1000 - time.time()
        if delay > 0:
            time.sleep(delay)
        elif delay < -TICK_MS / 1000:
            stats["late_ticks"] += 1
        body = region.tick(tick, rng)
        if body:
            q.put(body)
        tick += TICK_MS
    q.put(None)
    post_thread.join(timeout=max(1.0, a.stop + a.linger - time.time()))
    # Keep serving the final counters until told to quit (SIGTERM) or --linger ends.
    done.wait(max(0.0, a.stop + a.linger - time.time()))
    srv.shutdown()
    with open(a.out, "wb") as f:
        pickle.dump({"region": a.region, "names": region.names, "total": region.total,
                     "raw": {k: v.tobytes() for k, v in region.raw.items()},
                     "timeline": region.timeline, "stats": stats,
                     "rate": a.rate, "services": a.services}, f)
    print(f"loadgen r{a.region}: {region.total} samples, {stats}", flush=True)


if __name__ == "__main__":
    main()
