"""The span both store benchmarks make: a small HTTP server span, as a web service would export."""

from __future__ import annotations

from opentelemetry import trace


def make_server_spans(tracer: trace.Tracer, count: int) -> None:
    for index in range(count):
        with tracer.start_as_current_span(
            "GET /items/{item_id}",
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": "GET",
                "http.route": "/items/{item_id}",
                "url.path": f"/items/{index}",
                "http.response.status_code": 200,
            },
        ):
            pass
