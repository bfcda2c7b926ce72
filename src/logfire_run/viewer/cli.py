"""`logfire-run-view`: read the local trace store.

    logfire-run-view                 recent traces, newest first (filters: --service, --errors, ...)
    logfire-run-view TRACE           one trace as a tree (TRACE: an id, a unique prefix, or `last`)
    logfire-run-view --json [TRACE]  the same as JSON, for scripts
    logfire-run-view --html FILE [TRACE]   a self-contained waterfall page (TRACE defaults to `last`)
    logfire-run-view --serve         the live UI in a browser (`viewer.server`)
    logfire-run-view --metrics       requests, errors and p50/p95/p99 per endpoint and service
    logfire-run-view --logs          the latest log records, in spans or not

A separate console script, not a `logfire-run` flag: `logfire-run` passes everything after its own
flags to the program it runs, and this command never runs inside the user's process (so it may use
`rich`).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any

from logfire_run.store_format import NotAStoreError, default_path, open_store
from logfire_run.viewer import model, query, text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logfire-run-view",
        description="Show the traces in logfire-run's local store (see docs/viewer.md).",
    )
    parser.add_argument("trace", nargs="?", help="trace id, a unique prefix of one, or 'last'")
    parser.add_argument(
        "--store",
        metavar="PATH",
        help="the store file (default: LOGFIRE_STORE, else $XDG_DATA_HOME/logfire-run/traces.db)",
    )
    parser.add_argument("--limit", type=int, default=20, help="how many traces to list (20)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--html", metavar="FILE", help="write a waterfall page of the trace to FILE")
    parser.add_argument("--plain", action="store_true", help="plain text even on a terminal")
    filters = parser.add_argument_group("filters of the list (all must hold)")
    filters.add_argument(
        "--service", metavar="NAME", help="traces with a span of this service (--metrics, --logs: too)"
    )
    filters.add_argument(
        "-q", "--query", metavar="TEXT", help="traces with TEXT in a span name or attribute value"
    )
    filters.add_argument("--errors", action="store_true", help="traces with a failed span")
    filters.add_argument(
        "--min-duration", metavar="D", help="traces with a span lasting D or more (250ms, 2s)"
    )
    filters.add_argument(
        "--since",
        metavar="T",
        help="traces started since T: how long ago (10m, 2h) or a time; with --metrics, the window (1h)",
    )
    filters.add_argument("--until", metavar="T", help="traces started before T")
    filters.add_argument(
        "--route", metavar="ROUTE", help="traces with a server span whose route contains ROUTE"
    )
    filters.add_argument("--slowest", action="store_true", help="slowest first instead of newest first")
    serve = parser.add_argument_group("the live UI")
    serve.add_argument(
        "--serve", action="store_true", help="serve the live UI; its URL is the first line printed"
    )
    serve.add_argument(
        "--port", type=int, default=None, help="port to serve on (default 7175, else any free one)"
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (127.0.0.1); any other needs the token printed with the URL",
    )
    signals = parser.add_argument_group("metrics and log records")
    signals.add_argument(
        "--metrics", action="store_true", help="requests, errors and duration percentiles per endpoint"
    )
    signals.add_argument("--logs", action="store_true", help="the latest log records (--limit of them)")
    signals.add_argument(
        "--level", metavar="LEVEL", help="--logs: this level and up (debug, info, warning, error, critical)"
    )
    signals.add_argument("--grep", metavar="TEXT", help="--logs: records whose message or logger holds TEXT")
    return parser


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50}


def _use_rich(plain: bool) -> bool:
    if plain or not sys.stdout.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _fail(message: str) -> int:
    sys.stderr.write(f"logfire-run-view: {message}\n")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = os.path.expanduser(args.store) if args.store else default_path()
    if args.serve:
        from logfire_run.viewer import server

        return server.serve(path, host=args.host, port=args.port)
    try:
        # --metrics reads --since as its window (signals.parse_window), not as a trace filter.
        filters = query.Filters() if args.metrics or args.logs else _filters(args)
    except query.FilterError as error:
        return _fail(str(error))
    try:
        connection = open_store(path, create=False)
    except FileNotFoundError:
        return _fail(f"no trace store at {path} yet: run an app under logfire-run first")
    except NotAStoreError as error:
        return _fail(str(error))
    except (sqlite3.Error, OSError) as error:
        return _fail(f"cannot read the trace store {path}: {error}")
    try:
        query.prepare(connection)
        return _run(args, connection, path, filters)
    except sqlite3.Error as error:
        return _fail(f"cannot read the trace store {path}: {error}")
    except BrokenPipeError:
        return 0
    finally:
        connection.close()


def _filters(args: argparse.Namespace) -> query.Filters:
    now = time.time_ns()
    filters = query.Filters(
        service=args.service, q=args.query or None, errors=args.errors, route=args.route or None
    )
    filters.limit = max(1, args.limit)
    filters.slowest = args.slowest
    if args.min_duration:
        filters.min_duration_ns = query.parse_duration(args.min_duration)
    if args.since:
        filters.since_ns = query.parse_time(args.since, now)
    if args.until:
        filters.until_ns = query.parse_time(args.until, now)
    return filters


def _signals(args: argparse.Namespace, connection: sqlite3.Connection, path: str) -> int:
    """--metrics and --logs."""
    from logfire_run.viewer import signals

    if args.metrics:
        try:
            window = signals.parse_window(args.since or "1h")
        except ValueError as error:
            return _fail(str(error))
        routes = signals.request_metrics(connection, window, args.service)
        if args.json:
            _print_json([signals.route_dict(route) for route in routes])
        elif not routes:
            print(f"no request metrics in {path} over the last {args.since or '1h'}")
        else:
            signals.print_metrics(routes, sys.stdout)
        return 0
    level = None
    if args.level is not None:
        level = _LEVELS.get(args.level.strip().lower())
        if level is None and args.level.strip().isdigit():
            level = int(args.level)
        if level is None:
            return _fail(
                f"invalid level {args.level!r}: use debug, info, warning, error, critical or a number"
            )
    logs = signals.recent_logs(
        connection, max(1, args.limit), service=args.service, min_level=level, text=args.grep
    )
    if args.json:
        _print_json([model.log_dict(log) for log in logs])
    elif not logs:
        print(f"no log records in {path} match")
    else:
        signals.print_logs(logs, sys.stdout)
    return 0


def _run(args: argparse.Namespace, connection: sqlite3.Connection, path: str, filters: query.Filters) -> int:
    if args.metrics or args.logs:
        return _signals(args, connection, path)
    reference = args.trace or ("last" if args.html else None)
    if reference is None:
        summaries = query.list_traces(connection, filters)
        query.count_orphans(connection, summaries)
        if args.json:
            _print_json([model.summary_dict(summary) for summary in summaries])
        elif not summaries:
            print(f"no traces match in {path}" if filters.any() else f"no traces in {path} yet")
        else:
            text.print_list(summaries, sys.stdout, rich=_use_rich(args.plain))
        return 0
    matches = _find(connection, reference)
    if not matches:
        return _fail(f"no trace matches {reference!r} in {path}")
    if len(matches) > 1:
        return _fail(f"{reference!r} matches several traces ({', '.join(matches)}): give more digits")
    trace_id = matches[0]
    rows, logs = query.open_trace(connection, trace_id)
    if args.html:
        from logfire_run.viewer.html import render_html

        with open(args.html, "w", encoding="utf-8") as page:
            page.write(render_html(trace_id, rows, logs))
        if not args.json:
            print(f"wrote {args.html} (trace {trace_id}, {len(rows)} spans)")
    if args.json:
        summary = model.summarize(trace_id, [row.span for row in rows])
        by_span, unattached = model.logs_by_span(logs, rows)
        _print_json(
            {
                "trace": model.summary_dict(summary),
                "spans": [model.span_dict(row, by_span.get(row.span.span_id)) for row in rows],
                "unattached_logs": [model.log_dict(log) for log in unattached],
            }
        )
    elif not args.html:
        text.print_tree(trace_id, rows, sys.stdout, rich=_use_rich(args.plain), logs=logs)
    return 0


def _find(connection: sqlite3.Connection, reference: str) -> list[str]:
    if reference.strip().lower() in ("last", "latest"):
        newest = query.list_traces(connection, query.Filters(limit=1))
        return [newest[0].trace_id] if newest else []
    return model.find_trace_ids(connection, reference)


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    sys.exit(main())
