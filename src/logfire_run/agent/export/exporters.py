"""The way out: building the configured exporters, each behind its own bounded batch processor.

`ExportingSpanProcessor` holds one `BatchSpanProcessor` per exporter and can swap them when
`configure()` changes the exporters. `ForkSafeExporter` keeps a fork from catching an export in a
state a forked child could not go on from, without ever making the fork wait for the network
(`ForkGuard`), and gives the child connections of its own (`renew_connections`). What the exporters
drop is counted here (exports that failed, spans past the full queue), and said by `delivery`: a
problem once per process and signal as it happens, the counts at exit.

Imported with the SDK, never at start-up.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from logfire_run.agent import destination, report
from logfire_run.agent.config import Config
from logfire_run.agent.destination import OtlpDestination
from logfire_run.agent.export.delivery import exporting, last_transient_error, route_export_logs

__all__ = [
    "ExportingSpanProcessor",
    "ForkGuard",
    "ForkSafeExporter",
    "last_transient_error",
    "renew_connections",
    "route_export_logs",
]

if TYPE_CHECKING:
    import requests

_T = TypeVar("_T")


class ExportingSpanProcessor(SpanProcessor):
    """One batch processor per configured exporter, replaceable when `configure()` changes exporters.

    Each batch processor's queue is bounded (OTEL_BSP_MAX_QUEUE_SIZE, 2048 by default): with a dead
    backend, spans past that are dropped rather than held in memory without end.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processors: tuple[SpanProcessor, ...] = ()
        #: With the store exporter: the spans still running, for the viewer (`export.pending`).
        self._pending: SpanProcessor | None = None
        #: Each processor's bounded queue (OpenTelemetry's deque), where it can be read, else None.
        self._queues: tuple[Any, ...] = ()
        self.names: tuple[str, ...] = ()
        #: Spans a full queue dropped in this process (OpenTelemetry's processor drops the oldest).
        self.queue_dropped = 0
        #: What exporters replaced by `configure()` failed to send (their counts go on here).
        self._retired_refused = 0

    def set_exporters(self, config: Config) -> None:
        names = config.resolved_exporters()
        processors: list[SpanProcessor] = []
        pending: SpanProcessor | None = None
        for name in names:
            exporter = build_exporter(name, config)
            if exporter is not None:
                processors.append(BatchSpanProcessor(ForkSafeExporter(exporter)))
                if name == "store" and pending is None:
                    from logfire_run.agent.export.pending import PendingSpans

                    pending = PendingSpans(config.resolved_store_path())
                    processors.append(pending)
        with self._lock:
            old, self._processors, self.names = self._processors, tuple(processors), names
            self._pending = pending
            self._queues = tuple(_queue_of(processor) for processor in processors)
        for processor in old:
            processor.shutdown()
            self._retired_refused += getattr(getattr(processor, "span_exporter", None), "refused", 0)
        report.debug(f"exporters: {', '.join(names) or 'none'}")

    def on_start(self, span: Span, parent_context: object = None) -> None:
        pending = self._pending
        if pending is not None:
            pending.on_start(span)

    def on_end(self, span: ReadableSpan) -> None:
        for processor, queue in zip(self._processors, self._queues, strict=False):
            if queue is not None and len(queue) == queue.maxlen:
                self.queue_dropped += 1  # the processor makes room by dropping its oldest span
            processor.on_end(span)

    def refused(self) -> int:
        """Spans of exports that failed for good in this process (all exporters)."""
        return self._retired_refused + sum(
            getattr(getattr(processor, "span_exporter", None), "refused", 0) for processor in self._processors
        )

    def queued(self) -> int:
        """Spans waiting in the batch processors' queues."""
        return sum(len(queue) for queue in self._queues if queue is not None)

    def in_flight(self, *, lost: bool | None = None) -> int:
        """Spans of the exports running now: all; or (`lost=True`) those that cannot arrive if the
        process ends now (the last attempt failed, or a store write, rolled back); or (`lost=False`)
        those on the wire, which the backend may have."""
        total = 0
        for processor in self._processors:
            exporter = getattr(processor, "span_exporter", None)
            gone = bool(getattr(exporter, "retrying", False) or getattr(exporter, "local", False))
            if lost is None or gone == lost:
                total += getattr(exporter, "in_flight", 0)
        return total

    def after_fork_in_child(self) -> None:
        """A forked child counts its own drops."""
        self.queue_dropped = self._retired_refused = 0

    def shutdown(self) -> None:
        for processor in self._processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all([processor.force_flush(timeout_millis) for processor in self._processors])

    def unsent(self) -> int:
        """Spans not exported yet: queued in the batch processors, or in an export still running."""
        return self.queued() + self.in_flight()


def _queue_of(processor: SpanProcessor) -> Any:
    """The bounded deque a batch processor queues spans in (OpenTelemetry 1.27 to now), else None."""
    # Since 1.33 it is in the processor's shared `_batch_processor`; before, on the processor itself.
    queue = getattr(getattr(processor, "_batch_processor", None), "_queue", None)
    if queue is None:
        queue = getattr(processor, "queue", None)
    return queue if getattr(queue, "maxlen", None) else None


class ForkGuard:
    """What a fork waits for while an export is running in another thread: never the network.

    A fork copies the process at one instant, with only the forking thread. A module's import lock
    held by the exporting thread then (it imports a module lazily) would hang the child: its first
    import of that module waits for ever for a thread it does not have. The export path's own lazy
    imports are done before the first export (requests' `netrc`: `otlp_exporter_options`); for any
    other, a fork waits while the exporting thread is inside an import (`importing`), a bounded time.
    (The store's SQLite calls are held off a fork by the store itself, call by call: `store`.)

    A request on the wire holds nothing the child needs: the child gets connections of its own
    (`renew_connections`), so a fork goes ahead at once, whatever the collector does.
    """

    WAIT_SECONDS = 2.0

    def __init__(self) -> None:
        #: The thread running an export now, if any.
        self.thread: int | None = None

    def run(self, export: Callable[[], _T]) -> _T:
        """`export()`, known to a fork as running in this thread."""
        self.thread = threading.get_ident()
        try:
            return export()
        finally:
            self.thread = None

    def before_fork(self) -> None:
        deadline = time.monotonic() + self.WAIT_SECONDS
        thread = self.thread
        while thread is not None and importing(thread) and time.monotonic() < deadline:
            time.sleep(0.001)

    def after_fork_in_parent(self) -> None:
        pass

    def after_fork_in_child(self) -> None:
        self.thread = None


def importing(thread: int) -> bool:
    """Whether `thread` holds a module's import lock now: it is inside an import."""
    bootstrap = sys.modules.get("_frozen_importlib") or sys.modules.get("importlib._bootstrap")
    locks = getattr(bootstrap, "_module_locks", None)
    if not isinstance(locks, dict):
        return False
    for reference in list(locks.values()):
        lock = reference() if callable(reference) else None
        if lock is not None and getattr(lock, "owner", None) == thread:
            return True
    return False


def renew_connections(exporter: object) -> None:
    """Give a forked child's copy of an OpenTelemetry OTLP exporter connections of its own.

    The child's copy of the HTTP session holds the parent's keep-alive connections: a request of the
    child's written into one of them lands in the parent's stream (two requests in one body, both
    refused). The session is replaced by a copy with new connection pools (its settings, class and
    certificates kept), and the gRPC channel by a new one. The parent's are left untouched: their
    locks may be held by the parent's exporting thread, and closing a connection here could end it
    for the parent.
    """
    holders = [exporter, getattr(getattr(exporter, "_client", None), "_transport", None)]
    for holder in holders:
        session = getattr(holder, "_session", None)
        if session is not None and hasattr(session, "adapters"):
            setattr(holder, "_session", _fresh_session(session))  # noqa: B010 (a private attribute)
    if hasattr(exporter, "_channel") and hasattr(exporter, "_initialize_channel_and_stub"):
        try:
            exporter._initialize_channel_and_stub()
        except Exception as error:  # the child then retries through OpenTelemetry's reconnection
            report.debug(f"after fork: no new gRPC channel ({type(error).__name__}: {error})")


def _fresh_session(session: Any) -> Any:
    import copy
    from collections import OrderedDict

    # requests' Session and HTTPAdapter copy through their pickling state: a copied adapter builds
    # a new pool manager (and no proxy managers), sharing no connection with the original. The
    # cookie jar is new too: its lock, taken at every request, may be held by the parent's thread.
    fresh = copy.copy(session)
    fresh.adapters = OrderedDict((prefix, copy.copy(adapter)) for prefix, adapter in session.adapters.items())
    with contextlib.suppress(Exception):
        fresh.cookies = type(session.cookies)()
    return fresh


class ForkSafeExporter(SpanExporter):
    """A span exporter that a fork never catches in a state its child could not go on from.

    Exports run under a `ForkGuard` (a fork waits for an import in progress, never for the network),
    and a forked child gets connections of its own.
    """

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.guard = ForkGuard()
        #: A local exporter (the store): what it writes when the process ends is lost, not on the wire.
        self.local = bool(getattr(inner, "local", False))
        #: Spans of the export running now (counted as unsent if the process exits meanwhile).
        self.in_flight = 0
        #: Spans of exports that failed for good in this process: the batch processor does not retry.
        self.refused = 0
        #: The export running now logged a retry: its last attempt failed (`delivery.exporting`).
        self.retrying = False
        _fork_safe_exporters.add(self)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.in_flight = len(spans)
        result = SpanExportResult.FAILURE
        try:
            with exporting("spans", self):
                result = self.guard.run(lambda: self.inner.export(spans))
            return result
        finally:
            self.in_flight = 0
            # A store refused or deleted said so once for all this process's spans: not counted.
            if result is not SpanExportResult.SUCCESS and not getattr(self.inner, "unusable", False):
                self.refused += len(spans)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def before_fork(self) -> None:
        self.guard.before_fork()

    def after_fork_in_parent(self) -> None:
        self.guard.after_fork_in_parent()

    def after_fork_in_child(self) -> None:
        self.guard.after_fork_in_child()
        self.in_flight = self.refused = 0
        renew_connections(self.inner)


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

        return StoreExporter(
            config.resolved_store_path(),
            max_spans=int(config.store_max_spans),
            max_age_seconds=float(config.store_max_days) * 86400,
        )
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
    # requests imports `netrc` lazily at its first request, in the exporting thread: imported here,
    # no import runs during an export that a fork could catch half-done (`ForkGuard`).
    import netrc  # noqa: F401

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
