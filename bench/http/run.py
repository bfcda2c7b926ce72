"""Per-request overhead of the HTTP instrumentation: logfire-run against `opentelemetry-instrument`.

    .venv/bin/python bench/http/run.py [--rounds 11] [--flask-requests 5000] [--requests-calls 1000]
    .venv/bin/python bench/http/run.py --instructions      (needs valgrind)

Two workloads, each run as a fresh process per measurement:

- flask: a Flask handler called through the framework's test client, every request carrying a
  `traceparent` (so extraction and the policy run), 5,000 requests;
- requests: `requests.get` to a stdlib server in its own plain process, 1,000 calls.

The variants: plain Python; logfire-run with no exporter, with the local store (the default) and
with OTLP; `opentelemetry-instrument` with no exporter and with OTLP; and "instrumentors only",
OpenTelemetry's SDK with no span processor and its Flask and requests instrumentors, nothing else
(`floor/sitecustomize.py`): the floor under any agent that runs those instrumentors. Every setting
is the default one (batch sizes, queue size, delays). OTLP goes over HTTP to a receiver inside this
process that decodes and counts the spans, then discards them; the store variant writes a fresh
store file per run, whose rows are counted afterwards. The counts are printed: a run that lost or
never exported spans shows. Metrics and logs exporters are off for both agents: this bench is about
spans (bench/metrics/run.py measures both agents with metrics on). logfire-run runs with
`distributed_tracing=true`, the mode in which inbound context is used (no warning path).

Timed (the default): every variant once per round, in an order that rotates, so that machine noise
hits them alike. Reported in wall-clock time and in the CPU time of the measured process (all its
threads, the exporting one included): the median microseconds per request, the overhead over plain
(the median of per-round differences, which cancels most load drift), the overhead divided by
`opentelemetry-instrument`'s with OTLP, and, for each exporter, the export path's cost per span two
ways: the variant's CPU minus the same agent's with no exporter (one span per request), and the CPU
of the exporting thread itself (with the final flush), read directly.

`--instructions`: the same variants under valgrind (cachegrind), counting instructions instead of
timing: the same figures without the machine's noise (a process started twice gives the same count
to a few tenths of a percent, where its CPU time moves by 20% on a shared machine), in one run. See
`_count_instructions`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LOGFIRE_RUN = ("logfire-run none", "logfire-run store", "logfire-run otlp")
OTEL_INSTRUMENT = ("opentelemetry-instrument none", "opentelemetry-instrument otlp")
#: OpenTelemetry's SDK without a span processor and its Flask and requests instrumentors, nothing else
#: (floor/sitecustomize.py): the floor under any agent that runs those instrumentors.
FLOOR = "instrumentors only"
VARIANTS = ("plain", *LOGFIRE_RUN, *OTEL_INSTRUMENT, FLOOR)
REFERENCE = "opentelemetry-instrument otlp"
#: A workload: its command's arguments for N operations, the N of the instruction count's shorter
#: run, and the warm-up operations it makes before the measured ones (spans expected: N + warm-up).
Workload = tuple[Callable[[int], list[str]], int, int]


class CountingSink:
    """An OTLP/HTTP endpoint that counts the spans it receives and keeps nothing else."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                count = sum(
                    len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans
                )
                with sink._lock:
                    sink.spans += count
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
            count, self.spans = self.spans, 0
        return count


def _env(variant: str, sink: CountingSink, store: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    agent, _, exporter = variant.partition(" ")
    if agent == "logfire-run":
        env.update(
            LOGFIRE_EXPORTER=exporter,
            LOGFIRE_DISTRIBUTED_TRACING="true",
            LOGFIRE_STORE=str(store),
            OTEL_METRICS_EXPORTER="none",
        )
        if exporter == "otlp":
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
    elif agent == "opentelemetry-instrument":
        env.update(
            OTEL_TRACES_EXPORTER="otlp_proto_http" if exporter == "otlp" else "none",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
        )
        if exporter == "otlp":
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
    elif variant == FLOOR:
        env["PYTHONPATH"] = str(HERE / "floor")
        # Not read by it; set so that its environment is as long as the agents' (requests walks the
        # whole environment twice per call, for proxies: each variable costs every variant alike).
        env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    return env


def _command(variant: str, args: list[str], prefix: tuple[str, ...] = ()) -> list[str]:
    """The command line of one run; `prefix` (valgrind) goes between the agent and Python."""
    agent = variant.partition(" ")[0]
    if variant in ("plain", FLOOR):
        return [*prefix, sys.executable, *args]
    return [str(BIN / agent), *prefix, sys.executable, *args]


def _measure(
    variant: str,
    args: list[str],
    sink: CountingSink,
    expected_spans: int,
    prefix: tuple[str, ...] = (),
) -> tuple[dict[str, float], int]:
    """The figures one run prints (see measure.py) and the spans delivered.

    With a valgrind `prefix`, the figures also hold `instructions`: the whole process's count.
    """
    sink.take()
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "traces.db"
        counted = Path(folder) / "valgrind.log"
        command = _command(variant, args, (*prefix, f"--log-file={counted}") if prefix else ())
        result = subprocess.run(
            command,
            env=_env(variant, sink, store),
            capture_output=True,
            text=True,
            timeout=1800,
        )
        # An agent that prints breaks someone's logs: logfire-run's runs must leave stderr empty.
        if result.returncode != 0 or (variant.startswith("logfire-run") and result.stderr.strip()):
            raise SystemExit(f"{variant} failed ({result.returncode}):\n{result.stderr}")
        printed = json.loads(result.stdout.strip().splitlines()[-1])
        figures = {key: float(value) for key, value in printed.items()}
        if prefix:
            figures["instructions"] = float(_instructions(counted.read_text()))
        if variant.endswith("store"):
            spans = _count_rows(store)
        else:
            deadline = time.monotonic() + 10
            spans = sink.take()
            while variant.endswith("otlp") and spans < expected_spans and time.monotonic() < deadline:
                time.sleep(0.05)
                spans += sink.take()
    return figures, spans


def _instructions(log: str) -> int:
    """The total of cachegrind's summary line ("==PID== I refs: 1,234,567")."""
    found = re.search(r"^==\d+== I\s+refs:\s+([\d,]+)", log, re.MULTILINE)
    if found:
        return int(found.group(1).replace(",", ""))
    raise SystemExit(f"no instruction count in valgrind's output:\n{log}")


def _count_rows(store: Path) -> int:
    connection = sqlite3.connect(store)
    try:
        return int(connection.execute("SELECT count(*) FROM spans").fetchone()[0])
    finally:
        connection.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _report(
    name: str,
    count: int,
    clock: str,
    results: dict[str, list[float]],
    spans: dict[str, list[int]],
    export: dict[str, list[float]] | None = None,
) -> None:
    """Medians per variant, and the overhead as the median of per-round differences to plain.

    The per-round difference pairs each run with the plain run of the same round, which cancels
    most of the drift of a shared machine's load between rounds.
    """
    medians = {variant: statistics.median(values) for variant, values in results.items()}

    def paired(variant: str, base: str) -> float:
        return statistics.median(
            value - other for value, other in zip(results[variant], results[base], strict=True)
        )

    overhead = {variant: paired(variant, "plain") for variant in VARIANTS}
    reference = overhead[REFERENCE]
    rounds = len(results["plain"])
    print(f"\n{name}, {clock}: {count} per run, {rounds} interleaved rounds, median us per request")
    for variant in VARIANTS:
        runs = ", ".join(f"{value:.0f}" for value in results[variant])
        if variant == "plain":
            print(f"  {variant:<30} {medians[variant]:8.1f}  [{runs}]")
            continue
        ratio = _ratio(overhead[variant], reference)
        print(
            f"  {variant:<30} {medians[variant]:8.1f}  overhead {overhead[variant]:+7.1f} us"
            f"  ({ratio} of {REFERENCE}'s)  [{runs}]  spans delivered per run: {spans[variant]}"
        )
    for variant, without in _exporting():
        line = f"  export path, {variant}: {paired(variant, without):+.1f} us per span"
        if export is not None:
            thread = statistics.median(export[variant])
            line += f" against no exporter; {thread:.1f} us per span on the exporting thread itself"
        print(line)


VALGRIND = ("valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null")


def _count_instructions(workloads: dict[str, Workload], measured: dict[str, int]) -> None:
    """Instructions per operation of every variant, counted by valgrind (cachegrind).

    Each variant runs twice, with a base number of operations and with `measured` more; the
    difference divided by `measured` is the count per operation without start-up and exit. The
    counts do not depend on the machine's load, so one run of each is enough, and runs go two at a
    time (one receiver each). Under valgrind a process's threads take turns, so the exporting thread's
    instructions are in the total like the app's.
    """
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    jobs = [
        (name, variant, base + extra)
        for name, (build, base, warm_up) in workloads.items()
        for variant in VARIANTS
        for extra in (0, measured[name])
    ]

    def run(job: tuple[str, str, int]) -> tuple[float, int]:
        name, variant, count = job
        build, _, warm_up = workloads[name]
        sink = CountingSink()
        try:
            figures, spans = _measure(variant, build(count), sink, count + warm_up, VALGRIND)
        finally:
            sink.server.shutdown()
        return figures["instructions"], spans

    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        results = dict(zip(jobs, pool.map(run, jobs), strict=True))
    for name, (_, base, warm_up) in workloads.items():
        extra = measured[name]
        per_op = {
            variant: (results[(name, variant, base + extra)][0] - results[(name, variant, base)][0]) / extra
            for variant in VARIANTS
        }
        overhead = {variant: per_op[variant] - per_op["plain"] for variant in VARIANTS}
        reference = overhead[REFERENCE]
        print(f"\n{name}, instructions per request (valgrind; runs of {base} and {base + extra})")
        for variant in VARIANTS:
            delivered = [results[(name, variant, count)][1] for count in (base, base + extra)]
            expected = [count + warm_up for count in (base, base + extra)]
            if variant == "plain":
                print(f"  {variant:<30} {per_op[variant] / 1e3:8.1f}k")
                continue
            ratio = _ratio(overhead[variant], reference)
            exports = variant.endswith(("store", "otlp"))
            lost = f" (expected {expected})" if exports and delivered != expected else ""
            print(
                f"  {variant:<30} {per_op[variant] / 1e3:8.1f}k  overhead {overhead[variant] / 1e3:+7.1f}k"
                f"  ({ratio} of {REFERENCE}'s)  spans delivered: {delivered}{lost}"
            )
        for variant, without in _exporting():
            path = (per_op[variant] - per_op[without]) / 1e3
            print(f"  export path, {variant}: {path:+.1f}k instructions per span")


def _ratio(overhead: float, reference: float) -> str:
    return f"{overhead / reference:4.2f}" if reference > 0 else "n/a"


def _exporting() -> list[tuple[str, str]]:
    """(variant, the same agent with no exporter) for each variant that exports."""
    return [
        (variant, f"{variant.partition(' ')[0]} none")
        for variant in VARIANTS
        if variant.endswith((" store", " otlp"))
    ]


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--flask-requests", type=int, default=5000)
    parser.add_argument("--requests-calls", type=int, default=1000)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under valgrind instead of timing (load-independent)",
    )
    options = parser.parse_args()

    sink = CountingSink()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(HERE / "target_server.py"), str(port)],
        env={"PATH": os.environ.get("PATH", "")},
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/"
        workloads: dict[str, Workload] = {
            "flask": (lambda n: [str(HERE / "flask_app.py"), str(n)], 300, 200),
            "requests": (lambda n: [str(HERE / "requests_client.py"), url, str(n)], 100, 50),
        }
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {_load()}")
        if options.instructions:
            _count_instructions(workloads, {"flask": 1000, "requests": 400})
            return
        counts = {"flask": options.flask_requests, "requests": options.requests_calls}
        for name, (build, _, warm_up) in workloads.items():
            count = counts[name]
            args = build(count)
            wall: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
            cpu: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
            export: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
            spans: dict[str, list[int]] = {variant: [] for variant in VARIANTS}
            for round_index in range(options.rounds):
                shift = round_index % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    figures, exported = _measure(variant, args, sink, count + warm_up)
                    wall[variant].append(figures["per_op_us"])
                    cpu[variant].append(figures["cpu_per_op_us"])
                    export[variant].append(figures["export_cpu_per_op_us"])
                    spans[variant].append(exported)
            _report(name, count, "wall clock", wall, spans)
            _report(name, count, "CPU time of the process (all its threads)", cpu, spans, export)
        print(f"\nload after: {_load()}")
    finally:
        server.terminate()
        server.wait(timeout=10)
        sink.server.shutdown()


if __name__ == "__main__":
    main()
