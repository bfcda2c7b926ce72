"""Strict inbound parsing of W3C Trace Context (Level 2) and W3C Baggage headers.

`StrictTraceContextPropagator` and `StrictBaggagePropagator` subclass OpenTelemetry's two W3C propagators
and replace only `extract`: `inject` is inherited, so outbound headers are byte for byte what
OpenTelemetry writes. `strict_propagator()` swaps them in for OpenTelemetry's own, alone or inside a
`CompositePropagator` (what `OTEL_PROPAGATORS` unset, or naming `tracecontext`/`baggage`, builds); the
policy applies it to whatever it wraps. Other propagators (B3, Jaeger, subclasses of OpenTelemetry's)
are left as they are.

The rules, from the Level 2 text (https://www.w3.org/TR/trace-context-2/) where OpenTelemetry
Python's `TraceState` still follows Level 1:

- `traceparent`: exactly one header. Version `ff`, a version that is not two lowercase hex digits,
  version `00` with anything but 55 characters, a higher version whose 56th character is not `-`,
  ids or flags that are not lowercase hex of the right length, an all-zero trace id or parent id:
  no parent, the request starts a new trace. Of a higher version only the flags this level knows
  (sampled, random) are kept. A repeated header is refused whether the server folded it into one
  value (WSGI: `a,b` is not 55 characters) or kept both (ASGI: two values).
- `tracestate`: read only with a valid `traceparent`. Repeated headers are combined with commas.
  Keys are `(lcalpha / DIGIT) 0*255(keychar)` with `@` a keychar anywhere (`foo@bar@baz` is valid),
  values up to 256 printable characters without `,` or `=`. An invalid member is skipped and its
  neighbours kept; of a duplicated key the left-most (most recent) entry is kept; at most 32 members
  (the right-most go); past 512 characters, entries longer than 128 characters are removed first,
  then entries from the right.
- `baggage`: repeated headers are combined. Each member is `token OWS "=" OWS value *(";" property)`;
  an invalid member is skipped, neighbours kept. Up to 180 members and 8192 bytes are accepted (the
  spec's minimum is 64 and 8192); a member that does not fit is dropped, the others stay. Values are
  percent-decoded as UTF-8 with `+` read as a space, as OpenTelemetry Python's injector encodes them.
  Properties are checked but not kept: OpenTelemetry Python's baggage holds plain values.

Every parse is linear in the size of the headers and never raises: whatever a header holds, the worst
outcome is that the request starts a new trace (or carries less baggage).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from urllib.parse import unquote_plus

from opentelemetry import baggage as baggage_api
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, get_current
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import CarrierT, Getter, TextMapPropagator, default_getter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "StrictBaggagePropagator",
    "StrictTraceContextPropagator",
    "W3CTraceState",
    "parse_baggage",
    "parse_traceparent",
    "parse_tracestate",
    "strict_propagator",
]

TRACEPARENT_LENGTH = 55
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_LENGTH = 512
LONG_TRACESTATE_ENTRY = 128
MAX_BAGGAGE_MEMBERS = 180
MAX_BAGGAGE_BYTES = 8192

# Flags of this level: sampled (bit 0) and random trace id (bit 1).
_KNOWN_FLAGS = 0x03
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACESTATE_KEY = re.compile(r"[a-z0-9][a-z0-9_\-*/@]{0,255}")
_TRACESTATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAGGAGE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_OWS = " \t"
# The longest tracestate member that can be valid: a 256-character key, "=", a 256-character value.
_MAX_TRACESTATE_MEMBER = 256 + 1 + 256


def _values(raw: object) -> list[str]:
    """What a getter returned, as a list of strings (getters return a list or None; be lenient)."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, (list, tuple)):
        return [value for value in raw if isinstance(value, str)]
    return []


def _members(header: str) -> Iterable[str]:
    """The comma-separated members of a header with their optional whitespace removed, lazily."""
    start = 0
    length = len(header)
    while start <= length:
        end = header.find(",", start)
        if end < 0:
            end = length
        member = header[start:end].strip(_OWS)
        if member:
            yield member
        start = end + 1


# traceparent


def parse_traceparent(values: Sequence[str]) -> tuple[int, int, int] | None:
    """(trace id, parent id, flags) of the one `traceparent` value, or None when it must be ignored."""
    if len(values) != 1:
        return None  # absent, or repeated: the W3C test suite expects a new trace for a duplicate
    value = values[0]
    if len(value) < TRACEPARENT_LENGTH:
        return None
    if value[0] in _OWS or value[-1] in _OWS:
        value = value.strip(_OWS)
    match = _TRACEPARENT.fullmatch(value, 0, TRACEPARENT_LENGTH)
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    if version == "ff":
        return None
    if version == "00":
        if len(value) != TRACEPARENT_LENGTH:
            return None
    elif len(value) > TRACEPARENT_LENGTH and value[TRACEPARENT_LENGTH] != "-":
        return None
    trace_value = int(trace_id, 16)
    parent_value = int(parent_id, 16)
    if trace_value == 0 or parent_value == 0:
        return None
    flag_bits = int(flags, 16)
    if version != "00":
        flag_bits &= _KNOWN_FLAGS
    return trace_value, parent_value, flag_bits


# tracestate


def valid_tracestate_member(key: str, value: str) -> bool:
    return _TRACESTATE_KEY.fullmatch(key) is not None and _TRACESTATE_VALUE.fullmatch(value) is not None


def parse_tracestate(values: Sequence[str]) -> list[tuple[str, str]]:
    """The entries of the combined `tracestate` headers, left to right, after the rules above."""
    entries: dict[str, str] = {}
    for member in _members(",".join(values)):
        if len(member) > _MAX_TRACESTATE_MEMBER:
            continue
        key, equals, value = member.partition("=")
        if not equals or key in entries or not valid_tracestate_member(key, value):
            continue
        entries[key] = value
        if len(entries) == MAX_TRACESTATE_MEMBERS:
            break
    return truncate_tracestate(list(entries.items()))


def truncate_tracestate(entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Whole entries removed until the header fits 512 characters: long ones first, then from the right."""
    sizes = [len(key) + 1 + len(value) for key, value in entries]
    total = sum(sizes) + max(len(entries) - 1, 0)
    if total <= MAX_TRACESTATE_LENGTH:
        return entries
    keep = [True] * len(entries)
    for long_first in (True, False):
        for index in range(len(entries) - 1, -1, -1):
            if total <= MAX_TRACESTATE_LENGTH:
                break
            if keep[index] and (sizes[index] > LONG_TRACESTATE_ENTRY or not long_first):
                keep[index] = False
                total -= sizes[index] + 1
    return [entry for entry, kept in zip(entries, keep, strict=True) if kept]


class W3CTraceState(TraceState):
    """A `TraceState` whose keys follow Level 2 (`@` anywhere), and whose changes keep 32 members.

    OpenTelemetry's `TraceState` validates keys with the Level 1 grammar and drops every entry when
    one key is duplicated; entries here were validated by `parse_tracestate` and are kept as given.
    `add` and `update` put the entry first and, at 32 members, remove the right-most one.
    """

    def __init__(self, entries: Sequence[tuple[str, str]] | None = None) -> None:
        super().__init__(None)
        for key, value in entries or ():
            self._dict.setdefault(key, value)

    def add(self, key: str, value: str) -> TraceState:
        if key in self._dict:
            return self
        return self.update(key, value)

    def update(self, key: str, value: str) -> TraceState:
        if not valid_tracestate_member(key, value):
            return self
        rest = [(other, current) for other, current in self._dict.items() if other != key]
        return W3CTraceState([(key, value), *rest][:MAX_TRACESTATE_MEMBERS])

    def delete(self, key: str) -> TraceState:
        if key not in self._dict:
            return self
        return W3CTraceState([(other, value) for other, value in self._dict.items() if other != key])


class StrictTraceContextPropagator(TraceContextTextMapPropagator):
    """OpenTelemetry's `traceparent`/`tracestate` propagator with a strict Level 2 `extract`."""

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        if context is None:
            context = Context()
        try:
            parsed = parse_traceparent(_values(getter.get(carrier, "traceparent")))
            if parsed is None:
                return context
            trace_id, parent_id, flags = parsed
            entries = parse_tracestate(_values(getter.get(carrier, "tracestate")))
            span_context = SpanContext(
                trace_id=trace_id,
                span_id=parent_id,
                is_remote=True,
                trace_flags=TraceFlags(flags),
                trace_state=W3CTraceState(entries) if entries else None,
            )
            return trace.set_span_in_context(NonRecordingSpan(span_context), context)
        except Exception:
            # A carrier or getter we did not foresee: the request starts a new trace, nothing raises.
            return context


# baggage


def _valid_properties(properties: list[str]) -> bool:
    for prop in properties:
        name, equals, value = prop.partition("=")
        if _TOKEN.fullmatch(name.strip(_OWS)) is None:
            return False
        if equals and _BAGGAGE_VALUE.fullmatch(value.strip(_OWS)) is None:
            return False
    return True


def parse_baggage(values: Sequence[str]) -> list[tuple[str, str]]:
    """(name, decoded value) of each valid member of the combined `baggage` headers, within the limits."""
    found: list[tuple[str, str]] = []
    used = 0
    for member in _members(",".join(values)):
        size = len(member) + (1 if found else 0)
        if used + size > MAX_BAGGAGE_BYTES:
            continue  # too big to fit beside what was taken: dropped, the smaller ones after it may fit
        name, equals, rest = member.partition("=")
        name = name.strip(_OWS)
        value, *properties = rest.split(";")
        value = value.strip(_OWS)
        if not equals or _TOKEN.fullmatch(name) is None or _BAGGAGE_VALUE.fullmatch(value) is None:
            continue
        if properties and not _valid_properties(properties):
            continue
        try:
            decoded = unquote_plus(value, errors="strict")
        except UnicodeDecodeError:
            continue
        found.append((name, decoded))
        used += size
        if len(found) == MAX_BAGGAGE_MEMBERS:
            break
    return found


class StrictBaggagePropagator(W3CBaggagePropagator):
    """OpenTelemetry's `baggage` propagator with an `extract` that keeps valid members and limits."""

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        if context is None:
            context = get_current()
        try:
            found = parse_baggage(_values(getter.get(carrier, "baggage")))
        except Exception:
            return context
        for name, value in found:
            context = baggage_api.set_baggage(name, value, context)
        return context


def strict_propagator(propagator: TextMapPropagator) -> TextMapPropagator:
    """`propagator` with OpenTelemetry's W3C propagators replaced by the strict ones (alone or composed)."""
    if type(propagator) is TraceContextTextMapPropagator:
        return StrictTraceContextPropagator()
    if type(propagator) is W3CBaggagePropagator:
        return StrictBaggagePropagator()
    if type(propagator) is CompositePropagator:
        inner = getattr(propagator, "_propagators", None)
        if isinstance(inner, (list, tuple)):
            replaced = [strict_propagator(item) for item in inner]
            if any(new is not old for new, old in zip(replaced, inner, strict=True)):
                return CompositePropagator(replaced)
    return propagator
