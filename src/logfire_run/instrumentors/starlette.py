"""Starlette: one SERVER span per request, and none added to an app that traces itself.

What it patches:
    `starlette.applications.Starlette.build_middleware_stack`: the stack it returns gets
    OpenTelemetry's ASGI middleware (opentelemetry-instrumentation-asgi) around it, named and
    configured as OpenTelemetry's Starlette instrumentor (opentelemetry-instrumentation-starlette)
    does it (`GET /users/{id}`, `OTEL_PYTHON_STARLETTE_EXCLUDED_URLS`), with the per-message
    `http send` and `http receive` spans left out: a request is one SERVER span, as under FastAPI and
    WSGI. OpenTelemetry's instrumentor replaces `starlette.applications.Starlette` with a subclass
    instead, which FastAPI, imported after it, then subclassed in turn (every FastAPI app got its
    middleware too, and FastAPI's own telemetry turned itself off), and it has no option to leave the
    per-message spans out. Also OpenTelemetry's ASGI attribute collection, as `_http_server` says: a
    request whose attributes cannot be collected runs untraced.

When it is enabled:
    When the app first imports `starlette` (FastAPI imports it too), with
    opentelemetry-instrumentation-starlette installed. It supersedes that instrumentor under the same
    entry-point name, so `--disable starlette` turns both off.

How it refuses:
    Without opentelemetry-instrumentation-starlette it does nothing (one `--debug` line). A stack
    whose middleware cannot be built is served as it is (one line on stderr).

Where it stops:
    FastAPI apps are the `fastapi` instrumentor's. An app whose stack already holds a tracing
    middleware, Starlette's own `OpenTelemetryMiddleware` (Starlette 1.x) or OpenTelemetry's ASGI one
    added by hand, is left alone: its spans are its own. A stack built before the agent started keeps
    what it had.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.instrumentors._base import PatchingInstrumentor
from logfire_run.instrumentors._http_server import guard_asgi

__all__ = ["StarletteInstrumentor"]

_OTEL_MODULE = "opentelemetry.instrumentation.starlette"
_OTEL_INSTRUMENTOR = "opentelemetry.instrumentation.starlette:StarletteInstrumentor"
#: (module, class) of the middlewares that trace a request: an app with one of them traces itself.
_TRACING_MIDDLEWARES = frozenset(
    {
        ("opentelemetry.instrumentation.asgi", "OpenTelemetryMiddleware"),
        ("starlette.middleware.opentelemetry", "OpenTelemetryMiddleware"),
    }
)


class StarletteInstrumentor(PatchingInstrumentor):
    """Traces every Starlette app that does not trace itself, one SERVER span per request."""

    targets = ("starlette",)
    supported = ("starlette >= 0.13",)
    options: ClassVar[dict[str, Any]] = {}
    supersedes = (_OTEL_INSTRUMENTOR,)

    patches_name = "starlette"

    def _first_instance(self) -> None:
        self._options: dict[str, Any] = {}

    def _instrument(self, **kwargs: Any) -> None:
        try:
            importlib.import_module(_OTEL_MODULE)
        except ImportError as error:
            report.debug(f"Starlette: {_OTEL_MODULE} is not installed ({error}); not traced")
            return
        from starlette.applications import Starlette

        self._options = kwargs
        self.active = True
        self._patches.wrap(Starlette, "build_middleware_stack", self._traced_stack)
        guard_asgi(self._patches)

    def _uninstrument(self, **kwargs: Any) -> None:
        self.active = False
        self._patches.restore()

    def _traced_stack(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        stack = wrapped(*args, **kwargs)
        if not self.active or _is_fastapi(instance) or _traces_itself(stack):
            return stack
        try:
            return self._middleware(stack)
        except Exception as error:
            report.problem("starlette", f"Starlette app not traced ({type(error).__name__}: {error})")
            return stack

    def _middleware(self, stack: Any) -> Any:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.metrics import get_meter
        from opentelemetry.trace import get_tracer

        otel = importlib.import_module(_OTEL_MODULE)
        version = getattr(importlib.import_module(f"{_OTEL_MODULE}.version"), "__version__", "")
        schema = "https://opentelemetry.io/schemas/1.11.0"
        options = self._options
        return OpenTelemetryMiddleware(
            stack,
            excluded_urls=getattr(otel, "_excluded_urls", None),
            default_span_details=getattr(otel, "_get_default_span_details", None),
            server_request_hook=options.get("server_request_hook"),
            client_request_hook=options.get("client_request_hook"),
            client_response_hook=options.get("client_response_hook"),
            tracer=get_tracer(_OTEL_MODULE, version, options.get("tracer_provider"), schema_url=schema),
            meter=get_meter(_OTEL_MODULE, version, options.get("meter_provider"), schema_url=schema),
            exclude_spans=["receive", "send"],
        )


def _is_fastapi(app: Any) -> bool:
    return any(cls.__module__ == "fastapi.applications" for cls in type(app).__mro__)


def _traces_itself(stack: Any) -> bool:
    """Whether a middleware of the stack (outermost first, each `.app` the next) traces requests."""
    seen: set[int] = set()
    while stack is not None and id(stack) not in seen:
        seen.add(id(stack))
        if (type(stack).__module__, type(stack).__name__) in _TRACING_MIDDLEWARES:
            return True
        stack = getattr(stack, "app", None)
    return False
