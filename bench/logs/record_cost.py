"""Cost per `logger.info()` call inside a span: plain, logfire-run (captured or not), OpenTelemetry.

    .venv/bin/python bench/logs/record_cost.py [--rounds 5] [--records 20000]

The workload (`workload.py`) opens one span with the OpenTelemetry API (a no-op in plain Python) and
calls `logger.info("order %d shipped", i)` on a logger whose handler formats each record into a file
(`/dev/null`), the way a service logs. Each measurement is a fresh process; every round runs each
variant once, in an order that rotates, so machine noise hits them alike:

- plain: no agent;
- logfire-run off: `LOGFIRE_LOG_LEVEL=off`, the ids on every record, nothing captured;
- logfire-run store: captured into the local store (the default);
- logfire-run otlp: captured and sent over OTLP/HTTP as logs (spans too);
- opentelemetry-instrument otlp: OpenTelemetry's agent with its logging instrumentation
  (opentelemetry-instrumentation-logging, which adds its handler to the root logger) and OTLP logs
  and spans.

OTLP goes to a receiver inside this script that counts the log records and discards them; the counts
are printed, so a run that lost records shows. Reported: microseconds per call in the logging thread
(the loop's wall time over the calls, what the app waits), and the process's CPU per record (every
thread, the exporting ones included), each as overhead over plain and as a ratio to
opentelemetry-instrument's overhead; and, measured inside the `logfire-run off` processes, the record
factory's own cost (the loop with the agent's factory and with the one it wraps, alternately).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
VARIANTS = (
    "plain",
    "logfire-run off",
    "logfire-run store",
    "logfire-run otlp",
    "opentelemetry-instrument otlp",
)
REFERENCE = "opentelemetry-instrument otlp"


class CountingSink:
    """An OTLP/HTTP endpoint that counts the log records it receives (and accepts spans unread)."""

    def __init__(self) -> None:
        self.records = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path.endswith("/v1/logs"):
                    request = ExportLogsServiceRequest()
                    request.ParseFromString(body)
                    count = sum(
                        len(scope.log_records)
                        for resource in request.resource_logs
                        for scope in resource.scope_logs
                    )
                    with sink._lock:
                        sink.records += count
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self) -> int:
        with self._lock:
            count, self.records = self.records, 0
            return count


def command_and_env(
    variant: str, records: int, sink: CountingSink, folder: str
) -> tuple[list[str], dict[str, str]]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "LOGFIRE_"))}
    env.pop("PYTHONPATH", None)
    env["XDG_CACHE_HOME"] = os.path.join(folder, "cache")
    env["XDG_DATA_HOME"] = os.path.join(folder, "data")
    # Both agents' log queues hold a whole run (2048 by default): the tight loop logs faster than any
    # exporter sends, and records dropped at the queue would make an agent look cheaper than it is.
    env["OTEL_BLRP_MAX_QUEUE_SIZE"] = str(records + 1000)
    env["LOGFIRE_EXIT_BUDGET"] = "120"
    workload = [str(HERE / "workload.py"), str(records)]
    python = str(BIN / "python")
    if variant == "plain":
        return [python, *workload], env
    if variant.startswith("logfire-run"):
        mode = variant.split()[1]
        if mode == "off":
            env["LOGFIRE_LOG_LEVEL"] = "off"
            env["LOGFIRE_EXPORTER"] = "none"
            workload.append("ab")
        elif mode == "store":
            env["LOGFIRE_STORE"] = os.path.join(folder, f"store-{os.urandom(4).hex()}.db")
        else:
            env["LOGFIRE_EXPORTER"] = "otlp"
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
        return [str(BIN / "logfire-run"), python, *workload], env
    env.update(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_ENDPOINT=sink.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="bench",
    )
    return [str(BIN / "opentelemetry-instrument"), python, *workload], env


def measure(variant: str, records: int, sink: CountingSink, folder: str) -> dict[str, float]:
    command, env = command_and_env(variant, records, sink, folder)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{variant} failed ({result.returncode}):\n{result.stderr}")
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    figures["received"] = float(sink.take())
    store = env.get("LOGFIRE_STORE")
    if store and os.path.exists(store):  # the store variant: its records are rows of the store's file
        connection = sqlite3.connect(store)
        try:
            figures["received"] = float(connection.execute("SELECT count(*) FROM logs").fetchone()[0])
        finally:
            connection.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=20000)
    args = parser.parse_args()
    sink = CountingSink()
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    print(f"load average at start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as folder:
        for round_number in range(args.rounds):
            shift = round_number % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                results[variant].append(measure(variant, args.records, sink, folder))
    print(f"load average at end: {os.getloadavg()}")
    plain_wall = [run["wall_us"] for run in results["plain"]]
    plain_cpu = [run["cpu_us"] for run in results["plain"]]

    def overhead(variant: str, key: str, base: list[float]) -> float:
        return statistics.median(run[key] - base[index] for index, run in enumerate(results[variant]))

    ref_wall = overhead(REFERENCE, "wall_us", plain_wall)
    ref_cpu = overhead(REFERENCE, "cpu_us", plain_cpu)
    print(f"\n{args.records} records per run, {args.rounds} rounds; us per logger.info() call (median)")
    header = (
        f"{'variant':<32} {'call':>7} {'overhead':>9} {'ratio':>6}   {'CPU/record':>10} {'overhead':>9} "
        f"{'ratio':>6}   received"
    )
    print(header)
    for variant in VARIANTS:
        runs = results[variant]
        wall = statistics.median(run["wall_us"] for run in runs)
        cpu = statistics.median(run["cpu_us"] for run in runs)
        if variant == "plain":
            print(f"{variant:<32} {wall:>7.2f} {'':>9} {'':>6}   {cpu:>10.2f}")
            continue
        extra_wall = overhead(variant, "wall_us", plain_wall)
        extra_cpu = overhead(variant, "cpu_us", plain_cpu)
        received = ",".join(str(int(run["received"])) for run in runs)
        print(
            f"{variant:<32} {wall:>7.2f} {extra_wall:>+9.2f} {extra_wall / ref_wall:>6.2f}   {cpu:>10.2f} "
            f"{extra_cpu:>+9.2f} {extra_cpu / ref_cpu:>6.2f}   {received}"
        )
    factory = [run["factory_us"] for run in results["logfire-run off"] if "factory_us" in run]
    if factory:
        print(
            f"\nlogfire-run's record factory, capture off, in-process A/B (median of {len(factory)} runs): "
            f"+{statistics.median(factory):.2f} us per record"
        )


if __name__ == "__main__":
    main()
