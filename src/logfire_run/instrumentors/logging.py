"""Logging: the app's own `logging` records, with the ids of their span, captured without a handler.

What it patches:
    `logging`'s record factory (`logging.setLogRecordFactory`), wrapped once by
    `log_capture` when `logging` is first imported (SDK or not): every record carries
    `otelTraceID`, `otelSpanID`, `otelTraceSampled` and `otelServiceName`. This instrumentor, run
    once the SDK is up, gives that factory the current span's ids and the service name, and starts
    the capture (in `logging.Logger.callHandlers`, wrapped by `log_capture` too) of records
    at or above `LOGFIRE_LOG_LEVEL` into the agent's log pipeline
    (`agent/export/logs.py`: the store, OTLP logs).

When it is enabled:
    When the app first imports `logging` and the SDK is up (a record made before that still gets
    the attributes, with "0" ids). It supersedes OpenTelemetry's logging instrumentor
    (opentelemetry-instrumentation-logging) under the same name: that one adds a handler to the root
    logger, which silences `logging.lastResort` (a bare `logging.warning()` prints nothing) and stops
    `logging.basicConfig()` and werkzeug from setting up their own output. `--disable logging` turns
    both off, the factory included; `LOGFIRE_LOG_LEVEL=off` keeps the ids and captures nothing.

How it refuses:
    With the app's own tracer provider, the ids are set but nothing is captured (the app's exporters
    get its spans; the agent's pipeline is not there). `OTEL_PYTHON_LOG_CORRELATION=true` sets the
    root logger's format with the ids, as OpenTelemetry documents it (`logging.basicConfig`).

Where it stops:
    No handler, filter, formatter or level of the app is touched. Records of the agent, of
    OpenTelemetry and of the agent's threads are never captured. Capture happens in
    `Logger.callHandlers` (see `log_capture`): after the logger's filters, before its handlers.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.agent.export import log_capture
from logfire_run.agent.process import state
from logfire_run.instrumentors._base import Instrumentor

__all__ = ["LoggingInstrumentor"]

_OTEL_INSTRUMENTOR = "opentelemetry.instrumentation.logging:LoggingInstrumentor"


class LoggingInstrumentor(Instrumentor):
    """Trace ids on every log record, and records captured with their span (no handler added)."""

    targets = ("logging",)
    supported = ()
    options: ClassVar[dict[str, Any]] = {}
    supersedes = (_OTEL_INSTRUMENTOR,)

    #: Between `_instrument` and `_uninstrument`: a capture deferred to the SDK's start starts only then.
    active = False

    def _instrument(self, **kwargs: Any) -> None:
        self.active = True
        log_capture.install(logging)
        log_capture.set_level(state.config().log_level)
        # Now when the SDK is up; else (it is held: a preloading gunicorn master) when it comes up.
        state.when_sdk_ready(self._start_capture, start=False)

    def _uninstrument(self, **kwargs: Any) -> None:
        self.active = False
        log_capture.stop_capture()
        log_capture.uninstall(logging)

    def _start_capture(self) -> None:
        if self.active:
            start_capture()


def start_capture() -> None:
    """Hand the records to the SDK's log pipeline (started here, with the SDK)."""
    tracing = state.sdk()
    pipeline = tracing.start_logs() if tracing is not None else None
    provider = tracing.provider if tracing is not None else None
    attributes = getattr(getattr(provider, "resource", None), "attributes", None) or {}
    service_name = str(attributes.get("service.name", "") or "")

    def sink(record: logging.LogRecord, trace_id: int, span_id: int, flags: int) -> None:
        logs = tracing.logs if tracing is not None else None  # rebuilt when configure() changes it
        if logs is not None:
            logs.capture(record, trace_id, span_id, flags)

    log_capture.start_capture(sink if pipeline is not None else None, current_span(), service_name)
    report.debug(f"logging: ids on every record; capture {'on' if pipeline else 'off'}")


def current_span() -> Any:
    """A function giving the current span object, or None: the context variable is read directly
    when OpenTelemetry keeps its context where it always has (a record costs one lookup then)."""
    import contextvars

    from opentelemetry import context
    from opentelemetry.trace import get_current_span

    span_key: str | None
    try:
        from opentelemetry.trace.propagation import _SPAN_KEY as span_key
    except ImportError:
        span_key = None
    variable = getattr(getattr(context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    if isinstance(variable, contextvars.ContextVar) and isinstance(span_key, str):
        get = variable.get

        def from_variable() -> Any:
            return get().get(span_key)

        return from_variable
    return get_current_span
