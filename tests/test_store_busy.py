"""The default store keeps every span of a busy process (default batching settings), and big batches whole."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from logfire_run.agent.export.store import StoreExporter
from logfire_run.store_format import insert_batch, open_store

from conftest import agent_env, assert_clean_stderr, run_launcher

REQUESTS = 6_000

BUSY_FLASK_APP = textwrap.dedent(
    """
    import sys
    from flask import Flask

    app = Flask(__name__)

    @app.get("/items/<int:item_id>")
    def item(item_id):
        return {"item": item_id}

    client = app.test_client()
    for index in range(int(sys.argv[1])):
        client.get(f"/items/{index}").close()
    """
)


@pytest.mark.slow
def test_busy_flask_process_keeps_every_span_in_the_default_store(tmp_path: Path) -> None:
    app = tmp_path / "busy.py"
    app.write_text(BUSY_FLASK_APP)
    store = tmp_path / "traces.db"
    env = agent_env(None, LOGFIRE_STORE=str(store))
    # OpenTelemetry's defaults throughout: a 2,048-span queue, 512-span batches, a 5 s delay.
    env.pop("OTEL_BSP_SCHEDULE_DELAY")
    result = run_launcher(["python", str(app), str(REQUESTS)], env, timeout=300)
    assert result.returncode == 0, result.stderr
    connection = sqlite3.connect(store)
    try:
        ((kept,),) = connection.execute("SELECT count(*) FROM spans WHERE kind = 'SERVER'").fetchall()
        ((total,),) = connection.execute("SELECT count(*) FROM spans").fetchall()
    finally:
        connection.close()
    assert (kept, total) == (REQUESTS, REQUESTS), result.stderr
    assert_clean_stderr(result.stderr)


def test_a_batch_larger_than_one_statement_holds_is_written_whole_and_in_order(tmp_path: Path) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "big-batch"}))
    keep = Keep()
    provider.add_span_processor(keep)
    tracer = provider.get_tracer("test")
    for index in range(3_000):
        with tracer.start_as_current_span(f"span {index}", attributes={"index": index, "text": "é" * 3}):
            pass
    exporter = StoreExporter(str(tmp_path / "traces.db"))
    assert exporter.export(keep.spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    connection = sqlite3.connect(tmp_path / "traces.db")
    try:
        names = [name for (name,) in connection.execute("SELECT name FROM spans ORDER BY id")]
        ((batches,),) = connection.execute("SELECT count(*) FROM batches").fetchall()
    finally:
        connection.close()
    assert names == [f"span {index}" for index in range(3_000)]
    assert batches == 1


def test_a_connection_with_a_low_variable_limit_still_takes_the_whole_batch(tmp_path: Path) -> None:
    limit = getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", None)
    connection = open_store(str(tmp_path / "traces.db"))
    if limit is None or not hasattr(connection, "setlimit"):
        connection.close()
        pytest.skip("Connection.setlimit needs Python 3.11")
    try:
        connection.setlimit(limit, 100)  # six rows of sixteen columns per statement
        rows = [
            (0, f"{n:032x}", f"{n:016x}", None, f"row {n}", "INTERNAL", "svc", n, n, "UNSET", *[None] * 5, 1)
            for n in range(50)
        ]
        insert_batch(connection, rows)
        names = [name for (name,) in connection.execute("SELECT name FROM spans ORDER BY id")]
    finally:
        connection.close()
    assert names == [f"row {n}" for n in range(50)]


def test_batches_of_every_size_prepare_a_bounded_number_of_statements(tmp_path: Path) -> None:
    # Python's sqlite3 keeps each statement it prepared (128 per connection); an INSERT of N rows is a
    # statement of its own, up to 8,192 bound values: one per batch size grew a writer by ~100 MB
    # (bench/store/memory.py). Every batch size from 1 to 512 must reuse a few statements.
    connection = open_store(str(tmp_path / "traces.db"))
    statements: set[str] = set()
    connection.set_trace_callback(
        lambda sql: statements.add(sql.split(" VALUES ")[0] + str(sql.count("),(")))
    )
    try:
        for size in range(1, 513):
            rows = [
                (
                    0,
                    f"{n:032x}",
                    f"{n:016x}",
                    None,
                    f"row {n}",
                    "INTERNAL",
                    "svc",
                    n,
                    n,
                    "UNSET",
                    *[None] * 5,
                    1,
                )
                for n in range(size)
            ]
            insert_batch(connection, rows)
        ((count,),) = connection.execute("SELECT count(*) FROM spans").fetchall()
    finally:
        connection.close()
    assert count == 512 * 513 // 2
    inserts = {statement for statement in statements if statement.startswith("INSERT INTO spans")}
    assert len(inserts) <= 12, len(inserts)


class Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)
