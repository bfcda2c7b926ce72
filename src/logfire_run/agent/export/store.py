"""The local trace store's exporter: a `SpanExporter` that writes spans into the store file.

It is the default exporter when neither an exporter nor an OTLP endpoint is configured, and the
viewer (`logfire-run-view`) reads the same file. The file format (schema, opening, retention, lock
retries) is `store_format`'s; this module turns finished OpenTelemetry spans into its rows. Every
process of every service the user starts writes into one file at once, so each batch is one short
`BEGIN IMMEDIATE` transaction, tried again after a short jittered wait while another process holds
the write lock.

Where it stops:
- Writes happen in the BatchSpanProcessor's worker thread, never on the request path; when the
  store cannot keep up, the processor's bounded queue drops spans (OpenTelemetry's own behaviour).
- A store that cannot be opened (bad path, read-only disk) is reported once per process on stderr
  and this process's spans are dropped; the app runs on. So is a store path that is a symbolic link,
  or that has a -wal or -shm link beside it, or a store of another user's in a folder anyone can
  write to (`files.check_own_file`): the agent writes only files it created itself.
- At exit, a batch that finds another process holding the store's lock goes into a spool of this
  process's own instead of waiting (`spool`): the exit budget is never spent in that queue. Spools
  are moved into the store by the next process that writes (when it opens the store, at most once a
  second as it writes, and at its exit if the lock was free then).
- A store deleted while the process writes to it is noticed at the next batch (a stat of the path)
  and said once: SQLite would go on writing into the deleted file. It is not made again under the
  same name, because the connections of other processes still hold the deleted file's -wal and
  -shm, which SQLite removes by name when it closes them.
- The connection belongs to one process: a forked child opens its own and never touches (nor
  closes) the one it inherited, which SQLite forbids.
- Retention: the newest `DEFAULT_MAX_SPANS` spans written less than `DEFAULT_MAX_AGE_SECONDS` ago
  are kept. Pruning runs when a process first opens the store and then every `PRUNE_EVERY` spans it
  writes; a trace cut by pruning shows its surviving spans as orphans in the viewer.
"""

from __future__ import annotations

import contextlib
import json
import json.encoder
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from logfire_run.agent import report
from logfire_run.agent.export import delivery, spool
from logfire_run.agent.export.otlp_encoding import encodable
from logfire_run.files import UnsafeFileError
from logfire_run.store_format import (
    DEFAULT_MAX_AGE_SECONDS,
    DEFAULT_MAX_LOGS,
    DEFAULT_MAX_METRIC_POINTS,
    DEFAULT_MAX_SPANS,
    Row,
    insert_batch,
    insert_logs,
    insert_metrics,
    lock_taken,
    open_store,
    prune,
    prune_logs,
    prune_metrics,
    site_attributes,
    trace_key,
    with_retries,
)

__all__ = ["PRUNE_EVERY", "StoreExporter", "log_rows", "span_row", "span_rows"]

#: A writing process prunes after writing this many spans (and once when it opens the store).
PRUNE_EVERY = 5_000

# One encoder for every row: json.dumps() with options builds a new encoder on each call.
_python_encode = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False).encode


def _c_encoder() -> Callable[[Any], str] | None:
    """The C encoder behind `_python_encode`, built once instead of once per call.

    `JSONEncoder.encode` builds a new C encoder object for every value it encodes (about 1 us of a
    15-attribute span's 4). Built here with the same options, without the circular-reference check
    (rows hold attribute values, events and links: flat data, never cycles). None when this Python's
    json has no C encoder or builds it differently, and the result is checked against the Python one.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    encode_string = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or encode_string is None:
        report.fallback("store-json", "this Python's json has no C encoder")
        return None
    try:
        # The arguments JSONEncoder.iterencode gives it: markers, default, string encoder, indent,
        # key and item separators, sort_keys, skipkeys, allow_nan.
        iterencode = make(None, str, encode_string, None, ":", ",", False, False, True)

        def encode(value: Any) -> str:
            return "".join(iterencode(value, 0))

        sample = {"s": 'é\n"', "i": -1, "f": 0.1, "n": float("nan"), "b": True, "t": (1, "x"), "o": object}
        if encode(sample) != _python_encode(sample) or encode([sample]) != _python_encode([sample]):
            report.fallback("store-json", "json's C encoder writes rows differently from json.dumps")
            return None
    except Exception as error:
        report.fallback("store-json", f"json's C encoder could not be used ({type(error).__name__}: {error})")
        return None
    return encode


_encode: Callable[[Any], str] = _c_encoder() or _python_encode
_KIND_NAMES = {kind: kind.name for kind in SpanKind}
_STATUS_NAMES = {code: code.name for code in StatusCode}


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
    return span_rows((span,), pid)[0]


def span_rows(spans: Sequence[ReadableSpan], pid: int) -> list[Row]:
    """A batch of spans as rows of the `spans` table, in order.

    What spans share is worked out once per batch: the service name once per resource, the scope name
    once per scope. What is left per span is reading its fields and encoding its attributes.
    """
    services: dict[int, str] = {}
    scopes: dict[int, str | None] = {}
    kind_names, status_names, encode = _KIND_NAMES, _STATUS_NAMES, _encode
    rows: list[Row] = []
    append = rows.append
    for span in spans:
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
        resource = span.resource
        service = services.get(id(resource))
        if service is None:
            service = services[id(resource)] = _service_name(resource)
        scope = span.instrumentation_scope
        if id(scope) in scopes:
            scope_name = scopes[id(scope)]
        else:
            scope_name = scopes[id(scope)] = scope.name if scope is not None else None
        start = span.start_time or 0
        trace_id = context.trace_id if context else 0
        append(
            (
                trace_id >> 65,  # trace_key(), inlined
                f"{trace_id:032x}",
                f"{context.span_id:016x}" if context else "",
                f"{parent.span_id:016x}" if parent is not None else None,
                span.name,
                kind_names.get(span.kind) or str(span.kind),
                service,
                start,
                span.end_time or start,
                status_names.get(status.status_code) or str(status.status_code),
                status.description,
                encode(
                    attributes._dict if type(attributes) is BoundedAttributes else _plain_mapping(attributes)
                )
                if attributes
                else None,
                encode([_event(event) for event in events]) if events else None,
                encode([_link(link) for link in links]) if links else None,
                scope_name,
                pid,
            )
        )
    return rows


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


def log_rows(batch: Sequence[Any], pid: int, service: str) -> list[Row]:
    """Captured log records (`agent.logs.Captured`) as rows of the `logs` table; a record made outside
    any span has empty ids (and trace key 0).

    Records come in runs from one span and one call site: the ids' text and the encoded attributes
    are worked out once per span and once per site in a batch."""
    spans: dict[tuple[int, int], tuple[int, str, str]] = {(0, 0): (0, "", "")}
    sites: dict[Any, str] = {}
    rows: list[Row] = []
    append = rows.append
    for when, levelno, levelname, logger, message, exception, trace_id, span_id, _flags, site in batch:
        ids = spans.get((trace_id, span_id))
        if ids is None:
            ids = spans[(trace_id, span_id)] = (
                (trace_key(trace_id), f"{trace_id:032x}", f"{span_id:016x}") if trace_id else (0, "", "")
            )
        attributes = sites.get(site)
        if attributes is None:
            attributes = sites[site] = _encode(site_attributes(site))
        append((*ids, when, levelno, levelname, logger, message, exception, attributes, service, pid))
    return rows


class StoreExporter(SpanExporter):
    """Writes each batch of spans into the SQLite store at `path`, in one transaction."""

    #: Writes a local file: a batch being written when the process ends is lost, not on the wire.
    local = True

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
        self._next_spool_check = 0.0
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._unusable = False
        self._since_prune = 0
        self._shutdown = False
        #: (device, inode) of the store file this process's connection writes to.
        self._identity: tuple[int, int] | None = None
        #: The spools this process wrote at exit (`merge_spools_at_exit` sees them moved in).
        self._spooled: list[str] = []
        _store_exporters.add(self)

    def after_fork_in_child(self) -> None:
        # The parent's lock may have been held by its exporting thread at fork time, and SQLite
        # connections must not cross a fork: the child starts afresh. The inherited connection is
        # kept referenced so that it is never closed (closing it could checkpoint the parent's WAL).
        self._lock = threading.Lock()
        if self._connection is not None:
            _INHERITED.append(self._connection)
        self._connection = None
        self._pid = os.getpid()
        self._since_prune = 0
        self._spooled = []

    def _connect(self) -> sqlite3.Connection | None:
        if self._connection is not None:
            return self._connection
        if self._unusable:
            return None
        try:
            connection = in_sqlite(partial(open_store, self.path, busy_timeout=0))
            found = os.lstat(self.path)
        except UnsafeFileError as error:
            self._unusable = True
            report.problem(
                "store:open",
                f"the trace store is refused: {error}; the agent writes only files it created itself, "
                "never through a link: spans from this process are not stored, the app runs on (set "
                "--store or LOGFIRE_STORE to a path in a folder of your own)",
            )
            return None
        except Exception as error:
            self._unusable = True
            report.problem(
                "store:open",
                f"the trace store {self.path} cannot be opened ({type(error).__name__}: {error}); "
                "spans from this process are dropped, the app runs on (set --store or LOGFIRE_STORE)",
            )
            return None
        self._connection = connection
        self._identity = (found.st_dev, found.st_ino)
        if delivery.exit_deadline() is None:  # at exit, nothing but this process's own rows
            self._prune(connection)
        return connection

    @property
    def unusable(self) -> bool:
        """Refused, unopenable or deleted: said once, and this process's spans are not stored."""
        return self._unusable

    def _deleted(self) -> bool:
        """Whether the store file was deleted (or replaced) since this process opened it; said once."""
        try:
            found = os.lstat(self.path)
            if (found.st_dev, found.st_ino) == self._identity:
                return False
        except OSError:
            pass
        # Not closed: SQLite would remove the -wal and -shm by name, which may be a new store's by now.
        if self._connection is not None:
            _INHERITED.append(self._connection)
        self._connection = None
        self._unusable = True
        report.problem(
            "store:deleted",
            f"the trace store {self.path} was deleted while this process wrote to it: spans from this "
            "process are no longer stored (SQLite would write them into the deleted file); the app runs "
            "on, and stores spans again when restarted",
        )
        return True

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown or self._unusable:
            return SpanExportResult.FAILURE
        try:
            rows = span_rows(spans, self._pid)
        except Exception as error:
            report.problem("store:convert", f"spans could not be stored ({type(error).__name__}: {error})")
            return SpanExportResult.FAILURE
        written = self._write(rows, insert_batch, "spans")
        return SpanExportResult.SUCCESS if written else SpanExportResult.FAILURE

    def export_logs(self, batch: Sequence[Any], service: str = "") -> bool:
        """Write captured log records (see `log_rows`) in one transaction; False when they are dropped."""
        if self._shutdown or self._unusable:
            return False
        rows = log_rows(batch, self._pid, service)
        return not rows or self._write(rows, insert_logs, "log records")

    def export_metrics(self, rows: list[Row]) -> bool:
        """Write metric points (rows of `METRIC_COLUMNS`) in one transaction; False when they are dropped."""
        if self._shutdown or self._unusable:
            return False
        return not rows or self._write(rows, insert_metrics, "metric points")

    def _write(
        self, rows: list[Row], insert: Callable[[sqlite3.Connection, list[Row]], None], what: str
    ) -> bool:
        exiting = delivery.exit_deadline() is not None
        with self._lock:
            connection = self._connect()
            if connection is None or self._deleted():
                return False
            try:
                if exiting:
                    return self._write_at_exit(connection, rows, insert)
                try:
                    _insert(connection, insert, rows, give_up=_exit_began)
                except sqlite3.OperationalError as error:
                    # The process began to exit while this write waited for the lock: a spool, now.
                    if not (lock_taken(error) and _exit_began()):
                        raise
                    return self._write_at_exit(connection, rows, insert)
            except Exception as error:
                report.problem(
                    f"store:write:{what}",
                    f"{what} could not be written to the trace store {self.path} "
                    f"({type(error).__name__}: {error}); they are dropped, the app runs on",
                )
                return False
            self._since_prune += len(rows)
            if self._since_prune >= self.prune_every:
                self._prune(connection)
            elif time.monotonic() >= self._next_spool_check:
                self._merge_spools(connection)
        return True

    def _write_at_exit(
        self,
        connection: sqlite3.Connection,
        rows: list[Row],
        insert: Callable[[sqlite3.Connection, list[Row]], None],
    ) -> bool:
        """At exit: the store's lock if it is free at once, else a spool of this process's own
        (`spool`): the exit budget is never spent waiting for other writers."""
        try:
            _insert(connection, insert, rows, wait=False)
        except sqlite3.OperationalError as error:
            if not lock_taken(error):
                raise
            table = _TABLE[insert]

            def to_spool(clean: list[Row]) -> None:
                self._spooled.append(spool.write(self.path, **{table: clean}))

            _cleaned_if_needed(to_spool, rows)
            return True
        # The lock was free: the spools other processes left meanwhile go in now, within the budget.
        self._merge_spools(connection, deadline=delivery.exit_deadline())
        return True

    def _merge_spools(self, connection: sqlite3.Connection, deadline: float | None = None) -> None:
        self._next_spool_check = time.monotonic() + spool.MERGE_EVERY_SECONDS
        try:
            if spool.due(self.path):
                moved = spool.merge(connection, self.path, deadline=deadline, call=in_sqlite)
                report.debug(f"moved {moved} spans from spools into the trace store")
        except Exception as error:
            report.debug(f"trace store spools could not be merged: {type(error).__name__}: {error}")

    def _prune(self, connection: sqlite3.Connection) -> None:
        self._since_prune = 0
        self._merge_spools(connection)
        try:
            in_sqlite(prune_metrics, connection, DEFAULT_MAX_METRIC_POINTS, self.max_age_seconds)
            in_sqlite(prune_logs, connection, DEFAULT_MAX_LOGS, self.max_age_seconds)
            in_sqlite(prune, connection, self.max_spans, self.max_age_seconds)
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


_TABLE: dict[Callable[[sqlite3.Connection, list[Row]], None], str] = {
    insert_batch: "spans",
    insert_logs: "logs",
    insert_metrics: "metrics",
}


def _insert(
    connection: sqlite3.Connection,
    insert: Callable[[sqlite3.Connection, list[Row]], None],
    rows: list[Row],
    *,
    wait: bool = True,
    give_up: Callable[[], bool] | None = None,
) -> None:
    """`insert(connection, rows)` in one transaction, tried again while another process holds the lock
    (`wait`, until `give_up()`), or tried once."""
    if wait:
        _cleaned_if_needed(
            lambda clean: with_retries(lambda: insert(connection, clean), give_up=give_up), rows
        )
    else:
        _cleaned_if_needed(lambda clean: insert(connection, clean), rows)


def _exit_began() -> bool:
    return delivery.exit_deadline() is not None


def _cleaned_if_needed(write: Callable[[list[Row]], object], rows: list[Row]) -> None:
    """`write(rows)`, and again with clean text if SQLite refused some.

    SQLite takes any `str` but one that UTF-8 cannot encode (a lone surrogate: what `os.fsdecode`
    gives for a file name that is not UTF-8), which fails the whole transaction. Then the batch is
    written again with U+FFFD in place of each lone surrogate, in the values that hold one: the
    JSON of attributes too, which stays valid JSON. Rows are checked only then, not on every batch.
    """
    try:
        write(rows)
    except UnicodeEncodeError:
        write([tuple(encodable(value) if type(value) is str else value for value in row) for row in rows])


#: Connections inherited through fork, or to a store deleted meanwhile: never used, never closed (see
#: StoreExporter.after_fork_in_child and `_deleted`).
_INHERITED: list[sqlite3.Connection] = []


#: Every StoreExporter of the process, for `after_fork_in_child` below.
_store_exporters: weakref.WeakSet[StoreExporter] = weakref.WeakSet()


# A fork waits while this process is inside SQLite (milliseconds: one attempt at a transaction, an
# open, a prune), never while a write waits for another process's lock: a child forked while the
# writing thread holds one of SQLite's own mutexes (its allocator's, its file table's) would hang at
# its first SQLite call. `process.fork` calls the functions below.
_sqlite_calls = threading.Lock()
_held_for_fork = False
_R = TypeVar("_R")


def in_sqlite(call: Callable[..., _R], *args: Any) -> _R:
    """`call(*args)`, a fork held off meanwhile."""
    with _sqlite_calls:
        return call(*args)


def before_fork() -> None:
    global _held_for_fork
    _held_for_fork = _sqlite_calls.acquire(timeout=2.0)


def after_fork_in_parent() -> None:
    global _held_for_fork
    if _held_for_fork:
        _held_for_fork = False
        _sqlite_calls.release()


#: How long a process at exit first waits between two tries of the store's lock, while a spool of
#: its own waits to go in (doubled at each try, up to `_SPOOL_RETRY_MAX_SECONDS`).
_SPOOL_RETRY_SECONDS = 0.02
_SPOOL_RETRY_MAX_SECONDS = 0.2


def merge_spools_at_exit() -> None:
    """At exit, move the spools other processes left into the store, within the exit budget (`exits`
    calls it after the flush): the last process of a group that exited together (a pool's parent, a
    server's master, processes started side by side) leaves none behind.

    A process that wrote a spool at exit (it found the lock taken) stays until that spool has gone in,
    within its exit budget: it tries the lock again after 20 ms, then 40, ... 200 ms, and stops as soon
    as another process has taken its spools. Without that, of processes ending together, the last one
    to let go of the lock left the spools written meanwhile for the next run. A process that wrote no
    spool tries the lock once.
    """
    deadline = delivery.exit_deadline()
    pause = _SPOOL_RETRY_SECONDS
    for exporter in list(_store_exporters):
        connection = exporter._connection
        if connection is None or exporter._pid != os.getpid():
            continue
        while True:
            if exporter._lock.acquire(blocking=False):
                try:
                    exporter._merge_spools(connection, deadline=deadline)
                finally:
                    exporter._lock.release()
            # A spool that another process has claimed (renamed) or moved in no longer exists.
            exporter._spooled = [path for path in exporter._spooled if os.path.exists(path)]
            if not exporter._spooled or deadline is None or time.monotonic() + pause >= deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, _SPOOL_RETRY_MAX_SECONDS)


def after_fork_in_child() -> None:
    """What a fork does to the store's writers (`process.fork` calls it, the only caller)."""
    global _sqlite_calls, _held_for_fork
    _sqlite_calls, _held_for_fork = threading.Lock(), False
    for exporter in list(_store_exporters):
        exporter.after_fork_in_child()
