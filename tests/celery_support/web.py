"""A Flask endpoint that enqueues a task: `python web.py PORT`. No tracing code."""

from __future__ import annotations

import logging
import sys

import celery_tasks
from flask import Flask, jsonify
from werkzeug.serving import make_server

app = Flask(__name__)


@app.get("/enqueue/<int:n>")
def enqueue(n: int):  # type: ignore[no-untyped-def]
    return jsonify(task_id=celery_tasks.parent.delay(n).id)


if __name__ == "__main__":
    # make_server rather than app.run, and werkzeug's logger quiet: no banner, no request log on stderr.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True).serve_forever()
