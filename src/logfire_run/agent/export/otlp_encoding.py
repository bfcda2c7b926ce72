"""OTLP span encoding: finished spans to the protobuf bytes of an `ExportTraceServiceRequest`.

`encode_export_request(spans)` writes the wire format directly, instead of building OpenTelemetry's
protobuf message objects span by span and serializing them (`encode_spans(...).SerializeToString()`).
What spans share is encoded once: the resource and the instrumentation scope once per batch (and
kept across batches while they are the same objects), an attribute key once per process, a small
`(key, value)` attribute pair once until the cache is full.

Its output decodes to the same message as OpenTelemetry's encoder gives for the same spans, field
for field, and is the same bytes (tests/test_otlp_encoding.py holds it to both): spans grouped by
equal resource, then equal scope, in batch order; every attribute type of the SDK (and nested
sequences and mappings); events, links (without their trace_state, as OpenTelemetry sends them),
status, flags, dropped counts, trace_state. Text that UTF-8 cannot encode (a lone surrogate, what
`os.fsdecode` gives for a file name that is not UTF-8) is written with U+FFFD in its place, in that
value only (`utf8`): one such span used to fail its whole batch, here and in OpenTelemetry's encoder.
An attribute whose value cannot be encoded at all (an integer past 64 bits) is left out and reported
once, as OpenTelemetry's encoder leaves it out and logs it; a span that cannot be encoded raises.

Where it stops: it knows nothing of transports. OTLP/HTTP (`otlp_http.py`) and OTLP/gRPC
(`otlp_grpc.py`) send these bytes, wrapped in an `EncodedBatch`: both request bodies are the same
message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

from logfire_run.agent import report

__all__ = ["EncodedBatch", "encodable", "encode_export_request", "utf8"]

_ONE_BYTE = [bytes((value,)) for value in range(128)]
_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack

# The OTLP enum values of the SDK's span kinds (the API numbers INTERNAL 0, OTLP numbers it 1).
_KIND_FIELDS = {
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
# Span.flags (field 16, fixed32): "the context's remoteness is known", and whether it is remote.
_FLAGS_LOCAL = b"\x85\x01\x00\x01\x00\x00"
_FLAGS_REMOTE = b"\x85\x01\x00\x03\x00\x00"
# Link.flags (field 6, fixed32), same bits.
_LINK_FLAGS_LOCAL = b"\x35\x00\x01\x00\x00"
_LINK_FLAGS_REMOTE = b"\x35\x00\x03\x00\x00"

# Field tags (field number << 3 | wire type), by message.
_SPAN_ATTRIBUTE = 0x4A  # Span.attributes (9)
_EVENT_ATTRIBUTE = 0x1A  # Span.Event.attributes (3)
_LINK_ATTRIBUTE = 0x22  # Span.Link.attributes (4)
_RESOURCE_ATTRIBUTE = 0x0A  # Resource.attributes (1)
_SCOPE_ATTRIBUTE = 0x1A  # InstrumentationScope.attributes (3)
_KVLIST_VALUE = 0x0A  # KeyValueList.values (1)

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_CACHE_LIMIT = 4096
_CACHED_TEXT_LIMIT = 256


def _varint(value: int) -> bytes:
    if value < 128:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    size = len(payload)
    return bytes((tag, size)) + payload if size < 128 else bytes((tag,)) + _varint(size) + payload


def utf8(text: str) -> bytes:
    """`text` in UTF-8; a lone surrogate (which UTF-8 cannot encode) as U+FFFD, a pair as its character."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return encodable(text).encode("utf-8")


def encodable(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD (and each surrogate pair joined): text that
    UTF-8, SQLite and protobuf accept. The same object when there is nothing to replace."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _text(tag: int, text: str) -> bytes:
    return _field(tag, utf8(text))


def _any_value(value: Any) -> bytes:
    """The fields of an `AnyValue` (without its own tag and length); the type order is OpenTelemetry's."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _text(0x0A, value)
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{value} does not fit a 64-bit integer")
        return b"\x18" + _varint(value if value >= 0 else value + (1 << 64))
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(0x3A, value)
    if isinstance(value, Sequence):
        return _field(0x2A, b"".join([_field(0x0A, _any_value(item)) for item in value]))
    if isinstance(value, Mapping):
        return _field(
            0x32, b"".join([_key_value(_KVLIST_VALUE, str(key), item) for key, item in value.items()])
        )
    raise TypeError(f"invalid type {type(value).__name__} of attribute value {value!r}")


_key_fields: dict[str, bytes] = {}


def _key_value(tag: int, key: str, value: Any) -> bytes:
    """One tagged `KeyValue` field."""
    key_field = _key_fields.get(key)
    if key_field is None:
        key_field = _text(0x0A, key) if key else b""
        if len(_key_fields) < _CACHE_LIMIT:
            _key_fields[key] = key_field
    return _field(tag, key_field + _field(0x12, _any_value(value)))


# Encoded span attributes by (key, value): text values in one cache, numbers and booleans keyed by
# their type too in the other (1, 1.0 and True are equal keys, but are encoded differently).
_text_pairs: dict[tuple[str, str], bytes] = {}
_number_pairs: dict[tuple[str, Any, type], bytes] = {}


def _span_attributes(attributes: Any, out: list[bytes]) -> None:
    """Append the span's tagged attribute fields to `out`; most (key, value) pairs recur span to span."""
    items: Any = attributes._dict.items() if type(attributes) is BoundedAttributes else attributes.items()
    text_pairs, number_pairs = _text_pairs, _number_pairs
    for key, value in items:
        kind = type(value)
        if kind is str:
            encoded = text_pairs.get((key, value))
            if encoded is None:
                encoded = _text_attribute(key, value)
                if len(value) <= _CACHED_TEXT_LIMIT:
                    if len(text_pairs) >= _CACHE_LIMIT:
                        text_pairs.clear()
                    text_pairs[key, value] = encoded
        elif kind is int or kind is bool or kind is float:
            encoded = number_pairs.get((key, value, kind))
            if encoded is None:
                encoded = _attribute_or_nothing(_SPAN_ATTRIBUTE, key, value)
                if len(number_pairs) >= _CACHE_LIMIT:
                    number_pairs.clear()
                number_pairs[key, value, kind] = encoded
        else:
            encoded = _attribute_or_nothing(_SPAN_ATTRIBUTE, key, value)
        out.append(encoded)


def _text_attribute(key: str, value: str) -> bytes:
    """`_attribute_or_nothing(_SPAN_ATTRIBUTE, key, value)` for a text value, the common case, inlined."""
    key_field = _key_fields.get(key)
    if key_field is None:
        return _attribute_or_nothing(_SPAN_ATTRIBUTE, key, value)
    text = utf8(value)
    size = len(text)
    # Up to 125 bytes, the AnyValue and its field both take a one-byte length.
    value_field = (
        bytes((0x12, size + 2, 0x0A, size)) + text if size < 126 else _field(0x12, _field(0x0A, text))
    )
    return _field(_SPAN_ATTRIBUTE, key_field + value_field)


def _attribute_or_nothing(tag: int, key: str, value: Any) -> bytes:
    try:
        return _key_value(tag, key, value)
    except Exception as error:
        report.problem(
            "otlp:attribute",
            f"an attribute could not be encoded for OTLP and was left out (key {key!r}: "
            f"{type(error).__name__}: {error}); reported once per process",
        )
        return b""


def _attributes(tag: int, attributes: Any) -> bytes:
    if not attributes:
        return b""
    items = attributes._dict.items() if type(attributes) is BoundedAttributes else attributes.items()
    return b"".join([_attribute_or_nothing(tag, key, value) for key, value in items])


def _dropped(tag: bytes, count: int) -> bytes:
    return tag + _varint(count) if count else b""


def _span(span: ReadableSpan) -> bytes:
    """The fields of one `Span` (without its own tag and length), in field-number order."""
    context = span.get_span_context()
    if context is None:
        raise ValueError(f"span {span.name!r} has no span context")
    parent = span.parent
    out = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
    ]
    trace_state = context.trace_state
    if trace_state:
        out.append(_text(0x1A, ",".join([f"{key}={value}" for key, value in trace_state.items()])))
    if parent is not None:
        out.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    name = span.name
    if name:
        out.append(_text(0x2A, name))
    out.append(_KIND_FIELDS[span.kind])
    start, end = span.start_time, span.end_time
    if start:
        out.append(b"\x39" + _pack_fixed64(start))
    if end:
        out.append(b"\x41" + _pack_fixed64(end))
    # The stored collections, read directly: the public properties copy them (a tuple, a proxy).
    attributes = getattr(span, "_attributes", None)
    if attributes:
        _span_attributes(attributes, out)
    if type(attributes) is BoundedAttributes:
        if attributes.dropped:
            out.append(b"\x50" + _varint(attributes.dropped))
    else:
        out.append(_dropped(b"\x50", span.dropped_attributes))
    # BoundedList: its length is cheap, iterating it takes a lock and copies; most spans have none.
    events = getattr(span, "_events", None)
    if events is None:
        events = span.events
    if len(events):
        out.extend([_field(0x5A, _event(event)) for event in events])
    dropped = events.dropped if type(events) is BoundedList else span.dropped_events
    if dropped:
        out.append(b"\x60" + _varint(dropped))
    links = getattr(span, "_links", None)
    if links is None:
        links = span.links
    if len(links):
        out.extend([_field(0x6A, _link(link)) for link in links])
    dropped = links.dropped if type(links) is BoundedList else span.dropped_links
    if dropped:
        out.append(b"\x70" + _varint(dropped))
    status = span.status
    if status is not None:
        description, code = status.description, status.status_code.value
        out.append(
            _field(
                0x7A,
                (_text(0x12, description) if description else b"")
                + (b"\x18" + _varint(code) if code else b""),
            )
        )
    out.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
    return b"".join(out)


def _event(event: Any) -> bytes:
    timestamp, name = event.timestamp, event.name
    return b"".join(
        [
            b"\x09" + _pack_fixed64(timestamp) if timestamp else b"",
            _text(0x12, name) if name else b"",
            _attributes(_EVENT_ATTRIBUTE, event.attributes),
            _dropped(b"\x20", event.dropped_attributes),
        ]
    )


def _link(link: Any) -> bytes:
    context = link.context
    return b"".join(
        [
            b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + context.span_id.to_bytes(8, "big"),
            _attributes(_LINK_ATTRIBUTE, link.attributes),
            _dropped(b"\x28", link.dropped_attributes),
            _LINK_FLAGS_REMOTE if context.is_remote else _LINK_FLAGS_LOCAL,
        ]
    )


# Encoded resources and scopes, kept while they are the same objects. A resource is keyed by its
# attributes object too: `configure(service_name=...)` replaces a Resource's attributes in place.
_resources: dict[int, tuple[Resource, object, bytes]] = {}
_scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}


def _resource_field(resource: Resource) -> bytes:
    """`ResourceSpans.resource` (field 1), tagged."""
    attributes = resource.attributes
    cached = _resources.get(id(resource))
    if cached is not None and cached[0] is resource and cached[1] is attributes:
        return cached[2]
    encoded = _field(0x0A, _attributes(_RESOURCE_ATTRIBUTE, attributes))
    if len(_resources) >= 64:
        _resources.clear()
    _resources[id(resource)] = (resource, attributes, encoded)
    return encoded


def _scope_field(scope: InstrumentationScope | None) -> bytes:
    """`ScopeSpans.scope` (field 1), tagged; an empty scope message when the span has none."""
    cached = _scopes.get(id(scope))
    if cached is not None and cached[0] is scope:
        return cached[1]
    if scope is None:
        encoded = b"\x0a\x00"
    else:
        name, version = scope.name, scope.version
        encoded = _field(
            0x0A,
            (_text(0x0A, name) if name else b"")
            + (_text(0x12, version) if version else b"")
            + _attributes(_SCOPE_ATTRIBUTE, scope.attributes),
        )
    if len(_scopes) >= 256:
        _scopes.clear()
    _scopes[id(scope)] = (scope, encoded)
    return encoded


class _ResourceGroup:
    __slots__ = ("resource", "scope_groups", "scopes")

    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        # id(scope) -> the spans of the group's scope equal to it (the same list for equal scopes)
        self.scope_groups: dict[int, list[bytes]] = {}
        self.scopes: list[tuple[InstrumentationScope | None, list[bytes]]] = []

    def spans_of(self, scope: InstrumentationScope | None) -> list[bytes]:
        found = self.scope_groups.get(id(scope))
        if found is None:
            # A scope object not seen in this batch: OpenTelemetry groups by equality, so a new
            # object equal to one already grouped joins that group.
            for known, spans in self.scopes:
                if known is scope or (known is not None and scope is not None and known == scope):
                    found = spans
                    break
            else:
                found = []
                self.scopes.append((scope, found))
            self.scope_groups[id(scope)] = found
        return found


def encode_export_request(spans: Sequence[ReadableSpan]) -> bytes:
    """The protobuf bytes of an OTLP `ExportTraceServiceRequest` carrying `spans`."""
    by_resource: dict[int, _ResourceGroup] = {}
    groups: list[_ResourceGroup] = []
    # The spans' objects are kept referenced until the end, so the ids above stay theirs.
    for span in spans:
        resource = span.resource
        group = by_resource.get(id(resource))
        if group is None:
            for known in groups:
                if known.resource is resource or known.resource == resource:
                    group = known
                    break
            else:
                group = _ResourceGroup(resource)
                groups.append(group)
            by_resource[id(resource)] = group
        encoded = _span(span)
        group.spans_of(span.instrumentation_scope or None).append(_field(0x12, encoded))
    out: list[bytes] = []
    for group in groups:
        resource_spans = [_resource_field(group.resource)]
        for scope, scope_group in group.scopes:
            schema_url = scope.schema_url if scope is not None else None
            scope_spans = [_scope_field(scope), *scope_group]
            if schema_url:
                scope_spans.append(_text(0x1A, schema_url))
            _append_field(resource_spans, 0x12, scope_spans)
        schema_url = group.resource.schema_url
        if schema_url:
            resource_spans.append(_text(0x1A, schema_url))
        _append_field(out, 0x0A, resource_spans)
    return b"".join(out)


def _append_field(out: list[bytes], tag: int, parts: list[bytes]) -> None:
    """Append a length-delimited field made of `parts` to `out`, joining them only once."""
    payload = b"".join(parts)
    out.append(bytes((tag,)) + _varint(len(payload)))
    out.append(payload)


class EncodedBatch(Sequence[ReadableSpan]):
    """A batch of spans with its request bytes, standing in for the protobuf request message.

    The transports serialize a request with `SerializePartialToString` (HTTP) or `SerializeToString`
    (gRPC); both return the bytes already written.
    """

    __slots__ = ("_body", "_spans")

    def __init__(self, spans: Sequence[ReadableSpan], body: bytes) -> None:
        self._spans = spans
        self._body = body

    def SerializePartialToString(self) -> bytes:  # the protobuf message method's name
        return self._body

    SerializeToString = SerializePartialToString

    @overload
    def __getitem__(self, index: int) -> ReadableSpan: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ReadableSpan]: ...
    def __getitem__(self, index: int | slice) -> ReadableSpan | Sequence[ReadableSpan]:
        return self._spans[index]

    def __len__(self) -> int:
        return len(self._spans)

    def __iter__(self) -> Iterator[ReadableSpan]:
        return iter(self._spans)
