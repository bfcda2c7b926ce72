"""Enqueue a few tasks the ways Celery offers, and wait for their results.

    logfire-run --service-name producer python producer.py

Each block is one trace: the span around it (here `logfire_run.span`; in a web app, the request being
served) -> publish -> run -> whatever the task enqueues. Without an enclosing span, every publish
would start a trace of its own: a group's or a chord's tasks would not share one.
"""

from __future__ import annotations

from celery import chain, chord
from celery.result import AsyncResult
from tasks import add, app, flaky, process_order, total

import logfire_run

TIMEOUT = 60

with logfire_run.span("checkout", order_id=42):
    receipt_id = process_order.delay(42).get(timeout=TIMEOUT)
    print("receipt:", AsyncResult(receipt_id, app=app).get(timeout=TIMEOUT))
with logfire_run.span("chain"):
    print("chain:", chain(add.s(1, 2), add.s(10)).apply_async().get(timeout=TIMEOUT))
with logfire_run.span("chord"):
    print("chord:", chord([add.s(1, 1), add.s(2, 2)], total.s()).apply_async().get(timeout=TIMEOUT))
with logfire_run.span("send_task by name"):
    print("by name:", app.send_task("tasks.add", (20, 22)).get(timeout=TIMEOUT))
with logfire_run.span("retry"):
    print("retry:", flaky.delay(7).get(timeout=TIMEOUT))
