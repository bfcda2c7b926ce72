"""The demo's Celery task, run by `celery -A tasks worker` (broker and backend: DEMO_BROKER_URL)."""

from __future__ import annotations

import os

from celery import Celery

broker = os.environ.get("DEMO_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("tasks", broker=broker, backend=broker)
app.conf.broker_connection_retry_on_startup = True


@app.task
def send_receipt(item: str, price: float) -> str:
    return f"receipt for {item}: {price:.2f}"
