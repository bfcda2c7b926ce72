"""What the multiprocessing instrumentor adds to one Pool task, measured in one thread of one process.

    .venv/bin/logfire-run --exporter none .venv/bin/python bench/process/pool_hop.py [--rounds 7]

The end-to-end figures of `pool_task_cost.py` move by tens of microseconds from run to run on a shared
machine, more than the instrumentor adds. This does, in one thread, what the agent adds to a task and
what the task costs without it, and times both with `time.thread_time()`, alternating within each
round: the submitting side (the replaced `apply_async`: wrapping the callable with the carrier), the
pickling of the task as the pool's task handler does it (`ForkingPickler.dumps` of `(job, i, func,
args, kwargs)`), and the worker side (`ForkingPickler.loads`, which attaches the context, and the call).
The pipe write and read, the thread switches and the result's way back are the same with and without
the agent and are not counted: `pool_task_cost.py` gives the full plain cost of a task to compare with.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from multiprocessing.reduction import ForkingPickler
from typing import Any


def noop(_: object = None) -> None:
    return None


class FakePool:
    """Stands for a process Pool where the replaced method looks: `_inqueue` and the method itself."""

    _inqueue = None

    def apply_async(self, func: Any, args: tuple[Any, ...] = ()) -> Any:
        return func


def run(submit: Any, pool: Any, count: int) -> float:
    dumps, loads = ForkingPickler.dumps, ForkingPickler.loads
    start = time.thread_time()
    for i in range(count):
        func = submit(pool, noop, (i,))
        _, _, fn, args, kwargs = loads(dumps((1, i, func, (i,), {})))
        fn(*args, **kwargs)
    return (time.thread_time() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=100_000)
    options = parser.parse_args()
    import multiprocessing.pool  # noqa: F401  (the instrumentor's patch needs the module)

    from opentelemetry import trace

    from logfire_run.agent.process import state
    from logfire_run.instrumentors import multiprocessing as instrumentor

    if not state.start_sdk():
        sys.exit("run it under logfire-run (the agent's SDK is not up)")
    plain = FakePool.apply_async
    ours = instrumentor._submitting(plain)
    plain_us: list[float] = []
    ours_us: list[float] = []
    with trace.get_tracer("bench").start_as_current_span("submitter"):
        instrumentor._context.load()
        run(ours, FakePool(), 1000)  # warm: the worker side set up, the carrier extracted once
        for _ in range(options.rounds):
            plain_us.append(run(plain, FakePool(), options.tasks))
            ours_us.append(run(ours, FakePool(), options.tasks))
    base, added = statistics.median(plain_us), statistics.median(ours_us)
    print(f"median of {options.rounds} rounds, {options.tasks} tasks each; Python {sys.version.split()[0]}")
    print(f"submit + pickle + unpickle + call, plain      {base:6.2f} us")
    print(f"the same with the multiprocessing instrumentor {added:6.2f} us  (+{added - base:.2f} us)")


if __name__ == "__main__":
    main()
