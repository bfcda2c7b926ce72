"""The logs pipeline: captured `logging` records, batched off the app's threads, to the store and OTLP.

`log_capture` hands each captured record to `LogPipeline.capture` on the thread that logged it.
That costs what a record needs to be read while it is current (its message, its formatted
exception) and one append to a bounded queue; everything else happens in the pipeline's own thread
("logfire-run logs"), which writes batches to each log exporter:

- `store`, when spans go to the local store: the store's `logs` table, tied to trace and span id
  (empty ids for a record made outside any span);
- `otlp`, when spans go over OTLP (or `OTEL_LOGS_EXPORTER` says otlp): OpenTelemetry's own OTLP log
  exporter, with the endpoint rules of `destination.resolve("logs")` and the spans' resource;
- `console`, when `OTEL_LOGS_EXPORTER=console`: OpenTelemetry's console log exporter, on stderr.

`OTEL_LOGS_EXPORTER=none` turns the OTLP and console ones off (the store follows the span exporters).
The queue holds at most `OTEL_BLRP_MAX_QUEUE_SIZE` records (2048); past that, records are dropped and
counted. The exit flushes of `state` flush this pipeline with the spans, within the same exit budget.

Imported with the SDK, never at start-up.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from logfire_run.agent import destination, report
from logfire_run.agent.config import Config
from logfire_run.agent.export.delivery import exporting
from logfire_run.agent.export.exporters import ForkGuard, renew_connections
from logfire_run.store_format import site_attributes

#: One captured record, as the pipeline keeps it until it is exported: (time_ns, levelno, levelname,
#: logger, message, exception, trace_id, span_id, flags, site), where site is (path, line, function,
#: thread name): what `site_attributes` turns into attributes, off the app's thread (a record emitted
#: through OpenTelemetry's logs API has ((key, value), ...) there instead: `log_bridge`).
Captured = tuple[int, int, str, str, str, "str | None", int, int, int, "tuple[Any, ...]"]


LOG_EXPORTER_NAMES = ("otlp", "console", "none")


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def exception_text(record: Any) -> str | None:
    """The traceback of `logger.exception()` (and `exc_info=`), then the `stack_info=True` stack."""
    parts = []
    exc_info = record.exc_info
    if exc_info and exc_info[0] is not None:
        parts.append("".join(traceback.format_exception(*exc_info)).rstrip("\n"))
    elif record.exc_text:
        parts.append(str(record.exc_text))
    if record.stack_info:
        parts.append(str(record.stack_info))
    return "\n".join(parts) if parts else None


class LogExporter:
    """Where a batch of captured records goes (store, OTLP, console)."""

    name = ""
    #: Writes to a local file (the store): what it writes when the process ends is lost, not on the wire.
    local = False

    def export(self, batch: Sequence[Captured]) -> bool:
        """Send `batch`; False when it was not taken (the records are dropped and counted)."""
        raise NotImplementedError

    def shutdown(self) -> None:
        pass

    def after_fork_in_child(self) -> None:
        """A forked child's copy: connections of its own (OTLP)."""


#: Every LogPipeline of the process, for the module's fork functions below.
_pipelines: weakref.WeakSet[LogPipeline] = weakref.WeakSet()


class LogPipeline:
    """A bounded queue of captured records and one thread that hands batches to the exporters."""

    def __init__(self, exporters: Sequence[LogExporter]) -> None:
        # Built with the pipeline, when the SDK comes up, like the span exporters: OpenTelemetry's
        # exporters cannot be built during interpreter shutdown, when a short program's first batch
        # would leave.
        self._exporters = tuple(exporters)
        self.names = tuple(exporter.name for exporter in self._exporters)
        #: Only local exporters (the store): what is in flight at exit is lost, not on the wire.
        self.local = all(exporter.local for exporter in self._exporters)
        self.max_queue = _int_env("OTEL_BLRP_MAX_QUEUE_SIZE", 2048)
        self.batch_size = min(_int_env("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", 512), self.max_queue)
        self.delay = _int_env("OTEL_BLRP_SCHEDULE_DELAY", 1000) / 1000
        #: Records dropped in this process: past the full queue, and of exports not taken.
        self.dropped = 0
        self.refused = 0
        #: The export running now logged a retry: its last attempt failed (`delivery.exporting`).
        self.retrying = False
        self._queue: deque[Captured] = deque()
        self._export_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        #: Records of the export running now (counted as unsent if the process exits meanwhile).
        self.in_flight = 0
        self._restart = False
        # What a fork waits for, as for spans: an import in progress, never the network.
        self._guard = ForkGuard()
        _pipelines.add(self)

    def before_fork(self) -> None:
        self._guard.before_fork()

    def after_fork_in_parent(self) -> None:
        self._guard.after_fork_in_parent()

    def after_fork_in_child(self) -> None:
        # The parent exports what it had queued; the child starts empty, with connections of its own
        # and a thread of its own (`restart_after_fork`, as the SDK's own batch processors restart theirs).
        self._guard.after_fork_in_child()
        for exporter in self._exporters:
            exporter.after_fork_in_child()
        self.dropped = self.refused = 0
        self._queue.clear()
        self._export_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._restart, self._thread = self._thread is not None, None
        self._pid = os.getpid()
        self.in_flight = 0

    def restart_after_fork(self) -> None:
        """The child's thread, if the parent had one: started by `process.fork` once `threading` has
        forgotten the parent's threads (started before that, `threading` would forget it too)."""
        restart, self._restart = self._restart, False
        if restart and not self._closed:
            self.start()

    def capture(self, record: Any, trace_id: int, span_id: int, flags: int) -> None:
        """Keep one record (on the thread that logged it): read what it holds now, queue it."""
        if self._closed or not self.names:
            return
        if len(self._queue) >= self.max_queue:
            self._drop()
            return
        exception = (
            exception_text(record) if (record.exc_info or record.stack_info or record.exc_text) else None
        )
        self._queue.append(
            (
                int(record.created * 1e9),
                record.levelno,
                record.levelname,
                record.name,
                record.getMessage(),
                exception,
                trace_id,
                span_id,
                flags,
                (record.pathname, record.lineno, record.funcName, record.threadName),
            )
        )
        self._queued()

    def enqueue(self, captured: Captured) -> None:
        """Keep one record already in the pipeline's form (one emitted through OpenTelemetry's logs API)."""
        if self._closed or not self.names:
            return
        if len(self._queue) >= self.max_queue:
            self._drop()
            return
        self._queue.append(captured)
        self._queued()

    def _drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1:
            report.problem(
                "logs:queue-full",
                f"the log record queue is full ({self.max_queue} records, OTEL_BLRP_MAX_QUEUE_SIZE): "
                "records are dropped until the exporters catch up; the app runs on",
            )

    def _queued(self) -> None:
        # No thread is started here, in the middle of the app's life: `start`, with the SDK, does.
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    def start(self) -> None:
        """Start the export thread (once per process), with the SDK: never at the first record, in the
        middle of the app's life, where a test suite's leaked-thread check would see it born."""
        if not self.names:
            return  # nothing to export to: no thread
        with self._start_lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            thread = threading.Thread(target=self._run, name="logfire-run logs", daemon=True)
            self._thread = thread
        with contextlib.suppress(RuntimeError):  # interpreter shutdown: the exit flush exports the queue
            thread.start()

    def replace_exporters(self, exporters: Sequence[LogExporter]) -> None:
        """New exporters (`configure()` changed them): what is queued goes to the old ones first; the
        thread stays the same."""
        self.force_flush()
        with self._export_lock:
            old, self._exporters = self._exporters, tuple(exporters)
            self.names = tuple(exporter.name for exporter in self._exporters)
        for exporter in old:
            exporter.shutdown()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.delay)
            self._wake.clear()
            self._export(everything=False)

    def _export(self, *, everything: bool) -> None:
        with self._export_lock:
            while self._queue:
                count = min(len(self._queue), self.batch_size)
                batch = [self._queue.popleft() for _ in range(count)]
                self.in_flight = len(batch)
                taken = True
                try:
                    for exporter in self.exporters():
                        try:
                            with exporting("logs", self):
                                sent = self._guard.run(partial(exporter.export, batch))
                            taken = sent and taken
                        except Exception as error:
                            taken = False
                            report.problem(
                                f"logs:{exporter.name}",
                                f"log records could not be exported to {exporter.name} "
                                f"({type(error).__name__}: {error}); they are dropped and counted at "
                                "exit, the app runs on",
                            )
                finally:
                    self.in_flight = 0
                    if not taken:
                        self.refused += len(batch)
                if not everything and len(self._queue) < self.batch_size:
                    return

    def exporters(self) -> tuple[LogExporter, ...]:
        return self._exporters

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export every queued record now (the caller bounds the wait: see `exits.exit_flush`)."""
        self._export(everything=True)
        return True

    def unsent(self) -> int:
        return len(self._queue) + self.in_flight

    def queued(self) -> int:
        return len(self._queue)

    def shutdown(self) -> None:
        self.force_flush()
        self._closed = True
        self._wake.set()
        for exporter in self._exporters:
            exporter.shutdown()


# The exporters


# What a fork does to the log pipelines (`process.fork` calls these, the only caller).


def before_fork() -> None:
    for pipeline in list(_pipelines):
        pipeline.before_fork()


def after_fork_in_parent() -> None:
    for pipeline in list(_pipelines):
        pipeline.after_fork_in_parent()


def after_fork_in_child() -> None:
    for pipeline in list(_pipelines):
        pipeline.after_fork_in_child()


def restart_after_fork() -> None:
    for pipeline in list(_pipelines):
        pipeline.restart_after_fork()


class StoreLogExporter(LogExporter):
    """Writes captured records into the store's `logs` table."""

    name = "store"
    local = True

    def __init__(self, path: str, service: Callable[[], str]) -> None:
        from logfire_run.agent.export.store import StoreExporter

        # The span exporter's connection handling (opening, forks, retries, pruning), shared.
        self._store = StoreExporter(path)
        self._service = service

    def export(self, batch: Sequence[Captured]) -> bool:
        return self._store.export_logs(batch, self._service())

    def shutdown(self) -> None:
        self._store.shutdown()


class OpenTelemetryLogExporter(LogExporter):
    """Hands captured records to one of OpenTelemetry's log exporters (OTLP, console)."""

    def __init__(
        self, name: str, exporter: Any, resource: Callable[[], Any], *, direct: bool = False
    ) -> None:
        self.name = name
        self._exporter = exporter
        self._resource = resource
        #: OTLP/HTTP: the request written by `otlp_logs`, sent by OpenTelemetry's exporter.
        self._direct = direct

    def export(self, batch: Sequence[Captured]) -> bool:
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        # Its HTTP client (requests) is instrumented too: the export itself must not become spans.
        with suppress_instrumentation():
            return self._export(batch)

    def _export(self, batch: Sequence[Captured]) -> bool:
        if self._direct:
            from logfire_run.agent.export.otlp_logs import encode_logs_request, send_encoded

            try:
                body = encode_logs_request(batch, self._resource(), time.time_ns())
            except Exception as error:
                report.fallback(
                    "otlp-logs-encode", f"the OTLP log encoder failed ({type(error).__name__}: {error})"
                )
                body = None
            if body is not None:
                sent = send_encoded(self._exporter, body)
                if sent is not None:
                    return sent
                self._direct = False  # an OpenTelemetry without the seam: its own path from now on
                report.fallback(
                    "otlp-logs-seam", "OpenTelemetry's OTLP/HTTP log exporter has no client to send bytes"
                )
        result = self._exporter.export(readable_records(batch, self._resource()))
        # OpenTelemetry's LogExportResult (LogRecordExportResult since 1.39): SUCCESS is 0.
        return getattr(result, "value", 1) == 0

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def after_fork_in_child(self) -> None:
        renew_connections(self._exporter)


def readable_records(batch: Sequence[Captured], resource: Any) -> list[Any]:
    """Captured records as OpenTelemetry's SDK log records (what its log exporters take)."""
    from opentelemetry._logs import LogRecord
    from opentelemetry.instrumentation.log_utils import std_to_otel
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import TraceFlags

    from logfire_run.agent.export.otlp_encoding import encodable

    try:
        from opentelemetry.sdk._logs import ReadableLogRecord as Readable
    except ImportError:  # OpenTelemetry before 1.39
        from opentelemetry.sdk._logs import LogData as Readable  # type: ignore[attr-defined,no-redef]
    scopes: dict[str, Any] = {}
    records = []
    observed = time.time_ns()
    for when, levelno, levelname, logger, message, exception, trace_id, span_id, flags, site in batch:
        # Protobuf refuses text that UTF-8 cannot encode (a lone surrogate), failing the whole batch.
        extra = {
            key: encodable(value) if type(value) is str else value
            for key, value in site_attributes(site).items()
        }
        if exception is not None:
            extra["exception.stacktrace"] = encodable(exception)
        logger, message = encodable(logger), encodable(message)
        scope = scopes.get(logger)
        if scope is None:
            scope = scopes[logger] = InstrumentationScope(logger)
        record = LogRecord(
            timestamp=when,
            observed_timestamp=observed,
            trace_id=trace_id,
            span_id=span_id,
            trace_flags=TraceFlags(flags),
            severity_text={"WARNING": "WARN", "CRITICAL": "FATAL"}.get(levelname, levelname),
            severity_number=std_to_otel(levelno),
            body=message,
            attributes=extra,
        )
        records.append(Readable(log_record=record, resource=resource, instrumentation_scope=scope))
    return records


def log_exporter_names(config: Config, environ: Any = None) -> tuple[str, ...]:
    """The log exporters in effect: `store` with the span store, then OTEL_LOGS_EXPORTER's choice."""
    environ = os.environ if environ is None else environ
    span_exporters = config.resolved_exporters()
    names: list[str] = ["store"] if "store" in span_exporters else []
    raw = environ.get("OTEL_LOGS_EXPORTER", "").strip().lower()
    if raw:
        chosen = [name.strip() for name in raw.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in LOG_EXPORTER_NAMES]
        if unknown:
            report.problem(
                "logs:exporter",
                f"OTEL_LOGS_EXPORTER: unknown log exporter {', '.join(map(repr, unknown))} "
                f"(use {', '.join(LOG_EXPORTER_NAMES)}); it is left out",
            )
        names.extend(name for name in chosen if name in ("otlp", "console"))
    elif "otlp" in span_exporters:
        if only_traces_endpoint(environ):
            # OpenTelemetry's rule: a signal's own endpoint is for that signal alone. Logs have none
            # (neither theirs nor the general one): there is no logs destination to default to.
            report.debug(
                "OTLP logs are not sent: only OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (set "
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT, or OTEL_EXPORTER_OTLP_ENDPOINT for both)"
            )
        else:
            names.append("otlp")
    return tuple(dict.fromkeys(names))


def only_traces_endpoint(environ: Any) -> bool:
    """Whether the traces endpoint is set and neither the logs nor the general one is."""
    own, general = destination.variables("logs", "ENDPOINT")
    traces, _ = destination.variables("traces", "ENDPOINT")
    return bool(environ.get(traces, "").strip()) and not (
        environ.get(own, "").strip() or environ.get(general, "").strip()
    )


def build_log_exporters(config: Config, resource: Callable[[], Any]) -> list[LogExporter]:
    """The log exporters of `config`; one that cannot be built is reported once and left out."""
    exporters: list[LogExporter] = []

    def service() -> str:
        return str(resource().attributes.get("service.name", ""))

    for name in log_exporter_names(config):
        try:
            if name == "store":
                exporters.append(StoreLogExporter(config.resolved_store_path(), service))
            elif name == "console":
                import sys

                from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter

                exporters.append(
                    OpenTelemetryLogExporter(name, ConsoleLogRecordExporter(out=sys.stderr), resource)
                )
            else:
                exporters.append(otlp_log_exporter(config, resource))
        except Exception as error:
            # The key of the span exporter's own line: the same cause (a missing package, a bad
            # certificate) is said once, not once per signal.
            report.problem(
                f"exporter:{name}",
                f"the {name} log exporter could not be set up ({type(error).__name__}: {error}); "
                "log records are not sent there, the app runs on",
            )
    return exporters


def otlp_log_exporter(config: Config, resource: Callable[[], Any]) -> OpenTelemetryLogExporter:
    """The `otlp` log exporter: OpenTelemetry's, sending the direct encoding over HTTP."""
    exporter = build_otlp_log_exporter(config)
    direct = type(exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.http")
    return OpenTelemetryLogExporter("otlp", exporter, resource, direct=direct)


def otlp_log_destination(config: Config, environ: Any = None) -> destination.OtlpDestination:
    """Where OTLP logs go: the logs variables, else the general ones, else the spans' protocol."""
    return destination.signal_destination(
        "logs",
        os.environ if environ is None else environ,
        (config.resolved_otlp_protocol(), config.sources.get("otlp_protocol", "default")),
    )


def build_otlp_log_exporter(config: Config) -> Any:
    """OpenTelemetry's own OTLP log exporter for the logs destination, every value passed explicitly."""
    from logfire_run.agent.export.exporters import otlp_exporter_options

    where = otlp_log_destination(config)
    missing = destination.exporter_missing(where.protocol)
    if missing is not None:
        raise ImportError(missing)
    if where.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter

        return GrpcExporter(**otlp_exporter_options(where))
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpExporter

    return HttpExporter(**otlp_exporter_options(where))
