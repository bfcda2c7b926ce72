"""Metrics on: the per-request overhead, and the CPU of one collection, against `opentelemetry-instrument`.

    .venv/bin/python bench/metrics/run.py [--rounds 7] [--requests 5000] [--collections 50]
    .venv/bin/python bench/metrics/run.py --instructions      (needs valgrind)

Both agents run with spans and metrics exported over OTLP/HTTP (`opentelemetry-instrument` with
`OTEL_TRACES_EXPORTER` and `OTEL_METRICS_EXPORTER` set to its OTLP/HTTP exporters; logfire-run with
its defaults once an OTLP endpoint is set), logs off, to a receiver inside this process that decodes
and counts what arrives; logfire-run also with the local store (spans and metrics in the file).
Both load OpenTelemetry's system-metrics instrumentation, installed in the test environment. Each
agent also runs with metrics off (`OTEL_METRICS_EXPORTER=none`): what metrics add, for each.

- per request: bench/http/flask_app.py (a Flask handler through the test client, 5,000 requests,
  each with a `traceparent`), so every request records into the server duration histogram and the
  active-requests counter; the collections happen at exit, outside the timed loop;
- per collection: collect_cost.py (100 series of the duration histogram, the active-requests counter
  and the runtime metrics), the meter provider flushed 50 times: one collection and one export each,
  in the calling thread, CPU read with `time.thread_time()`.

Timed (the default): every variant once per round, in a rotating order; medians, and overheads as
medians of per-round differences to plain. `--instructions`: the same under valgrind (cachegrind),
instructions per request (runs of 300 and 2,300 requests) and per collection (runs of 5 and 25), one
run each. The server durations delivered are counted and printed, so a run that lost metrics shows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "http"))
from run import VALGRIND, _instructions, _load, _ratio  # noqa: E402 (bench/http/run.py's helpers)

BIN = Path(sys.executable).parent
NO_METRICS = ", metrics off"
VARIANTS = (
    "plain",
    "logfire-run otlp",
    "logfire-run store",
    "opentelemetry-instrument otlp",
    f"logfire-run otlp{NO_METRICS}",
    f"opentelemetry-instrument otlp{NO_METRICS}",
)
REFERENCE = "opentelemetry-instrument otlp"


class Sink:
    """OTLP/HTTP: counts spans, and the measurements of the last cumulative server-duration points."""

    def __init__(self) -> None:
        self.spans = 0
        self.durations: dict[tuple[Any, ...], int] = {}
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path.endswith("/v1/metrics"):
                    sink._metrics(body)
                else:
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    with sink._lock:
                        sink.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _metrics(self, body: bytes) -> None:
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        with self._lock:
            for resource in request.resource_metrics:
                attributes = resource.resource.attributes
                pid = next((a.value.int_value for a in attributes if a.key == "process.pid"), 0)
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        if metric.name == "http.server.duration":
                            for point in metric.histogram.data_points:
                                labels = tuple((a.key, str(a.value)) for a in point.attributes)
                                key = (pid, point.start_time_unix_nano, labels)
                                # Cumulative: a series counts by its largest (last) point.
                                self.durations[key] = max(self.durations.get(key, 0), point.count)

    def take(self) -> tuple[int, int]:
        with self._lock:
            spans, self.spans = self.spans, 0
            durations, self.durations = sum(self.durations.values()), {}
        return spans, durations


def _env(variant: str, sink: Sink, store: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    agent, _, exporter = variant.removesuffix(NO_METRICS).partition(" ")
    if agent == "logfire-run":
        env.update(LOGFIRE_DISTRIBUTED_TRACING="true", LOGFIRE_STORE=str(store), LOGFIRE_EXPORTER=exporter)
        if exporter == "otlp":
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
    elif agent == "opentelemetry-instrument":
        env.update(
            OTEL_TRACES_EXPORTER="otlp_proto_http",
            OTEL_METRICS_EXPORTER="otlp_proto_http",
            OTEL_LOGS_EXPORTER="none",
            OTEL_EXPORTER_OTLP_ENDPOINT=sink.endpoint,
        )
    if variant.endswith(NO_METRICS):
        env["OTEL_METRICS_EXPORTER"] = "none"
    # Collections at exit only (collect_cost.py makes its own): a run under valgrind lasts minutes,
    # and a periodic collection inside one would be counted as requests' work.
    env["OTEL_METRIC_EXPORT_INTERVAL"] = "3600000"
    return env


def _measure(
    variant: str, script: str, count: int, sink: Sink, prefix: tuple[str, ...] = ()
) -> tuple[dict[str, float], int]:
    """The figures one run prints, and the server durations delivered (OTLP) or stored (store)."""
    sink.take()
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "traces.db"
        counted = Path(folder) / "valgrind.log"
        python = [*prefix, f"--log-file={counted}"] if prefix else []
        command = [*python, sys.executable, str(HERE.parent / script), str(count)]
        if variant != "plain":
            command = [str(BIN / variant.partition(" ")[0]), *command]
        env = _env(variant, sink, store)
        if prefix:
            # Under valgrind a process runs tens of times slower, and so does its last collection
            # (the system metrics' reads of /proc): the exit budget, wall-clock, is scaled alike.
            env["LOGFIRE_EXIT_BUDGET"] = "120"
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0 or (variant.startswith("logfire-run") and result.stderr.strip()):
            raise SystemExit(f"{variant} failed ({result.returncode}):\n{result.stderr}")
        figures = {key: float(value) for key, value in json.loads(result.stdout.splitlines()[-1]).items()}
        if prefix:
            figures["instructions"] = float(_instructions(counted.read_text()))
        delivered = _stored_durations(store) if variant.endswith("store") else sink.take()[1]
    return figures, delivered


def _stored_durations(store: Path) -> int:
    import sqlite3

    connection = sqlite3.connect(store)
    try:
        query = "SELECT sum(count) FROM metrics WHERE name = 'http.server.duration'"
        row = connection.execute(query).fetchone()
        return int(row[0] or 0)
    finally:
        connection.close()


#: (script under bench/, its figure, what one operation is, the operations of a timed run, the
#: operations of the shorter and longer instruction-count runs).
WORKLOADS = {
    "request": ("http/flask_app.py", "cpu_per_op_us", "request", 5000, (300, 2300)),
    "collection": ("metrics/collect_cost.py", "cpu_per_collection_us", "collection", 50, (5, 25)),
}


def _timed(rounds: int, counts: dict[str, int], only: list[str]) -> None:
    sink = Sink()
    try:
        for name, (script, figure, what, _, _) in WORKLOADS.items():
            if name not in only:
                continue
            results: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
            delivered: dict[str, list[int]] = {variant: [] for variant in VARIANTS}
            for index in range(rounds):
                shift = index % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    figures, count = _measure(variant, script, counts[name], sink)
                    results[variant].append(figures[figure])
                    delivered[variant].append(count)
            _report(name, what, counts[name], results, delivered)
    finally:
        sink.server.shutdown()


def _report(
    name: str, what: str, count: int, results: dict[str, list[float]], delivered: dict[str, list[int]]
) -> None:
    def paired(variant: str) -> float:
        return statistics.median(a - b for a, b in zip(results[variant], results["plain"], strict=True))

    print(f"\n{name}: CPU us per {what} ({count} per run, {len(results['plain'])} interleaved rounds)")
    reference = paired(REFERENCE) if name == "request" else statistics.median(results[REFERENCE])
    for variant in VARIANTS:
        median = statistics.median(results[variant])
        runs = ", ".join(f"{value:.0f}" for value in results[variant])
        if variant == "plain":
            print(f"  {variant:<30} {median:9.1f}  [{runs}]")
            continue
        cost = paired(variant) if name == "request" else median
        label = "overhead" if name == "request" else "per collection"
        print(
            f"  {variant:<30} {median:9.1f}  {label} {cost:+8.1f} us ({_ratio(cost, reference)} of "
            f"{REFERENCE}'s)  [{runs}]  server durations delivered: {delivered[variant]}"
        )


def _counted(only: list[str]) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    jobs = [
        (name, variant, count)
        for name, (_, _, _, _, sizes) in WORKLOADS.items()
        if name in only
        for variant in VARIANTS
        for count in sizes
    ]

    def run(job: tuple[str, str, int]) -> tuple[float, int]:
        name, variant, count = job
        sink = Sink()
        try:
            figures, delivered = _measure(variant, WORKLOADS[name][0], count, sink, VALGRIND)
        finally:
            sink.server.shutdown()
        return figures["instructions"], delivered

    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        results = dict(zip(jobs, pool.map(run, jobs), strict=True))
    for name, (_, _, what, _, (low, high)) in WORKLOADS.items():
        if name not in only:
            continue
        per_op = {
            variant: (results[(name, variant, high)][0] - results[(name, variant, low)][0]) / (high - low)
            for variant in VARIANTS
        }
        base = per_op["plain"] if name == "request" else 0.0
        reference = per_op[REFERENCE] - base
        print(f"\n{name}: instructions per {what} (valgrind; runs of {low} and {high})")
        for variant in VARIANTS:
            if variant == "plain":
                print(f"  {variant:<30} {per_op[variant] / 1e3:9.1f}k")
                continue
            cost = per_op[variant] - base
            delivered = [results[(name, variant, count)][1] for count in (low, high)]
            print(
                f"  {variant:<30} {per_op[variant] / 1e3:9.1f}k  {'overhead' if base else 'cost'} "
                f"{cost / 1e3:+8.1f}k ({_ratio(cost, reference)} of {REFERENCE}'s)  "
                f"server durations delivered: {delivered}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--collections", type=int, default=50)
    parser.add_argument("--instructions", action="store_true", help="count instructions under valgrind")
    parser.add_argument(
        "--only", choices=sorted(WORKLOADS), action="append", help="one workload (repeatable)"
    )
    options = parser.parse_args()
    only = options.only or list(WORKLOADS)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {_load()}")
    start = time.monotonic()
    if options.instructions:
        _counted(only)
    else:
        _timed(options.rounds, {"request": options.requests, "collection": options.collections}, only)
    print(f"\nload after: {_load()}; {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
