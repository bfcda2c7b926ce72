"""The store's per-trace index (schema 3), its upgrade from schema 2, retention settings, running spans."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from logfire_run.store_format import SCHEMA_VERSION

from conftest import LAUNCHER, VIEWER, agent_env, child_env, run_launcher, run_process

APP = """
import logging, logfire_run
from opentelemetry import trace
from opentelemetry.trace import SpanKind
tracer = trace.get_tracer("app")
route = {"http.route": "/items/{id}"}
with tracer.start_as_current_span("GET /items/{id}", kind=SpanKind.SERVER, attributes=route):
    with logfire_run.span("lookup"):
        logging.getLogger("app").warning("slow lookup")
try:
    with logfire_run.span("broken"):
        raise RuntimeError("boom")
except RuntimeError:
    pass
"""


def write_app(folder: Path, store: Path) -> None:
    (folder / "app.py").write_text(APP)
    result = run_launcher(
        ["--service-name", "api", "python", str(folder / "app.py")],
        agent_env(None, LOGFIRE_STORE=str(store)),
        expect_stderr="slow lookup\n",
    )
    assert result.returncode == 0


def listing(store: Path, *args: str) -> list[dict[str, object]]:
    output = run_process([VIEWER, "--store", str(store), "--json", *args], child_env()).stdout
    value = json.loads(output)
    assert isinstance(value, list)
    return value


def test_each_batch_indexes_its_traces(tmp_path: Path) -> None:
    store = tmp_path / "traces.db"
    write_app(tmp_path, store)
    connection = sqlite3.connect(store)
    parts = connection.execute(
        "SELECT trace_id, spans, errors, root_name, services, routes, first_row, last_row FROM trace_parts"
    ).fetchall()
    by_root = {part[3]: part for part in parts}
    assert set(by_root) == {"GET /items/{id}", "broken"}
    server = by_root["GET /items/{id}"]
    assert (
        server[1:3] == (2, 0)
        and json.loads(server[4]) == ["api"]
        and json.loads(server[5]) == ["/items/{id}"]
    )
    assert by_root["broken"][1:3] == (1, 1)
    # The row ranges hold exactly the trace's spans.
    first, last = server[6], server[7]
    ids = connection.execute("SELECT trace_id FROM spans WHERE id BETWEEN ? AND ?", (first, last)).fetchall()
    assert {row[0] for row in ids} == {server[0]} and len(ids) == 2
    ranges = connection.execute("SELECT trace_key, first_row, last_row FROM log_ranges").fetchall()
    assert len(ranges) == 1
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    connection.close()


def downgrade_to_schema_2(store: Path) -> None:
    connection = sqlite3.connect(store)
    for table in ("trace_parts", "log_ranges", "pending"):
        connection.execute(f"DROP TABLE {table}")
    connection.execute("PRAGMA user_version=2")
    connection.commit()
    connection.close()


@pytest.mark.slow
def test_an_older_store_is_read_as_it_is_and_indexed_by_the_next_writer(tmp_path: Path) -> None:
    store = tmp_path / "traces.db"
    write_app(tmp_path, store)
    downgrade_to_schema_2(store)
    # The viewer reads it, filters included, and changes nothing.
    assert {trace["root"] for trace in listing(store)} == {"GET /items/{id}", "broken"}
    assert [trace["root"] for trace in listing(store, "--errors")] == ["broken"]
    tree = run_process([VIEWER, "--store", str(store), "last"], child_env()).stdout
    assert "broken" in tree
    connection = sqlite3.connect(store)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == 2
    assert (
        connection.execute("SELECT count(*) FROM sqlite_master WHERE name = 'trace_parts'").fetchone()[0] == 0
    )
    connection.close()
    # The next writer upgrades it, and indexes the spans that were there.
    write_app(tmp_path, store)
    connection = sqlite3.connect(store)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert connection.execute("SELECT sum(spans) FROM trace_parts").fetchone()[0] == 6
    assert connection.execute("SELECT count(*) FROM log_ranges").fetchone()[0] == 2
    connection.close()
    assert len(listing(store)) == 4


MANY = """
import logfire_run
for index in range(3000):
    with logfire_run.span("work", index=index):
        pass
"""


@pytest.mark.slow
def test_retention_is_a_setting(tmp_path: Path) -> None:
    store = tmp_path / "traces.db"
    (tmp_path / "many.py").write_text(MANY)
    env = agent_env(
        None, LOGFIRE_STORE=str(store), LOGFIRE_STORE_MAX_SPANS="1000", OTEL_BSP_MAX_QUEUE_SIZE="4096"
    )
    assert run_launcher(["python", str(tmp_path / "many.py")], env).returncode == 0
    # Pruning runs when a process opens the store before its exit (at exit it writes its own rows and
    # nothing more, within the exit budget): the next one cuts it to the newest 1,000.
    flushing = "import logfire_run\nwith logfire_run.span('x'): pass\nlogfire_run.force_flush()"
    assert run_launcher(["python", "-c", flushing], env).returncode == 0
    connection = sqlite3.connect(store)
    count = connection.execute("SELECT count(*) FROM spans").fetchone()[0]
    oldest = connection.execute("SELECT min(id) FROM spans").fetchone()[0]
    stale = connection.execute("SELECT count(*) FROM trace_parts WHERE last_row < ?", (oldest,)).fetchone()[0]
    connection.close()
    assert 1000 <= count <= 1001 and stale == 0
    bad = run_launcher(
        ["python", "-c", "pass"],
        agent_env(None, LOGFIRE_STORE=str(store), LOGFIRE_STORE_MAX_SPANS="lots"),
        expect_stderr=lambda stderr: "LOGFIRE_STORE_MAX_SPANS" in stderr and "whole number" in stderr,
    )
    assert bad.returncode in (0, 2)


HANGING = """
import os, sys, time, logfire_run
with logfire_run.span("waiting"):
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.05)
"""


@pytest.mark.slow
def test_a_running_span_is_shown_until_it_ends(tmp_path: Path) -> None:
    store, release = tmp_path / "traces.db", tmp_path / "release"
    (tmp_path / "hang.py").write_text(HANGING)
    app = subprocess.Popen(
        [LAUNCHER, "python", str(tmp_path / "hang.py"), str(release)],
        env=child_env(LOGFIRE_STORE=str(store)),  # default settings
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        traces: list[dict[str, object]] = []
        while time.monotonic() < deadline and not traces:
            time.sleep(0.2)
            if store.exists():
                traces = listing(store)
        assert [(trace["root"], trace["running"]) for trace in traces] == [("waiting", 1)]
        tree = run_process([VIEWER, "--store", str(store), "last", "--plain"], child_env()).stdout
        assert tree.splitlines()[1].startswith("waiting  [hang] INTERNAL running "), tree
    finally:
        release.touch()
        _stdout, stderr = app.communicate(timeout=60)
    assert app.returncode == 0 and stderr == ""
    [trace] = listing(store)
    assert trace["running"] == 0 and trace["spans"] == 1
    assert "running" not in run_process([VIEWER, "--store", str(store), "last"], child_env()).stdout
