"""Inbound trace headers sent to real servers: Flask under werkzeug and under gunicorn (WSGI, which fold
a repeated header into one `a,b` value) and FastAPI under uvicorn (ASGI, which keeps both values).

All run under `logfire-run` with `distributed_tracing=true`, so what decides is the strict W3C
parsing (agent/propagation/w3c.py), and every server must decide the same way, repeated headers included.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import OtlpReceiver, SpanRecord, agent_env, run_launcher
from http_services import Service, get, running

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
JOIN, NEW = "join", "new"

CASES: dict[str, tuple[list[tuple[str, str]], str, str]] = {
    # name: (headers as sent, join or new trace, the server span's tracestate)
    "valid": (
        [("traceparent", VALID), ("tracestate", "foo@bar@baz=1, ,congo=t61rcWkgMzE")],
        JOIN,
        "foo@bar@baz=1,congo=t61rcWkgMzE",
    ),
    # A duplicated key keeps the list, with the key's first entry (Trace Context: vendors MAY discard).
    "tracestate-duplicate": (
        [("traceparent", VALID), ("tracestate", "foo@bar@baz=1,congo=t61rcWkgMzE,congo=dup")],
        JOIN,
        "foo@bar@baz=1,congo=t61rcWkgMzE",
    ),
    "tracestate-duplicate-split": (
        [("traceparent", VALID), ("tracestate", "foo=1"), ("tracestate", "foo=2,bar=3")],
        JOIN,
        "foo=1,bar=3",
    ),
    # An invalid tracestate is discarded whole; the parent stays.
    "tracestate-bad-key": ([("traceparent", VALID), ("tracestate", "a=1,Bad=x")], JOIN, ""),
    "repeated": ([("traceparent", VALID), ("traceparent", f"00-{TRACE}-{'1' * 16}-01")], NEW, ""),
    "repeated-identical": ([("traceparent", VALID), ("traceparent", VALID)], NEW, ""),
    "version-ff": ([("traceparent", f"ff-{TRACE}-{PARENT}-01"), ("tracestate", "a=1")], NEW, ""),
    "zero-trace-id": ([("traceparent", f"00-{'0' * 32}-{PARENT}-01")], NEW, ""),
    "uppercase": ([("traceparent", VALID.upper())], NEW, ""),
    "version-00-too-long": ([("traceparent", VALID + "-" + "x" * 6000)], NEW, ""),
    "future-version": ([("traceparent", f"cc-{TRACE}-{PARENT}-01-more-fields")], JOIN, ""),
    "tracestate-split": (
        [("traceparent", VALID), ("tracestate", "a=1"), ("tracestate", "b=2")],
        JOIN,
        "a=1,b=2",
    ),
    "tracestate-32": (
        [("traceparent", VALID), ("tracestate", ",".join(f"k{index}=v" for index in range(32)))],
        JOIN,
        ",".join(f"k{index}=v" for index in range(32)),
    ),
    "tracestate-33": (
        [("traceparent", VALID), ("tracestate", ",".join(f"k{index}=v" for index in range(33)))],
        JOIN,
        "",
    ),
    # Two headers are one list: 20 + 13 members is more than 32.
    "tracestate-33-split": (
        [
            ("traceparent", VALID),
            ("tracestate", ",".join(f"k{index}=v" for index in range(20))),
            ("tracestate", ",".join(f"k{index}=v" for index in range(20, 33))),
        ],
        JOIN,
        "",
    ),
    # Empty members are allowed (and cost nothing); 8 KB fits every server's header limit.
    "tracestate-commas": ([("traceparent", VALID), ("tracestate", "a=1" + "," * 8000)], JOIN, "a=1"),
    "tracestate-garbage": ([("traceparent", VALID), ("tracestate", "=,;" * 2000)], JOIN, ""),
}


class Servers:
    def __init__(self, receiver: OtlpReceiver, **by_name: Service) -> None:
        self.receiver = receiver
        self.by_name = by_name


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    receiver = OtlpReceiver()
    logs = tmp_path_factory.mktemp("inbound")
    env = agent_env(receiver, LOGFIRE_DISTRIBUTED_TRACING="true")
    try:
        with (
            running("uvicorn", env, logs, name="asgi") as asgi,
            running("werkzeug", env, logs, name="wsgi") as wsgi,
            running("gunicorn", env, logs, name="gunicorn") as gunicorn,
        ):
            yield Servers(receiver, wsgi=wsgi, asgi=asgi, gunicorn=gunicorn)
    finally:
        receiver.close()


def _span_of(receiver: OtlpReceiver, case: str) -> SpanRecord:
    def mine(span: SpanRecord) -> bool:
        return span.kind == "SERVER" and any(
            f"via={case}" in str(value) for value in span.attributes.values()
        )

    spans = receiver.wait_for(lambda spans: any(mine(span) for span in spans))
    found = [span for span in spans if mine(span)]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("server", ["wsgi", "gunicorn", "asgi"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_inbound_trace_headers(servers: Servers, server: str, case: str) -> None:
    headers, outcome, tracestate = CASES[case]
    path = "/greet" if server == "asgi" else "/health"
    status, _body = get(f"{servers.by_name[server].url}{path}?via={server}-{case}", headers)
    assert status == 200
    span = _span_of(servers.receiver, f"{server}-{case}")
    if outcome == JOIN:
        assert (span.trace_id, span.parent_id) == (TRACE, PARENT)
    else:
        assert span.parent_id is None and span.trace_id != TRACE
    assert span.trace_state == tracestate


@pytest.mark.slow
def test_inbound_baggage_reaches_the_app_within_the_rules(servers: Servers) -> None:
    headers = [
        ("traceparent", VALID),
        ("baggage", 'user=alice;private, bad key=1,quote="x",node=DF%2028'),
        ("baggage", "tier = gold," + "big=" + "x" * 9000),
    ]
    status, body = get(f"{servers.by_name['asgi'].url}/greet?via=baggage", headers)
    assert status == 200
    assert body["baggage_seen"] == {"user": "alice", "node": "DF 28", "tier": "gold"}


def test_the_agent_swaps_in_the_strict_w3c_propagators(tmp_path: Path) -> None:
    # The strict propagators subclass OpenTelemetry's, and the baggage one has OpenTelemetry's name:
    # each class is compared with ours itself, and shown with its module.
    script = tmp_path / "which.py"
    script.write_text(
        "from opentelemetry import propagate\n"
        "from logfire_run.agent.propagation import w3c\n"
        "from logfire_run.agent.propagation.policy import DistributedTracingPolicy\n"
        "policy = propagate.get_global_textmap()\n"
        "print(type(policy) is DistributedTracingPolicy)\n"
        "for propagator in getattr(policy.inner, '_propagators', [policy.inner]):\n"
        "    kind = type(propagator)\n"
        "    print(kind.__module__, kind.__qualname__, kind is getattr(w3c, kind.__qualname__, None))\n"
    )
    ours = {
        "tracecontext": "logfire_run.agent.propagation.w3c StrictTraceContextPropagator True",
        "baggage": "logfire_run.agent.propagation.w3c StrictBaggagePropagator True",
    }
    for propagators, expected in [
        (None, ["tracecontext", "baggage"]),
        ("tracecontext", ["tracecontext"]),
        ("baggage,tracecontext", ["baggage", "tracecontext"]),
    ]:
        extra = {} if propagators is None else {"OTEL_PROPAGATORS": propagators}
        result = run_launcher(["--exporter", "none", "python", str(script)], agent_env(**extra))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["True"] + [ours[name] for name in expected]
