"""One exporting process of the store benchmark: create spans as fast as it can, then flush.

Run under `logfire-run --exporter store|none`; prints one JSON line: wall-clock stamps and this
process's CPU time (all threads, so the exporter's worker thread is included).
"""

from __future__ import annotations

import json
import sys
import time

from opentelemetry import trace
from spans import make_server_spans

import logfire_run


def main() -> None:
    count = int(sys.argv[1])
    tracer = trace.get_tracer("bench.store")
    cpu_start = time.process_time()
    start = time.time()
    make_server_spans(tracer, count)
    logfire_run.force_flush()
    end = time.time()
    cpu = time.process_time() - cpu_start
    print(json.dumps({"start": start, "end": end, "cpu": cpu, "spans": count}))


if __name__ == "__main__":
    main()
