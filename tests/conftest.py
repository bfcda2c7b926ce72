"""Shared test machinery: a real OTLP/HTTP receiver, the launcher run as a user runs it, span trees.

Every test that checks spans starts real interpreters through `logfire-run`, exports with the real
OTLP exporter to `OtlpReceiver` on 127.0.0.1, and reads back what arrived.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = shutil.which("logfire-run", path=os.path.dirname(sys.executable)) or "logfire-run"
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


class OtlpReceiver:
    """A real OTLP/HTTP protobuf endpoint on 127.0.0.1 that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[SpanRecord] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
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
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

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

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.close()


def agent_env(receiver: OtlpReceiver | None = None, **extra: str) -> dict[str, str]:
    """The environment a test process runs in: this venv first on PATH, fast batching, no stray config."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    env["PYTHONUNBUFFERED"] = "1"
    if receiver is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        env["LOGFIRE_EXPORTER"] = "otlp"
    env.update(extra)
    return env


def run_launcher(
    args: list[str],
    env: dict[str, str],
    *,
    cwd: Path | str | None = None,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `logfire-run ARGS...` to completion, as a user would from a shell."""
    return subprocess.run(
        [LAUNCHER, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
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
