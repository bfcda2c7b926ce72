"""The example's Celery app: an order is processed, which enqueues a receipt, rendered in a thread pool.

No tracing code is needed: run the worker under logfire-run (see README.md) and every task is traced.
The one `logfire_run.span` below only adds a span of the app's own inside the thread pool.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from celery import Celery, Task

import logfire_run

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("tasks", broker=BROKER, backend=BROKER)
app.conf.broker_connection_retry_on_startup = True


@app.task
def process_order(order_id: int) -> str:
    """Charges the order, then hands the receipt to another task; returns that task's id."""
    return str(send_receipt.delay(order_id, pages=3).id)


@app.task
def send_receipt(order_id: int, pages: int) -> list[str]:
    def render(page: int) -> str:
        with logfire_run.span("render receipt page", order_id=order_id, page=page):
            return f"order {order_id}, page {page + 1} of {pages}"

    with ThreadPoolExecutor(max_workers=pages) as pool:
        return list(pool.map(render, range(pages)))


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def total(values: list[int]) -> int:
    return sum(values)


@app.task(bind=True, max_retries=3)
def flaky(self: Task, order_id: int) -> str:
    """Fails its first attempt: the retry stays in the same trace, as a child of the failed attempt."""
    if self.request.retries == 0:
        raise self.retry(countdown=1)
    return f"order {order_id} done after {self.request.retries} retry"
