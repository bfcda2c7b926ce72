"""The store writer's memory over many batches of every size (one process, the real StoreExporter).

    .venv/bin/python bench/store/memory.py [--batches 3000] [--max-batch 512]

The batch processor hands the store batches of any size from 1 to 512 (a quiet service writes a few
spans at a time, a busy one full batches, an exit flush whatever is left). Python's sqlite3 keeps
every statement it prepared in a per-connection cache (128 entries), and a multi-row INSERT of N
rows is its own statement, a large one at 512 rows of 16 values: the memory of a writing process
grew with the number of distinct batch sizes it had written. This writes `--batches` batches whose
sizes cycle through 1..`--max-batch` (pre-built spans, so only the store's memory moves) and prints
the process's resident memory before, after every fifth of the run, and the growth.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from ingest import Keep
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from spans import make_server_spans

from logfire_run.agent.export.store import StoreExporter


def rss_mb() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--max-batch", type=int, default=512)
    args = parser.parse_args()
    keep = Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "memory"}))
    provider.add_span_processor(keep)
    make_server_spans(provider.get_tracer("bench"), args.max_batch)
    spans = keep.spans
    with tempfile.TemporaryDirectory() as folder:
        exporter = StoreExporter(str(Path(folder) / "traces.db"))
        exporter.export(spans[:1])  # opened, schema in place
        before = rss_mb()
        print(f"before: {before:.1f} MB resident")
        for number in range(args.batches):
            size = number % args.max_batch + 1
            exporter.export(spans[:size])
            if (number + 1) % (args.batches // 5) == 0:
                print(f"after {number + 1:>6} batches: {rss_mb():.1f} MB resident")
        after = rss_mb()
        exporter.shutdown()
    print(f"growth: {after - before:+.1f} MB over {args.batches} batches of 1..{args.max_batch} spans")


if __name__ == "__main__":
    main()
