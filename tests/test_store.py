"""The local trace store: the default exporter, concurrent writers, fork safety, failures, retention."""

from __future__ import annotations

import json
import re
import sqlite3
import stat
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from logfire_run.agent.export.store import StoreExporter

from conftest import (
    FORK_WARNINGS,
    LAUNCHER,
    VIEWER,
    agent_env,
    assert_clean_stderr,
    child_env,
    own_folders,
    run_launcher,
    run_process,
)


def store_env(store: Path, **extra: str) -> dict[str, str]:
    """A launched process with no exporter configured: the store is the default."""
    return agent_env(None, LOGFIRE_STORE=str(store), **extra)


ALL = "SELECT trace_id, span_id, parent_id, name, kind, service, pid FROM spans"


def rows(store: Path, query: str = ALL) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(store)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def test_store_is_the_default_exporter_and_keeps_the_tree(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent(
            """
            import os
            import logfire_run
            with logfire_run.span("outer", user_id=7):
                with logfire_run.span("inner"):
                    logfire_run.info("hello {who}", who="store")
            print(os.getpid())
            """
        )
    )
    store = tmp_path / "traces.db"
    result = run_launcher(["--service-name", "shop", "python", str(app)], store_env(store))
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.strip())
    found = {
        name: (trace, span, parent, kind, service, span_pid)
        for trace, span, parent, name, kind, service, span_pid in rows(store)
    }
    assert set(found) == {"outer", "inner", "hello {who}"}
    assert len({value[0] for value in found.values()}) == 1, "one trace"
    assert found["outer"][2] is None
    assert found["inner"][2] == found["outer"][1]
    assert found["hello {who}"][2] == found["inner"][1]
    assert {value[4] for value in found.values()} == {"shop"}
    assert {value[5] for value in found.values()} == {pid}
    (attributes,) = rows(store, "SELECT attributes FROM spans WHERE name = 'outer'")[0]
    assert '"user_id":7' in attributes
    with sqlite3.connect(store) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.slow
def test_service_name_changed_by_configure_reaches_the_store(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent(
            """
            import logfire_run
            with logfire_run.span("first"):
                pass
            logfire_run.force_flush()
            logfire_run.configure(service_name="renamed")
            with logfire_run.span("second"):
                pass
            """
        )
    )
    store = tmp_path / "traces.db"
    result = run_launcher(["--service-name", "original", "python", str(app)], store_env(store))
    assert result.returncode == 0, result.stderr
    assert sorted(rows(store, "SELECT name, service FROM spans")) == [
        ("first", "original"),
        ("second", "renamed"),
    ]


def test_without_a_store_setting_spans_go_to_xdg_data_home_and_the_viewer_finds_them(tmp_path: Path) -> None:
    code = "import logfire_run\nwith logfire_run.span('to the default store'):\n    pass\n"
    result = run_launcher(["python", "-c", code], agent_env(None))
    assert result.returncode == 0, result.stderr
    store = own_folders().data / "logfire-run" / "traces.db"
    assert rows(store, "SELECT name FROM spans") == [("to the default store",)]
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    listing = run_process([VIEWER, "--json"], child_env())
    assert [trace["root"] for trace in json.loads(listing.stdout)] == ["to the default store"]


def test_what_the_agent_writes_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    # The design's promise: the files the agent writes are readable by their owner only.
    store = tmp_path / "shared" / "traces.db"
    store.parent.mkdir()
    code = "import logfire_run\nlogfire_run.info('private')\n"
    result = run_launcher(["--store", str(store), "python", "-c", code], agent_env(None))
    assert result.returncode == 0, result.stderr
    assert rows(store, "SELECT name FROM spans") == [("private",)]
    written = [store, *own_folders().cache.rglob("*")]
    assert {str(path): stat.S_IMODE(path.stat().st_mode) & 0o077 for path in written} == {
        str(path): 0 for path in written
    }


WRITER = """
import sys
import logfire_run
for index in range(int(sys.argv[1])):
    with logfire_run.span("work", index=index):
        pass
"""


@pytest.mark.slow
def test_eight_processes_writing_at_once_lose_no_span(tmp_path: Path) -> None:
    app = tmp_path / "writer.py"
    app.write_text(WRITER)
    store = tmp_path / "traces.db"
    # The batch queue is sized to hold a whole run, and the exit budget to write what is left of it
    # whatever the machine's load: what is measured here is the store, not the processor's
    # (documented) dropping of spans when its bounded queue overflows, nor the exit budget.
    env = store_env(
        store, OTEL_BSP_MAX_QUEUE_SIZE="6000", OTEL_BSP_SCHEDULE_DELAY="50", LOGFIRE_EXIT_BUDGET="60"
    )
    processes = [
        subprocess.Popen(
            [LAUNCHER, "python", str(app), "5000"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    try:
        outputs = [process.communicate(timeout=240) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    for process, (_stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
        assert_clean_stderr(stderr)
    per_process = rows(store, "SELECT pid, count(*), count(DISTINCT span_id) FROM spans GROUP BY pid")
    assert sorted(per_process) == sorted((process.pid, 5000, 5000) for process in processes)
    assert rows(store, "SELECT count(DISTINCT span_id) FROM spans") == [(40_000,)]
    assert rows(store, "PRAGMA integrity_check") == [("ok",)]


def test_forked_child_writes_through_its_own_connection(tmp_path: Path) -> None:
    app = tmp_path / "forker.py"
    app.write_text(
        textwrap.dedent(
            """
            import os
            import logfire_run
            with logfire_run.span("before fork"):
                pass
            logfire_run.force_flush()        # the parent's connection is open when it forks
            children = []
            for number in range(3):
                pid = os.fork()
                if pid == 0:
                    with logfire_run.span("in child", number=number):
                        pass
                    os._exit(0)              # skips atexit: the agent flushes forked children itself
                children.append(pid)
            for pid in children:
                os.waitpid(pid, 0)
            with logfire_run.span("after fork"):
                pass
            print(os.getpid(), *children)
            """
        )
    )
    store = tmp_path / "traces.db"
    # Python's fork warning on 3.12+ (the agent's exporting thread is running): see
    # test_sdk.py::test_an_app_that_forks_gets_no_warning_it_would_not_get_without_the_agent.
    result = run_launcher(["python", str(app)], store_env(store), expect_stderr=FORK_WARNINGS)
    assert result.returncode == 0, result.stderr
    parent, *children = map(int, result.stdout.split())
    found = sorted((name, pid) for _t, _s, _p, name, _k, _svc, pid in rows(store))
    assert found == sorted(
        [("before fork", parent), ("after fork", parent)] + [("in child", child) for child in children]
    )
    assert rows(store, "PRAGMA integrity_check") == [("ok",)]


UNOPENABLE_APP = """
import logfire_run
for batch in range(3):
    with logfire_run.span("work", batch=batch):
        pass
    logfire_run.force_flush()
print("app finished")
"""


@pytest.mark.parametrize(
    "where",
    ["a directory", *(pytest.param(where, marks=pytest.mark.slow) for where in ("under a file", "in /proc"))],
)
def test_a_store_that_cannot_be_opened_is_reported_once_and_the_app_runs_on(
    tmp_path: Path, where: str
) -> None:
    app = tmp_path / "app.py"
    app.write_text(UNOPENABLE_APP)
    if where == "under a file":
        (tmp_path / "plain-file").write_text("")
        store = str(tmp_path / "plain-file" / "traces.db")
    elif where == "a directory":
        (tmp_path / "dir.db").mkdir()
        store = str(tmp_path / "dir.db")
    else:
        store = "/proc/self/traces.db"  # not writable, even for root
    result = run_launcher(
        ["python", str(app)],
        agent_env(None, LOGFIRE_STORE=store),
        # Reported once, in one line, for three batches.
        expect_stderr=re.compile(
            re.escape(f"logfire-run: the trace store {store} cannot be opened (")
            + r"[^\n]*the app runs on[^\n]*\n"
        ),
    )
    assert result.returncode == 0
    assert result.stdout == "app finished\n"


def _provider(exporter: StoreExporter) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "retention"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_retention_keeps_the_newest_spans(tmp_path: Path) -> None:
    store = tmp_path / "traces.db"
    exporter = StoreExporter(str(store), max_spans=100, prune_every=50)
    tracer = _provider(exporter).get_tracer("test")
    for index in range(1000):
        with tracer.start_as_current_span(f"span {index}"):
            pass
    exporter.shutdown()
    names = [name for (name,) in rows(store, "SELECT name FROM spans ORDER BY id")]
    assert 100 <= len(names) < 150, len(names)
    assert names[-1] == "span 999"
    assert names == [f"span {index}" for index in range(1000 - len(names), 1000)]


@pytest.mark.slow
def test_retention_drops_spans_written_before_the_age_cap(tmp_path: Path) -> None:
    store = tmp_path / "traces.db"
    exporter = StoreExporter(str(store), max_age_seconds=1, prune_every=10)
    tracer = _provider(exporter).get_tracer("test")
    for index in range(5):
        tracer.start_span(f"old {index}").end()
    # The age cap counts from when a batch was written: wait until the last old one is past it.
    ((written_ns,),) = rows(store, "SELECT max(written_ns) FROM batches")
    while time.time_ns() <= written_ns + 1_000_000_000:
        time.sleep(0.05)
    for index in range(10):
        tracer.start_span(f"new {index}").end()
    exporter.shutdown()
    names = sorted(name for (name,) in rows(store, "SELECT name FROM spans"))
    assert names == sorted(f"new {index}" for index in range(10))


MODES_APP = """
import json, os, stat, sys
import logfire_run
with logfire_run.span("private"):
    pass
logfire_run.force_flush()
# While the agent's connection is open, the WAL and shared-memory files exist beside the store.
store = os.environ["LOGFIRE_STORE"]
paths = [store, store + "-wal", store + "-shm", *json.loads(sys.argv[1])]
print(json.dumps({path: oct(stat.S_IMODE(os.stat(path).st_mode)) for path in paths}))
"""


def test_store_files_and_folders_are_private_even_under_umask_000(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(MODES_APP)
    store = tmp_path / "new" / "deeper" / "traces.db"
    cache = tmp_path / "cache-home" / "nested"
    folders = [tmp_path / "new", tmp_path / "new" / "deeper", cache, cache / "logfire-run"]
    env = agent_env(None, LOGFIRE_STORE=str(store), XDG_CACHE_HOME=str(cache))
    result = subprocess.run(
        [LAUNCHER, "python", str(tmp_path / "app.py"), json.dumps([str(folder) for folder in folders])],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        umask=0,
    )
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    modes = json.loads(result.stdout)
    assert modes == {
        str(store): "0o600",
        f"{store}-wal": "0o600",
        f"{store}-shm": "0o600",
        **{str(folder): "0o700" for folder in folders},
    }
    cached = list((cache / "logfire-run").iterdir())
    assert cached and all(oct(path.stat().st_mode & 0o777) == "0o600" for path in cached)


@pytest.mark.parametrize(
    "value",
    [
        {"http.route": "/items/<id>", "http.status_code": 200, "ok": True, "ratio": 0.25},
        {"unicode": "日本語 ✓ \u2028 \x00 \ud7ff", "quote": '"\\', "empty": "", "tuple": ()},
        {"huge": "x" * 1_000_000, "many": tuple(range(10_000))},
        {"nan": float("nan"), "inf": float("-inf"), "big": 2**80, "floats": (1e300, -0.0)},
        [{"name": "exception", "time_ns": 1, "attributes": None}, {"name": "e", "attributes": {"a": ("b",)}}],
        {"unknown type": object(), "bytes": b"raw"},
    ],
)
def test_store_json_is_what_the_standard_encoder_writes(value: Any) -> None:
    # The store builds json's C encoder once (not once per row): its text must stay the same.
    import platform

    from logfire_run.agent.export import store

    if platform.python_implementation() == "CPython":
        assert store._encode is not store._python_encode  # the C encoder is in use, not the fallback
    assert store._encode(value) == store._python_encode(value)
    if not isinstance(value, list) and "unknown type" not in value:
        assert json.loads(store._encode(value)).keys() == value.keys()
