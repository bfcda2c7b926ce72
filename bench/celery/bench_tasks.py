"""The bench's Celery app: one trivial task, so the figures are the tracing's cost, not the task's."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bench_tasks", broker=os.environ["BROKER_URL"], backend=os.environ["BROKER_URL"])
app.conf.update(task_default_queue=os.environ["CELERY_QUEUE"], broker_connection_retry_on_startup=True)


@app.task
def pid() -> int:
    return os.getpid()
