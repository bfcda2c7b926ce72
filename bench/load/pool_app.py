"""`python pool_app.py METHOD TASKS`: a process pool of that start method, a span per task, left by `with`."""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

import logfire_run


def work(number: int) -> int:
    with logfire_run.span("task", number=number):
        return number


if __name__ == "__main__":
    method, tasks = sys.argv[1], int(sys.argv[2])
    with (
        logfire_run.span("submitter"),
        ProcessPoolExecutor(4, mp_context=multiprocessing.get_context(method)) as pool,
    ):
        assert sum(pool.map(work, range(tasks))) == sum(range(tasks))
