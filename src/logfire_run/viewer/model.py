"""Reading the trace store back: recent traces, one trace's spans, and the tree they form.

The tree is rebuilt from parent ids alone, the way any backend would. A span whose parent id is set
but whose parent is not in the store (never exported, lost by broken propagation, or pruned) is an
orphan: it becomes a root of its own, marked, instead of being dropped.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from logfire_run.store_format import has_logs, trace_key

#: How many of the newest spans are scanned to find the recent traces (the rest is never read).
RECENT_SPAN_WINDOW = 20_000

_COLUMNS = (
    "trace_id, span_id, parent_id, name, kind, service, start_ns, end_ns, status, status_message,"
    " attributes, events, links, scope, pid"
)


@dataclass
class StoredSpan:
    """One span as the store holds it."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    status_message: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    scope: str | None = None
    pid: int | None = None
    #: "" for a stored span; "running" while it runs (`end_ns` is then now), "unfinished" when its
    #: process stopped reporting it (`end_ns` is then when it last did).
    state: str = ""

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


@dataclass
class StoredLog:
    """One captured `logging` record, as the store holds it (see docs/logs.md)."""

    trace_id: str
    span_id: str
    time_ns: int
    level_no: int
    level: str
    logger: str
    message: str
    exception: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    service: str = ""
    pid: int | None = None


LOG_COLUMNS = (
    "trace_id, span_id, time_ns, level_no, level, logger, message, exception, attributes, service, pid"
)


def load_logs(connection: sqlite3.Connection, trace_id: str) -> list[StoredLog]:
    """The log records of one trace, oldest first (none from a store written before logs were kept)."""
    if not has_logs(connection):
        return []
    rows = connection.execute(
        f"SELECT {LOG_COLUMNS} FROM logs WHERE trace_key = ? AND trace_id = ? ORDER BY time_ns, id",
        (trace_key(int(trace_id, 16)), trace_id),
    ).fetchall()
    return [stored_log(row) for row in rows]


def stored_log(row: tuple[Any, ...]) -> StoredLog:
    """A row of `LOG_COLUMNS` (as selected here) as a StoredLog."""
    return StoredLog(
        trace_id=row[0],
        span_id=row[1],
        time_ns=row[2],
        level_no=row[3],
        level=row[4],
        logger=row[5],
        message=row[6],
        exception=row[7],
        attributes=_loads(row[8], {}),
        service=row[9] or "",
        pid=row[10],
    )


def logs_by_span(
    logs: list[StoredLog], rows: list[TreeRow]
) -> tuple[dict[str, list[StoredLog]], list[StoredLog]]:
    """(span id -> its log records, the records whose span is not in the trace)."""
    span_ids = {row.span.span_id for row in rows}
    by_span: dict[str, list[StoredLog]] = {}
    unattached: list[StoredLog] = []
    for log in logs:
        if log.span_id in span_ids:
            by_span.setdefault(log.span_id, []).append(log)
        else:
            unattached.append(log)
    return by_span, unattached


def log_dict(log: StoredLog) -> dict[str, Any]:
    """One log record as plain JSON data (for --json and the HTML page)."""
    return {
        "time_ns": log.time_ns,
        "level": log.level,
        "level_no": log.level_no,
        "logger": log.logger,
        "message": log.message,
        "exception": log.exception,
        "trace_id": log.trace_id,
        "span_id": log.span_id,
        "service": log.service,
        "pid": log.pid,
        "attributes": log.attributes,
    }


@dataclass
class TreeRow:
    """A span in tree order: its depth, and whether it is an orphan (its parent never arrived)."""

    span: StoredSpan
    depth: int
    orphan: bool


@dataclass
class TraceSummary:
    trace_id: str
    start_ns: int
    end_ns: int
    root_name: str
    services: list[str]
    span_count: int
    orphan_count: int
    root_service: str = ""
    errors: int = 0
    #: The longest span's duration (what the minimum-duration filter compares).
    longest_ns: int = 0
    routes: list[str] = field(default_factory=list)
    #: How many of its spans run now (`StoredSpan.state`).
    running: int = 0

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


def _loads(text: str | None, empty: Any) -> Any:
    if not text:
        return empty
    try:
        return json.loads(text)
    except ValueError:
        return empty


def span_from_row(row: tuple[Any, ...]) -> StoredSpan:
    """A `spans` row (the columns of `_COLUMNS`, in order) as a StoredSpan."""
    return StoredSpan(
        trace_id=row[0],
        span_id=row[1],
        parent_id=row[2],
        name=row[3],
        kind=row[4],
        service=row[5] or "",
        start_ns=row[6],
        end_ns=row[7],
        status=row[8],
        status_message=row[9],
        attributes=_loads(row[10], {}),
        events=_loads(row[11], []),
        links=_loads(row[12], []),
        scope=row[13],
        pid=row[14],
    )


def load_trace(connection: sqlite3.Connection, trace_id: str) -> list[StoredSpan]:
    rows = connection.execute(
        f"SELECT {_COLUMNS} FROM spans WHERE trace_key = ? AND trace_id = ? ORDER BY start_ns, id",
        (trace_key(int(trace_id, 16)), trace_id),
    ).fetchall()
    return [span_from_row(row) for row in rows]


def find_trace_ids(connection: sqlite3.Connection, reference: str) -> list[str]:
    """Trace ids matching `reference`: a full id, a prefix of one, or `last` (the newest trace).

    Read from the index (`query.prepare` makes it readable on an older store)."""
    reference = reference.strip().lower()
    if reference in ("last", "latest"):
        recent = recent_traces(connection, 1)
        return [recent[0].trace_id] if recent else []
    if not reference or len(reference) > 32 or any(char not in "0123456789abcdef" for char in reference):
        return []
    # The ids starting with the prefix lie between prefix+"000..." and prefix+"fff...": a range of
    # integer keys (cheap to compare while scanning), then an exact check of the text.
    low = trace_key(int(reference.ljust(32, "0"), 16))
    high = trace_key(int(reference.ljust(32, "f"), 16))
    rows = connection.execute(
        "SELECT DISTINCT trace_id FROM trace_parts WHERE trace_key BETWEEN ? AND ?"
        " AND substr(trace_id, 1, ?) = ?"
        " LIMIT 10",
        (low, high, len(reference), reference),
    ).fetchall()
    return [row[0] for row in rows]


def recent_traces(connection: sqlite3.Connection, limit: int) -> list[TraceSummary]:
    """The `limit` traces with the most recently written spans, newest first."""
    newest: list[str] = []
    seen: set[str] = set()
    cursor = connection.execute("SELECT trace_id FROM spans ORDER BY id DESC LIMIT ?", (RECENT_SPAN_WINDOW,))
    for (trace_id,) in cursor:
        if trace_id not in seen:
            seen.add(trace_id)
            newest.append(trace_id)
            if len(newest) >= limit:
                break
    cursor.close()
    if not newest:
        return []
    # All their spans in one scan of the table (spans has no index on trace ids: see the store).
    keys = sorted({trace_key(int(trace_id, 16)) for trace_id in newest})
    by_trace: dict[str, list[StoredSpan]] = {trace_id: [] for trace_id in newest}
    placeholders = ",".join("?" * len(keys))
    rows = connection.execute(
        f"SELECT {_COLUMNS} FROM spans WHERE trace_key IN ({placeholders}) ORDER BY start_ns, id", keys
    )
    for row in rows:
        if row[0] in by_trace:
            by_trace[row[0]].append(span_from_row(row))
    summaries = [summarize(trace_id, spans) for trace_id, spans in by_trace.items()]
    summaries.sort(key=lambda summary: summary.start_ns, reverse=True)
    return summaries


def summarize(trace_id: str, spans: list[StoredSpan]) -> TraceSummary:
    rows = tree(spans)
    roots = [row.span for row in rows if row.depth == 0]
    true_roots = [span for span in roots if span.parent_id is None]
    root = (true_roots or roots)[0] if roots else None
    services: list[str] = []
    for span in sorted(spans, key=lambda item: item.start_ns):
        if span.service not in services:
            services.append(span.service)
    return TraceSummary(
        trace_id=trace_id,
        start_ns=min((span.start_ns for span in spans), default=0),
        end_ns=max((span.end_ns for span in spans), default=0),
        root_name=root.name if root is not None else "",
        services=services,
        span_count=len(spans),
        orphan_count=sum(1 for row in rows if row.orphan),
    )


def tree(spans: list[StoredSpan]) -> list[TreeRow]:
    """The spans in depth-first order, children by start time; orphans are roots, marked."""
    by_id = {span.span_id: span for span in spans}
    children: dict[str | None, list[StoredSpan]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in by_id and span.parent_id != span.span_id else None
        children.setdefault(parent, []).append(span)
    for siblings in children.values():
        siblings.sort(key=lambda item: (item.start_ns, item.end_ns))
    rows: list[TreeRow] = []
    visited: set[int] = set()

    def walk(span: StoredSpan, depth: int) -> None:
        if id(span) in visited:
            return
        visited.add(id(span))
        orphan = depth == 0 and span.parent_id is not None
        rows.append(TreeRow(span=span, depth=depth, orphan=orphan))
        for child in children.get(span.span_id, []):
            walk(child, depth + 1)

    for root in children.get(None, []):
        walk(root, 0)
    # Spans caught in a parent cycle (duplicate ids) would otherwise be lost: show them as orphans.
    for span in spans:
        if id(span) not in visited:
            walk(span, 0)
    return rows


def key_attributes(span: StoredSpan) -> list[str]:
    """What a person looks for first: HTTP method, route and status, Celery task, errors."""
    attributes = span.attributes
    parts: list[str] = []
    method = attributes.get("http.request.method") or attributes.get("http.method")
    # The path or URL asked for (a server span's name holds the route: /items/7 under /items/{id}).
    target = (
        attributes.get("url.path")
        or attributes.get("http.target")
        or attributes.get("url.full")
        or attributes.get("http.url")
        or attributes.get("http.route")
    )
    request = " ".join(str(item) for item in (method, target) if item)
    if request and request != span.name:
        parts.append(request)
    status = attributes.get("http.response.status_code") or attributes.get("http.status_code")
    if status:
        parts.append(f"status={status}")
    statement = attributes.get("db.query.text") or attributes.get("db.statement")
    if statement:
        text = " ".join(str(statement).split())
        parts.append(text if len(text) <= 120 else text[:119] + "…")
    task = attributes.get("celery.task_name")
    if task and task != span.name:
        parts.append(f"task={task}")
    if attributes.get("celery.state"):
        parts.append(f"state={attributes['celery.state']}")
    if span.status == "ERROR":
        exception = next(
            (event for event in span.events if event.get("name") == "exception"),
            None,
        )
        detail = (exception or {}).get("attributes", {}).get("exception.type") or span.status_message
        parts.append(f"error{': ' + str(detail) if detail else ''}")
    for link in span.links:
        parts.append(f"link={link.get('trace_id', '')[:8]}/{link.get('span_id', '')[:8]}")
    return parts


def format_duration(nanoseconds: int) -> str:
    if nanoseconds < 1_000_000:
        return f"{nanoseconds / 1000:.0f} µs"
    if nanoseconds < 1_000_000_000:
        return f"{nanoseconds / 1_000_000:.1f} ms"
    return f"{nanoseconds / 1_000_000_000:.2f} s"


def span_duration(span: StoredSpan) -> str:
    """A span's duration as the viewers write it; a running span's says so (`running 3.20 s`)."""
    duration = format_duration(span.duration_ns)
    return f"{span.state} {duration}" if span.state else duration


def span_dict(row: TreeRow, logs: list[StoredLog] | None = None) -> dict[str, Any]:
    """One tree row as plain JSON data (for --json and the HTML page), with its log records."""
    span = row.span
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_id": span.parent_id,
        "depth": row.depth,
        "orphan": row.orphan,
        "name": span.name,
        "kind": span.kind,
        "service": span.service,
        "pid": span.pid,
        "start_ns": span.start_ns,
        "end_ns": span.end_ns,
        "duration_ms": span.duration_ns / 1e6,
        "status": span.status,
        "status_message": span.status_message,
        "key_attributes": key_attributes(span),
        "attributes": span.attributes,
        "events": span.events,
        "links": span.links,
        "scope": span.scope,
        "state": span.state,
        "duration": span_duration(span),
        "logs": [log_dict(log) for log in logs or ()],
    }


def summary_dict(summary: TraceSummary) -> dict[str, Any]:
    return {
        "trace_id": summary.trace_id,
        "start_ns": summary.start_ns,
        "duration_ms": summary.duration_ns / 1e6,
        "root": summary.root_name,
        "services": summary.services,
        "spans": summary.span_count,
        "orphans": summary.orphan_count,
        "duration": format_duration(summary.duration_ns),
        "root_service": summary.root_service,
        "errors": summary.errors,
        "running": summary.running,
        "routes": summary.routes,
    }
