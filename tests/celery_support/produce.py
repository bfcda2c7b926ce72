"""Enqueue each scenario's tasks inside a root span of its own, wait for their results, print JSON.

    python produce.py SCENARIO[:N] [SCENARIO[:N] ...]

Prints {scenario: {"trace_id": ..., "results": ...}}: the trace id of the scenario's root span (empty
without the agent) and what its tasks returned, so a test can compare results with and without the
agent. Like the tasks, it uses only the OpenTelemetry API, never logfire-run.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

TIMEOUT = 30


def by_name() -> Any:
    # A producer that does not import the tasks: it knows them by name only.
    from celery import Celery

    app = Celery("producer", broker=os.environ["BROKER_URL"], backend=os.environ["BROKER_URL"])
    app.conf.update(task_default_queue=os.environ["CELERY_QUEUE"], broker_connection_retry_on_startup=True)
    return app.send_task("celery_tasks.add", (1, 2)).get(timeout=TIMEOUT)


def scenario(name: str, count: int) -> Any:
    if name == "send_task":
        return by_name()
    import celery_tasks as tasks
    from celery import chain, chord, group
    from celery.result import AsyncResult

    if name == "delay":
        return tasks.add.delay(2, 3).get(timeout=TIMEOUT)
    if name == "apply_async":
        return tasks.add.apply_async((4, 5), countdown=0).get(timeout=TIMEOUT)
    if name == "chain":
        return chain(tasks.add.s(1, 2), tasks.mul.s(10)).apply_async().get(timeout=TIMEOUT)
    if name == "group":
        return group(tasks.add.s(i, i) for i in range(3)).apply_async().get(timeout=TIMEOUT)
    if name == "chord":
        header = [tasks.add.s(1, 1), tasks.add.s(2, 2)]
        return chord(header, tasks.total.s()).apply_async().get(timeout=TIMEOUT)
    if name == "retry":
        return tasks.flaky.delay(7).get(timeout=TIMEOUT)
    if name == "children":
        child_id = tasks.parent.delay(count).get(timeout=TIMEOUT)
        return AsyncResult(child_id, app=tasks.app).get(timeout=TIMEOUT)
    if name == "fail":
        result = tasks.fail.delay(count)
        try:
            result.get(timeout=TIMEOUT)
        except ValueError as error:
            raised = repr(error)
        return {
            "state": result.state,
            "raised": raised,
            "result": repr(result.result),
            "traceback": result.traceback,
        }
    if name == "logs":
        return tasks.chatty.delay(count).get(timeout=TIMEOUT)
    if name == "pids":
        results = [tasks.pid.delay() for _ in range(count)]
        return [result.get(timeout=TIMEOUT) for result in results]
    raise SystemExit(f"unknown scenario {name}")


def main() -> None:
    from opentelemetry import trace

    tracer = trace.get_tracer("produce")
    output = {}
    for argument in sys.argv[1:]:
        name, _, count = argument.partition(":")
        # The OpenTelemetry API, as an app would use it: a no-op (trace id 0) without the agent.
        with tracer.start_as_current_span(f"produce {name}") as span:
            results = scenario(name, int(count or 3))
        trace_id = span.get_span_context().trace_id
        output[name] = {"trace_id": f"{trace_id:032x}" if trace_id else "", "results": results}
    print(json.dumps(output))


if __name__ == "__main__":
    main()
