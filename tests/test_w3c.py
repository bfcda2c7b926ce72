"""Strict W3C Trace Context (Level 2) and Baggage parsing (logfire_run.agent.propagation.w3c), unit by unit.

These are pure functions and propagators, tested in this process; tests/test_http_inbound.py sends
the same kinds of headers to real servers.
"""

from __future__ import annotations

import logging
import random

import pytest
from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator as OtelBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from logfire_run.agent.propagation.w3c import (
    MAX_BAGGAGE_BYTES,
    MAX_TRACESTATE_HEADER_BYTES,
    StrictBaggagePropagator,
    StrictTraceContextPropagator,
    W3CTraceState,
    parse_baggage,
    parse_traceparent,
    parse_tracestate,
    strict_propagator,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"


# traceparent


def test_valid_traceparent() -> None:
    assert parse_traceparent([VALID]) == (int(TRACE, 16), int(PARENT, 16), 1)
    assert parse_traceparent([f" \t{VALID}\t "]) == (int(TRACE, 16), int(PARENT, 16), 1)
    assert parse_traceparent([f"00-{TRACE}-{PARENT}-00"]) == (int(TRACE, 16), int(PARENT, 16), 0)
    assert parse_traceparent([f"00-{TRACE}-{PARENT}-03"]) == (int(TRACE, 16), int(PARENT, 16), 3)


@pytest.mark.parametrize(
    "header",
    [
        f"ff-{TRACE}-{PARENT}-01",  # version ff is forbidden
        f"0g-{TRACE}-{PARENT}-01",
        f"0-{TRACE}-{PARENT}-01",
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{PARENT}-01",  # uppercase hex
        f"00-{TRACE}-{PARENT.upper()}-01",
        f"00-{TRACE}-{PARENT}-0A",
        f"00-{TRACE[:-1]}-{PARENT}-01",  # trace id too short
        f"00-{TRACE}0-{PARENT}-01",  # too long
        f"00-{TRACE}-{PARENT[:-1]}-01",
        f"00-{TRACE}-{PARENT}0-01",
        f"00-{TRACE}-{PARENT}-1",
        f"00-{TRACE}-{PARENT}-011",
        f"00-{TRACE}-{PARENT}-01-",  # version 00 is exactly 55 characters
        f"00-{TRACE}-{PARENT}-01-extra",
        f"00_{TRACE}-{PARENT}-01",
        f"00-{TRACE}_{PARENT}-01",
        f"00-{TRACE[:-1]}g-{PARENT}-01",
        f"00-{TRACE[:-1]}\u0664-{PARENT}-01",  # a non-ASCII digit
        f"00-{TRACE}-{PARENT}-01\x00",
        f"cc-{TRACE}-{PARENT}-01x",  # a higher version: the flags must be followed by the end or "-"
        f"cc-{TRACE}-{PARENT}-01.what",
        f"{VALID},{VALID}",  # a repeated header folded into one value (WSGI servers do this)
        "",
        " ",
        "00",
        "00-" + "a" * 4_000_000,  # large: refused without looking past the fixed fields
    ],
)
def test_invalid_traceparent_starts_a_new_trace(header: str) -> None:
    assert parse_traceparent([header]) is None


def test_repeated_traceparent_is_refused_even_when_identical() -> None:
    assert parse_traceparent([VALID, VALID]) is None
    assert parse_traceparent([VALID, f"00-{TRACE}-{'1' * 16}-01"]) is None
    assert parse_traceparent([]) is None


def test_higher_version_keeps_known_fields_and_flags() -> None:
    assert parse_traceparent([f"cc-{TRACE}-{PARENT}-01"]) == (int(TRACE, 16), int(PARENT, 16), 1)
    future = f"cc-{TRACE}-{PARENT}-ff-what-the-future-will-be-like"
    # Only the flags this level defines (sampled, random) survive a higher version.
    assert parse_traceparent([future]) == (int(TRACE, 16), int(PARENT, 16), 0x03)
    assert parse_traceparent([f"01-{TRACE}-{PARENT}-01-" + "x" * 100_000]) is not None


# tracestate


def test_level_2_keys() -> None:
    header = "foo@bar@baz=1,1vendor=2,a*/_-@b=3,tenant@system=4,foo@=5"
    assert parse_tracestate([header]) == [
        ("foo@bar@baz", "1"),
        ("1vendor", "2"),
        ("a*/_-@b", "3"),
        ("tenant@system", "4"),
        ("foo@", "5"),
    ]
    key_256 = "k" * 256
    assert parse_tracestate([f"{key_256}=v"]) == [(key_256, "v")]


@pytest.mark.parametrize(
    "bad",
    [
        "Upper=2",  # keys are lowercase
        "@lead=3",  # a key starts with a lowercase letter or a digit
        "k" * 257 + "=1",  # 1 + 255 characters at most
        "b=x=y",  # "=" is not a value character
        "d=",  # an empty value
        "e",  # no "="
        "=5",  # no key
        "f=tab\there",
        "g=del\x7f",
        "h=trailing\x00",
        "foo =1",
        "foo.bar=1",
        "é=1",
        "a=" + "v" * 257,  # values are at most 256 characters
        "a=tab\there",  # a duplicated key is not invalid (see below), an invalid duplicate still is
    ],
)
def test_one_invalid_member_discards_the_whole_header(bad: str) -> None:
    # The current Trace Context text: a tracestate that fails to parse is discarded as a whole;
    # its valid neighbours are not kept (they may depend on the member that was dropped).
    assert parse_tracestate([f"a=1,{bad},c=4"]) == []
    assert parse_tracestate([bad, "a=1"]) == []


def test_values() -> None:
    value_256 = "v" * 256
    assert parse_tracestate([f"a={value_256}"]) == [("a", value_256)]
    assert parse_tracestate([f"a={value_256}v"]) == []
    # Leading spaces belong to the value; trailing ones are optional whitespace.
    assert parse_tracestate(["a= x y ,b=!~"]) == [("a", " x y"), ("b", "!~")]


def test_every_allowed_character() -> None:
    allowed_value = "".join(map(chr, [*range(0x20, 0x2C), *range(0x2D, 0x3D), *range(0x3E, 0x7F)]))
    key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
    tenant_key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/@a-z0-9_-*/"
    header = f"{key}={allowed_value},{tenant_key}={allowed_value}"
    assert parse_tracestate([header]) == [(key, allowed_value), (tenant_key, allowed_value)]


def test_a_duplicated_key_keeps_the_list_with_its_first_entry() -> None:
    # Trace Context lets a vendor discard a duplicated key ("MAY", w3c/trace-context#477); a
    # duplicate does not make the header invalid. The first entry of a key is the one kept.
    assert parse_tracestate(["foo=1,foo=2"]) == [("foo", "1")]
    assert parse_tracestate(["a=1,b=2,a=3"]) == [("a", "1"), ("b", "2")]
    assert parse_tracestate(["a=1,b=2", "a=3,c=4"]) == [("a", "1"), ("b", "2"), ("c", "4")]  # one list
    # Every other rule still holds for the whole header: an invalid duplicate, 33 members.
    assert parse_tracestate(["a=1,a=del\x7f"]) == []
    assert parse_tracestate([",".join([f"k{index}=v" for index in range(32)] + ["k0=v"])]) == []


def test_empty_members_whitespace_and_repeated_headers() -> None:
    assert parse_tracestate(["a=1 , ,\t b=2", "", " c=3"]) == [("a", "1"), ("b", "2"), ("c", "3")]
    assert parse_tracestate([""]) == []
    assert parse_tracestate([",,,"]) == []
    assert parse_tracestate([]) == []


def test_more_than_32_members_discards_the_header() -> None:
    members = [f"k{index}=v" for index in range(33)]
    assert parse_tracestate([",".join(members)]) == []
    assert [key for key, _ in parse_tracestate([",".join(members[:32])])] == [f"k{i}" for i in range(32)]
    # Repeated headers are one list: 20 + 13 members is 33.
    assert parse_tracestate([",".join(members[:20]), ",".join(members[20:])]) == []
    # Empty members are not list members: they do not count.
    assert len(parse_tracestate([",,".join(members[:32])])) == 32


def test_truncation_past_512_characters_removes_long_entries_first() -> None:
    short = [(f"s{index}", "x" * 60) for index in range(6)]  # 63 characters each
    long_entry = ("long", "y" * 200)  # 205 characters
    entries = [short[0], long_entry, *short[1:]]
    header = ",".join(f"{key}={value}" for key, value in entries)
    assert len(header) > 512
    parsed = parse_tracestate([header])
    assert parsed == short  # 6 * 63 + 5 = 383 characters: the long entry alone had to go
    many = [(f"m{index:02d}", "z" * 100) for index in range(8)]  # 105 characters each, none "long"
    parsed = parse_tracestate([",".join(f"{key}={value}" for key, value in many)])
    assert parsed == many[:4]  # 4 * 105 + 3 = 423; a fifth would make 529
    assert len(",".join(f"{key}={value}" for key, value in parsed)) <= 512


def test_tracestate_past_the_byte_budget_is_discarded_unread() -> None:
    # The longest header that can hold 32 valid members, without padding, fits the budget ...
    widest = [(f"{index:02d}" + "k" * 254, "v" * 256) for index in range(32)]
    header = ",".join(f"{key}={value}" for key, value in widest)
    assert len(header) == MAX_TRACESTATE_HEADER_BYTES
    # (each of those members is longer than 512 characters, so truncation then removes them all)
    padded = "a=1" + " " * (MAX_TRACESTATE_HEADER_BYTES - 3)
    assert parse_tracestate([padded]) == [("a", "1")]
    # ... and one byte more, even of optional whitespace, is not read at all.
    assert parse_tracestate([padded + " "]) == []
    assert parse_tracestate([padded, ""]) == []  # the comma that joins two headers counts
    assert parse_tracestate(["a=1", padded[4:]]) == [("a", "1")]
    assert parse_tracestate(["a=1", padded[3:]]) == []
    assert parse_tracestate(["," * 1_000_000]) == []
    assert parse_tracestate(["a=1", "," * 1_000_000]) == []
    assert parse_tracestate(["a=" + "b" * 2_000_000 + ",c=1"]) == []
    assert parse_tracestate(["x=1," * 500_000]) == []


def test_trace_state_changes_keep_level_2_keys() -> None:
    state = W3CTraceState(parse_tracestate(["foo@bar@baz=1,congo=2"]))
    updated = state.update("rojo", "3")
    assert isinstance(updated, W3CTraceState)
    assert updated.to_header() == "rojo=3,foo@bar@baz=1,congo=2"
    assert state.update("congo", "4").to_header() == "congo=4,foo@bar@baz=1"
    assert state.add("congo", "5") is state
    assert state.add("Bad", "5") is state
    assert state.delete("congo").to_header() == "foo@bar@baz=1"
    full = W3CTraceState([(f"k{index}", "v") for index in range(32)])
    grown = full.add("new", "v")
    assert len(grown) == 32 and next(iter(grown)) == "new" and "k31" not in grown


# The propagator


def _span_context(context: Context) -> SpanContext:
    return trace.get_current_span(context).get_span_context()


def test_extract_builds_a_remote_parent_with_the_parsed_tracestate() -> None:
    carrier = {"traceparent": VALID, "tracestate": "foo@bar@baz=1,a=1"}
    span_context = _span_context(StrictTraceContextPropagator().extract(carrier))
    assert span_context.is_valid and span_context.is_remote
    assert (span_context.trace_id, span_context.span_id) == (int(TRACE, 16), int(PARENT, 16))
    assert span_context.trace_flags.sampled
    assert span_context.trace_state.to_header() == "foo@bar@baz=1,a=1"
    # An invalid tracestate costs the parent nothing but its tracestate.
    carrier = {"traceparent": VALID, "tracestate": "foo@bar@baz=1,a=1,a=2,Bad=3"}
    span_context = _span_context(StrictTraceContextPropagator().extract(carrier))
    assert span_context.is_valid and len(span_context.trace_state) == 0


def test_tracestate_is_not_read_without_a_valid_traceparent() -> None:
    context = StrictTraceContextPropagator().extract({"traceparent": "garbage", "tracestate": "a=1"})
    assert not _span_context(context).is_valid


def test_extract_never_raises() -> None:
    class Broken:
        def get(self, carrier: object, key: str) -> list[str]:
            raise RuntimeError("a getter that fails")

        def keys(self, carrier: object) -> list[str]:
            return []

    base = Context()
    assert StrictTraceContextPropagator().extract({}, base, Broken()) is base  # type: ignore[arg-type]
    assert StrictBaggagePropagator().extract({}, base, Broken()) is base  # type: ignore[arg-type]
    generator = random.Random(3)
    alphabet = "0123456789abcdefABCDEF-=,;@ \t%+\x00\x7fé\u0664"
    for _ in range(3000):
        text = "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 80)))
        carrier = {"traceparent": text, "tracestate": text, "baggage": text}
        StrictTraceContextPropagator().extract(carrier)
        StrictBaggagePropagator().extract(carrier, Context())
        StrictTraceContextPropagator().extract({"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": text})


def test_malformed_headers_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    # OpenTelemetry's parser logs a warning per malformed tracestate; an attacker could fill logs.
    caplog.set_level(logging.DEBUG)
    carrier = {"traceparent": VALID, "tracestate": "foo@bar@baz=1,BAD=2,a=1,a=2", "baggage": "b c=1,=2"}
    StrictTraceContextPropagator().extract(carrier)
    StrictBaggagePropagator().extract(carrier, Context())
    assert caplog.records == []


def test_inject_is_byte_for_byte_opentelemetrys() -> None:
    ours, theirs = StrictTraceContextPropagator(), TraceContextTextMapPropagator()
    for flags in (0, 1, 3):
        for state in (None, TraceState([("congo", "t61rcWkgMzE"), ("rojo", "00f067aa0ba902b7")])):
            span_context = SpanContext(int(TRACE, 16), int(PARENT, 16), False, TraceFlags(flags), state)
            context = trace.set_span_in_context(NonRecordingSpan(span_context))
            mine: dict[str, str] = {}
            reference: dict[str, str] = {}
            ours.inject(mine, context)
            theirs.inject(reference, context)
            assert mine == reference
            round_trip = _span_context(ours.extract(mine))
            assert (round_trip.trace_id, round_trip.span_id, round_trip.trace_flags) == (
                span_context.trace_id,
                span_context.span_id,
                span_context.trace_flags,
            )
    with_baggage = baggage.set_baggage("user", "a b+c", baggage.set_baggage("tier", "gold"))
    mine, reference = {}, {}
    StrictBaggagePropagator().inject(mine, with_baggage)
    OtelBaggagePropagator().inject(reference, with_baggage)
    assert mine == reference
    assert baggage.get_all(StrictBaggagePropagator().extract(mine, Context())) == {
        "tier": "gold",
        "user": "a b+c",
    }


# baggage


def test_baggage_spec_example() -> None:
    header = "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue"
    assert parse_baggage([header]) == [("key1", "value1"), ("key2", "value2"), ("key3", "value3")]


def test_baggage_invalid_members_are_skipped() -> None:
    header = 'a=1,b c=2,d="q",e=x\\y,f,=3,h=ok;bad prop,i=%20x%2Cy,j=a=b,k=,l=v;p="q",m=v;'
    assert parse_baggage([header]) == [("a", "1"), ("i", " x,y"), ("j", "a=b"), ("k", "")]


def test_baggage_properties_are_checked_and_values_kept() -> None:
    header = "a=1;p, b = 2 ; p = x ; flag ,c=3;p=x=y;q"
    assert parse_baggage([header]) == [("a", "1"), ("b", "2"), ("c", "3")]


def test_baggage_percent_decoding() -> None:
    header = "euro=%E2%82%AC,bad=%ff%41,lone=100%25,raw=50%zz,plus=a+b,upper=%7e%7E"
    assert parse_baggage([header]) == [
        ("euro", "\u20ac"),
        ("bad", "\ufffdA"),  # octets that are not UTF-8 become U+FFFD, the rest is kept
        ("lone", "100%"),
        ("raw", "50%zz"),
        ("plus", "a b"),  # OpenTelemetry Python's injector writes a space as "+"
        ("upper", "~~"),
    ]


def test_baggage_repeated_headers_are_combined() -> None:
    assert parse_baggage(["userId=alice", "serverNode=DF%2028,isProduction=false"]) == [
        ("userId", "alice"),
        ("serverNode", "DF 28"),
        ("isProduction", "false"),
    ]


def test_baggage_limits() -> None:
    parsed = parse_baggage([",".join(f"k{index}=v" for index in range(300))])
    assert len(parsed) == 180 and parsed[0] == ("k0", "v") and parsed[-1] == ("k179", "v")
    # A header of 8192 bytes is kept whole, properties included ...
    member = "m=" + "x" * 100 + ";p"
    exact = ",".join([member] * 70) + ",last=" + "y" * (MAX_BAGGAGE_BYTES - 70 * 105 - 5)
    assert len(exact) == MAX_BAGGAGE_BYTES
    assert parse_baggage([exact])[-1] == ("last", "y" * (MAX_BAGGAGE_BYTES - 70 * 105 - 5))
    # ... past it, only whole members within the first 8192 bytes are read; none is cut short.
    assert parse_baggage([exact + "y"]) == parse_baggage([",".join([member] * 70)])
    assert parse_baggage([exact, "more=1"]) == parse_baggage([exact])
    big = "big=" + "x" * 9000
    assert parse_baggage([f"a=1,{big},b=2"]) == [("a", "1")]
    halves = [f"h{index}=" + "y" * 3000 for index in range(4)]
    assert [key for key, _ in parse_baggage([",".join([*halves, "tail=1"])])] == ["h0", "h1"]
    assert parse_baggage(["a=1," + "," * 3_000_000 + "b=2"]) == [("a", "1")]
    assert parse_baggage(["," * 3_000_000]) == []
    assert parse_baggage(["a" * 3_000_000]) == []
    assert parse_baggage([]) == []


def test_baggage_extract_adds_to_the_given_context() -> None:
    base = baggage.set_baggage("existing", "1", Context())
    context = StrictBaggagePropagator().extract({"baggage": "a=1,a=2"}, base)
    assert baggage.get_all(context) == {"existing": "1", "a": "2"}


# Swapping the propagators


def test_strict_propagator_replaces_opentelemetrys_w3c_propagators_only() -> None:
    composite = CompositePropagator([TraceContextTextMapPropagator(), OtelBaggagePropagator()])
    strict = strict_propagator(composite)
    assert isinstance(strict, CompositePropagator)
    kinds = [type(item) for item in strict._propagators]  # type: ignore[attr-defined]
    assert kinds == [StrictTraceContextPropagator, StrictBaggagePropagator]
    assert type(strict_propagator(TraceContextTextMapPropagator())) is StrictTraceContextPropagator

    class Custom(TraceContextTextMapPropagator):
        pass

    custom = CompositePropagator([Custom()])
    assert strict_propagator(custom) is custom
    empty = CompositePropagator([])
    assert strict_propagator(empty) is empty
    already = StrictTraceContextPropagator()
    assert strict_propagator(already) is already
