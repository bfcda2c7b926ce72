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
- `tracestate`: read only with a valid `traceparent`. Repeated headers are combined with commas and
  are one list. Keys are `(lcalpha / DIGIT) 0*255(keychar)` with `@` a keychar anywhere (`foo@`,
  `foo@bar@baz` are valid), values 1 to 256 printable characters without `,` or `=`, the last not a
  space. Empty and whitespace-only members are allowed and are not list members. A header that
  breaks any rule (an invalid member, more than 32 members) is discarded whole: the request keeps
  its parent and loses its tracestate. A duplicated key does not make the list invalid (the text
  lets a vendor discard duplicates): the key's first entry is kept, later ones are dropped. Past
  512 characters, entries longer than 128 characters are removed first, then entries from the right.
- `baggage`: repeated headers are combined. Each member is
  `key OWS "=" OWS value *(OWS ";" OWS property)`; an invalid member is skipped, neighbours kept.
  Up to 180 members and 8192 bytes are kept (the spec's minimum is 64 and 8192); past 8192 bytes,
  only the whole members within the first 8192 are read. Values are percent-decoded as UTF-8, octets
  that are not UTF-8 becoming U+FFFD, and `+` read as a space, as OpenTelemetry Python's injector
  encodes one. Properties are checked but not kept: OpenTelemetry Python's baggage holds plain values.

Cost is bounded by bytes, not only linear: a combined `tracestate` longer than the longest header
that can hold 32 valid members (16,447 bytes) is discarded without being read, and of `baggage` no
more than 8193 bytes are read. Within those budgets the scanning is done by the regular-expression
engine; Python code runs once per member found, at most 32 (tracestate) or 180 (baggage) times. No
parse raises: whatever a header holds, the worst outcome is that the request starts a new trace (or
carries less tracestate or baggage).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import islice
from urllib.parse import unquote_plus

from opentelemetry import baggage as baggage_api
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, get_current, set_value
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import CarrierT, Getter, TextMapPropagator, default_getter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "MAX_BAGGAGE_BYTES",
    "MAX_BAGGAGE_MEMBERS",
    "MAX_TRACESTATE_HEADER_BYTES",
    "MAX_TRACESTATE_MEMBERS",
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
#: 32 members of a 256-character key, "=" and a 256-character value, and 31 commas.
MAX_TRACESTATE_HEADER_BYTES = MAX_TRACESTATE_MEMBERS * (256 + 1 + 256) + MAX_TRACESTATE_MEMBERS - 1

# Flags of this level: sampled (bit 0) and random trace id (bit 1).
_KNOWN_FLAGS = 0x03
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACESTATE_KEY = re.compile(r"[a-z0-9][a-z0-9_\-*/@]{0,255}")
_TRACESTATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
# One list member per match, with the separators (commas, optional whitespace) before it: from its
# first to its last character that is neither a comma nor whitespace (a value's inner spaces stay),
# or nothing at the end. A run of separators is consumed by one match, never position by position.
_LIST_MEMBER = re.compile(r"[,\x20\t]*(?:([^,\x20\t](?:[^,]*[^,\x20\t])?)|\Z)")
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_BAGGAGE_OCTETS = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
# Optional whitespace that never gives back a character: were it backtracked, what follows it would
# start on a space or tab, which nothing after it may. Without this, a value between two long runs
# of spaces costs time quadratic in their length.
_RUN_OWS = r"[\x20\t]*(?![\x20\t])"
# A whole baggage member as `_LIST_MEMBER` gives it (no whitespace at either end): key and value
# captured, properties checked and not kept. No part can start with what may end the part before
# it, so a failing match gives up after one pass over the member.
_BAGGAGE_MEMBER = re.compile(
    rf"({_TOKEN}){_RUN_OWS}={_RUN_OWS}({_BAGGAGE_OCTETS})"
    rf"(?:{_RUN_OWS};{_RUN_OWS}{_TOKEN}(?:{_RUN_OWS}={_RUN_OWS}{_BAGGAGE_OCTETS})?)*"
)
_OWS = " \t"


def _values(raw: object) -> list[str]:
    """What a getter returned, as a list of strings (getters return a list or None; be lenient)."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, (list, tuple)):
        return [value for value in raw if isinstance(value, str)]
    return []


def _combined(values: Sequence[str], budget: int) -> str:
    """The headers joined with commas (one list), cut after `budget + 1` characters.

    Only what is kept is copied: a caller sees that the list was longer than `budget` from the length
    of what comes back, without a megabyte header ever being joined or scanned.
    """
    if len(values) == 1:
        value = values[0]
        return value if len(value) <= budget else value[: budget + 1]
    parts: list[str] = []
    room = budget + 1
    for value in values:
        if parts:
            parts.append(",")
            room -= 1
            if room <= 0:
                break
        if len(value) >= room:
            parts.append(value[:room])
            break
        parts.append(value)
        room -= len(value)
    return "".join(parts)


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
    """The entries of the combined `tracestate` headers, left to right; [] when the list is invalid."""
    header = _combined(values, MAX_TRACESTATE_HEADER_BYTES)
    if len(header) > MAX_TRACESTATE_HEADER_BYTES:
        return []
    entries: dict[str, str] = {}
    keys: list[str] = []  # of every member, duplicates included: the list's size
    for match in _LIST_MEMBER.finditer(header):
        member = match.group(1)
        if member is None:
            break  # the end
        if len(keys) == MAX_TRACESTATE_MEMBERS:
            return []
        key, equals, value = member.partition("=")
        if not equals or not valid_tracestate_member(key, value):
            return []
        keys.append(key)
        # A key seen already: Trace Context lets a vendor discard the duplicate (the list stays valid).
        entries.setdefault(key, value)
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
            tracestate = _values(getter.get(carrier, "tracestate"))
            entries = parse_tracestate(tracestate) if tracestate else []
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


def parse_baggage(values: Sequence[str]) -> list[tuple[str, str]]:
    """(key, decoded value) of each valid member of the combined `baggage` headers, within the limits."""
    header = _combined(values, MAX_BAGGAGE_BYTES)
    if len(header) > MAX_BAGGAGE_BYTES:
        # Longer than the limit: read the whole members within it; the one the limit cuts is dropped.
        header = header[: max(header.rfind(",", 0, MAX_BAGGAGE_BYTES + 1), 0)]
    found: list[tuple[str, str]] = []
    # The grammar has room for 180 list members: those after the 180th are not read, valid or not.
    for match in islice(_LIST_MEMBER.finditer(header), MAX_BAGGAGE_MEMBERS):
        member = match.group(1)
        if member is None:
            break  # the end
        parsed = _BAGGAGE_MEMBER.fullmatch(member)
        if parsed is None:
            continue  # an invalid member is skipped, its neighbours kept
        key, value = parsed.groups()
        # Percent-decoding as the current Baggage text says: octets that are not UTF-8 become U+FFFD.
        found.append((key, unquote_plus(value, errors="replace") if "%" in value or "+" in value else value))
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
            values = _values(getter.get(carrier, "baggage"))
            if not values:
                return context
            found = parse_baggage(values)
        except Exception:
            return context
        if not found:
            return context
        key = getattr(baggage_api, "_BAGGAGE_KEY", None)
        if key is None:
            for name, value in found:
                context = baggage_api.set_baggage(name, value, context)
            return context
        # One new baggage mapping for all the members: `set_baggage` copies the mapping per member,
        # which is quadratic in their number.
        entries = dict(baggage_api.get_all(context))
        entries.update(found)
        return set_value(key, entries, context)


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
