"""The "instrumentors only" variant of bench/http/run.py: the floor under any agent built on them.

OpenTelemetry's SDK with no span processor (spans are made, then dropped) and its Flask and requests
instrumentors, with nothing else: no distro, no exporter, no propagator but the API's default. What
an agent that runs these instrumentors costs per request can go below this only by doing less than
they do (found first on PYTHONPATH, as a sitecustomize, by the benchmark's plain Python).
"""

from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())
FlaskInstrumentor().instrument()
RequestsInstrumentor().instrument()
