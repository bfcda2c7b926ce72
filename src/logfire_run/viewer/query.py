"""Finding traces fast at the store's cap: the filtered trace list, one trace, the log records.

Everything goes through the per-trace index (`store_index`): the list reads the newest index rows
first, with what each filter can decide on one row in SQL (a service, an error, a route, a span as
long as the minimum), collects trace keys until its page is full, then reads those traces' index
rows and checks every filter exactly on the whole trace. A text query (`q`) reads spans instead,
newest first, and checks each candidate's name and attribute values in Python. A trace opens by the
row-id ranges of its index rows, never by a scan of every span.

The running spans (`pending`) join both: a trace whose spans all still run is listed from them, and
a running span shows in its trace with `state` "running" (its process wrote it lately) or
"unfinished" (its process stopped writing: it died, or hangs).

An older store (no index: schema 1 or 2) is indexed into TEMP tables of the viewer's connection,
never in the file, and brought up to date at each call.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from logfire_run.store_format import has_logs, trace_key
from logfire_run.store_index import INDEX_SCHEMA, backfill
from logfire_run.viewer.model import (
    LOG_COLUMNS,
    StoredLog,
    StoredSpan,
    TraceSummary,
    TreeRow,
    span_from_row,
    stored_log,
    tree,
)

#: A running span whose process has not written for this long is shown as unfinished.
STALE_NS = 15_000_000_000
#: How many matching traces `--slowest` ranks (the newest ones).
SLOWEST_POOL = 5_000
_SPAN_COLUMNS = (
    "trace_id, span_id, parent_id, name, kind, service, start_ns, end_ns, status, status_message,"
    " attributes, events, links, scope, pid"
)
_PART_COLUMNS = (
    "trace_key, trace_id, start_ns, end_ns, longest_ns, spans, errors, root_name, root_service,"
    " services, routes"
)


class FilterError(ValueError):
    """A filter value that cannot be read (`min_duration=fast`)."""


@dataclass
class Filters:
    """What the list shows: every filter set must hold for a trace to be listed."""

    service: str | None = None
    q: str | None = None
    errors: bool = False
    min_duration_ns: int | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    route: str | None = None
    limit: int = 50
    slowest: bool = False

    def any(self) -> bool:
        return bool(
            self.service
            or self.q
            or self.errors
            or self.min_duration_ns
            or self.since_ns is not None
            or self.until_ns is not None
            or self.route
        )


_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_UNITS["d"] = 24 * _UNITS["h"]
_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)?\s*$")


def parse_duration(text: str, default_unit: str = "ms") -> int:
    """`250ms`, `1.5s`, `10m`, `2h`, `1d` (a bare number is in `default_unit`) in nanoseconds."""
    match = _AMOUNT.match(text)
    if match is None:
        raise FilterError(f"{text!r} is not a duration: write it like 250ms, 1.5s, 10m, 2h or 1d")
    return int(float(match.group(1)) * _UNITS[match.group(2) or default_unit])


def parse_time(text: str, now_ns: int) -> int:
    """A moment: how long ago (`10m`, `2h`: a duration) or a date and time (`2026-11-26T14:05`)."""
    try:
        return now_ns - parse_duration(text, default_unit="m")
    except FilterError:
        pass
    import datetime

    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise FilterError(
            f"{text!r} is not a time: write how long ago (10m, 2h, 1d) or a date and time (2026-11-26T14:05)"
        ) from None
    return int(moment.timestamp() * 1e9)


def filters_from(params: Mapping[str, str], now_ns: int) -> Filters:
    """Filters from the list page's URL query (`service`, `q`, `errors`, `min_duration`, `since`,
    `until`, `route`, `limit`): empty values are no filter; raises FilterError on a bad value."""

    def text(name: str) -> str | None:
        value = params.get(name, "").strip()
        return value or None

    filters = Filters(service=text("service"), q=text("q"), route=text("route"))
    filters.errors = params.get("errors", "") in ("1", "true", "on", "yes")
    if text("min_duration"):
        filters.min_duration_ns = parse_duration(params["min_duration"])
    if text("since"):
        filters.since_ns = parse_time(params["since"], now_ns)
    if text("until"):
        filters.until_ns = parse_time(params["until"], now_ns)
    if text("limit"):
        try:
            filters.limit = max(1, min(int(params["limit"]), 1000))
        except ValueError:
            raise FilterError(f"limit={params['limit']!r} is not a number") from None
    filters.slowest = params.get("sort", "") == "slowest"
    return filters


# The index, also for older stores


def prepare(connection: sqlite3.Connection) -> None:
    """Make the index readable on `connection`: the store's own, or TEMP tables for an older store."""
    has_index = connection.execute(
        "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'trace_parts'"
    ).fetchone()
    if has_index:
        return
    for statement in INDEX_SCHEMA:
        connection.execute(
            statement.replace("CREATE TABLE IF NOT EXISTS ", "CREATE TEMP TABLE IF NOT EXISTS ")
        )
    backfill(connection, temp=True)


def _refresh(connection: sqlite3.Connection) -> None:
    if connection.execute(
        "SELECT 1 FROM temp.sqlite_master WHERE type = 'table' AND name = 'trace_parts'"
    ).fetchone():
        backfill(connection, temp=True)


# The trace list


def _part_condition(filters: Filters) -> tuple[str, list[Any]]:
    """SQL that one index row of every matching trace passes: one filter's (the others may hold on
    other rows of the trace, so they are checked on the whole trace afterwards)."""
    if filters.errors:
        return " WHERE errors > 0", []
    if filters.route:
        return " WHERE instr(routes, ?) > 0", [json.dumps(filters.route, ensure_ascii=False)[1:-1]]
    if filters.service is not None:
        return " WHERE instr(services, ?) > 0", [json.dumps(filters.service, ensure_ascii=False)]
    if filters.min_duration_ns:
        return " WHERE longest_ns >= ?", [filters.min_duration_ns]
    # The row holding the trace's first span starts in the window (and so ends after its start).
    clauses, values = [], []
    if filters.until_ns is not None:
        clauses.append("start_ns <= ?")
        values.append(filters.until_ns)
    if filters.since_ns is not None:
        clauses.append("end_ns >= ?")
        values.append(filters.since_ns)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", values


def _text_matches(needle: str, name: str, attributes: str | None) -> bool:
    if needle in name.lower():
        return True
    if not attributes or needle not in attributes.lower():
        return False
    try:
        values = json.loads(attributes)
    except ValueError:
        return False
    if not isinstance(values, dict):
        return False
    return any(needle in _as_text(value).lower() for value in values.values())


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_as_text(item) for item in value)
    return json.dumps(value)


def _candidates(connection: sqlite3.Connection, filters: Filters) -> Iterator[tuple[int, str]]:
    """(trace key, trace id) of possibly matching traces, most recently written first, each once."""
    seen: set[str] = set()
    if filters.q:
        needle = filters.q.lower()
        cursor = connection.execute(
            "SELECT trace_key, trace_id, name, attributes FROM spans"
            " WHERE instr(lower(name), ?) > 0 OR instr(lower(attributes), ?) > 0 ORDER BY id DESC",
            (needle, needle),
        )
        for key, trace_id, name, attributes in cursor:
            if trace_id not in seen and _text_matches(needle, name, attributes):
                seen.add(trace_id)
                yield key, trace_id
        return
    where, values = _part_condition(filters)
    cursor = connection.execute(
        f"SELECT trace_key, trace_id FROM trace_parts{where} ORDER BY id DESC", values
    )
    for key, trace_id in cursor:
        if trace_id not in seen:
            seen.add(trace_id)
            yield key, trace_id


def _summaries(connection: sqlite3.Connection, wanted: dict[str, int]) -> dict[str, TraceSummary]:
    """The summaries of the traces in `wanted` (trace id -> key), from all their index rows."""
    keys = sorted(set(wanted.values()))
    by_trace: dict[str, TraceSummary] = {}
    root_starts: dict[str, int] = {}
    service_starts: dict[str, dict[str, int]] = {}
    for start in range(0, len(keys), 900):
        chunk = keys[start : start + 900]
        rows = connection.execute(
            f"SELECT {_PART_COLUMNS} FROM trace_parts WHERE trace_key IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        for _key, trace_id, begin, end, longest, spans, errors, root, root_service, services, routes in rows:
            if trace_id not in wanted:
                continue
            summary = by_trace.get(trace_id)
            if summary is None:
                summary = by_trace[trace_id] = TraceSummary(trace_id, begin, end, "", [], 0, 0)
            summary.start_ns = min(summary.start_ns, begin)
            summary.end_ns = max(summary.end_ns, end)
            summary.longest_ns = max(summary.longest_ns, longest)
            summary.span_count += spans
            summary.errors += errors
            if root is not None and (not summary.root_name or begin < root_starts.get(trace_id, begin + 1)):
                summary.root_name, summary.root_service = root, root_service or ""
                root_starts[trace_id] = begin
            for service in _loads_list(services):
                first = service_starts.setdefault(trace_id, {})
                first[service] = min(first.get(service, begin), begin)
            for route in _loads_list(routes):
                if route not in summary.routes:
                    summary.routes.append(route)
    for trace_id, first in service_starts.items():
        # In the order they joined the trace, as the terminal viewer lists them.
        by_trace[trace_id].services = sorted(first, key=lambda service: (first[service], service))
    return by_trace


def _loads_list(text: str | None) -> list[str]:
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [str(item) for item in value] if isinstance(value, list) else []


def _matches(summary: TraceSummary, filters: Filters) -> bool:
    """Every filter but `q`, checked on the whole trace."""
    if filters.service is not None and filters.service not in summary.services:
        return False
    if filters.errors and not summary.errors:
        return False
    if filters.route and not any(filters.route in route for route in summary.routes):
        return False
    if filters.min_duration_ns and summary.longest_ns < filters.min_duration_ns:
        return False
    if filters.since_ns is not None and summary.start_ns < filters.since_ns:
        return False
    return not (filters.until_ns is not None and summary.start_ns > filters.until_ns)


def list_traces(
    connection: sqlite3.Connection, filters: Filters, now_ns: int | None = None
) -> list[TraceSummary]:
    """The traces matching `filters`: newest first (or slowest first), at most `filters.limit`."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    _refresh(connection)
    wanted = SLOWEST_POOL if filters.slowest else filters.limit
    found: list[TraceSummary] = []
    candidates = _candidates(connection, filters)
    chunk_size = max(wanted, 50)
    exhausted = False
    while len(found) < wanted and not exhausted:
        chunk: dict[str, int] = {}
        for key, trace_id in candidates:
            chunk[trace_id] = key
            if len(chunk) >= chunk_size:
                break
        else:
            exhausted = True
        if not chunk:
            break
        summaries = _summaries(connection, chunk)
        found.extend(summaries[trace_id] for trace_id in chunk if trace_id in summaries)
        found = [summary for summary in found if _matches(summary, filters)]
        chunk_size *= 4  # few rounds even when most candidates fail an exact check
    found = found[:wanted]
    _add_running(connection, found, filters, now_ns)
    if filters.slowest:
        found.sort(key=lambda summary: summary.duration_ns, reverse=True)
    else:
        found.sort(key=lambda summary: summary.start_ns, reverse=True)
    return found[: filters.limit]


def _pending_rows(connection: sqlite3.Connection, where: str = "", values: tuple[Any, ...] = ()) -> list[Any]:
    if not connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pending'"
    ).fetchone():
        return []
    return connection.execute(
        f"SELECT {_SPAN_COLUMNS}, seen_ns FROM pending{where} ORDER BY start_ns", values
    ).fetchall()


def _pending_span(row: Any, now_ns: int) -> StoredSpan:
    span = span_from_row(row[:15])
    if row[7] is None:
        span.state = "running" if now_ns - row[15] < STALE_NS else "unfinished"
        span.end_ns = max(span.start_ns, now_ns if span.state == "running" else row[15])
    return span


def _add_running(
    connection: sqlite3.Connection, found: list[TraceSummary], filters: Filters, now_ns: int
) -> None:
    """Mark the listed traces with running spans, and add the traces whose spans all still run."""
    rows = _pending_rows(connection)
    if not rows:
        return
    listed = {summary.trace_id: summary for summary in found}
    stored, indexed = _stored_spans(connection, {row[0] for row in rows})
    by_trace: dict[str, list[StoredSpan]] = {}
    for row in rows:
        if row[1] not in stored:  # else it has ended and its row is in `spans`
            by_trace.setdefault(row[0], []).append(_pending_span(row, now_ns))
    for trace_id, spans in by_trace.items():
        running = sum(1 for span in spans if span.state == "running")
        summary = listed.get(trace_id)
        if summary is not None:
            summary.running = running
            summary.span_count += len(spans)
            summary.start_ns = min(summary.start_ns, *(span.start_ns for span in spans))
            summary.end_ns = max(summary.end_ns, *(span.end_ns for span in spans))
            root = next((span for span in spans if span.parent_id is None), None)
            if root is not None and (not summary.root_name or root.start_ns <= summary.start_ns):
                summary.root_name, summary.root_service = root.name, root.service
            for span in spans:
                if span.service not in summary.services:
                    summary.services.append(span.service)
            continue
        if trace_id in indexed:
            continue  # stored already, but not on this page
        summary = summarize_spans(trace_id, spans)
        summary.running = running
        if _matches(summary, filters) and (
            not filters.q
            or any(_text_matches(filters.q.lower(), span.name, json.dumps(span.attributes)) for span in spans)
        ):
            found.append(summary)


def _stored_spans(connection: sqlite3.Connection, trace_ids: set[str]) -> tuple[set[str], set[str]]:
    """(the span ids in `spans` of these traces, the traces that have index rows), in one index scan."""
    keys = sorted({trace_key(int(trace_id, 16)) for trace_id in trace_ids})
    ranges: dict[str, list[tuple[int, int]]] = {}
    for start in range(0, len(keys), 900):
        chunk = keys[start : start + 900]
        for trace_id, first, last in connection.execute(
            "SELECT trace_id, first_row, last_row FROM trace_parts"
            f" WHERE trace_key IN ({','.join('?' * len(chunk))})",
            chunk,
        ):
            if trace_id in trace_ids:
                ranges.setdefault(trace_id, []).append((first, last))
    span_ids: set[str] = set()
    for trace_id, pairs in ranges.items():
        key = trace_key(int(trace_id, 16))
        for first, last in _ranges(pairs):
            span_ids.update(
                row[0]
                for row in connection.execute(
                    "SELECT span_id FROM spans WHERE id BETWEEN ? AND ? AND trace_key = ?", (first, last, key)
                )
            )
    return span_ids, set(ranges)


def summarize_spans(trace_id: str, spans: list[StoredSpan]) -> TraceSummary:
    """A summary made from spans themselves (running spans, or a whole loaded trace)."""
    rows = tree(spans)
    roots = [row.span for row in rows if row.depth == 0]
    true_roots = [span for span in roots if span.parent_id is None]
    root = (true_roots or roots)[0] if roots else None
    summary = TraceSummary(
        trace_id=trace_id,
        start_ns=min((span.start_ns for span in spans), default=0),
        end_ns=max((span.end_ns for span in spans), default=0),
        root_name=root.name if root is not None else "",
        services=list(dict.fromkeys(span.service for span in sorted(spans, key=lambda item: item.start_ns))),
        span_count=len(spans),
        orphan_count=sum(1 for row in rows if row.orphan),
    )
    summary.root_service = root.service if root is not None else ""
    summary.errors = sum(1 for span in spans if span.status == "ERROR")
    summary.longest_ns = max((span.duration_ns for span in spans), default=0)
    summary.routes = list(
        dict.fromkeys(
            str(span.attributes["http.route"]) for span in spans if span.attributes.get("http.route")
        )
    )
    summary.running = sum(1 for span in spans if span.state == "running")
    return summary


# One trace


def _ranges(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for first, last in sorted(pairs):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return [(first, last) for first, last in merged]


def open_trace(
    connection: sqlite3.Connection, trace_id: str, now_ns: int | None = None
) -> tuple[list[TreeRow], list[StoredLog]]:
    """One trace: its spans in tree order (running ones included) and its log records."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    _refresh(connection)
    key = trace_key(int(trace_id, 16))
    parts = connection.execute(
        "SELECT first_row, last_row FROM trace_parts WHERE trace_key = ? AND trace_id = ?", (key, trace_id)
    ).fetchall()
    spans: list[StoredSpan] = []
    for first, last in _ranges(parts):
        rows = connection.execute(
            f"SELECT {_SPAN_COLUMNS} FROM spans WHERE id BETWEEN ? AND ? AND trace_key = ? AND trace_id = ?",
            (first, last, key, trace_id),
        )
        spans.extend(span_from_row(row) for row in rows)
    known = {span.span_id for span in spans}
    for row in _pending_rows(connection, " WHERE trace_key = ? AND trace_id = ?", (key, trace_id)):
        if row[1] not in known:
            known.add(row[1])
            spans.append(_pending_span(row, now_ns))
    spans.sort(key=lambda span: span.start_ns)
    return tree(spans), load_logs(connection, trace_id)


def count_orphans(connection: sqlite3.Connection, summaries: list[TraceSummary]) -> None:
    """Set each summary's orphan count, which the index cannot tell: each trace's spans are read
    (a few milliseconds a trace: the terminal's list of 20 does it, the live list does not)."""
    for summary in summaries:
        rows, _logs = open_trace(connection, summary.trace_id)
        summary.orphan_count = sum(1 for row in rows if row.orphan)


def load_logs(connection: sqlite3.Connection, trace_id: str) -> list[StoredLog]:
    """The log records of one trace, oldest first, found by their index rows."""
    if not has_logs(connection):
        return []
    key = trace_key(int(trace_id, 16))
    ranges = connection.execute(
        "SELECT first_row, last_row FROM log_ranges WHERE trace_key = ?", (key,)
    ).fetchall()
    logs: list[StoredLog] = []
    for first, last in _ranges(ranges):
        rows = connection.execute(
            f"SELECT {LOG_COLUMNS} FROM logs WHERE id BETWEEN ? AND ? AND trace_key = ? AND trace_id = ?",
            (first, last, key, trace_id),
        )
        logs.extend(stored_log(row) for row in rows)
    logs.sort(key=lambda log: log.time_ns)
    return logs


# The log records


LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def list_logs(
    connection: sqlite3.Connection,
    *,
    level: str | None = None,
    service: str | None = None,
    q: str | None = None,
    limit: int = 200,
) -> list[StoredLog]:
    """The newest log records at or above `level`, of `service`, whose message or logger holds `q`."""
    if not has_logs(connection):
        return []
    clauses: list[str] = []
    values: list[Any] = []
    if level:
        number = LEVELS.get(level.lower())
        if number is None:
            raise FilterError(f"level={level!r}: use one of {', '.join(LEVELS)}")
        clauses.append("level_no >= ?")
        values.append(number)
    if service is not None:
        clauses.append("service = ?")
        values.append(service)
    if q:
        clauses.append("(instr(lower(message), ?) > 0 OR instr(lower(logger), ?) > 0)")
        values.extend((q.lower(), q.lower()))
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = connection.execute(
        f"SELECT {LOG_COLUMNS} FROM logs{where} ORDER BY id DESC LIMIT ?", (*values, limit)
    ).fetchall()
    return [stored_log(row) for row in rows]


def services(connection: sqlite3.Connection, limit: int = 2_000) -> list[str]:
    """The services of the newest index rows (for the filter's choices)."""
    names: list[str] = []
    for (text,) in connection.execute("SELECT services FROM trace_parts ORDER BY id DESC LIMIT ?", (limit,)):
        for name in _loads_list(text):
            if name not in names:
                names.append(name)
    return sorted(names)
