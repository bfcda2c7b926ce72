"""`logfire-run-view`: read the local trace store.

    logfire-run-view                 recent traces, newest first
    logfire-run-view TRACE           one trace as a tree (TRACE: an id, a unique prefix, or `last`)
    logfire-run-view --json [TRACE]  the same as JSON, for scripts
    logfire-run-view --html FILE [TRACE]   a self-contained waterfall page (TRACE defaults to `last`)
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
from collections.abc import Sequence
from typing import Any

from logfire_run.store_format import NotAStoreError, default_path, open_store
from logfire_run.viewer import model, text


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
    parser.add_argument("--limit", type=int, default=20, help="how many recent traces to list (20)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--html", metavar="FILE", help="write a waterfall page of the trace to FILE")
    parser.add_argument("--plain", action="store_true", help="plain text even on a terminal")
    parser.add_argument(
        "--metrics", action="store_true", help="requests, errors and duration percentiles per endpoint"
    )
    parser.add_argument("--logs", action="store_true", help="the latest log records (--limit of them)")
    parser.add_argument(
        "--since", metavar="WINDOW", default="1h", help="--metrics: the time window (30s, 15m, 2h, 7d; 1h)"
    )
    parser.add_argument("--service", metavar="NAME", help="--metrics, --logs: one service only")
    parser.add_argument(
        "--level", metavar="LEVEL", help="--logs: this level and up (debug, info, warning, error, critical)"
    )
    parser.add_argument("--grep", metavar="TEXT", help="--logs: records whose message or logger holds TEXT")
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
    try:
        connection = open_store(path, create=False)
    except FileNotFoundError:
        return _fail(f"no trace store at {path} yet: run an app under logfire-run first")
    except NotAStoreError as error:
        return _fail(str(error))
    except (sqlite3.Error, OSError) as error:
        return _fail(f"cannot read the trace store {path}: {error}")
    try:
        return _run(args, connection, path)
    except sqlite3.Error as error:
        return _fail(f"cannot read the trace store {path}: {error}")
    except BrokenPipeError:
        return 0
    finally:
        connection.close()


def _signals(args: argparse.Namespace, connection: sqlite3.Connection, path: str) -> int:
    """--metrics and --logs."""
    from logfire_run.viewer import signals

    if args.metrics:
        try:
            window = signals.parse_window(args.since)
        except ValueError as error:
            return _fail(str(error))
        routes = signals.request_metrics(connection, window, args.service)
        if args.json:
            _print_json([signals.route_dict(route) for route in routes])
        elif not routes:
            print(f"no request metrics in {path} over the last {args.since}")
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


def _run(args: argparse.Namespace, connection: sqlite3.Connection, path: str) -> int:
    if args.metrics or args.logs:
        return _signals(args, connection, path)
    reference = args.trace or ("last" if args.html else None)
    if reference is None:
        summaries = model.recent_traces(connection, max(1, args.limit))
        if args.json:
            _print_json([model.summary_dict(summary) for summary in summaries])
        elif not summaries:
            print(f"no traces in {path} yet")
        else:
            text.print_list(summaries, sys.stdout, rich=_use_rich(args.plain))
        return 0
    matches = model.find_trace_ids(connection, reference)
    if not matches:
        return _fail(f"no trace matches {reference!r} in {path}")
    if len(matches) > 1:
        return _fail(f"{reference!r} matches several traces ({', '.join(matches)}): give more digits")
    trace_id = matches[0]
    rows = model.tree(model.load_trace(connection, trace_id))
    logs = model.load_logs(connection, trace_id)
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


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    sys.exit(main())
