"""Programs whose only instrumented library is in the standard library get their spans.

The first import of `urllib.request` or `sqlite3` (with OpenTelemetry's instrumentors installed)
starts the SDK, as a third-party library's does; the modules nearly every program imports
(threading, logging, asyncio, subprocess) do not, so a program that never makes a span still loads
no SDK. The trace store, itself SQLite, never traces its own queries.
"""

from __future__ import annotations

import sqlite3
import sys
import textwrap
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    DEBUG_LINES,
    OtlpReceiver,
    agent_env,
    render_tree,
    run_launcher,
    run_process,
    serve_in_thread,
)


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def run_app(
    tmp_path: Path, script: Path, env: dict[str, str], via: str, *flags: str, expect_stderr: Any = ""
) -> str:
    if via == "launcher":
        result = run_launcher([*flags, "python", str(script)], env, cwd=tmp_path, expect_stderr=expect_stderr)
    else:
        result = run_process(
            [sys.executable, str(script)],
            {**env, "LOGFIRE_RUN": "1"},
            cwd=tmp_path,
            expect_stderr=expect_stderr,
        )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def http_server() -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 that answers every GET with a small JSON body."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    serve_in_thread(server)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


URLLIB_APP = """
    import os
    import urllib.request

    with urllib.request.urlopen(os.environ["SERVER_URL"] + "/items?page=2", timeout=10) as response:
        print(response.status, response.read().decode())
"""


@pytest.mark.parametrize("via", ["launcher", pytest.param("LOGFIRE_RUN=1", marks=pytest.mark.slow)])
def test_a_urllib_request_script_gets_its_client_span(
    tmp_path: Path, receiver: OtlpReceiver, http_server: str, via: str
) -> None:
    script = write(tmp_path, "fetch.py", URLLIB_APP)
    stdout = run_app(tmp_path, script, agent_env(receiver, SERVER_URL=http_server), via)
    assert stdout == '200 {"ok": true}\n'
    spans = receiver.wait_count(1)
    assert [(span.name, span.kind, span.service) for span in spans] == [("GET", "CLIENT", "fetch")], (
        render_tree(spans)
    )
    url = spans[0].attributes.get("url.full") or spans[0].attributes.get("http.url")
    assert url == f"{http_server}/items?page=2"


SQLITE_APP = """
    import sqlite3

    # Cursors: OpenTelemetry's instrumentor traces cursor statements (not Connection.execute).
    connection = sqlite3.connect(":memory:")
    cursor = connection.cursor()
    cursor.execute("CREATE TABLE items (name TEXT)")
    cursor.execute("INSERT INTO items VALUES (?)", ("a",))
    cursor.execute("SELECT count(*) FROM items")
    print(cursor.fetchone()[0])
    connection.close()
"""


def test_a_sqlite3_script_gets_its_spans_in_the_default_store_and_the_store_traces_nothing(
    tmp_path: Path,
) -> None:
    # The default exporter is the store, SQLite itself: only the app's three statements are spans.
    store = tmp_path / "traces.db"
    script = write(tmp_path, "db.py", SQLITE_APP)
    stdout = run_app(tmp_path, script, agent_env(None, LOGFIRE_STORE=str(store)), "launcher")
    assert stdout == "1\n"
    connection = sqlite3.connect(store)
    try:
        found = connection.execute("SELECT name, kind, service FROM spans ORDER BY start_ns").fetchall()
    finally:
        connection.close()
    assert [row[2] for row in found] == ["db"] * 3, found
    assert [row[0].split()[0] for row in found] == ["CREATE", "INSERT", "SELECT"], found
    assert {row[1] for row in found} == {"CLIENT"}, found


@pytest.mark.slow
def test_a_sqlite3_script_gets_its_spans_over_otlp(tmp_path: Path, receiver: OtlpReceiver) -> None:
    script = write(tmp_path, "db.py", SQLITE_APP)
    run_app(tmp_path, script, agent_env(receiver), "LOGFIRE_RUN=1")
    spans = receiver.wait_count(3)
    assert sorted(span.name.split()[0] for span in spans) == ["CREATE", "INSERT", "SELECT"], render_tree(
        spans
    )


EVERYDAY_APP = """
    import asyncio, concurrent.futures, logging, os, subprocess, threading, urllib.parse
    import sys

    logging.getLogger("app").warning("hello")
    subprocess.run(["true"], check=True)
    asyncio.run(asyncio.sleep(0))
    loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
    print(loaded)
"""


def test_modules_every_program_imports_do_not_start_the_sdk(tmp_path: Path) -> None:
    script = write(tmp_path, "everyday.py", EVERYDAY_APP)
    result = run_launcher(["python", str(script)], agent_env(), cwd=tmp_path, expect_stderr="hello\n")
    assert result.stdout == "[]\n"


def test_debug_and_info_say_what_starts_the_sdk(tmp_path: Path, http_server: str) -> None:
    script = write(tmp_path, "fetch.py", URLLIB_APP)

    def says_it(stderr: str) -> bool:
        return (
            bool(DEBUG_LINES.fullmatch(stderr)) and "urllib.request imported: urllib starts the SDK" in stderr
        )

    run_app(
        tmp_path,
        script,
        agent_env(LOGFIRE_EXPORTER="none", SERVER_URL=http_server),
        "launcher",
        "--debug",
        expect_stderr=says_it,
    )
    info = run_launcher(["--info"], agent_env()).stdout
    lines = {
        line.split()[0]: line for line in info.splitlines() if line.startswith("  ") and "enabled" in line
    }
    assert "on import of urllib.request, which starts the SDK" in lines["urllib"], info
    assert "on import of sqlite3, which starts the SDK" in lines["sqlite3"], info
    assert "once the SDK is up, if threading or concurrent.futures is imported" in lines["executors"], info
    assert "once the SDK is up, if os or subprocess is imported" in lines["subprocess"], info
