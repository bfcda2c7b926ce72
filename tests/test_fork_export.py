"""Export across `os.fork()`: the child never shares a connection with its parent, and a fork never
waits for the network.

A forked child that sent over its parent's keep-alive HTTP connection wrote its request into the same
socket as the parent: with 200 forks under load, request bodies arrived with a second request inside
them, each a rejected batch of up to 512 spans. And `os.fork()` waited for an export in flight: 1.7 s
with a collector that answers in 2 s, stalling gunicorn worker spawns, fork pools and Celery prefork.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import FORK_WARNINGS, agent_env, run_launcher, write_app
from otlp_receivers import HttpReceiver, otlp  # noqa: F401 (the fixture)

FORKING_APP = """
import os
import logfire_run
with logfire_run.span("parent before"):
    pass
logfire_run.force_flush()                 # the parent's connection is open, idle, when it forks
children = []
for number in range(3):
    pid = os.fork()
    if pid == 0:
        with logfire_run.span(f"child {number}"):
            pass
        logfire_run.force_flush()
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
with logfire_run.span("parent after"):
    pass
"""


def _without_fork_warnings(stderr: str) -> str:
    return FORK_WARNINGS.sub("", stderr) if isinstance(FORK_WARNINGS, re.Pattern) else stderr


def _env(protocol: str, endpoint: str, **extra: str) -> dict[str, str]:
    return agent_env(
        None,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        LOGFIRE_EXPORTER="otlp",
        **extra,
    )


@pytest.mark.slow  # a receiver and four processes
def test_a_forked_child_never_sends_over_its_parents_connection(
    tmp_path: Path,
    otlp: tuple[str, Any],  # noqa: F811 (the fixture imported above)
) -> None:
    protocol, receiver = otlp
    write_app(tmp_path, FORKING_APP)
    result = run_launcher(
        ["python", "app.py"], _env(protocol, receiver.endpoint), cwd=tmp_path, expect_stderr=FORK_WARNINGS
    )
    assert result.returncode == 0
    spans = receiver.wait_count(5)
    assert sorted(span.name for span in spans) == sorted(
        ["parent before", "parent after", "child 0", "child 1", "child 2"]
    )
    # The client address a request came from is the connection it came on: no connection carries
    # requests of two processes.
    with receiver._lock:
        peers = list(receiver.peers)
    processes_by_connection: dict[str, set[int | None]] = {}
    for peer, pid in peers:
        processes_by_connection.setdefault(peer, set()).add(pid)
    assert all(len(pids) == 1 for pids in processes_by_connection.values()), (protocol, peers)
    assert getattr(receiver, "corrupt", 0) == 0, "request bodies mixed on one connection"


SLOW_APP = """
import os, sys, threading, time
import logging
import logfire_run

arrived = sys.argv[1]
with logfire_run.span("before the fork"):
    logging.getLogger("app").warning("a record")
threading.Thread(target=logfire_run.force_flush, daemon=True).start()
while not os.path.exists(arrived):        # the collector has the request, and holds it
    time.sleep(0.005)
pid = os.fork()
if pid == 0:
    os._exit(0)
print(time.monotonic(), flush=True)       # when os.fork() returned in the parent
os.waitpid(pid, 0)
"""


@pytest.mark.slow  # a collector that takes 1.5 s per request
@pytest.mark.parametrize("signal", ["spans", "logs"])
def test_fork_does_not_wait_for_an_export_on_the_wire(tmp_path: Path, signal: str) -> None:
    # The collector answers each request 1.5 s after it arrived (alive, slow). The app forks while one
    # of its requests is held: os.fork() must return before that answer, not after it.
    receiver = HttpReceiver(hold=1.5)
    arrived = tmp_path / "arrived"
    path = "/v1/traces" if signal == "spans" else "/v1/logs"

    def mark_arrival() -> None:
        import time

        while not arrived.exists():
            with receiver._lock:
                if any(request_path == path for request_path in receiver.paths) or (
                    path == "/v1/logs" and receiver.logs
                ):
                    arrived.touch()
                    return
            time.sleep(0.002)

    import threading

    watcher = threading.Thread(target=mark_arrival, daemon=True)
    watcher.start()
    try:
        write_app(tmp_path, SLOW_APP)
        result = run_launcher(
            ["python", "app.py", str(arrived)],
            _env("http/protobuf", receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="60000"),
            cwd=tmp_path,
            # The app's own thread (its force_flush) is alive at the fork: Python 3.12+ warns, as it
            # would without the agent.
            expect_stderr=lambda stderr: all(
                line.startswith("logfire-run: ") or "a record" in line
                for line in _without_fork_warnings(stderr).splitlines()
            ),
        )
    finally:
        receiver.close()
    assert result.returncode == 0
    forked_at = float(result.stdout.split()[0])
    answers = [answered for _arrived, answered, request_path in receiver.timeline if request_path == path]
    assert answers, receiver.timeline
    assert forked_at < answers[0], "os.fork() waited for the collector's answer"


def test_the_export_path_imports_nothing_lazily_after_the_first_export(tmp_path: Path) -> None:
    # A module imported by the exporting thread while the app forks leaves the child a held import
    # lock: the child hangs on its first import of that module. requests imports `netrc` at every
    # request; the agent imports it when it builds the exporter.
    code = """
import sys
import logfire_run
logfire_run.info("start")            # the SDK and its exporters are built
print("netrc" in sys.modules)
"""
    write_app(tmp_path, code)
    receiver = HttpReceiver()
    try:
        result = run_launcher(["python", "app.py"], _env("http/protobuf", receiver.endpoint), cwd=tmp_path)
    finally:
        receiver.close()
    assert result.stdout == "True\n"
    assert os.path.exists(sys.executable)


STORE_WAITING_APP = """
import os, threading, time
import logfire_run
with logfire_run.span("before the fork"):
    pass
threading.Thread(target=logfire_run.force_flush, daemon=True).start()
time.sleep(0.3)                           # the export waits for the lock another process holds
print("exporting", flush=True)
pid = os.fork()
if pid == 0:
    os._exit(0)
print(time.monotonic(), flush=True)       # when os.fork() returned in the parent
os.waitpid(pid, 0)
"""


@pytest.mark.slow  # another writer holds the store's lock for 1.5 s
def test_fork_does_not_wait_for_a_store_write_waiting_for_another_writer(tmp_path: Path) -> None:
    import sqlite3
    import subprocess
    import threading
    import time

    from conftest import LAUNCHER

    store = tmp_path / "traces.db"
    write_app(tmp_path, "import logfire_run\nlogfire_run.info('the store exists')\n", name="first.py")
    run_launcher(["python", "first.py"], agent_env(None, LOGFIRE_STORE=str(store)), cwd=tmp_path)
    write_app(tmp_path, STORE_WAITING_APP)
    holder = sqlite3.connect(store, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released: list[float] = []

    def release() -> None:
        released.append(time.monotonic())
        holder.execute("ROLLBACK")

    process = subprocess.Popen(
        [LAUNCHER, "python", "app.py"],
        cwd=tmp_path,
        env=agent_env(None, LOGFIRE_STORE=str(store)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "exporting\n"
        timer = threading.Timer(1.5, release)
        timer.start()
        forked_at = float(process.stdout.readline())
        process.communicate(timeout=60)
        timer.join()
    finally:
        if process.poll() is None:
            process.kill()
        holder.close()
    assert forked_at < released[0], "os.fork() waited for another process's lock on the store"
