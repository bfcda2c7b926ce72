"""Spans still running, written to the store so that the viewer shows them while they run.

A span reaches an exporter only when it ends, so a request hanging on a slow call is invisible until
it returns (or never, if the process dies). With the store exporter, `PendingSpans` also watches
spans start: `on_start` and `on_end` add and remove the span in a dictionary (a few hundred
nanoseconds on the request path, `bench/store/pending_cost.py`); nothing else happens there.

Its own thread looks once a second (`TICK_SECONDS`) for spans open for a second or more
(`OPEN_AFTER_NS`) and writes them to the store's `pending` table (`store_index`), replacing this
process's rows: running spans with no end, and spans that were shown running and have ended since,
for `ENDED_KEEP_NS` (their rows in `spans` come with the next batch of the batch processor, up to
5 s later). The set is written again when it changes, and every `HEARTBEAT_NS` while it is not empty,
so the viewer can tell a running span from one whose process stopped writing. Nothing is written
while no span runs that long: short requests cost the dictionary operations only.

Where it stops:
- at most `MAX_TRACKED` open spans are watched at a time (an app that never ends its spans does not
  grow this without end); a span open longer than `MAX_AGE_NS` is no longer watched;
- a running span's attributes are read while the app may still change them: one that changes during
  the read is written at the next tick;
- a store that cannot be written is left to the store exporter to report; this module says so only
  under --debug;
- a forked child forgets its parent's open spans (they run in the parent) and starts its own thread.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
import time
import weakref
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from logfire_run.agent import report
from logfire_run.agent.export.store import span_rows
from logfire_run.store_format import open_store, with_retries
from logfire_run.store_index import replace_pending

__all__ = ["PendingSpans", "after_fork_in_child"]

TICK_SECONDS = 1.0
OPEN_AFTER_NS = 1_000_000_000
HEARTBEAT_NS = 5_000_000_000
ENDED_KEEP_NS = 30_000_000_000
MAX_TRACKED = 10_000
MAX_AGE_NS = 24 * 3600 * 1_000_000_000


class PendingSpans(SpanProcessor):
    """Writes the spans open for a second or more to the store's `pending` table (see the module)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._open: dict[int, Span] = {}
        #: Spans shown as running that have ended: span id -> the ended span.
        self._ended: dict[int, ReadableSpan] = {}
        #: The span ids in this process's pending rows now.
        self._written: frozenset[int] = frozenset()
        self._last_write_ns = 0
        self._connection: sqlite3.Connection | None = None
        self._unusable = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._restart = False
        self._owner = ""
        _instances.add(self)
        self._start()

    def _start(self) -> None:
        self._owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        thread = threading.Thread(target=self._run, name="logfire-run pending spans", daemon=True)
        self._thread = thread
        try:
            thread.start()
        except RuntimeError:  # interpreter shutdown
            self._thread = None

    # The request path: a dictionary operation each.

    def on_start(self, span: Span, parent_context: object = None) -> None:
        if len(self._open) < MAX_TRACKED:
            self._open[span.context.span_id] = span

    def on_end(self, span: ReadableSpan) -> None:
        span_id = span.context.span_id
        if self._open.pop(span_id, None) is not None and span_id in self._written:
            self._ended[span_id] = span

    # The thread.

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(TICK_SECONDS):
            try:
                self.tick(time.time_ns())
            except Exception as error:  # never let the thread die: the next tick tries again
                report.debug(f"pending spans could not be written ({type(error).__name__}: {error})")
        connection, self._connection = self._connection, None
        if connection is not None and stop is self._stop:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    def tick(self, now: int) -> None:
        """Write this process's pending rows if they changed, or as a heartbeat."""
        running: list[Span] = []
        for span_id, span in list(self._open.items()):
            start = span.start_time or now
            if now - start >= MAX_AGE_NS:
                self._open.pop(span_id, None)
            elif now - start >= OPEN_AFTER_NS:
                running.append(span)
        for span_id, ended in list(self._ended.items()):
            if now - (ended.end_time or now) >= ENDED_KEEP_NS:
                del self._ended[span_id]
        ids = frozenset(span.context.span_id for span in running) | frozenset(self._ended)
        if not ids and not self._written:
            return
        if ids == self._written and now - self._last_write_ns < HEARTBEAT_NS:
            return
        rows = self._rows(running, now, ended=False) + self._rows(list(self._ended.values()), now, ended=True)
        connection = self._connect()
        if connection is None:
            return
        with_retries(lambda: replace_pending(connection, self._owner, rows))
        self._written = frozenset(row_id for row_id in ids)
        self._last_write_ns = now

    def _rows(self, spans: list[Any], now: int, *, ended: bool) -> list[tuple[Any, ...]]:
        rows = []
        pid = os.getpid()
        for span in spans:
            try:
                (row,) = span_rows([span], pid)
            except RuntimeError:
                continue  # the app changed the span while it was read: written at the next tick
            if not ended:
                row = (*row[:8], None, *row[9:])
            rows.append((*row, self._owner, now))
        return rows

    def _connect(self) -> sqlite3.Connection | None:
        if self._connection is None and not self._unusable:
            try:
                self._connection = open_store(self.path, busy_timeout=0)
            except Exception as error:
                self._unusable = True
                report.debug(f"pending spans: the store {self.path} cannot be opened ({error})")
        return self._connection

    # The processor's life.

    def after_fork_in_child(self) -> None:
        self._open.clear()
        self._ended.clear()
        self._written = frozenset()
        if self._connection is not None:
            _INHERITED.append(self._connection)  # never closed in the child (see store.py)
        self._connection = None
        self._stop = threading.Event()
        # Started again in `restart_after_fork`, once `threading` has forgotten the parent's threads.
        self._restart, self._thread = self._thread is not None, None

    def restart_after_fork(self) -> None:
        restart, self._restart = self._restart, False
        if restart and not self._stop.is_set():
            self._start()

    def shutdown(self) -> None:
        # The thread closes the connection when it sees this; an exit never waits for it.
        self._stop.set()
        self._thread = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_INHERITED: list[sqlite3.Connection] = []
_instances: weakref.WeakSet[PendingSpans] = weakref.WeakSet()


def after_fork_in_child() -> None:
    """What a fork does to the pending-span writers (`process.fork` calls it, the only caller)."""
    for instance in list(_instances):
        instance.after_fork_in_child()


def restart_after_fork() -> None:
    """The child's writer threads, if the parent had them (`process.fork`, step 5)."""
    for instance in list(_instances):
        instance.restart_after_fork()
