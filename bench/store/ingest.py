"""One writer of the ingest benchmark: pre-create spans, then time only the export step.

    python ingest.py SPANS STORE START_AT [store|otlp-encoder|official-encoder]

`store` (the default) times `StoreExporter.export()`: span conversion, SQLite, locking between
processes. The two encoders time turning the same batches into OTLP request bytes: logfire-run's
`encode_export_request`, and OpenTelemetry's `encode_spans(...).SerializeToString()`, which its
OTLP exporters use. Prints one JSON line: wall-clock stamps and the CPU time of the exports.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from spans import make_server_spans

from logfire_run.agent.export.otlp_encoding import encode_export_request
from logfire_run.agent.export.store import StoreExporter

BATCH = 512  # OpenTelemetry's default OTEL_BSP_MAX_EXPORT_BATCH_SIZE


class Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def main() -> None:
    count, path, start_at = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "store"
    keep = Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "ingest"}))
    provider.add_span_processor(keep)
    tracer = provider.get_tracer("bench.store")
    make_server_spans(tracer, count)
    exporter = StoreExporter(path) if mode == "store" else None
    export: Callable[[Sequence[ReadableSpan]], object]
    if exporter is not None:
        export = exporter.export
    elif mode == "otlp-encoder":
        export = encode_export_request
    else:
        export = lambda batch: encode_spans(batch).SerializeToString()  # noqa: E731
    while time.time() < start_at:  # every writer starts together, after all have made their spans
        time.sleep(0.001)
    cpu_start = time.process_time()
    start = time.time()
    for offset in range(0, count, BATCH):
        export(keep.spans[offset : offset + BATCH])
    end = time.time()
    cpu = time.process_time() - cpu_start
    if exporter is not None:
        exporter.shutdown()
    print(json.dumps({"start": start, "end": end, "cpu": cpu, "spans": count}))


if __name__ == "__main__":
    main()
