"""The way out: building the configured exporters, each behind its own bounded batch processor.

`ExportingSpanProcessor` holds one `BatchSpanProcessor` per exporter and can swap them when
`configure()` changes the exporters. `ForkSafeExporter` keeps a fork from landing in the middle of an
export. Exporter problems (a backend that is down) reach stderr once per process, through
`route_export_logs`, instead of once per batch.

Imported with the SDK, never at start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from logfire_run.agent import report
from logfire_run.agent.config import Config


class ExportingSpanProcessor(SpanProcessor):
    """One batch processor per configured exporter, replaceable when `configure()` changes exporters.

    Each batch processor's queue is bounded (OTEL_BSP_MAX_QUEUE_SIZE, 2048 by default): with a dead
    backend, spans past that are dropped rather than held in memory without end.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processors: tuple[SpanProcessor, ...] = ()
        self.names: tuple[str, ...] = ()

    def set_exporters(self, config: Config) -> None:
        names = config.resolved_exporters()
        processors = []
        for name in names:
            exporter = build_exporter(name, config)
            if exporter is not None:
                processors.append(BatchSpanProcessor(ForkSafeExporter(exporter)))
        with self._lock:
            old, self._processors, self.names = self._processors, tuple(processors), names
        for processor in old:
            processor.shutdown()
        report.debug(f"exporters: {', '.join(names) or 'none'}")

    def on_start(self, span: Span, parent_context: object = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self._processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        for processor in self._processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all([processor.force_flush(timeout_millis) for processor in self._processors])

    def unsent(self) -> int:
        """Spans not exported yet: queued in the batch processors, or in an export still running."""
        total = 0
        for processor in self._processors:
            # OpenTelemetry keeps the queue in its shared batch processor; read it where it is, else 0.
            queue = getattr(getattr(processor, "_batch_processor", None), "_queue", ())
            total += len(queue)
            exporter = getattr(processor, "span_exporter", None)
            total += getattr(exporter, "in_flight", 0)
        return total


class ForkSafeExporter(SpanExporter):
    """Keeps `fork()` from landing in the middle of an export.

    The batch processor exports from its own thread, and exporting may import a module lazily
    (requests imports `netrc` on every request). A fork at that moment copies the module's import lock
    held by a thread that does not exist in the child, and the child's first import of that module
    hangs for ever. So a fork waits for the export in flight, a bounded time: an export stuck retrying
    against a dead backend sleeps rather than imports, and the fork goes ahead after the wait.
    """

    FORK_WAIT_SECONDS = 2.0

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._held_for_fork = False
        #: Spans of the export running now (counted as unsent if the process exits meanwhile).
        self.in_flight = 0
        _fork_safe_exporters.add(self)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.in_flight = len(spans)
            try:
                return self.inner.export(spans)
            finally:
                self.in_flight = 0

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def _before_fork(self) -> None:
        self._held_for_fork = self._lock.acquire(timeout=self.FORK_WAIT_SECONDS)

    def _after_fork_in_parent(self) -> None:
        if self._held_for_fork:
            self._held_for_fork = False
            self._lock.release()

    def _after_fork_in_child(self) -> None:
        self._held_for_fork = False
        self.in_flight = 0
        self._lock = threading.Lock()


_fork_safe_exporters: weakref.WeakSet[ForkSafeExporter] = weakref.WeakSet()


def _each_fork_safe_exporter(method: str) -> Callable[[], None]:
    def run() -> None:
        for exporter in list(_fork_safe_exporters):
            with contextlib.suppress(Exception):
                getattr(exporter, method)()

    return run


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_each_fork_safe_exporter("_before_fork"),
        after_in_parent=_each_fork_safe_exporter("_after_fork_in_parent"),
        after_in_child=_each_fork_safe_exporter("_after_fork_in_child"),
    )


def build_exporter(name: str, config: Config) -> SpanExporter | None:
    """The exporter called `name`, or None (reported once) when it cannot be built."""
    try:
        if name == "none":
            return None
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return ConsoleSpanExporter(out=sys.stderr)
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
        if name == "store":
            from logfire_run.agent.store import StoreExporter

            return StoreExporter(config.resolved_store_path())
        raise ValueError(f"unknown exporter {name!r}")
    except Exception as error:
        report.problem(
            f"exporter:{name}",
            f"the {name} exporter could not be set up ({type(error).__name__}: {error}); "
            "spans are not sent there, the app runs on",
        )
        return None


class _ExportProblemHandler(logging.Handler):
    """Turns exporter log records into one stderr line per process instead of one per batch.

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
        if record.levelno < logging.ERROR and record.name.startswith("opentelemetry.exporter"):
            _last_transient = message
            return
        cause = f" (last error: {_last_transient})" if _last_transient and _last_transient != message else ""
        report.problem(
            f"export:{record.name}",
            f"exporting spans failed: {message}{cause} (reported once per process; the app runs on, "
            "spans beyond the bounded queue are dropped; LOGFIRE_DEBUG=1 shows every occurrence)",
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


def route_export_logs() -> None:
    """Send the exporters' log records through `report` (once per process), not to the app's log."""
    handler = _ExportProblemHandler(logging.DEBUG)
    for name in EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _ExportProblemHandler) for existing in logger.handlers):
            logger.addHandler(handler)
