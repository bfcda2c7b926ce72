"""Thread and process pools, and plain threads: work runs as a child of the span that handed it over.

What it patches:
    - `threading.Thread.start` (wrapt) records the starting thread's OpenTelemetry context, and the
      new thread runs with it (around `Thread._bootstrap_inner`, so `Timer` and subclasses
      overriding `run` are covered). A pool's own worker threads are left out: they serve every
      submitter, not the first one.
    - `concurrent.futures.thread._WorkItem` (replaced by a subclass, for speed): created by
      `ThreadPoolExecutor.submit` in the submitting thread, it records the context there, and its
      `run` makes it current in the worker and restores the worker's own afterwards. Everything that
      creates a work item is covered: `submit`, `map`, `loop.run_in_executor`, subclasses that
      override `submit` and call `super()`. The callable, its arguments, its return value and its
      exception (with its traceback) are never touched.
    - `ProcessPoolExecutor.submit` (wrapt) sends the callable to the worker inside `TaskInContext`
      with the carrier of the current context (what `get_context()` returns);
      `ProcessPoolExecutor.__init__` (wrapt) adds a once-per-worker initializer that brings
      configuration set in code into spawn and forkserver workers. See `_executors_worker` for the
      worker side and how spans get out of workers.
    - OpenTelemetry's own `threading` instrumentor, which does a subset of this (without process
      pools, without subclasses overriding `run`, and at about twice the cost per submit): the two
      never both propagate. The loader does not load it while this one is enabled (`supersedes`),
      and if it is instrumented anyway (`opentelemetry-instrument` loads both, or the app calls it),
      this one undoes its patches if it came first and makes its `instrument()` a no-op if it comes
      later. Its patches come back when this instrumentor is uninstrumented.

When it is enabled:
    When `threading` or `concurrent.futures` is first imported, once the SDK is up (standard-library
    targets wait for it). It is also an `opentelemetry_instrumentor` entry point, so
    `opentelemetry-instrument` loads it too. `--disable executors` turns it off.

How it refuses:
    It needs nothing but the standard library and wrapt; `concurrent.futures.process` is patched
    only if the app imports it (importing it costs multiprocessing, which an app that only uses
    threads, as asyncio does, should not pay for).

Where it stops:
    Executors that do not use `concurrent.futures`' work items or `ProcessPoolExecutor` (a
    hand-written pool over `queue.Queue`, `multiprocessing.Pool`) are not covered; `get_context()`
    and `attach_context()` are there for those. See docs/executors.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.agent.patching import applied
from logfire_run.agent.process import state
from logfire_run.instrumentors._base import PatchingInstrumentor
from logfire_run.instrumentors._executors_worker import CurrentContext, TaskInContext, WorkerSetup

__all__ = ["ExecutorInstrumentor"]

_OTEL_THREADING = "opentelemetry.instrumentation.threading"

# The attribute that carries a captured context on Thread and _WorkItem objects.
_ATTRIBUTE = "_logfire_run_context"


class ExecutorInstrumentor(PatchingInstrumentor):
    """Context propagation into threads, thread pools and process pools; see the module docstring."""

    targets = ("threading", "concurrent.futures")
    supported = ()
    options: ClassVar[dict[str, Any]] = {}
    supersedes = ("opentelemetry.instrumentation.threading:ThreadingInstrumentor",)

    patches_name = "executors"

    def _first_instance(self) -> None:
        #: OpenTelemetry's threading instrumentor was taken over (and is handed back at the end).
        self._neutralized = False

    def _instrument(self, **kwargs: Any) -> None:
        import threading

        self.active = True
        _fast_context.load()
        self.patch_on_import(_OTEL_THREADING, self._neutralize)
        self._patch_threading(threading)
        # Not imported here: importing concurrent.futures.process costs multiprocessing, which an
        # app that only uses threads (asyncio imports concurrent.futures) should not pay for.
        self.patch_on_import("concurrent.futures.thread", self._patch_thread_pool)
        self.patch_on_import("concurrent.futures.process", self._patch_process_pool)

    def _uninstrument(self, **kwargs: Any) -> None:
        self.active = False
        self._patches.restore()
        self._hand_back_to_otel_threading()

    def _patch_threading(self, threading: Any) -> None:
        self._patches.wrap(threading.Thread, "start", _thread_start)
        if not _THREAD_HAS_CONTEXT:
            self._patches.wrap(threading.Thread, "_bootstrap_inner", _thread_bootstrap)

    def _patch_thread_pool(self, module: Any) -> None:
        # The pool's worker threads take no context from whoever happened to start them.
        worker = getattr(module, "_worker", None)
        if worker is not None:
            _skip_targets.add(worker)
        if applied(module, "_WorkItem", self._patches.instrumentor):
            return
        self._patches.replace(module, "_WorkItem", _work_item_class(module._WorkItem))

    def _patch_process_pool(self, module: Any) -> None:
        self._patches.wrap(module.ProcessPoolExecutor, "__init__", _process_pool_init)
        self._patches.wrap(module.ProcessPoolExecutor, "submit", _process_submit)

    # OpenTelemetry's threading instrumentor

    def _neutralize(self, module: Any) -> None:
        instrumentor = getattr(module, "ThreadingInstrumentor", None)
        if instrumentor is None:
            return
        self._neutralized = True
        instance = instrumentor()
        if instance.is_instrumented_by_opentelemetry:
            instance._uninstrument()  # its patches come off; its flag stays, so a later instrument() is quiet
            _remove_leftover_timer_start()
        # Instance attributes shadow its methods: instrumenting it while this one is active does nothing.
        self._patches.replace(instance, "_instrument", _do_nothing, copy_metadata=False)
        self._patches.replace(instance, "_uninstrument", _do_nothing, copy_metadata=False)
        report.debug("OpenTelemetry's threading instrumentor is superseded by the executors instrumentor")

    def _hand_back_to_otel_threading(self) -> None:
        neutralized, self._neutralized = self._neutralized, False
        module = sys.modules.get(_OTEL_THREADING)
        instrumentor = getattr(module, "ThreadingInstrumentor", None)
        if instrumentor is None:
            return
        # Our shadowing attributes were taken off by `self._patches.restore()`.
        instance = instrumentor()
        if neutralized and instance.is_instrumented_by_opentelemetry:
            instance._instrument()  # it was asked for: it propagates from now on


def _innermost(function: object) -> object:
    while hasattr(function, "__wrapped__"):
        function = function.__wrapped__
    return function


_fast_context = CurrentContext()


# Threads


_skip_targets: set[object] = set()


# Python 3.14 gave Thread a `context`: the contextvars.Context its run() executes in, chosen in start().
_THREAD_HAS_CONTEXT = sys.version_info >= (3, 14)


def _thread_start(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    if getattr(instance, "_target", None) not in _skip_targets:
        captured = _fast_context.get()
        if not _THREAD_HAS_CONTEXT:
            instance.__dict__[_ATTRIBUTE] = captured
        elif getattr(instance, "_context", 0) is None and not getattr(sys.flags, "thread_inherit_context", 0):
            import contextvars

            # The thread would run in an empty Context (an explicit `context=` is left alone, and with
            # thread_inherit_context it copies the starter's, span included): give it one holding the span.
            fresh = contextvars.Context()
            fresh.run(_fast_context.set, captured)
            instance._context = fresh
    return wrapped(*args, **kwargs)


def _thread_bootstrap(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    captured = instance.__dict__.pop(_ATTRIBUTE, None)
    if captured is None:
        return wrapped(*args, **kwargs)
    token = _fast_context.set(captured)
    try:
        return wrapped(*args, **kwargs)
    finally:
        _fast_context.reset(token)


# Thread pools


def _work_item_class(original: Any) -> Any:
    """`concurrent.futures.thread._WorkItem` made to carry the submitting thread's context."""
    get, attach, detach = _fast_context.get, _fast_context.set, _fast_context.reset
    original_init, original_run = original.__init__, original.run

    # This one is a subclass put in the module's `_WorkItem` name (which `submit` looks up on every
    # call) rather than two wrapt wrappers: wrapt binds a wrapper object on every call of a wrapped
    # method, about 1.2 us each here, which alone would exceed the 2 us budget of a thread hop.
    # Capturing happens in __init__, in the submitting thread: submit(), map() and run_in_executor()
    # all come through there. run() resets by token: whatever the task attached and left behind goes
    # too, so a reused worker starts its next task from its own context; the task's exception is
    # caught and stored by the original run(), so no frame of ours is in its traceback.
    if _parameters(original_init) == ("self", "future", "fn", "args", "kwargs") and _parameters(
        original_run
    ) == ("self",):
        # Python 3.10 to 3.13: the same signatures, without packing *args (most of the cost of the override).
        class WorkItem(original):  # type: ignore[misc]
            def __init__(self, future: Any, fn: Any, args: Any, kwargs: Any) -> None:
                original_init(self, future, fn, args, kwargs)
                self._logfire_run_context = get()

            def run(self) -> Any:
                token = attach(self._logfire_run_context)
                try:
                    return original_run(self)
                finally:
                    detach(token)

    else:

        class WorkItem(original):  # type: ignore[misc,no-redef]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                original_init(self, *args, **kwargs)
                self._logfire_run_context = get()

            def run(self, *args: Any, **kwargs: Any) -> Any:
                token = attach(self._logfire_run_context)
                try:
                    return original_run(self, *args, **kwargs)
                finally:
                    detach(token)

    return WorkItem


def _parameters(function: Any) -> tuple[str, ...]:
    code = getattr(function, "__code__", None)
    return tuple(code.co_varnames[: code.co_argcount]) if code is not None else ()


# Process pools


_last_carrier: tuple[object, dict[str, str]] = (None, {})


def _carrier() -> dict[str, str]:
    """The current context as a carrier, as `get_context()` writes it; reused while it is unchanged."""
    global _last_carrier
    current = _fast_context.get()
    last = _last_carrier
    if last[0] is current:
        return last[1]
    from opentelemetry import propagate

    # Through the global propagator, which is the agent's policy when the agent runs (injection is
    # never gated) and OpenTelemetry's own under opentelemetry-instrument.
    carrier: dict[str, str] = {}
    propagate.inject(carrier, current)
    _last_carrier = (current, carrier)
    return carrier


def _process_submit(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    if not args:
        return wrapped(*args, **kwargs)  # the original's own TypeError
    try:
        task = TaskInContext(args[0], _carrier())
    except Exception as error:
        report.problem("executors:carrier", f"could not read the trace context for a process pool ({error})")
        return wrapped(*args, **kwargs)
    return wrapped(task, *args[1:], **kwargs)


_INIT_PARAMETERS = ("max_workers", "mp_context", "initializer", "initargs")


def _process_pool_init(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        arguments = _with_worker_setup(args, kwargs)
    except Exception as error:
        report.problem(
            "executors:init", f"could not prepare process pool workers ({type(error).__name__}: {error})"
        )
        arguments = None
    if arguments is None:
        return wrapped(*args, **kwargs)
    return wrapped(**arguments)


def _with_worker_setup(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The constructor's arguments with `WorkerSetup` as initializer, or None to leave them alone.

    Only for start methods whose workers do not inherit the parent's memory (spawn, forkserver),
    and only when the agent runs here and its children are meant to be traced. Anything the
    constructor would refuse is left for it to refuse, with its own message.
    """
    if len(args) > len(_INIT_PARAMETERS) or any(name in kwargs for name in _INIT_PARAMETERS[: len(args)]):
        return None
    arguments = dict(zip(_INIT_PARAMETERS, args, strict=False))
    arguments.update(kwargs)
    initializer = arguments.get("initializer")
    if initializer is not None and not callable(initializer):
        return None
    settings = _settings_for_workers()
    if settings is None:
        return None
    mp_context = arguments.get("mp_context")
    if mp_context is None:
        import multiprocessing

        # The executor picks the same default context right after, so asking for it changes nothing.
        mp_context = multiprocessing.get_context()
    if mp_context.get_start_method() == "fork":
        return None  # forked workers have the parent's agent and configuration already
    import pickle

    try:
        pickle.dumps(settings)
    except Exception as error:
        report.problem(
            "executors:config-pickle",
            "the configuration set with logfire_run.configure() cannot be sent to process pool workers "
            f"({type(error).__name__}: {error}); spawn and forkserver workers of this process run "
            "with the configuration from the environment only",
        )
        return None
    arguments["initializer"] = WorkerSetup(settings, initializer, arguments.get("initargs", ()))
    arguments["initargs"] = ()
    return arguments


def _settings_for_workers() -> dict[str, Any] | None:
    if state.sdk() is None:
        return None  # not our agent (opentelemetry-instrument): workers rely on the environment
    config = state.config()
    if not config.inherit:
        return None
    settings = {
        name: getattr(config, name) for name, source in config.sources.items() if source == "configure()"
    }
    # A spawned worker's own default name would be the interpreter's ("python"): it is this service.
    settings.setdefault("service_name", config.resolved_service_name())
    return settings


# OpenTelemetry's threading instrumentor


def _remove_leftover_timer_start() -> None:
    # Its Timer.start wrapper wraps its own Thread.start wrapper, and its uninstrument puts back only
    # the latter, as Timer's own attribute: left there, it would hide the real Thread.start from Timer.
    import threading

    leftover = threading.Timer.__dict__.get("start")
    if leftover is not None and _innermost(leftover) is _innermost(threading.Thread.__dict__["start"]):
        del threading.Timer.start


def _do_nothing(**kwargs: Any) -> None:
    pass
