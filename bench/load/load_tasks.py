"""Celery tasks for the load run: each parent task enqueues one child; the producer awaits both."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("load_tasks", broker=os.environ["BROKER_URL"], backend=os.environ["BROKER_URL"])
app.conf.update(task_default_queue=os.environ["CELERY_QUEUE"], broker_connection_retry_on_startup=True)


@app.task
def child(number: int) -> int:
    return number * 2


@app.task
def parent(number: int) -> str:
    return str(child.delay(number).id)
