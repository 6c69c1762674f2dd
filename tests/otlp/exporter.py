"""An application instrumented with the OpenTelemetry Python SDK, driven by
tests/otlp.rs through stdin (one JSON command per line):

  {"op": "add", "n": 5}                  orders counter (+ route attribute)
  {"op": "observe", "values": [1.5, 2]}  both latency histograms
  {"op": "flush"}                        export now; prints {"flushed": bool}
  {"op": "quit"}                         shut down (exports once more)

Usage: exporter.py grpc|http ENDPOINT SERVICE REGION

The SDK's defaults are kept (cumulative temporality), except that
latency_exp is aggregated as an exponential histogram and latency_explicit
with explicit bounds.
"""

import json
import sys

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource

EXPLICIT_BOUNDS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


def main():
    protocol, endpoint, service, region = sys.argv[1:5]
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter,
        )

        exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=20)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter,
        )

        exporter = OTLPMetricExporter(endpoint=endpoint + "/v1/metrics", timeout=20)
    # Exports happen when the test asks (force_flush), not on a timer.
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    views = [
        View(
            instrument_name="latency_exp",
            aggregation=ExponentialBucketHistogramAggregation(),
        ),
        View(
            instrument_name="latency_explicit",
            aggregation=ExplicitBucketHistogramAggregation(boundaries=EXPLICIT_BOUNDS),
        ),
    ]
    resource = Resource.create(
        {"service.name": service, "cloud.region": region, "host.name": "h1"}
    )
    provider = MeterProvider(resource=resource, metric_readers=[reader], views=views)
    meter = provider.get_meter("strata-test")
    orders = meter.create_counter("orders")
    exp = meter.create_histogram("latency_exp", unit="ms")
    explicit = meter.create_histogram("latency_explicit", unit="ms")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "add":
            orders.add(cmd["n"], {"route": "/checkout"})
        elif op == "observe":
            for v in cmd["values"]:
                exp.record(v)
                explicit.record(v)
        elif op == "flush":
            ok = provider.force_flush(timeout_millis=30_000)
            print(json.dumps({"flushed": ok}), flush=True)
        elif op == "quit":
            provider.shutdown()
            print(json.dumps({"quit": True}), flush=True)
            return


if __name__ == "__main__":
    main()
