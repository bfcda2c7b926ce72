"""One writer of the ingest benchmark: pre-create spans, then time only `StoreExporter.export()`.

This isolates what the store sustains (span conversion, SQLite, locking between processes) from
what creating spans costs. Prints one JSON line: wall-clock stamps and the CPU time of the exports.
"""

from __future__ import annotations

import json
import sys
import time

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from spans import make_server_spans

from logfire_run.agent.store import StoreExporter

BATCH = 512  # OpenTelemetry's default OTEL_BSP_MAX_EXPORT_BATCH_SIZE


class Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def main() -> None:
    count, path, start_at = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    keep = Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "ingest"}))
    provider.add_span_processor(keep)
    tracer = provider.get_tracer("bench.store")
    make_server_spans(tracer, count)
    exporter = StoreExporter(path)
    while time.time() < start_at:  # every writer starts together, after all have made their spans
        time.sleep(0.001)
    cpu_start = time.process_time()
    start = time.time()
    for offset in range(0, count, BATCH):
        exporter.export(keep.spans[offset : offset + BATCH])
    end = time.time()
    cpu = time.process_time() - cpu_start
    exporter.shutdown()
    print(json.dumps({"start": start, "end": end, "cpu": cpu, "spans": count}))


if __name__ == "__main__":
    main()
