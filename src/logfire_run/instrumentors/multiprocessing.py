"""multiprocessing: processes and pool tasks run as children of the span that started or submitted them.

What it patches:
    - `multiprocessing.process.BaseProcess.start` (wrapt), the one `start` of every `Process` class
      of every context: when a span is current, the process object carries the carrier of the current
      context (what `get_context()` returns) in an attribute. Spawn and forkserver pickle the object to
      the child, which makes the context current as it unpickles it, on its main thread, just before
      `run()`; so `Process` subclasses overriding `run()` are covered. A forked child inherits the
      starting thread's context and needs nothing. The attribute is removed again once `start()`
      returns. The worker processes of `multiprocessing.Pool` and `ProcessPoolExecutor` are started
      with an empty context instead (a forked one would otherwise keep the span of whoever created
      the pool as its own, under every task submitted outside any span).
    - `Pool.apply_async`, `Pool._map_async` (behind `map`, `map_async`, `starmap`, `starmap_async`),
      `Pool.imap` and `Pool.imap_unordered` (replaced by functions that call them, cheaper per task
      than wrapt; `apply` goes through `apply_async`): the user's callable travels inside
      `TaskInContext` with the submitter's carrier (its `traceparent` alone when that is all),
      captured in the submitting thread when the call is made. A worker unpickles it back into the
      callable itself and makes
      the context current (see `_executors_worker`): no frame of ours runs between the worker loop and
      the callable, so results, exceptions and their remote tracebacks are what they are without the
      agent, and an unpicklable argument fails with the same error.
    - `Pool.__init__` (wrapt): spawn and forkserver workers get the configuration the parent set in
      code (`logfire_run.configure()`) through a wrapped initializer, as process pool executors do.
    - `ThreadPool._setup_queues` (wrapt): its task queue becomes a `queue.SimpleQueue` whose `get`,
      in the worker thread, makes the submitter's context (the object itself, nothing serialized)
      current and hands the worker its task as submitted.

    Spans leave the workers with them: pool workers flush when they end (after the last task, a
    `maxtasksperchild` recycle, the sentinel of `close()`), on SIGTERM (what `terminate()` and the
    `with` block send) and on `os._exit`, all through the process state's exit flushes; a worker
    also has the state watch for a SIGTERM that comes just as it blocks (`exits.watch_sigterm`).

When it is enabled:
    When `multiprocessing` is first imported, once the SDK is up (standard-library targets wait for
    it); `Pool` and `ThreadPool` are patched when `multiprocessing.pool` is imported. It is a
    `logfire_run_instrumentor` entry point: `--disable multiprocessing` turns it off.

How it refuses:
    It needs nothing but the standard library and wrapt. A method missing from this Python's `Pool`
    is left alone (one `--debug` line); a carrier that cannot be read leaves the task as it was.

Where it stops:
    Queues, pipes and managers the app uses itself carry what the app puts in them (`get_context()`
    and `attach_context()` are there for that). A span still open in a worker when it is killed is
    lost, and so is everything in a worker killed by SIGKILL. See docs/multiprocessing.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.instrumentors._base import PatchingInstrumentor
from logfire_run.instrumentors._executors_worker import (
    CurrentContext,
    TaskInContext,
    WorkerSetup,
    compact_carrier,
    context_functions,
)

__all__ = ["MultiprocessingInstrumentor"]

# The attribute of a Process object that carries the starter's context to a spawned child.
_ATTRIBUTE = "_logfire_run_context"

# The task queue class of thread pools (see `_new_context_queue`), built when multiprocessing.pool is
# patched. Not patch state: it is what the patched `_setup_queues` makes, and `submit` recognises.
_queue_type: type | None = None


class MultiprocessingInstrumentor(PatchingInstrumentor):
    """Context propagation into multiprocessing processes and pools; see the module docstring."""

    targets = ("multiprocessing",)
    supported = ()
    options: ClassVar[dict[str, Any]] = {}
    supersedes = ()

    patches_name = "multiprocessing"

    def _instrument(self, **kwargs: Any) -> None:
        self.active = True
        _context.load()
        self.patch_on_import("multiprocessing.process", self._patch_process)
        self.patch_on_import("multiprocessing.pool", self._patch_pool)

    def _uninstrument(self, **kwargs: Any) -> None:
        self.active = False
        self._patches.restore()

    def _patch_process(self, module: Any) -> None:
        self._patches.wrap(module.BaseProcess, "start", _process_start)

    def _patch_pool(self, module: Any) -> None:
        global _queue_type
        pool = module.Pool
        if "__init__" in pool.__dict__:
            self._patches.wrap(pool, "__init__", _pool_init)
        for name in ("apply_async", "_map_async", "imap", "imap_unordered"):
            original = pool.__dict__.get(name)
            if callable(original):
                # A plain function rather than a wrapt wrapper: it runs once per task (or per map
                # call), and wrapt's binding costs about a microsecond per call.
                self._patches.replace(pool, name, _submitting(original))
            else:
                report.debug(f"multiprocessing: this Python's Pool has no {name}; left alone")
        thread_pool = getattr(module, "ThreadPool", None)
        if thread_pool is not None and "_setup_queues" in thread_pool.__dict__:
            if _queue_type is None:
                _queue_type = _new_context_queue(module)
            self._patches.wrap(thread_pool, "_setup_queues", _thread_pool_queues)


_context = CurrentContext()


_last_carrier: tuple[object, Any] = (None, {})


def _carrier() -> Any:
    """The current context as a compact carrier (see `compact_carrier`); reused while it is unchanged."""
    global _last_carrier
    current = _context.get()
    last = _last_carrier
    if last[0] is current:
        return last[1]
    from opentelemetry import propagate

    # Through the global propagator: the agent's policy (injection is never gated).
    carrier: dict[str, str] = {}
    propagate.inject(carrier, current)
    compact = compact_carrier(carrier)
    _last_carrier = (current, compact)
    return compact


# Processes


def _pool_worker_targets() -> tuple[object, ...]:
    targets = []
    for module_name, name in (
        ("multiprocessing.pool", "worker"),
        ("concurrent.futures.process", "_process_worker"),
    ):
        module = sys.modules.get(module_name)
        target = getattr(module, name, None) if module is not None else None
        if target is not None:
            targets.append(target)
    return tuple(targets)


def _process_start(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    target = getattr(instance, "_target", None)
    if target is not None and target in _pool_worker_targets():
        return _start_in_empty_context(wrapped, args, kwargs)
    try:
        carrier = _carrier()
    except Exception as error:
        report.problem(
            "multiprocessing:carrier", f"could not read the trace context for a child process ({error})"
        )
        carrier = {}
    if not carrier or not hasattr(instance, "__dict__"):
        return wrapped(*args, **kwargs)
    # Pickled with the object by spawn and forkserver (their start() pickles it before returning).
    instance.__dict__[_ATTRIBUTE] = TaskInContext(None, carrier)  # type: ignore[arg-type]
    try:
        return wrapped(*args, **kwargs)
    finally:
        instance.__dict__.pop(_ATTRIBUTE, None)


def _start_in_empty_context(wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    # A pool worker serves every submitter: a forked one must not keep its creator's span as its own.
    from opentelemetry.context import Context

    token = _context.set(Context())
    try:
        return wrapped(*args, **kwargs)
    finally:
        _context.reset(token)


# Pools


def _submitting(original: Callable[..., Any]) -> Callable[..., Any]:
    """apply_async, _map_async, imap, imap_unordered: `func` travels with the submitter's context."""
    thread_pool_type = sys.modules["multiprocessing.pool"].ThreadPool
    last_task = [TaskInContext(None, {})]  # type: ignore[arg-type]

    def submit(self: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
        task: Any
        try:
            if type(self._inqueue) is _queue_type:
                task = _InThread(func, _context.get())
            elif isinstance(self, thread_pool_type):
                task = func  # a thread pool set up before the instrumentation: left alone
            else:
                carrier = _carrier()
                last = last_task[0]
                if last.fn is func and last.carrier is carrier:
                    task = last  # the same callable from the same span (a loop of apply_async)
                else:
                    task = last_task[0] = TaskInContext(func, carrier)
        except Exception as error:
            report.problem(
                "multiprocessing:carrier", f"could not read the trace context for a pool ({error})"
            )
            task = func
        return original(self, task, *args, **kwargs)

    return submit


def _pool_init(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        arguments = _with_worker_setup(instance, args, kwargs)
    except Exception as error:
        report.problem(
            "multiprocessing:init", f"could not prepare pool workers ({type(error).__name__}: {error})"
        )
        arguments = None
    if arguments is None:
        return wrapped(*args, **kwargs)
    return wrapped(**arguments)


_INIT_PARAMETERS = ("processes", "initializer", "initargs", "maxtasksperchild", "context")


def _with_worker_setup(pool: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Pool's arguments with `WorkerSetup` as initializer, or None to leave them alone.

    As for process pool executors (`executors._with_worker_setup`): spawn and forkserver workers only,
    and only when the agent runs here; anything the constructor would refuse is left to it.
    """
    from multiprocessing.pool import ThreadPool

    if isinstance(pool, ThreadPool):
        return None
    if len(args) > len(_INIT_PARAMETERS) or any(name in kwargs for name in _INIT_PARAMETERS[: len(args)]):
        return None
    if set(kwargs) - set(_INIT_PARAMETERS):
        return None
    arguments = dict(zip(_INIT_PARAMETERS, args, strict=False))
    arguments.update(kwargs)
    initializer = arguments.get("initializer")
    if initializer is not None and not callable(initializer):
        return None
    from logfire_run.instrumentors.executors import _settings_for_workers

    settings = _settings_for_workers()
    if settings is None:
        return None
    context = arguments.get("context")
    if context is None:
        import multiprocessing

        context = multiprocessing.get_context()  # what Pool picks right after
    if context.get_start_method() == "fork":
        return None
    import pickle

    try:
        pickle.dumps(settings)
    except Exception as error:
        report.problem(
            "multiprocessing:config-pickle",
            "the configuration set with logfire_run.configure() cannot be sent to pool workers "
            f"({type(error).__name__}: {error}); spawn and forkserver workers of this process run "
            "with the configuration from the environment only",
        )
        return None
    arguments["initializer"] = WorkerSetup(settings, initializer, arguments.get("initargs", ()))
    arguments["initargs"] = ()
    return arguments


# Thread pools


class _InThread:
    """A thread pool task's callable and its submitter's context; unwrapped by the worker's queue."""

    __slots__ = ("context", "fn")

    def __init__(self, fn: Any, context: Any) -> None:
        self.fn = fn
        self.context = context

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Only reached if something other than the worker loop takes a task from the queue.
        return self.fn(*args, **kwargs)


def _thread_pool_queues(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    try:
        import queue

        if _queue_type is not None and type(instance._inqueue) is queue.SimpleQueue:
            instance._inqueue = _queue_type()
            instance._quick_put = instance._inqueue.put
    except Exception as error:
        report.problem("multiprocessing:thread-pool", f"could not prepare a thread pool ({error})")
    return result


def _new_context_queue(pool_module: Any) -> type:
    import queue

    from opentelemetry.context import Context

    attach = context_functions()[1]
    empty = Context()
    mapstar_like = tuple(
        function
        for function in (getattr(pool_module, name, None) for name in ("mapstar", "starmapstar"))
        if function is not None
    )

    class ContextQueue(queue.SimpleQueue):  # type: ignore[type-arg]
        """A thread pool's task queue: the worker that takes a task runs it in its submitter's context."""

        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            task = super().get(block, timeout)
            if not block or type(task) is not tuple or len(task) != 5:
                return task  # the sentinel, or the pool draining its queue at terminate()
            job, i, func, args, kwds = task
            if type(func) is _InThread:
                attach(func.context)
                return (job, i, func.fn, args, kwds)
            if func in mapstar_like and args and type(args[0]) is tuple and len(args[0]) == 2:
                inner = args[0][0]
                if type(inner) is _InThread:
                    attach(inner.context)
                    return (job, i, func, ((inner.fn, args[0][1]), *args[1:]), kwds)
            attach(empty)  # a task from before the instrumentation: at least not the previous one's
            return task

    return ContextQueue
