"""Sustained spans per second into the local store, from 1 and from 8 processes at once.

Each run starts N exporting processes through the launcher (`logfire-run --exporter store`), each
creating SPANS spans with HTTP-server attributes as fast as it can and flushing; the same run with
`--exporter none` (spans created and dropped) is the baseline, interleaved round by round. Reported:
the total rate (all spans / wall time from the first start to the last flush), the spans found in the
store afterwards, and the exporting processes' CPU: CPU µs per span with the store, without it,
and the difference (what writing to the store costs the app's processes).

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
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAUNCHER = shutil.which("logfire-run", path=os.path.dirname(sys.executable)) or "logfire-run"


def run(processes: int, spans: int, exporter: str, store: Path) -> dict[str, float]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["LOGFIRE_STORE"] = str(store)
    # A queue that holds a whole run: nothing is dropped, so the rate is what the store sustains.
    env["OTEL_BSP_MAX_QUEUE_SIZE"] = str(spans)
    command = [LAUNCHER, "--exporter", exporter, "python", str(HERE / "worker.py"), str(spans)]
    children = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    results = []
    for child in children:
        stdout, stderr = child.communicate(timeout=600)
        if child.returncode != 0 or stderr:
            raise SystemExit(f"worker failed ({child.returncode}): {stderr}")
        results.append(json.loads(stdout))
    wall = max(item["end"] for item in results) - min(item["start"] for item in results)
    total = processes * spans
    stored = 0
    if exporter == "store":
        connection = sqlite3.connect(store)
        stored = connection.execute("SELECT count(*) FROM spans").fetchone()[0]
        connection.close()
    return {
        "rate": total / wall,
        "cpu_us_per_span": sum(item["cpu"] for item in results) / total * 1e6,
        "stored": stored,
        "total": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=20_000, help="spans per process")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, spans per process: {args.spans}, rounds: {args.rounds}")
    with tempfile.TemporaryDirectory() as folder:
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
                f"{processes} process(es): store {store_rate:,.0f} spans/s (no exporter: {none_rate:,.0f}); "
                f"CPU per span {store_cpu:.1f} µs with the store, {none_cpu:.1f} µs without, "
                f"store overhead {store_cpu - none_cpu:.1f} µs/span ({store_cpu / none_cpu:.2f}x); "
                f"spans missing from the store: {lost}"
            )


if __name__ == "__main__":
    main()
