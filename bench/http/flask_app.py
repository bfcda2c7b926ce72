"""Per-request cost of a Flask handler, through Flask's test client (the full WSGI stack, no sockets).

    python flask_app.py N        prints one JSON line: {"per_op_us": ..., "cpu_per_op_us": ..., "n": N}

Run by bench/http/run.py plainly, under `logfire-run` and under `opentelemetry-instrument`.
"""

from __future__ import annotations

import json
import sys
import time

from flask import Flask
from opentelemetry import trace

app = Flask(__name__)


@app.get("/hello/<name>")
def hello(name: str) -> dict[str, str]:
    return {"hello": name}


def flush() -> None:
    """Export every ended span now, under either agent; plain Python has nothing to flush."""
    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if callable(force_flush):
        force_flush()


def main() -> None:
    count = int(sys.argv[1])
    client = app.test_client()
    for _ in range(200):  # warm-up: first-request setup, caches, lazy imports
        client.get("/hello/warm")
    flush()  # the warm-up's spans are exported before the clock starts
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(count):
        response = client.get("/hello/bench", headers={"traceparent": TRACEPARENT})
        response.close()
    flush()  # and every measured span is exported before it stops
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(json.dumps({"per_op_us": elapsed / count * 1e6, "cpu_per_op_us": cpu / count * 1e6, "n": count}))


# Every request carries inbound context, so the extraction path (and our policy) is exercised.
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

if __name__ == "__main__":
    main()
