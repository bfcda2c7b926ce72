"""The live UI at the store's cap, what its index costs the writer, and what running spans cost a span.

1. fill: a store is filled to the retention cap (200,000 spans) through `StoreExporter.export()` in
   512-span batches, with traces shaped like a web request (a server span with a database call and
   a call to a second service with its own server and database spans: 8 spans, 2 services, one log
   record), one trace in 50 failing. The export CPU per span is measured with the per-trace index and
   without it (the same exporter with the index step turned off), interleaved round by round.
2. serve: the real `logfire-run-view --serve` on that store; each page's data is fetched over HTTP
   (`/api/traces` with each filter, `/api/trace/ID` for traces spread over the store, `/api/logs`),
   REPEAT times each: median and slowest wall time per request, as a browser waits for it.
3. running spans: what `PendingSpans.on_start` + `on_end` add to a span, timed in-process against the
   OpenTelemetry SDK's own start and end of the same span (what `opentelemetry-instrument` pays per
   span): the ratio of the two.

    .venv/bin/python bench/store/viewer_speed.py [--spans 200000] [--repeat 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from logfire_run import store_format
from logfire_run.agent.export.pending import PendingSpans
from logfire_run.agent.export.store import StoreExporter

BATCH = 512
VIEWER = str(Path(sys.executable).with_name("logfire-run-view"))


class Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def make_traces(count: int) -> list[ReadableSpan]:
    """`count` spans, 8 per trace, from two services (two providers: two resources)."""
    keep = Keep()
    front = TracerProvider(resource=Resource.create({"service.name": "frontend"}))
    back = TracerProvider(resource=Resource.create({"service.name": "backend"}))
    front.add_span_processor(keep)
    back.add_span_processor(keep)
    tracer, backend = front.get_tracer("bench"), back.get_tracer("bench")
    for index in range(count // 8):
        item = index % 5000
        attributes = {
            "http.request.method": "GET",
            "http.route": "/checkout/{cart}",
            "url.path": f"/checkout/{item}",
            "http.response.status_code": 200,
            "user_agent.original": "bench/1.0",
        }
        with tracer.start_as_current_span(
            "GET /checkout/{cart}", kind=SpanKind.SERVER, attributes=attributes
        ):
            with tracer.start_as_current_span("SELECT carts", kind=SpanKind.CLIENT) as query:
                query.set_attribute("db.statement", f"SELECT * FROM carts WHERE id = {item}")
            with tracer.start_as_current_span(
                "GET", kind=SpanKind.CLIENT, attributes={"url.full": "http://b/price"}
            ):
                context = trace.get_current_span().get_span_context()
                parent = trace.set_span_in_context(trace.NonRecordingSpan(context))
                with backend.start_as_current_span(
                    "GET /price/{item}",
                    context=parent,
                    kind=SpanKind.SERVER,
                    attributes={"http.route": "/price/{item}", "url.path": f"/price/{item}"},
                ) as server:
                    for table in ("prices", "taxes", "discounts"):
                        with backend.start_as_current_span(f"SELECT {table}", kind=SpanKind.CLIENT):
                            pass
                    if index % 50 == 0:
                        server.set_status(Status(StatusCode.ERROR, "price service failed"))
            with tracer.start_as_current_span("render", attributes={"template": f"cart-{item % 97}.html"}):
                pass
    return keep.spans


def fill(path: str, spans: list[ReadableSpan], index: bool) -> float:
    """Export `spans` into a new store at `path`; the export CPU per span (µs)."""
    original = store_format.insert_parts
    if not index:
        store_format.insert_parts = lambda connection, rows: None  # type: ignore[assignment]
    try:
        exporter = StoreExporter(path)
        started = time.process_time()
        for offset in range(0, len(spans), BATCH):
            exporter.export(spans[offset : offset + BATCH])
        cpu = time.process_time() - started
        exporter.shutdown()
    finally:
        store_format.insert_parts = original
    return cpu / len(spans) * 1e6


def add_logs(path: str, spans: list[ReadableSpan]) -> None:
    """One log record per trace, as the store exporter writes captured records."""
    exporter = StoreExporter(path)
    batch = []
    for span in spans:
        if span.name == "SELECT carts" and span.context is not None:
            site = ("app.py", 12, "checkout", "MainThread")
            batch.append(
                (
                    span.start_time,
                    30,
                    "WARNING",
                    "shop",
                    "cart is large",
                    None,
                    span.context.trace_id,
                    span.context.span_id,
                    1,
                    site,
                )
            )
    for offset in range(0, len(batch), BATCH):
        exporter.export_logs(batch[offset : offset + BATCH], "frontend")
    exporter.shutdown()


def get(address: str, path: str) -> tuple[float, Any]:
    connection = http.client.HTTPConnection(address, timeout=60)
    started = time.perf_counter()
    connection.request("GET", path, headers={"Host": address})
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    connection.close()
    if response.status != 200:
        raise SystemExit(f"{path}: HTTP {response.status} {body[:200]!r}")
    return elapsed, json.loads(body)


def serve(path: str, repeat: int) -> None:
    process = subprocess.Popen(
        [VIEWER, "--serve", "--port", "0", "--store", path],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip().split("//")[1].rstrip("/")
        _, listing = get(address, "/api/traces?limit=1000")
        ids = [item["trace_id"] for item in listing["traces"]]
        oldest = get(address, "/api/traces?sort=slowest&limit=1000")[1]["traces"]
        ids += [item["trace_id"] for item in oldest]
        cases = [
            ("list, no filter (50 newest)", "/api/traces"),
            ("service=backend", "/api/traces?service=backend"),
            ("errors=1", "/api/traces?errors=1"),
            ("min_duration=1ms", "/api/traces?min_duration=1ms"),
            ("route=/price", "/api/traces?route=/price"),
            ("since=1h", "/api/traces?since=1h"),
            ("q=cart-42.html (common)", "/api/traces?q=cart-42.html"),
            ("q=carts WHERE id = 4999 (rare: 1 trace in 5,000)", "/api/traces?q=carts+WHERE+id+%3D+4999"),
            ("q=nothing-matches (the whole store read)", "/api/traces?q=nothing-matches"),
            ("service=backend&errors=1&since=1h", "/api/traces?service=backend&errors=1&since=1h"),
            ("slowest first (5,000 newest ranked)", "/api/traces?sort=slowest"),
            ("logs page", "/api/logs"),
            ("logs, level=error (none: the whole table read)", "/api/logs?level=error"),
        ]
        print(f"  {'request':<52} {'median':>9} {'slowest':>9}  traces")
        for label, url in cases:
            times = []
            found = 0
            for _ in range(repeat):
                elapsed, body = get(address, url)
                times.append(elapsed)
                found = len(body.get("traces", body.get("logs", [])))
            print(
                f"  {label:<52} {statistics.median(times) * 1e3:7.1f} ms {max(times) * 1e3:7.1f} ms  {found}"
            )
        times = []
        for trace_id in random.sample(ids, min(len(ids), repeat * 5)):
            elapsed, body = get(address, f"/api/trace/{trace_id}")
            times.append(elapsed)
            assert len(body["spans"]) == 8, len(body["spans"])
        label = f"open a trace ({len(times)} traces, newest to oldest)"
        print(
            f"  {label:<52} {statistics.median(times) * 1e3:7.1f} ms {max(times) * 1e3:7.1f} ms  8 spans each"
        )
    finally:
        process.terminate()
        process.wait(10)


def pending_cost(count: int, rounds: int, folder: str) -> None:
    """In-process: the SDK's start+end of a span, with and without PendingSpans' two calls."""
    pending = PendingSpans(os.path.join(folder, "pending.db"))
    provider = TracerProvider()
    tracer = provider.get_tracer("bench")
    plain: list[float] = []
    watched: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(count):
            tracer.start_span("request").end()
        plain.append((time.perf_counter() - started) / count)
        spans = [tracer.start_span("request") for _ in range(count)]
        ended = []
        for span in spans:
            span.end()
            ended.append(span)
        started = time.perf_counter()
        for span in spans:
            pending.on_start(span)  # type: ignore[arg-type]
            pending.on_end(span)
        watched.append((time.perf_counter() - started) / count)
    sdk, extra = statistics.median(plain) * 1e9, statistics.median(watched) * 1e9
    print(
        f"  SDK start+end of a span: {sdk:,.0f} ns; PendingSpans.on_start+on_end: {extra:,.0f} ns "
        f"({extra / sdk:.3f}x the SDK's own cost per span)"
    )
    pending.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=store_format.DEFAULT_MAX_SPANS)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as folder:
        spans = make_traces(args.spans)
        print(f"fill: {len(spans):,} spans ({len(spans) // 8:,} traces), export CPU per span, interleaved")
        costs: dict[bool, list[float]] = {True: [], False: []}
        for number in range(args.rounds):
            for index in (False, True):
                costs[index].append(fill(os.path.join(folder, f"r{number}-{index}.db"), spans, index))
        without, with_index = (statistics.median(costs[flag]) for flag in (False, True))
        print(
            f"  without the index {without:.2f} µs/span, with it {with_index:.2f} µs/span "
            f"(+{with_index - without:.2f} µs, {with_index / without:.3f}x)"
        )
        path = os.path.join(folder, f"r{args.rounds - 1}-True.db")
        add_logs(path, spans)
        size = os.path.getsize(path) / 1e6
        print(
            f"serve: logfire-run-view --serve on the filled store ({size:.0f} MB), "
            f"{args.repeat} requests each"
        )
        serve(path, args.repeat)
        print("running spans: the request path's cost")
        pending_cost(100_000, args.rounds, folder)
    print(f"load average after: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
