"""`python bench_producer.py N`: enqueue N tasks, await them; prints {"seconds": ..., "pids": [...]}."""

from __future__ import annotations

import json
import sys
import time

from bench_tasks import pid

count = int(sys.argv[1])
start = time.perf_counter()
results = [pid.delay() for _ in range(count)]
pids = [result.get(timeout=120) for result in results]
print(json.dumps({"seconds": time.perf_counter() - start, "pids": pids}))
