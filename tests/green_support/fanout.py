"""A Flask app that fans each request out to greenlets, for gunicorn's gevent and eventlet workers.

    GREEN=gevent gunicorn -k gevent -w 1 fanout:app      (or GREEN=eventlet, -k eventlet)

`/fanout/N` logs one record, then runs N greenlets (half spawned one by one, half through a pool of
4), each of which opens a span with the OpenTelemetry API (a no-op without the agent) and logs one
record. The app's log goes to stdout, without times or process ids, so two runs can be compared byte
for byte. Nothing here knows about logfire-run.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from flask import Flask, jsonify
from opentelemetry import trace

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s", stream=sys.stdout)
log = logging.getLogger("fanout")
tracer = trace.get_tracer("fanout")
app = Flask(__name__)

if os.environ.get("GREEN") == "eventlet":
    import eventlet

    def fan_out(work: Callable[[int], int], count: int) -> list[int]:
        half = count // 2
        threads = [eventlet.spawn(work, number) for number in range(half)]
        pooled = list(eventlet.GreenPool(4).imap(work, range(half, count)))
        return [thread.wait() for thread in threads] + pooled

else:
    import gevent
    import gevent.pool

    def fan_out(work: Callable[[int], int], count: int) -> list[int]:
        half = count // 2
        greenlets = [gevent.spawn(work, number) for number in range(half)]
        pooled = gevent.pool.Pool(4).map(work, range(half, count))
        gevent.joinall(greenlets, raise_error=True)
        return [greenlet.value for greenlet in greenlets] + list(pooled)


def square(number: int) -> int:
    with tracer.start_as_current_span("greenlet work", attributes={"number": number}):
        log.info("greenlet %d", number)
        return number * number


@app.route("/fanout/<int:count>")
def fanout(count: int) -> object:
    log.info("fanning out to %d greenlets", count)
    return jsonify(fan_out(square, count))
