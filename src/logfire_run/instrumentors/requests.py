"""requests: OpenTelemetry's instrumentor, with requests' own errors for a request that is not prepared.

What it patches:
    `requests.Session.send`, on top of OpenTelemetry's wrapper (opentelemetry-instrumentation-
    requests replaces it with `instrumented_send`). OpenTelemetry's wrapper reads `request.method`
    and calls `.strip()` on it before requests has checked its argument, so `Session().send(Request(
    ...))`, which requests answers with `ValueError: You can only send PreparedRequests.`, raised
    `AttributeError: 'NoneType' object has no attribute 'strip'` from the instrumentation instead.
    A `send` of anything but a `PreparedRequest` goes straight to requests' own `send` (untraced:
    nothing is sent), so the app sees requests' own exception.

When it is enabled:
    When the app first imports `requests`, for the versions OpenTelemetry's instrumentor supports. It
    supersedes that instrumentor under the same entry-point name, so `--disable requests` turns both off.

How it refuses:
    Without opentelemetry-instrumentation-requests, or with a requests it does not support, it does
    nothing (one `--debug` line). A release of OpenTelemetry's wrapper that no longer exposes requests'
    own `send` as `__wrapped__` is run as it is (one `--debug` line).

Where it stops:
    Everything else is OpenTelemetry's: span names, attributes, excluded URLs
    (`OTEL_PYTHON_REQUESTS_EXCLUDED_URLS`), hooks.
"""

from __future__ import annotations

from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.instrumentors._base import (
    PatchingInstrumentor,
    run_opentelemetry_instrumentor,
    stop_opentelemetry_instrumentor,
)

__all__ = ["RequestsInstrumentor"]

_OTEL_INSTRUMENTOR = "opentelemetry.instrumentation.requests:RequestsInstrumentor"


class RequestsInstrumentor(PatchingInstrumentor):
    """Runs OpenTelemetry's requests instrumentor; an unprepared request gets requests' own error."""

    targets = ("requests",)
    supported = ("requests ~= 2.0",)
    options: ClassVar[dict[str, Any]] = {}
    supersedes = (_OTEL_INSTRUMENTOR,)

    patches_name = "requests"

    def _instrument(self, **kwargs: Any) -> None:
        self._otel = run_opentelemetry_instrumentor(_OTEL_INSTRUMENTOR, **kwargs)
        if self._otel is None:
            return
        import requests

        requests_send = getattr(requests.Session.send, "__wrapped__", None)
        if not callable(requests_send):
            report.debug("requests: OpenTelemetry's Session.send has no __wrapped__; run as it is")
            return
        prepared_request = requests.PreparedRequest

        def send_prepared_traced(wrapped: Any, session: Any, args: Any, kwargs: Any) -> Any:
            request = args[0] if args else kwargs.get("request")
            if not isinstance(request, prepared_request):
                # requests checks its argument and raises its own error; nothing reaches the wire.
                return requests_send(session, *args, **kwargs)
            return wrapped(*args, **kwargs)

        self._patches.wrap(requests.Session, "send", send_prepared_traced)

    def _uninstrument(self, **kwargs: Any) -> None:
        self._patches.restore()
        stop_opentelemetry_instrumentor(self._otel)
        self._otel = None
