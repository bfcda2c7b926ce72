"""Per-call cost of `requests.get` to a local HTTP server (a new connection per call, as plain `get` does).

python requests_client.py URL N        prints one JSON line: {"per_op_us": ..., "cpu_per_op_us": ..., "n": N}
"""

from __future__ import annotations

import json
import sys
import time

import requests
from opentelemetry import trace


def flush() -> None:
    """Export every ended span now, under either agent; plain Python has nothing to flush."""
    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if callable(force_flush):
        force_flush()


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])
    for _ in range(50):
        requests.get(url, timeout=10)
    flush()  # the warm-up's spans are exported before the clock starts
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(count):
        requests.get(url, timeout=10).close()
    flush()  # and every measured span is exported before it stops
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(json.dumps({"per_op_us": elapsed / count * 1e6, "cpu_per_op_us": cpu / count * 1e6, "n": count}))


if __name__ == "__main__":
    main()
