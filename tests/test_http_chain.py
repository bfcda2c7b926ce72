"""One trace across three processes: a `requests` script -> Flask service A -> FastAPI service B, twice.

A calls B with `httpx.Client` and with `httpx.AsyncClient`. Every process runs under `logfire-run`
with no tracing code of its own (examples/http_chain), and exports over OTLP to the test's receiver.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import (
    OtlpReceiver,
    SpanRecord,
    agent_env,
    render_tree,
    run_launcher,
    without_fastapi_operations,
)
from http_services import EXAMPLE, running

EXPECTED_TREE = """\
CLIENT GET [client]
  SERVER GET /chain [service-a]
    CLIENT GET [service-a]
      SERVER GET /greet [service-b]
    CLIENT GET [service-a]
      SERVER GET /greet [service-b]"""


def _run_chain(receiver: OtlpReceiver, tmp_path: Path, server_a: str, server_b: str) -> None:
    logs = tmp_path / "logs"
    b_env = agent_env(receiver, LOGFIRE_SERVICE_NAME="service-b", LOGFIRE_DISTRIBUTED_TRACING="true")
    with running(server_b, b_env, logs, name="b") as service_b:
        a_env = agent_env(
            receiver,
            LOGFIRE_SERVICE_NAME="service-a",
            LOGFIRE_DISTRIBUTED_TRACING="true",
            B_URL=service_b.url,
        )
        with running(server_a, a_env, logs, name="a") as service_a:
            client = run_launcher(
                ["python", "client.py"],
                agent_env(receiver, LOGFIRE_SERVICE_NAME="client", A_URL=service_a.url),
                cwd=EXAMPLE,
            )
            assert client.returncode == 0, client.stderr
            receiver.wait_count(6)
        # Both servers are stopped (and flushed) here: whatever they sent has arrived.

    answer = json.loads(client.stdout)
    spans = without_fastapi_operations(receiver.spans)
    assert render_tree(spans) == EXPECTED_TREE, render_tree(spans)
    assert len(spans) == 6
    assert len({span.trace_id for span in spans}) == 1

    by_kind: dict[tuple[str, str], list[SpanRecord]] = {}
    for span in spans:
        by_kind.setdefault((span.service, span.kind), []).append(span)
    (root,) = by_kind[("client", "CLIENT")]
    (server_a_span,) = by_kind[("service-a", "SERVER")]
    assert root.parent_id is None
    assert server_a_span.parent_id == root.span_id
    a_clients = by_kind[("service-a", "CLIENT")]
    b_servers = by_kind[("service-b", "SERVER")]
    assert {span.parent_id for span in a_clients} == {server_a_span.span_id}

    # Each outgoing request of A had its own client span, and B received that span's id in traceparent.
    assert answer["status"] == 200
    answers = answer["body"]["answers"]
    assert [item["via"] for item in answers] == ["httpx.Client", "httpx.AsyncClient"]
    received = {}
    for item in answers:
        (traceparent,) = item["traceparent"]
        version, trace_id, parent_id, _flags = traceparent.split("-")
        assert version == "00" and trace_id == root.trace_id
        received[item["via"]] = parent_id
    assert len(set(received.values())) == 2
    for client_span in a_clients:
        url = str(client_span.attributes.get("url.full") or client_span.attributes.get("http.url"))
        via = "httpx.AsyncClient" if "AsyncClient" in url else "httpx.Client"
        assert received[via] == client_span.span_id, (via, url)
    assert sorted(span.parent_id or "" for span in b_servers) == sorted(received.values())


def test_chain_under_werkzeug_and_uvicorn(receiver: OtlpReceiver, tmp_path: Path) -> None:
    _run_chain(receiver, tmp_path, "werkzeug", "uvicorn")


@pytest.mark.slow
def test_chain_under_gunicorn_and_uvicorn_workers(receiver: OtlpReceiver, tmp_path: Path) -> None:
    _run_chain(receiver, tmp_path, "gunicorn", "uvicorn-workers")


@pytest.mark.slow
def test_chain_under_gunicorn_preload(receiver: OtlpReceiver, tmp_path: Path) -> None:
    # The app (and Flask's instrumentor, and the SDK) are loaded in the arbiter, before the fork.
    _run_chain(receiver, tmp_path, "gunicorn-preload", "uvicorn")
