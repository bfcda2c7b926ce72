"""Greenlets: a greenlet spawned inside a span runs as a child of it, with gevent and with eventlet.

A greenlet starts with an empty `contextvars` context of its own (greenlet 1.0 and later), so a
span made in a greenlet that a request spawned would start a new trace. This carries the spawning
greenlet's OpenTelemetry context into the new one, as `executors` does for threads: only that
context (the other context variables of the spawner are not copied, as they are not today).

What it patches:
    - gevent: a spawn callback (`gevent.Greenlet.add_spawn_callback`, gevent's own hook, called by
      `Greenlet.start()` and `start_later()` in the spawning greenlet) gives each greenlet a
      context holding the spawner's span. That covers `gevent.spawn`, `spawn_later`,
      `Greenlet(...).start()` and the pools and groups of `gevent.pool`.
    - eventlet: `eventlet.greenthread.GreenThread.__init__` (wrapt), which `spawn`, `spawn_after`,
      `GreenPool.spawn` and `GreenPile` all create in the spawning greenthread, and
      `eventlet.greenthread._spawn_n` (replaced), behind `spawn_n` and `GreenPool.spawn_n`.

When it is enabled:
    When the app imports `gevent` or `eventlet`, once the SDK is up: in a process that gevent or
    eventlet monkey-patches, after the patching (`agent/process/green.py`). Never does its import
    start the SDK. `--disable greenlets` turns it off.

How it refuses:
    A gevent without spawn callbacks (before 1.4) or a greenlet without `gr_context` (before 1.0)
    is left alone, with one `--debug` line; so is an eventlet whose `greenthread` lacks the names
    above. A greenlet given a context of its own before it starts keeps it.

Where it stops:
    Raw greenlets (`gevent.spawn_raw`, `greenlet.greenlet(...)` made by hand) start with their own
    empty context; `get_context()` and `attach_context()` are there for those. Threads under
    monkey-patching are greenlets too, and carry the context through `executors` as threads do.
"""

from __future__ import annotations

import contextvars
import sys
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.instrumentors._base import PatchingInstrumentor
from logfire_run.instrumentors._executors_worker import CurrentContext

__all__ = ["GreenletInstrumentor"]


class GreenletInstrumentor(PatchingInstrumentor):
    """Context propagation into gevent greenlets and eventlet greenthreads; see the module docstring."""

    targets = ("gevent", "eventlet")
    supported = ()
    options: ClassVar[dict[str, Any]] = {}
    supersedes = ()

    patches_name = "greenlets"

    def _first_instance(self) -> None:
        #: The spawn callback given to gevent (removed by `_uninstrument`).
        self._gevent_callback: Any = None

    def _instrument(self, **kwargs: Any) -> None:
        self.active = True
        _context.load()
        self.patch_on_import("gevent", self._patch_gevent)
        self.patch_on_import("eventlet.greenthread", self._patch_eventlet)

    def _uninstrument(self, **kwargs: Any) -> None:
        self.active = False
        self._patches.restore()
        callback, self._gevent_callback = self._gevent_callback, None
        greenlet_class = getattr(sys.modules.get("gevent"), "Greenlet", None)
        if callback is not None and greenlet_class is not None:
            greenlet_class.remove_spawn_callback(callback)

    def _patch_gevent(self, module: Any) -> None:
        greenlet_class: Any = getattr(module, "Greenlet", None)
        if not hasattr(greenlet_class, "add_spawn_callback") or not _has_gr_context():
            report.debug("greenlets: this gevent or greenlet is too old to carry the context (gevent 1.4+)")
            return
        if self._gevent_callback is None:
            self._gevent_callback = _carry_into
            greenlet_class.add_spawn_callback(_carry_into)

    def _patch_eventlet(self, module: Any) -> None:
        green_thread = getattr(module, "GreenThread", None)
        spawn_n = getattr(module, "_spawn_n", None)
        if green_thread is None or not callable(spawn_n) or not _has_gr_context():
            report.debug("greenlets: this eventlet or greenlet does not have what carrying the context needs")
            return
        self._patches.wrap(green_thread, "__init__", _green_thread_init)
        self._patches.replace(module, "_spawn_n", _spawn_n_with_context(spawn_n))


_context = CurrentContext()


def _has_gr_context() -> bool:
    greenlet: Any = sys.modules.get("greenlet")  # gevent and eventlet have imported it
    return greenlet is not None and hasattr(greenlet.getcurrent(), "gr_context")


def _carry_into(greenlet: Any) -> None:
    """Give `greenlet` (not started yet) a context holding the current span, unless it has one."""
    try:
        if greenlet.gr_context is not None:
            return
        captured = _context.get()
        fresh = contextvars.Context()
        fresh.run(_context.set, captured)
        greenlet.gr_context = fresh
    except Exception as error:  # never into the app's spawn
        report.problem("greenlets:context", f"a greenlet runs without its spawner's trace context ({error})")


def _green_thread_init(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    _carry_into(instance)
    return result


def _spawn_n_with_context(original: Any) -> Any:
    def _spawn_n(seconds: Any, func: Any, args: Any, kwargs: Any) -> Any:
        timer, greenlet = original(seconds, func, args, kwargs)
        _carry_into(greenlet)
        return timer, greenlet

    return _spawn_n
