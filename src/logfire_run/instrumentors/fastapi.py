"""FastAPI: its own telemetry when it has some, else OpenTelemetry's instrumentor (one SERVER span a request).

What it patches:
    Nothing of its own. FastAPI 0.165 and later trace themselves (`FastAPI(telemetry=...)`, on by
    default once a tracer provider is set, which the agent does): a request is FastAPI's SERVER
    span, with its operation spans, configured by the app. FastAPI switches that off when it finds
    OpenTelemetry's ASGI middleware in the app, so for those versions OpenTelemetry's instrumentor is
    not run and the app keeps its own telemetry (one `--debug` line says so). For earlier versions it
    runs OpenTelemetry's FastAPI instrumentor (opentelemetry-instrumentation-fastapi, which patches
    `fastapi.FastAPI`) with the ASGI middleware's per-message `http send` and `http receive` spans
    left out: a request is one SERVER span, as under WSGI, and a trace across services reads client
    -> server -> client -> server (docs/http.md). Its ASGI attribute collection is guarded as
    `_http_server` says: a request whose attributes cannot be collected runs untraced.

When it is enabled:
    When the app first imports `fastapi`, for the versions OpenTelemetry's instrumentor supports. It
    supersedes that instrumentor under the same entry-point name, so `--disable fastapi` turns both off
    (FastAPI's own telemetry is the app's: `telemetry={"tracing": False}` turns it off).

How it refuses:
    Without opentelemetry-instrumentation-fastapi, or with a FastAPI it does not support, it does
    nothing (one `--debug` line).

Where it stops:
    Everything else is FastAPI's own telemetry or OpenTelemetry's instrumentor: span names,
    attributes, excluded URLs (`OTEL_PYTHON_FASTAPI_EXCLUDED_URLS` for OpenTelemetry's; FastAPI's
    `telemetry={"exclude": ...}` for its own).
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.instrumentors._base import (
    PatchingInstrumentor,
    run_opentelemetry_instrumentor,
    stop_opentelemetry_instrumentor,
)
from logfire_run.instrumentors._http_server import guard_asgi

__all__ = ["FastAPIInstrumentor"]

_OTEL_INSTRUMENTOR = "opentelemetry.instrumentation.fastapi:FastAPIInstrumentor"


class FastAPIInstrumentor(PatchingInstrumentor):
    """Leaves FastAPI's own telemetry alone; else runs OpenTelemetry's instrumentor without the
    per-message spans."""

    targets = ("fastapi",)
    supported = ("fastapi ~= 0.92",)
    options: ClassVar[dict[str, Any]] = {"exclude_spans": ["receive", "send"]}
    supersedes = (_OTEL_INSTRUMENTOR,)

    patches_name = "fastapi"

    def _instrument(self, **kwargs: Any) -> None:
        if has_native_telemetry():
            report.debug(
                "FastAPI traces itself (its telemetry= option); OpenTelemetry's instrumentor not run"
            )
            return
        self._otel = run_opentelemetry_instrumentor(_OTEL_INSTRUMENTOR, **kwargs)
        if self._otel is not None:
            guard_asgi(self._patches)

    def _uninstrument(self, **kwargs: Any) -> None:
        self._patches.restore()
        stop_opentelemetry_instrumentor(self._otel)
        self._otel = None


def has_native_telemetry() -> bool:
    """Whether the installed FastAPI traces itself (`fastapi.telemetry`, FastAPI 0.165 and later)."""
    try:
        return find_spec("fastapi.telemetry") is not None
    except (ImportError, ValueError):
        return False
