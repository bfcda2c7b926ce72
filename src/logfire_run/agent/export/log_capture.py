"""The log record factory: trace ids on every `logging.LogRecord`, and the hand-off of captured records.

Installed when the app (or a library) first imports `logging`, by one post-import hook of the
bootstrap; stdlib only, so a program that never logs pays for nothing, and one that does pays one
function call per record on top of `logging`'s own factory.

Every record the factory makes carries OpenTelemetry's logging-instrumentation attributes:
`otelTraceID` and `otelSpanID` (hex, or "0" outside a span, as OpenTelemetry writes them),
`otelTraceSampled` (False outside a span) and `otelServiceName` ("" until the SDK is up). A format
naming them therefore never raises, whether the SDK started or not. Nothing else about the record,
and nothing about the app's handlers, formatters or levels, changes.

Capture: once the `logging` instrumentor runs (the SDK is up), a record at or above the capture
level is handed to the sink (the agent's log pipeline, `agent/export/logs.py`) with the ids of its span, in
`Logger.callHandlers`: after the logger's level check and filters (a record they drop is not
captured, one they rewrite is captured as rewritten), before the first handler. No handler is added
to any logger, so propagation, `logging.lastResort` and the app's output are as they were. A record
is captured on the thread and in the process that made it only: one a queue listener hands on, or
one received from another process, is not captured again. The agent's own records, OpenTelemetry's,
and any record made on one of the agent's threads (the exporters', whose HTTP client logs too) are
never captured.

Records made outside any span are captured too (with 0 ids). Those made before capture starts (the
SDK is not up yet: a service's first lines) are kept, at most `EARLY_RECORDS`, and handed to the sink
when it starts. A record whose text was just emitted on the same thread through OpenTelemetry's
logs API (`log_bridge`: structlog's instrumentor, which may hand the event on to `logging`) is not
captured a second time.

Where it stops: handlers' own filters and levels do not decide capture (a record is captured once,
before any handler, whatever each handler does with it); a Logger subclass that overrides
`callHandlers` without calling it is not captured; a factory the app installs without calling the
previous one replaces this one (the ids are then missing, as without the agent).
`extra={"otelTraceID": ...}` raises KeyError as it does under OpenTelemetry's instrumentation.
"""

from __future__ import annotations

import os
import sys
import threading

from logfire_run.agent.patching import Patches

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from typing import Any

    #: (record, trace id, span id, trace flags) -> None; must never raise.
    Sink = Callable[[logging.LogRecord, int, int, int], None]

#: Loggers whose records are never captured (a name covers its children).
EXCLUDED_LOGGERS = ("logfire_run", "opentelemetry")
#: Records made on threads whose name starts so are never captured: the agent's and OpenTelemetry's.
EXCLUDED_THREADS = ("OtelBatch", "logfire-run", "OtelPeriodic")

_sink: Sink | None = None
#: () -> the current span object (any object with get_span_context()), or None.
_current_span: Callable[[], Any] | None = None
_service_name = ""
#: Records below this level are not captured (None: capture is off).
_threshold: int | None = None
_patches = Patches("log capture")
#: The attributes of a record made outside any span.
_outside: dict[str, object] = {
    "otelTraceID": "0",
    "otelSpanID": "0",
    "otelTraceSampled": False,
    "otelServiceName": "",
}
#: (the span the last record was made in, its attributes, (trace id, span id, flags)): records come in
#: runs from one span, so its ids are formatted once per run rather than once per record.
_last: tuple[object, dict[str, object], tuple[int, int, int]] = (None, _outside, (0, 0, 0))


def install(logging_module: Any) -> None:
    """Wrap the record factory and `Logger.callHandlers` of `logging_module` (once)."""
    # The factory's own variable, as `setLogRecordFactory` sets it: one patch helper for every patch.
    current = logging_module.getLogRecordFactory()
    _patches.replace(logging_module, "_logRecordFactory", _make_factory(current))
    logger_class = logging_module.Logger
    _patches.replace(logger_class, "callHandlers", _make_call_handlers(logger_class.callHandlers))
    if os.environ.get("OTEL_PYTHON_LOG_CORRELATION", "").strip().lower() == "true":
        _set_logging_format(logging_module)


def uninstall(logging_module: Any) -> None:
    """Put the wrapped factory and `callHandlers` back, where ours are still in place."""
    _patches.restore()


# OpenTelemetry's logging instrumentation: OTEL_PYTHON_LOG_CORRELATION=true calls basicConfig with this
# format (OTEL_PYTHON_LOG_FORMAT replaces it) at the level of OTEL_PYTHON_LOG_LEVEL, INFO by default.
DEFAULT_CORRELATION_FORMAT = (
    "%(asctime)s %(levelname)s [%(name)s] [%(filename)s:%(lineno)d] [trace_id=%(otelTraceID)s "
    "span_id=%(otelSpanID)s resource.service.name=%(otelServiceName)s trace_sampled=%(otelTraceSampled)s]"
    " - %(message)s"
)
_CORRELATION_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _set_logging_format(logging_module: Any) -> None:
    log_format = os.environ.get("OTEL_PYTHON_LOG_FORMAT") or DEFAULT_CORRELATION_FORMAT
    level = _CORRELATION_LEVELS.get(os.environ.get("OTEL_PYTHON_LOG_LEVEL", "").strip().lower(), 20)
    logging_module.basicConfig(format=log_format, level=level)


def start_capture(sink: Sink | None, current_span: Callable[[], Any], service_name: str) -> None:
    """Hand records to `sink` from now on (the SDK is up; None: ids only); `current_span()` gives
    the span a record is made in. The records kept before this (`_early`) go to it first."""
    global _sink, _current_span, _early
    set_service_name(service_name)
    _current_span = current_span
    early, _early = _early, None
    if sink is not None:
        for record in early or ():
            if record.process in (None, os.getpid()):  # not a forked parent's, which it exports itself
                sink(record, 0, 0, 0)
    _sink = sink


#: Records made before capture starts (before the SDK is up: a service's first lines, logged before it
#: imports the library that starts tracing), kept for the sink; at most `EARLY_RECORDS` of them.
#: None once capture has started. They are outside any span: no span exists before the SDK.
EARLY_RECORDS = 256
_early: list[Any] | None = []


def _keep_early(record: Any) -> None:
    early = _early
    if early is not None and len(early) < EARLY_RECORDS:
        early.append(record)


def stop_capture() -> None:
    global _sink, _current_span
    _sink = None
    _current_span = None
    set_service_name("")


def set_service_name(name: str) -> None:
    """`otelServiceName` from now on (the SDK's resource; `configure(service_name=...)` changes it)."""
    global _service_name, _outside, _last
    _service_name = name
    _outside = {"otelTraceID": "0", "otelSpanID": "0", "otelTraceSampled": False, "otelServiceName": name}
    _last = (None, _outside, (0, 0, 0))


def set_level(level: int | None) -> None:
    """The capture level (None: off); `configure(log_level=...)` and the settings call it."""
    global _threshold
    _threshold = level


def _attributes_of(span: Any) -> tuple[dict[str, object], tuple[int, int, int]]:
    global _last
    context = span.get_span_context()
    trace_id, span_id = context.trace_id, context.span_id
    if not trace_id or not span_id:
        values, ids = _outside, (0, 0, 0)
    else:
        flags = int(context.trace_flags)
        values = {
            "otelTraceID": f"{trace_id:032x}",
            "otelSpanID": f"{span_id:016x}",
            "otelTraceSampled": bool(flags & 1),
            "otelServiceName": _service_name,
        }
        ids = (trace_id, span_id, flags)
    _last = (span, values, ids)
    return values, ids


def _excluded(record: logging.LogRecord) -> bool:
    name = record.name
    if isinstance(name, str) and name.startswith(EXCLUDED_LOGGERS):
        head = name.partition(".")[0]
        if head in EXCLUDED_LOGGERS:
            return True
    thread_name = record.threadName
    return isinstance(thread_name, str) and thread_name.startswith(EXCLUDED_THREADS)


def _make_factory(wrapped: Callable[..., Any]) -> Callable[..., Any]:
    def record_factory(*args: Any, **kwargs: Any) -> Any:
        record = wrapped(*args, **kwargs)
        try:
            current = _current_span
            span = current() if current is not None else None
            if span is None:
                values = _outside
            else:
                last = _last
                values = last[1] if last[0] is span else _attributes_of(span)[0]
            record.__dict__.update(values)
        except Exception as error:  # never into the app: its record is made either way
            _report_once(error)
        return record

    return record_factory


def _make_call_handlers(wrapped: Callable[..., Any]) -> Callable[..., Any]:
    """`Logger.callHandlers`, capturing the record first: the one point every record reaches once,
    after the logger's level check and its filters (which may drop a record or rewrite it, as a
    redacting filter does) and before any handler."""
    getpid = os.getpid
    # `threading.get_ident` is looked up at each record, as `LogRecord` does to stamp it: under gevent
    # or eventlet monkey-patching it names the greenlet, and a copy taken before the patching would
    # name the OS thread (no record would be captured).
    module = threading

    def callHandlers(self: Any, record: Any) -> Any:
        sink, threshold = _sink, _threshold
        if threshold is not None and (sink is not None or _early is not None):
            try:
                level = record.levelno
                if (
                    type(level) is int
                    and level >= threshold
                    # Made on this thread of this process: a record handed on by a queue listener or
                    # received from another process was captured (or not) where it was made.
                    and record.thread in (None, module.get_ident())
                    and record.process in (None, getpid())
                    and not _excluded(record)
                    and not (_emitted and _emitted_just_now(record))
                ):
                    if sink is None:
                        _keep_early(record)
                        return wrapped(self, record)
                    current = _current_span
                    span = current() if current is not None else None
                    if span is None:
                        ids = (0, 0, 0)
                    else:
                        last = _last
                        ids = last[2] if last[0] is span else _attributes_of(span)[1]
                    sink(record, *ids)
            except Exception as error:  # never into the app: its handlers run either way
                _report_once(error)
        return wrapped(self, record)

    global _CALL_HANDLERS_CODE
    _CALL_HANDLERS_CODE = callHandlers.__code__
    return callHandlers


_CALL_HANDLERS_CODE: object = None


# Records emitted through OpenTelemetry's logs API (`log_bridge`) are captured there. structlog's
# instrumentor emits one for an event and structlog may then hand the same event to `logging`: the
# text emitted last on each thread is noted, and a `logging` record that carries it is not captured
# again. `_emitted` stays empty, and costs one test per record, until something emits that way.
_emitted: dict[int, str] = {}


def note_emitted(message: str) -> None:
    """An OpenTelemetry log record with `message` was just captured on this thread (`log_bridge`)."""
    _emitted[threading.get_ident()] = message


def _emitted_just_now(record: Any) -> bool:
    text = _emitted.pop(threading.get_ident(), None)
    if text is None:
        return False
    message = record.msg
    # structlog hands on the event's text (`render_to_log_kwargs`), the whole event dict
    # (`ProcessorFormatter.wrap_for_formatter`), or a rendered line holding the text.
    return isinstance(message, dict) or (isinstance(message, str) and bool(text) and text in message)


def in_call_handlers() -> bool:
    """Whether this thread is inside `Logger.callHandlers` as wrapped here: a handler is handling
    a `logging` record, which was captured (or not) already."""
    frame = sys._getframe(1)
    depth = 0
    while frame is not None and depth < 64:
        if frame.f_code is _CALL_HANDLERS_CODE:
            return True
        frame = frame.f_back  # type: ignore[assignment]
        depth += 1
    return False


_reported = False


def _report_once(error: Exception) -> None:
    global _reported
    if _reported:
        return
    _reported = True
    try:
        from logfire_run.agent import report

        report.problem(
            "logging:factory",
            f"log records could not be correlated or captured ({type(error).__name__}: {error}); "
            "the app's logging runs on unchanged",
        )
    except Exception:
        sys.stderr.write(f"logfire-run: log records could not be captured ({error})\n")
