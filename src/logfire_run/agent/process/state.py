"""The process state: the one owner of this process's config, policy, SDK lifecycle, deferred work and
exit flushes.

Everything that exists once per process and lives as long as it does is here, and only here: other
modules ask through these functions and never keep a copy.

- The config: resolved from the environment on first use; `configure()` is its one writer after that.
- The policy: one `DistributedTracingPolicy`, built from the config; its mode is written here only.
- The SDK lifecycle: off -> starting -> on | failed | disabled. `start_sdk()` moves it;
  `when_sdk_ready(action)` is the one way to run something that needs the SDK: now if it is up,
  else as soon as it comes up (never, if it cannot).
- The exit flushes: at interpreter exit, on SIGTERM left at its default, and on `os._exit`, all
  within one exit budget per process.

First-party extraction (`extract(carrier, third_party=False)`) needs only OpenTelemetry's API: it
works the same whether the SDK started, failed or is still off.

Stdlib only at import time, like the bootstrap that imports it in every process. Nothing here raises
into the app: failures are reported once on stderr (`report`) and the app runs on.
"""

from __future__ import annotations

import _thread
import os

from logfire_run.agent import config as config_module
from logfire_run.agent import importhooks, report

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any, NoReturn

    from opentelemetry.context import Context

    from logfire_run.agent.config import Config
    from logfire_run.agent.errors import ConfigError
    from logfire_run.agent.process.sdk import TracingSdk
    from logfire_run.agent.propagation.policy import DistributedTracingPolicy

#: What the SDK's set-up imports besides OpenTelemetry (the OTLP exporters' HTTP and gRPC stacks).
_SETUP_IMPORTS = ("requests", "urllib3", "grpc", "google.protobuf")

_lock = _thread.RLock()
_started_via: str | None = None
_config: Config | None = None
_policy: DistributedTracingPolicy | None = None
_sdk: TracingSdk | None = None
_sdk_state = "off"  # off -> starting -> on | failed | disabled
_deferred: list[Callable[[], object]] = []


# The agent in this process


def mark_started(via: str) -> bool:
    """Record that the agent starts in this process (`via` says who asked); False if it already had."""
    global _started_via
    with _lock:
        if _started_via is not None:
            return False
        _started_via = via
        return True


def started() -> bool:
    """Whether the agent was started in this process (or inherited running through fork)."""
    return _started_via is not None


def started_via() -> str | None:
    return _started_via


# Config and policy


def config() -> Config:
    """The process's one config object, resolved from the environment on first use."""
    global _config
    with _lock:
        if _config is None:
            resolved, errors = config_module.resolve(os.environ)
            report.debug_enabled = resolved.debug
            for error in errors:
                _set_aside(error)
            _config = resolved
        return _config


def _set_aside(error: ConfigError) -> None:
    """Report a value that is not accepted, and keep OpenTelemetry from reading it.

    OpenTelemetry reads its own variables itself (and raises on some bad ones, deep in set-up), so the
    variable is rewritten with what is usable or removed: its readers, here and in the children
    started afterwards, see the value the agent uses. The agent's own variables are left as they are.
    """
    variable = error.variable
    if error.usable_raw:
        report.problem(f"config:{error}", f"{error}; using {variable}={error.usable_raw}")
    else:
        report.problem(f"config:{error}", f"{error}; using the default")
    if variable and variable.startswith("OTEL_"):
        if error.usable_raw:
            os.environ[variable] = error.usable_raw
        else:
            os.environ.pop(variable, None)


def policy() -> DistributedTracingPolicy:
    """The process's one `DistributedTracingPolicy` (needs only the OpenTelemetry API)."""
    global _policy
    with _lock:
        if _policy is None:
            from logfire_run.agent.propagation.policy import new_policy

            _policy = new_policy(config().distributed_tracing)
        return _policy


def install_policy() -> None:
    """Make the policy the global propagator (once; later propagators are wrapped, never nested)."""
    from logfire_run.agent.propagation.policy import install_as_global

    install_as_global(policy())


def configure(settings: Mapping[str, object]) -> None:
    """Apply `configure()` keywords: the config, then whatever each changed setting applies to."""
    current = config()
    changed, errors = config_module.update(current, settings, "configure()")
    for error in errors:
        report.problem(f"configure:{error}", f"{error}; the setting is left as it was")
    report.debug_enabled = current.debug
    applies = {setting.applies for setting in changed if setting.applies}
    if "policy" in applies and _policy is not None:
        _policy.mode = current.distributed_tracing  # the policy's one writer
    if "logs" in applies:
        from logfire_run.agent.export import log_capture

        log_capture.set_level(current.log_level)
    if _sdk is not None:
        _sdk.apply(applies)


def extract(carrier: Mapping[str, str], *, third_party: bool) -> Context:
    """The context in `carrier`: first-party (always extracted) or third-party (the policy decides).

    Through OpenTelemetry's global propagator, which is the policy once the agent runs here; the
    SDK's state does not matter.
    """
    from opentelemetry import propagate
    from opentelemetry.context import Context

    from logfire_run.agent.propagation.policy import first_party

    if started() and not sdk_disabled():
        install_policy()
    if third_party:
        return propagate.extract(carrier, Context())
    with first_party():
        return propagate.extract(carrier, Context())


# The SDK lifecycle and deferred work


def sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def sdk() -> TracingSdk | None:
    """The SDK objects of this process once they are set up, else None."""
    return _sdk


def sdk_running() -> bool:
    return _sdk_state == "on"


def sdk_state() -> str:
    """off, starting, on, failed or disabled."""
    return _sdk_state


def start_sdk() -> bool:
    """Set the OpenTelemetry SDK up if it is not yet; False when tracing is off, failed or must wait.

    It must wait (False, nothing changed) while an OpenTelemetry module is half-imported (the app
    imported `opentelemetry.sdk.trace`, which imported `opentelemetry.trace`, whose hook called us):
    setting up then would read half-initialized modules. The next trigger tries again. So it must
    while a library that the set-up imports is half-imported (requests imports urllib.request, whose
    instrumentor starts the SDK, whose OTLP exporter imports requests): that library's own hook, at
    the end of its import, is the next trigger.
    """
    global _sdk_state, _sdk
    if _sdk_state == "on":
        return True
    with _lock:
        if _sdk_state != "off":
            # "starting": our own imports during setup fired a hook; the SDK is not ready yet.
            return _sdk_state == "on"
        if sdk_disabled():
            _sdk_state = "disabled"
            _deferred.clear()
            return False
        if importhooks.initializing("opentelemetry", but="opentelemetry.propagate") or any(
            importhooks.initializing(name) for name in _SETUP_IMPORTS
        ):
            return False
        _sdk_state = "starting"
        try:
            from logfire_run.agent.process.sdk import TracingSdk

            tracing = TracingSdk(config(), policy())
            # The batch processors' threads start here: they must not be where SIGTERM lands.
            with _SigtermBlocked():
                tracing.install()
            _join_inherited_context()
            _sdk = tracing
            _sdk_state = "on"
        except Exception as error:
            _sdk_state = "failed"
            _deferred.clear()
            report.problem(
                "sdk", f"OpenTelemetry could not be set up ({type(error).__name__}: {error}); no spans"
            )
            return False
    install_exit_flushes()
    _install_fork_without_our_warning()
    _run_deferred()
    return True


# The context this process was started with. OpenTelemetry's env-carriers spec: a child reads
# TRACEPARENT, TRACESTATE and BAGGAGE at start-up. It is the parent process's word, so it is
# first-party (no policy warning, honoured under distributed_tracing=False); `env_context=False`
# ignores it. It becomes the value of the current context wherever nothing is attached (every
# thread, before and after every span), so each root span of the process is its child, while an
# explicit context (a server span's extracted headers, `attach_context()`) is left alone.

_inherited_context: Context | None = None


def inherited_context() -> Context | None:
    """The context joined from this process's environment, or None (none there, ignored, malformed)."""
    return _inherited_context


def _join_inherited_context() -> None:
    global _inherited_context
    from logfire_run.agent.propagation import env_carrier

    carrier = env_carrier.inherited_carrier()
    if not carrier:
        return
    if not config().env_context:
        report.debug("TRACEPARENT in the environment is ignored (env_context is off)")
        return
    try:
        joined = _with_default_context(extract(carrier, third_party=False))
    except Exception as error:
        report.debug(f"the context in the environment is ignored ({type(error).__name__}: {error})")
        return
    if joined is not None:
        _inherited_context = joined


def _with_default_context(extracted: Context) -> Context | None:
    """Make `extracted` the current context wherever none is attached; None when it cannot be."""
    import contextvars

    from opentelemetry import context as context_api
    from opentelemetry import trace

    span_context = trace.get_current_span(extracted).get_span_context()
    if not span_context.is_valid:
        shown = {name: value[:80] for name, value in _inherited_items()}
        report.debug(f"no valid trace context in the environment ({shown}); ignored")
        return None
    runtime = getattr(context_api, "_RUNTIME_CONTEXT", None)
    get_current = getattr(runtime, "get_current", None)
    if runtime is None or get_current is None or isinstance(runtime, _InheritedDefault):
        return None
    # The value the runtime context has where nothing was attached: a fresh contextvars.Context
    # has no value set, so this is the ContextVar's default, the same object in every thread.
    unset = contextvars.Context().run(get_current)
    if contextvars.Context().run(get_current) is not unset:
        report.debug(f"the runtime context {type(runtime).__name__} has no shared default; not joined")
        return None
    context_api._RUNTIME_CONTEXT = _InheritedDefault(runtime, unset, extracted)  # type: ignore[assignment]
    report.debug(
        f"root spans are children of trace {span_context.trace_id:032x} span {span_context.span_id:016x} "
        "(TRACEPARENT in the environment)"
    )
    return extracted


def _inherited_items() -> list[tuple[str, str]]:
    from logfire_run.agent.propagation import env_carrier

    return list(env_carrier.inherited.items())


class _InheritedDefault:
    """OpenTelemetry's runtime context, whose value where nothing is attached is the inherited one.

    Tokens and attached contexts are the wrapped runtime's own: attach and detach pass through, so
    nothing attached before or after the switch is lost.
    """

    def __init__(self, runtime: Any, unset: Context, inherited: Context) -> None:
        self._runtime = runtime
        self._unset = unset
        self._inherited = inherited

    def get_current(self) -> Context:
        current: Context = self._runtime.get_current()
        return self._inherited if current is self._unset else current

    def attach(self, context: Context) -> object:
        return self._runtime.attach(context)

    def detach(self, token: object) -> None:
        self._runtime.detach(token)


# Python 3.12+ warns at os.fork() when the process has other threads (a DeprecationWarning shown for
# forks made in __main__). Once the SDK is up the agent has its own (the batch processors'), so an app
# that is single-threaded would get a warning it never got without the agent. os.fork is wrapped: when
# the only other threads are the agent's, that warning is not shown; when the app has threads of its
# own, the same warning is issued again from the app's line, so its filters see what they always saw.

_AGENT_THREAD_PREFIXES = ("OtelBatch", "logfire-run")


def _install_fork_without_our_warning() -> None:
    import sys

    if sys.version_info < (3, 12) or not hasattr(os, "fork") or getattr(os.fork, "_logfire_run", False):
        return
    real_fork = os.fork

    def fork() -> int:
        import threading
        import warnings

        current = threading.current_thread()
        others = [thread for thread in threading.enumerate() if thread is not current]
        if not others:
            return real_fork()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DeprecationWarning)
            pid = real_fork()
        if pid != 0:
            only_ours = all(thread.name.startswith(_AGENT_THREAD_PREFIXES) for thread in others)
            for warning in caught:
                if only_ours and "is multi-threaded, use of fork()" in str(warning.message):
                    continue
                warnings.warn(warning.message, warning.category, stacklevel=2)
        return pid

    fork.__doc__ = real_fork.__doc__
    fork.__wrapped__ = real_fork
    fork._logfire_run = True
    os.fork = fork


def when_sdk_ready(action: Callable[[], object], *, start: bool = True) -> None:
    """Run `action` now if the SDK is up, else as soon as it comes up (never, if it cannot).

    With `start`, an SDK that is off is set up now (a library the app imported needs it); without,
    the action waits for whatever starts it (a standard-library module imported half-way through
    another import, which the SDK's own set-up may need).
    """
    with _lock:
        state = _sdk_state
        if state in ("off", "starting"):
            # Queued under the lock that start_sdk() sets "on" under: no action can fall between.
            _deferred.append(action)
    if state == "on":
        _run(action)
    elif state == "off" and start:
        start_sdk()


def _run_deferred() -> None:
    while True:
        with _lock:
            if not _deferred:
                return
            action = _deferred.pop(0)
        # Run without the lock: an action imports modules, and another thread importing one of them
        # may be waiting in when_sdk_ready() for this lock.
        _run(action)


def _run(action: Callable[[], object]) -> None:
    try:
        action()
    except Exception as error:
        report.problem(f"deferred:{action}", f"deferred instrumentation failed ({error}); the app runs on")


# Exit flushes. Every way a process ends flushes its spans first, within one exit budget per
# process (`exit_budget`, 2 s by default) whatever the backend does: interpreter exit (our own atexit
# handler: OpenTelemetry's waits for every batch, each with the exporter's full timeout), SIGTERM left
# at its default (the agent flushes, then dies by the same signal, so the exit status the parent sees
# is unchanged), and os._exit(), which forked children leave by (multiprocessing fork and forkserver
# workers, Celery's prefork children, gunicorn workers). What is still unsent when the budget is spent
# is dropped and counted in one stderr line.

_real_exit = os._exit
_exit_flushes_installed = False
# (pid, monotonic deadline) of the exit under way: several exit paths of one process share one budget.
_exit_deadline: tuple[int, float] | None = None


def flush(timeout_millis: int) -> bool:
    """Export every ended span of this process's tracer provider (the agent's or the app's) now."""
    from opentelemetry import trace

    # The API has no public "is one set?"; get_tracer_provider() would hand back a proxy instead.
    force_flush = getattr(getattr(trace, "_TRACER_PROVIDER", None), "force_flush", None)
    return bool(force_flush(timeout_millis)) if callable(force_flush) else True


def shutdown() -> None:
    """Flush and stop the SDK of this process; spans ended afterwards are dropped."""
    if _sdk is not None:
        _sdk.shutdown()


def install_exit_hooks() -> None:
    """Make `os._exit` and a default SIGTERM flush first. Done when the agent starts, before the app
    runs: an app binding `os._exit` early (`from os import _exit`) gets the flushing one, and a server
    that saves the SIGTERM handler and puts it back before re-raising the signal at its own shutdown
    (uvicorn does) puts back ours. Neither costs anything until the SDK is up."""
    os._exit = _flushing_exit
    _install_sigterm_flush()
    # Before the app runs, too: an app that binds `from os import fork` early gets the quiet one.
    _install_fork_without_our_warning()


def _install_sigterm_flush() -> None:
    # `_signal`, not `signal`: the latter imports enum, milliseconds at every start.
    import _signal  # type: ignore[import-not-found]

    try:
        if _signal.getsignal(_signal.SIGTERM) == _signal.SIG_DFL:
            _signal.signal(_signal.SIGTERM, _flush_on_sigterm)
    except (ValueError, OSError) as error:
        # Not the main thread (configure() called from a thread): atexit still covers normal exits.
        report.debug(f"no SIGTERM flush: {error}")


def install_exit_flushes() -> None:
    """The interpreter-exit flush once the SDK is up (and the `os._exit` and SIGTERM ones, if not yet)."""
    global _exit_flushes_installed
    os._exit = _flushing_exit
    if _exit_flushes_installed:
        return
    _exit_flushes_installed = True
    import atexit

    atexit.register(_flush_at_exit)
    _install_sigterm_flush()
    _exit_flusher()
    if hasattr(os, "register_at_fork"):
        # Registered after the SDK's own at-fork hooks (which restart the batch processors' threads in
        # a forked child): SIGTERM stays blocked in the forking thread until they have run, so those
        # threads are born with it blocked too.
        os.register_at_fork(
            before=_block_sigterm_for_fork,
            after_in_parent=_unblock_sigterm_after_fork,
            after_in_child=_new_flusher_after_fork,
        )


def exit_flush(reason: str, *, children: Iterable[int] = ()) -> None:
    """Send this process's unsent spans, waiting at most what is left of the exit budget.

    `children` are processes that serve for this one and would be killed once it returns (the
    serving child of a reloader, which the reloader SIGKILLs when it is stopped itself): each is asked
    to stop with SIGTERM first, and waited for within the same budget (and `_CHILD_GRACE` more, as
    the child's own budget starts a moment later), so it flushes its own spans.
    """
    global _exit_deadline
    tracing = _sdk
    if tracing is None and not children:
        return
    import time

    pid, now = os.getpid(), time.monotonic()
    budget = config().exit_budget
    if _exit_deadline is None or _exit_deadline[0] != pid:
        _exit_deadline = (pid, now + budget)
    held = _hold_stop_signals()
    try:
        if children:
            # Each child's own exit budget starts when it gets the SIGTERM, a moment after ours did:
            # waiting a little longer lets it end by itself (and count what it drops).
            _stop_children(children, _exit_deadline[1] + _CHILD_GRACE)
            now = time.monotonic()
        if tracing is None:
            return
        remaining = _exit_deadline[1] - now
        finished = False
        if remaining > 0:
            # In a thread of its own: OpenTelemetry's flush waits for an export in flight, and an
            # export to a backend that never answers waits for the exporter's full timeout, retries
            # included.
            flusher = _exit_flusher()
            finished = flusher is not None and flusher.flush(tracing, remaining, reason)
    finally:
        _restore_signals(held)
    if not finished:
        unsent = tracing.unsent()
        unsent_logs = tracing.unsent_logs()
        if unsent or unsent_logs:
            from logfire_run.agent.export.exporters import last_transient_error

            cause = last_transient_error()
            what = f"{unsent} spans" + (f" and {unsent_logs} log records" if unsent_logs else "")
            report.problem(
                "exit-budget",
                f"{what} were not sent within the exit budget ({budget:g} s, at {reason}) and "
                "are dropped" + (f" (the backend: {cause})" if cause else "") + "; "
                "LOGFIRE_EXIT_BUDGET (--exit-budget) sets the budget",
            )


#: Seconds a process waits for the children it stops at exit beyond its own exit budget.
_CHILD_GRACE = 1.0


def _hold_stop_signals() -> list[tuple[int, object]]:
    """Ignore SIGINT and SIGTERM while an exit flush waits; return the handlers to put back.

    The process is ending already, and a stop signal now would cut the flush short: Ctrl-C reaches a
    reloader's watcher and its serving process at once, and the watcher's SIGTERM then finds the
    serving process in its interpreter-exit flush (where the app's handler, `sys.exit`, would raise).
    Only the main thread can change handlers; elsewhere nothing is held.
    """
    import _signal

    held: list[tuple[int, object]] = []
    try:
        for signum in (_signal.SIGINT, _signal.SIGTERM):
            held.append((signum, _signal.signal(signum, _signal.SIG_IGN)))
    except (ValueError, OSError, TypeError):  # not the main thread
        pass
    return held


def _restore_signals(held: list[tuple[int, object]]) -> None:
    import _signal

    for signum, handler in held:
        try:
            _signal.signal(signum, handler)
        except (ValueError, OSError, TypeError):
            continue


def _stop_children(children: Iterable[int], deadline: float) -> None:
    """SIGTERM each child, then wait until each has ended or `deadline` (monotonic) has passed.

    Waited for without reaping (`WNOWAIT`): the caller's own `wait()` still collects the exit status.
    """
    import _signal
    import time

    waiting = []
    for child in children:
        try:
            os.kill(child, _signal.SIGTERM)
            waiting.append(child)
        except OSError:  # ended already
            continue
    while waiting and time.monotonic() < deadline:
        for child in list(waiting):
            if _ended(child):
                waiting.remove(child)
        if waiting:
            time.sleep(0.01)
    if waiting:
        report.debug(f"children {waiting} did not end within the exit budget")


def _ended(child: int) -> bool:
    try:
        if hasattr(os, "waitid"):
            return os.waitid(os.P_PID, child, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        os.kill(child, 0)  # without waitid, an ended child that is not reaped yet looks alive
    except OSError:  # not our child, or reaped already
        return True
    return False


class _ExitFlusher:
    """A daemon thread started before it is needed, which runs one flush when asked.

    Started when the SDK comes up (and again in a forked child): from Python 3.12 no thread can be
    started during interpreter shutdown, which is when atexit handlers run.
    """

    def __init__(self) -> None:
        import threading

        self.pid = os.getpid()
        self.used = False
        self._request = threading.Event()
        self._done = threading.Event()
        self._call: Callable[[], object] = lambda: None
        self._thread = threading.Thread(target=self._run, name="logfire-run exit flush", daemon=True)
        with _SigtermBlocked():
            self._thread.start()

    def _run(self) -> None:
        self._request.wait()
        try:
            self._call()
        except Exception as error:
            report.debug(f"flush at exit failed: {error}")
        finally:
            self._done.set()

    def flush(self, tracing: TracingSdk, seconds: float, reason: str) -> bool:
        """Flush `tracing` in the thread; True when it finished within `seconds`."""
        self.used = True
        self._call = lambda: _flush_until_sent(tracing, seconds)
        self._request.set()
        return self._done.wait(seconds)


def _flush_until_sent(tracing: TracingSdk, seconds: float) -> None:
    """Flush, and again while spans keep ending: a server's daemon threads (Werkzeug's, Django's
    `runserver`) go on answering requests while the interpreter exits, after the first flush began."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        tracing.force_flush(max(1, int((deadline - time.monotonic()) * 1000)))
        if not (tracing.unsent() or tracing.unsent_logs()) or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


_flusher: _ExitFlusher | None = None


def _exit_flusher() -> _ExitFlusher | None:
    """This process's unused exit flusher, started now if it must be; None if no thread can start."""
    global _flusher
    current = _flusher
    if current is not None and current.pid == os.getpid() and not current.used:
        return current
    try:
        _flusher = _ExitFlusher()
    except RuntimeError as error:  # "can't create new thread at interpreter shutdown"
        report.debug(f"no exit flush: {error}")
        return None
    return _flusher


def _new_flusher_after_fork() -> None:
    global _flusher
    _flusher = None
    if _sdk is not None:
        _exit_flusher()
    _unblock_sigterm_after_fork()


# SIGTERM goes to the main thread. The flush on SIGTERM is a Python handler, and Python runs handlers
# in the main thread only, when it next runs bytecode; the kernel delivers a signal sent to a process
# to any thread that does not block it. Landing in one of the agent's threads, it would wait for a
# main thread blocked in a lock that only the signal was to end (an idle multiprocessing.Pool worker,
# blocked on its task queue's lock while the parent terminates the pool, never ended). Without the
# agent the default action kills the process whichever thread the kernel picks. So every thread the
# agent starts is started with SIGTERM blocked, which it inherits, and the kernel picks the main thread.


class _SigtermBlocked:
    """Block SIGTERM in this thread for the `with` block (threads started in it inherit the block)."""

    def __enter__(self) -> None:
        self.unblock = _block_sigterm()

    def __exit__(self, *exc_info: object) -> None:
        if self.unblock:
            _unblock_sigterm()


def _block_sigterm() -> bool:
    """Block SIGTERM in this thread; True if it was not blocked before (the caller unblocks it)."""
    try:
        import _signal

        previous = _signal.pthread_sigmask(_signal.SIG_BLOCK, (_signal.SIGTERM,))
        return _signal.SIGTERM not in previous
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask on this platform
        return False


def _unblock_sigterm() -> None:
    try:
        import _signal

        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, (_signal.SIGTERM,))
    except (AttributeError, OSError, ValueError):
        pass


_blocked_for_fork = False


def _block_sigterm_for_fork() -> None:
    global _blocked_for_fork
    _blocked_for_fork = _block_sigterm()


def _unblock_sigterm_after_fork() -> None:
    global _blocked_for_fork
    if _blocked_for_fork:
        _blocked_for_fork = False
        _unblock_sigterm()  # a SIGTERM that came meanwhile is delivered now


def _flush_at_exit() -> None:
    exit_flush("exit")


def _flushing_exit(status: int) -> NoReturn:
    try:  # noqa: SIM105 (not contextlib: this module loads nothing at start-up it does not need)
        exit_flush("os._exit")
    except BaseException:
        pass
    _real_exit(status)


# A SIGTERM that comes while the main thread is about to block (an idle pool worker going back to
# its task queue's lock as the parent terminates the pool) trips Python's handler just before the
# wait begins: nothing interrupts the wait, the handler never runs, and the process neither flushes
# nor dies (without the agent, the default action would have killed it). `watch_sigterm()` closes
# that window for such processes: a signal's number is written to a wakeup pipe by Python's C-level
# handler, and a thread of ours that reads SIGTERM there interrupts the main thread with SIGTERM again
# (`pthread_kill`), until the handler has run and the process has died by the signal.

_watch: tuple[int, int, int] | None = None  # (pid, read end, write end) of this process's wakeup pipe


def watch_sigterm() -> None:
    """Make sure the SIGTERM flush runs even if SIGTERM comes as the main thread starts to block.

    For processes whose main thread waits in locks that only SIGTERM ends: pool workers and
    multiprocessing children. Only from the main thread, only while the SIGTERM handler is the
    agent's, and only if no one else uses the signal wakeup fd (asyncio's loop does); else nothing.
    """
    global _watch
    if _watch is not None and _watch[0] == os.getpid():
        return
    import _signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if _signal.getsignal(_signal.SIGTERM) is not _flush_on_sigterm or not hasattr(_signal, "pthread_kill"):
        return
    read, write = os.pipe()
    try:
        os.set_blocking(write, False)
        previous = _signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        if previous != -1:
            _signal.set_wakeup_fd(previous)  # someone else's (an event loop): theirs to keep
            raise ValueError("the wakeup fd is in use")
        main = threading.get_ident()
        watcher = threading.Thread(
            target=_watch_sigterm, args=(read, main), name="logfire-run SIGTERM watch", daemon=True
        )
        with _SigtermBlocked():
            watcher.start()
    except (OSError, ValueError, RuntimeError) as error:
        report.debug(f"no SIGTERM watch: {error}")
        os.close(read)
        os.close(write)
        return
    if _watch is None and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_watch_after_fork)
    _watch = (os.getpid(), read, write)


def _watch_sigterm(read: int, main_thread: int) -> None:
    import _signal
    import time

    term = bytes([_signal.SIGTERM])
    try:
        while term not in os.read(read, 512):
            pass
    except OSError:
        return
    # Python's handler may already be running; if it is, a repeated SIGTERM is ignored by it. The app
    # may have put a handler of its own in place since: then the signal is its business.
    while _signal.getsignal(_signal.SIGTERM) in (_flush_on_sigterm, _signal.SIG_DFL):
        try:
            _signal.pthread_kill(main_thread, _signal.SIGTERM)
        except OSError:
            return
        time.sleep(0.1)


def _forget_watch_after_fork() -> None:
    # The child shares the parent's pipe: its signals must not reach the parent's watcher.
    global _watch
    watch = _watch
    if watch is None or watch[0] == os.getpid():
        return
    _watch = None
    try:
        import _signal

        previous = _signal.set_wakeup_fd(-1)
        if previous != watch[2]:
            _signal.set_wakeup_fd(previous)  # not ours any more: left as it was
        os.close(watch[1])
        os.close(watch[2])
    except (OSError, ValueError):
        pass


_sigterm_flushing = False


def _flush_on_sigterm(signum: int, frame: object) -> None:
    global _sigterm_flushing
    import _signal

    if _sigterm_flushing:
        # A second SIGTERM during the flush (a broken ProcessPoolExecutor terminates its workers twice
        # on Python 3.12+) would cut it short: the first one finishes and ends the process.
        return
    _sigterm_flushing = True
    try:
        exit_flush("SIGTERM")
    finally:
        # The default action again, and the same signal: the parent sees the status it would have.
        _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
        os.kill(os.getpid(), _signal.SIGTERM)
