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
  and this process's spans are dropped; the app runs on.
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
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from logfire_run.agent import report
from logfire_run.store_format import (
    DEFAULT_MAX_AGE_SECONDS,
    DEFAULT_MAX_LOGS,
    DEFAULT_MAX_METRIC_POINTS,
    DEFAULT_MAX_SPANS,
    Row,
    insert_batch,
    insert_logs,
    insert_metrics,
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
            rows = span_rows(spans, self._pid)
        except Exception as error:
            report.problem("store:convert", f"spans could not be stored ({type(error).__name__}: {error})")
            return SpanExportResult.FAILURE
        with self._lock:
            connection = self._connect()
            if connection is None:
                return SpanExportResult.FAILURE
            try:
                with_retries(lambda: insert_batch(connection, rows))
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

    def export_logs(self, batch: Sequence[Any], service: str = "") -> bool:
        """Write captured log records (see `log_rows`) in one transaction; False when they are dropped."""
        if self._shutdown or self._unusable:
            return False
        return self._write(log_rows(batch, self._pid, service), insert_logs, "logs", "log records")

    def export_metrics(self, rows: list[Row]) -> bool:
        """Write metric points (rows of `METRIC_COLUMNS`) in one transaction; False when they are dropped."""
        return self._write(rows, insert_metrics, "metrics", "metrics")

    def _write(
        self, rows: list[Row], insert: Callable[[sqlite3.Connection, list[Row]], None], key: str, what: str
    ) -> bool:
        if self._shutdown or self._unusable:
            return False
        if not rows:
            return True
        with self._lock:
            connection = self._connect()
            if connection is None:
                return False
            try:
                with_retries(lambda: insert(connection, rows))
            except Exception as error:
                report.problem(
                    f"store:write-{key}",
                    f"{what} could not be written to the trace store {self.path} "
                    f"({type(error).__name__}: {error}); they are dropped, the app runs on",
                )
                return False
            self._since_prune += len(rows)
            if self._since_prune >= self.prune_every:
                self._prune(connection)
        return True

    def _prune(self, connection: sqlite3.Connection) -> None:
        self._since_prune = 0
        try:
            prune_metrics(connection, DEFAULT_MAX_METRIC_POINTS, self.max_age_seconds)
            prune_logs(connection, DEFAULT_MAX_LOGS, self.max_age_seconds)
            prune(connection, self.max_spans, self.max_age_seconds)
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


#: Connections inherited through fork: never used, never closed (see StoreExporter.after_fork_in_child).
_INHERITED: list[sqlite3.Connection] = []


#: Every StoreExporter of the process, for `after_fork_in_child` below.
_store_exporters: weakref.WeakSet[StoreExporter] = weakref.WeakSet()


def after_fork_in_child() -> None:
    """What a fork does to the store's writers (`process.fork` calls it, the only caller)."""
    for exporter in list(_store_exporters):
        exporter.after_fork_in_child()
