"""The process-pool side of the executor instrumentation: what travels to a worker, and what it does there.

Two picklable objects cross the process boundary:

- `TaskInContext` wraps the callable given to `ProcessPoolExecutor.submit` together with the
  submitter's carrier (`get_context()`). It does not survive unpickling: the worker rebuilds the
  user's own callable and, as a side effect, makes the carrier's context current on the thread that
  unpickled it, which is the worker's main thread, the one about to call it. No frame of ours sits
  between the worker loop and the user's callable, so return values, exceptions and the remote
  traceback text are exactly what they are without the agent. The context stays current until the
  next task is unpickled (the worker's own context comes back first), which is between tasks, where
  the worker loop runs no user code.
- `WorkerSetup` wraps the executor's initializer, once per worker: it applies the configuration
  the parent set in code (`logfire_run.configure()`) and the parent's service name, in workers that
  do not inherit the parent's memory (spawn, forkserver).

It also makes sure a worker's spans leave with it: a `multiprocessing.util.Finalize` flushes them when
the worker's `Process._bootstrap` ends (every start method runs finalizers there, before the
`os._exit` of forked workers), and `os._exit` called by a task flushes first too.

Kept light on purpose: a spawned worker imports this module to unpickle its first task, and must not
pay for the instrumentation framework (`opentelemetry.instrumentation` and wrapt cost ~200 ms).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from contextvars import Token
    from typing import Any

    from opentelemetry.context import Context

    # What a task carries: the carrier of `get_context()`, or its `traceparent` alone when that is all
    # it holds (`compact_carrier`: fewer bytes to pickle per task, and compared faster).
    Carrier = Mapping[str, str] | str

#: How long a worker waits for its spans to be exported when it ends.
WORKER_FLUSH_MILLIS = 5000


class TaskInContext:
    """The submitted callable and the submitter's trace context, as one picklable object.

    Only ever pickled, never called in the submitting process: unpickling yields the callable itself.
    Pickling the user's callable (or its arguments) fails exactly as without the agent, since the
    callable is pickled by the same pickler as one element of this object's reduce tuple.
    """

    __slots__ = ("carrier", "fn")

    def __init__(self, fn: Callable[..., Any], carrier: Carrier) -> None:
        self.fn = fn
        self.carrier = carrier

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return restore_in_worker, (self.fn, self.carrier)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Only reached if a pool runs tasks in the submitting process (a test double, say).
        return self.fn(*args, **kwargs)


def compact_carrier(carrier: Mapping[str, str]) -> Carrier:
    """The carrier as `TaskInContext` best carries it: its `traceparent` alone when that is all."""
    if len(carrier) == 1:
        traceparent = carrier.get("traceparent")
        if traceparent is not None:
            return traceparent
    return carrier


def restore_in_worker(fn: Callable[..., Any], carrier: Carrier) -> Callable[..., Any]:
    """Unpickling `TaskInContext`: make the carrier's context current and hand back the callable."""
    try:
        _worker.enter(carrier)
    except Exception as error:  # never the reason a task does not run
        _report(f"could not attach the submitter's trace context ({type(error).__name__}: {error})")
    return fn


class WorkerSetup:
    """The executor's initializer, wrapped: apply the parent's code-set configuration, then the user's."""

    __slots__ = ("initargs", "initializer", "settings")

    def __init__(
        self,
        settings: dict[str, Any],
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        self.settings = settings
        self.initializer = initializer
        self.initargs = initargs

    def __call__(self) -> None:
        try:
            _apply_parent_settings(self.settings)
        except Exception as error:
            _report(f"could not apply the parent's configuration ({type(error).__name__}: {error})")
        if self.initializer is not None:
            self.initializer(*self.initargs)


def _apply_parent_settings(settings: dict[str, Any]) -> None:
    from logfire_run.agent import bootstrap

    # configure() starts the agent here if the environment did not (an app configured in code only).
    bootstrap.configure(**settings)
    _worker.setup()


def context_functions() -> tuple[Callable[[], Context], Callable[[Context], Any], Callable[[Any], None]]:
    """get, attach and detach of the current OpenTelemetry context, with as few calls as possible.

    The default runtime context is one ContextVar; using it directly saves three Python calls per
    hop, which is most of the cost of a trivial task. Any other runtime context (OTEL_PYTHON_CONTEXT)
    goes through the public API.
    """
    from contextvars import ContextVar

    from opentelemetry import context

    variable = getattr(getattr(context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    if isinstance(variable, ContextVar):
        return variable.get, variable.set, variable.reset
    return context.get_current, context.attach, context.detach


class CurrentContext:
    """The current-context functions, chosen once per `instrument()` (see `context_functions`)."""

    get: Callable[[], Context]
    set: Callable[[Context], Any]
    reset: Callable[[Any], None]

    def load(self) -> None:
        self.get, self.set, self.reset = context_functions()


class _Worker:
    """Per-process state of a pool worker: whether flushing is arranged, and the attached context."""

    def __init__(self) -> None:
        self.pid = -1
        self.mode = ""  # "agent", "otel" (another SDK, e.g. opentelemetry-instrument) or "off"
        self.token: Token[Context] | None = None
        self.carrier: Carrier | None = None
        self.context: Context | None = None
        self.attach: Callable[[Context], Any] = _unset
        self.detach: Callable[[Any], None] = _unset

    def setup(self) -> str:
        if self.pid == os.getpid():
            return self.mode
        # First task in this process (a forked worker's copy was reset by `_forget_after_fork`).
        self.pid = os.getpid()
        self.token = None
        self.carrier = None
        self.context = None
        self.mode = _sdk_mode()
        if self.mode != "off":
            _, self.attach, self.detach = context_functions()
            _arrange_flush()
        return self.mode

    def enter(self, carrier: Carrier) -> None:
        if self.pid == -1:
            self.setup()
        if self.mode == "off":
            return
        if self.token is not None:
            # Back to the worker's own context before the next task's, so nothing leaks between tasks.
            token, self.token = self.token, None
            self.detach(token)
        if not carrier:
            return
        if carrier != self.carrier or self.context is None:
            # Consecutive tasks from one span carry equal carriers: extracted once.
            self.context = _extract(carrier, self.mode)
            self.carrier = carrier
        self.token = self.attach(self.context)


def _unset(*args: object) -> Any:
    raise RuntimeError("the worker's context functions are set up on its first task")


_worker = _Worker()


def _forget_after_fork() -> None:
    # A forked worker sets itself up on its first task (checked per task as `pid == -1`, cheaper
    # than a getpid() system call per task).
    _worker.pid = -1


def _register_forget_after_fork() -> None:
    from logfire_run.agent.process import fork

    fork.in_child(_forget_after_fork)


_register_forget_after_fork()


def _sdk_mode() -> str:
    from logfire_run.agent.process import state

    if state.started():
        return "agent" if state.start_sdk() else "off"
    # Not our agent: a worker of an app run by opentelemetry-instrument, or instrumented by hand.
    from opentelemetry import trace

    provider = getattr(trace, "_TRACER_PROVIDER", None)
    return "otel" if provider is not None else "off"


def _extract(carrier: Carrier, mode: str) -> Context:
    from opentelemetry.context import Context

    if isinstance(carrier, str):
        carrier = {"traceparent": carrier}

    if mode == "agent":
        from logfire_run.agent.process import state

        # First-party: the carrier was written by this app's own parent process.
        return state.extract(dict(carrier), third_party=False)
    from opentelemetry import propagate

    return propagate.extract(dict(carrier), Context())


def _arrange_flush() -> None:
    """Flush this worker's spans when it ends, whichever way it ends short of SIGKILL."""
    from multiprocessing import util

    # Process._bootstrap runs the finalizers for every start method, before a forked worker's os._exit.
    util.Finalize(None, _flush, exitpriority=0)
    from logfire_run.agent.process import exits, state

    if state.started():
        # A task that calls os._exit skips everything above; the state's exit flushes first (5 s max),
        # and so does SIGTERM (a broken pool terminates its workers, Pool.terminate() all of them),
        # even when it comes just as the worker blocks on its task queue.
        exits.install_exit_flushes()
        exits.watch_sigterm()


def _flush() -> None:
    try:
        from logfire_run.agent.process import exits, state

        if state.sdk() is not None:
            exits.exit_flush("pool worker exit")  # within the exit budget
        else:
            state.flush(WORKER_FLUSH_MILLIS)  # another SDK (opentelemetry-instrument): its own flush
    except Exception:
        pass


def _report(message: str) -> None:
    from logfire_run.agent import report

    report.problem(f"executors-worker:{message}", f"{message}; the task runs on without it")
