"""Service B: a FastAPI app at the end of the chain. It knows nothing about tracing.

    logfire-run uvicorn service_b:app --port 8002                 (from this folder)
    logfire-run uvicorn service_b:app --port 8002 --workers 2
    logfire-run python service_b.py                               (uvicorn.run, port from B_PORT)

`/greet` answers with the trace headers it received, so the caller can see that each of its requests
carried its own `traceparent`, and with the baggage the app sees through the OpenTelemetry API (what
reached the app after the `distributed_tracing` policy; empty without the agent). `/boom` raises, to
show that errors reach the client unchanged.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request

app = FastAPI()


@app.get("/greet")
async def greet(request: Request) -> dict[str, object]:
    return {
        "service": "b",
        "via": request.query_params.get("via"),
        "traceparent": request.headers.getlist("traceparent"),
        "tracestate": request.headers.getlist("tracestate"),
        "baggage": request.headers.getlist("baggage"),
        "baggage_seen": _baggage_seen(),
        "pid": os.getpid(),
    }


def _baggage_seen() -> dict[str, str]:
    try:
        from opentelemetry import baggage
    except ImportError:  # without OpenTelemetry installed there is no baggage to see
        return {}
    return {key: str(value) for key, value in baggage.get_all().items()}


@app.get("/boom")
async def boom() -> dict[str, object]:
    raise RuntimeError("service B failed on purpose")


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("B_PORT", "8002")), log_level="warning")
