"""The two servers of bench/http/header_cost.py: a Flask app driven in-process, and a FastAPI app for uvicorn.

    python header_app.py N CASE      N requests through Flask's test client, each with the headers of
                                     CASE; prints one JSON line: {"cpu_per_op_us": ..., "n": N}
    uvicorn header_app:asgi ...      the FastAPI app, for requests sent over a socket

CASE names a set of inbound headers (`HEADERS` below). The handlers do nothing, so what a request
costs is the server's, the instrumentation's and the agent's work on the request and its headers.
"""

from __future__ import annotations

import json
import sys
import time

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MB = 1_000_000


def headers(case: str, size: int) -> dict[str, str]:
    """The inbound headers of CASE, the hostile one `size` bytes long."""
    if case == "none":
        return {}
    if case == "traceparent":
        return {"traceparent": TRACEPARENT}
    if case == "tracestate-commas":
        return {"traceparent": TRACEPARENT, "tracestate": "," * size}
    if case == "tracestate-members":
        # Valid-looking members, many times over the 32 allowed: every one of them looks worth reading.
        return {"traceparent": TRACEPARENT, "tracestate": ("a=1," * (size // 4 + 1))[:size]}
    if case == "baggage-commas":
        return {"traceparent": TRACEPARENT, "baggage": "," * size}
    if case == "baggage-members":
        return {"traceparent": TRACEPARENT, "baggage": ("k=v," * (size // 4 + 1))[:size]}
    if case == "traceparent-huge":
        return {"traceparent": TRACEPARENT + "-" + "x" * size}
    raise SystemExit(f"unknown case {case}")


CASES = (
    "none",
    "traceparent",
    "tracestate-commas",
    "tracestate-members",
    "baggage-commas",
    "baggage-members",
    "traceparent-huge",
)


def _flask(count: int, case: str, size: int) -> None:
    from flask import Flask

    app = Flask(__name__)

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    client = app.test_client()
    sent = headers(case, size)
    for _ in range(20):  # warm-up: first-request setup, caches, lazy imports, the one policy warning
        client.get("/hello", headers=sent).close()
    cpu_start = time.process_time()
    for _ in range(count):
        client.get("/hello", headers=sent).close()
    cpu = time.process_time() - cpu_start
    print(json.dumps({"cpu_per_op_us": cpu / count * 1e6, "n": count}))


def _asgi() -> object:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    application = FastAPI()

    @application.get("/hello", response_class=PlainTextResponse)
    def hello() -> str:
        return "hello"

    return application


def __getattr__(name: str) -> object:
    # `uvicorn header_app:asgi` builds the FastAPI app; importing `headers` from here does not.
    if name == "asgi":
        globals()["asgi"] = application = _asgi()
        return application
    raise AttributeError(name)


if __name__ == "__main__":
    _flask(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else MB)
