"""The propagation hop alone, in one thread: what each instrumentation adds per task, without the noise.

    logfire-run --exporter none python bench/executors/hop.py [--rounds 7] [--tasks 100000]

End-to-end pool timings (run.py) include a thread switch or a process round trip per task, which on a
shared machine vary by more than the cost being measured. Here the same work is done in one thread:

- thread pool: `submit` on a ThreadPoolExecutor that starts no worker, then every queued work item
  is run right here: the submitting side and the worker side of each task, back to back;
- process pool: what submit and the worker do with a task: the submit wrapper, pickling the call item
  as multiprocessing does, unpickling it, calling it (no pipe, no other process).

Within one interpreter under logfire-run, rounds alternate between: no instrumentation, OpenTelemetry's
threading instrumentor, and the executors instrumentor. Inside one span, as in real use. Times are
this thread's CPU time (`time.thread_time`), so other processes on the machine barely move them.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import _CallItem  # type: ignore[attr-defined]
from multiprocessing.reduction import ForkingPickler

from opentelemetry import trace
from opentelemetry.instrumentation.threading import ThreadingInstrumentor

from logfire_run.instrumentors import executors


def noop() -> None:
    return None


class Queued(ThreadPoolExecutor):
    """Starts no worker thread: submitted items wait in the queue until this thread runs them."""

    def _adjust_thread_count(self) -> None:
        pass


def thread_hop(tasks: int) -> float:
    pool = Queued(1)
    work_queue = pool._work_queue
    start = time.thread_time()
    for _ in range(tasks):
        pool.submit(noop)
    while True:
        try:
            item = work_queue.get_nowait()
        except queue.Empty:
            break
        item.run()
    return (time.thread_time() - start) / tasks * 1e6


def process_hop(tasks: int, instrumented: bool) -> float:
    def submit_as_is(fn: object, *args: object, **kwargs: object) -> object:
        return fn

    start = time.thread_time()
    for work_id in range(tasks):
        fn = executors._process_submit(submit_as_is, None, (noop,), {}) if instrumented else noop
        item = ForkingPickler.loads(bytes(ForkingPickler.dumps(_CallItem(work_id, fn, (), {}))))
        item.fn(*item.args, **item.kwargs)
    return (time.thread_time() - start) / tasks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=100_000)
    options = parser.parse_args()
    tracer = trace.get_tracer("bench")  # the agent's SDK, and with it its executors instrumentor, start here
    ours, theirs = executors.ExecutorInstrumentor(), ThreadingInstrumentor()
    if not ours.is_instrumented_by_opentelemetry:
        sys.exit("run this under logfire-run, with the executors instrumentor enabled")
    results: dict[str, dict[str, list[float]]] = {"thread": {}, "process": {}}
    with tracer.start_as_current_span("bench"):
        for _ in range(options.rounds):
            ours.uninstrument()
            results["thread"].setdefault("none", []).append(thread_hop(options.tasks))
            results["process"].setdefault("none", []).append(process_hop(options.tasks // 10, False))
            theirs.instrument()
            results["thread"].setdefault("otel threading", []).append(thread_hop(options.tasks))
            theirs.uninstrument()
            ours.instrument()
            results["thread"].setdefault("executors", []).append(thread_hop(options.tasks))
            results["process"].setdefault("executors", []).append(process_hop(options.tasks // 10, True))
    python = sys.version.split()[0]
    print(f"median of {options.rounds} interleaved rounds, one thread, CPU time; Python {python}")
    print(f"{'pool':<10}{'instrumentation':<18}{'us/task':>9}{'added us':>10}")
    for pool, by_mode in results.items():
        base = statistics.median(by_mode["none"])
        for mode, values in by_mode.items():
            value = statistics.median(values)
            print(f"{pool:<10}{mode:<18}{value:>9.2f}{value - base:>+10.2f}")


if __name__ == "__main__":
    main()
