"""Celery: task context is first-party, and every publish span ends; on top of OpenTelemetry's instrumentor.

OpenTelemetry's Celery instrumentor (entry point `celery`, opentelemetry-instrumentation-celery) does the
tracing: a PRODUCER span around each publish (the `before_task_publish`/`after_task_publish` signals)
that injects `traceparent` into the message headers, and a CONSUMER span around each run
(`task_prerun`/`task_postrun`) whose parent it extracts from the task request. This module is
registered under the same name, `celery`, in the `logfire_run_instrumentor` entry-point group, so it
activates on the same `import celery` and `--disable celery` turns both off. It corrects three things:

1. Trust. The instrumentor extracts with `opentelemetry.propagate.extract`, which the
   distributed_tracing policy treats as third-party: a worker running with `false` (often the same
   image as a public web tier) would start a new trace for every task, and one left at the default
   would warn. Task headers are written by the app's own producers, so that extraction runs inside
   `policy.first_party()`. With `celery_third_party` (`LOGFIRE_CELERY_THIRD_PARTY=1`), for brokers
   shared with producers you do not trust, it obeys the policy like inbound HTTP. The setting is read
   at each extraction, so `configure(celery_third_party=...)` applies to the next task.
2. Tasks published by name. For `send_task("name")`, or a signature of a task the producer does not
   import, the instrumentor finds no Task object to keep the publish span on, so `after_task_publish`
   cannot end it. In CPython it ends anyway, when the abandoned activation is garbage-collected at
   the end of `before_task_publish`: before the message is sent, so the span misses the publish
   itself; without reference counting (PyPy) it would stay open, and current, until collected. A
   stand-in object per unknown task name keeps the span until `after_task_publish` ends it.
3. Two runs of one task id at once. The instrumentor keeps a run's span on the Task object under
   the task id. A retry (`self.retry(countdown=0)`) is the same task id, and in a threads (or gevent)
   pool it can start before the attempt that published it has finished. The second run's entry then
   replaces the first's: the first attempt's `task_postrun` ends the second attempt's span, too early
   and from the wrong thread, the second's finds nothing ("no existing span found"), and the first
   span ends whenever its abandoned activation is collected, without its attributes. The signals of
   one run (prerun, failure, retry, postrun; before and after publish) all fire in the thread that
   runs it, so the key also names that thread.

How: these are module-level names the instrumentor looks up when a signal fires (`extract` in its
module; `retrieve_task_from_sender`, `attach_context`, `retrieve_context` and `detach_context` in its
`utils`), so they are replaced there and put back by `uninstrument()`; which of the two instrumentors
activates first does not matter. Where it stops: a release of the instrumentor without those names
is left as it is (one `--debug` line says so), and a publish that raises (broker down) never reaches
`after_task_publish`, so its span is not ended.

Flushing is not here: Celery's prefork children (billiard) leave through `os._exit`, which the
bootstrap makes flush in every forked child, recycled ones (`--max-tasks-per-child`) included.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from logfire_run.agent import report
from logfire_run.agent.policy import first_party

__all__ = ["CeleryContextInstrumentor"]

_OTEL_MODULE = "opentelemetry.instrumentation.celery"


class _UnregisteredTask:
    """Stands in for a task this process publishes by name but does not define.

    The instrumentor reads `name` for the span name and keeps its in-flight spans as an attribute of
    the task object; nothing else is asked of it.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<unregistered task {self.name!r}>"


class CeleryContextInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Patches OpenTelemetry's Celery instrumentor module; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        # BaseInstrumentor makes every instance the same object: keep the state of the first one.
        if hasattr(self, "_restore"):
            return
        self._restore: list[tuple[object, str, object]] = []
        # One stand-in per task name: the set of names an app publishes is finite.
        self._stand_ins: dict[str, _UnregisteredTask] = {}
        self._stand_ins_lock = threading.Lock()

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("celery >= 4.0, < 6.0",)

    def _instrument(self, **kwargs: Any) -> None:
        try:
            otel_celery = importlib.import_module(_OTEL_MODULE)
        except ImportError:
            report.debug("Celery: opentelemetry-instrumentation-celery is not installed; nothing to adjust")
            return
        utils: Any = getattr(otel_celery, "utils", None)
        names = (*_KEYED_BY_TASK_ID, "retrieve_task_from_sender")
        missing = [name for name in names if not callable(getattr(utils, name, None))]
        if not callable(getattr(otel_celery, "extract", None)):
            missing.append("extract")
        if missing:
            report.debug(
                f"Celery: {_OTEL_MODULE} has no {', '.join(missing)}; left as it is: task context "
                "follows the distributed_tracing policy"
            )
            return
        self._replace(otel_celery, "extract", _task_context_extract(otel_celery.extract))
        retrieve = utils.retrieve_task_from_sender
        self._replace(utils, "retrieve_task_from_sender", self._with_stand_ins(retrieve))
        for name in _KEYED_BY_TASK_ID:
            self._replace(utils, name, _keyed_by_thread(getattr(utils, name)))
        report.debug("Celery: task context is first-party; publish and run spans kept per thread")

    def _uninstrument(self, **kwargs: Any) -> None:
        while self._restore:
            owner, name, original = self._restore.pop()
            setattr(owner, name, original)

    def _replace(self, owner: object, name: str, replacement: object) -> None:
        self._restore.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    def _with_stand_ins(self, retrieve: Callable[[Any], Any]) -> Callable[[Any], Any]:
        stand_ins, lock = self._stand_ins, self._stand_ins_lock

        def retrieve_task_from_sender(kwargs: Any) -> Any:
            task = retrieve(kwargs)
            sender = kwargs.get("sender") if hasattr(kwargs, "get") else None
            if task is not None or not isinstance(sender, str) or not sender:
                return task
            # Publish signals name the task; this process does not define it (send_task by name).
            with lock:
                stand_in = stand_ins.get(sender)
                if stand_in is None:
                    stand_in = stand_ins[sender] = _UnregisteredTask(sender)
            return stand_in

        retrieve_task_from_sender.__wrapped__ = retrieve  # type: ignore[attr-defined]
        return retrieve_task_from_sender


#: The instrumentor's helpers that file a span under (task object, task id): (task, task_id, ...).
_KEYED_BY_TASK_ID = ("attach_context", "retrieve_context", "detach_context")


def _keyed_by_thread(helper: Callable[..., Any]) -> Callable[..., Any]:
    """The helper with (task id, thread) in place of the task id: runs of one id in two threads stay apart."""

    def keyed(task: Any, task_id: Any, *args: Any, **kwargs: Any) -> Any:
        return helper(task, (task_id, threading.get_ident()), *args, **kwargs)

    keyed.__wrapped__ = helper  # type: ignore[attr-defined]
    keyed.__name__ = getattr(helper, "__name__", "keyed")
    return keyed


def _task_context_extract(extract: Callable[..., Any]) -> Callable[..., Any]:
    """`extract` for task requests: first-party unless `celery_third_party` is set."""

    def extract_task_context(*args: Any, **kwargs: Any) -> Any:
        if _third_party():
            return extract(*args, **kwargs)
        with first_party():
            return extract(*args, **kwargs)

    extract_task_context.__wrapped__ = extract  # type: ignore[attr-defined]
    return extract_task_context


def _third_party() -> bool:
    from logfire_run.agent import bootstrap

    try:
        return bool(bootstrap.get_config().celery_third_party)
    except Exception:
        return False
