"""RQ: a job carries the context of the span that enqueued it, and each run of it is one CONSUMER span.

OpenTelemetry has no RQ instrumentor. This one follows RQ's life of a job: a producer enqueues it
(the job, with its `meta`, is saved in Redis), a worker dequeues it and runs it in a work horse that
it forks per job (and that leaves by `os._exit`), then RQ records the outcome in Redis.

What it patches:
    On `rq.queue.Queue`: `enqueue_job` and `schedule_job` (every `enqueue*` and `enqueue_at/in` ends
    in one of them) and `enqueue_many` each run in a PRODUCER span, `enqueue <function>`; the
    context of that span (`traceparent`, `tracestate`, `baggage`, as the configured propagators
    write them) goes into the job's `meta` under `logfire_run.context`, which RQ saves with the job
    (`create_job` puts the current context there first, for the jobs of `enqueue_many`).

    On the worker class that defines them (`rq.worker.BaseWorker`, `Worker` before RQ 2):
    - `perform_job`, which runs one job in the work horse (in the worker itself for SimpleWorker):
      a CONSUMER span named after the job's function, whose parent is the context in the job's
      `meta`. First-party, like Celery's task headers: extracted under `distributed_tracing=false`
      too, unless `rq_third_party` is set (`LOGFIRE_RQ_THIRD_PARTY=1`, for Redis servers shared with
      producers you do not trust), when it obeys the policy like inbound HTTP. The job runs with
      that span current, so its spans and its `logging` records (RQ's own "Job OK" and failure
      lines included) belong to it. The span carries the job id, queue, function, worker, the
      status RQ left the job in (`finished`, `failed`, `queued` or `scheduled` when it will be
      retried, `stopped`) and, for a run that raised, the exception (status ERROR, `error.type`).
    - `handle_exception`: records the exception RQ is handling on the run's span.
    - RQ's own bookkeeping around a run (`prepare_job_execution`, `handle_execution_ended`,
      `handle_job_success`, `handle_job_failure`, `handle_job_retry`) and the worker's own work
      outside jobs (`__init__`, `work`, `RQScheduler.work` of `--with-scheduler`, and the
      `is_suspended` check of `rq worker`) run under OpenTelemetry's
      `suppress_instrumentation`: with the redis instrumentor installed, the worker's long polls,
      heartbeats, registry sweeps and pipelines are not traces. `broker_spans`
      (`--broker-spans`, `LOGFIRE_BROKER_SPANS=1`) turns that off, as it does for Celery's broker.

When it is enabled:
    When the app first imports `rq`. `--disable rq` turns it off; `--rq-third-party` and
    `--broker-spans` change the two points above; both are read at each job.

How it refuses:
    An RQ without one of these methods keeps it as it is (one `--debug` line for each); the others
    are still patched.

Where it stops:
    A work horse killed from outside (a SIGKILL after `job_timeout + 60` s, `send_stop_job_command`)
    ends without ending its span: that run is lost, and RQ's own failure record is all there is.
    Flushing is not here: a work horse leaves through `os._exit`, which the agent makes flush within
    the exit budget (`agent/process/exits.py`), as for Celery's prefork children. Jobs run
    synchronously (`Queue(is_async=False)`) are inside the enqueue span, with no CONSUMER span.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.agent.process import state
from logfire_run.instrumentors._base import PatchingInstrumentor

__all__ = ["RQInstrumentor"]

#: The key of the job's `meta` that holds the enqueueing span's context (a dict of strings).
CARRIER_KEY = "logfire_run.context"
_QUEUE_SENDS = ("enqueue_job", "schedule_job", "enqueue_many")
_BOOKKEEPING = (
    "prepare_job_execution",
    "handle_execution_ended",
    "handle_job_success",
    "handle_job_failure",
    "handle_job_retry",
)
_WORKER_METHODS = ("__init__", "perform_job", "handle_exception", "work", *_BOOKKEEPING)

#: The run span of the job this thread is running (set by `perform_job`).
_run_span: contextvars.ContextVar[Any] = contextvars.ContextVar("logfire_run_rq_run", default=None)
#: True inside RQ's own bookkeeping: a retry it schedules keeps the job's original context.
_in_bookkeeping: contextvars.ContextVar[bool] = contextvars.ContextVar("logfire_run_rq_books", default=False)


class RQInstrumentor(PatchingInstrumentor):
    """Traces RQ jobs from their enqueue to each run; see the module docstring."""

    targets = ("rq",)
    supported = ("rq >= 1.10",)
    options: ClassVar[dict[str, Any]] = {}
    supersedes = ()

    patches_name = "rq"

    def _instrument(self, **kwargs: Any) -> None:
        self.active = True
        self.patch_on_import("rq.queue", self._patch_queue)
        self.patch_on_import("rq.worker", self._patch_worker)
        self.patch_on_import("rq.scheduler", self._patch_scheduler)
        self.patch_on_import("rq.cli.workers", self._patch_cli)

    def _uninstrument(self, **kwargs: Any) -> None:
        self.active = False
        self._patches.restore()

    def _patch_queue(self, module: Any) -> None:
        queue = getattr(module, "Queue", None)
        for name in _QUEUE_SENDS:
            if self._has(queue, name, module):
                self._patches.wrap(queue, name, _enqueue_many if name == "enqueue_many" else _enqueue)
        if self._has(queue, "create_job", module):
            self._patches.wrap(queue, "create_job", _create_job)

    def _patch_worker(self, module: Any) -> None:
        worker: Any = getattr(module, "Worker", None)
        wrappers: dict[str, Callable[..., Any]] = {
            "perform_job": _perform_job,
            "handle_exception": _handle_exception,
            "work": _housekeeping,
            "__init__": _housekeeping,
        }
        for name in _WORKER_METHODS:
            if self._has(worker, name, module):
                # The class that defines it (BaseWorker from RQ 2 on): subclasses all go through it.
                owner = next(cls for cls in worker.__mro__ if name in vars(cls))
                self._patches.wrap(owner, name, wrappers.get(name, _bookkeeping))

    def _patch_scheduler(self, module: Any) -> None:
        scheduler = getattr(module, "RQScheduler", None)
        if self._has(scheduler, "work", module):
            self._patches.wrap(scheduler, "work", _housekeeping)

    def _patch_cli(self, module: Any) -> None:
        # `rq worker` asks whether RQ is suspended before it makes the worker.
        if self._has(module, "is_suspended", module):
            self._patches.wrap(module, "is_suspended", _housekeeping)

    @staticmethod
    def _has(owner: Any, name: str, module: Any) -> bool:
        if owner is None or not callable(getattr(owner, name, None)):
            report.debug(f"rq: {module.__name__} has no {name}; left as it is")
            return False
        return True


# The producer side


def _tracer() -> Any:
    from opentelemetry import trace

    from logfire_run._version import __version__

    return trace.get_tracer("logfire_run.rq", __version__)


def _carry_context(job: Any) -> None:
    """Put the current context into the job's meta, which RQ saves with the job; never raises."""
    try:
        from opentelemetry import propagate

        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        meta = getattr(job, "meta", None)
        if carrier and isinstance(meta, dict):
            meta[CARRIER_KEY] = carrier
    except Exception as error:
        report.debug(f"rq: no context carried in job {getattr(job, 'id', '?')} ({error})")


def _create_job(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    job = wrapped(*args, **kwargs)
    if not _in_bookkeeping.get():
        _carry_context(job)
    return job


def _enqueue(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    job = args[0] if args else kwargs.get("job")
    if _in_bookkeeping.get() or job is None:  # a retry RQ schedules: the job keeps its own context
        return wrapped(*args, **kwargs)
    from opentelemetry.trace import SpanKind

    function = _function(job)
    attributes = {**_job_attributes(job, instance), "messaging.operation.type": "send"}
    attributes["messaging.operation.name"] = "enqueue" if wrapped.__name__ == "enqueue_job" else "schedule"
    with _tracer().start_as_current_span(
        f"enqueue {function}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        _carry_context(job)
        return wrapped(*args, **kwargs)


def _enqueue_many(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if _in_bookkeeping.get():
        return wrapped(*args, **kwargs)
    from opentelemetry.trace import SpanKind

    name = getattr(instance, "name", "")
    attributes = {
        "messaging.system": "rq",
        "messaging.destination.name": name,
        "messaging.operation.type": "send",
        "messaging.operation.name": "enqueue_many",
    }
    with _tracer().start_as_current_span(f"enqueue_many {name}", kind=SpanKind.PRODUCER) as span:
        span.set_attributes(attributes)
        jobs = wrapped(*args, **kwargs)
        if isinstance(jobs, list):
            span.set_attribute("messaging.batch.message_count", len(jobs))
        return jobs


# The worker side


def _perform_job(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    job = args[0] if args else kwargs.get("job")
    queue = args[1] if len(args) > 1 else kwargs.get("queue")
    try:
        span, context = _start_run(job, queue, instance)
    except Exception as error:  # never into the worker: the job runs untraced
        report.debug(f"rq: job {getattr(job, 'id', '?')} runs untraced ({error})")
        return wrapped(*args, **kwargs)
    from opentelemetry import context as context_api

    token = context_api.attach(context)
    run = _run_span.set(span)
    try:
        return wrapped(*args, **kwargs)
    finally:
        _run_span.reset(run)
        context_api.detach(token)
        _end_run(span, job)


def _start_run(job: Any, queue: Any, worker: Any) -> tuple[Any, Any]:
    """The run's span, started with the job's carried context as parent, and the context to run in.

    The context is built from the carrier alone: whatever the worker's loop had current (its
    suppression of housekeeping included) stays outside the job.
    """
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind

    meta = getattr(job, "meta", None)
    carrier = meta.get(CARRIER_KEY) if isinstance(meta, dict) else None
    if isinstance(carrier, dict) and carrier:
        third_party = bool(state.config().rq_third_party)
        parent = state.extract({str(k): str(v) for k, v in carrier.items()}, third_party=third_party)
    else:
        parent = Context()
    attributes = {**_job_attributes(job, queue), "messaging.operation.type": "process"}
    attributes["messaging.operation.name"] = "process"
    worker_name = getattr(worker, "name", None)
    if isinstance(worker_name, str):
        attributes["messaging.client.id"] = worker_name
    span = _tracer().start_span(_function(job), context=parent, kind=SpanKind.CONSUMER, attributes=attributes)
    return span, trace.set_span_in_context(span, parent)


def _end_run(span: Any, job: Any) -> None:
    try:
        status = _status(job)
        if status:
            span.set_attribute("rq.job.status", status)
            if status in ("queued", "scheduled"):
                span.set_attribute("rq.job.retried", True)
        retries_left = getattr(job, "retries_left", None)
        if isinstance(retries_left, int):
            span.set_attribute("rq.job.retries_left", retries_left)
    finally:
        span.end()


def _handle_exception(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    span = _run_span.get()
    error = args[2] if len(args) > 2 else None
    if span is not None and isinstance(error, BaseException):
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.set_attribute("error.type", type(error).__qualname__)
    return wrapped(*args, **kwargs)


def _bookkeeping(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    with _quiet(), _flag(_in_bookkeeping):
        return wrapped(*args, **kwargs)


def _housekeeping(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    with _quiet():
        return wrapped(*args, **kwargs)


@contextmanager
def _quiet() -> Iterator[None]:
    """RQ's own Redis traffic is not traced, unless broker_spans asks for it."""
    if state.config().broker_spans:
        yield
        return
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


@contextmanager
def _flag(variable: contextvars.ContextVar[bool]) -> Iterator[None]:
    token = variable.set(True)
    try:
        yield
    finally:
        variable.reset(token)


# What a job says about itself


def _function(job: Any) -> str:
    try:
        name = job.func_name
    except Exception:  # a job whose data cannot be read (RQ fails it with a DeserializationError)
        name = None
    return name if isinstance(name, str) and name else "rq.job"


def _job_attributes(job: Any, queue: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {"messaging.system": "rq", "code.function.name": _function(job)}
    job_id = getattr(job, "id", None)
    if isinstance(job_id, str):
        attributes["messaging.message.id"] = job_id
    name = getattr(queue, "name", None) or getattr(job, "origin", None)
    if isinstance(name, str):
        attributes["messaging.destination.name"] = name
    return attributes


def _status(job: Any) -> str | None:
    try:
        status = job.get_status(refresh=False)
    except Exception:
        return None
    value = getattr(status, "value", status)
    return str(value) if value else None
