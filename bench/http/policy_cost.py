"""The policy wrapper's own cost per extraction, and the strict W3C parser against OpenTelemetry's.

    .venv/bin/python bench/http/policy_cost.py [--n 200000] [--rounds 7]

In one process, on a WSGI-style carrier with `traceparent`, `tracestate` and `baggage`:

- the wrapper alone: `DistributedTracingPolicy` in each mode around a propagator that does nothing
  (returns the context it is given), minus that propagator called directly. This is the policy's own
  cost per extraction (target: under 2 us), free of the parsing noise it would otherwise hide in;
- full extractions: the strict composite (W3C trace context + baggage, agent/propagation/w3c.py) directly and
  behind the policy (`true`), and OpenTelemetry's own composite for comparison.

Each figure is the median over rounds of the mean over `n` calls, in microseconds; the variants are
interleaved round by round.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

from opentelemetry.baggage.propagation import W3CBaggagePropagator as OtelBaggage
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from logfire_run.agent.propagation.policy import DistributedTracingPolicy
from logfire_run.agent.propagation.w3c import strict_propagator

CARRIER = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
    "baggage": "user=alice,tier=gold",
}


class _Null(TextMapPropagator):
    """Returns the context it is given: what is left of an extraction is the caller's own cost."""

    def extract(self, carrier: object, context: object = None, getter: object = None) -> object:  # type: ignore[override]
        return context

    def inject(self, carrier: object, context: object = None, setter: object = None) -> None:
        pass

    @property
    def fields(self) -> set[str]:
        return set()


def _time(call: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()

    null = _Null()
    otel = CompositePropagator([TraceContextTextMapPropagator(), OtelBaggage()])
    inner = strict_propagator(CompositePropagator([TraceContextTextMapPropagator(), OtelBaggage()]))
    base = Context()
    variants: dict[str, Callable[[], object]] = {"null propagator": lambda: null.extract(CARRIER, base)}
    for mode in (True, None, False):
        wrapped = DistributedTracingPolicy(null, mode)
        wrapped._warned = True  # the steady state, after the one warning of the default mode
        variants[f"policy {mode!r} around null"] = functools.partial(wrapped.extract, CARRIER, base)
    policy = DistributedTracingPolicy(inner, True)
    variants["strict W3C composite"] = lambda: inner.extract(CARRIER, base)
    variants["policy True around composite"] = lambda: policy.extract(CARRIER, base)
    variants["opentelemetry's composite"] = lambda: otel.extract(CARRIER, base)
    results: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(options.rounds):
        names = list(variants)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(_time(variants[name], options.n))
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"{options.n} extractions x {options.rounds} rounds, median us per extraction")
    reference = 0.0
    for name, value in medians.items():
        if not name.startswith("policy"):
            reference = value
            print(f"  {name:<28} {value:7.2f}")
        else:
            print(f"  {name:<28} {value:7.2f}  wrapper cost {value - reference:+.2f} us")


if __name__ == "__main__":
    main()
