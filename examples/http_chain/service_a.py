"""Service A: a Flask app that calls service B twice, once with httpx and once with httpx.AsyncClient.

    logfire-run python service_a.py                                         (werkzeug, port A_PORT)
    logfire-run gunicorn -w 2 -b 127.0.0.1:8001 service_a:app               (from this folder)

B is found at B_URL (default http://127.0.0.1:8002). `/boom` raises, to show that the 500 a client gets
is the same with and without the agent.
"""

from __future__ import annotations

import asyncio
import logging
import os

import httpx
from flask import Flask

B_URL = os.environ.get("B_URL", "http://127.0.0.1:8002")

app = Flask(__name__)


async def _greet_async() -> object:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{B_URL}/greet", params={"via": "httpx.AsyncClient"})
        return response.json()


@app.get("/chain")
def chain() -> dict[str, object]:
    with httpx.Client(timeout=10) as client:
        sync_answer = client.get(f"{B_URL}/greet", params={"via": "httpx.Client"}).json()
    async_answer = asyncio.run(_greet_async())
    return {"service": "a", "pid": os.getpid(), "answers": [sync_answer, async_answer]}


@app.get("/health")
def health() -> dict[str, object]:
    return {"service": "a", "pid": os.getpid()}


@app.get("/boom")
def boom() -> dict[str, object]:
    raise RuntimeError("service A failed on purpose")


if __name__ == "__main__":
    # Keep werkzeug's banner and request log off stderr: this example's output is the trace.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app.run(host="127.0.0.1", port=int(os.environ.get("A_PORT", "8001")), threaded=True)
