"""A dead or slow backend never holds up exit: normal exit, SIGTERM, a forked child's os._exit and a
pre-fork server's shutdown all end within the exit budget (2 s by default), and say what they dropped.

Each backend below is real on 127.0.0.1: a port nobody listens on, a server that accepts and never
answers, and HTTP servers answering 429 or 503. Without the budget these exits took 6 to 40 s.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import LAUNCHER, OtlpReceiver, agent_env, free_port, serve_in_thread, wait_for_port

#: The default budget, and what exit may take beyond it (interpreter teardown, a loaded machine).
BUDGET = 2.0
SLACK = 3.0


class _Blackhole:
    """Accepts connections and never answers."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        self.socket.close()
        for connection in self.held:
            connection.close()


class _Status:
    """Answers every export with one HTTP status (429, 503)."""

    def __init__(self, status: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        serve_in_thread(self.server)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["refused", "blackhole", "429", "503"])
def dead_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    kind = request.param
    if kind == "refused":
        yield f"http://127.0.0.1:{free_port()}"
        return
    backend: _Blackhole | _Status = _Blackhole() if kind == "blackhole" else _Status(int(kind))
    try:
        yield backend.endpoint
    finally:
        backend.close()


def _env(endpoint: str, **extra: str) -> dict[str, str]:
    # Spans only: what metrics do at exit is tests/test_metrics.py's.
    return agent_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, LOGFIRE_EXPORTER="otlp", OTEL_METRICS_EXPORTER="none", **extra
    )


def _spans(count: int) -> str:
    return (
        f"import logfire_run\nfor i in range({count}):\n    with logfire_run.span(f's{{i}}'):\n        pass\n"
    )


def _time_from_ready(process: subprocess.Popen[str], after_ready: Any = None) -> tuple[float, str]:
    """Seconds from the process's `ready` line (and `after_ready()`) to its exit; and its stderr."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line == "ready\n", line + (process.stderr.read() if process.stderr else "")
    started = time.monotonic()
    if after_ready is not None:
        after_ready()
    _, err = process.communicate(timeout=60)
    return time.monotonic() - started, err


@pytest.mark.slow  # each waits out the default budget (2 s), as do the three below
@pytest.mark.parametrize("count", [10, 5000])
def test_normal_exit_within_the_budget(tmp_path: Path, dead_backend: str, count: int) -> None:
    script = tmp_path / "app.py"
    script.write_text(_spans(count) + "print('ready', flush=True)\n")
    process = subprocess.Popen(
        [LAUNCHER, "python", str(script)],
        env=_env(dead_backend),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    elapsed, err = _time_from_ready(process)
    assert process.returncode == 0, err
    assert elapsed < BUDGET + SLACK, f"exit took {elapsed:.1f} s\n{err}"
    # What never arrives is said: dropped (never sent, or sent and refused), or sent and unanswered.
    assert "exit budget" in err or "exporting spans failed" in err, err
    assert all(line.startswith("logfire-run: ") for line in err.splitlines()), err


@pytest.mark.slow
@pytest.mark.parametrize("count", [10, 5000])
def test_sigterm_within_the_budget(tmp_path: Path, dead_backend: str, count: int) -> None:
    script = tmp_path / "app.py"
    script.write_text(_spans(count) + "import time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    process = subprocess.Popen(
        [LAUNCHER, "python", str(script)],
        env=_env(dead_backend),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    elapsed, err = _time_from_ready(process, lambda: process.send_signal(signal.SIGTERM))
    assert process.returncode == -signal.SIGTERM, err
    assert elapsed < BUDGET + SLACK, f"SIGTERM took {elapsed:.1f} s to end the process\n{err}"


@pytest.mark.slow
@pytest.mark.parametrize("count", [10, 2048])
def test_forked_child_os_exit_within_the_budget(tmp_path: Path, dead_backend: str, count: int) -> None:
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, time, logfire_run
            with logfire_run.span("parent"):
                pass
            print("ready", flush=True)
            pid = os.fork()
            if pid == 0:
                for i in range({count}):
                    with logfire_run.span(f"child {{i}}"):
                        pass
                os._exit(7)
            started = time.monotonic()
            _, status = os.waitpid(pid, 0)
            print(os.waitstatus_to_exitcode(status), round(time.monotonic() - started, 2), flush=True)
            os._exit(0)
            """
        )
    )
    process = subprocess.Popen(
        [LAUNCHER, "python", str(script)],
        env=_env(dead_backend),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    code, child_seconds = process.stdout.readline().split()
    process.communicate(timeout=60)
    assert code == "7"
    assert float(child_seconds) < BUDGET + SLACK, f"the child's os._exit took {child_seconds} s"


#: How each server ends on SIGTERM without the agent (uvicorn alone re-raises the signal after its
#: shutdown); the agent must not change it.
STATUS_ON_SIGTERM = {"gunicorn": 0, "uvicorn": -signal.SIGTERM, "uvicorn --workers 2": 0}
SERVERS = {
    "gunicorn": ["gunicorn", "-w", "2", "-b", "127.0.0.1:{port}", "apps:wsgi"],
    "uvicorn": ["uvicorn", "--lifespan", "off", "--port", "{port}", "apps:asgi"],
    "uvicorn --workers 2": [
        "uvicorn",
        "--lifespan",
        "off",
        "--workers",
        "2",
        "--port",
        "{port}",
        "apps:asgi",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_server_shutdown_within_the_budget(tmp_path: Path, dead_backend: str, server: str) -> None:
    (tmp_path / "apps.py").write_text(
        textwrap.dedent(
            """
            import logfire_run

            def work():
                for i in range(500):
                    with logfire_run.span("work"):
                        pass

            def wsgi(environ, start_response):
                work()
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok"]

            async def asgi(scope, receive, send):
                work()
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"ok"})
            """
        )
    )
    port = free_port()
    program, *args = SERVERS[server]
    command = [str(Path(sys.executable).with_name(program)), *(arg.format(port=port) for arg in args)]
    process = subprocess.Popen(
        [LAUNCHER, *command],
        cwd=tmp_path,
        env=_env(dead_backend),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, process=process)
        import urllib.request

        for _ in range(4):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                assert response.read() == b"ok"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == STATUS_ON_SIGTERM[server]
    assert elapsed < BUDGET + SLACK + 1.0, f"{server} took {elapsed:.1f} s to shut down"


def test_a_healthy_backend_still_gets_every_span(tmp_path: Path, receiver: OtlpReceiver) -> None:
    script = tmp_path / "app.py"
    script.write_text(_spans(1500))
    process = subprocess.run(
        [LAUNCHER, "python", str(script)], env=agent_env(receiver), capture_output=True, text=True, timeout=60
    )
    assert process.returncode == 0, process.stderr
    assert process.stderr == ""
    assert len(receiver.wait_count(1500, timeout=10)) == 1500


def test_the_budget_is_a_setting(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    blackhole = _Blackhole()
    try:
        script.write_text(_spans(10) + "print('ready', flush=True)\n")
        process = subprocess.Popen(
            [LAUNCHER, "--exit-budget", "0.5", "python", str(script)],
            env=_env(blackhole.endpoint),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        elapsed, err = _time_from_ready(process)
    finally:
        blackhole.close()
    assert process.returncode == 0
    assert elapsed < 0.5 + SLACK
    # The collector holds the connection and never answers: the 10 spans are on the wire at exit.
    assert "10 spans sent at exit got no answer within the exit budget (0.5 s, at exit)" in err, err
    bad = subprocess.run(
        [LAUNCHER, "--exit-budget", "soon", "python", "-c", "pass"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "invalid number of seconds 'soon'" in bad.stderr


def test_os_exit_bound_before_the_sdk_starts_still_flushes(tmp_path: Path, receiver: OtlpReceiver) -> None:
    # A few children, one at a time: each flushes one span within the default budget whatever the
    # machine's load (hundreds at once would test the load instead).
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            from os import _exit, fork, waitpid  # bound before anything starts the SDK
            import logfire_run
            logfire_run.info("parent")  # the SDK starts here
            for i in range(5):
                pid = fork()
                if pid == 0:
                    with logfire_run.span(f"child {i}"):
                        pass
                    _exit(0)
                waitpid(pid, 0)
            """
        )
    )
    result = subprocess.run(
        [LAUNCHER, "python", str(script)],
        env=agent_env(receiver),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    spans = receiver.wait_count(6, timeout=20)
    assert sorted(span.name for span in spans if span.name.startswith("child")) == [
        f"child {i}" for i in range(5)
    ]


@pytest.mark.slow  # the exporter's backoff before its retry
def test_a_retry_that_succeeds_is_not_reported(tmp_path: Path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[int] = []
    accepted = tmp_path / "accepted"

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            # The first attempt fails as an overloaded collector's would; the retry is accepted.
            status = 503 if not received else 200
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            count = sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
            received.append(count if status == 200 else 0)
            if status == 200:
                accepted.touch()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    serve_in_thread(server)
    try:
        script = tmp_path / "app.py"
        # The app runs on until the retry is accepted, and ends with nothing left to send.
        script.write_text(
            _spans(20)
            + textwrap.dedent(
                f"""
                import os, time
                deadline = time.monotonic() + 30
                while not os.path.exists({str(accepted)!r}) and time.monotonic() < deadline:
                    time.sleep(0.02)
                print('done')
                """
            )
        )
        result = subprocess.run(
            [LAUNCHER, "python", str(script)],
            env=_env(f"http://127.0.0.1:{server.server_address[1]}"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0
    assert result.stdout == "done\n"
    assert result.stderr == ""
    assert received[0] == 0 and sum(received) == 20


def test_uvicorn_stopped_with_sigterm_delivers_its_spans(tmp_path: Path, receiver: OtlpReceiver) -> None:
    # uvicorn puts back the SIGTERM handler it found and re-raises the signal after its shutdown,
    # which skips interpreter exit: the handler it finds must be the agent's.
    (tmp_path / "apps.py").write_text(
        textwrap.dedent(
            """
            import logfire_run

            async def asgi(scope, receive, send):
                with logfire_run.span("handled"):
                    pass
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"ok"})
            """
        )
    )
    port = free_port()
    uvicorn = str(Path(sys.executable).with_name("uvicorn"))
    process = subprocess.Popen(
        [LAUNCHER, uvicorn, "--lifespan", "off", "--port", str(port), "apps:asgi"],
        cwd=tmp_path,
        env=agent_env(receiver, OTEL_BSP_SCHEDULE_DELAY="60000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, process=process)
        import urllib.request

        for _ in range(3):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                assert response.read() == b"ok"
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGTERM
    assert [span.name for span in receiver.wait_count(3, timeout=10)] == ["handled"] * 3
