"""The WSGI app gunicorn serves in the load run: one server span per request (OpenTelemetry's WSGI
instrumentation is not involved; the span is the agent's own API, so the count is exact)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import logfire_run


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    with logfire_run.span("request", path=environ.get("PATH_INFO", "")):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
