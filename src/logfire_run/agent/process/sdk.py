"""SDK setup: the tracer provider, the exporters behind one span processor, the policy-gated propagator.

Imported only when something needs OpenTelemetry (an instrumented library, the app's own
`opentelemetry` import, or the public API): importing the SDK costs tens of milliseconds. `state`
decides when, and owns the one `TracingSdk` of the process.

If the app installed a TracerProvider of its own before this runs, the app's provider is kept and the
agent adds nothing to it: the app's exporters get the spans, once. If the app sets one afterwards,
OpenTelemetry refuses it (its "Overriding of current TracerProvider is not allowed" warning, one
`logfire-run:` line unless the app's logging shows it: `export.delivery`) and the app's spans are
exported once, by the agent's exporters. See docs/configuration.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context, get_value
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanContext
from opentelemetry.util.types import Attributes

from logfire_run.agent import report
from logfire_run.agent.config import Config
from logfire_run.agent.export.delivery import route_export_logs
from logfire_run.agent.export.exporters import ExportingSpanProcessor
from logfire_run.agent.process.signals import SigtermBlocked
from logfire_run.agent.propagation.policy import (
    REFUSED_PARENT_KEY,
    DistributedTracingPolicy,
    install_as_global,
)

if TYPE_CHECKING:
    from logfire_run.agent.export.delivery import Drops
    from logfire_run.agent.export.logs import LogPipeline
    from logfire_run.agent.export.metrics import Metrics


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


class TracingSdk:
    """The OpenTelemetry SDK objects of this process: the provider (ours or the app's) and exporters.

    It reads the config and installs the policy as the global propagator; it never changes either
    (`state` is their one owner).
    """

    def __init__(self, config: Config, policy: DistributedTracingPolicy) -> None:
        self.config = config
        self.exporting = ExportingSpanProcessor()
        self.policy = policy
        self.provider: TracerProvider | None = None
        self.owns_provider = False
        #: The pipeline of captured `logging` records (`agent.logs`), once the logging instrumentor runs.
        self.logs: LogPipeline | None = None
        #: The meter provider, its readers and their thread (`export.metrics`), with our tracer provider.
        self.metrics: Metrics | None = None
        #: This process's `service.instance.id`, unless OTEL_RESOURCE_ATTRIBUTES gives one (None then).
        self.instance_id: str | None = None if _instance_id_given() else _new_instance_id()

    def install(self) -> None:
        propagate = sys.modules.get("opentelemetry.propagate")
        spec = getattr(propagate, "__spec__", None)
        if propagate is None or not getattr(spec, "_initializing", False):
            install_as_global(self.policy)
        # else: the module's post-import hook installs it when the module has finished.
        existing = current_provider()
        if existing is not None:
            report.debug(f"the app set its own tracer provider ({type(existing).__name__}); keeping it")
            self.provider = existing if isinstance(existing, TracerProvider) else None
            if self.provider is not None:
                self.provider.add_span_processor(RefusedParentLinkProcessor())
            return
        route_export_logs()
        # Not OpenTelemetry's own atexit shutdown: it waits for every batch, each with the exporter's
        # full timeout. `state` flushes at exit within the exit budget instead.
        provider = TracerProvider(resource=self._resource(), shutdown_on_exit=False)
        provider.add_span_processor(RefusedParentLinkProcessor())
        self.exporting.set_exporters(self.config)
        provider.add_span_processor(self.exporting)
        trace.set_tracer_provider(provider)
        self.provider = provider
        self.owns_provider = True
        self._install_metrics_and_logs(provider.resource)

    def _install_metrics_and_logs(self, resource: Resource) -> None:
        """The meter provider (its thread starts here, with the SDK) and the global logger provider,
        which share the spans' resource: one service, one identity per process, for every signal."""
        from logfire_run.agent.export.log_bridge import install_logger_provider
        from logfire_run.agent.export.metrics import start_metrics

        try:
            self.metrics = start_metrics(self.config, resource)
        except Exception as error:
            report.problem(
                "metrics", f"metrics could not be set up ({type(error).__name__}: {error}); no metrics"
            )
        try:
            install_logger_provider(resource, self.logs_or_start, lambda: self.config.log_level)
        except Exception as error:
            report.debug(f"no global logger provider ({type(error).__name__}: {error})")

    def logs_or_start(self) -> LogPipeline | None:
        """The log pipeline, built now if the logging instrumentor has not run (`--disable logging`)."""
        return self.logs if self.logs is not None else self.start_logs()

    def _resource(self) -> Resource:
        identity = {"service.instance.id": self.instance_id} if self.instance_id else {}
        return Resource.create(
            {
                SERVICE_NAME: self.config.resolved_service_name(),
                "process.pid": os.getpid(),
                **identity,
                **distribution_attributes(),
            }
        )

    def after_fork_in_child(self) -> None:
        """A forked child's spans, logs and metrics carry its own `process.pid` and
        `service.instance.id`, and it counts its own drops (`process.fork`): each worker's metrics are a
        series of their own."""
        self.exporting.after_fork_in_child()
        if self.owns_provider and self.provider is not None:
            identity: dict[str, object] = {"process.pid": os.getpid()}
            if self.instance_id is not None:
                self.instance_id = identity["service.instance.id"] = _new_instance_id()
            _replace_resource_attributes(self.provider.resource, identity)  # type: ignore[arg-type]

    def apply(self, changes: Collection[str]) -> None:
        """Apply changed settings, by what they apply to (`Setting.applies`): exporters, resource."""
        if not self.owns_provider or self.provider is None:
            return
        if "exporters" in changes:
            self.exporting.set_exporters(self.config)
            if self.logs is not None:
                self.start_logs()
        if "resource" in changes:
            _replace_resource_attributes(self.provider.resource, self._resource().attributes)
            if self.logs is not None:
                from logfire_run.agent.export import log_capture

                log_capture.set_service_name(self.config.resolved_service_name())

    def start_logs(self) -> LogPipeline | None:
        """The pipeline for captured log records, (re)built from the config; None with the app's own
        provider (its spans are exported by the app's exporters, not ours: so would its logs be)."""
        if not self.owns_provider or self.provider is None:
            return None
        from logfire_run.agent.export.logs import LogPipeline, build_log_exporters, log_exporter_names

        provider, config = self.provider, self.config
        names = log_exporter_names(config)
        exporters = build_log_exporters(config, lambda: provider.resource)
        if self.logs is None:
            self.logs = LogPipeline(exporters)
        else:
            self.logs.replace_exporters(exporters)
        # Its thread starts now, with the SDK, and SIGTERM blocked like every thread of the agent.
        with SigtermBlocked():
            self.logs.start()
        report.debug(f"log exporters: {', '.join(names) or 'none'}")
        return self.logs

    def force_flush(self, timeout_millis: int = 30000, *, metrics: bool = True) -> bool:
        """Export the ended spans and the captured records, and (with `metrics`) collect once."""
        flush = getattr(current_provider(), "force_flush", None)
        flushed = bool(flush(timeout_millis)) if callable(flush) else True
        if self.logs is not None:
            flushed = self.logs.force_flush(timeout_millis) and flushed
        if metrics and self.metrics is not None:
            flushed = self.metrics.force_flush(timeout_millis) and flushed
        return flushed

    def unsent(self) -> int:
        """Spans of the agent's exporters not sent yet (0 for an app's own provider: not ours to count)."""
        return self.exporting.unsent() if self.owns_provider else 0

    def unsent_logs(self) -> int:
        """Captured log records not exported yet."""
        return self.logs.unsent() if self.logs is not None else 0

    def drops(self, *, exiting: bool) -> dict[str, Drops]:
        """This process's drops by signal (`delivery.Drops`); when `exiting` before all was sent, what
        is still queued is dropped at exit, and an export running now is on the wire."""
        from logfire_run.agent.export.delivery import Drops

        spans = Drops()
        if self.owns_provider:
            spans.refused, spans.queue_full = self.exporting.refused(), self.exporting.queue_dropped
            if exiting:
                spans.at_exit = self.exporting.queued() + self.exporting.in_flight(lost=True)
                spans.on_the_wire = self.exporting.in_flight(lost=False)
        logs = Drops()
        if self.logs is not None:
            logs.refused, logs.queue_full = self.logs.refused, self.logs.dropped
            if exiting:
                lost = self.logs.retrying or self.logs.local
                logs.at_exit = self.logs.queued() + (self.logs.in_flight if lost else 0)
                logs.on_the_wire = 0 if lost else self.logs.in_flight
        metrics = Drops()
        if self.metrics is not None:
            metrics.refused = self.metrics.refused()
            if exiting:
                metrics.at_exit = self.metrics.unsent()
        return {"spans": spans, "logs": logs, "metrics": metrics}

    def shutdown(self) -> None:
        stop = getattr(current_provider(), "shutdown", None)
        if callable(stop):
            stop()
        if self.logs is not None:
            self.logs.shutdown()
        if self.metrics is not None:
            self.metrics.shutdown()


def distribution_attributes() -> dict[str, str]:
    """Which agent made the spans: semantic conventions' `telemetry.distro.*`, and the
    `telemetry.auto.version` that opentelemetry-instrument sets (opentelemetry-instrumentation's)."""
    from logfire_run._version import __version__

    attributes = {"telemetry.distro.name": "logfire-run", "telemetry.distro.version": __version__}
    try:
        from opentelemetry.instrumentation.version import __version__ as auto_version

        attributes["telemetry.auto.version"] = str(auto_version)
    except Exception:  # opentelemetry-instrumentation is a dependency; a broken install only loses this
        pass
    return attributes


def _new_instance_id() -> str:
    import uuid

    return str(uuid.uuid4())


def _instance_id_given() -> bool:
    """Whether OTEL_RESOURCE_ATTRIBUTES sets `service.instance.id` (the user's own identity is kept)."""
    for pair in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == "service.instance.id" and value.strip():
            return True
    return False


def current_provider() -> object | None:
    """The tracer provider set globally (ours or the app's), or None while none is."""
    # The API has no public "is one set?"; get_tracer_provider() would hand back a proxy instead.
    return getattr(trace, "_TRACER_PROVIDER", None)


def _replace_resource_attributes(resource: Resource, attributes: Attributes) -> None:
    # Every tracer of the provider shares this one Resource object, so a new service name reaches
    # spans started from tracers handed out before configure() was called.
    merged = resource.merge(Resource(dict(attributes or {})))
    resource._attributes = merged._attributes
