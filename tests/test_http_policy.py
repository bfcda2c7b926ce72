"""The `distributed_tracing` policy across real processes: B under each LOGFIRE_DISTRIBUTED_TRACING value.

The test process is the outside caller: it sends A a `traceparent` (trace T, span S) and a `baggage`
header. A (Flask under werkzeug, policy `true`) joins T and calls B twice; B (FastAPI under uvicorn)
decides according to its own policy. A, the caller of B, always injects.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from logfire_run.agent.propagation.policy import WARNING_TEXT

from conftest import OtlpReceiver, SpanRecord, StderrExpectation, agent_env, without_fastapi_operations
from http_services import get, running

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
INBOUND = [("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01"), ("baggage", "user=alice,tier=gold")]
CHAIN_CALLS = 3


def _chain(
    receiver: OtlpReceiver,
    tmp_path: Path,
    b_mode: str | None,
    *,
    b_server: str = "uvicorn",
    a_mode: str = "true",
    b_stderr: StderrExpectation = "",
) -> tuple[list[dict[str, object]], list[SpanRecord], str]:
    """Run CHAIN_CALLS requests through A and B; return B's answers, all spans and B's stderr.

    A's stderr must be empty, and B's what `b_stderr` says (empty by default).
    """
    logs = tmp_path / "logs"
    b_extra = {} if b_mode is None else {"LOGFIRE_DISTRIBUTED_TRACING": b_mode}
    b_env = agent_env(receiver, LOGFIRE_SERVICE_NAME="service-b", **b_extra)
    answers: list[dict[str, object]] = []
    with running(b_server, b_env, logs, name="b", expect_stderr=b_stderr) as service_b:
        a_env = agent_env(
            receiver,
            LOGFIRE_SERVICE_NAME="service-a",
            LOGFIRE_DISTRIBUTED_TRACING=a_mode,
            B_URL=service_b.url,
        )
        with running("werkzeug", a_env, logs, name="a") as service_a:
            for _ in range(CHAIN_CALLS):
                status, body = get(f"{service_a.url}/chain", INBOUND)
                assert status == 200, body
                answers.extend(body["answers"])
            receiver.wait_count(5 * CHAIN_CALLS)
    return answers, without_fastapi_operations(receiver.spans), service_b.stderr()


def _split(spans: list[SpanRecord]) -> tuple[list[SpanRecord], list[SpanRecord], list[SpanRecord]]:
    a_servers = [span for span in spans if span.service == "service-a" and span.kind == "SERVER"]
    a_clients = [span for span in spans if span.service == "service-a" and span.kind == "CLIENT"]
    b_servers = [span for span in spans if span.service == "service-b" and span.kind == "SERVER"]
    assert len(spans) == len(a_servers) + len(a_clients) + len(b_servers)
    assert (len(a_servers), len(a_clients), len(b_servers)) == (CHAIN_CALLS, 2 * CHAIN_CALLS, 2 * CHAIN_CALLS)
    return a_servers, a_clients, b_servers


def _assert_caller_injected(answers: list[dict[str, object]], a_clients: list[SpanRecord]) -> None:
    client_ids = {span.span_id for span in a_clients}
    for answer in answers:
        (traceparent,) = answer["traceparent"]  # type: ignore[misc]
        _version, trace_id, parent_id, _flags = str(traceparent).split("-")
        assert trace_id == TRACE_ID and parent_id in client_ids
        assert answer["baggage"] == ["user=alice,tier=gold"]


def _assert_joined(spans: list[SpanRecord], answers: list[dict[str, object]]) -> None:
    a_servers, a_clients, b_servers = _split(spans)
    assert {span.trace_id for span in spans} == {TRACE_ID}
    assert {span.parent_id for span in a_servers} == {SPAN_ID}
    assert sorted(span.parent_id or "" for span in b_servers) == sorted(span.span_id for span in a_clients)
    _assert_caller_injected(answers, a_clients)
    assert all(answer["baggage_seen"] == {"user": "alice", "tier": "gold"} for answer in answers)


def _assert_refused(spans: list[SpanRecord], answers: list[dict[str, object]]) -> list[SpanRecord]:
    a_servers, a_clients, b_servers = _split(spans)
    assert {span.trace_id for span in a_servers + a_clients} == {TRACE_ID}
    # Each request B received starts a trace of its own: a root span, not T.
    assert all(span.parent_id is None for span in b_servers)
    assert TRACE_ID not in {span.trace_id for span in b_servers}
    assert len({span.trace_id for span in b_servers}) == len(b_servers)
    _assert_caller_injected(answers, a_clients)
    assert all(answer["baggage_seen"] == {} for answer in answers), "inbound baggage reached the app"
    return b_servers


@pytest.mark.slow
def test_unset_joins_and_warns_once_per_process(receiver: OtlpReceiver, tmp_path: Path) -> None:
    # B's warnings are counted below.
    answers, spans, b_stderr = _chain(receiver, tmp_path, None, b_server="uvicorn-workers", b_stderr=None)
    _assert_joined(spans, answers)
    processes = {answer["pid"] for answer in answers}
    warnings = b_stderr.count(f"RuntimeWarning: {WARNING_TEXT}")
    # 2 * CHAIN_CALLS requests, one warning per worker process that served any of them.
    assert warnings == len(processes), b_stderr
    assert "LOGFIRE_DISTRIBUTED_TRACING" in WARNING_TEXT and "distributed_tracing" in WARNING_TEXT
    lines = [line for line in b_stderr.splitlines() if line.strip()]
    assert all(WARNING_TEXT in line or line.startswith("  ") for line in lines), b_stderr


def test_true_joins_silently(receiver: OtlpReceiver, tmp_path: Path) -> None:
    answers, spans, _ = _chain(receiver, tmp_path, "true")
    _assert_joined(spans, answers)


@pytest.mark.slow
def test_false_starts_new_traces_and_drops_baggage(receiver: OtlpReceiver, tmp_path: Path) -> None:
    answers, spans, _ = _chain(receiver, tmp_path, "false")
    b_servers = _assert_refused(spans, answers)
    assert all(span.links == [] for span in b_servers)


@pytest.mark.slow
def test_link_starts_new_traces_linked_to_the_caller(receiver: OtlpReceiver, tmp_path: Path) -> None:
    answers, spans, _ = _chain(receiver, tmp_path, "link")
    b_servers = _assert_refused(spans, answers)
    _, a_clients, _ = _split(spans)
    client_ids = {span.span_id for span in a_clients}
    linked = []
    for span in b_servers:
        ((trace_id, span_id),) = span.links
        assert trace_id == TRACE_ID
        linked.append(span_id)
    assert sorted(linked) == sorted(client_ids)


@pytest.mark.slow
def test_a_caller_that_refuses_its_own_inbound_context_still_injects(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    answers, spans, _ = _chain(receiver, tmp_path, "true", a_mode="false")
    a_servers, a_clients, b_servers = _split(spans)
    assert all(span.parent_id is None and span.trace_id != TRACE_ID for span in a_servers)
    # B joins the trace A started: A injected its own context.
    server_by_id = {span.span_id: span for span in a_servers}
    client_by_id = {span.span_id: span for span in a_clients}
    for span in b_servers:
        parent = client_by_id[span.parent_id or ""]
        assert span.trace_id == parent.trace_id and parent.parent_id in server_by_id
    for answer in answers:
        (traceparent,) = answer["traceparent"]  # type: ignore[misc]
        assert str(traceparent).split("-")[2] in client_by_id
        assert answer["baggage"] == [] and answer["baggage_seen"] == {}
