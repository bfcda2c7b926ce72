"""`os.fork()` while spans are exported: how long a fork takes, and what reaches the collector.

    .venv/bin/python bench/process/fork_export.py [--forks 200]

Two workloads, each under plain python (no agent: the floor), logfire-run and opentelemetry-instrument,
exporting over OTLP/HTTP to a collector in this process (keep-alive connections, as a collector has):

1. stall: an export is on the wire, held by a collector that answers in 2 s (slow) or never (dead),
   when the app forks 5 times; printed, the longest time `os.fork()` took, and its ratio to plain.
2. bodies: a thread makes spans without pause while the app forks `--forks` children, each of which
   makes 20 spans and flushes; printed, the requests that arrived, those whose body was not one OTLP
   message (two requests written into one connection), and the children's spans that arrived.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from otlp_receivers import HttpReceiver

BIN = Path(sys.executable).parent
STALL_APP = """
import os, threading, time
from opentelemetry import trace
tracer = trace.get_tracer("bench")
with tracer.start_as_current_span("before the fork"):
    pass
flush = getattr(trace.get_tracer_provider(), "force_flush", None)
if flush is not None:
    threading.Thread(target=flush, daemon=True).start()
time.sleep(0.3)                                  # the export is on the wire, held by the collector
durations = []
for _ in range(5):
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    durations.append(time.perf_counter() - started)
    os.waitpid(pid, 0)
print(" ".join(str(duration) for duration in durations))
"""
BODIES_APP = """
import os, sys, threading, time
from opentelemetry import trace
tracer = trace.get_tracer("bench")
flush = getattr(trace.get_tracer_provider(), "force_flush", lambda: None)
with tracer.start_as_current_span("start"):      # the SDK is up before any thread or fork
    pass
flush()
stop = False
def load():
    while not stop:
        with tracer.start_as_current_span("parent"):
            pass
        time.sleep(0.0005)
threading.Thread(target=load, daemon=True).start()
children = []
for number in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        for _ in range(20):
            with tracer.start_as_current_span(f"child {number}"):
                pass
        flush()
        os._exit(0)
    children.append(pid)
    time.sleep(0.01)
for pid in children:
    os.waitpid(pid, 0)
stop = True
"""


def command(mode: str, script: Path, *args: str) -> list[str]:
    if mode == "plain":
        return [sys.executable, str(script), *args]
    if mode == "logfire-run":
        return [str(BIN / "logfire-run"), "python", str(script), *args]
    return [str(BIN / "opentelemetry-instrument"), sys.executable, str(script), *args]


def environment(mode: str, endpoint: str, folder: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="100", XDG_CACHE_HOME=folder)
    if mode == "logfire-run":
        env["LOGFIRE_EXPORTER"] = "otlp"
    elif mode == "otel-instrument":
        env.update(OTEL_TRACES_EXPORTER="otlp", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    return env


def dead_collector() -> tuple[str, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[object] = []
    threading.Thread(
        target=lambda: [held.append(listener.accept()) for _ in iter(int, 1)], daemon=True
    ).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", listener


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--forks", type=int, default=200)
    args = parser.parse_args()
    modes = ["plain", "logfire-run", "otel-instrument"]
    if shutil.which("opentelemetry-instrument", path=str(BIN)) is None:
        modes.remove("otel-instrument")
    with tempfile.TemporaryDirectory() as folder:
        stall, bodies = Path(folder) / "stall.py", Path(folder) / "bodies.py"
        stall.write_text(STALL_APP)
        bodies.write_text(BODIES_APP)
        for collector in ("slow (answers in 2 s)", "dead (never answers)"):
            longest = {}
            for mode in modes:
                if collector.startswith("slow"):
                    receiver = HttpReceiver(hold=2.0)
                    endpoint, closer = receiver.endpoint, receiver.close
                else:
                    endpoint, listener = dead_collector()
                    closer = listener.close
                env = environment(mode, endpoint, folder)
                env["LOGFIRE_EXIT_BUDGET"] = "0.5"  # the end of the run, not what is measured
                result = subprocess.run(
                    command(mode, stall), env=env, capture_output=True, text=True, timeout=120
                )
                closer()
                durations = [float(value) for value in result.stdout.split()]
                longest[mode] = max(durations) if durations else float("nan")
            print(
                f"stall, {collector}: longest os.fork() "
                + ", ".join(
                    f"{mode} {value * 1000:.1f} ms ({value / longest['plain']:.1f}x)"
                    for mode, value in longest.items()
                )
            )
        for mode in modes:
            receiver = HttpReceiver()
            started = time.monotonic()
            subprocess.run(
                command(mode, bodies, str(args.forks)),
                env=environment(mode, receiver.endpoint, folder),
                capture_output=True,
                text=True,
                timeout=600,
            )
            wall = time.monotonic() - started
            time.sleep(1)
            children = sum(1 for span in receiver.spans if span.name.startswith("child"))
            print(
                f"bodies, {args.forks} forks, {mode}: {len(receiver.timeline)} requests, {receiver.corrupt} "
                f"not one OTLP message, {children} of {args.forks * 20} child spans, {wall:.1f} s"
            )
            receiver.close()


if __name__ == "__main__":
    main()
