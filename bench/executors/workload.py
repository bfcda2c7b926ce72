"""The measured app: trivial tasks through a thread pool and through process pools, inside one span.

Prints one JSON line: for each pool, microseconds per task (submit, run in the worker, result) of wall
time and of CPU time. CPU time counts the submitting process and, for process pools, the worker too
(read from the worker itself, before and after the measured tasks); it is the steadier figure on a
busy machine. Pools have one worker, so the worker that is measured is the one that ran the tasks.
Only the steady state is timed: pools are started and warmed up first, so interpreter and worker
start-up are not counted. Run by `bench/executors/run.py`.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing as mp
import sys
import time

from opentelemetry import trace


def noop() -> None:
    return None


def cpu_seconds() -> float:
    return time.process_time()


def per_task_us(pool: cf.Executor, count: int, *, separate_worker: bool) -> tuple[float, float]:
    for future in [pool.submit(noop) for _ in range(16)]:
        future.result()  # warm: workers started, code paths loaded
    worker_start = pool.submit(cpu_seconds).result() if separate_worker else 0.0
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    futures = [pool.submit(noop) for _ in range(count)]
    for future in futures:
        future.result()
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    if separate_worker:
        cpu += pool.submit(cpu_seconds).result() - worker_start
    return wall / count * 1e6, cpu / count * 1e6


def main() -> None:
    thread_tasks, process_tasks = int(sys.argv[1]), int(sys.argv[2])
    results: dict[str, tuple[float, float]] = {}
    # Inside a span, so there is a context to carry (a no-op span when nothing is instrumented).
    with trace.get_tracer("bench").start_as_current_span("bench"):
        with cf.ThreadPoolExecutor(1) as threads:
            results["thread"] = per_task_us(threads, thread_tasks, separate_worker=False)
        for method in ("fork", "spawn"):
            with cf.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as processes:
                results[f"process {method}"] = per_task_us(processes, process_tasks, separate_worker=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
