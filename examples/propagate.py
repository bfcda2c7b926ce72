"""Manual propagation: a parent span, its context as a plain dict, and a child attached from it.

    logfire-run --exporter console python examples/propagate.py

The carrier could travel anywhere (a queue message, a file, an environment variable); here it goes
through JSON to show that it is plain data.
"""

import json

import logfire_run
from logfire_run.propagate import attach_context, get_context

with logfire_run.span("send report", report_id=7):
    carrier = json.dumps(get_context())

# ... somewhere else, later, possibly in another process:
with attach_context(json.loads(carrier)):
    logfire_run.info("report received", report_id=7)
