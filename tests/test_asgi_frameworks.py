"""FastAPI and Starlette: apps that trace themselves keep their own spans; the others get one SERVER span
per request; an attribute collection that fails leaves the request untraced.

Each app is served by a real uvicorn on 127.0.0.1 inside a real interpreter started through the
launcher (urllib asks it), and the spans are read back from the store with their instrumentation scope:
`fastapi` (FastAPI's own telemetry), `starlette` (Starlette's `OpenTelemetryMiddleware`), or
`opentelemetry.instrumentation.starlette` (the agent's `starlette` instrumentor).
"""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from pathlib import Path

import pytest

from conftest import agent_env, child_env, run_launcher, run_process

SERVE = """
import sys
import threading
import time
import urllib.request

import uvicorn


def serve(app, *paths):
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    for path in paths:
        print(path, urllib.request.urlopen(f"http://127.0.0.1:{port}{path}").read().decode())
    server.should_exit = True
    thread.join()
"""

FASTAPI_APP = (
    SERVE
    + """
import fastapi

app = fastapi.FastAPI(**({"telemetry": {"tracing": False}} if "off" in sys.argv else {}))


@app.get("/items/{item}")
def item(item: str):
    return {"item": item}


serve(app, "/items/1", "/items/2")
"""
)

STARLETTE_APP = (
    SERVE
    + """
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def hello(request):
    return PlainTextResponse("hello " + request.path_params["name"])


middleware = []
if "native" in sys.argv:
    from starlette.middleware.opentelemetry import OpenTelemetryMiddleware

    middleware.append(Middleware(OpenTelemetryMiddleware))
serve(Starlette(routes=[Route("/hello/{name}", hello)], middleware=middleware), "/hello/a", "/hello/b")
"""
)

has_fastapi_telemetry = importlib.util.find_spec("fastapi.telemetry") is not None
has_starlette_telemetry = importlib.util.find_spec("starlette.middleware.opentelemetry") is not None


def _run(tmp_path: Path, source: str, *args: str) -> list[tuple[str, str, str]]:
    """Run the app plain and under the launcher (same output); (name, kind, scope) of each span."""
    app = tmp_path / "app.py"
    app.write_text(source)
    plain = run_process([sys.executable, str(app), *args], child_env())
    store = tmp_path / "traces.db"
    traced = run_launcher(
        ["python", str(app), *args], agent_env(LOGFIRE_STORE=str(store), LOGFIRE_DISTRIBUTED_TRACING="true")
    )
    assert (traced.returncode, traced.stdout) == (0, plain.stdout)
    with sqlite3.connect(store) as connection:
        return list(connection.execute("SELECT name, kind, scope FROM spans ORDER BY start_ns"))


def _servers(spans: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    return [(name, scope) for name, kind, scope in spans if kind == "SERVER"]


@pytest.mark.slow
@pytest.mark.skipif(not has_fastapi_telemetry, reason="this FastAPI has no telemetry of its own")
def test_fastapi_keeps_its_own_telemetry(tmp_path: Path) -> None:
    spans = _run(tmp_path, FASTAPI_APP)
    # FastAPI's own spans, one SERVER span per request; none from OpenTelemetry's ASGI middleware,
    # whose presence would have switched FastAPI's off.
    assert _servers(spans) == [("GET /items/{item}", "fastapi")] * 2, spans
    assert not [
        span
        for span in spans
        if span[2].startswith(("opentelemetry.instrumentation.asgi", "opentelemetry.instrumentation.fastapi"))
    ], spans


@pytest.mark.slow
@pytest.mark.skipif(not has_fastapi_telemetry, reason="this FastAPI has no telemetry of its own")
def test_fastapi_telemetry_switched_off_by_the_app_stays_off(tmp_path: Path) -> None:
    spans = _run(tmp_path, FASTAPI_APP, "off")
    assert _servers(spans) == [], spans
    assert [kind for _, kind, _ in spans] == ["CLIENT", "CLIENT"], spans  # urllib's, in the same process


@pytest.mark.slow
@pytest.mark.skipif(not has_starlette_telemetry, reason="this Starlette has no OpenTelemetryMiddleware")
def test_starlette_with_its_own_middleware_keeps_its_spans(tmp_path: Path) -> None:
    spans = _run(tmp_path, STARLETTE_APP, "native")
    assert _servers(spans) == [("GET /hello/{name}", "starlette")] * 2, spans
    assert [kind for _, kind, _ in spans].count("INTERNAL") == 0, spans


@pytest.mark.slow
def test_a_starlette_app_is_one_server_span_per_request(tmp_path: Path) -> None:
    spans = _run(tmp_path, STARLETTE_APP)
    assert _servers(spans) == [("GET /hello/{name}", "opentelemetry.instrumentation.starlette")] * 2, spans
    # No per-message `http send` / `http receive` spans.
    assert [kind for _, kind, _ in spans].count("INTERNAL") == 0, spans


# An ASGI server hands the query string over as bytes; OpenTelemetry's collection decoded them as
# UTF-8 and raised out of the app for any other bytes.
RAW_QUERY_APP = """
import asyncio

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def echo(request):
    return PlainTextResponse(ascii(request.url.query))


app = Starlette(routes=[Route("/echo", echo)])


async def ask(query):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/echo", "raw_path": b"/echo", "query_string": query,
             "root_path": "", "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    try:
        await app(scope, receive, send)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return f"{sent[0]['status']} {sent[1]['body'].decode()}"


for query in (b"q=1", b"q=\\xff"):
    print(query, asyncio.run(ask(query)))
"""


@pytest.mark.slow
def test_an_asgi_request_whose_attributes_fail_is_answered_untraced(tmp_path: Path) -> None:
    spans = _run(tmp_path, RAW_QUERY_APP)
    assert _servers(spans) == [("GET /echo", "opentelemetry.instrumentation.starlette")], spans
