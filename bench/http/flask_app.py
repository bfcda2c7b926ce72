"""Per-request cost of a Flask handler, through Flask's test client (the full WSGI stack, no sockets).

    python flask_app.py N        prints one JSON line (see measure.py)

Run by bench/http/run.py plainly, under `logfire-run` and under `opentelemetry-instrument`.
"""

from __future__ import annotations

import sys

from flask import Flask
from measure import timed

app = Flask(__name__)


@app.get("/hello/<name>")
def hello(name: str) -> dict[str, str]:
    return {"hello": name}


def main() -> None:
    count = int(sys.argv[1])
    client = app.test_client()
    for _ in range(200):  # warm-up: first-request setup, caches, lazy imports
        client.get("/hello/warm")

    def request() -> None:
        client.get("/hello/bench", headers={"traceparent": TRACEPARENT}).close()

    timed(count, request)


# Every request carries inbound context, so the extraction path (and our policy) is exercised.
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

if __name__ == "__main__":
    main()
