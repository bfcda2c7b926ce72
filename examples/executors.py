"""One span fanning out to a thread pool and to a process pool of each start method.

    logfire-run --exporter console python examples/executors.py

Nothing here propagates anything by hand: every "work" span, whichever thread or process runs it,
is a child of "fan out" in the same trace.
"""

import concurrent.futures as cf
import multiprocessing as mp
import os
import threading

import logfire_run


def work(item: int) -> str:
    with logfire_run.span("work", item=item):
        return f"{item} in pid {os.getpid()} ({threading.current_thread().name})"


if __name__ == "__main__":
    with logfire_run.span("fan out"):
        with cf.ThreadPoolExecutor(2) as threads:
            results = list(threads.map(work, range(4)))
        for method in ("fork", "spawn", "forkserver"):
            with cf.ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as processes:
                results += list(processes.map(work, range(4)))
    print("\n".join(results))
