"""Manual propagation, for what no instrumentation covers: queues, cron jobs, subprocesses, webhooks.

    carrier = get_context()              # in the sender, inside a span: {'traceparent': '00-...'}
    with attach_context(carrier):        # in the receiver: spans started here continue that trace
        ...

The carrier is a plain `dict[str, str]` (W3C `traceparent`, `tracestate`, `baggage`, as the configured
propagators write them), safe to put in JSON, pickle, message attributes or environment variables.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as context_api
from opentelemetry import propagate as otel_propagate

from logfire_run._internal import running_sdk
from logfire_run.agent.process import state

__all__ = ["attach_context", "get_context"]


def get_context() -> dict[str, str]:
    """The current trace context as a carrier dict; empty when there is no active span or baggage."""
    running_sdk()
    carrier: dict[str, str] = {}
    otel_propagate.inject(carrier)
    return carrier


@contextmanager
def attach_context(carrier: Mapping[str, str] | None, *, third_party: bool = False) -> Iterator[None]:
    """Make the context in `carrier` current for the block; the previous context returns after it.

    First-party by default: the carrier comes from your own code, so the `distributed_tracing` policy
    does not apply. Pass `third_party=True` for carriers from outside (a webhook, a public queue) to
    have it obey the policy like inbound HTTP. An empty or malformed carrier starts a new trace: spans
    in the block have no parent. It never raises.
    """
    running_sdk()
    try:
        # First-party or not, this does not depend on the SDK having started (or failed).
        extracted = state.extract(_clean(carrier), third_party=third_party)
    except Exception:
        extracted = context_api.Context()
    token = context_api.attach(extracted)
    try:
        yield
    finally:
        context_api.detach(token)


def _clean(carrier: object) -> dict[str, str]:
    if not isinstance(carrier, Mapping):
        return {}
    return {
        key.lower(): value
        for key, value in carrier.items()
        if isinstance(key, str) and isinstance(value, str)
    }
