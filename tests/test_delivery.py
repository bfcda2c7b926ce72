"""What a process says about delivery: the signal and the real cause of a failure, and exact counts.

Every span and record the app makes is delivered or counted: one `logfire-run:` line per process at
exit gives the numbers dropped (exports the backend did not take, a full queue, the exit budget),
and what was on the wire at exit (which the backend may have) is not counted as dropped. A backend
that takes traces and refuses logs gets a line about logs, not "exporting spans failed".
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import agent_env, run_launcher, write_app
from otlp_receivers import GrpcReceiver, HttpReceiver, ThirdPartyReceiver

#: A span and a record in it; the app's logger writes to its stdout (nothing of its own on stderr).
SPAN_AND_RECORD = """
import logging, sys
import logfire_run
logger = logging.getLogger("app")
logger.addHandler(logging.StreamHandler(sys.stdout))
logger.propagate = False
with logfire_run.span("work"):
    logger.warning("a record")
print("app ran")
"""


def _otlp_env(endpoint: str, protocol: str = "http/protobuf", **extra: str) -> dict[str, str]:
    return agent_env(
        None,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        LOGFIRE_EXPORTER="otlp",
        **extra,
    )


def _dropped(stderr: str, noun: str = "spans?") -> int:
    found = re.findall(
        rf"^logfire-run: ([\d,]+) {noun} (?:and [^\n]* )?dropped in this process", stderr, re.M
    )
    assert len(found) == 1, stderr
    return int(found[0].replace(",", ""))


@pytest.mark.slow  # a receiver
@pytest.mark.parametrize("refusal", [404, 405])
def test_a_backend_that_takes_traces_but_refuses_logs_gets_a_line_about_logs(
    tmp_path: Path, refusal: int
) -> None:
    receiver = HttpReceiver(answer=lambda path, _number: refusal if path.endswith("/v1/logs") else 200)
    try:
        write_app(tmp_path, SPAN_AND_RECORD)
        result = run_launcher(
            ["python", "app.py"], _otlp_env(receiver.endpoint), cwd=tmp_path, expect_stderr=None
        )
        assert [span.name for span in receiver.wait_count(1)] == ["work"]
    finally:
        receiver.close()
    assert result.returncode == 0 and result.stdout == "a record\napp ran\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(
        "logfire-run: exporting logs failed: the backend there does not take OTLP logs"
    )
    assert "OTEL_LOGS_EXPORTER=none" in lines[0]
    assert lines[1].startswith("logfire-run: 1 log record dropped in this process: 1 whose export failed")
    assert "spans" not in result.stderr.replace("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "")


@pytest.mark.slow  # a receiver
def test_over_grpc_a_traces_only_backend_gets_no_advice_to_switch_protocol(tmp_path: Path) -> None:
    receiver = GrpcReceiver(logs=False)  # a TraceService and no LogsService: UNIMPLEMENTED for logs
    try:
        write_app(tmp_path, SPAN_AND_RECORD)
        env = _otlp_env(receiver.endpoint, "grpc")
        result = run_launcher(["python", "app.py"], env, cwd=tmp_path, expect_stderr=None)
        assert [span.name for span in receiver.wait_count(1)] == ["work"]
    finally:
        receiver.close()
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(
        "logfire-run: exporting logs failed: the backend there does not take OTLP logs"
    )
    assert "http/protobuf" not in result.stderr and "exporting spans" not in result.stderr
    assert _dropped(result.stderr, "log records?") == 1


@pytest.mark.slow  # a receiver
def test_only_the_traces_endpoint_set_sends_no_logs_to_a_default(tmp_path: Path) -> None:
    # OpenTelemetry's rule: a signal's own endpoint is for that signal. Logs have no destination:
    # none go to http://localhost:4318 (whatever listens there, or nothing: a line per process).
    receiver = HttpReceiver()
    try:
        write_app(tmp_path, SPAN_AND_RECORD)
        env = agent_env(
            None, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.endpoint}/v1/traces", LOGFIRE_EXPORTER="otlp"
        )
        result = run_launcher(["python", "app.py"], env, cwd=tmp_path)
        assert [span.name for span in receiver.wait_count(1)] == ["work"]
        info = run_launcher(["--info"], env)
    finally:
        receiver.close()
    assert result.stdout == "a record\napp ran\n"
    assert "log records are not exported: only the traces endpoint is set" in info.stdout, info.stdout


@pytest.mark.slow  # a receiver
def test_info_check_sends_a_test_log_record_too(tmp_path: Path) -> None:
    receiver = ThirdPartyReceiver("http/protobuf")
    try:
        result = run_launcher(["--info", "--check"], _otlp_env(receiver.endpoint))
        logs = receiver.wait_for_logs(1)
    finally:
        receiver.close()
    assert result.returncode == 0, result.stdout
    assert (
        f"otlp logs: {receiver.endpoint}/v1/logs (http/protobuf) accepted a test log record" in result.stdout
    )
    assert [log["body"] for log in logs] == ["logfire-run check"]


@pytest.mark.slow  # a receiver
def test_info_check_fails_when_the_backend_refuses_logs(tmp_path: Path) -> None:
    receiver = HttpReceiver(answer=lambda path, _number: 405 if path.endswith("/v1/logs") else 200)
    try:
        result = run_launcher(["--info", "--check"], _otlp_env(receiver.endpoint))
    finally:
        receiver.close()
    assert result.returncode == 1, result.stdout
    assert "accepted a test span" in result.stdout
    assert "otlp logs: " in result.stdout and "did not accept the test log record" in result.stdout
    assert "does not take OTLP logs" in result.stdout


FLUSHED_ROUNDS = """
import logfire_run
for round in range(10):
    for index in range(50):
        with logfire_run.span(f"round {round}"):
            pass
    logfire_run.force_flush()                # one request per round
print("app ran")
"""


@pytest.mark.slow  # a receiver
def test_a_flapping_collector_s_losses_are_counted_exactly(tmp_path: Path) -> None:
    # Every other request is refused for good (400: not retried): those spans are lost, and counted.
    receiver = HttpReceiver(answer=lambda _path, number: 400 if number % 2 else 200)
    try:
        write_app(tmp_path, FLUSHED_ROUNDS)
        result = run_launcher(
            ["python", "app.py"], _otlp_env(receiver.endpoint), cwd=tmp_path, expect_stderr=None
        )
        received = len(receiver.wait_count(250))
    finally:
        receiver.close()
    assert result.returncode == 0 and result.stdout == "app ran\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("logfire-run: ") for line in lines), result.stderr
    assert lines[0].startswith("logfire-run: exporting spans failed:")
    assert received == 250
    assert _dropped(result.stderr) == 500 - received
    assert "dropped in this process: 250 whose export failed" in lines[1]


MANY_THEN_EXIT = """
import logfire_run
for index in range(1500):
    with logfire_run.span(f"span {index}"):
        pass
"""


@pytest.mark.slow  # a collector that takes 3 s to answer, and the 2 s exit budget
def test_the_exit_count_is_exact_with_a_slow_collector(tmp_path: Path) -> None:
    # The collector takes each request as it arrives and answers 3 s later: alive, slow. The process
    # exits within its 2 s budget: what it never sent is dropped, what was on the wire arrived.
    receiver = HttpReceiver(hold=3.0)
    try:
        write_app(tmp_path, MANY_THEN_EXIT)
        result = run_launcher(
            ["python", "app.py"], _otlp_env(receiver.endpoint), cwd=tmp_path, expect_stderr=None
        )
        received = len(receiver.spans)
    finally:
        receiver.close()
    assert result.returncode == 0
    assert 0 < received < 1500, result.stderr
    assert _dropped(result.stderr) == 1500 - received, (received, result.stderr)
    assert "sent at exit got no answer within the exit budget (2 s, at exit): the backend may have them" in (
        result.stderr
    )


# OpenTelemetry's own warnings, outside the exporters

DETACHING_APP = """
import contextvars, logging, sys
import logfire_run
from opentelemetry import trace

if sys.argv[1:] == ["configured"]:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")


def steps():
    with logfire_run.span("inside a generator"):
        yield 1
        yield 2


for _ in range(3):
    generator = steps()
    next(generator)
    contextvars.copy_context().run(generator.close)  # ends the span in another context
print("done")
"""


def test_opentelemetry_warnings_are_one_line_each_unless_the_app_shows_them(tmp_path: Path) -> None:
    # Closing a generator that holds a span in another context makes OpenTelemetry log "Failed to
    # detach context" with its traceback, through Python's last resort onto the app's stderr: three
    # tracebacks the app never printed without the agent. They are one line, once.
    write_app(tmp_path, DETACHING_APP)
    result = run_launcher(["python", "app.py"], agent_env(), cwd=tmp_path, expect_stderr=None)
    assert (result.returncode, result.stdout) == (0, "done\n")
    assert re.fullmatch(
        r"logfire-run: OpenTelemetry \(opentelemetry\.context\): Failed to detach context \(ValueError: "
        r"<Token [^\n]*> was created in a different Context\) \(said once per process; LOGFIRE_DEBUG=1 "
        r"shows every occurrence\)\n",
        result.stderr,
    ), result.stderr
    # An app that configured logging gets OpenTelemetry's records through its own handlers, as it
    # would without the agent, and nothing from the agent.
    configured = run_launcher(
        ["python", "app.py", "configured"], agent_env(), cwd=tmp_path, expect_stderr=None
    )
    assert configured.stdout == "done\n"
    assert configured.stderr.count("ERROR opentelemetry.context: Failed to detach context\nTraceback") == 3
    assert not [line for line in configured.stderr.splitlines() if line.startswith("logfire-run")]
    # Under LOGFIRE_DEBUG each occurrence is shown with its traceback.
    debug = run_launcher(["python", "app.py"], agent_env(LOGFIRE_DEBUG="1"), cwd=tmp_path, expect_stderr=None)
    assert debug.stderr.count("opentelemetry.context: Failed to detach context\nTraceback") == 3
