"""The local trace store: a `SpanExporter` that writes spans into one SQLite file (WAL mode).

It is the default exporter when neither an exporter nor an OTLP endpoint is configured, and the
viewer (`logfire-run-view`) reads the same file. Every process of every service the user starts
writes into it at once, so each write is one short `BEGIN IMMEDIATE` transaction per batch, tried
again after a short jittered wait while another process holds the write lock.

Where it stops:
- Writes happen in the BatchSpanProcessor's worker thread, never on the request path; when the
  store cannot keep up, the processor's bounded queue drops spans (OpenTelemetry's own behaviour).
- A store that cannot be opened (bad path, read-only disk) is reported once per process on stderr
  and this process's spans are dropped; the app runs on.
- The connection belongs to one process: a forked child opens its own and never touches (nor
  closes) the one it inherited, which SQLite forbids.
- Retention: the newest `DEFAULT_MAX_SPANS` spans written less than `DEFAULT_MAX_AGE_SECONDS` ago
  are kept. Pruning runs when a process first opens the store and then every `PRUNE_EVERY` spans it writes;
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

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from logfire_run.agent import report

__all__ = [
    "DEFAULT_MAX_AGE_SECONDS",
    "DEFAULT_MAX_SPANS",
    "SCHEMA_VERSION",
    "NotAStoreError",
    "StoreExporter",
    "open_store",
]

#: Retention: at most this many spans are kept (60 MB with small HTTP spans, more with big attributes) ...
DEFAULT_MAX_SPANS = 200_000
#: ... and none older than this (7 days).
DEFAULT_MAX_AGE_SECONDS = 7 * 24 * 3600
#: A writing process prunes after writing this many spans (and once when it opens the store).
PRUNE_EVERY = 5_000
#: Readers (the viewer) let SQLite wait this long for a lock before "database is locked".
BUSY_TIMEOUT_SECONDS = 10.0
#: Writers retry a batch that finds the write lock taken for this long, then drop it (reported).
WRITE_PATIENCE_SECONDS = 30.0
#: Writers' waits between attempts grow from the first to the last value (seconds, jittered).
_RETRY_DELAYS = (0.0005, 0.02)

SCHEMA_VERSION = 1
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6  # primary result codes (extended codes keep them in the low byte)
# No secondary index on spans: trace ids are random, so an index on them puts every span of a
# batch on a different B-tree page, and in WAL mode each touched page is written out again at each
# commit (measured at 200,000 stored spans: about 30 us per span with such an index, 10 without).
# Rows are appended in id order instead; the viewer finds a trace with one scan (about 0.1 s at the
# retention cap), and age pruning uses the small `batches` table: each batch's last row id and time.
_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS spans (
        id INTEGER PRIMARY KEY,
        trace_key INTEGER NOT NULL,
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
    "CREATE TABLE IF NOT EXISTS batches"
    " (id INTEGER PRIMARY KEY, last_span INTEGER NOT NULL, written_ns INTEGER NOT NULL)",
    # Short-lived processes write small batches, so this table can grow large: age pruning, run
    # by every process that opens the store, must not scan it.
    "CREATE INDEX IF NOT EXISTS batches_written ON batches (written_ns)",
)
_INSERT = (
    "INSERT INTO spans (trace_key, trace_id, span_id, parent_id, name, kind, service, start_ns, end_ns,"
    " status, status_message, attributes, events, links, scope, pid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_RECORD_BATCH = "INSERT INTO batches (last_span, written_ns) SELECT max(id), ? FROM spans"


def trace_key(trace_id: int) -> int:
    """A trace's integer key, its top 63 bits (a signed 64-bit integer): scans compare it, not text."""
    return trace_id >> 65


Row = tuple[Any, ...]


def open_store(
    path: str, *, create: bool = True, busy_timeout: float = BUSY_TIMEOUT_SECONDS
) -> sqlite3.Connection:
    """A connection to the store at `path` (autocommit; transactions are explicit), schema in place.

    With `create=False` a missing file raises FileNotFoundError instead of creating an empty store.
    Writers pass `busy_timeout=0` and retry themselves (`_with_retries`): SQLite's own busy handler
    sleeps in steps growing to 100 ms, long enough to leave the lock idle while writers queue up.
    """
    if create:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
    elif not os.path.exists(path):
        raise FileNotFoundError(path)
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        _with_retries(lambda: _prepare(connection, path, create))
    except BaseException:
        connection.close()
        raise
    return connection


class NotAStoreError(Exception):
    """The file is an SQLite database, but not a trace store of this version of logfire-run."""


def _check_version(connection: sqlite3.Connection, path: str) -> bool:
    """True when the store's schema is in place; False for an empty database; raises otherwise."""
    # One statement, so one snapshot: read apart, the version and the tables could straddle another
    # process's commit of the schema, and a store being created would look like a foreign database.
    version, tables = connection.execute(
        "SELECT user_version, (SELECT count(*) FROM sqlite_master) FROM pragma_user_version"
    ).fetchone()
    if version == SCHEMA_VERSION:
        return True
    if version == 0:
        if tables == 0:
            return False
        raise NotAStoreError(f"{path} is an SQLite database but not a logfire-run trace store")
    raise NotAStoreError(
        f"{path} is a trace store of another logfire-run version (schema {version}, this one reads "
        f"{SCHEMA_VERSION}); give another --store path"
    )


def _prepare(connection: sqlite3.Connection, path: str, create: bool) -> None:
    # Checked before anything is written: the viewer never changes a file that is not a store.
    if _check_version(connection, path):
        ready = True
    elif not create:
        raise NotAStoreError(f"{path} holds no traces yet")
    else:
        ready = False
    # WAL lets the viewer read while services write, and writers never block readers. Switching
    # an existing WAL store is a no-op; a filesystem without shared memory keeps its journal mode.
    connection.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode never corrupts the file; a power cut may lose the last batches only.
    connection.execute("PRAGMA synchronous=NORMAL")
    if ready:
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have created the schema while this one waited for the lock.
        if not _check_version(connection, path):
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
    """Run `action` (a whole transaction), again while another process holds the lock."""
    deadline = time.monotonic() + WRITE_PATIENCE_SECONDS
    delay, longest = _RETRY_DELAYS
    while True:
        try:
            return action()
        except sqlite3.OperationalError as error:
            if not _is_busy(error) or time.monotonic() > deadline:
                raise
        # Short, jittered waits: a batch holds the lock for milliseconds, and jitter keeps the
        # waiting writers from retrying in lockstep.
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 1.5, longest)


# One encoder for every row: json.dumps() with options builds a new encoder on each call.
_encode = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False).encode
_KIND_NAMES = {kind: kind.name for kind in SpanKind}
_STATUS_NAMES = {code: code.name for code in StatusCode}


def _json(value: Any) -> str | None:
    return _encode(value) if value else None


def _plain_mapping(mapping: Any) -> Any:
    """A mapping json can encode, without copying it when it is already a dict."""
    if not mapping:
        return None
    # BoundedAttributes keeps a plain dict; reading it directly skips a lock per key, and the span
    # has ended, so nothing writes to it any more.
    inner = getattr(mapping, "_dict", None)
    return inner if isinstance(inner, dict) else dict(mapping)


def _event(event: Any) -> dict[str, Any]:
    return {"name": event.name, "time_ns": event.timestamp, "attributes": _plain_mapping(event.attributes)}


def _link(link: Any) -> dict[str, Any]:
    return {
        "trace_id": f"{link.context.trace_id:032x}",
        "span_id": f"{link.context.span_id:016x}",
        "attributes": _plain_mapping(link.attributes),
    }


def span_row(span: ReadableSpan, pid: int) -> Row:
    """One span as a row of the `spans` table."""
    context = span.context
    parent = span.parent
    status = span.status
    # The SDK's public properties copy (a tuple per call, a lock per attribute read); the stored
    # sequences are read once, directly, falling back to the public properties for other spans.
    attributes = getattr(span, "_attributes", None)
    if attributes is None:
        attributes = span.attributes
    events = getattr(span, "_events", None)
    if events is None:
        events = span.events
    links = getattr(span, "_links", None)
    if links is None:
        links = span.links
    start = span.start_time or 0
    scope = span.instrumentation_scope
    trace_id = context.trace_id if context else 0
    return (
        trace_id >> 65,  # trace_key(), inlined: this runs for every span
        f"{trace_id:032x}",
        f"{context.span_id:016x}" if context else "",
        f"{parent.span_id:016x}" if parent is not None else None,
        span.name,
        _KIND_NAMES.get(span.kind) or str(span.kind),
        _service_name(span.resource),
        start,
        span.end_time or start,
        _STATUS_NAMES.get(status.status_code) or str(status.status_code),
        status.description,
        _encode(attributes._dict if type(attributes) is BoundedAttributes else _plain_mapping(attributes))
        if attributes
        else None,
        _encode([_event(event) for event in events]) if events else None,
        _encode([_link(link) for link in links]) if links else None,
        scope.name if scope is not None else None,
        pid,
    )


_service_names: dict[int, tuple[object, str]] = {}


def _service_name(resource: Resource) -> str:
    # One resource per provider: its service name is looked up once, not once per span. The key is
    # the attributes object, which `configure(service_name=...)` replaces (never edits) on a change.
    attributes = resource.attributes
    cached = _service_names.get(id(attributes))
    if cached is not None and cached[0] is attributes:
        return cached[1]
    name = str(attributes.get("service.name", ""))
    if len(_service_names) > 64:
        _service_names.clear()
    _service_names[id(attributes)] = (attributes, name)
    return name


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
            connection = open_store(self.path, busy_timeout=0)
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
        """Apply the retention caps: range deletes on row ids, cheap when little is due."""
        self._since_prune = 0
        oldest_kept_ns = time.time_ns() - int(self.max_age_seconds * 1e9)

        # A batch's last_span bounds the ids of the spans written up to that batch. Should age
        # pruning empty the table, SQLite starts ids again at 1; the batches pointing at the deleted
        # ids go in the same transaction, so no stale bound is left behind.
        def due() -> int:
            """The highest row id to delete (0: nothing is due)."""
            newest = connection.execute("SELECT max(id) FROM spans").fetchone()[0]
            cut = newest - self.max_spans if newest is not None else 0
            aged = connection.execute(
                "SELECT max(last_span) FROM batches WHERE written_ns < ?", (oldest_kept_ns,)
            ).fetchone()[0]
            return max(cut, aged or 0)

        def prune() -> None:
            # Read first, without the write lock: most calls find nothing to do.
            if due() <= 0:
                return
            connection.execute("BEGIN IMMEDIATE")
            try:
                cut = due()
                if cut > 0:
                    connection.execute("DELETE FROM spans WHERE id <= ?", (cut,))
                    connection.execute("DELETE FROM batches WHERE last_span <= ?", (cut,))
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
        connection.execute(_RECORD_BATCH, (time.time_ns(),))
        connection.execute("COMMIT")
    except BaseException:
        _rollback(connection)
        raise


#: Connections inherited through fork: never used, never closed (see StoreExporter._after_fork).
_INHERITED: list[sqlite3.Connection] = []
