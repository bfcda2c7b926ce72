"""Shared test machinery: a real OTLP/HTTP receiver, the launcher run as a user runs it, span trees.

Every test that checks spans starts real interpreters through `logfire-run`, exports with the real
OTLP exporter to `OtlpReceiver` on 127.0.0.1, and reads back what arrived.

Two rules hold for every process a test starts, and the helpers here are how they are kept:

- It has its own cache and data folders. `child_env()` (and `agent_env()`, built on it) points
  `XDG_CACHE_HOME` (the instrumentor cache) and `XDG_DATA_HOME` (the default trace store) at folders
  of the running test (of the module, for a module's fixtures), and so does this process's own
  environment while the test runs, for what is started without an `env`. The session fails if the
  real `~/.cache/logfire-run` or `~/.local/share/logfire-run` was touched.
- Its stderr is empty unless the test says what it expects: `run_process()`, `run_launcher()` and
  `http_services.running()` take `expect_stderr` (text, a regular expression the whole of stderr must
  match, a predicate, or None when the test checks stderr itself), empty by default. An agent that
  prints is an agent that breaks someone's logs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Union

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import costs

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = shutil.which("logfire-run", path=os.path.dirname(sys.executable)) or "logfire-run"
VIEWER = shutil.which("logfire-run-view", path=os.path.dirname(sys.executable)) or "logfire-run-view"
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass
class SpanRecord:
    """One exported span, as the receiver decoded it."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    service: str
    pid: int | None
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    events: list[str]
    status: int
    start: int
    end: int
    resource: dict[str, Any] = field(default_factory=dict)
    trace_state: str = ""


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def _attrs(key_values: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in key_values}


#: How often a test's server looks whether it is asked to stop: `serve_forever()`'s default (0.5 s)
#: is what each test that stops a server would wait, 0.25 s on average, for nothing.
SERVER_POLL_SECONDS = 0.02


def serve_in_thread(server: socketserver.BaseServer) -> threading.Thread:
    """Serve in a daemon thread; `server.shutdown()` then returns within SERVER_POLL_SECONDS."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": SERVER_POLL_SECONDS}, daemon=True
    )
    thread.start()
    return thread


class OtlpReceiver:
    """A real OTLP/HTTP protobuf endpoint on 127.0.0.1 that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[SpanRecord] = []
        self.requests = 0
        #: Connections from exporters not closed yet (each read to its end when closed).
        self.connections = 0
        #: The bodies of OTLP log requests (`/v1/logs`) and metric requests (`/v1/metrics`), undecoded.
        self.log_bodies: list[bytes] = []
        self.metric_bodies: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                with receiver._lock:
                    receiver.connections += 1
                super().setup()

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with receiver._lock:
                        receiver.connections -= 1

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path.endswith("/v1/logs"):
                    # The app's log records (docs/logs.md), sent beside its spans: kept as they came.
                    with receiver._lock:
                        receiver.log_bodies.append(body)
                elif self.path.endswith("/v1/metrics"):
                    # Its metrics (docs/metrics.md), likewise (tests/otlp_receivers.py decodes them).
                    with receiver._lock:
                        receiver.metric_bodies.append(body)
                else:
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    receiver._add(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = serve_in_thread(self.server)

    def _add(self, request: ExportTraceServiceRequest) -> None:
        records = []
        for resource_spans in request.resource_spans:
            resource = _attrs(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    records.append(
                        SpanRecord(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex() or None,
                            name=span.name,
                            kind=KINDS.get(span.kind, str(span.kind)),
                            service=str(resource.get("service.name")),
                            pid=resource.get("process.pid"),
                            attributes=_attrs(span.attributes),
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                            events=[event.name for event in span.events],
                            status=span.status.code,
                            start=span.start_time_unix_nano,
                            end=span.end_time_unix_nano,
                            resource=resource,
                            trace_state=span.trace_state,
                        )
                    )
        with self._lock:
            self.requests += 1
            self.spans.extend(records)

    def wait_for(
        self, predicate: Callable[[list[SpanRecord]], bool], timeout: float = 20.0
    ) -> list[SpanRecord]:
        """Wait until `predicate(spans)` holds; return the spans either way (the test asserts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                snapshot = list(self.spans)
            if predicate(snapshot):
                return snapshot
            time.sleep(0.05)
        with self._lock:
            return list(self.spans)

    def wait_count(self, count: int, timeout: float = 20.0) -> list[SpanRecord]:
        return self.wait_for(lambda spans: len(spans) >= count, timeout)

    def wait_settled(self, count: int, timeout: float = 20.0) -> list[SpanRecord]:
        """After the exporting processes have ended: wait for `count` spans and for every connection
        to be closed, so that all they sent has been read (a duplicate would be there too)."""
        return self.wait_for(lambda spans: len(spans) >= count and self.connections == 0, timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.close()


# What each test costs: the `slow` marks are checked against it (tests/costs.py).


def pytest_addoption(parser: pytest.Parser) -> None:
    costs.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(costs.CostCheck(config), "costs")
    _sigint_at_its_default_in_children()


def _sigint_at_its_default_in_children() -> None:
    """Every process a test starts gets SIGINT at its default disposition, as from a terminal.

    A run started in the background (`bash scripts/test.sh &` from a script, `nohup`) has SIGINT
    ignored, and an ignored signal stays ignored across fork and exec: the tests that press Ctrl-C
    would wait for processes that never hear it. A handled signal is reset to its default by exec, so
    a handler that does nothing keeps this process as deaf to SIGINT as it was and leaves the
    processes the tests start as a terminal would start them. The agent is not involved.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, lambda signum, frame: None)


# Each test's own cache and data folders


@dataclass(frozen=True)
class OwnFolders:
    """Where the processes of one test (or one module's fixtures) keep their cache and data."""

    cache: Path
    data: Path


#: The folders of what is running now, innermost last: the session's, the module's, the test's.
_own_folders: list[OwnFolders] = []


@contextmanager
def _folders_of(base: Path) -> Iterator[None]:
    folders = OwnFolders(cache=base / "xdg-cache", data=base / "xdg-data")
    _own_folders.append(folders)
    with pytest.MonkeyPatch.context() as patch:
        # For this process too, and for anything started with no `env` (it inherits this one).
        patch.setenv("XDG_CACHE_HOME", str(folders.cache))
        patch.setenv("XDG_DATA_HOME", str(folders.data))
        try:
            yield
        finally:
            _own_folders.pop()


@pytest.fixture(scope="session", autouse=True)
def _session_folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with _folders_of(tmp_path_factory.mktemp("session")):
        yield


@pytest.fixture(scope="module", autouse=True)
def _module_folders(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[None]:
    # Autouse and module-scoped: set up before any other fixture of the module (a Celery worker, the
    # servers of test_http_inbound), which then run with the module's folders.
    with _folders_of(tmp_path_factory.mktemp(request.module.__name__)):
        yield


@pytest.fixture(autouse=True)
def _test_folders(tmp_path: Path) -> Iterator[None]:
    # Not created here: a test may list its tmp_path, and the processes create what they use.
    with _folders_of(tmp_path):
        yield


def own_folders() -> OwnFolders:
    """The cache and data folders of the running test."""
    if not _own_folders:
        raise RuntimeError("a process environment was asked for outside a test session")
    return _own_folders[-1]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of any process a test starts, with or without the agent.

    This process's environment without LOGFIRE_*, OTEL_* and PYTHONPATH, this venv first on PATH, and
    the running test's own XDG_CACHE_HOME and XDG_DATA_HOME; then `extra`.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    folders = own_folders()
    env["XDG_CACHE_HOME"] = str(folders.cache)
    env["XDG_DATA_HOME"] = str(folders.data)
    env.update(extra)
    return env


def agent_env(receiver: OtlpReceiver | None = None, **extra: str) -> dict[str, str]:
    """`child_env()` for a traced process: fast batching, unbuffered output, the receiver as backend."""
    env = child_env(OTEL_BSP_SCHEDULE_DELAY="100", PYTHONUNBUFFERED="1")
    if receiver is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        env["LOGFIRE_EXPORTER"] = "otlp"
    env.update(extra)
    return env


# The real home's folders: the session fails if any test touched them.


def _real_folders() -> list[Path]:
    home = Path(os.path.expanduser("~"))
    folders = [home / ".cache" / "logfire-run", home / ".local" / "share" / "logfire-run"]
    for variable in ("XDG_CACHE_HOME", "XDG_DATA_HOME"):
        if os.environ.get(variable):
            folders.append(Path(os.environ[variable]) / "logfire-run")
    return folders


def _snapshot(folders: list[Path]) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folders`, with its modification time and size."""
    found: dict[str, tuple[int, int]] = {}
    for folder in folders:
        paths = [folder, *folder.rglob("*")] if folder.exists() else []
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            found[str(path)] = (stat.st_mtime_ns, stat.st_size)
    return found


_REAL_FOLDERS: list[Path] = []
_BEFORE: dict[str, tuple[int, int]] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    _REAL_FOLDERS[:] = _real_folders()
    _BEFORE.update(_snapshot(_REAL_FOLDERS))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    after = _snapshot(_REAL_FOLDERS)
    changed = sorted(
        [f"created  {path}" for path in after.keys() - _BEFORE.keys()]
        + [f"removed  {path}" for path in _BEFORE.keys() - after.keys()]
        + [f"modified {path}" for path in after.keys() & _BEFORE.keys() if after[path] != _BEFORE[path]]
    )
    if not changed:
        return
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [
        "the real cache or data folders of logfire-run were touched during the session: some process",
        "ran without its test's own XDG_CACHE_HOME / XDG_DATA_HOME (use child_env() or agent_env()),",
        "or another run on this machine used them at the same time:",
        *(f"  {line}" for line in changed[:20]),
    ]
    if reporter is not None:
        reporter.write_sep("=", "real home touched", red=True)
        for line in lines:
            reporter.write_line(line, red=True)
    else:
        print("\n".join(lines), file=sys.stderr)


# Running processes


#: What a test expects on a process's stderr: exactly this text, a regular expression that must match
#: all of it, a predicate, or None when the test checks stderr itself (and says why).
StderrExpectation = Union[str, "re.Pattern[str]", Callable[[str], object], None]


#: From Python 3.12, a process with more than one thread that calls os.fork() from `__main__` gets a
#: DeprecationWarning (gh-100228), once per line that forks, followed by that line when
#: Python can show it; earlier Pythons say nothing.
FORK_WARNINGS = (
    re.compile(
        r"(?:[^\n]*: DeprecationWarning: This process \(pid=\d+\) is multi-threaded, use of fork\(\) "
        r"may lead to deadlocks in the child\.\n(?:  [^\n]*\n)?)*"
    )
    if sys.version_info >= (3, 12)
    else ""
)

#: Only the agent's own `--debug` lines (`logfire-run[PID]: ...`), however many.
DEBUG_LINES = re.compile(r"(logfire-run\[\d+\]: [^\n]*\n)*")


def check_stderr(stderr: str, expected: StderrExpectation, what: str = "stderr") -> None:
    if expected is None:
        return
    if isinstance(expected, str):
        assert stderr == expected, f"unexpected {what}:\n{stderr}"
    elif isinstance(expected, re.Pattern):
        assert expected.fullmatch(stderr), f"{what} does not match {expected.pattern!r}:\n{stderr}"
    else:
        assert expected(stderr), f"unexpected {what}:\n{stderr}"


def run_process(
    command: list[str],
    env: dict[str, str],
    *,
    cwd: Path | str | None = None,
    timeout: float = 60,
    input: str | None = None,
    expect_stderr: StderrExpectation = "",
) -> subprocess.CompletedProcess[str]:
    """Run `command` to completion; its stderr must be what `expect_stderr` says (empty by default)."""
    result = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, input=input
    )
    check_stderr(result.stderr, expected=expect_stderr, what=f"stderr of {' '.join(command)[:200]}")
    return result


def run_launcher(
    args: list[str],
    env: dict[str, str],
    *,
    cwd: Path | str | None = None,
    timeout: float = 60,
    input: str | None = None,
    expect_stderr: StderrExpectation = "",
) -> subprocess.CompletedProcess[str]:
    """Run `logfire-run ARGS...` to completion, as a user would from a shell (see `run_process`)."""
    return run_process(
        [LAUNCHER, *args], env, cwd=cwd, timeout=timeout, input=input, expect_stderr=expect_stderr
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def without_fastapi_operations(spans: list[SpanRecord]) -> list[SpanRecord]:
    """The spans but FastAPI's own operation spans.

    FastAPI 0.165 and later trace themselves once a tracer provider is set (docs/http.md): under their
    SERVER span they make `fastapi.dependencies`, `fastapi.endpoint` and `fastapi.serialization`.
    Earlier versions (the pin on Python 3.10) get OpenTelemetry's instrumentor, which makes none.
    Tests about the tree across services compare what is the same for both;
    tests/test_asgi_frameworks.py checks FastAPI's own spans.
    """
    return [span for span in spans if not (span.kind == "INTERNAL" and span.name.startswith("fastapi."))]


def render_tree(spans: list[SpanRecord]) -> str:
    """The spans as an indented tree (by parent id), for assertion messages and tree comparisons."""
    by_parent: dict[str | None, list[SpanRecord]] = {}
    ids = {span.span_id for span in spans}
    for span in sorted(spans, key=lambda item: item.start):
        parent = span.parent_id if span.parent_id in ids else None
        by_parent.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in by_parent.get(parent, []):
            orphan = " (orphan)" if depth == 0 and span.parent_id else ""
            lines.append(f"{'  ' * depth}{span.kind} {span.name} [{span.service}]{orphan}")
            walk(span.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def assert_clean_stderr(stderr: str) -> None:
    """An agent that prints breaks someone's logs: nothing may reach stderr unless a test expects it."""
    assert stderr == "", f"unexpected stderr:\n{stderr}"


# Apps written by a test and run under the agent, or without it to compare what the app sees.


def write_app(tmp_path: Path, source: str, name: str = "app.py") -> Path:
    script = tmp_path / name
    script.write_text(textwrap.dedent(source))
    return script


def launch(
    tmp_path: Path,
    receiver: OtlpReceiver | None,
    source: str,
    *args: str,
    via: str = "launcher",
    timeout: float = 180,
    expect_stderr: StderrExpectation = "",
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """The app under the agent (`via` the launcher or `LOGFIRE_RUN=1`); it must succeed, with nothing on
    stderr unless `expect_stderr` says so."""
    script = write_app(tmp_path, source)
    if via == "launcher":
        result = run_launcher(
            ["python", str(script), *args],
            agent_env(receiver, **env),
            cwd=tmp_path,
            timeout=timeout,
            expect_stderr=expect_stderr,
        )
    else:
        result = run_process(
            [sys.executable, str(script), *args],
            agent_env(receiver, LOGFIRE_RUN="1", **env),
            cwd=tmp_path,
            timeout=timeout,
            expect_stderr=expect_stderr,
        )
    assert result.returncode == 0, result.stderr
    return result


#: Appended to an app that runs without the agent: the comparison means nothing if the agent is there
#: anyway (an app that imports logfire_run starts it). It runs at the end of the main process and as
#: each spawned worker imports the app.
NO_AGENT_CHECK = """
import sys as _sys
if "logfire_run" in _sys.modules:
    raise SystemExit("logfire_run is loaded in a process meant to run without the agent")
"""


def run_without_agent(
    tmp_path: Path,
    source: str,
    *args: str,
    name: str = "app.py",
    timeout: float = 180,
    expect_stderr: StderrExpectation = "",
) -> subprocess.CompletedProcess[str]:
    """The same app with no agent at all: no launcher, no LOGFIRE_RUN, and NO_AGENT_CHECK."""
    script = write_app(tmp_path, textwrap.dedent(source) + NO_AGENT_CHECK, name=name)
    return run_process(
        [sys.executable, str(script), *args],
        child_env(),
        cwd=tmp_path,
        timeout=timeout,
        expect_stderr=expect_stderr,
    )


def only(spans: list[SpanRecord], name: str) -> SpanRecord:
    """The one span called `name`."""
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name!r}:\n{render_tree(spans)}"
    return found[0]


def assert_child(span: SpanRecord, parent: SpanRecord, spans: list[SpanRecord]) -> None:
    assert (span.trace_id, span.parent_id) == (parent.trace_id, parent.span_id), (
        f"{span.name} [{span.service}] is not a child of {parent.name}:\n{render_tree(spans)}"
    )


# Redis, for Celery's broker and RQ: a real redis-server per test module, on a free port.

REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path_factory.mktemp("redis"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_instrumentor(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A folder holding OpenTelemetry's redis instrumentor, for PYTHONPATH: not in the test extra, where
    it would add Redis spans to every trace of the Celery and RQ tests; the housekeeping tests need it."""
    from importlib.metadata import version

    target = tmp_path_factory.mktemp("redis-instrumentor")
    # The release of the installed instrumentation train, so its pins are the ones already installed.
    wanted = f"opentelemetry-instrumentation-redis=={version('opentelemetry-instrumentation-celery')}"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    installed = subprocess.run(
        [*pip, "--target", str(target), wanted], capture_output=True, text=True, timeout=300
    )
    assert installed.returncode == 0, installed.stderr
    return str(target)
