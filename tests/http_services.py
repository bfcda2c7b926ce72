"""The services of examples/http_chain, started the way their docstrings tell a user to start them.

Each one runs in its own process group under `logfire-run` (or plainly, for comparisons), on a free
port of 127.0.0.1, with its stdout and stderr in files, and is stopped (SIGTERM, then SIGKILL of the
group after a timeout) when the `with` block ends; then its stderr must be what the test expects
(empty unless it says otherwise).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import LAUNCHER, ROOT, StderrExpectation, check_stderr, free_port, wait_for_port

EXAMPLE = ROOT / "examples" / "http_chain"
BIN = Path(sys.executable).parent
STOP_TIMEOUT = 20.0

#: How each server is started, by name; `{port}` is filled in. The first word is run through the
#: launcher (or found in this venv's bin when run plainly).
COMMANDS: dict[str, list[str]] = {
    "werkzeug": ["python", "service_a.py"],
    "gunicorn": [
        "gunicorn",
        "-w",
        "2",
        "-b",
        "127.0.0.1:{port}",
        "--log-level",
        "warning",
        "--graceful-timeout",
        "5",
        "service_a:app",
    ],
    "gunicorn-preload": [
        "gunicorn",
        "-w",
        "2",
        "--preload",
        "-b",
        "127.0.0.1:{port}",
        "--log-level",
        "warning",
        "--graceful-timeout",
        "5",
        "service_a:app",
    ],
    "uvicorn": [
        "uvicorn",
        "service_b:app",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--log-level",
        "warning",
        "--no-access-log",
    ],
}
COMMANDS["uvicorn-workers"] = [*COMMANDS["uvicorn"], "--workers", "2"]


class Service:
    """A running server: its URL, and what it wrote to stderr so far."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], port: int, logs: Path) -> None:
        self.name = name
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._logs = logs

    def stderr(self) -> str:
        return (self._logs / f"{self.name}.err").read_text()

    def stdout(self) -> str:
        return (self._logs / f"{self.name}.out").read_text()

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT)


@contextmanager
def running(
    server: str,
    env: dict[str, str],
    logs: Path,
    *,
    name: str | None = None,
    agent: bool = True,
    extra_env: dict[str, str] | None = None,
    expect_stderr: StderrExpectation = "",
    command: list[str] | None = None,
    cwd: Path = EXAMPLE,
) -> Iterator[Service]:
    """Start `server` (a key of COMMANDS, or `command` under that name) from the example folder (or
    `cwd`); stop it when the block ends.

    Once stopped, its stderr must be what `expect_stderr` says (see `conftest.check_stderr`); not
    checked when the block raised, whose error says more.
    """
    name = name or server
    port = free_port()
    words = [word.replace("{port}", str(port)) for word in (command or COMMANDS[server])]
    if agent:
        argv = [LAUNCHER, *words]
    else:
        program = sys.executable if words[0] == "python" else str(BIN / words[0])
        argv = [program, *words[1:]]
    full_env = dict(env)
    full_env.update({"A_PORT": str(port), "B_PORT": str(port)})
    full_env.update(extra_env or {})
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.out", "wb") as out, open(logs / f"{name}.err", "wb") as err:
        process = subprocess.Popen(
            argv, cwd=cwd, env=full_env, stdout=out, stderr=err, start_new_session=True
        )
    service = Service(name, process, port, logs)
    try:
        wait_for_port(port, timeout=30, process=process)
        yield service
    finally:
        service.stop()
    check_stderr(service.stderr(), expect_stderr, f"stderr of {name} ({' '.join(argv)})")


def get(url: str, headers: list[tuple[str, str]] | None = None, timeout: float = 30) -> tuple[int, Any]:
    """GET with http.client, headers sent exactly as given (repeated names stay repeated).

    Returns the status and the JSON body (or the text when it is not JSON).
    """
    rest = url.removeprefix("http://")
    host, _, path = rest.partition("/")
    connection = http.client.HTTPConnection(host, timeout=timeout)
    try:
        connection.putrequest("GET", "/" + path)
        for key, value in headers or []:
            connection.putheader(key, value)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body
    finally:
        connection.close()


def raw_response(url: str) -> tuple[int, str, dict[str, str]]:
    """Status, body and headers (without Date and Server) of a GET."""
    rest = url.removeprefix("http://")
    host, _, path = rest.partition("/")
    connection = http.client.HTTPConnection(host, timeout=30)
    try:
        connection.request("GET", "/" + path)
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        headers = {key.lower(): value for key, value in response.getheaders()}
        for volatile in ("date", "server"):
            headers.pop(volatile, None)
        return response.status, body, headers
    finally:
        connection.close()
