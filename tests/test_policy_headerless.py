"""Extraction from a request that carries no trace headers: the same answer, without parsing anything."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import DefaultGetter, TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from logfire_run.agent.propagation.policy import DistributedTracingPolicy, new_policy

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MODES: list[Any] = [None, True, False, "link"]


class AskedGetter(DefaultGetter):
    """The default getter, noting which headers it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get(self, carrier: Any, key: str) -> Any:
        self.asked.append(key)
        return super().get(carrier, key)


def policy(mode: Any, inner: TextMapPropagator) -> DistributedTracingPolicy:
    made = new_policy(mode)
    made.inner = inner
    return made


def default_propagators() -> TextMapPropagator:
    return CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


@pytest.mark.parametrize("mode", MODES)
def test_a_request_without_trace_headers_gets_no_parent_and_reads_only_the_two_headers(mode: Any) -> None:
    gate = policy(mode, default_propagators())
    carrier = {"host": "example.com", "tracestate": "vendor=ignored-without-traceparent"}
    getter = AskedGetter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extracted = gate.extract(carrier, getter=getter)
        given = baggage.set_baggage("kept", "yes", Context())
        assert gate.extract(carrier, given) is given
    assert not trace.get_current_span(extracted).get_span_context().is_valid
    assert baggage.get_all(extracted) == {}
    # Refusing (False) reads nothing at all; the other modes look for the two headers and stop there.
    assert getter.asked == ([] if mode is False else ["traceparent", "baggage"])


@pytest.mark.parametrize("mode", [None, True])
def test_a_request_with_a_trace_header_still_takes_the_full_path(mode: Any) -> None:
    gate = policy(mode, default_propagators())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extracted = gate.extract({"traceparent": TRACEPARENT, "baggage": "user=alice"})
    span_context = trace.get_current_span(extracted).get_span_context()
    assert f"{span_context.trace_id:032x}" == TRACEPARENT[3:35]
    assert baggage.get_baggage("user", extracted) == "alice"


def test_baggage_first_keeps_its_own_answer_for_a_headerless_request() -> None:
    # Baggage alone (or first) falls back to the current context: no early return changes that.
    gate = policy(True, CompositePropagator([W3CBaggagePropagator(), TraceContextTextMapPropagator()]))
    expected = CompositePropagator([W3CBaggagePropagator(), TraceContextTextMapPropagator()]).extract({})
    assert dict(gate.extract({})) == dict(expected)
