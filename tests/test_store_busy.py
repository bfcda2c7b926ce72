"""The default store keeps every span of a busy process, with the default batching settings."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

import pytest

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
