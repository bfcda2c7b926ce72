"""The store's per-trace index and its table of running spans (schema 3), shared by writer and viewer.

`trace_parts`: each batch of spans written adds one row per trace it holds, with what the trace list
and its filters need (start, end, longest span, span and error counts, the root span's name, the
services and routes) and the row-id range of those spans. Rows are appended in id order, like the
spans, and nothing is indexed on trace ids: with random ids, an index puts every row of a batch on
another B-tree page, and in WAL mode each touched page is written again at each commit (see
`store_format`). The viewer reads the newest parts first and stops when its page is full; a trace
opens by the row-id ranges of its parts instead of a scan of every span. `log_ranges` does the same
for log records.

`pending`: the spans still running, written by the agent's `export.pending` (spans open for a second
or more), one set of rows per process (`owner`), replaced at each write; `end_ns` is NULL while a
span runs, set for a while after it ends (until its row in `spans` is surely there). `seen_ns` says
when the owner last wrote: a running span whose owner stopped writing is unfinished, not running.

Stdlib only (the viewer reads it); it knows rows, not OpenTelemetry spans.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any

__all__ = [
    "INDEX_SCHEMA",
    "PART_COLUMNS",
    "PENDING_COLUMNS",
    "SPAN_COLUMNS",
    "backfill",
    "build_parts",
    "insert_log_ranges",
    "insert_parts",
    "prune_index",
    "replace_pending",
    "route_of",
]

#: The columns of a `trace_parts` row, in the order `build_parts` makes them.
PART_COLUMNS = (
    "trace_key",
    "trace_id",
    "first_row",
    "last_row",
    "start_ns",
    "end_ns",
    "longest_ns",
    "spans",
    "errors",
    "root_name",
    "root_service",
    "services",
    "routes",
)

#: The columns of a span row (`store_format.COLUMNS`, defined here so that both modules share it).
SPAN_COLUMNS = (
    "trace_key",
    "trace_id",
    "span_id",
    "parent_id",
    "name",
    "kind",
    "service",
    "start_ns",
    "end_ns",
    "status",
    "status_message",
    "attributes",
    "events",
    "links",
    "scope",
    "pid",
)

#: The columns of a `pending` row: a span row's, then its owner and when it was written.
PENDING_COLUMNS = (*SPAN_COLUMNS, "owner", "seen_ns")

INDEX_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS trace_parts (
        id INTEGER PRIMARY KEY,
        trace_key INTEGER NOT NULL,
        trace_id TEXT NOT NULL,
        first_row INTEGER NOT NULL,
        last_row INTEGER NOT NULL,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        longest_ns INTEGER NOT NULL,
        spans INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        root_name TEXT,
        root_service TEXT,
        services TEXT NOT NULL,
        routes TEXT
    )
    """,
    "CREATE TABLE IF NOT EXISTS log_ranges (id INTEGER PRIMARY KEY, trace_key INTEGER NOT NULL,"
    " first_row INTEGER NOT NULL, last_row INTEGER NOT NULL)",
    """
    CREATE TABLE IF NOT EXISTS pending (
        id INTEGER PRIMARY KEY,
        trace_key INTEGER NOT NULL,
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        parent_id TEXT,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        service TEXT,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER,
        status TEXT NOT NULL,
        status_message TEXT,
        attributes TEXT,
        events TEXT,
        links TEXT,
        scope TEXT,
        pid INTEGER,
        owner TEXT NOT NULL,
        seen_ns INTEGER NOT NULL
    )
    """,
)

_ROUTE_KEY = '"http.route":"'
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_decoder = json.JSONDecoder()


def route_of(attributes: str | None) -> str | None:
    """The `http.route` value in a row's attributes (JSON text), found without parsing the rest."""
    if not attributes:
        return None
    start = attributes.find(_ROUTE_KEY)
    if start < 0:
        return None
    start += len(_ROUTE_KEY)
    end = attributes.find('"', start)
    if end < 0:
        return None
    value = attributes[start:end]
    if "\\" in value:
        # Escapes in the value (an escaped quote would also have ended the search early): let json read it.
        try:
            decoded, _ = _decoder.raw_decode(attributes, start - 1)
        except ValueError:
            return None
        return decoded if isinstance(decoded, str) else None
    return value


def build_parts(rows: Sequence[Sequence[Any]], first_id: int) -> list[tuple[Any, ...]]:
    """The `trace_parts` rows for span `rows` (in `store_format.COLUMNS` order) stored from `first_id` on.

    One pass, one small record per trace: the work per span is a dictionary lookup and a few
    comparisons; the route is looked for in server spans only.
    """
    traces: dict[int, list[Any]] = {}
    for index, row in enumerate(rows):
        key = row[0]
        start, end = row[7], row[8]
        part = traces.get(key)
        if part is None:
            # trace id, first, last, start, end, longest, spans, errors, root name, root service,
            # services, routes, the root's start
            part = traces[key] = [
                row[1],
                index,
                index,
                start,
                end,
                end - start,
                0,
                0,
                None,
                None,
                [],
                None,
                0,
            ]
        else:
            part[2] = index
            if start < part[3]:
                part[3] = start
            if end > part[4]:
                part[4] = end
            if end - start > part[5]:
                part[5] = end - start
        part[6] += 1
        if row[9] == "ERROR":
            part[7] += 1
        if row[3] is None and (part[8] is None or start < part[12]):
            part[8], part[9], part[12] = row[4], row[6], start
        service = row[6] or ""
        if service not in part[10]:
            part[10].append(service)
        if row[5] == "SERVER":
            route = route_of(row[11])
            if route:
                routes = part[11] = part[11] or []
                if route not in routes:
                    routes.append(route)
    return [
        (
            key,
            trace_id,
            first_id + first,
            first_id + last,
            start,
            end,
            longest,
            spans,
            errors,
            root_name,
            root_service,
            _encode(services),
            _encode(routes) if routes else None,
        )
        for key, (
            trace_id,
            first,
            last,
            start,
            end,
            longest,
            spans,
            errors,
            root_name,
            root_service,
            services,
            routes,
            _root_start,
        ) in traces.items()
    ]


_INSERT_PARTS = f"INSERT INTO trace_parts ({', '.join(PART_COLUMNS)}) VALUES "
_PART_PLACEHOLDERS = f"({', '.join('?' * len(PART_COLUMNS))})"


def _insert_rows(connection: sqlite3.Connection, head: str, placeholders: str, rows: list[Any]) -> None:
    step = max(999 // placeholders.count("?"), 1)
    for offset in range(0, len(rows), step):
        chunk = rows[offset : offset + step]
        connection.execute(head + ",".join([placeholders] * len(chunk)), list(chain.from_iterable(chunk)))


def insert_parts(connection: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
    """Index span `rows` just inserted (in this transaction, the newest ids of `spans`)."""
    last = connection.execute("SELECT max(id) FROM spans").fetchone()[0]
    _insert_rows(connection, _INSERT_PARTS, _PART_PLACEHOLDERS, build_parts(rows, last - len(rows) + 1))


def insert_log_ranges(connection: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
    """Index log `rows` just inserted (in this transaction, the newest ids of `logs`): one range per trace."""
    last = connection.execute("SELECT max(id) FROM logs").fetchone()[0]
    first_id = last - len(rows) + 1
    ranges: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        key = row[0]
        if not key:
            continue  # a record made outside any span belongs to no trace
        known = ranges.get(key)
        if known is None:
            ranges[key] = [index, index]
        else:
            known[1] = index
    _insert_rows(
        connection,
        "INSERT INTO log_ranges (trace_key, first_row, last_row) VALUES ",
        "(?, ?, ?)",
        [(key, first_id + first, first_id + last) for key, (first, last) in ranges.items()],
    )


_INSERT_PENDING = f"INSERT INTO pending ({', '.join(PENDING_COLUMNS)}) VALUES "
_PENDING_PLACEHOLDERS = f"({', '.join('?' * len(PENDING_COLUMNS))})"


def replace_pending(connection: sqlite3.Connection, owner: str, rows: Iterable[Sequence[Any]]) -> None:
    """Replace the pending rows of `owner` (one process) with `rows`, in one transaction."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute("DELETE FROM pending WHERE owner = ?", (owner,))
        _insert_rows(connection, _INSERT_PENDING, _PENDING_PLACEHOLDERS, list(rows))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


#: Pending rows not written again for this long are deleted by pruning (their process is gone).
PENDING_KEEP_NS = 24 * 3600 * 10**9


def prune_index(connection: sqlite3.Connection, span_cut: int, now_ns: int) -> None:
    """In the pruning transaction: drop the index rows of spans up to id `span_cut`, and stale pending."""
    connection.execute("DELETE FROM trace_parts WHERE last_row <= ?", (span_cut,))
    connection.execute("DELETE FROM pending WHERE seen_ns < ?", (now_ns - PENDING_KEEP_NS,))


def prune_log_ranges(connection: sqlite3.Connection) -> None:
    """In the log pruning transaction: drop the ranges whose records are all gone."""
    connection.execute("DELETE FROM log_ranges WHERE last_row < (SELECT coalesce(min(id), 0) FROM logs)")


_SPAN_ROW = (
    "trace_key, trace_id, span_id, parent_id, name, kind, service, start_ns, end_ns, status,"
    " status_message, attributes"
)


def backfill(connection: sqlite3.Connection, *, temp: bool = False) -> int:
    """Index the spans and log records that have no index rows yet; returns the spans indexed.

    A store upgraded from schema 2 is indexed once, in its upgrade transaction. The viewer calls it
    with `temp` on an older store it may not change: the index then lives in TEMP tables of its own
    connection, brought up to date at each call.
    """
    parts = "temp.trace_parts" if temp else "main.trace_parts"
    ranges = "temp.log_ranges" if temp else "main.log_ranges"
    done = connection.execute(f"SELECT coalesce(max(last_row), 0) FROM {parts}").fetchone()[0]
    count = 0
    while True:
        rows = connection.execute(
            f"SELECT id, {_SPAN_ROW} FROM main.spans WHERE id > ? ORDER BY id LIMIT 5000", (done,)
        ).fetchall()
        if not rows:
            break
        # Ids may have gaps (pruned rows): each run of consecutive ids is indexed as one batch.
        runs: list[list[Any]] = [[rows[0]]]
        for row in rows[1:]:
            if row[0] == runs[-1][-1][0] + 1:
                runs[-1].append(row)
            else:
                runs.append([row])
        for run in runs:
            head = _INSERT_PARTS.replace("trace_parts", parts, 1)
            _insert_rows(
                connection, head, _PART_PLACEHOLDERS, build_parts([row[1:] for row in run], run[0][0])
            )
        done = rows[-1][0]
        count += len(rows)
    has_logs = connection.execute(
        "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'logs'"
    ).fetchone()
    if has_logs:
        logged = connection.execute(f"SELECT coalesce(max(last_row), 0) FROM {ranges}").fetchone()[0]
        connection.execute(
            f"INSERT INTO {ranges} (trace_key, first_row, last_row)"
            " SELECT trace_key, min(id), max(id) FROM main.logs WHERE id > ? AND trace_key != 0"
            " GROUP BY trace_key",
            (logged,),
        )
    return count
