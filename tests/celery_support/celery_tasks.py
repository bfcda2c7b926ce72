"""The Celery app the tests run: one broker and result backend (a test Redis), one queue per worker.

Plain application code: nothing here knows about logfire-run (except one `configure()` call that a
test asks for through an environment variable). `child` opens a span of its own in a
thread pool with the OpenTelemetry API (a no-op without the agent), as an app's own code would.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

from celery import Celery, Task
from opentelemetry import trace

tracer = trace.get_tracer("celery_tasks")

if os.environ.get("APP_CONFIGURES_CELERY_THIRD_PARTY"):
    # An app that does not trust its broker, saying so in code rather than on the command line.
    import logfire_run

    logfire_run.configure(celery_third_party=True)

app = Celery("celery_tasks", broker=os.environ["BROKER_URL"], backend=os.environ["BROKER_URL"])
app.conf.update(
    task_default_queue=os.environ.get("CELERY_QUEUE", "celery"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def mul(x: int, factor: int) -> int:
    return x * factor


@app.task
def total(values: list[int]) -> int:
    return sum(values)


@app.task
def fail(n: int) -> None:
    raise ValueError(f"boom {n}")


@app.task(bind=True, max_retries=3)
def flaky(self: Task, n: int) -> str:
    retries: int = self.request.retries
    if retries == 0:
        raise self.retry(countdown=0)
    return f"{n} ok after {retries} retry"


@app.task
def parent(n: int) -> str:
    """Enqueues a child task and returns its id (waiting for it inside a task would block a worker)."""
    return str(child.delay(n).id)


@app.task
def child(n: int) -> list[int]:
    def square(value: int) -> int:
        with tracer.start_as_current_span("square in thread", attributes={"value": value}):
            return value * value

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(square, range(n)))


@app.task
def pid() -> int:
    return os.getpid()


#: A logger of the app at INFO (the worker's root logger is at WARNING): its records are written to
#: the worker's log and captured with the task's span.
chatty_log = logging.getLogger("celery_tasks.chatty")
chatty_log.setLevel(logging.INFO)


@app.task
def chatty(n: int) -> int:
    for number in range(n):
        chatty_log.info("record %d of %d", number + 1, n)
    return n
