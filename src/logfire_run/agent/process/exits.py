"""Exit flushes: every way a process ends sends its spans, log records and metrics first, within one budget.

One exit budget per process (`exit_budget`, 2 s by default) whatever the backend does, shared by every
way out: interpreter exit (our own atexit handler: OpenTelemetry's waits for every batch, each with the
exporter's full timeout), SIGTERM left at its default (the agent flushes, then dies by the same
signal, so the exit status the parent sees is unchanged), and `os._exit()`, which forked children
leave by (multiprocessing fork and forkserver workers, Celery's prefork children, gunicorn workers).
What is still unsent when the budget is spent is dropped; with what the process dropped while it ran
(exports the backend did not take, a full queue), it is counted in one stderr line at exit. The flush
runs in a thread started before it is needed (`_ExitFlusher`), so a backend that never answers holds
the exit up for the budget and no longer.

Also here: the children a process stops at its own exit (a reloader's serving process), and the watch
that makes a SIGTERM landing just as the main thread blocks still flush (`watch_sigterm`).

Where it stops: it decides when and how long; what a flush sends is the SDK's (`sdk.TracingSdk`),
and what a forked child starts afresh is `fork`'s, which calls `after_fork_in_child` here.
"""

from __future__ import annotations

import os

from logfire_run.agent import report
from logfire_run.agent.patching import Patches
from logfire_run.agent.process import green, signals, state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import NoReturn

    from logfire_run.agent.process.sdk import TracingSdk

_real_exit = os._exit
_patches = Patches("exit flushes")
_exit_flushes_installed = False
# (pid, monotonic deadline) of the exit under way: several exit paths of one process share one budget.
_exit_deadline: tuple[int, float] | None = None


def install_exit_hooks() -> None:
    """Make `os._exit` and a default SIGTERM flush first. Done when the agent starts, before the app
    runs: an app binding `os._exit` early (`from os import _exit`) gets the flushing one, and a server
    that saves the SIGTERM handler and puts it back before re-raising the signal at its own shutdown
    (uvicorn does) puts back ours. Neither costs anything until the SDK is up."""
    _patches.replace(os, "_exit", _flushing_exit)
    _install_sigterm_flush()
    state.when_sdk_ready(install_exit_flushes, start=False)


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
    _patches.replace(os, "_exit", _flushing_exit)
    if _exit_flushes_installed:
        return
    _exit_flushes_installed = True
    import atexit

    atexit.register(_flush_at_exit)
    _install_sigterm_flush()
    _exit_flusher()


def exit_flush(reason: str, *, children: Iterable[int] = ()) -> None:
    """Send this process's unsent spans, waiting at most what is left of the exit budget.

    `children` are processes that serve for this one and would be killed once it returns (the
    serving child of a reloader, which the reloader SIGKILLs when it is stopped itself): each is asked
    to stop with SIGTERM first, and waited for within the same budget (and `_CHILD_GRACE` more, as
    the child's own budget starts a moment later), so it flushes its own spans.
    """
    global _exit_deadline
    tracing = state.sdk()
    if tracing is None and not children:
        return
    import time

    pid, now = os.getpid(), time.monotonic()
    budget = state.config().exit_budget
    if _exit_deadline is None or _exit_deadline[0] != pid:
        _exit_deadline = (pid, now + budget)
    held = signals.hold_stop_signals()
    if tracing is not None:
        from logfire_run.agent.export import delivery

        delivery.exit_begins(_exit_deadline[1])
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
        signals.restore_signals(held)
    if finished:
        # The spools of processes that exited meanwhile, moved into the store while budget remains.
        import sys

        store = sys.modules.get("logfire_run.agent.export.store")
        if store is not None:
            store.merge_spools_at_exit()
    # One line for what this process dropped, whenever it was (`delivery.drop_line`): exports the
    # backend did not take, the full queue, and what the exit budget left unsent.
    from logfire_run.agent.export.delivery import drop_line

    line = drop_line(tracing.drops(exiting=not finished), budget, reason)
    if line is not None:
        report.problem("exit-budget", line)


#: Seconds a process waits for the children it stops at exit beyond its own exit budget.
_CHILD_GRACE = 1.0


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
        with signals.SigtermBlocked():
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
    first = True
    while True:
        # Metrics are collected once: the last collection of the process.
        tracing.force_flush(max(1, int((deadline - time.monotonic()) * 1000)), metrics=first)
        first = False
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


def after_fork_in_child() -> None:
    """A forked child: a flusher thread of its own (the parent's does not exist here), no SIGTERM
    watch of the parent's. Called by `fork` while SIGTERM is still blocked in the child."""
    global _flusher
    _flusher = None
    if state.sdk() is not None:
        _exit_flusher()
    _forget_watch()


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
    agent's, only if no one else uses the signal wakeup fd (asyncio's loop does), and not in a
    process gevent or eventlet patched; else nothing.
    """
    global _watch
    if _watch is not None and _watch[0] == os.getpid():
        return
    import _signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if green.patched() is not None:
        return  # its thread would be a greenlet, and its blocking read would stop every other one
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
        with signals.SigtermBlocked():
            watcher.start()
    except (OSError, ValueError, RuntimeError) as error:
        report.debug(f"no SIGTERM watch: {error}")
        os.close(read)
        os.close(write)
        return
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


def _forget_watch() -> None:
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
