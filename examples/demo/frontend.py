"""The demo's Flask service: `GET /checkout` calls the backend directly, then from a thread pool, and
sends a Celery task when a broker is configured (DEMO_BROKER_URL). No tracing code: logfire-run
instruments Flask, requests, the thread pool and Celery."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import requests
from flask import Flask, jsonify

BACKEND = os.environ["DEMO_BACKEND_URL"]
app = Flask(__name__)
pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stock")


def stock(item: str) -> int:
    return int(requests.get(f"{BACKEND}/stock/{item}", timeout=30).json()["stock"])


@app.get("/checkout")
def checkout() -> object:
    items = ["book", "pen"]
    price = requests.get(f"{BACKEND}/price/{items[0]}", timeout=30).json()["price"]
    stocks = list(pool.map(stock, items))
    receipt = None
    if os.environ.get("DEMO_BROKER_URL"):
        from tasks import send_receipt

        receipt = send_receipt.delay(items[0], price).get(timeout=60)
    return jsonify(items=items, price=price, stock=stocks, receipt=receipt)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
