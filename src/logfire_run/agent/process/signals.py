"""SIGTERM and the agent's threads: every thread the agent starts is born with SIGTERM blocked.

SIGTERM goes to the main thread. The flush on SIGTERM is a Python handler, and Python runs handlers in
the main thread only, when it next runs bytecode; the kernel delivers a signal sent to a process to
any thread that does not block it. Landing in one of the agent's threads, it would wait for a main
thread blocked in a lock that only the signal was to end (an idle multiprocessing.Pool worker, blocked
on its task queue's lock while the parent terminates the pool, never ended). Without the agent the
default action kills the process whichever thread the kernel picks. So every thread the agent starts
is started inside `SigtermBlocked()`: it inherits the block, and the kernel picks the main thread.

Also here: holding SIGINT and SIGTERM off while an exit flush waits (`hold_stop_signals`).

Where it stops: it installs no handler (the SIGTERM flush is `exit`'s) and knows nothing of the SDK.
`_signal`, never `signal`: the latter imports enum, milliseconds at every start.
"""

from __future__ import annotations


class SigtermBlocked:
    """Block SIGTERM in this thread for the `with` block (threads started in it inherit the block)."""

    def __enter__(self) -> None:
        self.unblock = block_sigterm()

    def __exit__(self, *exc_info: object) -> None:
        if self.unblock:
            unblock_sigterm()


def block_sigterm() -> bool:
    """Block SIGTERM in this thread; True if it was not blocked before (the caller unblocks it)."""
    try:
        import _signal  # type: ignore[import-not-found]

        previous = _signal.pthread_sigmask(_signal.SIG_BLOCK, (_signal.SIGTERM,))
        return _signal.SIGTERM not in previous
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask on this platform
        return False


def unblock_sigterm() -> None:
    try:
        import _signal

        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, (_signal.SIGTERM,))
    except (AttributeError, OSError, ValueError):
        pass


def hold_stop_signals() -> list[tuple[int, object]]:
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


def restore_signals(held: list[tuple[int, object]]) -> None:
    import _signal

    for signum, handler in held:
        try:
            _signal.signal(signum, handler)
        except (ValueError, OSError, TypeError):
            continue
