"""`DistributedTracingPolicy`: the one gate on inbound trace context.

It is a `TextMapPropagator` that wraps the configured global propagator. Injection passes straight
through; every `extract` made through the raw OpenTelemetry API (what server instrumentations call) is
third-party and is decided by the mode:

=========  ==================================================================================
None       extracted; the first extraction that finds trace context or baggage warns, once per process
True       extracted, silently
False      refused: the caller's base context comes back untouched (no parent, no inbound baggage)
"link"     refused as with False; the root span started in the returned context links to the inbound one
=========  ==================================================================================

First-party extraction (`attach_context()`, Celery task headers, pool workers' carriers) runs inside
`first_party()`, and always extracts. The policy never nests:
installing it again, or setting a new global propagator, only swaps what it wraps.

This module needs only the OpenTelemetry API: the policy is installed as soon as
`opentelemetry.propagate` is imported, whether or not the SDK has been set up.
"""

from __future__ import annotations

import contextvars
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import baggage, trace
from opentelemetry.context import Context, create_key, set_value
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from logfire_run.agent import report
from logfire_run.agent.patching import Patches
from logfire_run.agent.propagation.w3c import (
    StrictBaggagePropagator,
    StrictTraceContextPropagator,
    strict_propagator,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from logfire_run.agent.settings import DistributedTracing

WARNING_TEXT = (
    "logfire-run accepted trace context from an inbound request, so this service's spans join a trace "
    "started elsewhere. distributed_tracing is not set: set it to True (LOGFIRE_DISTRIBUTED_TRACING=true) "
    "to accept inbound context without this warning, or to False (LOGFIRE_DISTRIBUTED_TRACING=false) to "
    "refuse it, which is what a service reachable from the public internet should do."
)

#: Context key under which a refused inbound span context waits for the root span to link to it.
REFUSED_PARENT_KEY = create_key("logfire_run.refused_parent")

_first_party: contextvars.ContextVar[bool] = contextvars.ContextVar("logfire_run_first_party", default=False)


@contextmanager
def first_party() -> Iterator[None]:
    """Extractions made inside this block are trusted: the policy lets them through without a warning."""
    token = _first_party.set(True)
    try:
        yield
    finally:
        _first_party.reset(token)


class DistributedTracingPolicy(TextMapPropagator):
    """Wraps the global propagator and decides what third-party extraction may bring in."""

    def __init__(self, inner: TextMapPropagator, mode: DistributedTracing = None) -> None:
        self._inner = inner
        self._headers: tuple[str, ...] | None = None
        self._mode: DistributedTracing = mode
        self._warned = False
        self._lock = threading.Lock()

    @property
    def inner(self) -> TextMapPropagator:
        return self._inner

    @inner.setter
    def inner(self, propagator: TextMapPropagator) -> None:
        while isinstance(propagator, DistributedTracingPolicy):
            propagator = propagator.inner
        # OpenTelemetry's W3C propagators, alone or composed, get the strict Level 2 parsing (w3c.py).
        self._inner = strict_propagator(propagator)
        self._headers = _headers_read(self._inner)

    @property
    def mode(self) -> DistributedTracing:
        return self._mode

    @mode.setter
    def mode(self, value: DistributedTracing) -> None:
        # Parsing is the settings table's (one parser); the process state is the one writer.
        if not (value is None or value is True or value is False or value == "link"):
            raise ValueError(f"distributed_tracing mode must be None, True, False or 'link', not {value!r}")
        self._mode = value

    def after_fork_in_child(self) -> None:
        """A forked child warns once of its own (`process.fork`)."""
        self._warned = False
        self._lock = threading.Lock()

    # TextMapPropagator

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        mode = self._mode
        if self._headers is not None and mode is not False and _absent(self._headers, carrier, getter):
            # No header the strict W3C propagators read: what they would return, without parsing.
            return context if context is not None else Context()
        if mode is True or _first_party.get():
            return self._inner.extract(carrier, context, getter)
        if mode is None:
            extracted = self._inner.extract(carrier, context, getter)
            if not self._warned and _brings_context(extracted, context):
                self._warn()
            return extracted
        base = context if context is not None else Context()
        if mode == "link":
            inbound = trace.get_current_span(
                self._inner.extract(carrier, Context(), getter)
            ).get_span_context()
            if inbound.is_valid:
                return set_value(REFUSED_PARENT_KEY, inbound, base)
        return base

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        self._inner.inject(carrier, context, setter)

    @property
    def fields(self) -> set[str]:
        return self._inner.fields

    def _warn(self) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        try:
            warnings.warn(WARNING_TEXT, RuntimeWarning, stacklevel=3)
        except Exception:
            # `-W error` turns the warning into an exception; a request must not fail because of it.
            report.problem("policy-warning", WARNING_TEXT)


def _headers_read(propagator: TextMapPropagator) -> tuple[str, ...] | None:
    """The headers the strict W3C propagator(s) read, when `traceparent` is read first; else None.

    Without any of them, `traceparent` first means the result is the caller's context, or an empty
    one: that is what the early return in `extract` gives. Other propagators, or baggage first
    (which falls back to the current context), always take the full path.
    """
    parts = getattr(propagator, "_propagators", None) if type(propagator) is CompositePropagator else None
    chain = list(parts) if isinstance(parts, (list, tuple)) else [propagator]
    if not chain or type(chain[0]) is not StrictTraceContextPropagator:
        return None
    names = {StrictTraceContextPropagator: "traceparent", StrictBaggagePropagator: "baggage"}
    headers: list[str] = []
    for item in chain:
        name = names.get(type(item))
        if name is None:
            return None
        headers.append(name)
    return tuple(dict.fromkeys(headers))


def _absent(headers: tuple[str, ...], carrier: CarrierT, getter: Getter[CarrierT]) -> bool:
    """True when the carrier holds none of `headers` (an odd carrier takes the full path)."""
    try:
        return not any(getter.get(carrier, name) for name in headers)
    except Exception:
        return False


def _brings_context(extracted: Context, base: Context | None) -> bool:
    if trace.get_current_span(extracted).get_span_context().is_valid:
        return base is None or trace.get_current_span(base) is not trace.get_current_span(extracted)
    return bool(baggage.get_all(extracted)) and baggage.get_all(extracted) != baggage.get_all(base)


class _NoPropagator(TextMapPropagator):
    """What a policy wraps before it is installed as the global propagator."""

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        return context if context is not None else Context()

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        pass

    @property
    def fields(self) -> set[str]:
        return set()


def new_policy(mode: DistributedTracing) -> DistributedTracingPolicy:
    return DistributedTracingPolicy(_NoPropagator(), mode)


def install_as_global(policy: DistributedTracingPolicy) -> None:
    """Make `policy` the global propagator, wrapping what was configured (OTEL_PROPAGATORS), once.

    `set_global_textmap` is replaced so that whoever sets a propagator later changes what the policy
    wraps, never the policy itself.
    """
    from opentelemetry import propagate

    if isinstance(propagate.get_global_textmap(), DistributedTracingPolicy):
        return
    original_set = propagate.set_global_textmap

    def set_global_textmap(http_text_format: TextMapPropagator) -> None:
        policy.inner = http_text_format
        original_set(policy)

    policy.inner = propagate.get_global_textmap()
    original_set(policy)
    _patches.replace(propagate, "set_global_textmap", set_global_textmap)


_patches = Patches("policy")
