"""Sustained spans per second into the local store, from 1 and from 8 processes at once.

Two measurements, both with N processes writing to one store file at the same time:

1. ingest: each process pre-creates SPANS spans (HTTP server spans with 15 attributes), then all
   call `StoreExporter.export()` in batches of 512 at the same moment; the rate is what the store
   itself sustains (conversion, SQLite, locking between processes), and the CPU is that of the
   exports alone. The same batches are then encoded for OTLP, by logfire-run's encoder and by
   OpenTelemetry's, in one process: the CPU per span of the OTLP export's encoding step.
2. end to end: N processes started through the launcher (`logfire-run --exporter store`) each create
   SPANS spans with HTTP-server attributes as fast as they can and flush (BatchSpanProcessor and
   store together), with OpenTelemetry's default batching settings (a 2,048-span queue); the same
   run with `--exporter none` (spans created, not exported) is the baseline, interleaved round by
   round. A process that makes spans faster than the store takes them drops what overflows the
   queue, as any OpenTelemetry exporter would: the spans missing are printed. Reported: the total
   rate (all spans / wall time from the first start to the last flush), the spans found in the
   store afterwards, and the processes' CPU per span with the store, without it, and the difference
   (what exporting costs the app's processes).

    .venv/bin/python bench/store/bench_store.py [--spans 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAUNCHER = shutil.which("logfire-run", path=os.path.dirname(sys.executable)) or "logfire-run"


def run(processes: int, spans: int, exporter: str, store: Path) -> dict[str, float]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["LOGFIRE_STORE"] = str(store)
    # OpenTelemetry's default batching (a 2,048-span queue): spans the store cannot keep up with
    # are dropped, and counted below as missing.
    command = [LAUNCHER, "--exporter", exporter, "python", str(HERE / "worker.py"), str(spans)]
    children = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    results = []
    for child in children:
        stdout, stderr = child.communicate(timeout=600)
        # The one line expected: the report of a full queue (the dropped spans are counted below).
        unexpected = [line for line in stderr.splitlines() if "Queue full" not in line]
        if child.returncode != 0 or unexpected:
            raise SystemExit(f"worker failed ({child.returncode}): {stderr}")
        results.append(json.loads(stdout))
    wall = max(item["end"] for item in results) - min(item["start"] for item in results)
    total = processes * spans
    stored = count_spans(store) if exporter == "store" else 0
    return {
        "rate": total / wall,
        "cpu_us_per_span": sum(item["cpu"] for item in results) / total * 1e6,
        "stored": stored,
        "total": total,
    }


def ingest(processes: int, spans: int, store: Path, mode: str = "store") -> dict[str, float]:
    start_at = time.time() + 3 + processes * 0.5  # leaves time to import and make the spans
    command = [sys.executable, str(HERE / "ingest.py"), str(spans), str(store), str(start_at), mode]
    children = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    results = []
    for child in children:
        stdout, stderr = child.communicate(timeout=600)
        if child.returncode != 0 or stderr:
            raise SystemExit(f"writer failed ({child.returncode}): {stderr}")
        results.append(json.loads(stdout))
    if min(item["start"] for item in results) < start_at - 0.01:
        raise SystemExit("a writer started late: raise the start delay")
    wall = max(item["end"] for item in results) - min(item["start"] for item in results)
    total = processes * spans
    return {
        "rate": total / wall,
        "cpu_us_per_span": sum(item["cpu"] for item in results) / total * 1e6,
        "stored": count_spans(store) if mode == "store" else total,
        "total": total,
    }


def count_spans(store: Path) -> int:
    connection = sqlite3.connect(store)
    try:
        return int(connection.execute("SELECT count(*) FROM spans").fetchone()[0])
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=20_000, help="spans per process")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, spans per process: {args.spans}, rounds: {args.rounds}")
    print(f"load average before: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as folder:
        print("ingest: StoreExporter.export() alone, all processes writing at once")
        for processes in (1, 8):
            runs = [
                ingest(processes, args.spans, Path(folder) / f"ingest-{processes}-{number}.db")
                for number in range(args.rounds)
            ]
            rate = statistics.median(item["rate"] for item in runs)
            cpu = statistics.median(item["cpu_us_per_span"] for item in runs)
            lost = sum(item["total"] - item["stored"] for item in runs)
            print(
                f"  {processes} process(es): {rate:,.0f} spans/s into the store; "
                f"export CPU {cpu:.1f} µs/span; spans missing: {lost}"
            )
        print("OTLP encoding of the same batches (1 process), interleaved round by round")
        encoders: dict[str, list[float]] = {"otlp-encoder": [], "official-encoder": []}
        for number in range(args.rounds):
            for mode in encoders:
                result = ingest(1, args.spans, Path(folder) / f"unused-{number}.db", mode)
                encoders[mode].append(result["cpu_us_per_span"])
        ours, theirs = (statistics.median(values) for values in encoders.values())
        print(
            f"  logfire-run's encoder {ours:.1f} µs/span, OpenTelemetry's encode_spans + "
            f"SerializeToString {theirs:.1f} µs/span ({ours / theirs:.2f}x)"
        )
        print("end to end: spans created and exported through the launcher, vs no exporter")
        for processes in (1, 8):
            samples: dict[str, list[dict[str, float]]] = {"none": [], "store": []}
            for round_number in range(args.rounds):
                for exporter in ("none", "store"):
                    store = Path(folder) / f"p{processes}-r{round_number}-{exporter}.db"
                    samples[exporter].append(run(processes, args.spans, exporter, store))
            store_rate = statistics.median(item["rate"] for item in samples["store"])
            none_rate = statistics.median(item["rate"] for item in samples["none"])
            store_cpu = statistics.median(item["cpu_us_per_span"] for item in samples["store"])
            none_cpu = statistics.median(item["cpu_us_per_span"] for item in samples["none"])
            lost = sum(item["total"] - item["stored"] for item in samples["store"])
            print(
                f"  {processes} process(es): {store_rate:,.0f} spans/s with the store "
                f"({none_rate:,.0f} with no exporter); CPU per span {store_cpu:.1f} µs with the "
                f"store, {none_cpu:.1f} µs without: +{store_cpu - none_cpu:.1f} µs "
                f"({store_cpu / none_cpu:.2f}x); spans missing: {lost}"
            )
    print(f"load average after: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
