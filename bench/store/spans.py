"""The span the store benchmarks make: an HTTP server span with the 15 attributes a Flask one carries."""

from __future__ import annotations

from opentelemetry import trace


def make_server_spans(tracer: trace.Tracer, count: int) -> None:
    for index in range(count):
        path = f"/items/{index}"
        with tracer.start_as_current_span(
            "GET /items/<int:item_id>",
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": "GET",
                "http.method": "GET",
                "url.scheme": "http",
                "http.scheme": "http",
                "server.address": "localhost",
                "server.port": 80,
                "network.protocol.version": "1.1",
                "url.path": path,
                "http.target": path,
                "client.address": "127.0.0.1",
                "client.port": 50_000 + index % 1000,
                "user_agent.original": "Werkzeug/3.1.3",
                "http.route": "/items/<int:item_id>",
                "http.response.status_code": 200,
                "http.status_code": 200,
            },
        ):
            pass
