"""Every log record, in a span or not: stored, sent over OTLP (HTTP and gRPC), listed by
`logfire-run-view --logs`, and captured once when code emits OpenTelemetry log records itself
(structlog's instrumentor, OpenTelemetry's `LoggingHandler`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import VIEWER, agent_env, run_launcher, run_process, run_without_agent, write_app
from otlp_receivers import GrpcReceiver, ThirdPartyReceiver

#: Each test runs the app under the launcher and the viewer several times (and some, a receiver).
pytestmark = pytest.mark.slow

#: A service whose first lines come before anything starts tracing, then a request, then its last
#: line after the request: only the middle one is in a span.
SERVICE = """
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    log = logging.getLogger("shop")
    log.info("starting on port %d", 8000)  # before any instrumented library: the SDK is not up

    import sqlite3  # an instrumented library: the SDK starts here

    from opentelemetry import trace

    with trace.get_tracer("shop").start_as_current_span("request") as span:
        log.warning("stock low")
        print(f"{span.get_span_context().trace_id:032x}", flush=True)
    log.error("shutting down")
    logging.getLogger("shop.debug").debug("not captured at the default level")
"""


def view_logs(env: dict[str, str], *args: str) -> Any:
    result = run_process([VIEWER, "--logs", "--json", *args], env)
    return json.loads(result.stdout)


def test_records_outside_spans_are_stored_and_listed(tmp_path: Path) -> None:
    write_app(tmp_path, SERVICE)
    env = agent_env(LOGFIRE_SERVICE_NAME="shop")
    result = run_launcher(["python", "app.py"], env, cwd=tmp_path, expect_stderr=None)
    plain = run_without_agent(tmp_path, SERVICE, name="plain.py", expect_stderr=None)
    assert result.stderr == plain.stderr  # the app's own log output, unchanged
    trace_id = result.stdout.strip()
    records = view_logs(env)
    assert [(r["level"], r["message"], r["trace_id"]) for r in records] == [
        ("INFO", "starting on port 8000", ""),
        ("WARNING", "stock low", trace_id),
        ("ERROR", "shutting down", ""),
    ]
    outside = records[0]
    assert outside["span_id"] == "" and outside["service"] == "shop" and outside["logger"] == "shop"
    assert outside["attributes"]["code.function.name"] == "<module>"
    # The per-trace view has the one record of the span, shaped the same way.
    trace = json.loads(run_process([VIEWER, "--json", trace_id], env).stdout)
    assert trace["spans"][0]["logs"] == [records[1]]
    # Filters: level, text, service, how many.
    assert [r["message"] for r in view_logs(env, "--level", "warning")] == ["stock low", "shutting down"]
    assert [r["message"] for r in view_logs(env, "--grep", "PORT")] == ["starting on port 8000"]
    assert view_logs(env, "--service", "elsewhere") == []
    assert [r["message"] for r in view_logs(env, "--limit", "1")] == ["shutting down"]
    text = run_process([VIEWER, "--logs", "--plain"], env).stdout.splitlines()
    assert len(text) == 3 and text[0].endswith("shop  INFO     shop: starting on port 8000"), text
    assert text[1].endswith(f"[trace {trace_id[:16]}]"), text


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_records_outside_spans_are_sent_over_otlp(tmp_path: Path, protocol: str) -> None:
    receiver: Any = ThirdPartyReceiver("http/protobuf") if protocol != "grpc" else GrpcReceiver()
    write_app(tmp_path, SERVICE)
    env = agent_env(
        LOGFIRE_SERVICE_NAME="shop",
        LOGFIRE_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
    )
    try:
        result = run_launcher(["python", "app.py"], env, cwd=tmp_path, expect_stderr=None)
        logs = receiver.wait_for_logs(3)
    finally:
        receiver.close()
    trace_id = result.stdout.strip()
    assert sorted((log["body"], log["trace_id"]) for log in logs) == [
        ("shutting down", ""),
        ("starting on port 8000", ""),
        ("stock low", trace_id),
    ]
    assert {log["resource"]["service.name"] for log in logs} == {"shop"}


STRUCTLOG_APP = """
    import logging
    import sys

    import structlog

    if sys.argv[1] == "stdlib":
        # structlog's standard-library integration: each event is also a `logging` record.
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
        structlog.configure(
            processors=[structlog.stdlib.add_log_level, structlog.processors.KeyValueRenderer()],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
        )
    log = structlog.get_logger("orders")
    log.info("order placed", order=42)
    log.warning("stock low", item="widgets")
"""


@pytest.mark.parametrize("integration", ["print", "stdlib"])
def test_structlog_events_are_captured_once(tmp_path: Path, integration: str) -> None:
    """OpenTelemetry's structlog instrumentor emits each event through the global LoggerProvider."""
    write_app(tmp_path, STRUCTLOG_APP)
    env = agent_env(LOGFIRE_SERVICE_NAME="orders")
    result = run_launcher(["python", "app.py", integration], env, cwd=tmp_path)
    plain = run_without_agent(tmp_path, STRUCTLOG_APP, integration, name="plain.py")
    # structlog's own output, unchanged (but for the time its console renderer stamps each line with).
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", re.MULTILINE)
    assert stamp.sub("", result.stdout) == stamp.sub("", plain.stdout)
    records = view_logs(env)
    assert [(r["level"], r["message"]) for r in records] == [
        ("INFO", "order placed"),
        ("WARNING", "stock low"),
    ]
    assert records[0]["attributes"]["order"] == 42
    assert records[1]["attributes"]["item"] == "widgets"


def test_opentelemetry_logging_handler_does_not_capture_twice(tmp_path: Path) -> None:
    """An app that attaches OpenTelemetry's LoggingHandler itself: its records are captured once."""
    write_app(
        tmp_path,
        """
        import logging
        import sqlite3
        from opentelemetry.sdk._logs import LoggingHandler

        logging.getLogger().addHandler(LoggingHandler())
        logging.getLogger("app").warning("once")
        """,
    )
    env = agent_env()
    run_launcher(["python", "app.py"], env, cwd=tmp_path)
    assert [r["message"] for r in view_logs(env)] == ["once"]
