"""The global LoggerProvider: log records that code emits through OpenTelemetry's logs API, captured once.

Instrumentors that emit OpenTelemetry log records themselves (structlog's, which puts a processor in
structlog's chain) find the provider the agent sets with the SDK (`install_logger_provider`). Each
record they emit is turned into the log pipeline's own form (`logs.Captured`) and queued with the
`logging` records: the same exporters (store, OTLP logs, console), the same capture level
(`LOGFIRE_LOG_LEVEL`), the same bounded queue and exit flush.

Each record is captured once:
- a record that a `logging` handler emits (OpenTelemetry's `LoggingHandler`, attached by the app) is
  the `logging` record the agent captured already in `Logger.callHandlers`: it is not taken again;
- a structlog event emitted here and then handed to `logging` (structlog's standard-library
  integration) is not captured again by `log_capture` (`log_capture.note_emitted`).

Where it stops: records emitted before the SDK is up reach OpenTelemetry's proxy logger, which drops
them, as under any OpenTelemetry set-up. With the app's own tracer provider, no logger provider is
set (the app configured OpenTelemetry itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
from opentelemetry.sdk.resources import Resource

from logfire_run.agent import report
from logfire_run.agent.export import log_capture

__all__ = ["install_logger_provider"]

#: OpenTelemetry severity numbers (1-24, four per level) to `logging` levels.
_LEVELS = (5, 10, 20, 30, 40, 50)
_NAMES = {5: "TRACE", 10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
_TEXT = {"WARN": "WARNING", "FATAL": "CRITICAL"}


def _levelno(severity: Any) -> int:
    number = int(getattr(severity, "value", severity) or 0)
    if number <= 0:
        return 20  # unspecified: what `logging` calls a plain message
    return _LEVELS[min((number - 1) // 4, len(_LEVELS) - 1)]


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class _PipelineProcessor(LogRecordProcessor):
    """Hands each emitted record to the agent's log pipeline (what `pipeline()` gives, when there is one)."""

    def __init__(self, pipeline: Callable[[], Any], threshold: Callable[[], int | None]) -> None:
        self._pipeline = pipeline
        self._threshold = threshold

    def on_emit(self, log_record: Any) -> None:
        try:
            self._capture(log_record)
        except Exception as error:  # never into the app
            report.debug(f"an OpenTelemetry log record was not captured ({type(error).__name__}: {error})")

    def emit(self, log_data: Any) -> None:  # OpenTelemetry before 1.39 calls this one
        self.on_emit(log_data)

    def _capture(self, writable: Any) -> None:
        if log_capture.in_call_handlers():
            return  # a `logging` handler re-emitting a record that was captured already
        record = writable.log_record
        threshold = self._threshold()
        levelno = _levelno(record.severity_number)
        if threshold is None or levelno < threshold:
            return
        pipeline = self._pipeline()
        if pipeline is None:
            return
        body = record.body
        message = body if isinstance(body, str) else str(body) if body is not None else ""
        attributes = dict(record.attributes or {})
        exception = attributes.pop("exception.stacktrace", None)
        text = str(record.severity_text or "").upper()
        scope = getattr(writable, "instrumentation_scope", None)
        site = tuple(sorted((str(key), _hashable(value)) for key, value in attributes.items()))
        when = record.timestamp or record.observed_timestamp or 0
        log_capture.note_emitted(message)
        pipeline.enqueue(
            (
                int(when),
                levelno,
                _TEXT.get(text, text) or _NAMES.get(levelno, "INFO"),
                scope.name if scope is not None else "",
                message,
                None if exception is None else str(exception),
                int(record.trace_id or 0),
                int(record.span_id or 0),
                int(record.trace_flags or 0),
                site,
            )
        )

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # the pipeline is flushed with the spans (`process.exits`)


def current_logger_provider() -> object | None:
    """The logger provider set globally (ours or the app's), or None while none is."""
    from opentelemetry import _logs

    return getattr(getattr(_logs, "_internal", None), "_LOGGER_PROVIDER", None)


def install_logger_provider(
    resource: Resource, pipeline: Callable[[], Any], threshold: Callable[[], int | None]
) -> LoggerProvider | None:
    """Set the global LoggerProvider, feeding the agent's log pipeline; None when one is set already."""
    from opentelemetry import _logs

    existing = current_logger_provider()
    if existing is not None:
        report.debug(f"the app set its own logger provider ({type(existing).__name__}); keeping it")
        return None
    provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_log_record_processor(_PipelineProcessor(pipeline, threshold))
    _logs.set_logger_provider(provider)
    return provider
