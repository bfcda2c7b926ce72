"""The local trace store: a `SpanExporter` that writes spans into one SQLite file (WAL mode).

It is the default exporter when neither an exporter nor an OTLP endpoint is configured, and the
viewer (`logfire-run-view`) reads the same file. Every process of every service the user starts
writes into it at once, so each write is one short `BEGIN IMMEDIATE` transaction per batch, with
SQLite's busy timeout plus our own retries when another process holds the write lock.

Where it stops:
- Writes happen in the BatchSpanProcessor's worker thread, never on the request path; when the
  store cannot keep up, the processor's bounded queue drops spans (OpenTelemetry's own behaviour).
- A store that cannot be opened (bad path, read-only disk) is reported once per process on stderr
  and this process's spans are dropped; the app runs on.
- The connection belongs to one process: a forked child opens its own and never touches (nor
  closes) the one it inherited, which SQLite forbids.
- Retention: the newest `DEFAULT_MAX_SPANS` spans younger than `DEFAULT_MAX_AGE_SECONDS` are kept.
  Pruning runs when a process first opens the store and then every `PRUNE_EVERY` spans it writes;
  a trace cut by pruning shows its surviving spans as orphans in the viewer.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from logfire_run.agent import report

__all__ = [
    "DEFAULT_MAX_AGE_SECONDS",
    "DEFAULT_MAX_SPANS",
    "SCHEMA_VERSION",
    "StoreExporter",
    "open_store",
]

#: Retention: at most this many spans are kept (roughly 100-150 MB with typical HTTP attributes) ...
DEFAULT_MAX_SPANS = 200_000
#: ... and none older than this (7 days).
DEFAULT_MAX_AGE_SECONDS = 7 * 24 * 3600
#: A writing process prunes after writing this many spans (and once when it opens the store).
PRUNE_EVERY = 5_000
#: SQLite waits this long for another process's write lock before returning "database is locked".
BUSY_TIMEOUT_SECONDS = 10.0
#: Past SQLite's own wait, a batch is retried (with jittered backoff) for this long, then dropped.
WRITE_PATIENCE_SECONDS = 30.0

SCHEMA_VERSION = 1
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6  # primary result codes (extended codes keep them in the low byte)
_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS spans (
        id INTEGER PRIMARY KEY,
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        parent_id TEXT,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        service TEXT,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        status TEXT NOT NULL,
        status_message TEXT,
        attributes TEXT,
        events TEXT,
        links TEXT,
        scope TEXT,
        pid INTEGER
    )
    """,
    "CREATE INDEX IF NOT EXISTS spans_trace ON spans (trace_id)",
    "CREATE INDEX IF NOT EXISTS spans_start ON spans (start_ns)",
)
_INSERT = (
    "INSERT INTO spans (trace_id, span_id, parent_id, name, kind, service, start_ns, end_ns, status,"
    " status_message, attributes, events, links, scope, pid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)

Row = tuple[Any, ...]


def open_store(path: str, *, create: bool = True) -> sqlite3.Connection:
    """A connection to the store at `path` (autocommit; transactions are explicit), schema in place.

    With `create=False` a missing file raises FileNotFoundError instead of creating an empty store.
    """
    if create:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
    elif not os.path.exists(path):
        raise FileNotFoundError(path)
    connection = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
    )
    try:
        _with_retries(lambda: _prepare(connection))
    except BaseException:
        connection.close()
        raise
    return connection


def _prepare(connection: sqlite3.Connection) -> None:
    # WAL lets the viewer read while services write, and writers never block readers. Switching
    # an existing WAL store is a no-op; a filesystem without shared memory keeps its journal mode.
    connection.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode never corrupts the file; a power cut may lose the last batches only.
    connection.execute("PRAGMA synchronous=NORMAL")
    if connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA:
            connection.execute(statement)
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        _rollback(connection)
        raise


def _rollback(connection: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        if connection.in_transaction:
            connection.execute("ROLLBACK")


def _is_busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(error)
    return "locked" in text or "busy" in text


def _with_retries(action: Any) -> Any:
    """Run `action`, retrying while another process holds the lock past SQLite's own busy wait."""
    deadline = time.monotonic() + WRITE_PATIENCE_SECONDS
    delay = 0.01
    while True:
        try:
            return action()
        except sqlite3.OperationalError as error:
            if not _is_busy(error) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.5)


def _json(value: Any) -> str | None:
    if not value:
        return None
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def span_row(span: ReadableSpan, pid: int) -> Row:
    """One span as a row of the `spans` table."""
    context = span.context
    parent = span.parent
    resource = span.resource.attributes
    status = span.status
    events = [
        {"name": event.name, "time_ns": event.timestamp, "attributes": dict(event.attributes or {})}
        for event in span.events
    ]
    links = [
        {
            "trace_id": format(link.context.trace_id, "032x"),
            "span_id": format(link.context.span_id, "016x"),
            "attributes": dict(link.attributes or {}),
        }
        for link in span.links
    ]
    start = span.start_time or 0
    scope = span.instrumentation_scope
    return (
        format(context.trace_id, "032x") if context else "",
        format(context.span_id, "016x") if context else "",
        format(parent.span_id, "016x") if parent is not None else None,
        span.name,
        span.kind.name,
        str(resource.get("service.name", "")),
        start,
        span.end_time or start,
        status.status_code.name,
        status.description,
        _json(dict(span.attributes or {})),
        _json(events),
        _json(links),
        scope.name if scope is not None else None,
        pid,
    )


class StoreExporter(SpanExporter):
    """Writes each batch of spans into the SQLite store at `path`, in one transaction."""

    def __init__(
        self,
        path: str,
        *,
        max_spans: int = DEFAULT_MAX_SPANS,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        prune_every: int = PRUNE_EVERY,
    ) -> None:
        self.path = path
        self.max_spans = max_spans
        self.max_age_seconds = max_age_seconds
        self.prune_every = prune_every
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._unusable = False
        self._since_prune = 0
        self._shutdown = False
        if hasattr(os, "register_at_fork"):
            reinit = weakref.WeakMethod(self._after_fork)

            def after_in_child() -> None:
                method = reinit()
                if method is not None:
                    method()

            os.register_at_fork(after_in_child=after_in_child)

    def _after_fork(self) -> None:
        # The parent's lock may have been held by its exporting thread at fork time, and SQLite
        # connections must not cross a fork: the child starts afresh. The inherited connection is
        # kept referenced so that it is never closed (closing it could checkpoint the parent's WAL).
        self._lock = threading.Lock()
        if self._connection is not None:
            _INHERITED.append(self._connection)
        self._connection = None
        self._pid = os.getpid()
        self._since_prune = 0

    def _connect(self) -> sqlite3.Connection | None:
        if self._connection is not None:
            return self._connection
        if self._unusable:
            return None
        try:
            connection = open_store(self.path)
        except Exception as error:
            self._unusable = True
            report.problem(
                "store:open",
                f"the trace store {self.path} cannot be opened ({type(error).__name__}: {error}); "
                "spans from this process are dropped, the app runs on (set --store or LOGFIRE_STORE)",
            )
            return None
        self._connection = connection
        self._prune(connection)
        return connection

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown or self._unusable:
            return SpanExportResult.FAILURE
        try:
            rows = [span_row(span, self._pid) for span in spans]
        except Exception as error:
            report.problem("store:convert", f"spans could not be stored ({type(error).__name__}: {error})")
            return SpanExportResult.FAILURE
        with self._lock:
            connection = self._connect()
            if connection is None:
                return SpanExportResult.FAILURE
            try:
                _with_retries(lambda: _insert(connection, rows))
            except Exception as error:
                report.problem(
                    "store:write",
                    f"spans could not be written to the trace store {self.path} "
                    f"({type(error).__name__}: {error}); they are dropped, the app runs on",
                )
                return SpanExportResult.FAILURE
            self._since_prune += len(rows)
            if self._since_prune >= self.prune_every:
                self._prune(connection)
        return SpanExportResult.SUCCESS

    def _prune(self, connection: sqlite3.Connection) -> None:
        """Apply the retention caps: two range deletes on indexed columns, cheap when little is due."""
        self._since_prune = 0
        oldest_kept_ns = time.time_ns() - int(self.max_age_seconds * 1e9)

        def prune() -> None:
            connection.execute("BEGIN IMMEDIATE")
            try:
                newest = connection.execute("SELECT max(id) FROM spans").fetchone()[0]
                if newest is not None and newest > self.max_spans:
                    connection.execute("DELETE FROM spans WHERE id <= ?", (newest - self.max_spans,))
                connection.execute("DELETE FROM spans WHERE start_ns < ?", (oldest_kept_ns,))
                connection.execute("COMMIT")
            except BaseException:
                _rollback(connection)
                raise

        try:
            _with_retries(prune)
        except Exception as error:
            report.debug(f"trace store pruning failed: {error}")

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            connection, self._connection = self._connection, None
        if connection is not None and self._pid == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every export is committed before it returns


def _insert(connection: sqlite3.Connection, rows: list[Row]) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.executemany(_INSERT, rows)
        connection.execute("COMMIT")
    except BaseException:
        _rollback(connection)
        raise


#: Connections inherited through fork: never used, never closed (see StoreExporter._after_fork).
_INHERITED: list[sqlite3.Connection] = []
