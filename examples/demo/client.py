"""The demo's client: one request to the frontend inside a span; prints the trace id it started."""

from __future__ import annotations

import os

import requests
from opentelemetry import trace

import logfire_run

with logfire_run.span("demo client") as span:
    response = requests.get(f"{os.environ['DEMO_FRONTEND_URL']}/checkout", timeout=120)
    response.raise_for_status()
    print(f"client: {response.json()}")
    trace_id = trace.get_current_span().get_span_context().trace_id
print(f"trace_id={trace_id:032x}")
