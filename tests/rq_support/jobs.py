"""The jobs the RQ tests enqueue. Plain application code: nothing here knows about logfire-run.

`welcome` logs and opens a span of its own with the OpenTelemetry API (a no-op without the agent), as
an app's own code would; `flaky` fails until it has been attempted `times` times (counted in Redis).
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from redis import Redis

log = logging.getLogger("jobs")
tracer = trace.get_tracer("jobs")


def welcome(user: str) -> str:
    log.warning("welcoming %s", user)
    with tracer.start_as_current_span("render welcome mail"):
        return f"hello {user}"


def fail(reason: str) -> None:
    raise ValueError(reason)


def flaky(key: str, times: int) -> str:
    attempts = Redis.from_url(os.environ["REDIS_URL"]).incr(key)
    if attempts < times:
        raise ConnectionError(f"attempt {attempts} of {times}")
    return f"done after {attempts}"
