"""A Flask endpoint that enqueues RQ jobs: `python web.py PORT`. No tracing code."""

from __future__ import annotations

import logging
import os
import sys

import jobs
from flask import Flask, jsonify
from redis import Redis
from rq import Queue, Retry
from werkzeug.serving import make_server

app = Flask(__name__)
queue = Queue(os.environ["RQ_QUEUE"], connection=Redis.from_url(os.environ["REDIS_URL"]))


@app.get("/signup/<user>")
def signup(user: str):  # type: ignore[no-untyped-def]
    return jsonify(job_id=queue.enqueue(jobs.welcome, user).id)


@app.get("/fail")
def fail():  # type: ignore[no-untyped-def]
    return jsonify(job_id=queue.enqueue(jobs.fail, "card declined").id)


@app.get("/flaky/<key>")
def flaky(key: str):  # type: ignore[no-untyped-def]
    return jsonify(job_id=queue.enqueue(jobs.flaky, key, 2, retry=Retry(max=2)).id)


if __name__ == "__main__":
    # make_server rather than app.run, and werkzeug's logger quiet: no banner, no request log on stderr.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True).serve_forever()
