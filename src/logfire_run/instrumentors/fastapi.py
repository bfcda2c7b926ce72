"""FastAPI: OpenTelemetry's instrumentor, run with one server span per request.

What it patches:
    Nothing of its own. It runs OpenTelemetry's FastAPI instrumentor (opentelemetry-instrumentation-
    fastapi, which patches `fastapi.FastAPI`) with the ASGI middleware's per-message `http send` and
    `http receive` spans left out: a request is one SERVER span, as under WSGI, and a trace across
    services reads client -> server -> client -> server (docs/http.md).

When it is enabled:
    When the app first imports `fastapi`, for the versions OpenTelemetry's instrumentor supports. It
    supersedes that instrumentor under the same entry-point name, so `--disable fastapi` turns both off.

How it refuses:
    Without opentelemetry-instrumentation-fastapi, or with a FastAPI it does not support, it does
    nothing (one `--debug` line).

Where it stops:
    Everything else is OpenTelemetry's: span names, attributes, excluded URLs
    (`OTEL_PYTHON_FASTAPI_EXCLUDED_URLS`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from logfire_run.instrumentors._base import (
    Instrumentor,
    run_opentelemetry_instrumentor,
    stop_opentelemetry_instrumentor,
)

__all__ = ["FastAPIInstrumentor"]

_OTEL_INSTRUMENTOR = "opentelemetry.instrumentation.fastapi:FastAPIInstrumentor"


class FastAPIInstrumentor(Instrumentor):
    """Runs OpenTelemetry's FastAPI instrumentor without the per-message spans."""

    targets = ("fastapi",)
    supported = ("fastapi ~= 0.92",)
    options: ClassVar[dict[str, Any]] = {"exclude_spans": ["receive", "send"]}
    supersedes = (_OTEL_INSTRUMENTOR,)

    _otel: Any = None

    def _instrument(self, **kwargs: Any) -> None:
        self._otel = run_opentelemetry_instrumentor(_OTEL_INSTRUMENTOR, **kwargs)

    def _uninstrument(self, **kwargs: Any) -> None:
        stop_opentelemetry_instrumentor(self._otel)
        self._otel = None
