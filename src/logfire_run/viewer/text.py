"""Terminal output: the list of recent traces and one trace as an indented tree.

Rich output when `rich` is installed (the `viewer` extra) and stdout is a terminal; plain text
otherwise, one line per trace or span, stable enough to grep.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, TextIO

from logfire_run.viewer.inert import visible
from logfire_run.viewer.model import (
    StoredLog,
    TraceSummary,
    TreeRow,
    format_duration,
    key_attributes,
    logs_by_span,
    span_duration,
    summarize,
)


def _time(nanoseconds: int) -> str:
    moment = datetime.datetime.fromtimestamp(nanoseconds / 1e9)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def orphan_note(row: TreeRow) -> str:
    return f"orphan: parent {row.span.parent_id} never arrived"


def _plain_list(summaries: list[TraceSummary], out: TextIO) -> None:
    header = f"{'time':<23}  {'trace id':<32}  {'spans':>5}  {'duration':>9}  root  [services]"
    out.write(header + "\n")
    for summary in summaries:
        orphans = f"  ({summary.orphan_count} orphan)" if summary.orphan_count else ""
        if summary.errors:
            orphans += f"  ({summary.errors} error{'s' if summary.errors > 1 else ''})"
        if summary.running:
            orphans += f"  ({summary.running} running)"
        line = (
            f"{_time(summary.start_ns):<23}  {summary.trace_id:<32}  {summary.span_count:>5}  "
            f"{format_duration(summary.duration_ns):>9}  {summary.root_name}  "
            f"[{', '.join(summary.services)}]{orphans}"
        )
        out.write(visible(line) + "\n")


def log_lines(log: StoredLog, depth: int) -> list[str]:
    """A log record under its span: `| LEVEL logger: message`, then its exception's lines, each
    line escaped on its own (a newline in a message never forges a tree line)."""
    indent = "  " * depth
    lines = [f"{indent}| {log.level} {log.logger}: {log.message}"]
    for line in (log.exception or "").splitlines():
        lines.append(f"{indent}|   {line}")
    return lines


def _unattached_note(log: StoredLog) -> str:
    return f"(span {log.span_id} never arrived)"


def _plain_tree(trace_id: str, rows: list[TreeRow], out: TextIO, logs: list[StoredLog]) -> None:
    summary = summarize(trace_id, [row.span for row in rows])
    by_span, unattached = logs_by_span(logs, rows)
    heading = (
        f"trace {trace_id}  {_time(summary.start_ns)}  {summary.span_count} spans  "
        f"{format_duration(summary.duration_ns)}  services: {', '.join(summary.services)}"
    )
    out.write(visible(heading) + "\n")
    for row in rows:
        span = row.span
        extras = key_attributes(span)
        if row.orphan:
            extras.insert(0, f"({orphan_note(row)})")
        line = f"{'  ' * row.depth}{span.name}  [{span.service}] {span.kind} {span_duration(span)}"
        if extras:
            line += "  " + "  ".join(extras)
        out.write(visible(line) + "\n")
        for log in by_span.get(span.span_id, ()):
            out.write("".join(visible(text) + "\n" for text in log_lines(log, row.depth + 1)))
    for log in unattached:
        out.write(visible(_unattached_note(log)) + "\n")
        out.write("".join(visible(text) + "\n" for text in log_lines(log, 1)))


def print_list(summaries: list[TraceSummary], out: TextIO, *, rich: bool) -> None:
    if not rich:
        _plain_list(summaries, out)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title="recent traces, newest first",
        title_justify="left",
        caption="one trace: logfire-run-view ID (any unique prefix of the id, or 'last')",
        caption_justify="left",
    )
    today = datetime.date.today()
    # Ids and times are what a user reads and copies: never wrapped. A 16-digit prefix is enough to
    # name a trace (the plain output prints whole ids).
    table.add_column("time", no_wrap=True)
    table.add_column("trace id", no_wrap=True, style="dim")
    table.add_column("root")
    table.add_column("services")
    table.add_column("spans", justify="right")
    table.add_column("duration", justify="right", no_wrap=True)
    for summary in summaries:
        moment = datetime.datetime.fromtimestamp(summary.start_ns / 1e9)
        when = moment.strftime("%H:%M:%S" if moment.date() == today else "%Y-%m-%d %H:%M")
        orphans = f" [red]({summary.orphan_count} orphan)[/]" if summary.orphan_count else ""
        table.add_row(
            when,
            escape(visible(summary.trace_id[:16])),
            escape(visible(summary.root_name)) + orphans,
            escape(visible(", ".join(summary.services))),
            str(summary.span_count),
            format_duration(summary.duration_ns),
        )
    Console(file=out).print(table)


def _service_style(service: str) -> str:
    palette = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_green")
    return palette[sum(service.encode()) % len(palette)]


_LEVEL_STYLES = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "bold red"}


def print_tree(
    trace_id: str, rows: list[TreeRow], out: TextIO, *, rich: bool, logs: list[StoredLog] | None = None
) -> None:
    logs = logs or []
    if not rich:
        _plain_tree(trace_id, rows, out, logs)
        return
    by_span, unattached = logs_by_span(logs, rows)
    from rich.console import Console
    from rich.markup import escape
    from rich.tree import Tree

    summary = summarize(trace_id, [row.span for row in rows])
    top = Tree(
        f"[bold]trace {escape(visible(trace_id))}[/]  {_time(summary.start_ns)}  {summary.span_count} spans  "
        f"{format_duration(summary.duration_ns)}"
    )
    stack: list[Tree] = [top]
    for row in rows:
        span = row.span
        del stack[row.depth + 1 :]
        style = _service_style(span.service)
        label = (
            f"[bold]{escape(visible(span.name))}[/]  [{style}]{escape(visible(span.service))}[/] "
            f"[dim]{escape(visible(span.kind))}[/] "
            f"{escape(span_duration(span))}"
        )
        extras = key_attributes(span)
        if extras:
            label += "  [dim]" + escape(visible("  ".join(extras))) + "[/]"
        if span.status == "ERROR":
            label = "[red]✗[/] " + label
        if row.orphan:
            label += f"  [bold red]{escape(visible(orphan_note(row)))}[/]"
        node = stack[-1].add(label)
        stack.append(node)
        for log in by_span.get(span.span_id, ()):
            _rich_log(node, log, escape)
    if unattached:
        lost = top.add("[dim]log records whose span never arrived[/]")
        for log in unattached:
            _rich_log(lost, log, escape)
    Console(file=out).print(top)


def _rich_log(node: Any, log: StoredLog, escape: Callable[[str], str]) -> None:
    style = _LEVEL_STYLES.get(log.level, "dim")
    label = f"[{style}]{escape(visible(log.level))}[/] [dim]{escape(visible(log.logger))}:[/] "
    label += escape(visible(log.message))
    child = node.add(label)
    if log.exception:
        child.add("[red]" + "\n".join(escape(visible(line)) for line in log.exception.splitlines()) + "[/]")
