"""An endpoint that raises: the client gets the same 500 with and without the agent, and the server
span records the exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import OtlpReceiver, agent_env, without_fastapi_operations
from http_services import raw_response, running

STATUS_ERROR = 2  # OTLP Status.STATUS_CODE_ERROR


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("werkzeug", "service A failed on purpose"),
        pytest.param("uvicorn", "service B failed on purpose", marks=pytest.mark.slow),
    ],
)
def test_raising_endpoint_is_unchanged_and_recorded(
    receiver: OtlpReceiver, tmp_path: Path, server: str, message: str
) -> None:
    # The app's own error log (the traceback of the raising endpoint) is on stderr, with and without the
    # agent; the agent adds nothing to it.
    def app_error_log_only(stderr: str) -> bool:
        return f"RuntimeError: {message}" in stderr and "logfire-run" not in stderr

    with running(
        server, agent_env(), tmp_path / "plain", agent=False, expect_stderr=app_error_log_only
    ) as plain:
        without_agent = raw_response(f"{plain.url}/boom")
    traced_env = agent_env(receiver, LOGFIRE_DISTRIBUTED_TRACING="true")
    with running(server, traced_env, tmp_path / "agent", expect_stderr=app_error_log_only) as traced:
        with_agent = raw_response(f"{traced.url}/boom")
        receiver.wait_for(lambda found: any(span.kind == "SERVER" for span in found))
    spans = receiver.spans  # the server has stopped (and flushed): every span it made is here

    assert without_agent[0] == 500
    assert with_agent == without_agent  # status, body and headers (Date and Server aside)

    (span,) = without_fastapi_operations(spans)
    assert (span.kind, span.name) == ("SERVER", "GET /boom")
    assert span.status == STATUS_ERROR
    if "exception" not in span.events:
        # FastAPI's own telemetry (0.165+) records the exception as a log record, not a span event, and
        # marks the span with the exception's type (docs/http.md).
        assert server == "uvicorn" and span.attributes.get("error.type") == "RuntimeError", span
