"""CPU of one metric collection and its export, under whichever agent runs this script.

    python collect_cost.py COLLECTIONS     prints one JSON line

A Flask app answers 2,000 requests over 50 routes, half of them errors (100 series of the server
duration histogram, with the active-requests counter and the runtime metrics the agent adds), then
the global meter provider is flushed COLLECTIONS times: each flush is one collection of every
instrument and one export, both in the calling thread under either agent, whose CPU time is read
with `time.thread_time()`. Cumulative temporality (both agents' default): every collection exports
every series.
"""

from __future__ import annotations

import json
import sys
import time

from flask import Flask, request
from opentelemetry import metrics

app = Flask(__name__)


def answer() -> tuple[str, int]:
    return "ok", int(request.args["status"])


for number in range(50):  # 50 routes of their own: one series per route and status
    app.add_url_rule(f"/route{number}", f"route{number}", answer)


def main() -> None:
    collections = int(sys.argv[1])
    client = app.test_client()
    for index in range(2000):
        client.get(f"/route{index % 50}?status={500 if index % 2 else 200}").close()
    provider = metrics.get_meter_provider()
    flush = getattr(provider, "force_flush", None)
    if not callable(flush):  # plain Python: nothing to collect
        print(json.dumps({"cpu_per_collection_us": 0.0, "n": collections}))
        return
    flush()  # the first collection creates every series' storage and connection: not measured
    start = time.thread_time()
    for _ in range(collections):
        flush()
    cpu = time.thread_time() - start
    print(json.dumps({"cpu_per_collection_us": cpu / collections * 1e6, "n": collections}))


if __name__ == "__main__":
    main()
