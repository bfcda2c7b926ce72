"""The demo's FastAPI service: `GET /price/{item}` computes in a process pool, `GET /stock/{item}`
answers at once. Run with `uvicorn backend:app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

import logfire_run

pool: ProcessPoolExecutor | None = None


def compute_price(item: str) -> float:
    # A span of our own, in the pool's worker process: it joins the request's trace once the
    # process-pool context propagation is in place.
    with logfire_run.span("compute price", item=item):
        return round(sum(ord(char) for char in item) / 10, 2)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = ProcessPoolExecutor(max_workers=1)
    try:
        yield
    finally:
        pool.shutdown(wait=True)


app = FastAPI(lifespan=lifespan)


@app.get("/price/{item}")
def price(item: str) -> dict[str, object]:
    assert pool is not None
    return {"item": item, "price": pool.submit(compute_price, item).result(timeout=60)}


@app.get("/stock/{item}")
def stock(item: str) -> dict[str, object]:
    return {"item": item, "stock": len(item) * 3}
