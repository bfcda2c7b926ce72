"""Any `str` the app gives reaches the store and OTLP (HTTP and gRPC), per value, never failing a batch.

A lone surrogate is what Python gives for a file name that is not UTF-8 (`os.fsdecode(b"caf\\xe9")` is
`"caf\\udce9"`); neither SQLite nor protobuf can encode it, and one such span used to lose the whole
batch it was in (512 spans). Such text is written with U+FFFD in place of each lone surrogate (a
surrogate pair becomes the character it encodes); NUL and large strings go through as they are.
Spans and the app's log records alike.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import agent_env, run_launcher, write_app
from otlp_receivers import HttpReceiver, otlp  # noqa: F401 (the fixture)

SPANS = 1000
BIG = 1_000_000

APP = f"""
import logging, os
from opentelemetry import trace
import logfire_run

bad = os.fsdecode(b"caf\\xe9")  # "caf\\udce9": a file name that is not UTF-8
tracer = trace.get_tracer("app")
with logfire_run.span("root"):
    for index in range({SPANS}):
        if index == 100:
            with tracer.start_as_current_span(bad, attributes={{bad: bad}}) as span:
                span.add_event(bad, {{"k": bad}})
                span.set_status(trace.Status(trace.StatusCode.ERROR, bad))
                logging.getLogger("app").warning("opened %s", bad)
        elif index == 200:
            with tracer.start_as_current_span("nul", attributes={{"text": "a\\x00b", "list": ["x", bad]}}):
                pass
        elif index == 300:
            with tracer.start_as_current_span("big", attributes={{"text": "x" * {BIG}}}):
                pass
        elif index == 400:
            with tracer.start_as_current_span("pair", attributes={{"text": "\\ud83d\\ude00"}}):
                pass
        else:
            with tracer.start_as_current_span(f"ok {{index}}"):
                pass
print("app ran")
"""

REPLACED = "caf\ufffd"
#: The app's own warning, printed by Python's last-resort handler as it is without the agent.
APP_STDERR = "opened caf\\udce9\n"


@pytest.mark.slow  # a receiver, and 1,000 spans with a 1 MB one
def test_every_span_and_record_arrives_over_otlp(tmp_path: Path, otlp: tuple[str, Any]) -> None:  # noqa: F811 (the fixture imported above)
    protocol, receiver = otlp
    write_app(tmp_path, APP)
    env = agent_env(
        None,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        LOGFIRE_EXPORTER="otlp",
    )
    result = run_launcher(["python", "app.py"], env, cwd=tmp_path, expect_stderr=APP_STDERR)
    assert result.stdout == "app ran\n"
    spans = receiver.wait_count(SPANS + 1)
    assert len(spans) == SPANS + 1
    by_name = {span.name: span for span in spans}
    bad = by_name[REPLACED]
    assert bad.attributes == {REPLACED: REPLACED}
    assert by_name["nul"].attributes == {"text": "a\x00b", "list": ["x", REPLACED]}
    assert by_name["big"].attributes == {"text": "x" * BIG}
    assert by_name["pair"].attributes == {"text": "\U0001f600"}
    logs = receiver.wait_for_logs(1)
    assert [log["body"] for log in logs] == [f"opened {REPLACED}"]
    assert logs[0]["span_id"] == bad.span_id


def test_every_span_and_record_is_stored(tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    store = tmp_path / "traces.db"
    env = agent_env(None, LOGFIRE_STORE=str(store))
    result = run_launcher(["python", "app.py"], env, cwd=tmp_path, expect_stderr=APP_STDERR)
    assert result.stdout == "app ran\n"
    with sqlite3.connect(store) as connection:
        names = [name for (name,) in connection.execute("SELECT name FROM spans")]
        attributes = dict(
            connection.execute("SELECT name, attributes FROM spans WHERE attributes IS NOT NULL")
        )
        events, status = connection.execute(
            "SELECT events, status_message FROM spans WHERE name = ?", (REPLACED,)
        ).fetchone()
        messages = [message for (message,) in connection.execute("SELECT message FROM logs")]
    assert len(names) == SPANS + 1
    assert REPLACED in names and status == REPLACED and REPLACED in events
    import json

    assert json.loads(attributes[REPLACED]) == {REPLACED: REPLACED}
    assert json.loads(attributes["nul"]) == {"text": "a\x00b", "list": ["x", REPLACED]}
    assert json.loads(attributes["big"]) == {"text": "x" * BIG}
    assert json.loads(attributes["pair"]) == {"text": "\U0001f600"}
    assert messages == [f"opened {REPLACED}"]
