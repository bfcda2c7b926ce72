"""The distributed_tracing policy, in real processes under the launcher.

Each run extracts the same inbound headers three ways: through OpenTelemetry's raw `extract` (what a
server instrumentation does), through `attach_context(carrier)` and through
`attach_context(carrier, third_party=True)`, and starts one span from each.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import OtlpReceiver, SpanRecord, StderrExpectation, agent_env, run_launcher

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"

SCRIPT = textwrap.dedent(
    f"""
    import sys
    from opentelemetry import baggage, propagate, trace
    import logfire_run
    from logfire_run.propagate import attach_context

    headers = {{
        "traceparent": "00-{TRACE_ID}-{SPAN_ID}-01",
        "baggage": "user=alice",
    }}
    tracer = trace.get_tracer("policy-test")
    for request in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
        ctx = propagate.extract(headers)
        with tracer.start_as_current_span("raw extract", context=ctx, kind=trace.SpanKind.SERVER) as span:
            span.set_attribute("baggage.user", str(baggage.get_baggage("user", ctx)))
    with attach_context(headers):
        logfire_run.info("first party")
    with attach_context(headers, third_party=True):
        logfire_run.info("third party")
    print("done")
    """
)


def _run(
    tmp_path: Path,
    receiver: OtlpReceiver,
    *flags: str,
    requests: int = 1,
    expect_stderr: StderrExpectation = "",
    **env: str,
) -> tuple[str, dict[str, SpanRecord]]:
    script = tmp_path / "policy_app.py"
    script.write_text(SCRIPT)
    result = run_launcher(
        [*flags, "python", str(script), str(requests)],
        agent_env(receiver, **env),
        expect_stderr=expect_stderr,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    spans = receiver.wait_count(requests + 2)
    assert len(spans) == requests + 2
    return result.stderr, {span.name: span for span in spans}


def _joined(span: SpanRecord) -> bool:
    return span.trace_id == TRACE_ID and span.parent_id == SPAN_ID


def test_default_warns_once_and_extracts(tmp_path: Path, receiver: OtlpReceiver) -> None:
    stderr, spans = _run(tmp_path, receiver, requests=3, expect_stderr=None)  # the warning, checked below
    assert stderr.count("RuntimeWarning") == 1, stderr
    assert "distributed_tracing is not set" in stderr
    assert "LOGFIRE_DISTRIBUTED_TRACING=true" in stderr and "LOGFIRE_DISTRIBUTED_TRACING=false" in stderr
    assert _joined(spans["raw extract"])
    assert spans["raw extract"].attributes["baggage.user"] == "alice"
    assert _joined(spans["first party"]) and _joined(spans["third party"])


@pytest.mark.parametrize(
    "value", ["true", *(pytest.param(v, marks=pytest.mark.slow) for v in ("1", "T", "TRUE"))]
)
def test_true_extracts_silently(tmp_path: Path, receiver: OtlpReceiver, value: str) -> None:
    _, spans = _run(tmp_path, receiver, LOGFIRE_DISTRIBUTED_TRACING=value)
    assert all(_joined(span) for span in spans.values())
    assert spans["raw extract"].attributes["baggage.user"] == "alice"


@pytest.mark.parametrize(
    "flags",
    [
        ("--distributed-tracing", "false"),
        pytest.param(("--distributed-tracing=0",), marks=pytest.mark.slow),
        pytest.param(("--distributed-tracing", "F"), marks=pytest.mark.slow),
    ],
)
def test_false_refuses_context_and_baggage(
    tmp_path: Path, receiver: OtlpReceiver, flags: tuple[str, ...]
) -> None:
    _, spans = _run(tmp_path, receiver, *flags)
    raw = spans["raw extract"]
    assert raw.trace_id != TRACE_ID and raw.parent_id is None
    assert raw.links == []
    assert raw.attributes["baggage.user"] == "None"
    # First-party bypasses the policy; third_party=True obeys it.
    assert _joined(spans["first party"])
    third = spans["third party"]
    assert third.trace_id != TRACE_ID and third.parent_id is None


def test_link_refuses_and_links(tmp_path: Path, receiver: OtlpReceiver) -> None:
    _, spans = _run(tmp_path, receiver, LOGFIRE_DISTRIBUTED_TRACING="Link")
    raw = spans["raw extract"]
    assert raw.trace_id != TRACE_ID and raw.parent_id is None
    assert raw.links == [(TRACE_ID, SPAN_ID)]
    assert raw.attributes["baggage.user"] == "None"
    assert _joined(spans["first party"])
    third = spans["third party"]
    assert third.parent_id is None and third.links == [(TRACE_ID, SPAN_ID)]


def test_configure_changes_the_same_policy_at_run_time(tmp_path: Path, receiver: OtlpReceiver) -> None:
    script = tmp_path / "reconfigure.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from opentelemetry import propagate, trace
            import logfire_run

            headers = {{"traceparent": "00-{TRACE_ID}-{SPAN_ID}-01"}}
            tracer = trace.get_tracer("t")
            for mode in (False, True, "link", "false"):
                logfire_run.configure(distributed_tracing=mode)
                with tracer.start_as_current_span(f"mode {{mode}}", context=propagate.extract(headers)):
                    pass
            # Setting a propagator later changes what the policy wraps, never the policy itself, and
            # what it wraps is the strict W3C propagator (a subclass of OpenTelemetry's, so the class
            # itself is compared: the baggage one even has OpenTelemetry's name).
            from opentelemetry.baggage.propagation import W3CBaggagePropagator
            from opentelemetry.propagators.composite import CompositePropagator
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
            from logfire_run.agent.propagation import w3c
            from logfire_run.agent.propagation.policy import DistributedTracingPolicy

            def describe(propagator):
                return f"{{type(propagator).__module__}}.{{type(propagator).__qualname__}}"

            propagate.set_global_textmap(TraceContextTextMapPropagator())
            propagate.set_global_textmap(propagate.get_global_textmap())
            policy = propagate.get_global_textmap()
            print(type(policy) is DistributedTracingPolicy, describe(policy))
            print(type(policy.inner) is w3c.StrictTraceContextPropagator, describe(policy.inner))
            with tracer.start_as_current_span("after set_global_textmap", context=propagate.extract(headers)):
                pass
            propagate.set_global_textmap(
                CompositePropagator([W3CBaggagePropagator(), TraceContextTextMapPropagator()])
            )
            baggage, context = propagate.get_global_textmap().inner._propagators
            print(type(baggage) is w3c.StrictBaggagePropagator, describe(baggage))
            print(type(context) is w3c.StrictTraceContextPropagator, describe(context))
            """
        )
    )
    result = run_launcher(["python", str(script)], agent_env(receiver))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "True logfire_run.agent.propagation.policy.DistributedTracingPolicy",
        "True logfire_run.agent.propagation.w3c.StrictTraceContextPropagator",
        "True logfire_run.agent.propagation.w3c.StrictBaggagePropagator",
        "True logfire_run.agent.propagation.w3c.StrictTraceContextPropagator",
    ]
    spans = {span.name: span for span in receiver.wait_count(5)}
    assert not _joined(spans["mode False"])
    assert _joined(spans["mode True"])
    assert spans["mode link"].links == [(TRACE_ID, SPAN_ID)] and spans["mode link"].parent_id is None
    assert not _joined(spans["mode false"])
    assert not _joined(spans["after set_global_textmap"])


@pytest.mark.slow
def test_configure_with_a_bad_value_reports_and_keeps_going(tmp_path: Path, receiver: OtlpReceiver) -> None:
    code = "import logfire_run\nlogfire_run.configure(distributed_tracing='maybe')\nprint('still running')\n"
    result = run_launcher(
        ["python", "-c", code],
        agent_env(receiver),
        # Reported once, in one line that names the accepted values.
        expect_stderr=re.compile(
            r"logfire-run: [^\n]*invalid distributed tracing value 'maybe'[^\n]*"
            r"warn, true \(1, t\), false \(0, f\) or link[^\n]*\n"
        ),
    )
    assert result.returncode == 0
    assert result.stdout == "still running\n"


def test_injection_is_never_affected(tmp_path: Path, receiver: OtlpReceiver) -> None:
    code = (
        "import logfire_run\nfrom logfire_run.propagate import get_context\n"
        "with logfire_run.span('out'):\n    print(sorted(get_context()))\n"
    )
    result = run_launcher(["--distributed-tracing", "false", "python", "-c", code], agent_env(receiver))
    assert result.stdout == "['traceparent']\n"


@pytest.mark.parametrize(
    "carrier",
    [
        "{'traceparent': 'garbage'}",
        *(
            pytest.param(carrier, marks=pytest.mark.slow)
            for carrier in (
                "None",
                "{}",
                "{'traceparent': 5}",
                "[1, 2]",
                "{'traceparent': '00-' + 'f' * 200}",
            )
        ),
    ],
)
def test_malformed_carrier_starts_a_new_trace(tmp_path: Path, receiver: OtlpReceiver, carrier: str) -> None:
    code = (
        "import logfire_run\nfrom logfire_run.propagate import attach_context\n"
        "with logfire_run.span('outer'):\n"
        f"    with attach_context({carrier}):\n"
        "        logfire_run.info('inside')\n"
    )
    result = run_launcher(["python", "-c", code], agent_env(receiver))
    assert result.returncode == 0, result.stderr
    spans = {span.name: span for span in receiver.wait_count(2)}
    assert spans["inside"].parent_id is None
    assert spans["inside"].trace_id != spans["outer"].trace_id


@pytest.mark.slow
def test_attach_context_restores_the_previous_context_on_error(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    code = textwrap.dedent(
        f"""
        import logfire_run
        from logfire_run.propagate import attach_context
        with logfire_run.span("outer"):
            try:
                with attach_context({{"traceparent": "00-{TRACE_ID}-{SPAN_ID}-01"}}):
                    raise ValueError("x")
            except ValueError:
                pass
            logfire_run.info("after")
        """
    )
    result = run_launcher(["python", "-c", code], agent_env(receiver))
    assert result.returncode == 0, result.stderr
    spans = {span.name: span for span in receiver.wait_count(2)}
    assert spans["after"].parent_id == spans["outer"].span_id


@pytest.mark.parametrize("mode", ["", "false", "link"])
def test_first_party_carriers_do_not_depend_on_the_sdk(tmp_path: Path, mode: str) -> None:
    # The SDK fails to come up in this process (its set-up raises); first-party carriers are still
    # attached whole, without a warning, and a third-party one still obeys the policy.
    code = textwrap.dedent(
        f"""
        import warnings
        warnings.simplefilter("error")  # the policy's warning would raise here
        from logfire_run.agent.process import sdk
        def broken(self):
            raise RuntimeError("set-up failed on purpose")
        sdk.TracingSdk.install = broken
        from opentelemetry import baggage, trace
        from logfire_run.propagate import attach_context
        carrier = {{"traceparent": "00-{TRACE_ID}-{SPAN_ID}-01", "baggage": "tenant=7"}}
        def seen():
            return (f"{{trace.get_current_span().get_span_context().trace_id:032x}}",
                    dict(baggage.get_all()))
        with attach_context(carrier):
            print(*seen())
        with attach_context(carrier, third_party=True):
            print(*seen())
        """
    )
    env = agent_env(LOGFIRE_RUN="1", LOGFIRE_DISTRIBUTED_TRACING=mode)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    first, third = result.stdout.splitlines()
    assert first == f"{TRACE_ID} {{'tenant': '7'}}"
    if mode == "":
        # Default: third-party context is accepted with a warning, which `-W error` turned into one line.
        assert third == first
        assert "logfire-run accepted trace context" in result.stderr
    else:
        assert third == f"{0:032x} {{}}"
    assert "set-up failed on purpose" in result.stderr
