"""What a forked child starts afresh: the one place the agent handles `os.fork()`.

A forked child is a copy of its parent taken at one instant, with a single thread: locks another
thread held stay held, connections and sessions are shared with the parent, threads are gone. Each
part of the agent that holds such a thing is reset here, in this order, and nowhere else:

before the fork, in the forking thread:
  1. SIGTERM is blocked (from the SDK's start on), so that the threads the SDK's own at-fork hooks
     restart in the child are born with it blocked (see `signals`);
  2. the span exporters, the log pipelines and the metric readers hold the fork only while their
     exporting thread is inside an import, and the store while this process is inside an SQLite
     call, a bounded time; never for the network, nor for another process's lock: a request on the
     wire does not delay a fork (`export.exporters`, `export.logs`, `export.metrics`: see
     `ForkGuard`; `export.store`: `in_sqlite`);
in the child:
  1. `report` forgets what the parent said once: the child says its own problems once;
  2. the policy's warn-once starts again: the child is a process of its own;
  3. the SDK: the resource's `process.pid` and `service.instance.id`, the drop counts
     (`TracingSdk.after_fork_in_child`); the exporters' state and their connections (a new HTTP
     session, a new gRPC channel: `renew_connections`), the store writers' locks and connections,
     the log pipelines' queues and connections, the pending-span writers' connections, the metrics
     (the parent's accumulated points dropped, each reader's lock, its exporter built afresh) (each
     `export` module's `after_fork_in_child`, for every instance of the process);
  4. what the instrumentors registered with `in_child()` (pool workers set themselves up again);
  5. the threads: the log pipelines', the pending-span writers' and the metrics collector's (each
     `export` module's `restart_after_fork`), the exit flusher, the SIGTERM watch of the parent
     (`exits.after_fork_in_child`);
  6. SIGTERM is unblocked, last: a SIGTERM that came meanwhile is delivered now.
in the parent: the store's SQLite calls resume, SIGTERM is unblocked.

Steps 1-4 are registered when the agent starts; SIGTERM's steps and step 5 when the SDK is up, after
the SDK's own hooks (OpenTelemetry's batch processors restart their threads in the child in theirs),
because at-fork hooks run in the order they were registered, and "before" ones in reverse. Threads
are started in step 5 only: the agent starts before `threading` is imported, and `threading`'s own
hook, which forgets every thread but the forking one, runs after steps 1-4 and before step 5.

Also here: on Python 3.12+, `os.fork` without the DeprecationWarning that the agent's own threads
would cause (`install_quiet_fork`).

Where it stops: forks that do not run Python's at-fork hooks (`_posixsubprocess`, which execs at once)
need nothing; what a child does at its exit is `exits`'s.
"""

from __future__ import annotations

import os
import sys

from logfire_run.agent import report
from logfire_run.agent.patching import Patches, applied
from logfire_run.agent.process import exits, signals, state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

#: The export modules with fork functions, called only when loaded (they hold what the SDK built).
_EXPORT_MODULES = (
    "logfire_run.agent.export.exporters",
    "logfire_run.agent.export.logs",
    "logfire_run.agent.export.store",
    "logfire_run.agent.export.pending",
    "logfire_run.agent.export.metrics",
)

_installed = False
_installed_after_sdk = False
_instrumentor_resets: list[Callable[[], None]] = []


def install() -> None:
    """Register the child's resets (once), and SIGTERM's steps for when the SDK is up."""
    global _installed
    if _installed or not hasattr(os, "register_at_fork"):
        return
    _installed = True
    os.register_at_fork(before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child)
    state.when_sdk_ready(_install_after_sdk, start=False)


def in_child(reset: Callable[[], None]) -> None:
    """Run `reset` in every forked child (step 4), whether or not the agent started in this process
    (an instrumentor loaded by opentelemetry-instrument registers here too)."""
    _instrumentor_resets.append(reset)
    install()


def _each_export_module(function: str) -> None:
    for name in _EXPORT_MODULES:
        call = getattr(sys.modules.get(name), function, None)
        if call is not None:
            call()


def _before() -> None:
    _each_export_module("before_fork")


def _after_in_parent() -> None:
    _each_export_module("after_fork_in_parent")


def _after_in_child() -> None:
    report.forget_after_fork()
    policy = state.built_policy()
    if policy is not None:
        policy.after_fork_in_child()
    tracing = state.sdk()
    if tracing is not None:
        tracing.after_fork_in_child()
    _each_export_module("after_fork_in_child")
    for reset in _instrumentor_resets:
        try:
            reset()
        except Exception as error:  # one part's failure must not stop the others, nor the child
            report.debug(f"after fork: {reset} failed ({type(error).__name__}: {error})")


def _install_after_sdk() -> None:
    global _installed_after_sdk
    if _installed_after_sdk:
        return
    _installed_after_sdk = True
    os.register_at_fork(
        before=_block_sigterm_for_fork,
        after_in_parent=_unblock_sigterm_after_fork,
        after_in_child=_last_in_child,
    )


_blocked_for_fork = False


def _block_sigterm_for_fork() -> None:
    global _blocked_for_fork
    _blocked_for_fork = signals.block_sigterm()


def _unblock_sigterm_after_fork() -> None:
    global _blocked_for_fork
    if _blocked_for_fork:
        _blocked_for_fork = False
        signals.unblock_sigterm()  # a SIGTERM that came meanwhile is delivered now


def _last_in_child() -> None:
    _each_export_module("restart_after_fork")
    exits.after_fork_in_child()
    _unblock_sigterm_after_fork()


# Python 3.12+ warns at os.fork() when the process has other threads (a DeprecationWarning shown for
# forks made in __main__). Once the SDK is up the agent has its own (the batch processors'), so an app
# that is single-threaded would get a warning it never got without the agent. os.fork is wrapped: when
# the only other threads are the agent's, that warning is not shown; when the app has threads of its
# own, the same warning is issued again from the app's line, so its filters see what they always saw.

_AGENT_THREAD_PREFIXES = ("OtelBatch", "logfire-run")
_patches = Patches("quiet fork")


def install_quiet_fork() -> None:
    """Wrap `os.fork` (Python 3.12+): before the app runs, so `from os import fork` gets it too."""
    import sys

    if sys.version_info < (3, 12) or not hasattr(os, "fork") or applied(os, "fork", _patches.instrumentor):
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

    _patches.replace(os, "fork", fork)
