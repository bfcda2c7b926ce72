"""Celery: task context is first-party, and every publish span ends; on top of OpenTelemetry's instrumentor.

OpenTelemetry's Celery instrumentor (opentelemetry-instrumentation-celery) does the tracing: a
PRODUCER span around each publish (the `before_task_publish`/`after_task_publish` signals) that
injects `traceparent` into the message headers, and a CONSUMER span around each run
(`task_prerun`/`task_postrun`) whose parent it extracts from the task request. This one supersedes
it under the same entry-point name, `celery`, corrects four things, then runs it.

What it patches:
    Module-level names OpenTelemetry's instrumentor looks up when a signal fires: `extract` in its
    module; `retrieve_task_from_sender`, `attach_context`, `retrieve_context` and `detach_context` in
    its `utils`. They fix:

    1. Trust. The instrumentor extracts with `opentelemetry.propagate.extract`, which the
       distributed_tracing policy treats as third-party: a worker running with `false` (often the
       same image as a public web tier) would start a new trace for every task, and one left at the
       default would warn. Task headers are written by the app's own producers, so that extraction
       runs inside `policy.first_party()`. With `celery_third_party` (`LOGFIRE_CELERY_THIRD_PARTY=1`),
       for brokers shared with producers you do not trust, it obeys the policy like inbound HTTP. The
       setting is read at each extraction, so `configure(celery_third_party=...)` applies to the
       next task.
    2. Tasks published by name. For `send_task("name")`, or a signature of a task the producer does
       not import, the instrumentor finds no Task object to keep the publish span on, so
       `after_task_publish` cannot end it: it would end when the abandoned activation is collected,
       before the message is sent. A stand-in object per unknown task name keeps the span until
       `after_task_publish` ends it.
    3. Two runs of one task id at once. The instrumentor keeps a run's span on the Task object under
       the task id. A retry (`self.retry(countdown=0)`) is the same task id, and in a threads (or
       gevent) pool it can start before the attempt that published it has finished, so the runs
       would end each other's spans. The signals of one run all fire in the thread that runs it, so
       the key also names that thread.

    4. Never raising into Celery. The instrumentor's signal handlers (`_trace_before_publish` and the
       five others) raised into Celery's signal dispatch, which logs an error for each: on every
       publish when `current_app` is unusable (Celery's own test helpers make it raise), because the
       task of a publish signal was looked up there. The task is looked up in the registries of the
       process's apps instead (none is finalized by it), and a handler that raises anyway is left
       untraced with one `--debug` line.

When it is enabled:
    When the app first imports `celery`, for the versions OpenTelemetry's instrumentor supports.
    `--disable celery` turns it off together with OpenTelemetry's (same name);
    `--celery-third-party` changes only point 1.

How it refuses:
    Without opentelemetry-instrumentation-celery, or with a release of it that lacks one of the names
    above, it changes nothing (one `--debug` line) and OpenTelemetry's instrumentor runs as it is (or
    not at all).

Where it stops:
    A publish that raises (broker down) never reaches `after_task_publish`, so its span is not ended.
    Flushing is not here: Celery's prefork children (billiard) leave through `os._exit`, which the
    process state makes flush in every forked child, recycled ones (`--max-tasks-per-child`) included.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.agent.process import state
from logfire_run.agent.propagation.policy import first_party
from logfire_run.instrumentors._base import (
    PatchingInstrumentor,
    run_opentelemetry_instrumentor,
    stop_opentelemetry_instrumentor,
)

__all__ = ["CeleryContextInstrumentor"]

_OTEL_MODULE = "opentelemetry.instrumentation.celery"
_OTEL_INSTRUMENTOR = "opentelemetry.instrumentation.celery:CeleryInstrumentor"


class _UnregisteredTask:
    """Stands in for a task this process publishes by name but does not define.

    The instrumentor reads `name` for the span name and keeps its in-flight spans as an attribute of
    the task object; nothing else is asked of it.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<unregistered task {self.name!r}>"


class CeleryContextInstrumentor(PatchingInstrumentor):
    """Corrects OpenTelemetry's Celery instrumentor, then runs it; see the module docstring."""

    targets = ("celery",)
    supported = ("celery >= 4.0, < 6.0",)
    options: ClassVar[dict[str, Any]] = {}
    supersedes = (_OTEL_INSTRUMENTOR,)

    patches_name = "celery"

    def _first_instance(self) -> None:
        # One stand-in per task name: the set of names an app publishes is finite.
        self._stand_ins: dict[str, _UnregisteredTask] = {}
        self._stand_ins_lock = threading.Lock()

    def _instrument(self, **kwargs: Any) -> None:
        self._correct()
        self._otel = run_opentelemetry_instrumentor(_OTEL_INSTRUMENTOR, **kwargs)

    def _uninstrument(self, **kwargs: Any) -> None:
        stop_opentelemetry_instrumentor(self._otel)
        self._otel = None
        self._patches.restore()

    def _correct(self) -> None:
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
        self._patches.replace(otel_celery, "extract", _task_context_extract(otel_celery.extract))
        instrumentor = getattr(otel_celery, "CeleryInstrumentor", None)
        for handler in _HANDLERS:
            if callable(getattr(instrumentor, handler, None)):
                self._patches.wrap(instrumentor, handler, _never_raises)
        retrieve = utils.retrieve_task_from_sender
        self._patches.replace(utils, "retrieve_task_from_sender", self._with_stand_ins(retrieve))
        for name in _KEYED_BY_TASK_ID:
            self._patches.replace(utils, name, _keyed_by_thread(getattr(utils, name)))
        report.debug("Celery: task context is first-party; publish and run spans kept per thread")

    def _with_stand_ins(self, retrieve: Callable[[Any], Any]) -> Callable[[Any], Any]:
        stand_ins, lock = self._stand_ins, self._stand_ins_lock

        def retrieve_task_from_sender(kwargs: Any) -> Any:
            sender = kwargs.get("sender") if hasattr(kwargs, "get") else None
            if not isinstance(sender, str) or not sender:
                return retrieve(kwargs)  # a Task object (retry, failure): no lookup
            # Publish signals name the task. OpenTelemetry looked it up in `current_app`, which may
            # not be usable (Celery's own test helpers make it raise, and print): the apps of this
            # process are searched instead, without finalizing any of them.
            task = _registered_task(sender)
            if task is not None:
                return task
            # This process does not define it (send_task by name).
            with lock:
                stand_in = stand_ins.get(sender)
                if stand_in is None:
                    stand_in = stand_ins[sender] = _UnregisteredTask(sender)
            return stand_in

        return retrieve_task_from_sender


def _registered_task(name: str) -> Any:
    """The task called `name` in an app of this process (its registry as it is), or None."""
    try:
        state_module: Any = importlib.import_module("celery._state")
        for app in list(state_module._get_active_apps()):
            task = getattr(app, "_tasks", {}).get(name)
            if task is not None:
                return task
    except Exception as error:
        report.debug(f"Celery: task {name!r} not looked up ({type(error).__name__}: {error})")
    return None


#: OpenTelemetry's signal handlers (methods of its instrumentor): an exception from one would reach
#: Celery's signal dispatch, which logs an error for it at every publish or run.
_HANDLERS = (
    "_trace_before_publish",
    "_trace_after_publish",
    "_trace_prerun",
    "_trace_postrun",
    "_trace_failure",
    "_trace_retry",
)


def _never_raises(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        return wrapped(*args, **kwargs)
    except Exception as error:
        report.debug(f"Celery: {wrapped.__name__} raised {type(error).__name__}: {error}; not traced")
        return None


#: The instrumentor's helpers that file a span under (task object, task id): (task, task_id, ...).
_KEYED_BY_TASK_ID = ("attach_context", "retrieve_context", "detach_context")


def _keyed_by_thread(helper: Callable[..., Any]) -> Callable[..., Any]:
    """The helper with (task id, thread) in place of the task id: runs of one id in two threads stay apart."""

    def keyed(task: Any, task_id: Any, *args: Any, **kwargs: Any) -> Any:
        return helper(task, (task_id, threading.get_ident()), *args, **kwargs)

    return keyed


def _task_context_extract(extract: Callable[..., Any]) -> Callable[..., Any]:
    """`extract` for task requests: first-party unless `celery_third_party` is set."""

    def extract_task_context(*args: Any, **kwargs: Any) -> Any:
        if _third_party():
            return extract(*args, **kwargs)
        with first_party():
            return extract(*args, **kwargs)

    return extract_task_context


def _third_party() -> bool:
    try:
        return bool(state.config().celery_third_party)
    except Exception:
        return False
