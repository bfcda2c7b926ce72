"""Terminal output: the list of recent traces and one trace as an indented tree.

Rich output when `rich` is installed (the `viewer` extra) and stdout is a terminal; plain text
otherwise, one line per trace or span, stable enough to grep.
"""

from __future__ import annotations

import datetime
from typing import TextIO

from logfire_run.viewer.model import (
    TraceSummary,
    TreeRow,
    format_duration,
    key_attributes,
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
        out.write(
            f"{_time(summary.start_ns):<23}  {summary.trace_id:<32}  {summary.span_count:>5}  "
            f"{format_duration(summary.duration_ns):>9}  {summary.root_name}  "
            f"[{', '.join(summary.services)}]{orphans}\n"
        )


def _plain_tree(trace_id: str, rows: list[TreeRow], out: TextIO) -> None:
    summary = summarize(trace_id, [row.span for row in rows])
    out.write(
        f"trace {trace_id}  {_time(summary.start_ns)}  {summary.span_count} spans  "
        f"{format_duration(summary.duration_ns)}  services: {', '.join(summary.services)}\n"
    )
    for row in rows:
        span = row.span
        extras = key_attributes(span)
        if row.orphan:
            extras.insert(0, f"({orphan_note(row)})")
        line = (
            f"{'  ' * row.depth}{span.name}  [{span.service}] {span.kind} {format_duration(span.duration_ns)}"
        )
        if extras:
            line += "  " + "  ".join(extras)
        out.write(line + "\n")


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
            summary.trace_id[:16],
            escape(summary.root_name) + orphans,
            escape(", ".join(summary.services)),
            str(summary.span_count),
            format_duration(summary.duration_ns),
        )
    Console(file=out).print(table)


def _service_style(service: str) -> str:
    palette = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_green")
    return palette[sum(service.encode()) % len(palette)]


def print_tree(trace_id: str, rows: list[TreeRow], out: TextIO, *, rich: bool) -> None:
    if not rich:
        _plain_tree(trace_id, rows, out)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.tree import Tree

    summary = summarize(trace_id, [row.span for row in rows])
    top = Tree(
        f"[bold]trace {trace_id}[/]  {_time(summary.start_ns)}  {summary.span_count} spans  "
        f"{format_duration(summary.duration_ns)}"
    )
    stack: list[Tree] = [top]
    for row in rows:
        span = row.span
        del stack[row.depth + 1 :]
        style = _service_style(span.service)
        label = (
            f"[bold]{escape(span.name)}[/]  [{style}]{escape(span.service)}[/] [dim]{span.kind}[/] "
            f"{format_duration(span.duration_ns)}"
        )
        extras = key_attributes(span)
        if extras:
            label += "  [dim]" + escape("  ".join(extras)) + "[/]"
        if span.status == "ERROR":
            label = "[red]✗[/] " + label
        if row.orphan:
            label += f"  [bold red]{escape(orphan_note(row))}[/]"
        node = stack[-1].add(label)
        stack.append(node)
    Console(file=out).print(top)
