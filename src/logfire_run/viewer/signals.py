"""Reading metrics and log records back from the store: requests per endpoint, and the latest records.

`request_metrics()` adds up the HTTP server duration histograms that the processes wrote over a time
window (the store keeps deltas: what each process measured in each collection interval), per
service and route: requests, errors (a 5xx status, or an `error.type`), and p50/p95/p99 estimated
from the merged buckets, in milliseconds. `recent_logs()` gives the newest log records, in spans or
not, filtered by service, level and text. Both are plain functions over an open store, for the
terminal (`print_metrics`, `print_logs`) and any other view.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, TextIO

from logfire_run.store_format import has_logs, has_metrics
from logfire_run.viewer.inert import visible
from logfire_run.viewer.model import LOG_COLUMNS, StoredLog, _loads, stored_log
from logfire_run.viewer.text import _time

__all__ = [
    "RouteMetrics",
    "parse_window",
    "print_logs",
    "print_metrics",
    "recent_logs",
    "request_metrics",
    "route_dict",
]

#: The HTTP server duration histograms: OpenTelemetry's older semantic conventions (milliseconds,
#: what its 0.x instrumentations record by default) and the stable ones (seconds).
SERVER_DURATIONS = {"http.server.duration": 1.0, "http.server.request.duration": 1000.0}
_UNITS = {"ms": 1.0, "s": 1000.0, "us": 0.001}


@dataclass
class RouteMetrics:
    """One endpoint of one service over the window; durations in milliseconds (None: no requests)."""

    service: str
    route: str
    count: int
    errors: int
    p50: float | None
    p95: float | None
    p99: float | None


def parse_window(text: str) -> float:
    """Seconds in `30s`, `15m`, `2h`, `7d` (a bare number is seconds); raises ValueError."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise ValueError(f"invalid time window {text!r}: use a number with s, m, h or d (15m, 2h)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _route(attributes: dict[str, Any]) -> str:
    method = attributes.get("http.request.method") or attributes.get("http.method") or ""
    target = (
        attributes.get("http.route")
        or attributes.get("http.target")
        or attributes.get("url.path")
        or attributes.get("url.template")
        or ""
    )
    return f"{method} {target}".strip() or "(no route)"


def _failed(attributes: dict[str, Any]) -> bool:
    status = attributes.get("http.response.status_code", attributes.get("http.status_code"))
    if isinstance(status, (int, str)) and str(status).isdigit() and int(status) >= 500:
        return True
    return bool(attributes.get("error.type"))


class _Histogram:
    """Merged buckets: upper bound (ms; inf for the last) -> count, with the smallest and largest value."""

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.buckets: dict[float, int] = {}
        self.low = float("inf")
        self.high = float("-inf")

    def add(
        self, count: int, bounds: list[float], counts: list[int], low: Any, high: Any, scale: float
    ) -> None:
        self.count += count
        for index, bucket_count in enumerate(counts):
            upper = bounds[index] * scale if index < len(bounds) else float("inf")
            self.buckets[upper] = self.buckets.get(upper, 0) + int(bucket_count)
        if isinstance(low, (int, float)) and count:
            self.low = min(self.low, low * scale)
        if isinstance(high, (int, float)) and count:
            self.high = max(self.high, high * scale)

    def percentile(self, fraction: float) -> float | None:
        """The value below which `fraction` of the measurements fall, interpolated inside its bucket."""
        total = sum(self.buckets.values())
        if not total:
            return None
        rank = fraction * total
        seen = 0
        lower = min(self.low, 0.0) if self.low != float("inf") else 0.0
        for upper in sorted(self.buckets):
            in_bucket = self.buckets[upper]
            if in_bucket and seen + in_bucket >= rank:
                top = upper if upper != float("inf") else self.high
                bottom = max(lower, self.low) if self.low != float("inf") else lower
                top = min(top, self.high) if self.high != float("-inf") else top
                value = bottom + (top - bottom) * (rank - seen) / in_bucket
                return round(max(bottom, min(value, top)), 3)
            seen += in_bucket
            lower = upper
        return round(self.high, 3) if self.high != float("-inf") else None


def request_metrics(
    connection: sqlite3.Connection, window_seconds: float, service: str | None = None
) -> list[RouteMetrics]:
    """Requests, errors and duration percentiles per (service, route) over the last `window_seconds`."""
    if not has_metrics(connection):
        return []
    since = time.time_ns() - int(window_seconds * 1e9)
    names = list(SERVER_DURATIONS)
    query = (
        "SELECT name, unit, temporality, service, pid, start_ns, time_ns, attributes, count, min, max,"
        f" bounds, counts FROM metrics WHERE kind = 'histogram' AND name IN ({','.join('?' * len(names))})"
        " AND time_ns >= ?"
    )
    parameters: list[Any] = [*names, since]
    if service is not None:
        query += " AND service = ?"
        parameters.append(service)
    rows = connection.execute(query + " ORDER BY id", parameters).fetchall()
    # A delta row is what one interval added; a cumulative one (not what the agent writes, but a
    # store is a file anyone may write) holds its whole series so far: only the last one counts.
    latest: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    kept: list[tuple[Any, ...]] = []
    for row in rows:
        if row[2] == "cumulative":
            latest[(row[0], row[3], row[4], row[5], row[7])] = row
        else:
            kept.append(row)
    routes: dict[tuple[str, str], _Histogram] = {}
    for name, unit, _, service_name, _, _, _, attributes_text, count, low, high, bounds, counts in [
        *kept,
        *latest.values(),
    ]:
        attributes = _loads(attributes_text, {})
        scale = _UNITS.get(unit or "", SERVER_DURATIONS[name])
        histogram = routes.setdefault((service_name or "", _route(attributes)), _Histogram())
        histogram.add(int(count or 0), _floats(bounds), _floats(counts), low, high, scale)
        if _failed(attributes):
            histogram.errors += int(count or 0)
    result = [
        RouteMetrics(
            service=key[0],
            route=key[1],
            count=histogram.count,
            errors=histogram.errors,
            p50=histogram.percentile(0.50),
            p95=histogram.percentile(0.95),
            p99=histogram.percentile(0.99),
        )
        for key, histogram in routes.items()
        if histogram.count
    ]
    result.sort(key=lambda item: (item.service, -item.count, item.route))
    return result


def _floats(text: str | None) -> list[Any]:
    try:
        values = json.loads(text) if text else []
    except ValueError:
        return []
    return [value for value in values if isinstance(value, (int, float))] if isinstance(values, list) else []


def route_dict(metrics: RouteMetrics) -> dict[str, Any]:
    """One endpoint as flat JSON data; durations in milliseconds."""
    return {
        "service": metrics.service,
        "route": metrics.route,
        "count": metrics.count,
        "errors": metrics.errors,
        "p50": metrics.p50,
        "p95": metrics.p95,
        "p99": metrics.p99,
    }


def _milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def print_metrics(rows: list[RouteMetrics], out: TextIO) -> None:
    """A table, one line per endpoint, its texts shown inert."""
    services = [visible(row.service) for row in rows]
    routes = [visible(row.route) for row in rows]
    service_width = max([len("service"), *map(len, services)])
    route_width = max([len("route"), *map(len, routes)])
    out.write(
        f"{'service':<{service_width}}  {'route':<{route_width}}  {'requests':>8}  {'errors':>6}  "
        f"{'p50':>10}  {'p95':>10}  {'p99':>10}\n"
    )
    for row, service, route in zip(rows, services, routes, strict=True):
        out.write(
            f"{service:<{service_width}}  {route:<{route_width}}  {row.count:>8}  {row.errors:>6}  "
            f"{_milliseconds(row.p50):>10}  {_milliseconds(row.p95):>10}  {_milliseconds(row.p99):>10}\n"
        )


# Log records


def recent_logs(
    connection: sqlite3.Connection,
    limit: int,
    *,
    service: str | None = None,
    min_level: int | None = None,
    text: str | None = None,
) -> list[StoredLog]:
    """The newest `limit` log records that match, oldest first (in spans or not: empty ids outside)."""
    if not has_logs(connection):
        return []
    conditions: list[str] = []
    parameters: list[Any] = []
    if service is not None:
        conditions.append("service = ?")
        parameters.append(service)
    if min_level is not None:
        conditions.append("level_no >= ?")
        parameters.append(min_level)
    if text:
        conditions.append("(instr(lower(message), lower(?)) > 0 OR instr(lower(logger), lower(?)) > 0)")
        parameters.extend([text, text])
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = connection.execute(
        f"SELECT {LOG_COLUMNS} FROM logs{where} ORDER BY id DESC LIMIT ?", [*parameters, max(1, limit)]
    ).fetchall()
    return [stored_log(row) for row in reversed(rows)]


def print_logs(logs: list[StoredLog], out: TextIO) -> None:
    """One line per record (time, service, level, logger, message, trace), then its exception's lines."""
    for log in logs:
        trace = f"  [trace {log.trace_id[:16]}]" if log.trace_id else ""
        out.write(
            f"{_time(log.time_ns)}  {visible(log.service)}  {visible(log.level):<8} "
            f"{visible(log.logger)}: {visible(log.message)}{trace}\n"
        )
        for line in (log.exception or "").splitlines():
            out.write(f"    {visible(line)}\n")
