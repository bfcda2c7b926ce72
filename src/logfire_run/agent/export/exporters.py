"""The way out: building the configured exporters, each behind its own bounded batch processor.

`ExportingSpanProcessor` holds one `BatchSpanProcessor` per exporter and can swap them when
`configure()` changes the exporters. `ForkSafeExporter` keeps a fork from landing in the middle of an
export. Exporter problems (a backend that is down) reach stderr once per process, through
`route_export_logs`, instead of once per batch.

Imported with the SDK, never at start-up.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from logfire_run.agent import destination, report
from logfire_run.agent.config import Config
from logfire_run.agent.destination import OtlpDestination

if TYPE_CHECKING:
    import requests


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

    def before_fork(self) -> None:
        self._held_for_fork = self._lock.acquire(timeout=self.FORK_WAIT_SECONDS)

    def after_fork_in_parent(self) -> None:
        if self._held_for_fork:
            self._held_for_fork = False
            self._lock.release()

    def after_fork_in_child(self) -> None:
        self._held_for_fork = False
        self.in_flight = 0
        self._lock = threading.Lock()


#: Every ForkSafeExporter of the process, for the module's fork functions below.
_fork_safe_exporters: weakref.WeakSet[ForkSafeExporter] = weakref.WeakSet()


# What a fork does to the span exporters (`process.fork` calls these, the only caller).


def before_fork() -> None:
    for exporter in list(_fork_safe_exporters):
        exporter.before_fork()


def after_fork_in_parent() -> None:
    for exporter in list(_fork_safe_exporters):
        exporter.after_fork_in_parent()


def after_fork_in_child() -> None:
    for exporter in list(_fork_safe_exporters):
        exporter.after_fork_in_child()


def build_exporter_or_raise(name: str, config: Config) -> SpanExporter:
    """The exporter called `name` (not `none`); raises when it cannot be built."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)
    if name == "otlp":
        return build_otlp_exporter(otlp_destination(config))
    if name == "store":
        from logfire_run.agent.export.store import StoreExporter

        return StoreExporter(config.resolved_store_path())
    return _entry_point_exporter(name)


def build_exporter(name: str, config: Config) -> SpanExporter | None:
    """The exporter called `name`, or None (reported once) when it cannot be built."""
    if name == "none":
        return None
    try:
        return build_exporter_or_raise(name, config)
    except Exception as error:
        report.problem(
            f"exporter:{name}",
            f"the {name} exporter could not be set up ({type(error).__name__}: {error}); "
            "spans are not sent there, the app runs on",
        )
        return None


def otlp_destination(config: Config, environ: Mapping[str, str] | None = None) -> OtlpDestination:
    """Where the otlp exporter sends spans, by the rules of `destination` (errors were reported)."""
    source = config.sources.get("otlp_protocol", "default")
    found, _ = destination.resolve(
        "traces", os.environ if environ is None else environ, (config.resolved_otlp_protocol(), source)
    )
    return found


class ExporterNotInstalled(ImportError):
    """The exporter a setting chose comes from a package that is not installed."""


def build_otlp_exporter(where: OtlpDestination) -> SpanExporter:
    """OpenTelemetry's own OTLP span exporter for `where.protocol`, every value passed explicitly."""
    missing = destination.exporter_missing(where.protocol)
    if missing is not None:
        raise ExporterNotInstalled(missing)
    if where.protocol == "grpc":
        # OpenTelemetry's OTLP/gRPC exporter, sending the bytes of the direct encoder (otlp_grpc.py).
        from logfire_run.agent.export.otlp_grpc import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(**otlp_exporter_options(where))
    # OpenTelemetry's OTLP/HTTP exporter, sending the bytes of the direct encoder (otlp_http.py).
    from logfire_run.agent.export.otlp_http import OTLPSpanExporter as HttpExporter

    return HttpExporter(**otlp_exporter_options(where))


def otlp_exporter_options(where: OtlpDestination) -> dict[str, Any]:
    """The keyword arguments of OpenTelemetry's OTLP exporters (any signal) for `where.protocol`."""
    timeout = where.timeout_millis / 1000
    if where.protocol == "grpc":
        import grpc

        credentials = None
        if not where.insecure:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(where.certificate),
                private_key=_read(where.client_key),
                certificate_chain=_read(where.client_certificate),
            )
        return {
            "endpoint": where.grpc_target(),
            "insecure": where.insecure,
            "credentials": credentials,
            "headers": dict(where.headers),
            "timeout": timeout,
            "compression": {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}.get(
                where.compression, grpc.Compression.NoCompression
            ),
        }
    from opentelemetry.exporter.otlp.proto.http import Compression

    return {
        "session": _session_keeping_certificate() if where.certificate else None,
        "endpoint": where.endpoint,
        "certificate_file": where.certificate,
        "client_key_file": where.client_key,
        "client_certificate_file": where.client_certificate,
        "headers": dict(where.headers),
        "timeout": timeout,
        "compression": {"gzip": Compression.Gzip, "deflate": Compression.Deflate}.get(
            where.compression, Compression.NoCompression
        ),
    }


def _session_keeping_certificate() -> requests.Session:
    """A requests session whose CA file (OTEL_EXPORTER_OTLP_CERTIFICATE) beats REQUESTS_CA_BUNDLE.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment override a session's
    `verify`, so in an image that sets them (many do) OpenTelemetry's HTTP exporter would ignore the
    configured certificate and fail to verify a private CA. Proxies from the environment still apply.
    """
    import requests

    class CertificateSession(requests.Session):
        def merge_environment_settings(
            self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
        ) -> Any:
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            settings["verify"] = self.verify
            return settings

    return CertificateSession()


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


def _entry_point_exporter(name: str) -> SpanExporter:
    """An exporter of another package, through its `opentelemetry_traces_exporter` entry point."""
    from importlib.metadata import entry_points

    from logfire_run.agent.settings import EXPORTER_ENTRY_POINT_GROUP

    for entry in entry_points(group=EXPORTER_ENTRY_POINT_GROUP):
        if entry.name == name:
            exporter = entry.load()()
            if not isinstance(exporter, SpanExporter):
                raise TypeError(f"{entry.value} did not make a SpanExporter")
            return exporter
    raise ExporterNotInstalled(f"no installed package provides the exporter {name!r}")


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
        # One line per backend, not per signal: the log and metric exporters of the same protocol
        # (`_log_exporter`, `metric_exporter`: docs/logs.md, docs/metrics.md) fail with the trace
        # exporter, and say the same.
        key = record.name.replace("._log_exporter", ".trace_exporter").replace(
            ".metric_exporter", ".trace_exporter"
        )
        report.problem(
            f"export:{key}",
            f"exporting spans failed: {destination.explain(message + cause)} (reported once per process; "
            "the app runs on, "
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
