"""What is said about delivery: which signal an export failure is about, and what a process dropped.

- Every export the agent runs is inside `exporting(signal)` (spans: `exporters.ForkSafeExporter`; log
  records: `logs.LogPipeline`). OpenTelemetry's exporters log their failures from the exporting
  thread, and its gRPC exporter logs both signals under one logger name: the thread says which signal
  it was, and the line on stderr names it ("exporting logs failed: ..."), once per signal and
  backend in a process.
- `Drops` are a process's counts for one signal: what an export that failed for good carried (the
  backend refused it, did not answer, timed out: the batch processor does not try again), what did
  not fit the bounded queue, what was not sent within the exit budget (an export waiting to try again
  included: its last attempt failed), and what was on the wire when the process exited (sent,
  unanswered: the backend may have it, so it is not counted as dropped, only said).
  Exports to a store that was refused or deleted are not counted: that line said already that the
  process's spans are not stored. `drop_line` is the one line a process
  says at exit when anything was dropped; `exits` says it.

Imported with the SDK, never at start-up.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from logfire_run.agent import destination, report

__all__ = [
    "Drops",
    "drop_line",
    "exit_begins",
    "exit_deadline",
    "exporting",
    "last_transient_error",
    "route_export_logs",
]

#: (pid, monotonic deadline) of the exit flush under way: what remains of the exit budget.
_exit: tuple[int, float] | None = None


def exit_begins(deadline: float) -> None:
    """The process is ending: exporters must be done by `deadline` (monotonic; `exits` says it).
    The store then writes without waiting for other processes' locks (`store`, `spool`)."""
    global _exit
    _exit = (os.getpid(), deadline)


def exit_deadline() -> float | None:
    """The exit budget's deadline while this process's exit flush runs, else None."""
    current = _exit
    return current[1] if current is not None and current[0] == os.getpid() else None


#: Which signal the current thread is exporting ("spans", "logs", "metrics"), while it does.
_current = threading.local()


@contextmanager
def exporting(signal: str, export: object = None) -> Iterator[None]:
    """Mark the current thread as exporting `signal` (for the lines said about its failures). A retry
    the exporter logs meanwhile sets `export.retrying`: its last attempt failed, so what it carries
    has not arrived (at exit it is dropped, not "on the wire")."""
    previous = getattr(_current, "signal", None), getattr(_current, "export", None)
    _current.signal, _current.export = signal, export
    if export is not None:
        export.retrying = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        _current.signal, _current.export = previous


def _signal_of(record: logging.LogRecord) -> str:
    signal = getattr(_current, "signal", None)
    if signal:
        return str(signal)
    # Outside an export of ours: OpenTelemetry's batch processors name the signal in their thread
    # ("OtelBatchSpanRecordProcessor"), its exporters in their logger's name.
    thread = record.threadName or ""
    if "Log" in thread or "logs" in thread:
        return "logs"
    if "Metric" in thread or "metric_exporter" in record.name:
        return "metrics"
    return "logs" if "_log_exporter" in record.name else "spans"


_NOUNS = {"spans": "spans", "logs": "log records", "metrics": "metric collections"}


class _ExportProblemHandler(logging.Handler):
    """Turns exporter log records into one stderr line per signal and backend instead of one per batch.

    Attached to the exporters' loggers, it also stops Python's last-resort handler from printing every
    retry when the app has not configured logging; an app that has keeps receiving the records.
    An exporter's warnings are retries ("transient error ..., retrying"): a retry that succeeds is not
    a problem, so they are kept, and named as the cause when the export fails for good (an error) or
    when the exit budget drops what they held up.
    """

    def emit(self, record: logging.LogRecord) -> None:
        global _last_transient
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        report.debug(f"{record.name}: {message}")
        if record.levelno < logging.WARNING:
            return
        signal = _signal_of(record)
        noun = _NOUNS.get(signal, signal)
        if message.startswith("Queue full"):
            setting = " (OTEL_BSP_MAX_QUEUE_SIZE, 2048 by default)" if signal == "spans" else ""
            report.problem(
                f"queue-full:{signal}",
                f"the {noun} queue is full{setting}: {noun} are dropped until the exporters catch up, "
                "and counted at exit; the app runs on",
            )
            return
        if record.levelno < logging.ERROR and record.name.startswith("opentelemetry.exporter"):
            _last_transient = message
            export = getattr(_current, "export", None)
            if export is not None:
                export.retrying = True
            return
        cause = f" (last error: {_last_transient})" if _last_transient and _last_transient != message else ""
        report.problem(
            f"export:{signal}:{record.name}",
            f"exporting {signal} failed: {destination.explain(message + cause, signal)} (reported once "
            f"per process; the app runs on, the {noun} dropped are counted at exit; LOGFIRE_DEBUG=1 "
            "shows every occurrence)",
        )


_last_transient: str | None = None


def last_transient_error() -> str | None:
    """The last retry an exporter logged in this process, if any: why spans are still unsent."""
    return _last_transient


EXPORT_LOGGERS = (
    "opentelemetry.exporter",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk._shared_internal",
)


class _OpenTelemetryLastResort(logging.Handler):
    """OpenTelemetry's other warnings and errors ("Failed to detach context", an attribute of an
    invalid type, a tracer provider the app set too late), where the app's logging shows them nowhere.

    Without a handler of the app's on their way up, Python's last-resort handler would print each one,
    traceback included, on the app's stderr: output the app never had without the agent. They become
    one `logfire-run:` line per message (its traceback under LOGFIRE_DEBUG). An app that configured
    logging (a handler on the root logger, or on the way) receives them as before, and this handler
    says nothing; an app that set `logging.lastResort = None` hears nothing of them, as before.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if logging.lastResort is None or self._shown_elsewhere(record):
                return
            try:
                message = record.getMessage()
            except Exception:
                message = str(record.msg)
            error = record.exc_info[1] if record.exc_info else None
            if error is not None:
                message += f" ({type(error).__name__}: {error})"
            line = " ".join(message.split())
            if len(line) > 300:
                line = line[:297] + "..."
            report.problem(
                f"opentelemetry:{record.name}:{record.msg}",
                f"OpenTelemetry ({record.name}): {line} (said once per process; LOGFIRE_DEBUG=1 shows "
                "every occurrence)",
            )
            if report.debug_enabled:
                formatted = logging.Formatter().format(record)
                report.debug(f"{record.name}: {formatted}")
        except Exception:  # never an error of ours on the app's stderr, or in its logging
            pass

    def _shown_elsewhere(self, record: logging.LogRecord) -> bool:
        """Whether a handler other than this one is on the record's way up (what `logging` counts
        before it falls back to its last resort): the exporters' own, or any of the app's."""
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(handler is not self for handler in logger.handlers):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False


def route_export_logs() -> None:
    """Send the exporters' log records through `report` (once per process), not to the app's log;
    OpenTelemetry's other warnings too, when nothing of the app's would show them."""
    handler = _ExportProblemHandler(logging.DEBUG)
    for name in EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _ExportProblemHandler) for existing in logger.handlers):
            logger.addHandler(handler)
    root = logging.getLogger("opentelemetry")
    if not any(isinstance(existing, _OpenTelemetryLastResort) for existing in root.handlers):
        root.addHandler(_OpenTelemetryLastResort(logging.WARNING))


@dataclass
class Drops:
    """One signal's counts in one process (see the module's docstring)."""

    refused: int = 0
    queue_full: int = 0
    at_exit: int = 0
    on_the_wire: int = 0

    @property
    def dropped(self) -> int:
        return self.refused + self.queue_full + self.at_exit


def _count(number: int, noun: str) -> str:
    if number == 1:
        noun = {"spans": "span", "log records": "log record", "metric collections": "metric collection"}.get(
            noun, noun
        )
    return f"{number:,} {noun}"


def drop_line(counts: dict[str, Drops], budget: float, reason: str) -> str | None:
    """The line a process says at exit about what it dropped, or None when it dropped nothing.

    `counts` maps a signal ("spans", "logs") to its `Drops`; `reason` is how the process ends.
    """
    dropped = {signal: drops for signal, drops in counts.items() if drops.dropped}
    on_the_wire = [
        _count(drops.on_the_wire, _NOUNS.get(signal, signal))
        for signal, drops in counts.items()
        if drops.on_the_wire
    ]
    if not dropped and not on_the_wire:
        return None
    details = []
    for signal, drops in dropped.items():
        parts = []
        if drops.refused:
            parts.append(f"{drops.refused:,} whose export failed")
        if drops.queue_full:
            parts.append(f"{drops.queue_full:,} past the full queue")
        if drops.at_exit:
            parts.append(f"{drops.at_exit:,} not sent within the exit budget ({budget:g} s, at {reason})")
        prefix = f"{_NOUNS.get(signal, signal)}: " if len(dropped) > 1 else ""
        details.append(prefix + ", ".join(parts))
    unanswered = (
        f"{' and '.join(on_the_wire)} sent at exit got no answer within the exit budget ({budget:g} s, at "
        f"{reason}): the backend may have them"
    )
    if dropped:
        what = " and ".join(
            _count(drops.dropped, _NOUNS.get(signal, signal)) for signal, drops in dropped.items()
        )
        line = f"{what} dropped in this process: {'; '.join(details)}"
        if on_the_wire:
            line += f"; {unanswered}"
    else:
        line = unanswered
    cause = last_transient_error()
    if cause and (on_the_wire or any(drops.refused or drops.at_exit for drops in dropped.values())):
        line += f"; the backend: {destination.explain(cause)}"
    if on_the_wire or any(drops.at_exit for drops in dropped.values()):
        line += "; LOGFIRE_EXIT_BUDGET (--exit-budget) sets the budget"
    return line
