"""SDK setup: the tracer provider, the exporters behind one span processor, the policy-gated propagator.

Imported only when something needs OpenTelemetry (an instrumented library, the app's own
`opentelemetry` import, or the public API): importing the SDK costs tens of milliseconds.

If the app installed a TracerProvider of its own before this runs, the app's provider is kept and the
agent adds nothing to it: the app's exporters get the spans, once. If the app sets one afterwards,
OpenTelemetry refuses it (its own "Overriding of current TracerProvider is not allowed" warning) and
the app's spans are exported once, by the agent's exporters. See docs/configuration.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Sequence

from opentelemetry import trace
from opentelemetry.context import Context, get_value
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext
from opentelemetry.util.types import Attributes

from logfire_run.agent import report
from logfire_run.agent.config import Config
from logfire_run.agent.policy import REFUSED_PARENT_KEY, DistributedTracingPolicy, install_as_global


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
        _fork_safe_exporters.add(self)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            return self.inner.export(spans)

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
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.levelno >= logging.WARNING:
            report.problem(
                f"export:{record.name}",
                f"exporting spans failed: {message} (reported once per process; the app runs on, "
                "spans beyond the bounded queue are dropped; LOGFIRE_DEBUG=1 shows every occurrence)",
            )
        report.debug(f"{record.name}: {message}")


EXPORT_LOGGERS = (
    "opentelemetry.exporter",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk._shared_internal",
)


def _route_export_logs() -> None:
    handler = _ExportProblemHandler(logging.DEBUG)
    for name in EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _ExportProblemHandler) for existing in logger.handlers):
            logger.addHandler(handler)


class RefusedParentLinkProcessor(SpanProcessor):
    """In `link` mode, gives the root span started from a refused context a link to the inbound span."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        refused = get_value(REFUSED_PARENT_KEY, parent_context)
        if isinstance(refused, SpanContext) and span.parent is None:
            span.add_link(refused, {"logfire_run.link": "refused_parent"})

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class Agent:
    """The SDK objects of this process: provider (ours or the app's), exporters and policy."""

    def __init__(self, config: Config, policy: DistributedTracingPolicy) -> None:
        self.config = config
        self.exporting = ExportingSpanProcessor()
        self.policy = policy
        self.provider: TracerProvider | None = None
        self.owns_provider = False

    def install(self) -> None:
        propagate = sys.modules.get("opentelemetry.propagate")
        spec = getattr(propagate, "__spec__", None)
        if propagate is None or not getattr(spec, "_initializing", False):
            self.install_propagator()
        # else: the module's post-import hook calls install_propagator() when it has finished.
        existing = _current_provider()
        if existing is not None:
            report.debug(f"the app set its own tracer provider ({type(existing).__name__}); keeping it")
            self.provider = existing if isinstance(existing, TracerProvider) else None
            if self.provider is not None:
                self.provider.add_span_processor(RefusedParentLinkProcessor())
            return
        _route_export_logs()
        provider = TracerProvider(resource=self._resource(), shutdown_on_exit=True)
        provider.add_span_processor(RefusedParentLinkProcessor())
        self.exporting.set_exporters(self.config)
        provider.add_span_processor(self.exporting)
        trace.set_tracer_provider(provider)
        self.provider = provider
        self.owns_provider = True
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)

    def install_propagator(self) -> None:
        install_as_global(self.policy)

    def _resource(self) -> Resource:
        return Resource.create(
            {SERVICE_NAME: self.config.resolved_service_name(), "process.pid": os.getpid()}
        )

    def _after_fork_in_child(self) -> None:
        if self.owns_provider and self.provider is not None:
            _replace_resource_attributes(self.provider.resource, {"process.pid": os.getpid()})

    def reconfigure(self, changed: set[str]) -> None:
        """Apply settings changed by `configure()` after the SDK was set up."""
        if "distributed_tracing" in changed:
            self.policy.mode = self.config.distributed_tracing
        if not self.owns_provider or self.provider is None:
            return
        if changed & {"exporters", "store_path"}:
            self.exporting.set_exporters(self.config)
        if "service_name" in changed:
            _replace_resource_attributes(self.provider.resource, self._resource().attributes)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        provider = _current_provider()
        flush = getattr(provider, "force_flush", None)
        return bool(flush(timeout_millis)) if callable(flush) else True

    def shutdown(self) -> None:
        provider = _current_provider()
        stop = getattr(provider, "shutdown", None)
        if callable(stop):
            stop()


def _current_provider() -> object | None:
    # The API has no public "is one set?"; get_tracer_provider() would hand back a proxy instead.
    return getattr(trace, "_TRACER_PROVIDER", None)


def _replace_resource_attributes(resource: Resource, attributes: Attributes) -> None:
    # Every tracer of the provider shares this one Resource object, so a new service name reaches
    # spans started from tracers handed out before configure() was called.
    merged = resource.merge(Resource(dict(attributes or {})))
    resource._attributes = merged._attributes
