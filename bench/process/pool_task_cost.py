"""Added cost per trivial multiprocessing.Pool task: plain vs logfire-run vs opentelemetry-instrument.

    .venv/bin/python bench/process/pool_task_cost.py [--rounds 5] [--tasks 5000]

Each round runs this file's workload once per mode, in a rotating order (interleaved, so a noisy
neighbour hits every mode alike); the report is the median per mode of CPU and wall time per task,
the microseconds each adds to plain Python, and the ratio to plain. CPU time counts the submitting
process and the pool's one worker (read from the worker itself before and after the measured tasks):
the figure to read on a shared machine. Only the steady state is timed (the pool is started and warmed
up first). The tasks do nothing and make no span; the parent submits them inside a span, so there is
a context to carry. Nothing is exported in any mode.

Per start method (fork, spawn, forkserver) and for `multiprocessing.pool.ThreadPool`, two ways of
submitting: `apply_async` (one pickled task per call, every result awaited at the end) and `map` with
`chunksize=1` (the pool's own task generator; one task per item).

Modes:
  plain              python, no agent
  logfire-run        logfire-run --exporter none (the multiprocessing instrumentor)
  logfire-run -mp    the same with --disable multiprocessing (the agent's presence alone)
  otel-instrument    opentelemetry-instrument, nothing exported (it has no multiprocessing
                     instrumentation: tasks carry no context)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
BIN = Path(sys.executable).parent
OTEL_QUIET = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
KINDS = ("fork", "spawn", "forkserver", "thread")
WAYS = ("apply_async", "map")


# The measured app (run as `pool_task_cost.py workload TASKS`)


def noop(_: object = None) -> None:
    return None


def cpu_seconds() -> float:
    return time.process_time()


def per_task_us(pool: object, way: str, count: int, *, separate_worker: bool) -> tuple[float, float]:
    apply, apply_async, map_ = pool.apply, pool.apply_async, pool.map  # type: ignore[attr-defined]
    for result in [apply_async(noop) for _ in range(32)]:
        result.get()  # warm: worker started, code paths loaded
    worker_start = apply(cpu_seconds) if separate_worker else 0.0
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    if way == "apply_async":
        for result in [apply_async(noop, (i,)) for i in range(count)]:
            result.get()
    else:
        map_(noop, range(count), chunksize=1)
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    if separate_worker:
        cpu += apply(cpu_seconds) - worker_start
    return wall / count * 1e6, cpu / count * 1e6


def workload(count: int) -> None:
    import multiprocessing as mp
    from multiprocessing.pool import ThreadPool

    from opentelemetry import trace

    results: dict[str, tuple[float, float]] = {}
    with trace.get_tracer("bench").start_as_current_span("bench"):
        for kind in KINDS:
            pool = ThreadPool(1) if kind == "thread" else mp.get_context(kind).Pool(1)
            with pool:
                for way in WAYS:
                    results[f"{kind} {way}"] = per_task_us(pool, way, count, separate_worker=kind != "thread")
    print(json.dumps(results))


# The driver


def modes() -> dict[str, tuple[list[str], dict[str, str]]]:
    python, me = sys.executable, str(HERE)
    launcher = str(BIN / "logfire-run")
    return {
        "plain": ([python, me], {}),
        "logfire-run": ([launcher, "--exporter", "none", python, me], {}),
        "logfire-run -mp": ([launcher, "--exporter", "none", "--disable", "multiprocessing", python, me], {}),
        "otel-instrument": ([str(BIN / "opentelemetry-instrument"), python, me], OTEL_QUIET),
    }


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGFIRE_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def main() -> None:
    if sys.argv[1:2] == ["workload"]:
        workload(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per pool and way of submitting")
    options = parser.parse_args()
    table = modes()
    names = list(table)
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {name: {} for name in names}
    for round_number in range(options.rounds):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in order:
            command, extra = table[name]
            result = subprocess.run(
                [*command, "workload", str(options.tasks)],
                env=clean_env(extra),
                capture_output=True,
                text=True,
                timeout=1200,
            )
            if result.returncode != 0:
                sys.exit(f"{name} failed:\n{result.stderr}")
            for pool, (wall, cpu) in json.loads(result.stdout.strip().splitlines()[-1]).items():
                samples[name].setdefault(pool, []).append((wall, cpu))
        print(f"round {round_number + 1}/{options.rounds} done", file=sys.stderr)

    print(
        f"median of {options.rounds} interleaved rounds; {options.tasks} tasks per pool and way; "
        f"Python {sys.version.split()[0]}; load {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    header = f"{'cpu us':>8}{'added':>8}{'ratio':>7}   {'wall us':>8}{'added':>8}{'ratio':>7}"
    print(f"{'pool':<23}{'mode':<18}{header}")
    for pool in samples["plain"]:
        plain_cpu = statistics.median(cpu for _, cpu in samples["plain"][pool])
        plain_wall = statistics.median(wall for wall, _ in samples["plain"][pool])
        for name in names:
            cpu = statistics.median(cpu for _, cpu in samples[name][pool])
            wall = statistics.median(wall for wall, _ in samples[name][pool])
            print(
                f"{pool:<23}{name:<18}{cpu:>8.2f}{cpu - plain_cpu:>+8.2f}{cpu / plain_cpu:>7.3f}   "
                f"{wall:>8.2f}{wall - plain_wall:>+8.2f}{wall / plain_wall:>7.3f}"
            )


if __name__ == "__main__":
    main()
